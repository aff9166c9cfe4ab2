"""Log lines: JSON, one per record, with the request id of the thread that logged."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from app import logs


def test_lines_are_json_with_the_logging_threads_request_id(
    capfd: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure_logging("info")

        def serve(rid: str) -> None:
            token = logs.request_id.set(rid)
            logging.getLogger("rr.access").info("GET /x %s", 200, extra={"ms": 1.5})
            logs.request_id.reset(token)

        threads = [threading.Thread(target=serve, args=(f"req-{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logging.getLogger("rr").warning("no request")
        logs.flush_logs()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    access = [line for line in lines if line["logger"] == "rr.access"]
    assert sorted(line["request_id"] for line in access) == [f"req-{i}" for i in range(4)]
    assert all(line["msg"] == "GET /x 200" and line["ms"] == 1.5 for line in access)
    (other,) = [line for line in lines if line["logger"] == "rr"]
    assert other["level"] == "warning" and "request_id" not in other
