"""Where real data lives: $CAREBOT_DATA, else a `shared/data` folder beside the clone (the full sets, where a team keeps
them), else the repo's own small sample `samples/`, so that a bare clone runs its tests and demo."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of the real data (the layout of samples/: benchmarks/, dialogue/, general/)."""
    env = os.environ.get("CAREBOT_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data", REPO / "samples"]:
        if (cand / "general").is_dir():
            return cand
    raise FileNotFoundError("no data found: set CAREBOT_DATA to a folder with benchmarks/, dialogue/, general/ (as samples/)")


def cache_dir() -> Path:
    """Where built offline assets (tokenizers, tiny models) are cached between runs."""
    d = Path(os.environ.get("CAREBOT_CACHE", Path.home() / ".cache" / "carebot"))
    d.mkdir(parents=True, exist_ok=True)
    return d
