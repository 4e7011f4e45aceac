"""Safe file output: every write is atomic (temp file + rename) and nothing is overwritten unasked."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import TaskpruneError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_permissions(path: Path) -> None:
    """Temp files/folders are created private (0600/0700); give results the user's usual permissions."""
    mask = _umask()
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.rglob("*"):
            child.chmod((0o777 if child.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


def check_writable(path: str | Path, overwrite: bool, folder: bool | None = None) -> Path:
    """Refuse to replace an existing file or non-empty folder unless ``overwrite`` was asked for.

    ``folder`` (when known) also refuses a file where a folder is to go, and the reverse.
    """
    path = Path(path)
    if folder is True and path.is_file():
        raise TaskpruneError(f"{path} is a file; the output here is a folder")
    if folder is False and path.is_dir():
        raise TaskpruneError(f"{path} is a folder; the output here is a file")
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise TaskpruneError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = check_writable(path, overwrite, folder=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        _plain_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), overwrite)


def atomic_dir(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Build a folder in a temp sibling and swap it into place, so a crash leaves the old one intact."""
    path = check_writable(path, overwrite, folder=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write(tmp)
        _plain_permissions(tmp)
        if path.exists():  # an (empty, or --overwrite) folder
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
