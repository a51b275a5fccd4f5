"""The process environment every secure-ft entry point sets first: offline, quiet, no telemetry.

By design nothing reaches for a model or dataset hub or phones home; the command line, the
distributed launcher and the Flower apps call `quiet_third_party` before they import the
libraries that would.
"""

from __future__ import annotations

import logging
import os
import sys


def quiet_third_party() -> None:
    """Set the offline and no-telemetry switches (unless the user set them) and quiet noisy loggers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    # errors only, without importing transformers (and torch, ~2 s) here: commands such as
    # `verify` never need them, and `serve` imports them only after the bundle verified
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:  # imported already: its logging read the variable then
        sys.modules["transformers"].logging.set_verbosity_error()
    # matplotlib logs every categorical axis at INFO while the report draws its plots
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
