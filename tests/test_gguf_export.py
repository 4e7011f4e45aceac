"""GGUF export (taskprune/portable/gguf.py) run in llama.cpp itself (llama-cpp-python): per-layer widths as
``deci`` and uniform ones as the family's own architecture give the torch model's logits; quantized files load
and generate; rank classification through llama.cpp equals torch's; what llama.cpp cannot run is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_bert2bert, tiny_causal, tiny_causal_tokenizer, tiny_tokenizer

from taskprune.cli import main
from taskprune.errors import TaskpruneError
from taskprune.evaluate import evaluate
from taskprune.lm import KINDS
from taskprune.models import get_adapter
from taskprune.portable.gguf import export_gguf, plan_layers
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.tasks import Example, Task

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (make test installs it)")
TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good"]
IDS = [3, 5, 7, 9, 11, 4, 8, 6]


def _pruned(model_type: str, per_layer: bool) -> torch.nn.Module:
    """4 layers, 4 query heads over 2 KV heads; per layer: one attention and one FFN pruned away among others."""
    model = tiny_causal(model_type, layers=4, heads=4, kv_heads=2, hidden=64)
    groups = get_adapter(model).groups()  # [heads 0, ffn 0, heads 1, ffn 1, ...]
    rates = (RateSpec(rate=0.5, group_rates=dict(zip([g.name for g in groups], (0.5, 0.25, 1.0, 0.5, 0.0, 1.0, 0.75, 0.5))))
             if per_layer else RateSpec(rate=0.5))
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(0)) for g in groups}
    return apply(make_plan(model, scores, rates), model)


def _llama(path: Path, f32_cache: bool = True):
    import llama_cpp

    kw = {"type_k": 0, "type_v": 0} if f32_cache else {}
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=1, verbose=False, **kw)


def _gguf_field(path: Path, key: str) -> object:
    import gguf

    return gguf.GGUFReader(str(path)).fields[key].contents()


@needs_llama_cpp
@pytest.mark.parametrize(("model_type", "per_layer", "arch"), [
    ("llama", True, "deci"), ("qwen2", True, "deci"), ("mistral", True, "deci"),
    ("llama", False, "llama"), ("qwen3", False, "qwen3"), ("qwen2", False, "deci")])
def test_llama_cpp_gives_the_torch_models_logits(model_type: str, per_layer: bool, arch: str, tmp_path: Path) -> None:
    model = _pruned(model_type, per_layer)
    if per_layer:
        attn = [layer.self_attn for layer in model.model.layers]
        assert {a.q_proj.out_features // a.head_dim for a in attn} != {attn[0].q_proj.out_features // attn[0].head_dim}
        assert min(layer.mlp.down_proj.in_features for layer in model.model.layers) == 0  # an FFN pruned away
    path, written, _ = export_gguf(model, tiny_causal_tokenizer(), tmp_path / "m.gguf", "f32")
    assert written == arch == _gguf_field(path, "general.architecture")
    llm = _llama(path)
    llm.eval(IDS)
    got = np.array(llm.scores[: len(IDS)])
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(got - want).max() <= 1e-4


@needs_llama_cpp
def test_a_quantized_export_loads_and_generates(tmp_path: Path) -> None:
    model = _pruned("llama", per_layer=True)
    f16, _, _ = export_gguf(model, tiny_causal_tokenizer(), tmp_path / "f16.gguf", "f16")
    q8, arch, _ = export_gguf(model, tiny_causal_tokenizer(), tmp_path / "q8.gguf", "q8_0")
    assert arch == "deci" and q8.stat().st_size < f16.stat().st_size
    llm = _llama(q8, f32_cache=False)
    out = llm.generate(IDS, temp=0.0)
    tokens = [next(out) for _ in range(4)]
    assert len(tokens) == 4 and all(0 <= t < model.config.vocab_size for t in tokens)


@needs_llama_cpp
def test_rank_classification_through_llama_cpp_equals_torch(tmp_path: Path) -> None:
    from taskprune.portable.llamacpp import LlamaCppModel, evaluate_gguf

    model, tok = _pruned("qwen2", per_layer=True), tiny_causal_tokenizer()
    path, _, _ = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    examples = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(TEXTS)]
    kind = KINDS["causal"]
    labels = kind.label_space(tok, TASK)
    last_only, every = LlamaCppModel(path, f32_cache=True), LlamaCppModel(path, f32_cache=True, all_logits=True)
    for e in examples:
        prompt = kind.prompt_ids(tok, e, 256)
        want = kind.rank_scores(model, kind.encode(tok, [e], 256), labels)[0].tolist()
        for llm in (last_only, every):  # logits of the last position only, or of every position
            got = llm.rank_scores(prompt, [list(t) for t in labels.targets])
            assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-4
        with torch.no_grad():
            full = model(torch.tensor([prompt])).logits[0].numpy()
        assert np.abs(every.logits(prompt) - full).max() <= 1e-4
        assert last_only.greedy(prompt, 3) == every.greedy(prompt, 3)
    res = evaluate_gguf(path, tok, TASK, examples, f32_cache=True)
    assert res.predictions == evaluate(model, tok, TASK, examples).predictions


def test_what_llama_cpp_cannot_run_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(TaskpruneError, match="decoder-only Llama-layout"):
        plan_layers(tiny_bert2bert())
    with pytest.raises(TaskpruneError, match="Qwen3's per-head q/k norms"):
        plan_layers(_pruned("qwen3", per_layer=True))
    with pytest.raises(TaskpruneError, match="unknown GGUF type"):
        export_gguf(_pruned("llama", per_layer=False), tiny_causal_tokenizer(), tmp_path / "x.gguf", "q9_9")
    assert not list(tmp_path.iterdir())


def test_the_export_command_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.checkpoint import save_pruned

    save_pruned(tiny_bert2bert(), tmp_path / "b2b", tiny_tokenizer(bert_style=True))
    taken = tmp_path / "taken.gguf"
    taken.write_bytes(b"the user's")
    capsys.readouterr()  # the set-up's progress bars
    for argv, needle in (
            (["--model", str(tmp_path / "b2b"), "--out", str(tmp_path / "a.gguf")], "decoder-only Llama-layout"),
            (["--model", str(tmp_path / "b2b"), "--out", str(taken)], "already exists"),
            (["--model", str(tmp_path / "b2b"), "--quantize", "q9_9", "--out", str(tmp_path / "b.gguf")], "q9_9")):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("taskprune: error: ") and needle in err, err
    assert taken.read_bytes() == b"the user's" and sorted(p.name for p in tmp_path.iterdir()) == ["b2b", "taken.gguf"]


@needs_llama_cpp
def test_export_and_llama_cpp_eval_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.checkpoint import save_pruned

    model, tok = _pruned("llama", per_layer=True), tiny_causal_tokenizer()
    save_pruned(model, tmp_path / "ckpt", tok)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS)))
    (tmp_path / "task.yaml").write_text("name: toy\ntemplate: '{text}'\ncausal_template: 'review {text} Answer:'\n"
                                        "label_words: [negative, positive]\nlabel_values: ['0', '1']\n"
                                        "files: {fit: data.jsonl, eval: data.jsonl}\n")
    assert main(["export", "--model", str(tmp_path / "ckpt"), "--quantize", "f32", "--out", str(tmp_path / "m.gguf")]) == 0
    assert "deci: per-layer widths" in capsys.readouterr().out
    assert main(["eval", "--model", str(tmp_path / "m.gguf"), "--backend", "llama.cpp", "--tokenizer",
                 str(tmp_path / "ckpt"), "--task", str(tmp_path / "task.yaml"), "--json"]) == 0
    through_llama_cpp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--task", str(tmp_path / "task.yaml"), "--json"]) == 0
    in_torch = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (through_llama_cpp["accuracy"], through_llama_cpp["examples"]) == (in_torch["accuracy"], in_torch["examples"])


def test_the_quantizers_fallbacks_become_one_line_naming_the_tensors() -> None:
    from taskprune.portable.gguf import summarize_quantizer_log

    log = [  # llama.cpp 0.3.36's own lines, as its quantizer wrote them for the default SmolLM2 compression
        "llama_model_loader: - type  f16:  211 tensors",
        "warning: blk.0.ffn_down.weight                - ncols   1304 not divisible by  32 (required for type    q8_0)"
        " (WARNING: must use F16 due to unusual shape) -> falling back to     f16",
        "warning: blk.1.ffn_down.weight                - ncols   1126 not divisible by  32 (required for type    q8_0)"
        " (WARNING: must use F16 due to unusual shape) -> falling back to     f16",
        "llama_model_quantize_impl: WARNING: 2 of 272 tensor(s) required fallback quantization",
        "something: WARNING: another thing",
    ]
    assert summarize_quantizer_log(log, "q8_0") == [
        "another thing", "2 tensor(s) stay f16, not q8_0: their rows are no multiple of q8_0's block of 32: "
        "blk.0.ffn_down.weight (1304), blk.1.ffn_down.weight (1126)"]


def _with_added_biases(model: torch.nn.Module, scale: float = 0.5) -> list[str]:
    """Large random biases on every o_proj and down_proj, added as repair adds them (pruning/biases.py)."""
    from taskprune.pruning.biases import add_biases

    names = [f"model.layers.{i}.{p}" for i in range(len(model.model.layers)) for p in ("mlp.down_proj", "self_attn.o_proj")]
    add_biases(model, names)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in names:
            bias = model.get_submodule(n).bias
            bias.copy_(torch.randn(bias.shape, generator=g) * scale)
    return names


@needs_llama_cpp
@pytest.mark.parametrize(("model_type", "per_layer", "arch"), [
    ("llama", True, "deci"), ("llama", False, "llama"), ("qwen2", True, "deci"), ("mistral", False, "llama")])
def test_biases_repair_added_reach_llama_cpp(model_type: str, per_layer: bool, arch: str, tmp_path: Path) -> None:
    """FLAP's compensation on a bias-less family (stock flags on Llama, recorded names on Qwen2/Mistral) is in the
    GGUF: llama.cpp gives the torch logits, which differ from the same model without those biases."""
    model = _pruned(model_type, per_layer)
    names = _with_added_biases(model)
    path, written, _ = export_gguf(model, tiny_causal_tokenizer(), tmp_path / "m.gguf", "f32")
    assert written == arch
    llm = _llama(path)
    llm.eval(IDS)
    got = np.array(llm.scores[: len(IDS)])
    with torch.no_grad():
        want = model(torch.tensor([IDS])).logits[0].numpy()
        for n in names:
            model.get_submodule(n).bias.zero_()
        without = model(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(got - want).max() <= 1e-4 < 0.1 < np.abs(without - want).max()


def test_a_qwen3_export_with_added_biases_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = _pruned("qwen3", per_layer=False)
    _with_added_biases(model)
    with pytest.raises(TaskpruneError, match="qwen3 architecture has no o_proj/FFN bias"):
        export_gguf(model, tiny_causal_tokenizer(), tmp_path / "m.gguf", "f32")
    assert not list(tmp_path.iterdir())
