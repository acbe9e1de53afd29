"""Structured logs: one line per run end, and a JSON formatter for `--log-format json`.

`RunLogSink` logs each run's end on the `agent_runtime.runs` logger with its
fields (run id, trace id, agent, status, duration, queue wait) in `record.fields`:
`JsonFormatter` writes them as top-level keys, `TextFormatter` as `key=value`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from .events import EventType, RunEvent, RunStatus

logger = logging.getLogger("agent_runtime.runs")

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _level(status: RunStatus) -> int:
    return logging.INFO if status is RunStatus.OK else logging.WARNING


class RunLogSink:
    """Logs one line per run end: INFO when it succeeded, WARNING otherwise. Which of
    these the logger lets through is read when the sink is made (as the server is
    built, after `--log-level` took effect)."""

    event_types = frozenset({EventType.RUN_END})

    def __init__(self) -> None:
        # Decided once, when the server is built (after logging is configured): below
        # INFO, the run.end of a run that succeeded is not even built.
        self.run_end_statuses = frozenset(status for status in RunStatus if logger.isEnabledFor(_level(status)))

    def on_event(self, event: RunEvent) -> None:
        if event.type is not EventType.RUN_END:
            return
        data = event.data
        status = data["status"]
        level = _level(status)
        if not logger.isEnabledFor(level):
            return
        run = event.run
        fields = {"run_id": run.run_id, "trace_id": run.scratch.get("trace_id", ""),
                  "agent": run.agent, "status": status.value,
                  "duration_s": round(data["duration"], 6), "queue_wait_s": round(data["queue_wait"], 6)}
        if data["error"]:
            fields["error"] = data["error"]
        logger.log(level, "run ended", extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's `fields`, and
    the stack of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The usual text line, with the record's `fields` appended as `key=value`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if not fields:
            return line
        return line + " " + " ".join(f"{key}={value}" for key, value in fields.items())


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str) -> bool:
    """Log to stderr at `level`, as text or json lines, unless the application has
    configured logging already (the root logger has handlers); returns whether it did.
    Without it Python's last resort prints warnings only, and bare: `run ended`."""
    if logging.getLogger().hasHandlers():
        return False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    return True
