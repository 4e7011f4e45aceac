"""Checkpoints that load where taskprune is not installed (taskprune/portable).

Every family's per-layer compression is loaded with ``from_pretrained(d, trust_remote_code=True)`` in a
subprocess where ``import taskprune`` raises ImportError, and must give load_pruned's logits, cached generation
equal to full recomputation, and a ``save_pretrained`` that loads the same way. Uniform widths stay stock, old
checkpoints (no remote code) still load, and a damaged modeling file is one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_bert2bert, tiny_causal, tiny_causal_tokenizer, tiny_t5, tiny_tokenizer

import taskprune as tp
from taskprune.checkpoint import load_pruned, loading_line
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.tasks import Example, Task

FIXTURES = Path(__file__).parent / "fixtures" / "pre_portable"
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film"]
TASK = Task("toy", "sst2 sentence: {text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
INPUT = [3, 5, 7, 9, 11, 4]

#: name -> (model, tokenizer, seq2seq?)
FAMILIES = {
    "llama": lambda: (tiny_causal("llama", layers=4), tiny_causal_tokenizer(), False),  # GQA: 4 heads over 2 KV
    "qwen2": lambda: (tiny_causal("qwen2", layers=4), tiny_causal_tokenizer(), False),  # q/k/v biases
    "qwen3": lambda: (tiny_causal("qwen3", layers=4), tiny_causal_tokenizer(), False),  # q/k norms, head_dim 12
    "mistral": lambda: (tiny_causal("mistral", layers=4), tiny_causal_tokenizer(), False),
    "t5-gated": lambda: (tiny_t5(gated=True, layers=3), tiny_tokenizer(), True),
    "bert2bert": lambda: (tiny_bert2bert(layers=3), tiny_tokenizer(bert_style=True), True),
}

#: run where taskprune cannot be imported: load every folder with remote code, compare, generate, re-save
CHECK = r'''
import importlib.abc, json, sys
class NoTaskprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "taskprune" or name.startswith("taskprune."):
            raise ImportError("taskprune is not installed here")
sys.meta_path.insert(0, NoTaskprune())
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

def logits(m, ids, seq2seq, dec):
    with torch.no_grad():
        return (m(input_ids=ids, decoder_input_ids=dec) if seq2seq else m(ids)).logits

results = {}
for folder, seq2seq in json.loads(sys.argv[1]):
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    m = auto.from_pretrained(folder, trust_remote_code=True).eval()
    ref = load_file(folder + "/reference.safetensors")
    ids, dec = ref["input_ids"], ref["decoder_input_ids"]
    out = {"class": type(m).__name__, "logits": (logits(m, ids, seq2seq, dec) - ref["logits"]).abs().max().item()}
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=0, eos_token_id=None)
    if seq2seq:
        gen = m.generate(input_ids=ids, decoder_start_token_id=int(dec[0, 0]), **kw)
        seq = dec[:, :1]
    else:
        gen = m.generate(input_ids=ids, **kw)
        seq = ids
    worst = 0.0
    for step, scores in enumerate(gen.scores):  # greedy, the whole sequence recomputed at every step
        full = logits(m, ids, seq2seq, seq) if seq2seq else logits(m, seq, False, None)
        worst = max(worst, (full[:, -1] - scores).abs().max().item())
        seq = torch.cat([seq, full[:, -1].argmax(-1, keepdim=True)], 1)
    out["generation_logits"], out["same_tokens"] = worst, torch.equal(gen.sequences, seq)
    m.save_pretrained(folder + "-resaved")
    again = auto.from_pretrained(folder + "-resaved", trust_remote_code=True).eval()
    out["resaved"] = (logits(again, ids, seq2seq, dec) - ref["logits"]).abs().max().item()
    results[folder] = out
print(json.dumps(results))
'''


def _examples(seq2seq: bool) -> list[Example]:
    return [Example(t, i % 2, prompt=None if seq2seq else f"review {t}") for i, t in enumerate(TEXTS)]


def _extreme_plan(model: torch.nn.Module):  # noqa: ANN202
    """Per-layer widths with the edge cases: an attention pruned away, an FFN pruned away, one left whole."""
    groups = get_adapter(model).groups()
    sublayers = sorted({g.attention for g in groups})
    rates = {g.name: (0.5, 1.0, 0.25, 0.0, 0.75)[sublayers.index(g.attention) % 5] for g in groups}
    scores = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(1)) for g in groups}
    return make_plan(model, scores, RateSpec(rate=0.5, group_rates=rates))


#: families whose consumers have no bias: FLAP's compensation adds them (pruning/biases.py)
BIASED = ("llama", "qwen2", "qwen3", "mistral", "t5-gated")


def _with_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Large random biases added on every FFN / attention consumer (as repair adds them): a checkpoint that
    dropped them would give visibly different logits."""
    from taskprune.pruning.biases import add_biases

    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    consumers = sorted({names[id(adapter.parts(g).consumers[0])] for g in adapter.groups() if g.role != "qk"})
    add_biases(model, consumers)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n in consumers:
            bias = model.get_submodule(n).bias
            bias.copy_(torch.randn(bias.shape, generator=g))
    return model


def _reference(folder: Path, seq2seq: bool, model: torch.nn.Module | None = None,
               file: str = "reference.safetensors") -> None:
    """load_pruned's logits (or ``model``'s) on a fixed input, stored beside the checkpoint for the subprocess."""
    model = load_pruned(folder) if model is None else model
    ids = torch.tensor([INPUT])
    dec = torch.tensor([[int(model.config.decoder_start_token_id or 0), 4, 6]]) if seq2seq else torch.zeros(1, 1)
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=dec) if seq2seq else model(ids)
    save_file({"logits": out.logits.contiguous(), "input_ids": ids, "decoder_input_ids": dec.long()},
              str(folder / file))


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bool]]:
    """Every family twice: compress's default recipe (per-layer widths) and a plan with the edge cases."""
    root = tmp_path_factory.mktemp("portable")
    out = {}
    for name, make in FAMILIES.items():
        model, tok, seq2seq = make()
        result = tp.compress(model, tok, TASK, _examples(seq2seq), RateSpec(rate=0.5))  # the default recipe
        folder = tp.save_compressed(result, tok, root / f"{name}-default")
        out[f"{name}-default"] = (folder, seq2seq)
        folder = tp.save_pruned(apply(_extreme_plan(model), model), root / f"{name}-extreme", tok)
        out[f"{name}-extreme"] = (folder, seq2seq)
        if name in BIASED:
            biased = _with_biases(apply(_extreme_plan(model), model))
            folder = tp.save_pruned(biased, root / f"{name}-biases", tok)
            _reference(folder, seq2seq, biased, "in_memory.safetensors")
            out[f"{name}-biases"] = (folder, seq2seq)
    for folder, seq2seq in out.values():
        _reference(folder, seq2seq)
    return out


@pytest.fixture(scope="module")
def without_taskprune(compressed: dict[str, tuple[Path, bool]]) -> dict[str, dict]:
    """One subprocess, taskprune not importable, over every folder."""
    folders = json.dumps([[str(f), s] for f, s in compressed.values()])
    proc = subprocess.run([sys.executable, "-c", CHECK, folders], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: results[str(folder)] for name, (folder, _) in compressed.items()}


@pytest.mark.parametrize("name", [f"{f}-{r}" for f in FAMILIES for r in ("default", "extreme")]
                         + [f"{f}-biases" for f in BIASED])
def test_per_layer_widths_load_with_plain_transformers_and_trust_remote_code(
        name: str, compressed: dict[str, tuple[Path, bool]], without_taskprune: dict[str, dict]) -> None:
    folder, _ = compressed[name]
    config = json.loads((folder / "config.json").read_text())
    assert not config["model_type"].startswith("taskprune")  # the stock config: AutoTokenizer/AutoConfig as usual
    assert list(config["auto_map"].values())[0].startswith(config["taskprune_remote_code"]["file"].removesuffix(".py"))
    assert (folder / config["taskprune_remote_code"]["file"]).is_file()
    got = without_taskprune[name]
    assert got["class"].startswith("Taskprune")
    assert got["logits"] <= 1e-5, got  # equal to load_pruned's
    assert got["generation_logits"] <= 1e-4 and got["same_tokens"], got  # cached generation == recomputation
    assert got["resaved"] <= 1e-5, got  # save_pretrained of the loaded model loads the same way


@pytest.mark.parametrize("family", BIASED)
def test_added_biases_load_back_where_the_family_has_none(family: str, compressed: dict[str, tuple[Path, bool]]) -> None:
    """Llama/Qwen3 by their stock bias flags, Mistral/Qwen2/T5 by ``taskprune_biases``: load_pruned (whose logits
    the remote-code test compares with) gives the in-memory model's logits."""
    folder, _ = compressed[f"{family}-biases"]
    config = json.loads((folder / "config.json").read_text())
    assert bool(config.get("taskprune_biases")) == (family != "llama")
    assert config.get("mlp_bias", False) == (family == "llama")
    want, got = load_file(str(folder / "in_memory.safetensors")), load_file(str(folder / "reference.safetensors"))
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)


def test_every_family_file_is_the_same_bytes_in_every_checkpoint(compressed: dict[str, tuple[Path, bool]]) -> None:
    by_file: dict[str, set[bytes]] = {}
    for folder, _ in compressed.values():
        name = json.loads((folder / "config.json").read_text())["taskprune_remote_code"]["file"]
        by_file.setdefault(name, set()).add((folder / name).read_bytes())
    assert sorted(by_file) == ["modeling_taskprune_bert2bert.py", "modeling_taskprune_llama.py",
                               "modeling_taskprune_t5.py"]
    assert all(len(v) == 1 for v in by_file.values())
    for name in by_file:
        text = (Path(tp.__file__).parent / "portable" / name).read_text()
        assert "import taskprune" not in text and "from taskprune" not in text and "Tested with transformers" in text


def test_taskprune_still_loads_and_prunes_what_it_wrote(compressed: dict[str, tuple[Path, bool]]) -> None:
    folder, _ = compressed["llama-default"]
    model = tp.load_model(folder)  # a remote-code checkpoint read as its stock family, sliced to its widths
    assert type(model).__name__ == "LlamaForCausalLM" and get_adapter(model).family == "llama"
    want = load_file(str(folder / "reference.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(want["input_ids"]).logits, want["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "t5-gated", "bert2bert"])
def test_uniform_widths_stay_stock_without_remote_code(family: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model, tok, seq2seq = FAMILIES[family]()
    only = RateSpec(rate=0.5, layer_types=("ffn",)) if family == "bert2bert" else RateSpec(rate=0.5)
    scores = {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}
    pruned = apply(make_plan(model, scores, only), model)
    folder = tp.save_pruned(pruned, tmp_path / "p", tok)
    assert not list(folder.glob("modeling_*.py")) and "auto_map" not in json.loads((folder / "config.json").read_text())
    plain = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(folder)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in pruned.parameters())
    assert loading_line(folder) == f"transformers.{'AutoModelForSeq2SeqLM' if seq2seq else 'AutoModelForCausalLM'}" \
                                   f".from_pretrained({str(folder)!r})"


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_checkpoints_written_before_remote_code_still_load(name: str) -> None:
    folder = FIXTURES / name
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    model = load_pruned(folder)
    want = load_file(str(folder / "expected_logits.safetensors"))["logits"]
    ids = torch.tensor([[3, 5, 7, 9, 4]])
    with torch.no_grad():
        got = model(ids).logits if name == "llama" else model(input_ids=ids, decoder_input_ids=torch.tensor([[0, 4, 6]])).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_text_generation_pipeline_runs_a_compressed_llama(compressed: dict[str, tuple[Path, bool]]) -> None:
    """A user's first try: transformers.pipeline with trust_remote_code, where taskprune is not installed."""
    folder, _ = compressed["llama-default"]
    code = CHECK.split("import torch")[0] + (
        "from transformers import pipeline\n"
        f"pipe = pipeline('text-generation', model={str(folder)!r}, trust_remote_code=True)\n"
        "out = pipe('review good movie Answer:', max_new_tokens=3, do_sample=False)\n"
        "print(type(pipe.model).__name__, repr(out[0]['generated_text']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("TaskpruneLlamaForCausalLM 'review good movie Answer:")


def test_the_loading_line_names_remote_code_and_compress_prints_it(compressed: dict[str, tuple[Path, bool]]) -> None:
    folder, _ = compressed["qwen2-default"]
    assert loading_line(folder) .startswith(f"transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, "
                                            "trust_remote_code=True)")
    folder, _ = compressed["t5-gated-default"]
    assert loading_line(folder).startswith("transformers.AutoModelForSeq2SeqLM.from_pretrained(")


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_changed_or_missing_modeling_file_is_one_line_before_anything_loads(
        damage: str, compressed: dict[str, tuple[Path, bool]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from taskprune.cli import main

    folder = tmp_path / "copy"
    shutil.copytree(compressed["llama-default"][0], folder)
    file = folder / "modeling_taskprune_llama.py"
    if damage == "changed":
        file.write_text(file.read_text() + "\nimport os  # someone's edit\n")
    else:
        file.unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["info", "--model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("taskprune: error: ") and "modeling_taskprune_llama.py" in err
    assert ("missing" if damage == "missing" else "was changed") in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.integration
def test_the_default_compression_of_minilm_glue6_loads_without_taskprune(tmp_path: Path) -> None:
    """Integration: the real default model, compressed by the CLI's default recipe (both modules, 0.5), run where
    taskprune cannot be imported gives load_pruned's logits, and the same SST-2 accuracy (scripts/portable_parity.py)."""
    from conftest import SHARED_DATA

    from taskprune.api import default_model_dir

    if not SHARED_DATA.is_dir() or default_model_dir() is None:
        pytest.skip("integration: needs ../shared/data and models/minilm-glue6")
    script = Path(__file__).resolve().parents[1] / "scripts" / "portable_parity.py"
    proc = subprocess.run([sys.executable, str(script), "--model", "minilm-glue6", "--data-dir", str(SHARED_DATA),
                           "--out", str(tmp_path / "d"), "--examples", "16", "--eval-examples", "64"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "auto_map {'AutoModelForSeq2SeqLM': 'modeling_taskprune_bert2bert.TaskpruneEncoderDecoderModel'}" in out
    worst = float(out.split("load_pruned's| on 16 dev examples: ")[1].split()[0])
    assert worst <= 1e-5, out
    accuracies = out.split("remote-code model ")[1]
    assert accuracies.split("}")[0] == accuracies.split("taskprune eval) ")[1].split("}")[0], out
