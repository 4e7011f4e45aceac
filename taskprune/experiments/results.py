"""The results file of a sweep: one JSON object per finished run, appended one line at a time.

Each row is written with a single ``write`` of one complete line, flushed and fsynced before the next run
starts, so a kill -9 loses at most the run in flight. The processes of a distributed sweep (torchrun) append to the
same file, each row under an exclusive lock (:func:`locked`). A kill in the middle of that write can leave a
partial last line; :func:`load_rows` drops it (and truncates the file back to the last complete line) so
the next append starts on a clean line.

The rows are then read back by what they vary (:func:`row_kind`, :func:`row_rate`), grouped into settings (the
seeds of one run configuration) and paired setting against setting, example by example (:func:`compare_pairs`),
for the claims (:mod:`.claims`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TaskpruneError
from ..models import LAYER_TYPES
from .stats import Comparisons, Point

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


# Selecting and grouping a sweep's rows: the settings (each with its seeds) that a comparison puts side by side.

Row = dict[str, Any]
Pair = tuple[tuple, list[Row], list[Row]]  # (point label, A's rows (seeds), B's rows)
ByRate = dict[float, list[Row]]  # the rows (seeds) of one part at each rate


def mean_acc(rows: Iterable[Row]) -> float:
    """The mean metric over rows (the seeds of one setting)."""
    return statistics.fmean(r["metrics"][METRIC] for r in rows)


def group_rows(rows: Iterable[Row], key: Callable[[Row], tuple]) -> dict[tuple, list[Row]]:
    """The rows of each key (the seeds of one setting)."""
    out: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(out)


def module_groups(rows: list[Row]) -> dict[tuple, list[Row]]:
    """(experiment, task, module, method, samples, rate) -> rows (seeds), module-scope rows, rates in (0, 1)."""
    return group_rows((r for r in rows if row_kind(r) == "module" and 0 < row_rate(r) < 1),
                      lambda r: (r["experiment"], r["task"], r["setting"], r["method"], str(r["samples"]),
                                 row_rate(r)))


def _sample_order(samples: str) -> tuple[int, int]:
    return (1, 0) if samples == "all" else (0, int(samples))


def method_pairs(groups: dict[tuple, list[Row]], a: str, b: str) -> list[Pair]:
    """One point per (experiment, task, module, rate, example count) of :func:`module_groups` where methods a and
    b were both run.

    Equal example counts pair up; a method that reads no examples (random, svd: recorded with 0) pairs once,
    with the other method's smallest example count.
    """
    by_point: dict[tuple, dict[str, dict[str, list[Row]]]] = defaultdict(lambda: defaultdict(dict))
    for (exp, task, module, method, samples, rate), v in groups.items():
        if method in (a, b):
            by_point[(exp, task, module, rate)][method][samples] = v
    out: list[Pair] = []
    for point, methods in by_point.items():
        va, vb = methods.get(a, {}), methods.get(b, {})
        common = sorted(set(va) & set(vb), key=_sample_order)
        if common:
            out += [(point, va[s], vb[s]) for s in common]
        elif va and vb and ("0" in va or "0" in vb):
            first = lambda d: d[min(d, key=_sample_order)]  # noqa: E731
            out.append((point, first(va), first(vb)))
    return out


def mean_abs_gap(pairs: Sequence[Pair]) -> float:
    """Mean over the points of |A's mean - B's mean| (the means a claim shows when it cannot be tested)."""
    return statistics.fmean(abs(mean_acc(a) - mean_acc(b)) for _, a, b in pairs)


def mean_signed_gap(pairs: Sequence[Pair]) -> float:
    """Mean over the points of A's mean - B's mean (which way the gaps of :func:`mean_abs_gap` lean)."""
    return statistics.fmean(mean_acc(a) - mean_acc(b) for _, a, b in pairs)


def part_groups(rows: list[Row], kind: str, parts: set[str], method: str) -> dict[tuple[str, str], dict[str, ByRate]]:
    """(task, module) -> {part: {rate: rows}} for ``method``'s layer-type or depth rows, at the rates in (0, 1] that
    every part of ``parts`` present there was run at (so parts are compared at equal rates)."""
    groups = group_rows((r for r in rows if row_kind(r) == kind and r["method"] == method and row_rate(r) > 0
                         and r["setting"].split(":", 1)[1] in parts),
                        lambda r: (r["task"], *r["setting"].split(":", 1), row_rate(r)))
    by_tm: dict[tuple[str, str], dict[str, ByRate]] = defaultdict(lambda: defaultdict(dict))
    for (task, module, part, rate), v in groups.items():
        by_tm[task, module][part][rate] = v
    out = {}
    for key, per_part in by_tm.items():
        shared = set.intersection(*(set(v) for v in per_part.values()))
        if shared:
            out[key] = {p: {r: v[r] for r in sorted(shared)} for p, v in per_part.items()}
    return out


def part_pairs(tests: list[tuple[tuple, ByRate, ByRate]]) -> tuple[list[Pair], list[list[int]]]:
    """Points for "pruning part B hurts more than pruning part A" tests: (label, A's rates, B's rates) each pooled
    over its rates; returns the pairs and each test's point indices."""
    pairs: list[Pair] = []
    members: list[list[int]] = []
    for label, a, b in tests:
        members.append(list(range(len(pairs), len(pairs) + len(a))))
        pairs += [((*label, rate), a[rate], b[rate]) for rate in a]
    return pairs, members


def part_acc(part: ByRate) -> float:
    """A part's mean accuracy over its rates."""
    return statistics.fmean(mean_acc(v) for v in part.values())


class Unpairable(Exception):
    """The rows cannot be paired: no per-example outcomes, or different eval examples."""


def setting_runs(rows: list[Row]) -> tuple[str, np.ndarray]:
    """(eval set id, [seeds, examples] 0/1) of one setting's rows."""
    got = [row_outcomes(r) for r in rows]
    if any(g is None for g in got):
        raise Unpairable
    ids = {g[0] for g in got}  # type: ignore[index]
    if len(ids) != 1:
        raise Unpairable("the seeds of one setting were evaluated on different examples")
    return ids.pop(), np.stack([g[1] for g in got]).astype(np.float64)  # type: ignore[index]


def compare_pairs(pairs: Sequence[Pair]) -> Comparisons:
    """The paired points of ``pairs``, example by example, in one bootstrap; :class:`Unpairable` when they cannot
    be paired."""
    points = []
    cache: dict[tuple[int, ...], tuple[str, np.ndarray]] = {}  # one array per setting: the bootstrap reuses it

    def runs(rows: list[Row]) -> tuple[str, np.ndarray]:
        key = tuple(id(r) for r in rows)
        if key not in cache:
            cache[key] = setting_runs(rows)
        return cache[key]

    for _, ra, rb in pairs:
        (ida, a), (idb, b) = runs(ra), runs(rb)
        if ida != idb:
            raise Unpairable("two compared runs were evaluated on different examples")
        points.append(Point(a, b, ida))
    return Comparisons(points)
