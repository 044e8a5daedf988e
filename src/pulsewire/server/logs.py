"""Logging set-up for ``pulsewire serve``: readable text, or one JSON object per line.

JSON records carry the time, level, logger, message, the node name and any context the
code attaches with ``extra=`` (``client``: the session id, ``user``, ``channel``,
``code``...), so a log pipeline can follow one connection across messages.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node:
            out["node"] = self.node
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
                )
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(fmt: str | None = None, level: str | None = None, node: str = "") -> None:
    """``fmt``: "text" or "json" (default: $PULSEWIRE_LOG_FORMAT or text); ``level``: a
    logging level name (default: $PULSEWIRE_LOG_LEVEL or INFO)."""
    fmt = (fmt or os.environ.get("PULSEWIRE_LOG_FORMAT") or "text").lower()
    level = (level or os.environ.get("PULSEWIRE_LOG_LEVEL") or "INFO").upper()
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node))
    else:
        where = f" [{node}]" if node else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
