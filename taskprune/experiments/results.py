"""The results file of a sweep: one JSON object per finished run, appended one line at a time.

Each row is written with a single ``write`` of one complete line, flushed and fsynced before the next run
starts, so a kill -9 loses at most the run in flight. The processes of a distributed sweep (torchrun) append to the
same file, each row under an exclusive lock (:func:`locked`). A kill in the middle of that write can leave a
partial last line; :func:`load_rows` drops it (and truncates the file back to the last complete line) so
the next append starts on a clean line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskpruneError
from ..models import LAYER_TYPES

METRIC = "accuracy"  # what the report and the claims read from each row


def load_rows(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete row of ``path`` (none if it does not exist); ``repair`` cuts a partial last line off.

    Every row must be a JSON object: anything else means this is not a results file, refused with its line number.
    """
    path = Path(path)
    if path.is_dir():
        raise TaskpruneError(f"{path} is a folder, not a sweep results file")
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good = 0
    for number, line in enumerate(data.splitlines(keepends=True), start=1):
        if not line.endswith(b"\n"):
            break  # a partial last line: the run in flight when the sweep was killed
        text = line.strip()
        if text:
            try:
                row = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise TaskpruneError(f"{path}: line {number} is not JSON; is this a sweep results file?") from None
            if not isinstance(row, dict):
                raise TaskpruneError(f"{path}: line {number} is a JSON {type(row).__name__}, not a sweep result row "
                                     "(an object); is this a sweep results file?")
            rows.append(row)
        good += len(line)
    if repair and good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def append_row(path: str | Path, row: dict[str, Any], lock: bool = False) -> None:
    """Append one row as one line, durable before returning; ``lock`` when several processes append to it."""
    line = (json.dumps(row) + "\n").encode()
    with locked(path) if lock else contextlib.nullcontext():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block (the processes of a distributed sweep share one results file).

    The lock is taken on a hidden sibling ``.<name>.lock``, not on the results file itself: POSIX record locks
    (what NFS gives even to ``flock``) are dropped when the process closes ANY descriptor of the locked file, and
    reading the rows opens and closes it.
    """
    import fcntl

    path = Path(path)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


#: the fields of a run (experiment.config.Run.to_dict) that every row has, failed or not
RUN_FIELDS = ("id", "experiment", "task", "eval_task", "method", "samples", "sample_seed", "trial_seed", "rates",
              "setting")


def latest_rows(paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """The rows of one or several results files, the last one of each run id (later files win), errors left out.

    Several files make one report when they hold runs of ONE model: a sweep re-run into a second file (say with
    per-example outcomes) overrides the first file's rows of the same runs and keeps the rest. Refuses files with
    nothing to report (missing, empty, rows that are not sweep results, or no row with a metric), damaged outcomes,
    or runs of different models.
    """
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    by_id: dict[str, dict[str, Any]] = {}
    for path in files:
        if not path.exists():
            raise TaskpruneError(f"results file {path} not found")
        rows = load_rows(path)
        if not rows:
            why = "it is empty" if not path.read_bytes().strip() else (
                "its one row has no line end; a sweep ends every row with one, so this one was cut short")
            raise TaskpruneError(f"{path} holds no complete sweep results ({why})")
        for number, r in enumerate(rows, start=1):
            missing = [k for k in RUN_FIELDS if k not in r]
            if missing:
                raise TaskpruneError(f"{path}: row {number} lacks {', '.join(missing)}: not a sweep result row; is "
                                     "this a sweep results file?")
            by_id[r["id"]] = {**r, "_file": str(path)}
    _check_one_model(by_id.values())
    for r in by_id.values():
        del r["_file"]
    usable = [r for r in by_id.values()
              if "error" not in r and isinstance(r.get("metrics"), dict) and METRIC in r["metrics"]]
    for r in usable:
        row_outcomes(r)  # a damaged outcomes field fails here, before anything is drawn
    if not usable:
        failed = [r for r in by_id.values() if "error" in r]
        why = f"{len(failed)} failed, first: {failed[0]['error']}" if failed else f"none has metrics.{METRIC}"
        runs = f"{len(by_id)} run{'s' if len(by_id) != 1 else ''}"
        where = " + ".join(map(str, files))
        raise TaskpruneError(f"{where} holds {runs} but none to report ({why})")
    return usable


def _check_one_model(rows: Iterable[dict[str, Any]]) -> None:
    """One report, one model: rows known by their model's fingerprint agree on it, and rows recorded before
    fingerprints were (only a path) name the folder of a fingerprinted row (paths resolved from here)."""
    rows = list(rows)
    prints = {r["model_fingerprint"]: r for r in rows if r.get("model_fingerprint")}
    if len(prints) > 1:
        (fa, a), (fb, b) = list(prints.items())[:2]
        raise TaskpruneError(f"{a['_file']} and {b['_file']} hold runs of different models (fingerprints {fa} and "
                             f"{fb}): one report is one model")
    places = {Path(str(r["model"])).resolve() for r in prints.values() if r.get("model")}
    for r in rows:
        if places and not r.get("model_fingerprint") and r.get("model") \
                and Path(str(r["model"])).resolve() not in places:
            raise TaskpruneError(f"{r['_file']} holds runs of another model ({r['model']}) than the other rows "
                                 f"({', '.join(sorted(str(p) for p in places))}): one report is one model")


def eval_set_id(examples: Sequence[Any]) -> str:
    """Hash of an eval set (each example's uid, input and gold label, in eval order): two rows' per-example
    outcomes may be paired only when they evaluated the same examples in the same order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.uid, e.text, e.label], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def pack_outcomes(correct: Sequence[bool | int], examples: str) -> dict[str, Any]:
    """The ``outcomes`` field of a row: which eval examples were classified correctly, as bits (first example =
    most significant bit of the first byte) in base64, so SST-2's 872 examples take 148 characters."""
    bits = np.packbits(np.asarray([1 if c else 0 for c in correct], dtype=np.uint8))
    return {"examples": examples, "n": len(correct), "correct": base64.b64encode(bits.tobytes()).decode("ascii")}


def row_outcomes(row: dict[str, Any]) -> tuple[str, np.ndarray] | None:
    """(eval set id, 0/1 per eval example in eval order) of a row, or None for a row recorded without per-example
    outcomes (sweeps before they were recorded); a damaged field is refused rather than misread."""
    out = row.get("outcomes")
    if out is None:
        return None
    try:
        n, data = int(out["n"]), base64.b64decode(out["correct"], validate=True)
        examples = str(out["examples"])
    except (KeyError, TypeError, ValueError):
        raise TaskpruneError(f"row {row.get('id')}: its outcomes field is damaged (needs examples, n, "
                             "correct)") from None
    if n <= 0 or len(data) != (n + 7) // 8:
        raise TaskpruneError(f"row {row.get('id')}: outcomes hold {len(data)} bytes for {n} examples")
    return examples, np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:n]


def row_kind(row: dict[str, Any]) -> str:
    """What a row varies: dense, grid (enc x dec rates), unseen (scored on another task), layer_type, depth or
    module (a module scope at one rate)."""
    setting = row.get("setting", "")
    if row.get("method") == "dense":
        return "dense"
    if setting.startswith("enc="):
        return "grid"
    if row.get("eval_task") != row.get("task"):
        return "unseen"
    if ":" in setting:
        return "layer_type" if setting.split(":", 1)[1] in LAYER_TYPES else "depth"
    return "module"


def dense_accuracy(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The unpruned model's accuracy per evaluated task (the reference lines and drops are measured from)."""
    return {r["eval_task"]: r["metrics"][METRIC] for r in rows if row_kind(r) == "dense"}


def row_rate(row: dict[str, Any]) -> float:
    """The rate a row varies (for depth runs, the rate of its blocks)."""
    rates = row["rates"]
    if rates.get("depth_rates"):
        return float(rates["depth_rates"][-1][2])
    return float(rates["rate"])
