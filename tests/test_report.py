"""Sweep reports: every kind of experiment gets its figure and table; the last row of a run id wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskprune.cli import main
from taskprune.errors import TaskpruneError
from taskprune.experiments.report import latest_rows, write_report


def _row(i: int, experiment: str, method: str, setting: str, rate: float, acc: float, task: str = "sst2",
         eval_task: str | None = None, seed: int = 0, samples: int = 10, **rates) -> dict:  # noqa: ANN003
    spec = {"rate": rate, "modules": ["decoder"], "layer_types": ["self_attn", "cross_attn", "ffn"],
            "module_rates": {}, "layer_type_rates": {}, "depth_rates": [], **rates}
    return {"id": f"r{i}", "experiment": experiment, "task": task, "eval_task": eval_task or task, "method": method,
            "samples": samples, "sample_seed": 0, "trial_seed": seed, "rates": spec, "setting": setting,
            "metrics": {"accuracy": acc}}


def _rows() -> list[dict]:
    rows, i = [], 0
    rows.append(_row(i, "dense", "dense", "dense", 0.0, 90.0))
    for rate in (0.3, 0.6):
        for method, acc in (("attribution", 88.0), ("random", 70.0)):
            for seed in range(3 if method == "random" else 1):
                i += 1
                rows.append(_row(i, "module_specific", method, "decoder", rate, acc - 10 * rate + seed, seed=seed))
        for lt in ("self_attn", "ffn"):
            i += 1
            rows.append(_row(i, "layer_type", "attribution", f"decoder:{lt}", rate, 80.0, layer_types=[lt]))
        for d, (lo, hi) in {"low": (0, 1), "high": (4, 5)}.items():
            i += 1
            rows.append(_row(i, "depth", "attribution", f"all:{d}", 0.0, 75.0, depth_rates=[[lo, hi, rate]]))
        for src in ("sst2", "rte"):
            i += 1
            rows.append(_row(i, "unseen", "attribution", "decoder", rate, 60.0, task=src, eval_task="qnli"))
    for e in (0.0, 0.5):
        for d in (0.0, 0.5):
            i += 1
            rows.append(_row(i, "integrated", "attribution", f"enc={e},dec={d}", 0.0, 85.0 - 10 * e,
                             module_rates={"encoder": e, "decoder": d}))
    return rows


def test_report_draws_every_kind(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    rows = _rows()
    failed = dict(rows[1], metrics={}, error="boom")
    results.write_text("".join(json.dumps(r) + "\n" for r in [failed, *rows]))
    out = write_report(results, tmp_path / "rep")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["depth.png", "integrated.png", "layer_type.png", "module_specific.png", "unseen.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out.glob("*.png"))
    md = (out / "README.md").read_text()
    assert "Dense model: SST2 90.00" in md
    assert "| SST2, decoder | random | 68.00 ± 1.00 | 65.00 ± 1.00 |" in md  # seeds add 0, 1, 2: mean ± std
    assert "| SST2, decoder | attribution | 85.00 | 82.00 |" in md
    assert "| SST2 | decoder | random | 1.00 | 3 |" in md  # Table 1
    assert "evaluated on QNLI, decoder" in md


def test_last_row_of_an_id_wins_and_errors_are_left_out(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    a = _row(1, "m", "attribution", "decoder", 0.5, 50.0)
    results.write_text(json.dumps(dict(a, error="x", metrics={})) + "\n" + json.dumps(a) + "\n"
                       + json.dumps(dict(a, id="r2", error="y", metrics={})) + "\n")
    assert [r["id"] for r in latest_rows(results)] == ["r1"]


def test_several_results_files_make_one_report_later_rows_win(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep re-run into a second file (e.g. with per-example outcomes) replaces the first file's rows of the same
    runs and keeps the others; files of different models are refused, naming both."""
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    model = str(tmp_path / "model")
    rows = [dict(r, model=model) for r in _rows()]
    old.write_text("".join(json.dumps(r) + "\n" for r in rows))  # legacy rows: a model path, no fingerprint
    redo = dict(rows[1], metrics={"accuracy": 12.5}, model=model, model_fingerprint="f1")
    new.write_text(json.dumps(redo) + "\n")
    got = {r["id"]: r for r in latest_rows([old, new])}
    assert len(got) == len(rows) and got[rows[1]["id"]]["metrics"]["accuracy"] == 12.5
    assert all("_file" not in r for r in got.values())
    assert main(["report", str(old), str(new), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "README.md").read_text()
    assert f"From `{old}` + `{new}` ({len(rows)} runs" in md
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(dict(rows[2], model_fingerprint="f2")) + "\n")
    capsys.readouterr()
    assert main(["report", str(new), str(other), "--out", str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"taskprune: error: {new} and {other} hold runs of different models (fingerprints f1 and f2): "
                   "one report is one model"]
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps(dict(rows[2], model=str(tmp_path / "another-model"))) + "\n")
    with pytest.raises(TaskpruneError, match="holds runs of another model"):
        latest_rows([new, elsewhere])
    assert not (tmp_path / "rep2").exists()


def test_report_cli_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert main(["report", str(results), "--out", str(tmp_path / "rep")]) == 0
    assert "5 figures" in capsys.readouterr().out
    assert main(["report", str(results), "--out", str(tmp_path / "rep")]) == 2  # exists: not overwritten
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TaskpruneError, match="no complete sweep results \\(it is empty\\)"):
        write_report(tmp_path / "empty.jsonl", tmp_path / "rep2")


def test_damaged_outcomes_are_one_line_before_drawing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows()
    rows[1]["outcomes"] = {"examples": "ev", "n": 872, "correct": "AAAA"}  # 3 bytes for 872 examples
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["taskprune: error: row r1: outcomes hold 3 bytes for 872 examples"]
    assert not (tmp_path / "rep" / "README.md").exists()


def test_grid_cells_do_not_mix_methods(tmp_path: Path) -> None:
    rows = [_row(i, "grid", m, f"enc={e},dec=0.0", 0.0, acc, module_rates={"encoder": e, "decoder": 0.0})
            for i, (m, e, acc) in enumerate([("attribution", 0.0, 80.0), ("attribution", 0.5, 70.0),
                                             ("random", 0.0, 60.0), ("random", 0.5, 50.0)])]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = write_report(tmp_path / "r.jsonl", tmp_path / "rep")
    assert (out / "grid.png").is_file()
    from taskprune.experiments.report import grid_cells

    cells = grid_cells(rows)
    assert cells == {("sst2", "sst2", "attribution", "10"): {(0.0, 0.0): 80.0, (0.5, 0.0): 70.0},
                     ("sst2", "sst2", "random", "10"): {(0.0, 0.0): 60.0, (0.5, 0.0): 50.0}}


def test_reporting_into_the_results_folder_keeps_the_results_and_appends_notes(tmp_path: Path) -> None:
    folder = tmp_path / "paper"
    folder.mkdir()
    results = folder / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    (folder / "config.yaml").write_text("experiments: []\n")
    notes = folder / "NOTES.md"
    notes.write_text("## Reading\n\nhand-written\n")
    write_report(results, folder, overwrite=True, notes=notes)
    write_report(results, folder, overwrite=True, notes=notes)  # twice: nothing accumulates or disappears
    assert results.read_text().count("\n") == len(_rows()) and (folder / "config.yaml").is_file()
    md = (folder / "README.md").read_text()
    assert md.count("## Reading") == 1 and md.rstrip().endswith("hand-written") and "h of run time" in md
    with pytest.raises(TaskpruneError, match="notes file"):
        write_report(results, folder, overwrite=True, notes=tmp_path / "missing.md")


def test_a_new_report_removes_only_its_own_old_figures(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "rep"
    write_report(results, out)
    (out / "mine.png").write_bytes(b"\x89PNG hand-made")
    (out / "sub").mkdir()
    kept = [r for r in _rows() if r["experiment"] != "depth"]
    results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(TaskpruneError, match="already holds a report"):
        write_report(results, out)
    write_report(results, out, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert "depth.png" not in names and "mine.png" in names and "sub" in names and "r.jsonl" not in names
    assert not [n for n in names if n.startswith(".report.")]
