"""Where built artefacts (the tiny bases, the CLIP vocabulary) are cached."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$AMDET_CACHE`, else `$XDG_CACHE_HOME/amdet-bench`, else `~/.cache/amdet-bench`."""
    if os.environ.get("AMDET_CACHE"):
        return Path(os.environ["AMDET_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "amdet-bench"
