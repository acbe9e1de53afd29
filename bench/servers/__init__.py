"""The processes the benchmark starts: contenders (each a wrapper that adds the
server-side status counters and the stats side channel) and the OTLP receiver."""
