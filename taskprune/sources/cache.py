"""The conversion cache: GGUF files and LoRA adapters become plain folders ONCE, reused while their source is
unchanged: ``$TASKPRUNE_CACHE`` (default ``~/.cache/taskprune``), each folder written atomically."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import TaskpruneError
from ..files import atomic_dir


def cache_dir() -> Path:
    """Where converted models live: ``$TASKPRUNE_CACHE``, else ``~/.cache/taskprune``."""
    env = os.environ.get("TASKPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "taskprune"


def file_key(path: Path) -> str:
    """Size plus the first and last MiB: changes when the file does, costs no full read of a multi-GB file."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def cached_dir(out: Path, write: Callable[[Path], None]) -> Path:
    """``out`` written once by ``write`` (atomically); a process that loses the race uses the winner's folder."""
    if (out / "config.json").is_file():
        return out
    try:
        return atomic_dir(out, write)
    except TaskpruneError:
        if (out / "config.json").is_file():  # another process wrote it meanwhile
            return out
        raise
