"""Integration: the committed default model reproduces its model card (SST-2 dev within 0.5 points)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_shared_data

from taskprune.api import default_model_dir

MODEL = default_model_dir()
needs_model = pytest.mark.skipif(MODEL is None, reason="the default model models/minilm-glue6 is not committed yet")


@needs_shared_data
@needs_model
def test_default_model_matches_its_card_on_sst2() -> None:
    import torch

    import taskprune as tp

    card = json.loads((MODEL / "eval_results.json").read_text())
    model, tok = tp.load_model(MODEL, dtype=torch.float32), tp.load_tokenizer(MODEL)
    task = tp.get_task("sst2")
    result = tp.evaluate(model, tok, task, tp.load_examples(task, "eval", SHARED_DATA))
    assert abs(result.metrics["accuracy"] - card["sst2"]["accuracy"]) <= 0.5


@needs_shared_data
@needs_model
@pytest.mark.parametrize("method", ["attribution", "attribution-unsupervised", "activation", "random-attribution",
                                    "random", "svd", "smp", "smp-unstructured"])
def test_every_method_compresses_the_default_model(method: str, tmp_path, capsys) -> None:  # noqa: ANN001
    """Issue 4's done-when: `taskprune compress --method M` on the default model, for every M."""
    from taskprune.checkpoint import load_model
    from taskprune.cli import main

    out = tmp_path / method
    code = main(["compress", "--task", "rte", "--data-dir", str(SHARED_DATA), "--method", method, "--samples", "4",
                 "--modules", "decoder", "--rate", "0.5", "--smp-steps", "3", "--eval-examples", "8",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "accuracy" in text
    load_model(out)  # every method's checkpoint loads back
