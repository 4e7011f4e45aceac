"""The results file of a sweep: one JSON object per finished run, appended one line at a time.

Each row is written with a single ``write`` of one complete line, flushed and fsynced before the next run
starts, so a kill -9 loses at most the run in flight. A kill in the middle of that write can leave a
partial last line; :func:`load_rows` drops it (and truncates the file back to the last complete line) so
the next append starts on a clean line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import TaskpruneError
from ..models import LAYER_TYPES

METRIC = "accuracy"  # what the report and the claims read from each row


def load_rows(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Every complete row of ``path`` (none if it does not exist); ``repair`` cuts a partial last line off."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # a partial last line: the run in flight when the sweep was killed
        text = line.strip()
        if text:
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError:
                raise TaskpruneError(f"{path}: line {len(rows) + 1} is not JSON; is this a sweep results file?") from None
        good += len(line)
    if repair and good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row as one line, durable before returning."""
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file, the last one of each run id, errors left out."""
    rows = load_rows(path)
    if not rows:
        raise TaskpruneError(f"{path} holds no sweep results")
    by_id: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_id[r["id"]] = r
    return [r for r in by_id.values() if "error" not in r and METRIC in r.get("metrics", {})]


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
