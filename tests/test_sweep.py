"""Sweeps: expansion of configs, bad configs, shared scoring, resuming after an interruption or a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, make_model, make_tokenizer, needs_shared_data

from taskprune.errors import TaskpruneError
from taskprune.experiments import expand, load_config, load_rows, run_sweep
from taskprune.experiments import runner as runner_mod
from taskprune.experiments.results import eval_set_id, pack_outcomes, row_outcomes
from taskprune.tasks import Example

ROWS = [("good movie", 1), ("great film", 1), ("a very good film", 1), ("awful movie", 0), ("bad film", 0),
        ("a very bad movie", 0), ("the film was great", 1), ("it was awful", 0)]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep")
    make_model("t5-relu").save_pretrained(root / "model")
    make_tokenizer("t5-relu").save_pretrained(root / "model")
    data = "\n".join(json.dumps({"text": t, "label": y}) for t, y in ROWS) + "\n"
    (root / "train.jsonl").write_text(data)
    (root / "dev.jsonl").write_text(data)
    for name in ("toy", "toy2"):
        (root / f"{name}.yaml").write_text(
            f"name: {name}\ntemplate: 'sst2 sentence: {{text}}'\nlabel_words: [negative, positive]\n"
            "label_values: ['0', '1']\nfiles: {fit: train.jsonl, eval: dev.jsonl}\n")
    return {"root": root, "model": root / "model", "task": root / "toy.yaml", "task2": root / "toy2.yaml"}


def _config(space: dict[str, Path], name: str, experiments: list[dict]) -> Path:
    import yaml

    path = space["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"model": str(space["model"]), "batch_size": 4, "experiments": experiments}))
    return path


def test_expansion_counts_every_axis(space: dict[str, Path]) -> None:
    task = str(space["task"])
    runs = expand({"name": "m", "tasks": [task], "methods": ["attribution", "random", "svd"],
                   "modules": ["encoder", "decoder"], "rates": [0.2, 0.5], "samples": [2, 4],
                   "sample_seeds": [0, 1], "trial_seeds": [0, 1, 2]})
    # attribution: 2 samples x 2 sample seeds x 4 rate points; random: 3 trials x 4; svd: 4
    assert len(runs) == 2 * 2 * 4 + 3 * 4 + 4
    assert len({r.id for r in runs}) == len(runs)
    grid = expand({"name": "g", "tasks": [task], "grid": {"encoder": [0.0, 0.5], "decoder": [0.1, 0.2, 0.3]}})
    assert len(grid) == 6 and grid[0].setting == "enc=0.0,dec=0.1"
    types = expand({"name": "t", "tasks": [task], "layer_types": ["self_attn", "ffn"], "rates": [0.5]})
    assert [r.setting for r in types] == ["decoder:self_attn", "decoder:ffn"]
    both = expand({"name": "t2", "tasks": [task], "modules": ["encoder", "decoder"], "layer_types": ["cross_attn"],
                   "rates": [0.5]})
    assert [r.setting for r in both] == ["decoder:cross_attn"]  # an encoder has no cross-attention
    depths = expand({"name": "d", "tasks": [task], "modules": ["all"], "depths": "thirds", "rates": [1.0]}, n_layers=6)
    assert [r.rates["depth_rates"] for r in depths] == [[[0, 1, 1.0]], [[2, 3, 1.0]], [[4, 5, 1.0]]]
    unseen = expand({"name": "u", "tasks": [task], "eval_tasks": [str(space["task2"])], "rates": [0.5]})
    assert unseen[0].task == task and unseen[0].eval_task == str(space["task2"])


@pytest.mark.parametrize("bad, needle", [
    ({"name": "x", "tasks": ["sst2"], "rates": [1.5]}, "outside [0, 1]"),
    ({"name": "x", "tasks": ["nope"], "rates": [0.5]}, "nope"),
    ({"name": "x", "tasks": ["sst2"], "methods": ["magic"], "rates": [0.5]}, "unknown method"),
    ({"name": "x", "tasks": ["sst2"], "ratez": [0.5]}, "unknown keys"),
    ({"name": "x", "tasks": ["sst2"], "samples": [0], "rates": [0.5]}, "samples"),
    ({"name": "x", "tasks": ["sst2"], "grid": {"encoder": [0.1]}}, "grid needs both"),
])
def test_bad_experiments_are_refused(bad: dict, needle: str) -> None:
    with pytest.raises(TaskpruneError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        expand(bad)


def test_bad_config_files(space: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("experiments: []\n")
    with pytest.raises(TaskpruneError, match="non-empty list"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("experiments:\n  - {name: a, tasks: [sst2], rates: [0.5]}\n"
                                     "  - {name: a, tasks: [rte], rates: [0.5]}\n")
    with pytest.raises(TaskpruneError, match="unique"):
        load_config(tmp_path / "b.yaml")
    with pytest.raises(TaskpruneError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_scores_are_shared_across_rates_and_rows_are_complete(space: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    calls = []
    real = runner_mod.score

    def counting(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append(kw.get("method"))
        return real(*a, **kw)

    monkeypatch.setattr(runner_mod, "score", counting)
    cfg = _config(space, "shared", [{"name": "s", "tasks": [str(space["task"])], "methods": ["attribution", "random"],
                                     "modules": ["encoder", "decoder"], "rates": [0.0, 0.5, 1.0], "samples": [4],
                                     "trial_seeds": [0, 1]}])
    out = space["root"] / "shared.jsonl"
    summary = run_sweep(cfg, out)
    rows = load_rows(out)
    assert summary.ran == len(rows) == 1 + 6 + 12 and summary.failed == 0
    assert calls == ["attribution", "random", "random"]  # once per (method, examples, seeds), not per rate
    dense = next(r for r in rows if r["method"] == "dense")
    at_zero = [r for r in rows if r["method"] == "attribution" and r["rates"]["rate"] == 0.0]
    assert all(r["metrics"] == dense["metrics"] and r["kept_prunable"] == 1.0 for r in at_zero)
    full = {r["setting"]: r["kept_prunable"] for r in rows if r["rates"]["rate"] == 1.0 and r["method"] == "attribution"}
    assert full["encoder"] + full["decoder"] == pytest.approx(1.0) and 0.0 < full["decoder"] < full["encoder"] < 1.0


def test_resume_after_an_interruption_repeats_nothing(space: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    cfg = _config(space, "resume", [{"name": "r", "tasks": [str(space["task"])], "methods": ["attribution", "svd"],
                                     "rates": [0.3, 0.6], "samples": [4]}])
    out = space["root"] / "resume.jsonl"
    executed: list[str] = []
    real = runner_mod._execute

    def flaky(ctx, run):  # noqa: ANN001, ANN202
        if len(executed) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the fourth run
        executed.append(run.id)
        return real(ctx, run)

    monkeypatch.setattr(runner_mod, "_execute", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, out)
    first = [r["id"] for r in load_rows(out)]
    assert first == executed and len(first) == 3
    monkeypatch.setattr(runner_mod, "_execute", lambda ctx, run: (executed.append(run.id), real(ctx, run))[1])
    summary = run_sweep(cfg, out)
    ids = [r["id"] for r in load_rows(out)]
    assert summary.already_done == 3 and summary.ran == 2 and len(ids) == len(set(ids)) == 5
    assert len(executed) == 5 and len(set(executed)) == 5  # nothing ran twice
    assert run_sweep(cfg, out).ran == 0


def test_only_runs_the_named_experiments_into_the_same_results(space: dict[str, Path], monkeypatch) -> None:  # noqa: ANN001
    task = str(space["task"])
    cfg = _config(space, "only", [{"name": "a", "tasks": [task], "rates": [0.3], "samples": [4]},
                                  {"name": "b", "tasks": [task], "methods": ["svd"], "rates": [0.3, 0.6]}])
    out = space["root"] / "only.jsonl"
    first = run_sweep(cfg, out, only=["b"])
    assert first.ran == 3 and {r["experiment"] for r in load_rows(out)} == {"dense", "b"}
    second = run_sweep(cfg, out)  # the rest of the config: b's rows and the dense row are kept, not re-run
    assert second.already_done == 3 and second.ran == 1
    assert sorted(r["experiment"] for r in load_rows(out)) == ["a", "b", "b", "dense"]

    def no_model(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("loaded the model before refusing the experiment name")

    monkeypatch.setattr(runner_mod, "load_model", no_model)
    with pytest.raises(TaskpruneError, match="has no experiment 'c'; it has a, b"):
        run_sweep(cfg, out, only=["b", "c"])


def test_a_partial_last_line_is_dropped_and_rerun(space: dict[str, Path]) -> None:
    cfg = _config(space, "partial", [{"name": "p", "tasks": [str(space["task"])], "rates": [0.5], "samples": [4]}])
    out = space["root"] / "partial.jsonl"
    run_sweep(cfg, out)
    rows = load_rows(out)
    text = out.read_text()
    out.write_text(text.rsplit("\n", 2)[0] + "\n" + '{"id": "' + rows[-1]["id"][:5])  # killed mid-write
    assert len(load_rows(out)) == len(rows) - 1
    summary = run_sweep(cfg, out)
    assert summary.ran == 1 and [r["id"] for r in load_rows(out)] == [r["id"] for r in rows]


# `taskprune sweep` whose sixth run never ends: it says so on stdout, so the test kills it mid-run without timing
HOLD_AFTER_5 = """
import sys, threading
from taskprune.cli import main
from taskprune.experiments import runner
real, done = runner._execute, []
def execute(ctx, run):
    if len(done) == 5:
        print("holding", flush=True)
        threading.Event().wait()
    done.append(run.id)
    return real(ctx, run)
runner._execute = execute
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_loses_at_most_the_run_in_flight(space: dict[str, Path]) -> None:
    import threading

    cfg = _config(space, "kill", [{"name": "k", "tasks": [str(space["task"])], "methods": ["random"],
                                   "modules": ["encoder", "decoder"], "rates": [0.1, 0.5, 0.9],
                                   "trial_seeds": [0, 1]}])
    out = space["root"] / "kill.jsonl"
    args = ["sweep", str(cfg), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AFTER_5, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    watchdog = threading.Timer(600, proc.kill)  # only if the sweep hangs before its sixth run: then the test fails
    watchdog.start()
    try:
        assert proc.stdout.readline() == "holding\n"  # five runs are done and the sixth is in flight
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        watchdog.cancel()
    before = load_rows(out, repair=True)
    total = 1 + 2 * 3 * 2
    assert len(before) == 5
    cmd = [sys.executable, "-m", "taskprune.cli", *args]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    ids = [r["id"] for r in load_rows(out)]
    assert len(ids) == len(set(ids)) == total and ids[: len(before)] == [r["id"] for r in before]


def test_cli_sweep_prints_a_summary(space: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from taskprune.cli import main

    cfg = _config(space, "cli", [{"name": "c", "tasks": [str(space["task"])], "rates": [0.5], "samples": [4]}])
    assert main(["sweep", str(cfg)]) == 0
    assert "2 runs done now" in capsys.readouterr().out
    assert (space["root"] / "cli.results.jsonl").is_file()
    assert main(["sweep", str(space["root"] / "nope.yaml")]) == 2


def test_bad_options_fail_before_the_sweep() -> None:
    with pytest.raises(TaskpruneError, match="unknown scoring options"):
        expand({"name": "o", "tasks": ["sst2"], "rates": [0.5], "options": {"agg": "abs"}})
    with pytest.raises(TaskpruneError, match="trial_seeds"):
        expand({"name": "o", "tasks": ["sst2"], "rates": [0.5], "options": {"seed": 3}})


def test_results_belong_to_one_model_known_by_its_fingerprint(space: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from tiny import tiny_t5

    from taskprune.checkpoint import load_model
    from taskprune.sources.fingerprint import fingerprint

    cfg = _config(space, "mixed", [{"name": "x", "tasks": [str(space["task"])], "samples": [4, "all"],
                                    "rates": [0.5]}])
    out = space["root"] / "mixed.jsonl"
    assert run_sweep(cfg, out).ran == 3  # dense + 4 examples + all (sorting 4 against "all" must not fail)
    rows = load_rows(out)
    assert {r["model_fingerprint"] for r in rows} == {fingerprint(load_model(space["model"]))}
    copy = tmp_path / "elsewhere" / "same-model"
    shutil.copytree(space["model"], copy)
    assert run_sweep(cfg, out, model=str(copy)).ran == 0  # the same weights under another path: the same model
    other = tmp_path / "other"
    tiny_t5(seed=1).save_pretrained(other)
    make_tokenizer("t5-relu").save_pretrained(other)
    with pytest.raises(TaskpruneError, match="another model"):
        run_sweep(cfg, out, model=str(other))
    # rows written before fingerprints were recorded: another spelling of the same folder is the same model
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "model_fingerprint"} |
                                         {"model": f"{space['model']}/../model"}) + "\n" for r in rows))
    assert run_sweep(cfg, legacy).ran == 0
    with pytest.raises(TaskpruneError, match="another model"):
        run_sweep(cfg, legacy, model=str(copy))


def test_the_paper_results_still_resume_and_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """reports/paper/results.jsonl predates fingerprints: its rows still read, report, and resume from the root."""
    from taskprune.experiments.report import latest_rows
    from taskprune.experiments.runner import _check_same_model

    root = Path(__file__).resolve().parents[1]
    results = root / "reports" / "paper" / "results.jsonl"
    if not results.is_file():
        pytest.skip("reports/paper/results.jsonl is not in this checkout")
    rows = load_rows(results)
    assert len(latest_rows(results)) > 600 and all("model_fingerprint" not in r for r in rows)
    monkeypatch.chdir(root)
    _check_same_model(rows, "any-fingerprint", "./models/minilm-glue6", results)  # same folder, other spelling
    with pytest.raises(TaskpruneError, match="another model"):
        _check_same_model(rows, "any-fingerprint", "models/other", results)


@pytest.mark.parametrize("text, needle", [
    ("experiments:\n  - {name: dense, tasks: [sst2], rates: [0.5]}\n", "reserved"),
    ("batch_size: many\nexperiments:\n  - {name: a, tasks: [sst2], rates: [0.5]}\n", "positive integer"),
    ("experiments:\n  - {name: a, tasks: [sst2], rates: [0.5], trial_seeds: [x]}\n", "integers"),
    ("experiments: [\n", "not valid YAML"),
])
def test_more_bad_configs(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(TaskpruneError, match=needle):
        load_config(tmp_path / "c.yaml")


def test_eval_cap_per_task_is_one_fixed_subset(space: dict[str, Path]) -> None:
    import yaml

    task = str(space["task"])
    path = space["root"] / "capped.yaml"
    path.write_text(yaml.safe_dump({"model": str(space["model"]), "batch_size": 4, "eval_examples": {task: 3},
                                    "experiments": [{"name": "c", "tasks": [task], "methods": ["random"],
                                                     "modules": ["decoder"], "rates": [0.0, 0.5]}]}))
    out = space["root"] / "capped.jsonl"
    run_sweep(path, out)
    rows = load_rows(out)
    assert len(rows) == 3 and {r["eval_examples"] for r in rows} == {3}
    at_zero = next(r for r in rows if r["method"] == "random" and r["rates"]["rate"] == 0.0)
    dense = next(r for r in rows if r["method"] == "dense")
    assert at_zero["metrics"] == dense["metrics"]  # same 3 examples for every run
    # every row says which of those examples it got right, and on which eval set: what paired tests compare
    outcomes = [row_outcomes(r) for r in rows]
    assert len({o[0] for o in outcomes}) == 1 and all(len(o[1]) == 3 for o in outcomes)
    assert all(100 * o[1].sum() / 3 == pytest.approx(r["metrics"]["accuracy"]) for o, r in zip(outcomes, rows))


@pytest.mark.parametrize("caps, needle", [("{sst2: 0}", "eval_examples.sst2 must be a positive integer"),
                                          ("{nosuchtask: 5}", "nosuchtask")])
def test_bad_eval_caps(tmp_path: Path, caps: str, needle: str) -> None:
    (tmp_path / "c.yaml").write_text(f"eval_examples: {caps}\nexperiments:\n  - {{name: a, tasks: [sst2], rates: [0.5]}}\n")
    with pytest.raises(TaskpruneError, match=needle):
        load_config(tmp_path / "c.yaml")


ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_example_config_exists_and_expands() -> None:
    example = ROOT / "configs" / "example.yaml"
    assert "configs/example.yaml" in (ROOT / "docs" / "sweeps.md").read_text()
    cfg = load_config(example, n_layers=6)
    assert cfg.model == "models/minilm-glue6" and len(cfg.runs) == 3 + 2 * 3  # attribution x 3 rates, random x 2 x 3


@needs_shared_data
def test_the_example_config_runs_on_real_data(space: dict[str, Path], tmp_path: Path) -> None:
    """Integration: the example's first runs, on a tiny model (the config's model overridden) and real SST-2."""
    out = tmp_path / "example.jsonl"
    summary = run_sweep(ROOT / "configs" / "example.yaml", out, model=str(space["model"]), data_dir=str(SHARED_DATA),
                        max_runs=3)
    rows = load_rows(out)
    assert summary.ran == 3 and summary.failed == 0 and len(rows) == 3
    assert all(r["eval_examples"] == 200 for r in rows)
    assert [r["n_fit"] for r in rows if r["method"] == "attribution"] in ([10], [10, 10])


def test_rows_record_the_examples_actually_used(space: dict[str, Path]) -> None:
    """Asking for more examples than the fit split holds uses all of them; the row says how many (n_fit)."""
    cfg = _config(space, "more", [{"name": "more", "tasks": [str(space["task"])], "rates": [0.5], "samples": [100]}])
    out = space["root"] / "more.jsonl"
    run_sweep(cfg, out)
    row = next(r for r in load_rows(out) if r["method"] == "attribution")
    assert row["samples"] == 100 and row["n_fit"] == len(ROWS)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 872])
def test_outcomes_round_trip(n: int) -> None:
    import random

    bits = [random.Random(n).random() < 0.7 for _ in range(n)]
    packed = pack_outcomes(bits, "ev")
    assert len(packed["correct"]) == 4 * -(-((n + 7) // 8) // 3)  # base64 of ceil(n / 8) bytes
    examples, correct = row_outcomes({"id": "x", "outcomes": json.loads(json.dumps(packed))})
    assert examples == "ev" and correct.tolist() == [int(b) for b in bits]


def test_rows_without_or_with_damaged_outcomes() -> None:
    assert row_outcomes({"id": "old"}) is None  # recorded before outcomes were
    good = pack_outcomes([1, 0, 1], "ev")
    for bad in ({"n": 3, "correct": good["correct"]}, dict(good, n=30), dict(good, correct="not base64!"),
                dict(good, n=0)):
        with pytest.raises(TaskpruneError, match="row x: .*outcomes"):
            row_outcomes({"id": "x", "outcomes": bad})


def test_eval_set_id_changes_with_the_examples_and_their_order() -> None:
    a, b = Example("good", 1, "u1"), Example("bad", 0, "u2")
    assert eval_set_id([a, b]) == eval_set_id([Example("good", 1, "u1"), Example("bad", 0, "u2")])
    relabelled = Example("bad", 1, "u2")
    assert len({eval_set_id([a, b]), eval_set_id([b, a]), eval_set_id([a]), eval_set_id([a, relabelled])}) == 4


def test_a_sweep_with_failed_runs_exits_1_and_a_rerun_retries_them(space: dict[str, Path], monkeypatch,  # noqa: ANN001
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Scripts and CI read the exit code: a sweep that recorded failed runs is not a success."""
    from taskprune.cli import main

    def failing(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise TaskpruneError("scoring went wrong")

    cfg = _config(space, "fails", [{"name": "f", "tasks": [str(space["task"])], "rates": [0.5], "samples": [2]}])
    out = space["root"] / "fails.jsonl"
    with monkeypatch.context() as m:
        m.setattr(runner_mod, "score", failing)
        assert main(["sweep", str(cfg), "--out", str(out)]) == 1
    assert "failed runs have an 'error' in their row" in capsys.readouterr().out
    assert [r.get("error") for r in load_rows(out)] == [None, "scoring went wrong"]  # dense ran, the run failed
    assert main(["sweep", str(cfg), "--out", str(out)]) == 0  # the rerun retries the failed run only
    assert "1 runs done now (0 failed), 1 of 2" in capsys.readouterr().out
