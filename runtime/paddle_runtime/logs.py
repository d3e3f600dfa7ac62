"""Log output: plain text or one JSON object per line (``log_format``; the image defaults to JSON).

Events that operators alert or search on (a hot reload, a fallback switch) are single records whose
fields travel in ``extra=``: :func:`event` builds it, and the JSON formatter writes every such field
next to ``ts``, ``level``, ``logger`` and ``msg``, so ``jq 'select(.event == "reload")'`` finds them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came through ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def event(name: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a structured event: ``log.info("...", extra=event("reload", model=..., ...))``."""
    return {"event": name, **fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, msg, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` as ``text`` or ``json`` (replaces any handlers already set)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
