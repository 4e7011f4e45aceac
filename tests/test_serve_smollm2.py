"""Integration: the default compress of smollm2-glue6 for SST-2 (repaired, per-layer widths), its output folder
placed in the plans folder, served to the official openai client: it lists sst2, answers clear reviews right,
streams the same answer, raises NotFoundError for an unknown model, and its probabilities are the saved
checkpoint's within 1e-4 on 32 SST-2 dev inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data
from test_openai_api import live
from test_smollm2_glue6 import needs_adapter, needs_smollm2

openai = pytest.importorskip("openai", reason="the official openai client is not installed (make test installs it)")
pytestmark = [pytest.mark.integration, needs_shared_data, needs_adapter, needs_smollm2]


def test_default_compress_folder_served_to_the_openai_client(tmp_path: Path) -> None:
    import taskprune as tp
    from taskprune.cli import main
    from taskprune.evaluate import rank_scores
    from taskprune.lm import model_kind
    from taskprune.lm.batching import batches
    from taskprune.serve import TaskService
    from taskprune.serve.app import create_app
    from taskprune.tasks import Example

    plans = tmp_path / "plans"
    plans.mkdir()
    assert main(["compress", "--model", "smollm2-glue6", "--task", "sst2", "--data-dir", str(SHARED_DATA),
                 "--samples", "10", "--rate", "0.5", "--calibration", "32", "--no-eval",
                 "--out", str(plans / "sst2-default")]) == 0
    task = tp.get_task("sst2")
    dev = [e.text for e in tp.load_examples(task, "eval", SHARED_DATA)[:32]]
    inputs = dev
    saved, tok = tp.load_pruned(plans / "sst2-default"), tp.load_tokenizer("smollm2-glue6")
    kind = model_kind(saved)
    labels = kind.label_space(tok, task)
    rendered = [Example(task.render({"sentence": _sentence(x)}, causal=True), 0) for x in inputs]
    want = [p for b in batches(rendered, tok, 8, 256, kind) for p in rank_scores(saved, b, labels).softmax(-1).tolist()]
    service = TaskService(tp.load_model("smollm2-glue6"), tok, plans_dir=plans)
    assert service.plans["sst2"].repaired_with and service.repairs["sst2"]
    with live(create_app(service)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        assert "sst2" in {m.id for m in client.models.list().data}
        worst = 0.0
        for x, probs in zip(inputs, want):
            r = client.chat.completions.create(model="sst2", messages=[{"role": "user", "content": _sentence(x)}],
                                               logprobs=True)
            top = {t.token: math.exp(t.logprob) for t in r.choices[0].logprobs.content[0].top_logprobs}
            worst = max(worst, *(abs(top[w] - p) for w, p in zip(task.label_words, probs)))
        assert worst <= 1e-4
        for text, label in (("A wonderful, moving film; I loved every minute of it.", "positive"),
                            ("A dull, lifeless mess. I hated it and walked out.", "negative")):
            msg = [{"role": "user", "content": text}]
            assert client.chat.completions.create(model="sst2", messages=msg).choices[0].message.content == label
            stream = client.chat.completions.create(model="sst2", messages=msg, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == label
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="sst3", messages=[{"role": "user", "content": "good"}])


def _sentence(text: str) -> str:
    """The review itself: an example's text is the seq2seq rendering ("sst2 sentence: ...")."""
    return text.split("sst2 sentence: ", 1)[-1]
