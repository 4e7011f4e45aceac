"""Attribution equals independent computations: finite differences (supervised) and perturbation leaves."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, make_tokenizer

from taskprune.data import LabelSpace, targets_for
from taskprune.errors import TaskpruneError
from taskprune.lm.batching import batches
from taskprune.models import get_adapter
from taskprune.scoring import ScoreConfig, ScoringJob, get_scorer
from taskprune.tasks import Example, Task

# multi-token labels: every label is two word-pieces, plus EOS
TASK = Task(name="toy", template="{text}", label_words=("very good", "very bad"), label_values=("1", "0"))
EXAMPLES = [Example("good movie", 0), Example("a very awful film", 1), Example("the film was great", 0)]


@pytest.fixture(autouse=True)
def float64_t5_layer_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """T5LayerNorm computes its variance in float32 even for a float64 model; finite differences need float64."""
    from transformers.models.t5 import modeling_t5

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_t5.T5LayerNorm, "forward", forward)


def _setup(family: str):  # noqa: ANN202
    model = make_model(family).double()
    tok = make_tokenizer(family)
    labels = LabelSpace.build(tok, TASK)
    assert labels.n_pieces == (2, 2)
    return model, tok, labels


def _objective(model, batch, labels, classes, start, j=None) -> torch.Tensor:  # noqa: ANN001
    """Sum over label word-pieces of P(y_j | x, y_<j) (or only piece j), computed from scratch."""
    dec_in, target = targets_for(labels, classes, start, pieces_only=True)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, decoder_input_ids=dec_in,
                use_cache=False).logits.softmax(-1)
    total = torch.zeros((), dtype=out.dtype)
    for b, c in enumerate(classes):
        for pos in range(labels.n_pieces[c]):
            if j is None or pos == j:
                total = total + out[b, pos, labels.targets[c][pos]]
    return total


def _scaled(adapter, group, unit: int, alpha: float):  # noqa: ANN001, ANN202
    """Hooks multiplying unit ``unit`` of ``group`` at all its sites by ``alpha``."""
    handles = []
    for site in adapter.sites(group):
        def scale(t: torch.Tensor) -> torch.Tensor:
            m = torch.ones(t.shape[-1], dtype=t.dtype)
            m[unit] = alpha
            return t * m
        if site.where == "output":
            handles.append(site.module.register_forward_hook(lambda _m, _i, o: scale(o)))
        else:
            handles.append(site.module.register_forward_pre_hook(lambda _m, i: (scale(i[0]), *i[1:])))
    return handles


@pytest.mark.parametrize("group_name", ["encoder.0.ffn", "decoder.1.cross_attn.qk", "decoder.0.self_attn.vo",
                                        "encoder.1.self_attn.qk", "decoder.1.ffn"])
def test_supervised_attribution_equals_finite_differences(family: str, group_name: str) -> None:
    model, tok, labels = _setup(family)
    adapter = get_adapter(model)
    group = adapter.group_by_name()[group_name]
    start = adapter.decoder_start_token_id()
    per_example = []
    for ex in EXAMPLES:
        (batch,) = batches([ex], tok, 1)
        job = ScoringJob(model, [batch], labels, [group], ScoreConfig(example_agg="signed", position_agg="sum"))
        scores = get_scorer("attribution")(job)[group_name]
        units = [0, group.size // 2, group.size - 1]
        eps = 1e-5
        for u in units:
            vals = []
            for alpha in (1 + eps, 1 - eps):
                handles = _scaled(adapter, group, u, alpha)
                with torch.no_grad():
                    vals.append(_objective(model, batch, labels, [ex.label], start))
                for h in handles:
                    h.remove()
            fd = (vals[0] - vals[1]) / (2 * eps)  # d f(alpha * h_u) / d alpha = sum_pos h_u * df/dh_u
            assert float(scores[u]) == pytest.approx(float(fd), rel=1e-4, abs=1e-11)
        per_example.append(scores)
    # aggregation over examples: signed sum vs sum of |A|
    all_batches = list(batches(EXAMPLES, tok, 2))
    signed = get_scorer("attribution")(ScoringJob(model, all_batches, labels, [group], ScoreConfig(example_agg="signed")))
    absolute = get_scorer("attribution")(ScoringJob(model, all_batches, labels, [group], ScoreConfig(example_agg="abs")))
    torch.testing.assert_close(signed[group_name], sum(per_example), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(absolute[group_name], sum(a.abs() for a in per_example), rtol=1e-6, atol=1e-12)
    abs_sum = get_scorer("attribution")(ScoringJob(model, all_batches, labels, [group], ScoreConfig(example_agg="abs_sum")))
    torch.testing.assert_close(abs_sum[group_name], sum(per_example).abs(), rtol=1e-6, atol=1e-12)


def test_unsupervised_attribution_equals_perturbation_gradients(family: str) -> None:
    """eq. 10 recomputed with additive zero perturbations as the gradient leaves, one label token at a time."""
    model, tok, labels = _setup(family)
    adapter = get_adapter(model)
    groups = [g for g in adapter.groups() if g.name in ("encoder.0.ffn", "decoder.1.cross_attn.qk")]
    start = adapter.decoder_start_token_id()
    all_batches = list(batches(EXAMPLES, tok, 2))
    got = get_scorer("attribution-unsupervised")(ScoringJob(model, all_batches, labels, groups, ScoreConfig()))
    for group in groups:
        expected = torch.zeros(group.size, dtype=torch.float64)
        for batch in all_batches:
            for c in range(len(labels)):
                acts: list[torch.Tensor] = []
                deltas: list[torch.Tensor] = []

                def perturb(t: torch.Tensor) -> torch.Tensor:
                    d = torch.zeros_like(t, requires_grad=True)
                    acts.append(t.detach())
                    deltas.append(d)
                    return t + d

                handles = []
                for site in adapter.sites(group):
                    if site.where == "output":
                        handles.append(site.module.register_forward_hook(lambda _m, _i, o: perturb(o)))
                    else:
                        handles.append(site.module.register_forward_pre_hook(lambda _m, i: (perturb(i[0]), *i[1:])))
                grad_abs = None
                for j in range(labels.n_pieces[c]):
                    acts.clear()
                    deltas.clear()
                    obj = _objective(model, batch, labels, [c] * len(batch), start, j=j)
                    grads = torch.autograd.grad(obj, deltas)
                    g_abs = [g.abs() for g in grads]
                    grad_abs = g_abs if grad_abs is None else [a + b for a, b in zip(grad_abs, g_abs)]
                for h in handles:
                    h.remove()
                for h_act, g in zip(acts, grad_abs):
                    expected += (h_act.abs() * g).reshape(-1, h_act.shape[-1]).sum(0)
        torch.testing.assert_close(got[group.name].double(), expected, rtol=1e-5, atol=1e-12)


def test_scoring_keeps_no_weight_gradients_and_restores_flags(family: str) -> None:
    model, tok, labels = _setup(family)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = get_adapter(model)
    get_scorer("attribution")(ScoringJob(model, list(batches(EXAMPLES, tok, 2)), labels, adapter.groups(), ScoreConfig()))
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_score_config_rejects_unknown_aggregations() -> None:
    with pytest.raises(TaskpruneError, match="example aggregation"):
        ScoreConfig(example_agg="mean")  # type: ignore[arg-type]
    with pytest.raises(TaskpruneError, match="unknown method"):
        get_scorer("magic")


def test_scoring_memory_scales_with_the_batch_not_the_examples() -> None:
    """Live tensors at the peak of a scoring pass: 1,000 examples retain no more than 10 at the same batch size."""
    import gc

    from taskprune.api import score
    from taskprune.tasks import Example, Task

    task = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    words = ["good", "bad", "movie", "film", "great", "awful", "the", "very"]

    def peak_live_tensors(n: int) -> int:
        examples = [Example(" ".join(words[(i + j) % 8] for j in range(3 + i % 4)), i % 2) for i in range(n)]
        peak, calls = 0, 0

        def count(*_: object) -> None:  # every 10th batch: a leak grows, so sampling finds it (gc scans are slow)
            nonlocal peak, calls
            if calls % 10 == 0:
                peak = max(peak, sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
            calls += 1

        handle = model.get_encoder().register_forward_hook(count)
        try:
            score(model, tok, task, examples, batch_size=5)
        finally:
            handle.remove()
        return peak

    few, many = peak_live_tensors(10), peak_live_tensors(1000)
    assert many <= few + 5, f"scoring 1,000 examples kept {many} tensors alive, 10 examples {few}"


@pytest.mark.parametrize("method", ["attribution", "activation"])
def test_compress_scores_only_the_pruned_groups_and_skips_the_encoder_backward(method: str) -> None:
    """A decoder-only plan: scores of the decoder groups equal full scoring's, and no gradient reaches the encoder."""
    from taskprune.api import compress, score
    from taskprune.pruning.rates import RateSpec
    from taskprune.tasks import Example, Task

    task = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
    examples = [Example(t, i % 2) for i, t in enumerate(["good movie", "a bad film", "great", "awful film"])]
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    full = score(model, tok, task, examples, method=method)
    grads = []

    def watch(_m: torch.nn.Module, _i: object, out: tuple) -> None:  # a gradient reaching the encoder's output
        if out[0].requires_grad:
            out[0].register_hook(lambda g: grads.append(1))

    handle = model.get_encoder().register_forward_hook(watch)
    result = compress(model, tok, task, examples, RateSpec(rate=0.5, modules=("decoder",)), method=method)
    handle.remove()
    assert not grads and result.scores and all(name.startswith("decoder") for name in result.scores)
    for name, s in result.scores.items():
        torch.testing.assert_close(s, full[name], rtol=1e-5, atol=1e-7)
    assert compress(model, tok, task, examples, RateSpec(rate=0.0), method=method).scores == {}


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert", "llama", "qwen3"])
@pytest.mark.parametrize("method", ["attribution", "attribution-unsupervised", "fisher"])
def test_activation_checkpointing_changes_no_score(family: str, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ScoreConfig.checkpoint (the default) recomputes every block in the backward pass: the scores equal the
    plain path's
    (within 1e-6 relative), and the blocks really are checkpointed (torch.utils.checkpoint runs once per block
    and batch)."""
    import torch.utils.checkpoint as ckpt
    from tiny import tiny_causal, tiny_causal_tokenizer
    from transformers.modeling_layers import GradientCheckpointingLayer

    from taskprune.api import scoring_job

    if family in ("llama", "qwen3"):
        model, tok = tiny_causal(family, layers=3), tiny_causal_tokenizer()
    else:
        model, tok = make_model(family), make_tokenizer(family)
    task = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
    exs = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(
        ["good movie", "the film was very bad", "a great film", "awful", "it is good", "bad and awful"])]
    plain = get_scorer(method)(scoring_job(model, tok, task, exs, config=ScoreConfig(checkpoint=False), batch_size=3))
    calls = []
    real = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = get_scorer(method)(scoring_job(model, tok, task, exs, config=ScoreConfig(checkpoint=True), batch_size=3))
    blocks = sum(isinstance(m, GradientCheckpointingLayer) for m in model.modules())
    assert blocks > 0 and len(calls) >= 2 * blocks
    for name, s in plain.items():
        torch.testing.assert_close(again[name], s, rtol=1e-6, atol=1e-6 * float(s.abs().max()))


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert", "llama", "qwen3"])
@pytest.mark.parametrize("method", ["attribution", "fisher"])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_gates_give_the_scores_of_captured_activations(family: str, method: str, checkpoint: bool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores that sum h * grad over positions take the gradient of a gate of ones per example and unit instead of
    capturing every activation and its gradient: the same scores within 1e-6 relative (with and without
    checkpointing), and the gated path really holds gates ([B, 1, ..., units]), not activations."""
    from tiny import tiny_causal, tiny_causal_tokenizer

    import taskprune.scoring.attribution as attribution
    import taskprune.scoring.hooks as hooks
    from taskprune.api import scoring_job

    if family in ("llama", "qwen3"):
        model, tok = tiny_causal(family, layers=3), tiny_causal_tokenizer()
    else:
        model, tok = make_model(family), make_tokenizer(family)
    task = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
    exs = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(
        ["good movie", "the film was very bad", "a great film", "awful", "it is good", "bad and awful"])]
    config = ScoreConfig(checkpoint=checkpoint)
    shapes: list[tuple[int, ...]] = []
    real_flat = hooks.ActivationRecorder.flat

    def flat(self):  # noqa: ANN001, ANN202
        names, tensors = real_flat(self)
        shapes.extend(tuple(t.shape) for t in tensors if self.gated)
        return names, tensors

    monkeypatch.setattr(hooks.ActivationRecorder, "flat", flat)
    gated = get_scorer(method)(scoring_job(model, tok, task, exs, config=config, batch_size=3))
    assert shapes and all(s[0] == 3 and all(d == 1 for d in s[1:-1]) for s in shapes)
    monkeypatch.setattr(attribution, "_gated", lambda _agg: False)
    shapes.clear()
    captured = get_scorer(method)(scoring_job(model, tok, task, exs, config=config, batch_size=3))
    assert not shapes and sum(bool(s.abs().max() > 0) for s in captured.values()) >= len(captured) // 2
    for name, s in captured.items():
        torch.testing.assert_close(gated[name], s, rtol=1e-6, atol=1e-6 * float(s.abs().max()))


@pytest.mark.parametrize("family", ["t5-gated", "llama"])
@pytest.mark.parametrize("method", ["attribution", "attribution-unsupervised", "fisher", "activation", "flap",
                                    "random-attribution"])
def test_micro_batches_change_no_score(family: str, method: str) -> None:
    """ScoreConfig.micro_batch runs each batch in passes of at most that many examples: every scorer's scores equal
    the whole-batch scores (within 1e-6 relative; float64, so that passes of other widths cannot differ by float32
    rounding in tiny random models' near-zero scores), and the model really sees no more rows per pass."""
    from tiny import tiny_causal, tiny_causal_tokenizer

    from taskprune.api import scoring_job

    if family == "llama":
        model, tok = tiny_causal(family, layers=3), tiny_causal_tokenizer()
    else:
        model, tok = make_model(family), make_tokenizer(family)
    model = model.double()
    task = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
    exs = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(
        ["good movie", "the film was very bad", "a great film", "awful", "it is good", "bad and awful", "fine"])]
    rows: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args, kwargs: rows.append(int((args[0] if args else kwargs["input_ids"]).shape[0])),
        with_kwargs=True)
    try:
        whole = get_scorer(method)(scoring_job(model, tok, task, exs, config=ScoreConfig(micro_batch=None),
                                               batch_size=7))
        assert max(rows) == 7
        rows.clear()
        parts = get_scorer(method)(scoring_job(model, tok, task, exs, config=ScoreConfig(micro_batch=2),
                                               batch_size=7))
        assert rows and max(rows) == 2 and 1 in rows  # 7 rows: passes of 2, 2, 2 and 1
    finally:
        handle.remove()
    assert whole.keys() == parts.keys()
    scale = max(float(s.abs().max()) for s in whole.values())  # a group whose true scores are 0 holds rounding only
    assert scale > 0
    for name, s in whole.items():
        torch.testing.assert_close(parts[name], s, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_micro_batch_must_be_positive_whole_number(bad: object) -> None:
    with pytest.raises(TaskpruneError, match="micro-batch must be a positive whole number"):
        ScoreConfig(micro_batch=bad)  # type: ignore[arg-type]


def test_cli_micro_batch_reaches_the_score_config() -> None:
    """``--micro-batch N`` is the config's ``micro_batch``; the default is the library's, 0 means whole batches."""
    from taskprune.cli import build_parser
    from taskprune.cli.options import score_config

    parser = build_parser()
    assert score_config(parser.parse_args(["score", "--model", "m", "--task", "sst2", "--out", "s.safetensors"])).micro_batch == ScoreConfig().micro_batch
    assert score_config(parser.parse_args(["score", "--model", "m", "--task", "sst2", "--out", "s.safetensors", "--micro-batch", "3"])).micro_batch == 3
    assert score_config(parser.parse_args(["score", "--model", "m", "--task", "sst2", "--out", "s.safetensors", "--micro-batch", "0"])).micro_batch is None
