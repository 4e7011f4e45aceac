"""Fine-tuning a decoder-only LM: full or through a LoRA adapter (PEFT), bf16 autocast, length bucketing, and an
adapter folder used as ``--model`` (merged once, cached, hash checked). Tiny random models, data in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune import _cfg, _rows, _save, _task_dir
from tiny import Interrupted, interrupt_at, tiny_causal, tiny_causal_tokenizer

from taskprune.checkpoint import load_model, load_tokenizer
from taskprune.errors import TaskpruneError
from taskprune.evaluate import evaluate
from taskprune.sources.lora import MANIFEST, WEIGHTS, is_lora_dir, sha256_file
from taskprune.tasks import get_task, load_examples
from taskprune.training.config import FinetuneConfig
from taskprune.training.loop import finetune
from taskprune.training.mixing import batch_indices, bucketed_batch

pytest.importorskip("peft")


@pytest.fixture
def llama_dir(tmp_path: Path) -> str:
    """A tiny LM whose (tied, frozen under LoRA) embeddings are large enough for confident logits: at the usual
    0.02 init, logits of a 32-wide model cannot leave the neighbourhood of uniform, whatever an adapter learns."""
    model = tiny_causal("llama", layers=2)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25.0)
    return _save(model, tiny_causal_tokenizer(), tmp_path / "llama")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "cache"))


def test_full_finetune_of_a_causal_lm_learns(tmp_path: Path, llama_dir: str) -> None:
    cfg = _cfg(tmp_path, llama_dir, steps=100, lr=1e-2)
    metrics = finetune(cfg)
    losses = [r["loss"] for r in _rows(cfg, "train")]
    assert losses[-1] < 0.5 * losses[0]
    assert metrics["toy"]["accuracy"] == 100.0
    assert (Path(cfg.out_dir) / "final" / "model.safetensors").is_file()


def test_lora_trains_only_the_adapter_and_exports_it(tmp_path: Path, llama_dir: str) -> None:
    cfg = _cfg(tmp_path, llama_dir, steps=100, lr=2e-2, lora_rank=4, autocast="bfloat16", bucket=2,
               dtype="bfloat16")
    metrics = finetune(cfg)
    losses = [r["loss"] for r in _rows(cfg, "train")]
    assert losses[-1] < 0.5 * losses[0]
    final = Path(cfg.out_dir) / "final"
    assert is_lora_dir(final) and not (final / "model.safetensors").exists()
    manifest = json.loads((final / MANIFEST).read_text())
    assert manifest["base"] == llama_dir and manifest["dtype"] == "bfloat16"
    from safetensors.torch import load_file

    weights = load_file(str(final / WEIGHTS))
    assert weights and all(v.dtype == torch.bfloat16 for v in weights.values())
    assert all("lora_" in k for k in weights)
    # the exported adapter, used as --model, is merged into its base: the same accuracy as at the end of training
    merged = load_model(str(final))
    task = get_task(_task_dir(tmp_path))
    res = evaluate(merged, load_tokenizer(str(final)), task, load_examples(task, "eval"))
    assert res.metrics["accuracy"] == pytest.approx(metrics["toy"]["accuracy"], abs=10.0)
    assert (tmp_path / "cache" / "merged").is_dir()


def test_merged_adapter_equals_the_trained_model(tmp_path: Path, llama_dir: str) -> None:
    """float32 export: the merged checkpoint's logits equal those of the model as training left it."""
    seen: dict[str, torch.Tensor] = {}
    cfg = _cfg(tmp_path, llama_dir, steps=10, lr=2e-2, lora_rank=4, dtype="float32")
    finetune(cfg)
    final = Path(cfg.out_dir) / "final"
    from peft import PeftModel

    base = load_model(llama_dir)
    ref = PeftModel.from_pretrained(base, str(final)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        seen["ref"] = ref(input_ids=ids).logits
        seen["merged"] = load_model(str(final))(input_ids=ids).logits
    assert torch.allclose(seen["ref"], seen["merged"], atol=1e-5)
    assert not torch.allclose(seen["merged"], load_model(llama_dir)(input_ids=ids).logits, atol=1e-3)


def test_lora_resume_matches_uninterrupted(tmp_path: Path, llama_dir: str) -> None:
    ref = _cfg(tmp_path, llama_dir, steps=10, save_every=4, log_every=1, lora_rank=4, dtype="float32",
               out_dir=str(tmp_path / "ref"), bucket=2)
    finetune(ref)
    cfg = _cfg(tmp_path, llama_dir, steps=10, save_every=4, log_every=1, lora_rank=4, dtype="float32", bucket=2)

    with pytest.raises(Interrupted):
        finetune(cfg, log=interrupt_at(7))
    state = torch.load(Path(cfg.out_dir) / "checkpoint" / "state.pt", weights_only=False)
    assert state["model"] and all("lora_" in k for k in state["model"])  # the adapter, not the whole model
    seen: list[dict] = []
    finetune(cfg, log=seen.append)
    assert seen[0] == {"event": "resume", "step": 4}
    from safetensors.torch import load_file

    a = load_file(str(Path(ref.out_dir) / "final" / WEIGHTS))
    b = load_file(str(Path(cfg.out_dir) / "final" / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_lora_rank(tmp_path: Path, llama_dir: str) -> None:
    finetune(_cfg(tmp_path, llama_dir, steps=4, save_every=2, lora_rank=4, eval_every=0))
    (Path(tmp_path / "run") / "final").rename(tmp_path / "moved")
    with pytest.raises(TaskpruneError, match="lora_rank"):
        finetune(_cfg(tmp_path, llama_dir, steps=4, save_every=2, lora_rank=8))


def test_bucketing_visits_every_example_once_per_epoch_and_groups_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=96).tolist()
    batches = [bucketed_batch(lengths, k, 8, seed=3, task_index=1, bucket=4) for k in range(12)]  # one epoch
    assert sorted(i for b in batches for i in b) == list(range(96))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    plain = np.mean([np.ptp([lengths[i] for i in batch_indices(96, k, 8, 3, 1)]) for k in range(12)])
    assert spread < 0.5 * plain
    assert bucketed_batch(lengths, 5, 8, 3, 1, bucket=1) == batch_indices(96, 5, 8, 3, 1)


def test_damaged_adapter_is_refused_in_one_line(tmp_path: Path, llama_dir: str) -> None:
    cfg = _cfg(tmp_path, llama_dir, steps=2, lora_rank=2)
    finetune(cfg)
    final = Path(cfg.out_dir) / "final"
    data = bytearray((final / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (final / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(TaskpruneError, match="does not match the SHA-256"):
        load_model(str(final))
    (final / MANIFEST).unlink()
    with pytest.raises(TaskpruneError, match="without taskprune-adapter.json"):
        load_model(str(final))


def test_an_adapter_that_cannot_be_merged_into_its_base_is_one_line(tmp_path: Path, llama_dir: str) -> None:
    """Issue 31: junk weights whose manifest hash matches escaped as a SafetensorError (exit 1, no file named);
    an adapter of another base reached PEFT. Both are now one line naming the file, before anything is merged."""
    from safetensors.torch import save_file

    cfg = _cfg(tmp_path, llama_dir, steps=2, lora_rank=2)
    finetune(cfg)
    final = Path(cfg.out_dir) / "final"

    def rehash() -> None:  # the manifest vouches for the new bytes: only the content can be at fault
        manifest = json.loads((final / MANIFEST).read_text())
        (final / MANIFEST).write_text(json.dumps({**manifest, "sha256": sha256_file(final / WEIGHTS)}))

    (final / WEIGHTS).write_bytes(b"\xff" * 64)
    rehash()
    with pytest.raises(TaskpruneError, match=f"{WEIGHTS} is not a readable safetensors file"):
        load_model(str(final))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 7)},
              str(final / WEIGHTS))
    rehash()
    with pytest.raises(TaskpruneError, match="has shape \\[2, 7\\].*trained on another base model"):
        load_model(str(final))


def test_config_rejects_bad_lora_settings() -> None:
    with pytest.raises(TaskpruneError, match="lora_dropout"):
        FinetuneConfig(model="m", out_dir="o", lora_rank=4, lora_dropout=1.5)
    with pytest.raises(TaskpruneError, match="autocast"):
        FinetuneConfig(model="m", out_dir="o", autocast="fp8")


def test_a_second_stage_trains_the_first_stages_adapter_further(tmp_path: Path, llama_dir: str) -> None:
    """--init-adapter: stage 2 starts exactly from stage 1's adapter (with a zero learning rate it exports the
    same weights) and exports ONE adapter of the same base; another base or rank is refused before training."""
    from safetensors.torch import load_file

    first = _cfg(tmp_path, llama_dir, steps=10, lr=2e-2, lora_rank=4, dtype="float32", out_dir=str(tmp_path / "s1"))
    finetune(first)
    stage1 = Path(first.out_dir) / "final"
    second = _cfg(tmp_path, llama_dir, steps=2, lr=1e-30, warmup_steps=0, init_adapter=str(stage1),
                  out_dir=str(tmp_path / "s2"))
    assert second.lora_rank == 4  # taken from the adapter
    finetune(second)
    stage2 = Path(second.out_dir) / "final"
    a, b = load_file(str(stage1 / WEIGHTS)), load_file(str(stage2 / WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert json.loads((stage2 / MANIFEST).read_text())["base"] == llama_dir
    with pytest.raises(TaskpruneError, match="was trained on"):
        _cfg(tmp_path, str(tmp_path / "other"), init_adapter=str(stage1))
    with pytest.raises(TaskpruneError, match="has rank 4"):
        _cfg(tmp_path, llama_dir, lora_rank=8, init_adapter=str(stage1))
    with pytest.raises(TaskpruneError, match="not a LoRA adapter"):
        _cfg(tmp_path, llama_dir, init_adapter=str(tmp_path))
