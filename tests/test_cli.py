"""The CLI end to end on tiny models and the user's own data; every bad input gives one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    SHARED_DATA,
    logits,
    make_model,
    make_tokenizer,
    minilm_dir,
    needs_minilm,
    needs_shared_data,
    sample_inputs,
)
from transformers import AutoModelForSeq2SeqLM

from taskprune.checkpoint import load_pruned
from taskprune.cli import main

ROWS = [("good movie", 1), ("great film", 1), ("a very good film", 1), ("awful movie", 0), ("bad film", 0),
        ("a very bad movie", 0), ("the film was great", 1), ("it was awful", 0)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    model = make_model("t5-relu")
    model.save_pretrained(root / "model")
    make_tokenizer("t5-relu").save_pretrained(root / "model")
    data = "\n".join(json.dumps({"text": t, "label": y}) for t, y in ROWS) + "\n"
    (root / "train.jsonl").write_text(data)
    (root / "dev.jsonl").write_text(data)
    (root / "task.yaml").write_text(
        "name: toy\ntemplate: 'sst2 sentence: {text}'\nlabel_words: [negative, positive]\nlabel_values: ['0', '1']\n"
        "files: {fit: train.jsonl, eval: dev.jsonl}\n"
    )
    (root / "badtask.yaml").write_text(
        "name: bad\ntemplate: 'review: {review}'\nlabel_words: [negative, positive]\nlabel_values: ['0', '1']\n"
        "files: {fit: train.jsonl, eval: dev.jsonl}\n"
    )
    return {"root": root, "model": root / "model", "task": root / "task.yaml", "badtask": root / "badtask.yaml"}


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_compress_end_to_end(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace["root"] / "compressed"
    code = run("compress", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
               "--rate", 0.5, "--out", out, "--batch-size", 2)
    text = capsys.readouterr().out
    assert code == 0, text
    assert "parameters (prunable)" in text and "accuracy" in text
    kept = float(re.search(r"kept ([0-9.]+)% of prunable", text).group(1))
    assert abs(kept - 50.0) < 6  # a budget of parameters, met up to the granularity of a tiny model's units
    # the default recipe: attribution, one ranking across groups (scores per sqrt of parameters), least squares
    assert "allocation: global-sqrt" in text and "plain from_pretrained" in text
    assert "repair: ls on 8 calibration inputs" in text
    # ... scoring the 4 labelled examples and the other 4 calibration inputs with the dense model's labels
    assert "on 4 examples + 4 self-labelled" in text and "4 calibration inputs labelled by the dense model" in text
    plan = json.loads((out / "plan.json").read_text())
    assert plan["repair"]["mode"] == "ls" and plan["samples"] == 4 and plan["self_labelled"] == 4
    assert {"config.json", "model.safetensors", "plan.json", "scores.safetensors"} <= {p.name for p in out.iterdir()}
    assert load_pruned(out) is not None  # per-layer widths: taskprune.load_pruned reads them
    stock = workspace["root"] / "compressed-uniform"  # the flag the note names: uniform rates, a stock checkpoint
    assert run("compress", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4, "--rate", 0.5,
               "--allocate", "uniform", "--out", stock, "--batch-size", 2, "--no-eval") == 0
    plain = AutoModelForSeq2SeqLM.from_pretrained(stock)  # uniform rate on T5: a stock checkpoint
    assert plain.config.d_ff == 24 and plain.config.d_kv == 4
    assert json.loads((stock / "plan.json").read_text())["repair"]["mode"] == "ls"  # repaired, still stock


def test_score_plan_prune_chain_equals_compress(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = workspace["root"]
    common = ["--model", workspace["model"]]
    assert run("score", *common, "--task", workspace["task"], "--samples", 4, "--batch-size", 2,
               "--out", root / "s.safetensors") == 0
    assert run("plan", *common, "--scores", root / "s.safetensors", "--rate", 0.5, "--out", root / "p.json") == 0
    assert run("plan", *common, "--scores", root / "s.safetensors", "--rate", 0.7, "--multiple-of", 8,
               "--out", root / "p8.json") == 0
    rounded = json.loads((root / "p8.json").read_text())
    assert rounded["rates"]["multiple_of"] == 8 and all(len(g["keep"]) % 8 == 0 for g in rounded["groups"].values())
    plan = json.loads((root / "p.json").read_text())
    assert plan["samples"] == 4 and plan["seed"] == 0 and plan["options"]["seed"] == 0  # sample and trial seeds
    assert run("prune", *common, "--plan", root / "p.json", "--out", root / "pruned") == 0
    assert run("info", "--plan", root / "p.json") == 0
    assert run("info", *common) == 0
    assert run("eval", "--model", root / "pruned", "--task", workspace["task"], "--json") == 0
    assert "accuracy" in capsys.readouterr().out
    compressed = root / "compressed-paper"  # the chain is the paper's method: compress's default also repairs
    assert run("compress", *common, "--task", workspace["task"], "--samples", 4, "--rate", 0.5, "--method",
               "attribution", "--out", compressed, "--batch-size", 2, "--no-eval") == 0
    assert json.loads((compressed / "plan.json").read_text())["repair"] is None
    inputs = sample_inputs(0)
    torch.testing.assert_close(logits(load_pruned(root / "pruned"), inputs), logits(load_pruned(compressed), inputs))


BAD_INPUTS = {
    "unknown task": (["eval", "--task", "nosuchtask"], "unknown task"),
    "missing column": (["eval", "--task", "{badtask}"], "review"),
    "rate above 1": (["compress", "--task", "{task}", "--rate", "1.5", "--out", "{root}/x"], "outside [0, 1]"),
    "negative rate": (["plan", "--scores", "{root}/none.safetensors", "--rate", "-0.2", "--out", "{root}/p2.json"],
                      "outside [0, 1]"),
    "missing model": (["info", "--model", "{root}/no-model"], "not found"),
    "missing scores": (["plan", "--scores", "{root}/none.safetensors", "--out", "{root}/p3.json"], "not found"),
    "bad depth rate": (["compress", "--task", "{task}", "--depth-rate", "a-b=0.5", "--out", "{root}/y"], "LO-HI"),
    "zero multiple": (["compress", "--task", "{task}", "--multiple-of", "0", "--out", "{root}/m"], "--multiple-of"),
    "rounded svd": (["compress", "--task", "{task}", "--method", "svd", "--multiple-of", "8", "--out", "{root}/m2"],
                    "leave --multiple-of at 1"),
    "zero samples": (["score", "--task", "{task}", "--samples", "0", "--out", "{root}/z.safetensors"], "--samples"),
    "folder where a file goes": (["score", "--task", "{task}", "--out", "{root}"], "is a folder"),
    "trials of a deterministic method": (["compress", "--task", "{task}", "--trials", "3", "--out", "{root}/w"],
                                         "random methods"),
    "smp without steps": (["compress", "--task", "{task}", "--method", "smp", "--smp-steps", "0", "--out",
                           "{root}/w"], "--smp-steps"),
    "override outside scope": (["compress", "--task", "{task}", "--modules", "decoder", "--module-rate",
                                "encoder=0.3", "--out", "{root}/w"], "outside the pruned scope"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str) -> None:
    argv, needle = BAD_INPUTS[case]
    fmt = {k: str(v) for k, v in workspace.items()}
    argv = [a.format(**fmt) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(workspace["model"])]
    code = run(*argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("taskprune: error:") and needle in err


def test_random_trials_report_mean_and_std(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace["root"] / "trials"
    code = run("compress", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
               "--method", "random", "--trials", 3, "--trial-seed", 5, "--out", out)
    text = capsys.readouterr().out
    assert code == 0, text
    assert "mean ± std" in text and "trial seed 7" in text
    data = json.loads((out / "trials.json").read_text())
    assert data["seeds"] == [5, 6, 7] and len(data["metrics"]) == 3 and set(data["mean"]) == set(data["std"])
    plans = sorted(p.name for p in (out / "plans").iterdir())
    assert plans == ["trial-5.json", "trial-6.json", "trial-7.json"]
    keeps = [json.loads((out / "plans" / p).read_text())["groups"] for p in plans]
    assert keeps[0] != keeps[1]  # a new draw per trial


@pytest.mark.parametrize("method", ["smp", "smp-unstructured"])
def test_compress_with_smp(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str], method: str) -> None:
    out = workspace["root"] / f"out-{method}"
    code = run("compress", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
               "--method", method, "--smp-steps", 6, "--rate", 0.5, "--modules", "decoder", "--out", out)
    text = capsys.readouterr().out
    assert code == 0, text
    if method == "smp":
        groups = json.loads((out / "plan.json").read_text())["groups"]
        assert all((len(g["keep"]) == g["size"]) == n.startswith("encoder") for n, g in groups.items())
    else:
        assert "no speed-up" in text or "neither smaller nor faster" in text
        assert (out / "masks.safetensors").is_file()


def test_compress_with_svd(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.checkpoint import load_pruned
    from taskprune.pruning.lowrank import LowRankLinear

    out = workspace["root"] / "out-svd"
    code = run("compress", "--model", workspace["model"], "--task", workspace["task"], "--method", "svd",
               "--rate", 0.5, "--layer-types", "ffn", "--out", out)
    text = capsys.readouterr().out
    assert code == 0, text
    assert "svd on no examples" in text and "load_pruned" in text and not (out / "plan.json").exists()
    model = load_pruned(out)
    ffn = [m for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    assert len(ffn) == 2 * 2 * 2  # wi and wo of 2 blocks in the encoder and 2 in the decoder
    assert all(m.rank == 9 for m in ffn)  # d_ff 48, d_model 32: floor(48 * 32 * 0.5 / (48 + 32 + 1)) = 9


def test_foreign_plan_and_existing_output(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = workspace["root"]
    other = root / "other-model"
    make_model("t5-relu").__class__.from_pretrained(workspace["model"]).save_pretrained(other)
    make_tokenizer("t5-relu").save_pretrained(other)
    with torch.no_grad():
        m = AutoModelForSeq2SeqLM.from_pretrained(other)
        m.lm_head.weight.mul_(2)
        m.save_pretrained(other)
    if not (root / "p.json").exists():
        assert run("score", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
                   "--out", root / "s2.safetensors") == 0
        assert run("plan", "--model", workspace["model"], "--scores", root / "s2.safetensors", "--out",
                   root / "p.json") == 0
    capsys.readouterr()
    assert run("prune", "--model", other, "--plan", root / "p.json", "--out", root / "nope") == 2
    err = capsys.readouterr().err
    assert "made for another model" in err and len(err.strip().splitlines()) == 1
    (root / "occupied").mkdir()
    (root / "occupied" / "keep.txt").write_text("precious")
    assert run("prune", "--model", workspace["model"], "--plan", root / "p.json", "--out", root / "occupied") == 2
    assert "already exists" in capsys.readouterr().err
    assert (root / "occupied" / "keep.txt").read_text() == "precious"


def test_unsupported_architecture_exits_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                            encoder_attention_heads=2, decoder_attention_heads=2,
                                            encoder_ffn_dim=32, decoder_ffn_dim=32)).save_pretrained(tmp_path / "bart")
    assert run("info", "--model", tmp_path / "bart") == 2
    err = capsys.readouterr().err
    assert "unsupported architecture 'bart'" in err and len(err.strip().splitlines()) == 1


def test_finetune_command_trains_and_exports(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = workspace["root"] / "ft"
    assert run("finetune", "--model", workspace["model"], "--out-dir", out, "--tasks", workspace["task"],
               "--steps", 3, "--batch-size", 4, "--eval-every", 0, "--save-every", 2, "--dtype", "float32") == 0
    assert "final model" in capsys.readouterr().out
    assert (out / "final" / "model.safetensors").is_file() and (out / "log.jsonl").is_file()


def test_every_command_has_help() -> None:
    for command in ["compress", "score", "plan", "prune", "eval", "info", "demo", "finetune", "init-seq2seq"]:
        proc = subprocess.run([sys.executable, "-m", "taskprune.cli", command, "--help"], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0 and "--" in proc.stdout and "help" in proc.stdout


@needs_shared_data
@needs_minilm
def test_minilm_bert2bert_compress_on_real_sst2(tmp_path: Path) -> None:
    """Integration: the console script compresses a bert2bert warm-started from real MiniLM weights."""
    assert run("init-seq2seq", "--encoder", minilm_dir(), "--out", tmp_path / "b2b") == 0
    exe = Path(sys.executable).with_name("taskprune")
    proc = subprocess.run([str(exe), "compress", "--model", str(tmp_path / "b2b"), "--task", "sst2", "--data-dir",
                           str(SHARED_DATA), "--samples", "10", "--rate", "0.5", "--out", str(tmp_path / "out"),
                           "--eval-examples", "64", "--allocate", "uniform"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept 50.0% of prunable parameters" in proc.stdout
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["task"] == "sst2" and plan["samples"] == 10
    pruned = load_pruned(tmp_path / "out")
    assert pruned.config.encoder.intermediate_size == 1536 // 2


T5_SMALL = SHARED_DATA.parent / "t5-small-no-weights"


@needs_shared_data
@pytest.mark.skipif(not T5_SMALL.is_dir(), reason=f"integration: {T5_SMALL} (t5-small config/tokenizer) not found")
def test_done_when_t5_small_shapes_half_prunable_and_plain_loading(tmp_path: Path) -> None:
    """The issue's acceptance command on a t5-small of real shapes (random weights: no T5 weights exist here)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config.from_pretrained(T5_SMALL))
    model.save_pretrained(tmp_path / "t5")
    AutoTokenizer.from_pretrained(T5_SMALL).save_pretrained(tmp_path / "t5")
    exe = Path(sys.executable).with_name("taskprune")
    proc = subprocess.run([str(exe), "compress", "--model", str(tmp_path / "t5"), "--task", "sst2", "--data-dir",
                           str(SHARED_DATA), "--samples", "10", "--rate", "0.5", "--out", str(tmp_path / "out"),
                           "--no-eval", "--allocate", "uniform"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept 50.0% of prunable parameters" in proc.stdout
    plain = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out")
    assert plain.config.d_ff == 1024 and plain.config.d_kv == 32
    from taskprune.evaluate import count_parameters

    assert count_parameters(plain)["prunable"] * 2 == count_parameters(model)["prunable"]
    inputs = sample_inputs(0)
    torch.testing.assert_close(logits(plain, inputs), logits(load_pruned(tmp_path / "out"), inputs))


def test_demo_prints_the_before_after_table(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run("demo", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
               "--batch-size", 2) == 0
    out = capsys.readouterr().out
    for row in ("accuracy", "parameters (prunable)", "size on disk", "latency ms/example", "compress time (s)"):
        assert row in out
    assert "median of 9 pairs" in out and "order alternating" in out
    # compress's default recipe (attribution + global allocation + least-squares repair), not the paper's alone
    assert "--method taskprune" in out and "allocation: global-sqrt" in out and "repair: ls on" in out
    assert run("demo", "--model", workspace["model"], "--task", workspace["task"], "--samples", 4,
               "--batch-size", 2, "--method", "attribution", "--latency-pairs", 1) == 0
    out = capsys.readouterr().out
    assert "--method attribution" in out and "allocation:" not in out and "repair:" not in out


def test_timing_pairs_alternate_and_the_ratio_is_the_median_of_pairs() -> None:
    from taskprune.runtime.timing import alternating_pairs, ratio_summary

    calls: list[str] = []
    a, b = alternating_pairs(lambda: calls.append("a") or 1.0, lambda: calls.append("b") or 2.0, 4)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"] and a == [1.0] * 4 and b == [2.0] * 4
    summary = ratio_summary([1.0, 2.0, 3.0, 40.0, 5.0], [1.0] * 5)  # one pair hit by a burst of load
    assert summary.median == 3.0 and summary.pairs == 5 and summary.low < 3.0 < summary.high < 40.0
    assert str(ratio_summary([2.0, 2.0], [1.0, 1.0])) == "2.00 (2.00-2.00)"


def test_round_robin_rotates_the_order_so_each_runs_once_in_every_position() -> None:
    from taskprune.runtime.timing import round_robin

    calls: list[str] = []
    runs = round_robin([lambda n=n: calls.append(n) or n for n in "abc"], 3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"] and runs == [["a"] * 3, ["b"] * 3, ["c"] * 3]


def test_demo_size_counts_what_the_files_hold(tmp_path: Path) -> None:
    """A tied bert2bert's word embedding is one parameter tensor but is stored twice (encoder and decoder copies)."""
    from taskprune.checkpoint import fp16_checkpoint_size as _fp16_checkpoint
    from taskprune.evaluate import count_parameters
    from taskprune.models.bert2bert import tie_embeddings

    model = make_model("bert2bert")
    assert tie_embeddings(model, force=True)
    size, values = _fp16_checkpoint(model, tmp_path / "fp16")
    embedding = model.encoder.get_input_embeddings().weight.numel()
    assert values == count_parameters(model)["total"] + embedding
    assert size >= 2 * values  # fp16: two bytes per stored value, plus the header


def test_demo_without_data_says_how_to_get_glue(workspace: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKPRUNE_DATA", raising=False)
    assert run("demo", "--model", workspace["model"]) == 2
    err = capsys.readouterr().err
    assert "no GLUE data" in err and "--data-dir" in err and len(err.strip().splitlines()) == 1


def test_rate_text_names_the_modules_the_model_has() -> None:
    """--modules all on a decoder-only model prunes its one module: the line must not say encoder+decoder."""
    from tiny import tiny_causal, tiny_t5

    import taskprune as tp
    from taskprune.pruning.rates import RateSpec

    _rate_text = RateSpec.describe

    assert _rate_text(tp.RateSpec(rate=0.5), tiny_causal("llama")) == "rate 0.5 on decoder"
    assert _rate_text(tp.RateSpec(rate=0.5), tiny_t5()) == "rate 0.5 on encoder+decoder"
    assert _rate_text(tp.RateSpec(rate=0.3, modules=("decoder",)), tiny_t5()) == "rate 0.3 on decoder"
