"""The benchmark scripts run end to end on a tiny model (numbers meaningless; the scripts must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer

from taskprune.models import get_adapter
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    model = make_model("bert2bert")
    model.save_pretrained(root / "model")
    make_tokenizer("bert2bert").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    (root / "plans").mkdir()
    for task in ("sst2", "rte"):
        make_plan(model, scores, RateSpec(rate=0.5), task=task, method="random").save(root / "plans" / f"{task}.json")
    return root


def _run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=3600)  # a hang guard, not a speed bound
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_bench_prints_every_ratio(tiny: Path) -> None:
    out = _run("benchmarks/bench.py", "--model", str(tiny / "model"), "--data-dir", str(tiny / "none"),
               "--examples", "8", "--batch-size", "4", "--repeats", "1", "--latency-repeats", "2")
    for needle in ("throughput ratio", "peak memory ratio", "| encoder | 0.3 | 16 |", "| both | 0.7 | 1 |",
                   "| both, widths x8 | 0.5 | 16 |", "## c. compress", "| taskprune (default"):
        assert needle in out


def test_load_serve_runs_and_reports(tiny: Path) -> None:
    out = _run("benchmarks/load_serve.py", "--model", str(tiny / "model"), "--plans", str(tiny / "plans"),
               "--tasks", "sst2", "rte", "--data-dir", str(tiny / "none"), "--clients", "2", "--seconds", "2",
               "--repeats", "1")
    assert "cut ÷ copy" in out and "HTTP overhead" in out and "inputs per call" in out
    row = next(line for line in out.split("## Load")[1].splitlines() if line.startswith("| ") and line[2].isdigit())
    requests, errors = row.split("|")[1:3]
    assert int(requests) > 0 and errors.strip() == "0"


def test_bench_runs_on_a_decoder_only_model(tmp_path: Path) -> None:
    from tiny import tiny_causal, tiny_causal_tokenizer

    tiny_causal("llama", heads=6, kv_heads=3, hidden=48).save_pretrained(tmp_path / "causal")
    tiny_causal_tokenizer().save_pretrained(tmp_path / "causal")
    out = _run("benchmarks/bench.py", "--model", str(tmp_path / "causal"), "--data-dir", str(tmp_path / "none"),
               "--examples", "8", "--batch-size", "4", "--repeats", "1", "--latency-repeats", "2", "--new-tokens", "4")
    for needle in ("throughput ratio", "| ffn | 0.3 | 16 |", "| heads+ffn | 0.5 | 1 |", "## b2. Greedy generation",
                   "| heads+ffn | 0.5 |", "## c. compress"):
        assert needle in out


def test_scale_runs_resumes_and_reports(tmp_path: Path) -> None:
    """benchmarks/scale.py on its smoke shape: a row per size with every measure, a second run adds nothing (it
    resumes), the report writes the table, the log-log slopes and the plot."""
    import json

    pytest.importorskip("matplotlib")
    from tiny import tiny_causal_tokenizer

    tiny_causal_tokenizer().save_pretrained(tmp_path / "tok")
    out = tmp_path / "scale" / "results.jsonl"
    args = ("benchmarks/scale.py", "--sizes", "tiny", "--tokenizer", str(tmp_path / "tok"), "--data-dir",
            str(tmp_path / "none"), "--examples", "4", "--calibration", "6", "--pairs", "2", "--new-tokens", "3",
            "--threads", "1", "--score-rounds", "2", "--out", str(out))
    _run(*args)
    _run(*args)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["pruned_params"] < rows[0]["params"]
    for key in ("scoring_s", "bare_s", "bare_recompute_s", "compress_s", "score_peak_kb", "infer_peak_kb",
                "compress_peak_kb", "speedup_b1", "speedup_b16", "gen_tokens_s", "bare_ratio", "bare_recompute_ratio",
                "compress_inplace"):
        assert key in rows[0]
    assert len(rows[0]["scoring_runs_s"]) == len(rows[0]["bare_recompute_runs_s"]) == 2
    second = dict(rows[0], size="tiny", params=rows[0]["params"] * 4, scoring_s=rows[0]["scoring_s"] * 4 + 1e-3)
    out.write_text(out.read_text() + json.dumps(second) + "\n")
    text = _run("benchmarks/scale.py", "--report", str(tmp_path / "scale"), "--out", str(out), "--include-tiny")
    assert "log-log slope of scoring s" in text and (tmp_path / "scale" / "scale.png").stat().st_size > 0
    assert "(NOT measured)" in text
    # --compress-only: a row of its own (the full row does not count as done for it), reported in its own table
    _run(*args, "--compress-only")
    only = [json.loads(x) for x in out.read_text().splitlines()][-1]
    assert only["compress_only"] and only["compress_peak_kb"] >= only["compress_base_kb"] > 0
    assert only["pruned_params"] < only["params"] and "speedup_b1" not in only
    text = _run("benchmarks/scale.py", "--report", str(tmp_path / "scale"), "--out", str(out), "--include-tiny")
    assert "Compress only" in text and text.count("| tiny |") == 3
