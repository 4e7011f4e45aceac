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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a later ``mkdir(parents=True)`` would build on)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_folder(folder: Path, shown: Path) -> None:
    """Create and delete a file in ``folder``: the only test that holds on read-only mounts, /proc, or as root
    (where ``os.access`` says yes to nearly everything)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TaskpruneError(f"cannot write {shown}: {folder} is not writable (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".taskprune-probe.", dir=folder)
    except OSError as err:
        raise TaskpruneError(f"cannot write {shown}: cannot create files in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_writable(path: str | Path, overwrite: bool = False, folder: bool | None = None, *,
                   update: bool = False, probe: bool = True) -> Path:
    """Refuse an output that cannot be written, BEFORE any work: every command calls this on its outputs first.

    - the target's kind: ``folder=True`` refuses a file where a folder is to go, ``folder=False`` the reverse;
    - existing output: a file or a non-empty folder is refused unless ``overwrite`` (or ``update``: outputs that
      are extended in place, such as a sweep's results file, a fine-tuning run folder, a report folder);
    - where it goes: the nearest existing ancestor must be a folder (``out/x`` under a regular file ``out`` is
      refused), and writable, tested by creating and deleting a file there (``probe``; the atomic writers skip
      it, their own temp file is the probe). An existing file extended in place must be writable itself.

    Every message names ``path`` as the user gave it, never a temp file.
    """
    path = Path(path)
    if folder is True and path.exists() and not path.is_dir():
        raise TaskpruneError(f"{path} is a file; the output here is a folder")
    if folder is False and path.is_dir():
        raise TaskpruneError(f"{path} is a folder; the output here is a file")
    if not update:
        try:
            exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
        except OSError as err:
            raise TaskpruneError(f"cannot write {path}: {err.strerror or err}") from None
        if exists and not overwrite:
            raise TaskpruneError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if update and path.is_file():
        if not os.access(path, os.W_OK):
            raise TaskpruneError(f"cannot write {path}: it is not writable (permission denied)")
        return path
    base = path if update and path.is_dir() else _nearest_existing(path.parent)
    if not base.is_dir():
        raise TaskpruneError(f"cannot write {path}: {base} is a file, not a folder")
    if probe:
        _probe_folder(base, path)
    return path


def _write_error(path: Path, err: OSError) -> TaskpruneError:
    """An OSError met while writing ``path`` (through a temp sibling), as one line about ``path`` itself: the
    temp file's name means nothing to the user; another file's name (a parent that could not be made) is shown."""
    where = os.path.abspath(err.filename) if isinstance(err.filename, (str, os.PathLike)) else ""
    temp = os.path.abspath(path.parent / f".{path.name}.")
    shown = "" if not where or where == os.path.abspath(path) or where.startswith(temp) else f" ({where})"
    return TaskpruneError(f"cannot write {path}: {err.strerror or err}{shown}")


def atomic_write(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = check_writable(path, overwrite, folder=False, probe=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    os.close(fd)
    try:
        write(Path(tmp))
        _plain_permissions(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), overwrite)


def atomic_dir(path: str | Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Build a folder in a temp sibling and swap it into place, so a crash leaves the old one intact."""
    path = check_writable(path, overwrite, folder=True, probe=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        write(tmp)
        _plain_permissions(tmp)
        if path.exists():  # an (empty, or --overwrite) folder
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)  # the user's folder goes back where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(path, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
