"""A battery of bad inputs, one per way a user can get a command wrong (issue 13).

Every case must end with exactly ONE stderr line ``taskprune: error: ...`` naming the problem (a malformed flag value
included: the CLI's argparse prints its error as that one line), exit code 2, before any model computation (every
forward pass, uvicorn's serving loop and every sweep run are sentinels that record a call), and must leave every
file and folder of the workspace as it was (hashed before and after; no new file, no temp file left over).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import make_model, make_tokenizer

from taskprune.checkpoint import save_pruned
from taskprune.cli import main
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.scoring import save_scores

ROWS = [("good movie", 1), ("great film", 1), ("awful movie", 0), ("bad film", 0)]
TASK = "name: toy\ntemplate: 'sst2 sentence: {text}'\nlabel_words: [negative, positive]\nlabel_values: ['0', '1']\n"


def _cut_short(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A workspace holding one good and one broken copy of every kind of input."""
    root = tmp_path_factory.mktemp("bad")
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS)
    (root / "train.jsonl").write_text(data)
    (root / "dev.jsonl").write_text(data)
    (root / "task.yaml").write_text(TASK + "files: {fit: train.jsonl, eval: dev.jsonl}\n")
    (root / "latin1.yaml").write_bytes(TASK.replace("toy", "t\xf6y").encode("latin-1"))
    (root / "latin1.jsonl").write_bytes('{"text": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    (root / "latin1-data.yaml").write_text(TASK.replace("toy", "toy3") + "files: {fit: latin1.jsonl, eval: latin1.jsonl}\n")

    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    save_scores(scores, root / "scores.safetensors", meta={"task": "toy", "method": "random"})
    save_scores({k: torch.full_like(v, float("nan")) for k, v in scores.items()}, root / "nan.safetensors")
    first = next(iter(scores))
    save_scores({**scores, first: scores[first].clone().index_fill_(0, torch.tensor([0]), float("inf"))},
                root / "inf.safetensors")
    (root / "notscores.safetensors").write_text("not safetensors")
    plan = make_plan(model, scores, RateSpec(rate=0.5), task="sst2", method="random")
    plan.save(root / "plan.json")
    lacking = plan.to_dict()
    del lacking["groups"]["encoder.0.self_attn.vo"]
    (root / "lacking.json").write_text(json.dumps(lacking))
    (root / "broken.json").write_text(json.dumps(plan.to_dict())[:50])
    save_pruned(apply(plan, model), root / "pruned", tok)
    (root / "rplans").mkdir()  # a repaired compression's plan, copied away from its repair.safetensors
    (root / "rplans" / "sst2.json").write_text(json.dumps({**plan.to_dict(), "repair": {"mode": "ls"}}))
    (root / "mismatch.yaml").write_text(TASK.replace("toy", "toy4") + "causal_template: 'review {review}'\n")

    bert, bert_tok = make_model("bert2bert"), make_tokenizer("bert2bert")  # consumers with biases
    from tiny import tiny_causal, tiny_causal_tokenizer

    tiny_causal("llama").save_pretrained(root / "causal")
    tiny_causal_tokenizer().save_pretrained(root / "causal")
    bert.save_pretrained(root / "bert")
    bert_tok.save_pretrained(root / "bert")
    shutil.copytree(root / "model", root / "badconfig")
    _cut_short(root / "badconfig" / "config.json", 40)
    shutil.copytree(root / "model", root / "listconfig")
    (root / "listconfig" / "config.json").write_text("[1, 2]\n")
    shutil.copytree(root / "model", root / "badweights")
    _cut_short(root / "badweights" / "model.safetensors", 1000)
    shutil.copytree(root / "pruned", root / "badpruned")
    _cut_short(root / "badpruned" / "model.safetensors", 1000)
    shutil.copytree(root / "model", root / "badtokenizer")
    _cut_short(root / "badtokenizer" / "tokenizer.json", 30)

    run = {"id": "r1", "experiment": "e", "task": "sst2", "eval_task": "sst2", "method": "random", "samples": 0,
           "sample_seed": 0, "trial_seed": 0, "rates": RateSpec(rate=0.5).to_dict(), "setting": "decoder"}
    (root / "empty-rows.jsonl").write_text("{}\n{}\n")
    (root / "list-rows.jsonl").write_text("[1, 2]\n")
    (root / "text.jsonl").write_text("hello\n")
    (root / "unended.jsonl").write_text(json.dumps({**run, "metrics": {"accuracy": 50.0}}))
    (root / "failed.jsonl").write_text(json.dumps({**run, "error": "too few examples"}) + "\n")
    (root / "good.jsonl").write_text(json.dumps({**run, "metrics": {"accuracy": 50.0}}) + "\n")
    (root / "foreign.jsonl").write_text(json.dumps({**run, "metrics": {"accuracy": 50.0}, "model": "x",
                                                    "model_fingerprint": "0123456789abcdef"}) + "\n")
    sweep = {"model": str(root / "model"), "batch_size": 2,
             "experiments": [{"name": "s", "tasks": [str(root / "task.yaml")], "rates": [0.5], "samples": [2]}]}
    (root / "sweep.yaml").write_text(json.dumps(sweep))
    deep = {**sweep, "experiments": [{**sweep["experiments"][0], "depths": {"deep": [4, 5]}}]}
    (root / "deep.yaml").write_text(json.dumps(deep))
    wrong = {**sweep, "model": str(root / "no-model"),
             "experiments": [{**sweep["experiments"][0], "methods": ["nosuchmethod"]}]}
    (root / "nomodel-sweep.yaml").write_text(json.dumps(wrong))

    (root / "a-file").write_text("a regular file\n")
    (root / "a-folder").mkdir()
    (root / "a-folder" / "keep.txt").write_text("precious\n")
    (root / "plans").mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    yield {"root": str(root), "busy_port": str(busy.getsockname()[1])}
    busy.close()


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, or "dir"."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture()
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any model computation: a forward pass of any module, uvicorn serving, a sweep run."""
    import uvicorn

    from taskprune.experiments import runner

    calls: list[str] = []

    def forward(self: torch.nn.Module, *a: object, **k: object) -> None:
        calls.append(f"forward of {type(self).__name__}")
        raise AssertionError("a model computation started before the bad input was refused")

    def serving(*a: object, **k: object) -> None:
        calls.append("uvicorn serving")
        raise AssertionError("the server started")

    def sweep_run(*a: object, **k: object) -> None:
        calls.append("sweep run")
        raise AssertionError("a sweep run started")

    monkeypatch.setattr(torch.nn.Module, "__call__", forward)
    monkeypatch.setattr(uvicorn.Server, "run", serving)
    monkeypatch.setattr(runner, "_execute", sweep_run)
    return calls


M = ["--model", "{root}/model"]
NM = ["--model", "{root}/no-model"]
T = ["--task", "{root}/task.yaml"]
FT = ["finetune", *M, "--out-dir", "{root}/new-run", "--tasks", "{root}/task.yaml", "--steps", "2"]
SERVE = ["serve", *M, "--plans", "{root}/plans"]

# case name -> (argv, what the one line must contain)
CASES: dict[str, tuple[list[str], str]] = {
    # section 2: broken inputs that gave tracebacks, and numeric flags without a check
    "config.json cut short": (["info", "--model", "{root}/badconfig"], "config.json is not valid JSON"),
    "config.json not an object": (["info", "--model", "{root}/listconfig"], "config.json holds no JSON object"),
    "base weights cut short": (["compress", "--model", "{root}/badweights", *T, "--out", "{root}/new"],
                               "badweights/model.safetensors is not a readable safetensors file"),
    "pruned weights cut short": (["eval", "--model", "{root}/badpruned", *T],
                                 "badpruned/model.safetensors is not a readable safetensors file"),
    "tokenizer cut short": (["eval", "--model", "{root}/badtokenizer", *T], "cannot load a tokenizer"),
    "scores not safetensors": (["plan", *M, "--scores", "{root}/notscores.safetensors", "--out", "{root}/new.json"],
                               "not a safetensors scores file"),
    "plan cut short": (["prune", *M, "--plan", "{root}/broken.json", "--out", "{root}/new"], "not a JSON plan file"),
    "results rows {}": (["report", "{root}/empty-rows.jsonl", "--out", "{root}/new"], "lacks id"),
    "results rows lists": (["report", "{root}/list-rows.jsonl", "--out", "{root}/new"], "line 1 is a JSON list"),
    "results not JSON": (["report", "{root}/text.jsonl", "--out", "{root}/new"], "line 1 is not JSON"),
    "results row without line end": (["report", "{root}/unended.jsonl", "--out", "{root}/new"],
                                     "its one row has no line end"),
    "task file not UTF-8": (["eval", *M, "--task", "{root}/latin1.yaml"], "latin1.yaml is not UTF-8"),
    "data file not UTF-8": (["eval", *M, "--task", "{root}/latin1-data.yaml"], "latin1.jsonl is not UTF-8"),
    "eval batch size 0": (["eval", *M, *T, "--batch-size", "0"], "argument --batch-size: must be a positive"),
    "eval max length -5": (["eval", *M, *T, "--max-length", "-5"], "argument --max-length"),
    "serve port 99999": ([*SERVE, "--port", "99999"], "argument --port: must be a TCP port (1-65535)"),
    "serve port 0": ([*SERVE, "--port", "0"], "argument --port"),
    "serve max inputs 0": ([*SERVE, "--max-inputs", "0"], "argument --max-inputs"),
    "serve timeout inf": ([*SERVE, "--timeout-s", "inf"], "argument --timeout-s: must be a positive finite"),
    "serve negative wait": ([*SERVE, "--max-wait-ms", "-1"], "argument --max-wait-ms"),
    "serve cache nan": ([*SERVE, "--cache-mb", "nan"], "argument --cache-mb"),
    "finetune lr nan": ([*FT, "--lr", "nan"], "argument --lr: must be a positive finite number, got 'nan'"),
    "finetune steps 0": ([*FT, "--steps", "0"], "argument --steps"),
    "finetune log every 0": ([*FT, "--log-every", "0"], "argument --log-every"),
    "finetune negative warm-up": ([*FT, "--warmup-steps", "-1"], "argument --warmup-steps"),
    "finetune task max length 0": ([*FT, "--task-max-length", "toy=0"], "--task-max-length toy must be a positive"),
    "rate nan": (["compress", *M, *T, "--rate", "nan", "--out", "{root}/new"], "argument --rate: rate nan is outside"),
    "rate not a number": (["plan", *M, "--scores", "{root}/scores.safetensors", "--rate", "half", "--out",
                           "{root}/new.json"], "argument --rate: 'half' is not a number"),
    "smp distill 1.5": (["compress", *M, *T, "--method", "smp", "--smp-distill", "1.5", "--out", "{root}/new"],
                        "argument --smp-distill: must be a number in [0, 1]"),
    "batch size not a number": (["score", *M, *T, "--batch-size", "abc", "--out", "{root}/new.safetensors"],
                                "argument --batch-size"),
    "negative seed": (["score", *M, *T, "--seed", "-1", "--out", "{root}/new.safetensors"], "argument --seed"),
    "demo latency pairs 0": (["demo", *M, *T, "--latency-pairs", "0"], "argument --latency-pairs"),
    "decoder layers 0": (["init-seq2seq", "--encoder", "{root}/model", "--decoder-layers", "0", "--out",
                          "{root}/new"], "argument --decoder-layers"),
    # section 3: outputs checked before any computation, errors naming the user's path
    "compress out under /proc": (["compress", *M, *T, "--no-eval", "--out", "/proc/taskprune-x"],
                                 "cannot write /proc/taskprune-x"),
    "prune out under /proc": (["prune", *M, "--plan", "{root}/plan.json", "--out", "/proc/taskprune-x/y"],
                              "cannot write /proc/taskprune-x/y"),
    "score out under a file": (["score", *M, *T, "--out", "{root}/a-file/sub.safetensors"],
                               "a-file/sub.safetensors: {root}/a-file is a file, not a folder"),
    "plan out is a folder": (["plan", *M, "--scores", "{root}/scores.safetensors", "--out", "{root}/a-folder"],
                             "a-folder is a folder; the output here is a file"),
    "finetune out-dir is a file": ([*FT[:3], "--out-dir", "{root}/a-file", *FT[5:]], "a-file is a file"),
    "sweep out is a folder": (["sweep", "{root}/sweep.yaml", "--out", "{root}/a-folder"], "a-folder is a folder"),
    "report out is a file": (["report", "{root}/good.jsonl", "--out", "{root}/a-file"], "a-file is a file"),
    "demo out is a file": (["demo", *M, *T, "--out", "{root}/a-file"], "a-file is a file"),
    "init-seq2seq out is a file": (["init-seq2seq", "--encoder", "{root}/model", "--out", "{root}/a-file"],
                                   "a-file is a file"),
    "compress out exists": (["compress", *M, *T, "--out", "{root}/a-folder"], "already exists; pass --overwrite"),
    "serve plans is a file": (["serve", *M, "--plans", "{root}/a-file"], "--plans {root}/a-file is a file, not a folder"),
    "serve plans missing": (["serve", *M, "--plans", "{root}/no-plans"], "plans folder {root}/no-plans not found"),
    # section 4: bad values that were silently accepted
    "NaN scores": (["plan", *M, "--scores", "{root}/nan.safetensors", "--out", "{root}/new.json"], "not finite"),
    "an inf score": (["plan", *M, "--scores", "{root}/inf.safetensors", "--out", "{root}/new.json"], "not finite"),
    "depths beyond the model": (["compress", *M, *T, "--method", "attribution", "--depth-rate", "50-60=0.2", "--out",
                                 "{root}/new"],
                                "--depth-rate 50-60 names blocks this model does not have (it has blocks 0-1)"),
    "depth just past the model": (["plan", *M, "--scores", "{root}/scores.safetensors", "--depth-rate", "2=0.5",
                                   "--out", "{root}/new.json"], "names blocks this model does not have"),
    "eval examples -3": (["eval", *M, *T, "--examples", "-3"], "argument --examples"),
    "compress eval examples -5": (["compress", *M, *T, "--eval-examples", "-5", "--out", "{root}/new"],
                                  "argument --eval-examples"),
    "max length 0": (["compress", *M, *T, "--max-length", "0", "--out", "{root}/new"], "argument --max-length"),
    "report without metrics": (["report", "{root}/failed.jsonl", "--out", "{root}/new"],
                               "holds 1 run but none to report (1 failed, first: too few examples)"),
    "info model and plan": (["info", *M, "--plan", "{root}/plan.json"], "not both"),
    # section 5: messages that named the wrong problem
    "plan lacks a group": (["prune", *M, "--plan", "{root}/lacking.json", "--out", "{root}/new"],
                           "the plan lacks group encoder.0.self_attn.vo of this model"),
    "trials 0": (["compress", *M, *T, "--trials", "0", "--out", "{root}/new"], "argument --trials: must be a positive"),
    "trials of a deterministic method": (["compress", *M, *T, "--trials", "3", "--out", "{root}/new"],
                                         "taskprune is deterministic"),
    "report missing file": (["report", "{root}/MISSING.jsonl", "--out", "{root}/new"], "MISSING.jsonl not found"),
    "serve port in use": ([*SERVE, "--port", "{busy_port}"], "cannot listen on 127.0.0.1:{busy_port}"),
    "serve unknown host": ([*SERVE, "--host", "no.such.host.invalid"], "--host no.such.host.invalid: cannot resolve"),
    # section 6: sweeps know their model by its fingerprint
    "sweep onto another model's results": (["sweep", "{root}/sweep.yaml", "--out", "{root}/foreign.jsonl"],
                                           "holds runs of another model (fingerprint 0123456789abcdef"),
    "sweep depths beyond the model": (["sweep", "{root}/deep.yaml", "--out", "{root}/new.jsonl"],
                                      "depths deep: 4-5 names blocks this model does not have"),
    "sweep config missing": (["sweep", "{root}/missing.yaml", "--out", "{root}/new.jsonl"], "missing.yaml not found"),
    # section 7: what the flags alone show is refused before the model loads (NM names a model that does not
    # exist: reaching the load would be a different error), and nothing asked for is dropped silently
    "per-part rates under an allocation": (["compress", *NM, *T, "--depth-rate", "0-1=0", "--out", "{root}/new"],
                                           "--depth-rate sets rates per part, but taskprune's global-sqrt allocation"),
    "module rate under flap": (["compress", *NM, *T, "--method", "flap", "--module-rate", "encoder=0.2", "--out",
                                "{root}/new"], "--module-rate sets rates per part"),
    "svd with repair": (["compress", *NM, *T, "--method", "svd", "--repair", "ls", "--out", "{root}/new"],
                        "svd does not select units"),
    "svd rounded widths": (["compress", *NM, *T, "--method", "svd", "--multiple-of", "8", "--out", "{root}/new"],
                           "leave --multiple-of at 1 for svd"),
    "trials with repair": (["compress", *NM, *T, "--method", "random", "--trials", "3", "--repair", "ls", "--out",
                            "{root}/new"], "they take no --allocate or --repair"),
    "trials without eval": (["compress", *NM, *T, "--method", "random", "--trials", "3", "--no-eval", "--out",
                             "{root}/new"], "trials are compared by evaluation"),
    "smp schedule over 1": (["compress", *NM, *T, "--method", "smp", "--smp-warmup", "0.6", "--smp-cooldown", "0.6",
                             "--out", "{root}/new"], "warmup + cooldown must not exceed 1"),
    "repair alpha without ls": (["compress", *NM, *T, "--method", "flap", "--repair-alpha", "1", "--out",
                                 "{root}/new"], "--repair-alpha would change nothing: --method flap runs allocation "
                                                "global-raw with repair bias"),
    "calibration without repair": (["compress", *NM, *T, "--method", "attribution", "--calibration", "64", "--out",
                                    "{root}/new"], "--calibration would change nothing"),
    "search iterations without search": (["demo", *NM, *T, "--search-iterations", "9"],
                                         "--search-iterations would change nothing"),
    "rounds with svd": (["compress", *NM, *T, "--method", "svd", "--steps", "3", "--out", "{root}/new"],
                        "svd does not score units, so it cannot prune in rounds"),
    "zero rounds": (["compress", *NM, *T, "--steps", "0", "--out", "{root}/new"], "--steps"),
    "repair order with svd": (["compress", *NM, *T, "--method", "svd", "--repair-order", "sequential", "--out",
                               "{root}/new"], "--repair-order would change nothing"),
    "rate above the allocation's cap": (["compress", *NM, *T, "--rate", "0.99", "--out", "{root}/new"],
                                        "cannot remove 0.99 of the parameters: pass --allocate uniform"),
    "compress data dir missing": (["compress", *NM, "--task", "sst2", "--data-dir", "{root}/no-data", "--out",
                                   "{root}/new"], "data directory not found: {root}/no-data"),
    "score data dir missing": (["score", *NM, "--task", "sst2", "--data-dir", "{root}/no-data", "--out",
                                "{root}/new.safetensors"], "data directory not found"),
    "eval data dir missing": (["eval", *NM, "--task", "sst2", "--data-dir", "{root}/no-data"], "data directory not found"),
    "demo data dir missing": (["demo", *NM, "--task", "sst2", "--data-dir", "{root}/no-data"], "data directory not found"),
    "sweep unknown method": (["sweep", "{root}/nomodel-sweep.yaml", "--out", "{root}/new.jsonl"], "nosuchmethod"),
    "sweep data dir missing": (["sweep", "{root}/sweep.yaml", "--data-dir", "{root}/no-data", "--out",
                                "{root}/new.jsonl"], "data directory not found: {root}/no-data"),
    "finetune best without evals": ([*FT, "--export", "best", "--eval-every", "0"], "export best picks the step"),
    "finetune lora alpha without rank": ([*FT, "--lora-alpha", "32"], "they need lora_rank > 0 (--lora-rank)"),
    "finetune task max length typo": ([*FT, "--task-max-length", "tyo=64"], "names tyo, which is not among the tasks"),
    # issue 31: flags and files of the newer surfaces
    "score lists no smp": (["score", *M, *T, "--method", "smp", "--out", "{root}/new.safetensors"],
                           "invalid choice: 'smp'"),
    "kv heads on a seq2seq model": (["compress", *M, *T, "--head-granularity", "kv", "--out", "{root}/new"],
                                    "--head-granularity kv applies to decoder-only LMs whose attention has key/value groups"),
    # the model-kind table (taskprune/applies.py): each row once; refused before the weights load (test below)
    "centred repair on BERT": (["compress", "--model", "{root}/bert", *T, "--repair", "ls", "--repair-centred",
                                "--out", "{root}/new"], "--repair-centred applies to models whose FFN and attention "
                                                        "output projections have no bias"),
    "chat template on a seq2seq model": (["compress", *M, *T, "--chat-template", "on", "--out", "{root}/new"],
                                         "--chat-template on applies to decoder-only LMs"),
    "chat template off a seq2seq model": (["eval", *M, *T, "--chat-template", "off"],
                                          "--chat-template off applies to decoder-only LMs"),
    "kv heads outside the scope": (["compress", "--model", "{root}/causal", *T, "--head-granularity", "kv",
                                    "--layer-types", "ffn", "--allocate", "uniform", "--out", "{root}/new"],
                                   "head granularity kv would change nothing"),
    "task file templates disagree": ([*SERVE, "--task-file", "{root}/mismatch.yaml"],
                                     "both must read the same columns"),
    "prune a repaired plan alone": (["prune", *M, "--plan", "{root}/rplans/sst2.json", "--out", "{root}/new"],
                                    "{root}/rplans/repair.safetensors is missing"),
    "serve a repaired plan alone": (["serve", *M, "--plans", "{root}/rplans"], "comes without its repair.safetensors"),
    "finetune data dir missing": ([*FT[:1], *NM, *FT[3:], "--data-dir", "{root}/no-data"],
                                  "data directory not found: {root}/no-data"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_is_one_line_exit_2_before_any_work(ws: dict[str, str], computed: list[str], case: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    if "/proc" in case and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc (a folder nobody can create files in)")
    argv, needle = CASES[case]
    argv = [a.format(**ws) for a in argv]
    root = Path(ws["root"])
    before = _snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("taskprune: error: ") and needle.format(**ws) in lines[0], lines[0]
    assert ".tmp" not in lines[0] and "Traceback" not in err
    assert computed == []
    assert _snapshot(root) == before  # nothing changed, nothing created, no temp file left


TABLE_CASES = {"--head-granularity kv": "kv heads on a seq2seq model", "--repair-centred": "centred repair on BERT",
               "--chat-template on": "chat template on a seq2seq model",
               "--chat-template off": "chat template off a seq2seq model"}


@pytest.mark.parametrize("flag", sorted(TABLE_CASES))
def test_every_row_of_the_model_kind_table_refuses_before_the_weights_load(
        ws: dict[str, str], flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked on the skeleton built from config.json on the meta device: the weights are never read."""
    import taskprune.cli.inputs

    def weights(*a: object, **k: object) -> None:
        raise AssertionError("the weights were loaded before the flag was checked")

    monkeypatch.setattr(taskprune.cli.inputs, "load_model", weights)
    argv, needle = CASES[TABLE_CASES[flag]]
    assert main([a.format(**ws) for a in argv]) == 2
    assert needle in capsys.readouterr().err


def test_the_table_cases_cover_every_row() -> None:
    from taskprune.applies import TABLE

    assert {row.flag for row in TABLE} == set(TABLE_CASES)


def test_the_battery_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_an_unexpected_error_is_one_line_with_its_type_and_exit_1(ws: dict[str, str],
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import taskprune.sources.fingerprint

    def broken(*_a: object) -> str:
        raise RuntimeError("something nobody foresaw\nwith a second line")

    monkeypatch.setattr(taskprune.sources.fingerprint, "fingerprint", broken)
    monkeypatch.delenv("TASKPRUNE_DEBUG", raising=False)
    argv = ["info", "--model", f"{ws['root']}/model"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("taskprune: error: RuntimeError: something nobody foresaw with a second line (run with "
                   "TASKPRUNE_DEBUG=1 or --debug for the traceback)")
    for extra, env in (([], "1"), (["--debug"], None)):  # the traceback, asked for either way
        if env:
            monkeypatch.setenv("TASKPRUNE_DEBUG", env)
        else:
            monkeypatch.delenv("TASKPRUNE_DEBUG", raising=False)
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().endswith("with a second line")
    monkeypatch.delenv("TASKPRUNE_DEBUG", raising=False)
    assert main(["--debug", *argv]) == 1 and "Traceback" in capsys.readouterr().err


def test_the_launchers_sigterm_while_an_error_is_reported_still_gives_one_line(
        ws: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun a rank whose peer died gets a collective error AND the launcher's SIGTERM (which raises
    ``Stopped``); when the signal lands while the first error is being handled, the job still says one line."""
    import taskprune.cli as cli
    import taskprune.sources.fingerprint
    from taskprune.runtime.distributed import PeerLost, Stopped

    def lost(*_a: object) -> str:
        raise PeerLost("another process of this job stopped (killed, crashed or failed): Connection closed")

    real_error, calls = cli.report_error, []

    def error_hit_by_sigterm(*args: object, **kwargs: object) -> int:  # the signal arrives as handling begins
        calls.append(args[0])
        if len(calls) == 1:
            raise Stopped("stopped by the launcher: another process of this job failed")
        return real_error(*args, **kwargs)

    monkeypatch.setattr(taskprune.sources.fingerprint, "fingerprint", lost)
    monkeypatch.setattr(cli, "report_error", error_hit_by_sigterm)
    monkeypatch.delenv("TASKPRUNE_DEBUG", raising=False)
    assert main(["info", "--model", f"{ws['root']}/model"]) == 1
    assert len(calls) == 2
    assert capsys.readouterr().err.strip() == ("taskprune: error: stopped by the launcher: another process of "
                                               "this job failed")


def test_help_is_exit_0_and_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--help"]) == 0
    assert "--batch-size" in capsys.readouterr().out
    assert main([]) == 2 and capsys.readouterr().err.startswith("taskprune: error: ")


def test_atomic_writers_name_the_users_path_never_their_temp_file(tmp_path: Path) -> None:
    from taskprune.errors import TaskpruneError
    from taskprune.files import atomic_dir, atomic_write_text

    def fail(tmp: Path) -> None:
        (tmp / "x").write_text("half")
        raise OSError(28, "No space left on device", str(tmp / "x"))

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("the user's")
    with pytest.raises(TaskpruneError) as err:
        atomic_dir(tmp_path / "out", fail, overwrite=True)
    assert str(err.value) == f"cannot write {tmp_path / 'out'}: No space left on device"
    assert (tmp_path / "out" / "old.txt").read_text() == "the user's"  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
    if sys.platform.startswith("linux"):
        with pytest.raises(TaskpruneError, match=r"^cannot write /proc/taskprune-x\.json: "):
            atomic_write_text("/proc/taskprune-x.json", "{}")


def test_a_library_message_keeps_its_useful_lines_as_one() -> None:
    """Issue 31: a caught library error kept only its first line, which can be the useless one."""
    from taskprune.errors import library_message

    err = ValueError("Error while loading the file\n\n  header too large:   1234 bytes\n")
    assert library_message(err) == "Error while loading the file | header too large: 1234 bytes"
    assert library_message(ValueError("")) == "ValueError"
    assert len(library_message(ValueError("x" * 1000))) == 400
