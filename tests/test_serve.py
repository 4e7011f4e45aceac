"""The server (Algorithm 2): predictions equal the saved pruned model's, the cache respects its byte bound,
foreign plans are refused, every bad input gets its status and one message, concurrent tasks stay apart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
import httpx  # noqa: E402
from conftest import make_model, make_tokenizer  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from taskprune.checkpoint import load_pruned, save_pruned  # noqa: E402
from taskprune.data import LabelSpace
from taskprune.evaluate import rank_scores  # noqa: E402
from taskprune.lm.batching import batches  # noqa: E402
from taskprune.models import get_adapter  # noqa: E402
from taskprune.pruning.apply import apply  # noqa: E402
from taskprune.pruning.plan import PruningPlan, make_plan
from taskprune.pruning.rates import RateSpec  # noqa: E402
from taskprune.serve import ByteLRU, ServeLimits, TaskService  # noqa: E402
from taskprune.serve.app import create_app  # noqa: E402
from taskprune.serve.service import owned_bytes  # noqa: E402
from taskprune.tasks import Example, get_task  # noqa: E402

SST = ["good movie", "a very bad film", "the film was great", "awful", "it is good", "this was bad"]
RTE = [{"sentence1": "the film was good", "sentence2": "it was good"},
       {"sentence1": "a bad movie", "sentence2": "the movie was great"}]


def _plan(model: torch.nn.Module, task: str, seed: int, rate: float = 0.5) -> PruningPlan:
    g = torch.Generator().manual_seed(seed)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    return make_plan(model, scores, RateSpec(rate=rate), task=task, method="random")


@pytest.fixture()
def setup(tmp_path: Path) -> dict:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    plans = tmp_path / "plans"
    plans.mkdir()
    for task, seed in (("sst2", 1), ("rte", 2)):
        _plan(model, task, seed).save(plans / f"{task}.json")
    service = TaskService(model, tok, plans_dir=plans, limits=ServeLimits(max_inputs=8, max_input_chars=200))
    return {"model": model, "tok": tok, "plans": plans, "service": service, "tmp": tmp_path}


def _direct(model: torch.nn.Module, tok, task: str, texts: list[str]) -> list[list[float]]:  # noqa: ANN001
    t = get_task(task)
    out = []
    for b in batches([Example(x, 0) for x in texts], tok, 1):
        out += rank_scores(model, b, LabelSpace.build(tok, t)).softmax(-1).tolist()
    return out


def test_predictions_equal_the_saved_pruned_model(setup: dict) -> None:
    s, tok = setup["service"], setup["tok"]
    plan = PruningPlan.load(setup["plans"] / "sst2.json")
    saved = save_pruned(apply(plan, setup["model"]), setup["tmp"] / "pruned", tok)
    reference = load_pruned(saved)
    with TestClient(create_app(s)) as client:
        r = client.post("/v1/predict", json={"task": "sst2", "inputs": SST})
        assert r.status_code == 200, r.text
        body = r.json()
    expected = _direct(reference, tok, "sst2", [get_task("sst2").render({"sentence": x}) for x in SST])
    words = get_task("sst2").label_words
    assert body["model"] == "pruned" and len(body["predictions"]) == len(SST)
    for pred, probs in zip(body["predictions"], expected):
        assert pred["scores"] == pytest.approx(dict(zip(words, probs)), abs=1e-5)
        assert pred["label"] == words[max(range(len(probs)), key=probs.__getitem__)]


def test_cut_shares_whole_tensors_and_equals_a_full_copy(setup: dict) -> None:
    model = setup["model"]
    plan = PruningPlan.load(setup["plans"] / "rte.json")
    shared, full = apply(plan, model, share=True), apply(plan, model)
    assert shared.shared.weight is model.shared.weight  # the embedding is not copied
    assert 0 < owned_bytes(shared, model) < owned_bytes(full, model)
    ids = torch.tensor([[5, 6, 7, 1]])
    dec = torch.tensor([[0, 5]])
    torch.testing.assert_close(shared(input_ids=ids, decoder_input_ids=dec).logits,
                               full(input_ids=ids, decoder_input_ids=dec).logits, rtol=0, atol=0)


def test_lru_respects_the_byte_bound(setup: dict) -> None:
    s = setup["service"]
    size = owned_bytes(s.model_for("sst2"), s.base)
    s.cache.max_bytes = int(size * 1.5)  # room for one task model, not two
    s.cache.pop("sst2")
    s.model_for("sst2")
    s.model_for("rte")
    assert s.cache.keys() == ["rte"] and s.cache.total_bytes <= s.cache.max_bytes
    s.model_for("sst2")
    assert s.cache.keys() == ["sst2"]
    lru = ByteLRU(100)
    lru.put("a", 1, 40), lru.put("b", 2, 40), lru.get("a"), lru.put("c", 3, 40)
    assert lru.keys() == ["a", "c"] and lru.total_bytes == 80
    assert not lru.put("huge", 4, 101) and "huge" not in lru


def test_foreign_plans_are_refused(setup: dict) -> None:
    other = make_model("t5-relu")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    foreign = _plan(other, "sst2", 3).to_dict()
    with TestClient(create_app(setup["service"])) as client:
        r = client.post("/v1/plans/sst2?replace=true", json=foreign)
        assert r.status_code == 422 and "another base model" in r.json()["error"]
        r = client.post("/v1/plans/sst2", json=_plan(setup["model"], "sst2", 4).to_dict())
        assert r.status_code == 409 and "replace=true" in r.json()["error"]
    (setup["plans"] / "foreign.json").write_text(json.dumps({**foreign, "task": "rte"}))
    with pytest.raises(Exception, match="another base model"):
        TaskService(setup["model"], setup["tok"], plans_dir=setup["plans"])


def test_plans_can_be_added_and_removed(setup: dict) -> None:
    with TestClient(create_app(setup["service"])) as client:
        assert client.delete("/v1/plans/rte").json() == {"task": "rte", "removed": True}
        assert not (setup["plans"] / "rte.json").exists()
        r = client.post("/v1/predict", json={"task": "rte", "inputs": RTE})
        assert r.status_code == 404 and "has no plan" in r.json()["error"]
        r = client.post("/v1/predict", json={"task": "rte", "inputs": RTE, "dense": True})
        assert r.status_code == 200 and r.json()["model"] == "dense"
        r = client.post("/v1/plans/rte", json=_plan(setup["model"], "rte", 5).to_dict())
        assert r.status_code == 201 and (setup["plans"] / "rte.json").is_file()
        assert [t["task"] for t in client.get("/v1/tasks").json()["tasks"]] == ["rte", "sst2"]
        assert client.post("/v1/predict", json={"task": "rte", "inputs": RTE}).status_code == 200
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["plans"] == 2
        metrics = client.get("/metrics").text
        assert 'taskprune_requests_total{status="404",task="rte"} 1.0' in metrics
        assert 'taskprune_requests_total{status="200",task="rte"} 2.0' in metrics
        assert 'taskprune_errors_total{status="404"} 1.0' in metrics
        assert "taskprune_cache_misses_total 1.0" in metrics and "taskprune_cut_seconds_count 1.0" in metrics
        assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("body, status, needle", [
    ({"task": "nosuch", "inputs": ["x"]}, 404, "unknown task 'nosuch'"),
    ({"inputs": ["x"]}, 422, "task: Field required"),
    ({"task": "sst2", "inputs": []}, 422, "inputs"),
    ({"task": "sst2", "inputs": ["good"] * 9}, 413, "9 inputs in one request; the limit is 8"),
    ({"task": "sst2", "inputs": ["good " * 100]}, 413, "the limit is 200"),
    ({"task": "rte", "inputs": ["just a string"]}, 422, "send an object"),
    ({"task": "rte", "inputs": [{"sentence1": "a"}]}, 422, "sentence2"),
    ({"task": "sst2", "inputs": ["good"], "typo": 1}, 422, "typo"),
])
def test_bad_input_gets_its_status_and_one_message(setup: dict, body: dict, status: int, needle: str) -> None:
    with TestClient(create_app(setup["service"])) as client:
        r = client.post("/v1/predict", json=body)
    assert r.status_code == status and set(r.json()) == {"error"} and needle in r.json()["error"], r.text


def test_malformed_json_and_oversized_bodies(setup: dict) -> None:
    before = setup["service"].metrics.errors.labels("413")._value.get()
    with TestClient(create_app(setup["service"], max_body_bytes=1000)) as client:
        r = client.post("/v1/predict", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json() == {"error": "the request body is not valid JSON"}
        r = client.post("/v1/predict", content=b"x" * 2000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit is 1000" in r.json()["error"]
        chunks = lambda n: (b"x" * 100 for _ in range(n))  # noqa: E731  (no Content-Length: chunked upload)
        r = client.post("/v1/predict", content=chunks(30), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {"error": "request body of more than 1000 bytes; the limit is "
                                                              "1000"}, r.text
        body = b'{"task": "sst2", "inputs": ["a fine film"]}'
        r = client.post("/v1/predict", content=(body[i:i + 10] for i in range(0, len(body), 10)),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text  # a chunked body within the limit is served
        assert client.get("/nope").json() == {"error": "Not Found"}
    assert setup["service"].metrics.errors.labels("413")._value.get() - before == 2  # header check and stream


def test_concurrent_requests_for_two_tasks_get_their_own_predictions(setup: dict) -> None:
    s = setup["service"]
    expected = {"sst2": s.predict("sst2", SST), "rte": s.predict("rte", RTE)}
    app = create_app(s)

    async def go() -> list[tuple[str, dict]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            reqs = [("sst2", SST[i : i + 2]) for i in range(0, 6, 2)] + [("rte", RTE)] * 3
            rs = await asyncio.gather(*(client.post("/v1/predict", json={"task": t, "inputs": x}) for t, x in reqs))
            return [(t, x, r.json()) for (t, x), r in zip(reqs, rs)]

    for task, inputs, body in asyncio.run(go()):
        want = expected[task][: len(inputs)] if task == "rte" else [expected[task][SST.index(x)] for x in inputs]
        assert [p["label"] for p in body["predictions"]] == [w.label for w in want]
        for p, w in zip(body["predictions"], want):
            assert p["scores"] == pytest.approx(w.scores, abs=1e-5)
    hist = s.metrics.batch_inputs.collect()[0].samples
    calls = next(x.value for x in hist if x.name.endswith("_count"))
    assert calls < 6  # the 6 concurrent requests were merged into fewer model calls


def test_task_names_are_canonical_everywhere(setup: dict) -> None:
    with TestClient(create_app(setup["service"])) as client:
        assert client.delete("/v1/plans/SST-2").json() == {"task": "sst2", "removed": True}
        r = client.post("/v1/plans/Sst2", json=_plan(setup["model"], "sst2", 6).to_dict())
        assert r.status_code == 201 and r.json()["task"] == "sst2" and r.json()["replaced"] is False
        assert (setup["plans"] / "sst2.json").is_file()
        r = client.post("/v1/predict", json={"task": "SST2", "inputs": ["good"]})
        assert r.status_code == 200 and r.json()["task"] == "sst2"
        r = client.post("/v1/predict", json={"task": "/etc/passwd", "inputs": ["good"]})
        assert r.status_code == 404 and "unknown task" in r.json()["error"]
        r = client.post("/v1/predict", json={"task": "x" * 5000, "inputs": ["good"]})
        assert r.status_code == 404 and len(r.json()["error"]) < 300
        metrics = client.get("/metrics").text
    assert 'task="sst2"} 1.0' in metrics and 'status="404",task="_unknown"} 2.0' in metrics
    assert "SST2" not in metrics


def test_plan_files_follow_replace_and_delete(setup: dict) -> None:
    plans, model = setup["plans"], setup["model"]
    (plans / "sst2.json").rename(plans / "sst2_attr.json")
    service = TaskService(model, setup["tok"], plans_dir=plans)
    assert service.register("sst2", _plan(model, "sst2", 7).to_dict(), replace=True) is True
    assert not (plans / "sst2_attr.json").exists() and (plans / "sst2.json").is_file()
    service.unregister("rte")
    assert sorted(p.name for p in plans.iterdir()) == ["sst2.json"]
    again = TaskService(model, setup["tok"], plans_dir=plans)
    assert sorted(again.plans) == ["sst2"] and again.plans["sst2"].to_dict() == service.plans["sst2"].to_dict()
    _plan(model, "sst2", 8).save(plans / "copy.json")
    with pytest.raises(Exception, match="both plans for task sst2"):
        TaskService(model, setup["tok"], plans_dir=plans)


def test_non_text_columns_and_unexpected_errors(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup["service"]
    with TestClient(create_app(s)) as client:
        r = client.post("/v1/predict", json={"task": "rte", "inputs": [{"sentence1": {"a": 1}, "sentence2": "b"}]})
        assert r.status_code == 422 and set(r.json()) == {"error"}

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("kaput")

    monkeypatch.setattr(s, "predict_texts", boom)
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        r = client.post("/v1/predict", json={"task": "sst2", "inputs": ["good"]})
        assert r.status_code == 500 and "kaput" in r.json()["error"]
        assert 'taskprune_requests_total{status="500",task="sst2"} 1.0' in client.get("/metrics").text


def test_a_cut_in_progress_blocks_no_other_call(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import taskprune.serve.service as service_mod

    s, started, release = setup["service"], threading.Event(), threading.Event()
    real = service_mod.apply

    def slow_apply(*a: object, **k: object) -> torch.nn.Module:
        started.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(service_mod, "apply", slow_apply)
    worker = threading.Thread(target=s.model_for, args=("sst2",))
    worker.start()
    assert started.wait(60)
    done = threading.Event()
    threading.Thread(target=lambda: (s.describe(), s.unregister("rte"), done.set())).start()
    # a generous bound, only for failing: were describe/unregister waiting for the cut, they would wait for the
    # release, which comes after this line, so they could never finish in time however fast the machine
    assert done.wait(60), "describe/unregister waited for the cut"
    release.set()
    worker.join(60)
    assert "sst2" in s.cache


def test_a_stuck_model_times_out_with_504_and_the_server_goes_on(setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waits at most timeout_s for queue and model; the worker then skips it, and later requests run.

    Nothing here depends on how fast the machine is: the model call blocks until the test releases it, so the first
    request cannot finish within its short timeout however fast the model is; the request after the release gets
    a timeout long enough for the held call and its own to finish however slow the model is.
    """
    import dataclasses
    import threading

    s = setup["service"]
    release = threading.Event()
    real = s.predict_texts

    def held(task: str, texts: list[str], dense: bool = False):  # noqa: ANN202
        release.wait()
        return real(task, texts, dense)

    limits = dataclasses.replace(s.limits, timeout_s=0.3)
    monkeypatch.setattr(s, "limits", limits)
    monkeypatch.setattr(s, "predict_texts", held)
    try:
        with TestClient(create_app(s)) as client:
            r = client.post("/v1/predict", json={"task": "sst2", "inputs": ["fine"]})
            assert r.status_code == 504 and r.json() == {
                "error": "no prediction within 0.3 s: the server is overloaded or the model is stuck"}
            limits.timeout_s = 600.0  # the app reads its limits per request
            release.set()
            r = client.post("/v1/predict", json={"task": "sst2", "inputs": ["fine"]})
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("positive", "negative"), r.text
    finally:
        release.set()  # never leave the inference thread blocked, whatever failed


def test_max_input_chars_counts_the_clients_text_not_the_template(setup: dict) -> None:
    """The limit (200 here) is on what the client sent, all columns together; the task's template is not counted."""
    with TestClient(create_app(setup["service"])) as client:
        r = client.post("/v1/predict", json={"task": "sst2", "inputs": ["a" * 200]})
        assert r.status_code == 200, r.text  # rendered "sst2 sentence: aaa..." is longer than 200: not counted
        r = client.post("/v1/predict", json={"task": "sst2", "inputs": ["a" * 201]})
        assert r.status_code == 413 and "inputs[0] is 201 characters; the limit is 200" in r.json()["error"]
        r = client.post("/v1/predict", json={"task": "rte", "inputs": [{"sentence1": "a" * 150, "sentence2": "b" * 51}]})
        assert r.status_code == 413 and "all columns together" in r.json()["error"]


@pytest.mark.parametrize("body, headers, needle", [
    (b"\xff\xfe{}", {"content-type": "application/json"}, "the request body is not UTF-8 text (byte 0)"),
    (b'{"task": "sst2", "inputs": ["good"]}', {}, "Content-Type: application/json (the request has none)"),
    (b'{"task": "sst2", "inputs": ["good"]}', {"content-type": "text/plain"}, "(got 'text/plain')"),
    (b"task=sst2", {"content-type": "application/x-www-form-urlencoded"}, "got 'application/x-www-form-urlencoded'"),
])
def test_bodies_that_are_not_utf8_json_get_422_saying_why(setup: dict, body: bytes, headers: dict,
                                                          needle: str) -> None:
    with TestClient(create_app(setup["service"])) as client:
        for path in ("/v1/predict", "/v1/plans/sst2?replace=true"):
            r = client.post(path, content=body, headers=headers)
            assert r.status_code == 422 and set(r.json()) == {"error"} and needle in r.json()["error"], r.text
        r = client.post("/v1/predict", content=b'{"task": "sst2", "inputs": ["good"]}',
                        headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code == 200, r.text


def test_serve_limits_and_the_plans_folder_are_checked(tmp_path: Path) -> None:
    from taskprune.errors import TaskpruneError
    from taskprune.serve.service import check_plans_dir

    for bad in ({"max_inputs": 0}, {"timeout_s": float("nan")}, {"max_wait_ms": -1.0}, {"max_batch": 2.5}):
        with pytest.raises(TaskpruneError, match=next(iter(bad))):
            ServeLimits(**bad)
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(TaskpruneError, match="is a file, not a folder"):
        check_plans_dir(tmp_path / "file.json")
    with pytest.raises(TaskpruneError, match="not found"):
        check_plans_dir(tmp_path / "missing")
    assert check_plans_dir(tmp_path) == tmp_path
