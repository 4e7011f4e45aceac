"""Fine-tuning and bert2bert warm-starting, on tiny random models and tiny data in tmp_path (no ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import WORDS, Interrupted, interrupt_at, tiny_bert2bert, tiny_t5, tiny_tokenizer
from transformers import BertConfig, BertModel, EncoderDecoderModel

from taskprune.errors import TaskpruneError
from taskprune.evaluate import count_parameters
from taskprune.models.bert2bert import is_tied, tie_embeddings
from taskprune.training.config import FinetuneConfig
from taskprune.training.loop import finetune
from taskprune.training.mixing import batch_for_step, mixture_weights, task_schedule
from taskprune.training.seq2seq_init import build_bert2bert, init_seq2seq

POS = ["good movie", "great film", "a very good film", "this movie was great", "good and great"]
NEG = ["bad movie", "awful film", "a very bad film", "this movie was awful", "bad and awful"]


def _task_dir(tmp_path: Path) -> Path:
    d = tmp_path / "toy"
    if (d / "toy.json").exists():
        return d / "toy.json"
    d.mkdir(exist_ok=True)
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    for split in ("fit", "eval"):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "toy.json").write_text(json.dumps({
        "name": "toy", "template": "sst2 sentence : {text}", "label_words": ["negative", "positive"],
        "files": {"fit": "fit.jsonl", "eval": "eval.jsonl"},
    }))
    return d / "toy.json"


def _save(model, tok, path: Path) -> str:  # noqa: ANN001
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _cfg(tmp_path: Path, model: str, **kw) -> FinetuneConfig:  # noqa: ANN003
    base = dict(model=model, out_dir=str(tmp_path / "run"), tasks=(str(_task_dir(tmp_path)),), steps=30,
                batch_size=4, lr=1e-2, warmup_steps=2, log_every=5, eval_every=0, save_every=0, dtype="float32")
    base.update(kw)
    return FinetuneConfig(**base)


def _rows(cfg: FinetuneConfig, event: str) -> list[dict]:
    lines = (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]


def test_loss_decreases_t5(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, _save(tiny_t5(), tiny_tokenizer(), tmp_path / "t5"))
    metrics = finetune(cfg)
    losses = [r["loss"] for r in _rows(cfg, "train")]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert metrics["toy"]["accuracy"] == 100.0
    final = Path(cfg.out_dir) / "final"
    assert (final / "model.safetensors").is_file() and (final / "metrics.json").is_file()


def test_resume_continues_and_matches_uninterrupted(tmp_path: Path) -> None:
    model = _save(tiny_t5(), tiny_tokenizer(), tmp_path / "t5")
    ref = _cfg(tmp_path, model, steps=12, save_every=4, log_every=1, out_dir=str(tmp_path / "ref"))
    finetune(ref)
    cfg = _cfg(tmp_path, model, steps=12, save_every=4, log_every=1)

    with pytest.raises(Interrupted):
        finetune(cfg, log=interrupt_at(9))
    seen: list[dict] = []
    finetune(cfg, log=seen.append)
    assert seen[0] == {"event": "resume", "step": 8}
    assert [r["step"] for r in seen if r.get("event") == "train"] == [9, 10, 11, 12]
    assert [r["step"] for r in _rows(cfg, "train")] == list(range(1, 13))
    a = load_file(str(Path(ref.out_dir) / "final" / "model.safetensors"))
    b = load_file(str(Path(cfg.out_dir) / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_resume_with_other_settings_is_refused_before_the_model_loads(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import taskprune.training.loop as ft

    model = _save(tiny_t5(), tiny_tokenizer(), tmp_path / "t5")
    cfg = _cfg(tmp_path, model, steps=8, save_every=4, log_every=1)

    with pytest.raises(Interrupted):
        finetune(cfg, log=interrupt_at(5))
    loads: list[str] = []
    real = ft._load_base
    monkeypatch.setattr(ft, "_load_base", lambda c: loads.append(c.model) or real(c))
    with pytest.raises(TaskpruneError, match=r"written with other settings \(batch_size\)"):
        finetune(_cfg(tmp_path, model, steps=8, save_every=4, log_every=1, batch_size=2))
    assert loads == []  # refused from the run's config.json, before minutes of loading
    finetune(cfg)  # the same settings resume
    assert loads == [model]


def test_mixture_respects_cap() -> None:
    sizes = [100_000, 10, 1_000]
    w = mixture_weights(sizes, cap=1_000)
    assert w == pytest.approx([1000 / 2010, 10 / 2010, 1000 / 2010])
    sched = task_schedule(sizes, 1_000, 20_000, seed=0)
    freq = np.bincount(sched, minlength=3) / len(sched)
    assert freq == pytest.approx(w, abs=0.02)
    # each task walks through full seeded permutations of its examples
    idx = [i for s in range(len(sched)) if sched[s] == 1 for i in batch_for_step(s, sched[:s + 1], sizes, 5, 0)[1]]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))


def _tiny_bert_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 4, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                     num_hidden_layers=2, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(d))
    tiny_tokenizer(bert_style=True).save_pretrained(str(d))
    return d


def test_init_seq2seq_ties_and_round_trips(tmp_path: Path) -> None:
    src = _tiny_bert_dir(tmp_path)
    model, tok = build_bert2bert(src)
    assert is_tied(model)
    assert model.decoder.get_output_embeddings().weight is model.encoder.get_input_embeddings().weight
    n_tied = count_parameters(model)["total"]
    assert model.config.decoder_start_token_id == tok.cls_token_id
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.sep_token_id)
    # the encoder's pretrained weights are in both stacks
    enc = model.encoder.encoder.layer[0].attention.self.query.weight
    assert torch.equal(enc, model.decoder.bert.encoder.layer[0].attention.self.query.weight)

    out = tmp_path / "init"
    init_seq2seq(src, out)
    loaded = EncoderDecoderModel.from_pretrained(str(out)).eval()
    x = tok(["sst2 sentence : good movie"], return_tensors="pt")
    dec = torch.tensor([[tok.cls_token_id, 5]])
    with torch.no_grad():
        before = loaded(**x, decoder_input_ids=dec).logits
    assert tie_embeddings(loaded) and is_tied(loaded) and count_parameters(loaded)["total"] == n_tied
    with torch.no_grad():
        assert torch.equal(before, loaded(**x, decoder_input_ids=dec).logits)
    out_ids = loaded.generate(**x, max_new_tokens=3)
    assert out_ids[0, 0].item() == tok.cls_token_id


def test_bert2bert_finetune_smoke(tmp_path: Path) -> None:
    src = _tiny_bert_dir(tmp_path)
    init_seq2seq(src, tmp_path / "init")
    cfg = _cfg(tmp_path, str(tmp_path / "init"), steps=10, eval_every=5, eval_examples=4, dtype="float16")
    finetune(cfg)
    assert len(_rows(cfg, "eval")) == 1
    final = EncoderDecoderModel.from_pretrained(str(Path(cfg.out_dir) / "final"))
    assert next(final.parameters()).dtype == torch.float16


def test_tiny_bert2bert_fixture_is_untied_and_untouched() -> None:
    m = tiny_bert2bert()
    assert not is_tied(m) and not tie_embeddings(m)  # different values: left alone


def test_config_round_trip(tmp_path: Path) -> None:
    cfg = FinetuneConfig(model="m", out_dir="o", task_max_length={"boolq": 256})
    assert FinetuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.max_length_for("boolq") == 256 and cfg.max_length_for("sst2") == 128 and cfg.n_warmup == 100


def test_a_task_length_override_must_name_a_trained_task() -> None:
    """A misspelt --task-max-length would train that task at the default length without a word."""
    cfg = FinetuneConfig(model="m", out_dir="o", tasks=("sst2", "rte"), task_max_length={"RTE": 256})
    assert cfg.max_length_for("rte") == 256  # spelt as the user likes, stored by the task's name
    with pytest.raises(TaskpruneError, match="names rtee, which is not among the tasks trained"):
        FinetuneConfig(model="m", out_dir="o", tasks=("sst2", "rte"), task_max_length={"rtee": 256})
    with pytest.raises(TaskpruneError, match="names boolq"):
        FinetuneConfig(model="m", out_dir="o", tasks=("sst2", "rte"), task_max_length={"boolq": 256})
