"""Where dde-bench writes: one rule for every command, never inside the installed package.

Everything goes under ``$DDE_BENCH_HOME`` if set, else ``./reports`` of the current folder: runs in ``runs/``,
the synthetic data and quick-recipe checkpoints in ``cache/`` (``$DDE_BENCH_CACHE`` overrides that one folder),
profiles in ``profiles/``. ``--out`` on a command overrides its own output folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$DDE_BENCH_HOME, else ./reports."""
    env = os.environ.get("DDE_BENCH_HOME")
    return Path(env).expanduser() if env else Path.cwd() / "reports"


def cache_root() -> Path:
    """Synthetic data and quick-recipe checkpoints: $DDE_BENCH_CACHE, else HOME/cache."""
    env = os.environ.get("DDE_BENCH_CACHE")
    return Path(env).expanduser() if env else home() / "cache"


def runs_dir() -> Path:
    return home() / "runs"


def profiles_dir() -> Path:
    return home() / "profiles"
