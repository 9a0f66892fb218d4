"""Package logging: INFO and above to stderr, as vLLM prints its start-up facts.

Set FOLOVLLM_LOGGING_LEVEL (e.g. WARNING) to change the level; set
FOLOVLLM_CONFIGURE_LOGGING=0 to leave logging entirely to the application.
"""

from __future__ import annotations

import logging
import os

_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"


def configure_logging() -> None:
    if os.environ.get("FOLOVLLM_CONFIGURE_LOGGING", "1") == "0":
        return
    root = logging.getLogger("folovllm")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("FOLOVLLM_LOGGING_LEVEL", "INFO").upper())
    root.propagate = False
