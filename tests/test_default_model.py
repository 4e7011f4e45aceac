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
