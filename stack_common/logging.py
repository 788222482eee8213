"""One log format for all packages: `2026-11-23 18:50:00 INFO  data_pipeline.run | message`."""
from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)-5s %(name)s | %(message)s"
_configured = False


def get_logger(name: str) -> logging.Logger:
    """Return a logger; the first call configures the root handler (level from BC_LOG_LEVEL)."""
    global _configured
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        root = logging.getLogger("bc")
        root.addHandler(handler)
        root.setLevel(os.environ.get("BC_LOG_LEVEL", "INFO").upper())
        root.propagate = False
        _configured = True
    return logging.getLogger(f"bc.{name}")
