"""Run state that replicas share, in Redis or Valkey (`store_url`).

With no store configured everything stays in process, as on one pod. With one,
conversations (history.py), run records (runs.py) and run events (streams.py)
live in the store, so any replica answers for any run. connection.py makes the
client from the settings and checks it at start.
"""
