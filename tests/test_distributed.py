"""Past one process: data-parallel scoring and sweeps under torchrun (gloo on this CPU), and models placed by an
accelerate device map with CPU/disk offload (docs/distributed.md).

The multi-process tests start real 2-process ``torchrun`` jobs. Nothing waits on the clock: a rank that must be
killed mid-run says so on stdout and blocks until it is killed; subprocess timeouts are hang guards only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, needs_shared_data
from safetensors import safe_open
from safetensors.torch import load_file
from tiny import tiny_causal, tiny_causal_tokenizer, tiny_t5, tiny_tokenizer

import taskprune as tp
from taskprune.api import default_model_dir, scoring_job
from taskprune.experiments.config import Run
from taskprune.experiments.results import load_rows
from taskprune.experiments.runner import split_runs
from taskprune.runtime.distributed import Shard
from taskprune.scoring import ScoreConfig, SMPConfig
from taskprune.scoring import base as scoring_base

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 900  # only a hung job ever gets near this
ROWS = [("good movie", 1), ("great film", 1), ("a very good film", 1), ("awful movie", 0), ("bad film", 0),
        ("a very bad movie", 0), ("the film was great", 1), ("it was awful", 0), ("a good film", 1), ("bad", 0)]
TIMING = ("seconds", "score_seconds", "eval_seconds")
#: (name, method, ScoreConfig fields): every summed scorer and every aggregation, plus the example-free one
CASES = [("abs", "attribution", {}), ("signed", "attribution", {"example_agg": "signed"}),
         ("abs_sum", "attribution", {"example_agg": "abs_sum"}), ("pos_abs", "attribution", {"position_agg": "abs"}),
         ("unsup", "attribution-unsupervised", {}), ("fpp", "activation", {}),
         ("rap", "random-attribution", {"seed": 3}), ("rap_abs_sum", "random-attribution", {"example_agg": "abs_sum"}),
         ("rp", "random", {"seed": 1}), ("fisher", "fisher", {}), ("flap", "flap", {})]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    tiny_t5().save_pretrained(root / "t5")
    tiny_tokenizer().save_pretrained(root / "t5")
    tiny_causal().save_pretrained(root / "llama")
    tiny_causal_tokenizer().save_pretrained(root / "llama")
    data = "\n".join(json.dumps({"text": t, "label": y}) for t, y in ROWS) + "\n"
    (root / "train.jsonl").write_text(data)
    (root / "dev.jsonl").write_text(data)
    (root / "toy.yaml").write_text(
        "name: toy\ntemplate: 'sst2 sentence: {text}'\ncausal_template: 'review {text} Answer:'\n"
        "label_words: [negative, positive]\nlabel_values: ['0', '1']\nfiles: {fit: train.jsonl, eval: dev.jsonl}\n")
    return {"root": root, "t5": root / "t5", "llama": root / "llama", "task": root / "toy.yaml"}


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str | Path, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *[str(a) for a in args]]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S, check=False)


def _error_lines(text: str) -> list[str]:
    # from the marker on: a progress bar drawn without a newline may share the line
    return [ln[ln.index("taskprune: error:"):] for ln in text.replace("\r", "\n").splitlines()
            if "taskprune: error:" in ln]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> None:
    """Every group within ``rtol`` of its largest score. Groups that are rounding noise (decoder self-attention Q/K
    at a one-piece label is exactly 0 in exact arithmetic) are compared against 1e-6 of the largest score of all."""
    assert a.keys() == b.keys()
    top = max(float(v.abs().max()) for v in a.values())
    for k in a:
        scale = max(float(a[k].abs().max()), 1e-6 * top)
        assert float((a[k] - b[k]).abs().max()) <= rtol * scale, k


# ----------------------------------------------------------------------------------------------------
# in one process: the sharding laws
# ----------------------------------------------------------------------------------------------------
def test_shard_strides_batches_and_counts_examples() -> None:
    s = Shard(1, 3)
    assert s.owned(8) == [1, 4, 7] and s.owns(4) and not s.owns(3)
    assert Shard(0, 2).examples_per_rank(20, 4) == [12, 8]
    assert Shard(0, 4).examples_per_rank(3, 8) == [3, 0, 0, 0]
    assert sum(Shard(0, 3).examples_per_rank(37, 5)) == 37
    assert Shard(1, 2).tag() == "rank 1 of 2: " and Shard().tag() == ""


@pytest.mark.parametrize("name, method, cfg", CASES, ids=[c[0] for c in CASES])
def test_ranks_partial_sums_add_up_to_one_process(space: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                   name: str, method: str, cfg: dict) -> None:
    """Each rank scores its own batches and ``run_scorer`` all-reduces (FLAP pools its moment sums): emulated here
    in one process (rank 1's part recorded first, then handed to rank 0's collective), so every method's sharding is
    checked fast. RAP draws the same random labels for every example however the batches are shared; abs_sum takes
    |.| after the sum."""
    model, tok = tp.load_model(space["t5"]), tp.load_tokenizer(space["t5"])
    task = tp.get_task(str(space["task"]))
    fit = tp.load_examples(task, "fit", None)
    config = ScoreConfig(**cfg)
    whole = tp.score(model, tok, task, fit, method=method, config=config, batch_size=3)
    partial: dict[str, torch.Tensor] = {}
    gathered: list = []

    def record(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        partial.update(scores)
        return scores

    monkeypatch.setattr("taskprune.runtime.distributed.all_reduce_sum", record)
    monkeypatch.setattr("taskprune.runtime.distributed.all_gather_objects", lambda obj: gathered.append(obj) or [obj])
    job1 = scoring_job(model, tok, task, fit, config, batch_size=3, method=method, shard=Shard(1, 2))
    scoring_base.run_scorer(method, job1)
    monkeypatch.setattr("taskprune.runtime.distributed.all_reduce_sum",
                        lambda scores: {k: v + partial[k] for k, v in scores.items()})
    monkeypatch.setattr("taskprune.runtime.distributed.all_gather_objects", lambda obj: [obj, *gathered])
    job0 = scoring_job(model, tok, task, fit, config, batch_size=3, method=method, shard=Shard(0, 2))
    _assert_close(whole, scoring_base.run_scorer(method, job0), 1e-5)


def test_smp_needs_a_batch_per_process(space: dict[str, Path]) -> None:
    model, tok = tp.load_model(space["t5"]), tp.load_tokenizer(space["t5"])
    task = tp.get_task(str(space["task"]))
    fit = tp.load_examples(task, "fit", None)[:4]
    config = ScoreConfig(target_rates=tp.RateSpec(rate=0.5).to_dict(), smp=SMPConfig(steps=2))
    job = scoring_job(model, tok, task, fit, config, batch_size=8, method="smp", shard=Shard(0, 2))
    with pytest.raises(tp.TaskpruneError, match="at least 2 batches"):
        scoring_base.run_scorer("smp", job)  # refused before any collective


def test_split_runs_does_every_run_once_and_keeps_shared_scorings_together() -> None:
    rates = tp.RateSpec().to_dict()
    todo = [Run("e", "t", "t", m, 4, 0, seed, {**rates, "rate": r}, "decoder")
            for m, seed in (("attribution", 0), ("random", 0), ("random", 1), ("activation", 0)) for r in (0.1, 0.5)]
    parts = [split_runs(todo, Shard(r, 3)) for r in range(3)]
    ids = [run.id for part in parts for run in part]
    assert sorted(ids) == sorted(r.id for r in todo) and len(set(ids)) == len(todo)
    for part in parts:  # a rank that has one run of a scoring has all of them
        keys = {r.score_key() for r in part}
        assert sum(1 for r in todo if r.score_key() in keys) == len(part)
    assert split_runs(todo, Shard()) == todo


def test_commands_that_do_not_share_work_are_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["eval", "--task", "sst2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process" in err[0] and "score, compress, sweep" in err[0]
    monkeypatch.setenv("RANK", "1")  # the same mistake on another rank: rank 0 alone says it
    assert main(["eval", "--task", "sst2"]) == 2
    assert capsys.readouterr().err == ""


LEAVE_SCRIPT = """
import atexit, pathlib, sys
from taskprune import distributed
atexit.register(lambda: pathlib.Path(sys.argv[1]).write_text("ran"))
print("unflushed line", end="")
sys.stderr.write("unflushed error")
distributed.leave_process(3)
print("never")
"""


def test_leave_process_runs_the_exit_handlers_flushes_and_skips_the_rest(tmp_path: Path) -> None:
    """A rank ends without the interpreter's teardown (which can abort it), yet loses nothing: exit handlers ran
    (temp folders), buffered output reached the pipes, the exit status is the one given."""
    script, marker = tmp_path / "leave.py", tmp_path / "marker"
    script.write_text(LEAVE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(marker)], capture_output=True, text=True,
                          env=_env(), timeout=HANG_GUARD_S, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "unflushed line", "unflushed error")
    assert marker.read_text() == "ran"


# ----------------------------------------------------------------------------------------------------
# real 2-process jobs (torchrun, gloo)
# ----------------------------------------------------------------------------------------------------
API_SCRIPT = """
import json, sys
import torch.distributed as dist
from safetensors.torch import save_file
import taskprune as tp
from taskprune import distributed
from taskprune.scoring import ScoreConfig, SMPConfig

shard = distributed.init_from_env()
task_file, out, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
results = {}
for model_dir in sys.argv[4:]:
    model, tok = tp.load_model(model_dir), tp.load_tokenizer(model_dir)
    task = tp.get_task(task_file)
    fit = tp.load_examples(task, "fit", None)
    for name, method, cfg in cases:
        scores = tp.score(model, tok, task, fit, method=method, config=ScoreConfig(**cfg), batch_size=3, shard=shard)
        results.update({f"{model_dir}|{name}|{k}": v for k, v in scores.items()})
    smp = ScoreConfig(target_rates=tp.RateSpec(rate=0.5).to_dict(), smp=SMPConfig(steps=4))
    learnt = tp.score(model, tok, task, fit, method="smp", config=smp, batch_size=3, shard=shard)
    every = [None] * shard.world_size
    dist.all_gather_object(every, {k: v.tolist() for k, v in learnt.items()})
    assert all(e == every[0] for e in every), "SMP ranks disagree"
    assert any(v.abs().sum() > 0 for v in learnt.values()), "SMP learnt nothing"
if shard.is_main:
    save_file(results, out)
distributed.finish(0)  # not shutdown(): a rank tearing gloo down while rank 0 still saves can abort (SIGABRT);
# and no interpreter teardown after it (a library thread asking for the GIL then aborts the rank: leave_process)
"""


def test_two_processes_score_like_one_for_every_method(space: dict[str, Path]) -> None:
    """Issue 17: a 2-process gloo job equals the 1-process scores within 1e-5 relative, for every summed method,
    on a seq2seq and a decoder-only model; SMP (gradients all-reduced) leaves every rank with the same masks."""
    root = space["root"]
    (root / "api.py").write_text(API_SCRIPT)
    out = root / "api-2.safetensors"
    proc = _run(_torchrun(root / "api.py", space["task"], out, json.dumps(CASES), space["t5"], space["llama"]), root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_file(str(out))
    task = tp.get_task(str(space["task"]))
    fit = tp.load_examples(task, "fit", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank: the same per-batch arithmetic, only the sums' order differs
    try:
        for model_dir in (space["t5"], space["llama"]):
            model, tok = tp.load_model(model_dir), tp.load_tokenizer(model_dir)
            for name, method, cfg in CASES:
                one = tp.score(model, tok, task, fit, method=method, config=ScoreConfig(**cfg), batch_size=3)
                prefix = f"{model_dir}|{name}|"
                _assert_close(one, {k[len(prefix):]: v for k, v in two.items() if k.startswith(prefix)}, 1e-5)
    finally:
        torch.set_num_threads(threads)


def test_cli_score_under_torchrun_writes_once_and_records_the_processes(space: dict[str, Path]) -> None:
    root = space["root"]
    args = ["score", "--model", space["t5"], "--task", space["task"], "--samples", "10", "--batch-size", "3"]
    one = _run([sys.executable, "-m", "taskprune.cli", *args, "--out", root / "s1.safetensors"], root)
    two = _run(_torchrun("-m", "taskprune.cli", *args, "--out", root / "s2.safetensors"), root)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "2 processes: 6 + 4 examples" in two.stdout and two.stdout.count("scored ") == 1  # rank 0 alone prints
    _assert_close(load_file(str(root / "s1.safetensors")), load_file(str(root / "s2.safetensors")), 1e-5)
    with safe_open(str(root / "s2.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["world_size"] == "2" and meta["examples_per_rank"] == "6,4" and meta["samples"] == "10"
    assert not [p for p in root.iterdir() if p.name.startswith(".s2.")]  # no temp file left by any rank
    comp = _run(_torchrun("-m", "taskprune.cli", "compress", "--model", space["t5"], "--task", space["task"],
                          "--samples", "10", "--batch-size", "3", "--rate", "0.5", "--eval-examples", "4",
                          "--method", "attribution", "--out", root / "c2"), root)
    assert comp.returncode == 0, comp.stderr[-3000:]
    assert comp.stdout.count("kept 50.0% of prunable parameters") == 1 and "2 processes: 6 + 4 examples" in comp.stdout
    with safe_open(str(root / "c2" / "scores.safetensors"), "pt") as f:
        assert f.metadata()["examples_per_rank"] == "6,4"
    assert tp.load_pruned(root / "c2").config.d_ff == 24


def test_accelerate_launch_runs_the_same_job(space: dict[str, Path]) -> None:
    """``accelerate launch --multi_gpu`` starts the processes through torchrun: the command runs unchanged (gloo
    here, no GPU needed)."""
    root = space["root"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "taskprune.cli"]
    args = ["score", "--model", space["t5"], "--task", space["task"], "--samples", "10", "--batch-size", "3"]
    one = _run([sys.executable, "-m", "taskprune.cli", *args, "--out", root / "a1.safetensors"], root)
    two = subprocess.run([*launch, *map(str, args), "--out", str(root / "a2.safetensors")], cwd=root,
                         env={**_env(), "HF_HOME": str(root / "hf")}, capture_output=True, text=True,
                         timeout=HANG_GUARD_S, check=False)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "2 processes: 6 + 4 examples" in two.stdout
    _assert_close(load_file(str(root / "a1.safetensors")), load_file(str(root / "a2.safetensors")), 1e-5)


# rank 1 fails (HOLD=raise) or blocks until killed (HOLD=block) when it starts scoring
FAIL_RANK_1 = """
import os, sys, threading
from taskprune import api
from taskprune.cli import main
real = api.run_scorer
def run_scorer(name, job):
    if job.shard.rank == 1:
        if os.environ["HOLD"] == "raise":
            raise RuntimeError("rank 1 broke on purpose")
        print(f"rank 1 holding pid={os.getpid()}", flush=True)
        threading.Event().wait()
    return real(name, job)
api.run_scorer = run_scorer
sys.exit(main(sys.argv[1:]))
"""


def _fail_rank_1_score(space: dict[str, Path], out: Path) -> list:
    """A 2-process `taskprune score` whose rank 1 raises or blocks mid-job (``HOLD`` = raise | block)."""
    (space["root"] / "fail.py").write_text(FAIL_RANK_1)
    return _torchrun(space["root"] / "fail.py", "score", "--model", space["t5"], "--task", space["task"],
                     "--samples", "10", "--batch-size", "3", "--out", out)


def test_a_rank_that_fails_makes_the_job_fail_with_one_line(space: dict[str, Path]) -> None:
    root = space["root"]
    out = root / "failed.safetensors"
    cmd = _fail_rank_1_score(space, out)
    proc = subprocess.run(cmd, cwd=root, env={**_env(), "HOLD": "raise"}, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, check=False)
    assert proc.returncode != 0
    assert _error_lines(proc.stdout + proc.stderr) == [
        "taskprune: error: rank 1 of 2: RuntimeError: rank 1 broke on purpose (run with TASKPRUNE_DEBUG=1 or "
        "--debug for the traceback)"]
    assert not [p for p in root.iterdir() if p.name.startswith((out.name, f".{out.name}"))]


def _kill_rank_1_when_holding(cmd: list, root: Path, env: dict) -> tuple[bool, int, str, str]:
    """Run a torchrun job; when rank 1 says it is mid-job ("rank 1 holding pid=N"), SIGKILL it as the OOM killer
    would. Returns (rank 1 was seen, the job's exit status, stdout, stderr); blocks on output, not on a clock (the
    watchdog only ends a job that hangs)."""
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    watchdog = threading.Timer(HANG_GUARD_S, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    found = None
    try:
        for line in proc.stdout:
            found = re.search(r"rank 1 holding pid=(\d+)", line)
            if found:
                os.kill(int(found.group(1)), signal.SIGKILL)
                break
        stdout, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        watchdog.cancel()
    return found is not None, proc.returncode, stdout, stderr


def test_killing_a_rank_gives_one_error_line_and_no_partial_output(space: dict[str, Path]) -> None:
    root = space["root"]
    out = root / "killed.safetensors"
    cmd = _fail_rank_1_score(space, out)
    found, returncode, stdout, stderr = _kill_rank_1_when_holding(cmd, root, {**_env(), "HOLD": "block"})
    assert found, "rank 1 never started scoring"
    assert returncode != 0
    lines = _error_lines(stdout + stderr)
    assert len(lines) == 1 and "another process of this job" in lines[0], lines
    assert not [p for p in root.iterdir() if p.name.startswith((out.name, f".{out.name}"))]


def _sweep_config(space: dict[str, Path], name: str) -> Path:
    import yaml

    path = space["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": str(space["t5"]), "batch_size": 3, "experiments": [
        {"name": "d", "tasks": [str(space["task"])], "methods": ["attribution", "random", "activation"],
         "modules": ["encoder", "decoder"], "rates": [0.2, 0.6], "samples": [6], "trial_seeds": [0, 1]}]}))
    return path


def _rows(path: Path) -> dict[str, dict]:
    return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in load_rows(path)}


def test_two_process_sweep_equals_one_process_sweep_row_for_row(space: dict[str, Path]) -> None:
    root = space["root"]
    cfg = _sweep_config(space, "sweep-eq")
    one = _run([sys.executable, "-m", "taskprune.cli", "sweep", cfg, "--out", root / "one.jsonl"], root)
    two = _run(_torchrun("-m", "taskprune.cli", "sweep", cfg, "--out", root / "two.jsonl"), root)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert "runs done now by 2 processes" in two.stdout and two.stdout.count("runs done now") == 1
    lines = (root / "two.jsonl").read_text().splitlines()
    assert len(lines) == len(_rows(root / "two.jsonl"))  # each run once
    assert _rows(root / "one.jsonl") == _rows(root / "two.jsonl")
    report = _run([sys.executable, "-m", "taskprune.cli", "report", root / "two.jsonl", "--out", root / "rep"], root)
    assert report.returncode == 0, report.stderr[-2000:]


# rank 1 blocks after one finished run, until it is killed
HOLD_RANK_1_SWEEP = """
import os, sys, threading
from taskprune.cli import main
from taskprune.experiments import runner
real, done = runner._execute, []
def execute(ctx, run):
    if os.environ.get("RANK") == "1" and len(done) == 1:
        print(f"rank 1 holding pid={os.getpid()}", flush=True)
        threading.Event().wait()
    done.append(run.id)
    return real(ctx, run)
runner._execute = execute
sys.exit(main(sys.argv[1:]))
"""


def test_sweep_resumes_after_a_killed_rank_without_losing_a_finished_row(space: dict[str, Path]) -> None:
    root = space["root"]
    cfg = _sweep_config(space, "sweep-kill")
    out = root / "kill.jsonl"
    (root / "hold_sweep.py").write_text(HOLD_RANK_1_SWEEP)
    found, returncode, stdout, stderr = _kill_rank_1_when_holding(
        _torchrun(root / "hold_sweep.py", "sweep", cfg, "--out", out), root, _env())
    assert found and returncode != 0
    assert len(_error_lines(stdout + stderr)) == 1
    before = load_rows(out, repair=True)
    assert before  # rank 1's finished run at least
    two = _run(_torchrun("-m", "taskprune.cli", "sweep", cfg, "--out", out), root)
    assert two.returncode == 0, two.stderr[-3000:]
    after = load_rows(out)
    ids = [r["id"] for r in after]
    total = 1 + 2 * 2 * (1 + 2 + 1)  # the dense row + modules x rates x (attribution, 2 random trials, activation)
    assert len(ids) == len(set(ids)) == total
    assert after[: len(before)] == before  # nothing finished was lost or rewritten


# ----------------------------------------------------------------------------------------------------
# models placed by a device map (accelerate big-model dispatch), CPU + disk offload
# ----------------------------------------------------------------------------------------------------
MAPS = {
    "t5": {"shared": "cpu", "encoder": "cpu", "decoder.embed_tokens": "cpu", "decoder.block.0": "disk",
           "decoder.block.1": "cpu", "decoder.final_layer_norm": "disk", "lm_head": "cpu"},
    "llama": {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "disk",
              "model.rotary_emb": "cpu", "lm_head": "cpu"},
}


@pytest.mark.parametrize("family", sorted(MAPS))
def test_device_map_with_disk_offload_scores_prunes_and_saves_like_the_model_in_memory(
        space: dict[str, Path], tmp_path: Path, family: str) -> None:
    from taskprune.sources.fingerprint import fingerprint

    dense, tok = tp.load_model(space[family]), tp.load_tokenizer(space[family])
    placed = tp.load_model(space[family], device_map=MAPS[family], offload_folder=str(tmp_path / "offload"))
    assert any(p.device.type == "meta" for p in placed.parameters())  # really offloaded
    assert fingerprint(placed) == fingerprint(dense)  # a plan made on one applies to the other
    task = tp.get_task(str(space["task"]))
    fit = tp.load_examples(task, "fit", None)
    for method in ("attribution", "attribution-unsupervised", "activation"):
        _assert_close(tp.score(dense, tok, task, fit, method=method, batch_size=3),
                      tp.score(placed, tok, task, fit, method=method, batch_size=3), 1e-6)
    assert all(p.grad is None for p in placed.parameters())  # scoring keeps no weight gradient
    rates = tp.RateSpec(rate=0.5)
    a = tp.compress(dense, tok, task, fit, rates, method="attribution", batch_size=3)
    b = tp.compress(placed, tok, task, fit, rates, method="attribution", batch_size=3, inplace=True)
    assert a.plan.groups == b.plan.groups
    assert tp.evaluate(a.model, tok, task, fit).predictions == tp.evaluate(b.model, tok, task, fit).predictions
    tp.save_pruned(a.model, tmp_path / "a", tok)
    tp.save_pruned(b.model, tmp_path / "b", tok)
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    reloaded = tp.load_pruned(tmp_path / "b", device_map=MAPS[family], offload_folder=str(tmp_path / "off2"))
    assert tp.evaluate(reloaded, tok, task, fit).predictions == tp.evaluate(a.model, tok, task, fit).predictions
    with pytest.raises(tp.TaskpruneError, match="pruned in place"):
        tp.apply(a.plan, tp.load_model(space[family], device_map=MAPS[family], offload_folder=str(tmp_path / "o3")))


def test_backward_reads_offloaded_weights_again_instead_of_keeping_them(space: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring's backward needs each layer's weight; an offloaded one is read again from disk then, so the graph
    never holds the whole model on the execution device (twice the reads, not twice the memory)."""
    from accelerate.utils.offload import OffloadedWeightsLoader

    placed = tp.load_model(space["llama"], device_map=MAPS["llama"], offload_folder=str(tmp_path / "offload"))
    tok = tp.load_tokenizer(space["llama"])
    task = tp.get_task(str(space["task"]))
    reads: list[str] = []
    real = OffloadedWeightsLoader.__getitem__
    monkeypatch.setattr(OffloadedWeightsLoader, "__getitem__", lambda self, key: reads.append(key) or real(self, key))
    tp.score(placed, tok, task, tp.load_examples(task, "fit", None)[:3], batch_size=3)  # one batch
    assert reads.count("model.layers.0.mlp.down_proj.weight") == 2  # forward, then backward
    reads.clear()
    tp.score(placed, tok, task, tp.load_examples(task, "fit", None)[:3], method="activation", batch_size=3)
    assert reads.count("model.layers.0.mlp.down_proj.weight") == 1  # no backward, no second read


def test_cli_device_map_scores_equal_and_bad_maps_are_one_line(space: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.cli import main

    base = ["score", "--model", str(space["t5"]), "--task", str(space["task"]), "--samples", "10", "--batch-size", "3"]
    assert main([*base, "--out", str(tmp_path / "mem.safetensors")]) == 0
    assert main([*base, "--device-map", json.dumps(MAPS["t5"]), "--offload-folder", str(tmp_path / "off"),
                 "--out", str(tmp_path / "map.safetensors")]) == 0
    _assert_close(load_file(str(tmp_path / "mem.safetensors")), load_file(str(tmp_path / "map.safetensors")), 1e-6)
    capsys.readouterr()
    n_gpus = torch.cuda.device_count()
    for bad, needle in [("{not json", "not valid JSON"), ('{"encoder": "tpu"}', "unknown device"),
                        (json.dumps({"": n_gpus}), f"has {n_gpus} GPU"), ("nowhere.json", "neither")]:
        assert main([*base, "--device-map", bad, "--out", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("taskprune: error: argument --device-map") and needle in err[0]
    assert main(["compress", "--model", str(space["t5"]), "--task", str(space["task"]), "--method", "svd",
                 "--device-map", "auto", "--out", str(tmp_path / "svd")]) == 2
    assert "needs the whole model in memory" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "svd").exists()
    comp = ["compress", "--model", str(space["t5"]), "--task", str(space["task"]), "--samples", "10",
            "--batch-size", "3", "--eval-examples", "4", "--device-map", json.dumps(MAPS["t5"]),
            "--offload-folder", str(tmp_path / "off2"), "--out", str(tmp_path / "c")]
    assert main(comp) == 2  # the default recipe repairs weights on a copy of the model
    assert "with --device-map add --repair none" in capsys.readouterr().err
    assert main([*comp, "--repair", "none", "--allocate", "uniform"]) == 0  # pruned in place where the weights are, evaluated before/after
    assert "kept 50.0% of prunable parameters" in capsys.readouterr().out
    assert tp.load_pruned(tmp_path / "c").config.d_ff == 24


# ----------------------------------------------------------------------------------------------------
# the done-when, on the default model and real SST-2
# ----------------------------------------------------------------------------------------------------
@pytest.mark.integration
@needs_shared_data
@pytest.mark.skipif(default_model_dir() is None, reason="integration: the default model models/minilm-glue6 is missing")
def test_done_when_torchrun_score_on_the_default_model_equals_one_process(tmp_path: Path) -> None:
    """``torchrun --standalone --nproc-per-node 2 $(which taskprune) score --task sst2 --samples 32`` writes the
    scores of the single-process command within 1e-4 relative; both wall times are printed (run pytest -s). On a
    2-core CPU no speed-up is expected: two processes of one thread each share the same two cores."""
    exe = Path(sys.executable).with_name("taskprune")
    args = ["score", "--task", "sst2", "--data-dir", str(SHARED_DATA), "--samples", "32"]
    t0 = time.perf_counter()
    one = _run([str(exe), *args, "--out", str(tmp_path / "s1.safetensors")], tmp_path)
    t1 = time.perf_counter()
    two = _run(_torchrun(exe, *args, "--out", str(tmp_path / "s2.safetensors")), tmp_path)
    t2 = time.perf_counter()
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_close(load_file(str(tmp_path / "s1.safetensors")), load_file(str(tmp_path / "s2.safetensors")), 1e-4)
    assert "2 processes: 16 + 16 examples" in two.stdout
    print(f"\n1 process: {t1 - t0:.1f} s wall ({one.stdout.strip()})\n"
          f"2 processes (torchrun): {t2 - t1:.1f} s wall ({two.stdout.strip()})")
