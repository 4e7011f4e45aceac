"""What the plans folder holds, read and written: plan files and compress output folders.

- ``<name>.json``: a plan (``taskprune plan`` output, or a compress output's ``plan.json`` copied out); its task
  is the plan's task, else the file's name.
- ``<name>/`` with ``plan.json``: a compress output folder placed inside (or written by the server for a repaired
  plan posted with its repair file): ``repair.safetensors`` beside the plan carries the tensors weight repair
  changed, so the server cuts the repaired model; its task is the plan's task, else the folder's name.

A folder the server did not write (a user's checkpoint) is never deleted by the server.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TaskpruneError
from ..files import atomic_dir, atomic_write_text
from ..pruning.plan import PruningPlan
from ..pruning.repaired import REPAIR_FILE, load_repaired, save_repaired

PLAN_FILE = "plan.json"
SERVER_WRITTEN = {PLAN_FILE, REPAIR_FILE}  # a folder holding only these is the server's own


@dataclass
class Entry:
    """One task's plan as stored: where it lives and the repair tensors that go with it (None without repair)."""

    name: str  # the file's or folder's name: the task when the plan records none
    plan: PruningPlan
    repair: dict[str, torch.Tensor] | None
    path: Path  # the plan file, or the folder

    @property
    def repair_bytes(self) -> int:
        return tensor_bytes(self.repair)


def tensor_bytes(tensors: dict[str, torch.Tensor] | None) -> int:
    """Bytes of a repair file's tensors (what a repaired task stores beyond its plan)."""
    return sum(t.numel() * t.element_size() for t in (tensors or {}).values())


def read_entry(path: Path) -> Entry | None:
    """The entry at ``path`` (a plan file or a folder), None for what is neither (other files are ignored)."""
    if path.is_file():
        return Entry(path.stem, PruningPlan.load(path), None, path) if path.suffix == ".json" else None
    if not path.is_dir() or path.name.startswith("."):
        return None
    plan_path = path / PLAN_FILE
    if not plan_path.is_file():
        if (path / "config.json").is_file():
            raise TaskpruneError(f"{path} is a checkpoint without {PLAN_FILE}: nothing to cut from the base (svd and "
                                 "smp-unstructured compressions change weights a plan cannot express; serve only "
                                 "plans of structured methods)")
        return None
    plan = PruningPlan.load(plan_path)
    repair = load_repaired(path / REPAIR_FILE, plan) if (path / REPAIR_FILE).is_file() else None
    return Entry(path.name, plan, repair, path)


def read_folder(folder: Path) -> list[Entry]:
    return [e for p in sorted(folder.iterdir()) if (e := read_entry(p)) is not None]


def write_entry(folder: Path, task: str, plan: PruningPlan, repair: dict[str, torch.Tensor] | None) -> Path:
    """Store a posted plan as ``<task>.json``, or with its repair tensors as the folder ``<task>/`` (the caller has
    checked that what is there, if anything, is this task's own entry)."""
    if repair is None:
        return atomic_write_text(folder / f"{task}.json", json.dumps(plan.to_dict(), indent=1) + "\n", overwrite=True)

    def write(tmp: Path) -> None:
        plan.save(tmp / PLAN_FILE)
        save_repaired(repair, tmp / REPAIR_FILE, plan)

    return atomic_dir(folder / task, write, overwrite=True)


def removable(path: Path) -> bool:
    """Whether the server may delete ``path``: a plan file, or a folder holding only what the server writes."""
    return path.is_file() or (path.is_dir() and {p.name for p in path.iterdir()} <= SERVER_WRITTEN)


def remove_entry(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
