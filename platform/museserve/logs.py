"""Logging setup for the CLI and every replica: one format, context in every line.

Lines carry request ids and tenants; user content is never logged at INFO or above.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    logger = logging.getLogger("museserve")
    logger.setLevel(level)
    if not any(getattr(h, "_museserve", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._museserve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
