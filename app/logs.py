"""JSON log lines, each with the id of the request being served (if any).

Lines are formatted and written on a writer thread (`QueueHandler` -> `QueueListener`): the
event loop only enqueues a record, which keeps one access-log line per request cheap. The
queue is flushed at exit; a `kill -9` can lose the last few lines, never a request.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid is not None:
            line["request_id"] = rid
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class _StampRequestId(logging.Filter):
    """The request id is a context variable of the logging thread: read it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class _DeferredFormatting(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # one process, no pickling: the writer thread formats it


_listener: QueueListener | None = None


def flush_logs() -> None:
    """Write out every queued line and stop the writer thread (at exit, or before a new one)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(flush_logs)


def configure_logging(level: str = "info") -> None:
    global _listener
    flush_logs()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler()
    writer.setFormatter(JsonFormatter())
    _listener = QueueListener(records, writer)
    _listener.start()
    handler = _DeferredFormatting(records)
    handler.addFilter(_StampRequestId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
