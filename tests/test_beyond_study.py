"""scripts/beyond_study.py's bookkeeping: calibration-size rows get their own ids and their own report section,
and never leak into the main table's cells (which compare recipes at the default calibration)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from taskprune.experiments.results import pack_outcomes
from taskprune.recipe import DEFAULT_CALIBRATION

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("beyond_study", ROOT / "scripts" / "beyond_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_calibration_suffix_only_for_repairing_recipes_off_default(study):
    assert study._calibration_suffix(DEFAULT_CALIBRATION, "taskprune") == ""
    assert study._calibration_suffix(32, "taskprune") == "-cal32"
    assert study._calibration_suffix(32, "AP+repair") == "-cal32"
    # paper-AP neither repairs nor searches: the calibration size cannot change it, so its id stays the same
    assert study._calibration_suffix(32, "paper-AP") == ""
    assert study._calibration_suffix(32, "dense") == ""
    assert study._calibration({"id": "x"}) == DEFAULT_CALIBRATION  # rows from before the field existed


def _row(variant: str, seed: int, correct: np.ndarray, calibration: int | None) -> dict:
    row = {"id": f"sst2-{variant}-0.5-{seed}-0", "task": "sst2", "variant": variant, "budget": 0.5, "seed": seed,
           "trial": 0, "metrics": {"accuracy": round(100 * float(correct.mean()), 2)}, "n_eval": len(correct),
           "outcomes": pack_outcomes(correct.tolist(), "evalset"), "compress_seconds": 1.0, "model": "tiny"}
    if calibration is not None:
        row["calibration"] = calibration
    return row


def test_report_keeps_calibration_rows_out_of_the_main_table(study, tmp_path):
    rng = np.random.default_rng(0)
    good = (rng.random(400) < 0.9).astype(int)
    bad = good.copy()
    bad[:120] = 0  # 120 of the default's examples lost: far worse, and significantly so
    rows = [_row("dense", 0, good, None) | {"budget": 0.0, "id": "sst2-dense-0.0-0-0"}]
    rows += [_row("taskprune", s, good, None) for s in range(3)]  # default size, recorded before the field
    rows += [_row("taskprune", s, bad, 10) | {"id": f"sst2-taskprune-0.5-{s}-0-cal10"} for s in range(3)]
    rows += [_row("paper-AP", s, bad, None) for s in range(3)]
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = argparse.Namespace(out=out, report=tmp_path / "rep", tasks=["sst2"], samples=10)
    study.report(args)
    text = (tmp_path / "rep" / "TABLES.md").read_text()
    main = text.split("## Calibration inputs for repair")[0]
    acc = 100 * good.mean()
    assert f"| taskprune | {acc:.2f} (3) |" in main  # the cal-10 rows are not averaged into the cell
    section = text.split("## Calibration inputs for repair")[1]
    assert f"| sst2 | taskprune | 0.5 | {DEFAULT_CALIBRATION} | {acc:.2f} (3) |" in section
    line10 = next(x for x in section.splitlines() if x.startswith("| sst2 | taskprune | 0.5 | 10 |"))
    assert line10.rstrip().endswith("| worse |")
    assert (tmp_path / "rep" / "calibration.png").stat().st_size > 0


def test_pooled_section_averages_the_per_budget_differences(study):
    rng = np.random.default_rng(1)
    good = (rng.random(400) < 0.9).astype(int)
    bad = good.copy()
    bad[:120] = 0
    rows = []
    for budget, ap in ((0.3, bad), (0.5, good)):  # taskprune 30 points ahead at 0.3, level at 0.5
        rows += [_row("taskprune", s, good, None) | {"budget": budget} for s in range(3)]
        rows += [_row("paper-AP", s, ap, None) | {"budget": budget} for s in range(3)]
    rows += [_row("FLAP", 0, good, None)]  # only at 0.5: pooled over the one budget it has
    lines = study._pooled_section(rows, ["sst2"])
    row = next(x for x in lines if x.startswith("| SST2 | taskprune | paper-AP |"))
    diff = 100 * (good.mean() - bad.mean()) / 2
    assert f"| 0.3, 0.5 | {diff:+.2f} |" in row and row.rstrip().endswith("| A better |")
    flap = next(x for x in lines if x.startswith("| SST2 | taskprune | FLAP |"))
    assert "| 0.5 | +0.00 |" in flap and flap.rstrip().endswith("| no significant difference |")
    assert not any(x.startswith("| SST2 | taskprune | Kwon |") for x in lines)  # no Kwon rows: no test
