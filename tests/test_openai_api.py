"""The server speaks the OpenAI API to the official ``openai`` client, against a live server, and serves what
compress makes: a repaired compression's folder in the plans folder is a task whose answers are the saved
checkpoint's; free generation uses the KV cache and equals full recomputation; errors come in OpenAI's shape."""

from __future__ import annotations

import base64
import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
openai = pytest.importorskip("openai", reason="the official openai client is not installed (make test installs it)")
import uvicorn  # noqa: E402
from tiny import WORDS, tiny_causal, tiny_causal_tokenizer  # noqa: E402

from taskprune.api import compress, save_compressed  # noqa: E402
from taskprune.checkpoint import load_pruned  # noqa: E402
from taskprune.errors import TaskpruneError  # noqa: E402
from taskprune.evaluate import rank_scores  # noqa: E402
from taskprune.lm import model_kind  # noqa: E402
from taskprune.lm.batching import batches  # noqa: E402
from taskprune.pruning.apply import apply  # noqa: E402
from taskprune.pruning.rates import RateSpec  # noqa: E402
from taskprune.pruning.repaired import REPAIR_FILE, load_repaired, read_repaired  # noqa: E402
from taskprune.serve import ServeLimits, TaskService  # noqa: E402
from taskprune.serve.app import create_app  # noqa: E402
from taskprune.tasks import Example, Task  # noqa: E402

TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film", "a very good film", "the movie was awful and bad", "great great film",
         "it was a bad movie", "good and great", "a film that was awful"]
EXAMPLES = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(TEXTS)]
g = torch.Generator().manual_seed(0)
INPUTS = [" ".join(WORDS[int(i)] for i in torch.randint(6, 12, (int(n),), generator=g))
          for n in torch.randint(1, 6, (32,), generator=g)]  # 32 inputs of the toy task's words


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama, its default-recipe compression (least-squares repair, per-layer widths) saved by compress."""
    model, tok = tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    res = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), allocate="global", repair="ls",
                   calibration=EXAMPLES)
    out = tmp_path_factory.mktemp("made") / "toy-compressed"
    save_compressed(res, tok, out)
    return {"model": model, "tok": tok, "folder": out, "result": res}


@contextmanager
def live(app) -> Iterator[str]:  # noqa: ANN001
    """The app on a real socket (uvicorn in a thread); yields the OpenAI base URL. Blocks on the server's own
    started flag, never on a guessed delay."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server stopped while starting"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _service(made: dict, plans: Path, **limits) -> TaskService:  # noqa: ANN003
    return TaskService(made["model"], made["tok"], plans_dir=plans, extra_tasks=[TASK], limits=ServeLimits(**limits))


def _client(url: str):  # noqa: ANN202
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def _checkpoint_probs(made: dict, texts: list[str]) -> list[list[float]]:
    return _probs_of(load_pruned(made["folder"]), made["tok"], texts)


def _probs_of(model: torch.nn.Module, tok, texts: list[str]) -> list[list[float]]:  # noqa: ANN001
    kind = model_kind(model)
    labels = kind.label_space(tok, TASK)
    out = []
    for b in batches([Example(TASK.render({"text": t}, causal=True), 0) for t in texts], tok, 8, 256, kind):
        out += rank_scores(model, b, labels).softmax(-1).tolist()
    return out


def test_compress_stores_only_the_tensors_repair_changed(made: dict) -> None:
    res, folder = made["result"], made["folder"]
    assert res.plan.repaired_with == "ls" and (folder / REPAIR_FILE).is_file()
    stored = load_repaired(folder / REPAIR_FILE, res.plan)
    assert stored and all(n.endswith(("down_proj.weight", "o_proj.weight")) for n in stored)
    cut = apply(res.plan, made["model"], check=False, share=True)
    for name, t in cut.state_dict().items():  # everything else is the plain cut's, bit for bit
        assert torch.equal(res.model.state_dict()[name], stored.get(name, t))
    edited = type(res.plan).from_dict({**res.plan.to_dict(), "seed": 12345})
    with pytest.raises(TaskpruneError, match="belongs to another plan"):
        read_repaired((folder / REPAIR_FILE).read_bytes(), edited, "repair")
    with pytest.raises(TaskpruneError, match="another base model"):
        read_repaired((folder / REPAIR_FILE).read_bytes(), type(res.plan).from_dict(
            {**res.plan.to_dict(), "base_fingerprint": "0" * len(res.plan.base_fingerprint)}), "repair")


def test_a_repaired_plan_without_its_tensors_is_refused_in_one_line(made: dict, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "toy.json").write_text((made["folder"] / "plan.json").read_text())
    with pytest.raises(TaskpruneError, match=f"comes without its {REPAIR_FILE}"):
        _service(made, plans)


def test_openai_client_against_a_repaired_compression_folder(made: dict, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "toy-compressed")  # the whole compress output, as a user places it
    service = _service(made, plans)
    assert "toy" in service.plans and service.repairs["toy"]
    want = _checkpoint_probs(made, INPUTS)
    unrepaired = _probs_of(apply(made["result"].plan, made["model"], check=False), made["tok"], INPUTS)
    assert max(abs(a - b) for r, q in zip(unrepaired, want) for a, b in zip(r, q)) > 1e-3  # the test can tell
    with live(create_app(service)) as url:
        client = _client(url)
        assert {m.id for m in client.models.list().data} == {"toy", "base"}
        for text, probs in zip(INPUTS, want):
            r = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": text}],
                                               logprobs=True, top_logprobs=2)
            top = {t.token: math.exp(t.logprob) for t in r.choices[0].logprobs.content[0].top_logprobs}
            assert max(abs(top[w] - p) for w, p in zip(TASK.label_words, probs)) <= 1e-4
            assert r.choices[0].message.content == TASK.label_words[max(range(2), key=probs.__getitem__)]
            assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        stream = list(client.chat.completions.create(model="toy", messages=[{"role": "user", "content": INPUTS[0]}],
                                                     stream=True))
        assert all(c.choices for c in stream) and stream[-1].choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in stream)
        assert streamed == client.chat.completions.create(
            model="toy", messages=[{"role": "user", "content": INPUTS[0]}]).choices[0].message.content
        done = client.completions.create(model="toy", prompt=INPUTS[1])
        assert done.choices[0].text in TASK.label_words
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "good"}])
        assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_a_repaired_plan_posted_with_its_tensors_is_served_like_the_folder(made: dict, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    plans = tmp_path / "plans"
    plans.mkdir()
    service = _service(made, plans)
    body = {"plan": made["result"].plan.to_dict(),
            "repair": base64.b64encode((made["folder"] / REPAIR_FILE).read_bytes()).decode()}
    with TestClient(create_app(service)) as client:
        assert client.post("/v1/plans/toy", json={"plan": body["plan"]}).status_code == 422  # without its tensors
        assert client.post("/v1/plans/toy", json=body).status_code == 201
        got = client.post("/v1/predict", json={"task": "toy", "inputs": INPUTS[:8]}).json()["predictions"]
        assert (plans / "toy" / REPAIR_FILE).is_file()
        for p, want in zip(got, _checkpoint_probs(made, INPUTS[:8])):
            assert max(abs(p["scores"][w] - q) for w, q in zip(TASK.label_words, want)) <= 1e-4
        assert client.delete("/v1/plans/toy").status_code == 200 and not (plans / "toy").exists()


def test_flaps_added_biases_are_served_from_the_repair_file(made: dict, tmp_path: Path) -> None:
    """FLAP as published on Llama adds o_proj/down_proj biases the base lacks: the server cuts the base and adds
    them from repair.safetensors, giving the checkpoint's probabilities."""
    from fastapi.testclient import TestClient

    res = compress(made["model"], made["tok"], TASK, EXAMPLES[:6], RateSpec(rate=0.5), method="flap",
                   calibration=EXAMPLES)
    folder = save_compressed(res, made["tok"], tmp_path / "plans" / "toy")
    stored = load_repaired(folder / REPAIR_FILE, res.plan)
    assert any(n.endswith("down_proj.bias") for n in stored) and any(n.endswith("o_proj.bias") for n in stored)
    want = _probs_of(load_pruned(folder), made["tok"], INPUTS[:8])
    biasless = _probs_of(apply(res.plan, made["model"], check=False), made["tok"], INPUTS[:8])
    assert max(abs(a - b) for r, q in zip(biasless, want) for a, b in zip(r, q)) > 1e-4  # the test can tell
    with TestClient(create_app(_service(made, tmp_path / "plans"))) as client:
        got = client.post("/v1/predict", json={"task": "toy", "inputs": INPUTS[:8]}).json()["predictions"]
    for p, q in zip(got, want):
        assert max(abs(p["scores"][w] - x) for w, x in zip(TASK.label_words, q)) <= 1e-5


def test_a_users_checkpoint_folder_is_never_deleted(made: dict, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "mine")
    with TestClient(create_app(_service(made, plans))) as client:
        r = client.delete("/v1/plans/toy")
        assert r.status_code == 409 and "does not delete a checkpoint" in r.json()["error"]
    assert (plans / "mine" / "model.safetensors").is_file()


def _full_recompute_greedy(model: torch.nn.Module, ids: list[int], n: int, end: set[int]) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids + out]), use_cache=False).logits[0, -1].argmax())
            if t in end:
                break
            out.append(t)
    return out


def test_free_generation_uses_the_cache_and_equals_full_recomputation(made: dict, tmp_path: Path) -> None:
    from taskprune.serve.generate import end_ids

    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "toy")
    service = _service(made, plans)
    tok = made["tok"]
    messages = [{"role": "user", "content": "good movie"}]
    with live(create_app(service)) as url:
        client = _client(url)
        r = client.chat.completions.create(model="toy", messages=messages, temperature=0, max_tokens=6,
                                           extra_body={"classify": False}, logprobs=True)
        ids = list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
        cut = service.model_for("toy")
        want = _full_recompute_greedy(cut, ids, 6, end_ids(cut, tok))
        assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
        assert r.usage.completion_tokens == len(want) + (len(want) < 6)  # an end token counts, as it was generated
        assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
        streamed = list(client.chat.completions.create(model="toy", messages=messages, temperature=0, max_tokens=6,
                                                       extra_body={"classify": False}, stream=True,
                                                       stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == r.choices[0].message.content
        assert streamed[-1].usage.completion_tokens == r.usage.completion_tokens and not streamed[-1].choices
        kw = {"model": "base", "prompt": "review good", "max_tokens": 8, "temperature": 1.0, "n": 2}
        a, b, c = (client.completions.create(seed=seed, **kw) for seed in (7, 7, 8))
        assert [x.text for x in a.choices] == [x.text for x in b.choices] and len(a.choices) == 2
        assert [x.text for x in a.choices] != [x.text for x in c.choices]  # another seed, another sample
        rows = {x.choices[0].index for x in client.completions.create(seed=7, stream=True, **kw) if x.choices}
        assert rows == {0, 1}  # both choices stream, by index
        full = client.completions.create(model="base", prompt="review good", max_tokens=12, temperature=0).choices[0]
        words = full.text.split()
        if len(words) >= 3:  # a stop string cuts the text before it, and says so
            cut = client.completions.create(model="base", prompt="review good", max_tokens=12, temperature=0,
                                            stop=[words[2]]).choices[0]
            assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(words[2])]


def shutil_copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 3}, "temperature"), ({"max_tokens": -1}, "max_tokens"), ({"top_p": 0}, "top_p"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"n": 0}, "n"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"frequency_penalty": 1.0}, "frequency_penalty"),
])
def test_invalid_values_are_refused_before_any_work(made: dict, tmp_path: Path, body: dict, param: str) -> None:
    from fastapi.testclient import TestClient

    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "toy")
    service = _service(made, plans)
    with TestClient(create_app(service)) as client:
        r = client.post("/v1/chat/completions", json={"model": "toy", "messages": [{"role": "user", "content": "x"}],
                                                      **body})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]
    assert not service.cache.keys()  # nothing was cut: refused before any work


def test_openai_requests_are_counted_by_route_model_and_status(made: dict, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "toy")
    with TestClient(create_app(_service(made, plans))) as client:
        ok = client.post("/v1/completions", json={"model": "base", "prompt": "review good", "max_tokens": 2,
                                                  "temperature": 0})
        bad = client.post("/v1/chat/completions", json={"model": "toy", "temperature": 3,
                                                        "messages": [{"role": "user", "content": "x"}]})
        assert (ok.status_code, bad.status_code) == (200, 400), (ok.text, bad.text)
        text = client.get("/metrics").text
    counts = {tuple(sorted(s.labels.items())): s.value for m in text_string_to_metric_families(text)
              if m.name == "taskprune_openai_requests" for s in m.samples if s.name.endswith("_total")}
    assert counts == {(("model", "base"), ("route", "completions"), ("status", "200")): 1.0,
                      (("model", "base"), ("route", "chat"), ("status", "400")): 1.0}  # refused before resolving
    latency = [s for m in text_string_to_metric_families(text) if m.name == "taskprune_openai_request_seconds"
               for s in m.samples if s.name.endswith("_count")]
    assert {s.labels["route"]: s.value for s in latency} == {"completions": 1.0}  # only the answered request


def test_a_stream_whose_client_goes_away_frees_its_slot(made: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from taskprune.serve.generate import Decoding

    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "toy")
    gate, step = threading.Event(), Decoding.step
    calls = {"n": 0}

    def gated(self: Decoding) -> list:
        calls["n"] += 1
        if calls["n"] == 2:  # the long generation's second token waits until the test lets it go
            gate.wait()
        return step(self)

    monkeypatch.setattr(Decoding, "step", gated)
    with live(create_app(_service(made, plans, max_generations=1))) as url:
        client = _client(url)
        kw = {"model": "base", "prompt": "review good", "temperature": 1.0, "stream": True}
        stream = client.completions.create(max_tokens=110, **kw)
        next(iter(stream))  # the generation is running and holds the only slot
        with pytest.raises(openai.RateLimitError):
            client.completions.create(max_tokens=2, **kw)
        stream.close()  # the client goes away; the server frees the slot when its next chunk finds nobody
        gate.set()
        for _ in range(100_000):  # bounded by attempts, each answered at once (429 or a stream): no clock
            try:
                list(client.completions.create(max_tokens=2, **kw))
                break
            except openai.RateLimitError:
                time.sleep(0.01)
        else:
            pytest.fail("the slot of a stream whose client went away was never freed")
    assert calls["n"] < 20  # the 110-token generation stopped when its client went, it did not run to the end


def test_prune_of_a_repaired_plan_uses_its_tensors_or_refuses(made: dict, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`taskprune prune --plan D/plan.json` of a repaired compression rebuilds the repaired model (the saved
    checkpoint's outputs); the plan copied away from its repair file is refused in one line, before any loading."""
    import shutil

    from taskprune.checkpoint import save_pruned
    from taskprune.cli import main

    base = tmp_path / "base"
    save_pruned(made["model"], base, made["tok"])
    assert main(["prune", "--model", str(base), "--plan", str(made["folder"] / "plan.json"),
                 "--out", str(tmp_path / "again")]) == 0
    got, want = _probs_of(load_pruned(tmp_path / "again"), made["tok"], INPUTS[:8]), _checkpoint_probs(made, INPUTS[:8])
    assert max(abs(a - b) for r, q in zip(got, want) for a, b in zip(r, q)) <= 1e-5
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(made["folder"] / "plan.json", alone / "plan.json")
    capsys.readouterr()
    assert main(["prune", "--model", str(base), "--plan", str(alone / "plan.json"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taskprune: error:") and REPAIR_FILE in err[0]
    assert not (tmp_path / "x").exists()




def test_an_svd_checkpoint_in_the_plans_folder_is_refused_in_one_line(made: dict, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    (plans / "low-rank").mkdir(parents=True)
    (plans / "low-rank" / "config.json").write_text("{}")  # what svd's compress writes: a checkpoint, no plan
    with pytest.raises(TaskpruneError, match="checkpoint without plan.json: nothing to cut"):
        _service(made, plans)


def test_a_seq2seq_base_answers_the_openai_routes_with_404_saying_why(tmp_path: Path) -> None:
    from conftest import make_model, make_tokenizer
    from fastapi.testclient import TestClient

    (tmp_path / "plans").mkdir()
    service = TaskService(make_model("t5-relu"), make_tokenizer("t5-relu"), plans_dir=tmp_path / "plans")
    with TestClient(create_app(service)) as client:
        for r in (client.get("/v1/models"), client.post("/v1/chat/completions", json={
                "model": "sst2", "messages": [{"role": "user", "content": "good"}]})):
            assert r.status_code == 404 and "seq2seq" in r.json()["error"]["message"]


def test_an_old_repaired_compress_folder_says_to_compress_again(made: dict, tmp_path: Path) -> None:
    plans = tmp_path / "plans"
    shutil_copy(made["folder"], plans / "old")
    (plans / "old" / REPAIR_FILE).unlink()  # as compress wrote it before it stored the repaired tensors
    with pytest.raises(TaskpruneError, match="made before compress stored the repaired tensors"):
        _service(made, plans)
