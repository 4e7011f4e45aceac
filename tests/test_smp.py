"""SMP (structured and unstructured): frozen weights, loss improves, schedule, plans apply == mask, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import logits, make_model, make_tokenizer, sample_inputs

from taskprune.api import compress, save_compressed
from taskprune.checkpoint import load_model
from taskprune.data import IGNORE, LabelSpace, targets_for
from taskprune.errors import TaskpruneError
from taskprune.lm.batching import batches
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply, masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.scoring import ScoreConfig, ScoringJob, SMPConfig
from taskprune.scoring.smp import (
    apply_weight_masks,
    learn_unit_scores,
    learn_weight_masks,
    prunable_weights,
    removed_fraction,
)
from taskprune.tasks import Example, Task

TASK = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
EXAMPLES = [Example("good movie", 0), Example("a very awful film that was bad", 1), Example("the film is great", 0),
            Example("it was not good", 1), Example("this is a great film", 0), Example("awful and bad", 1)]


def _setup(family: str, rate: float, smp: SMPConfig, modules: tuple[str, ...] = ("encoder", "decoder")):  # noqa: ANN202
    model, tok = make_model(family), make_tokenizer(family)
    labels = LabelSpace.build(tok, TASK)
    rates = RateSpec(rate=rate, modules=modules)
    config = ScoreConfig(smp=smp, target_rates=rates.to_dict())
    job = ScoringJob(model, list(batches(EXAMPLES, tok, 3)), labels, get_adapter(model).groups(), config)
    return model, tok, labels, job, rates


@torch.no_grad()
def _task_loss(model, tok, labels: LabelSpace) -> float:  # noqa: ANN001
    total = 0.0
    start = get_adapter(model).decoder_start_token_id()
    for b in batches(EXAMPLES, tok, len(EXAMPLES)):
        dec_in, target = targets_for(labels, b.gold.tolist(), start)
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, decoder_input_ids=dec_in, use_cache=False)
        total += float(F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), target.reshape(-1),
                                       ignore_index=IGNORE))
    return total


def test_schedule_rises_from_zero_to_the_target() -> None:
    cfg = SMPConfig(steps=50, warmup=0.1, cooldown=0.2)
    fractions = [removed_fraction(s, cfg, 0.6) for s in range(50)]
    assert fractions[0] == 0.0 and fractions[4] == 0.0 and fractions[5] > 0.0
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    assert fractions[39] == pytest.approx(0.6) and fractions[-1] == pytest.approx(0.6)
    assert removed_fraction(0, SMPConfig(schedule="constant"), 0.3) == 0.3


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0.0), dict(schedule="exp"), dict(warmup=0.9, cooldown=0.2),
                                 dict(distill=1.5), dict(temperature=0.0)])
def test_bad_smp_options_are_refused(bad: dict) -> None:
    with pytest.raises(TaskpruneError):
        SMPConfig(**bad)


def test_structured_smp_keeps_weights_bit_identical_and_lowers_the_loss(family: str) -> None:
    smp = SMPConfig(steps=60, lr=0.05, schedule="constant")
    model, tok, labels, job, rates = _setup(family, 0.5, smp)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scores, losses = learn_unit_scores(job)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # restored
    assert set(scores) == {g.name for g in job.groups if g.size}
    # the learnt mask beats the mask the optimisation started from (all-zero scores: lowest indices kept)
    start = make_plan(model, {k: torch.zeros_like(v) for k, v in scores.items()}, rates)
    learnt = make_plan(model, scores, rates)
    with masked(start, model):
        loss_start = _task_loss(model, tok, labels)
    with masked(learnt, model):
        loss_learnt = _task_loss(model, tok, labels)
    assert loss_learnt < loss_start
    assert sum(losses[-10:]) < sum(losses[:10])


def test_smp_plan_apply_and_mask_agree_and_outputs_are_deterministic(family: str) -> None:
    smp = SMPConfig(steps=12, lr=0.05, distill=0.5)
    model, tok, labels, job, rates = _setup(family, 0.5, smp, modules=("decoder",))
    a = learn_unit_scores(job)[0]
    b = learn_unit_scores(job)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(g.module == "decoder" for g in job.groups if g.name in a) and a  # only the scope is learnt
    plan = make_plan(model, a, rates, method="smp")
    inputs = sample_inputs(3)
    with masked(plan, model):
        expected = logits(model, inputs)
    torch.testing.assert_close(logits(apply(plan, model), inputs), expected, rtol=1e-4, atol=1e-5)


def test_smp_needs_target_rates() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    labels = LabelSpace.build(tok, TASK)
    with pytest.raises(TaskpruneError, match="target rate"):
        learn_unit_scores(ScoringJob(model, list(batches(EXAMPLES, tok, 3)), labels, get_adapter(model).groups()))


def test_unstructured_smp_masks_each_matrix_at_the_rate_and_lowers_the_loss(family: str) -> None:
    smp = SMPConfig(steps=60, lr=0.05, schedule="constant")
    model, tok, labels, job, rates = _setup(family, 0.7, smp)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks, losses = learn_weight_masks(job)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(masks) == set(prunable_weights(model, {g.name: 0.7 for g in job.groups}))
    for m in masks.values():
        assert int((~m).sum()) == int(m.numel() * 0.7 + 1e-9)
    # a mask of the same sparsity chosen at random does worse than the learnt one
    g = torch.Generator().manual_seed(0)
    random_masks = {k: m.reshape(-1)[torch.randperm(m.numel(), generator=g)].reshape(m.shape) for k, m in masks.items()}
    loss_learnt = _task_loss(apply_weight_masks(model, masks), tok, labels)
    loss_random = _task_loss(apply_weight_masks(model, random_masks), tok, labels)
    assert loss_learnt < loss_random
    assert sum(losses[-10:]) < sum(losses[:10])


def test_unstructured_compress_saves_zeros_and_masks_and_says_no_speedup(tmp_path: Path) -> None:
    model, tok = make_model("bert2bert"), make_tokenizer("bert2bert")
    cfg = ScoreConfig(smp=SMPConfig(steps=5))
    result = compress(model, tok, TASK, EXAMPLES, RateSpec(rate=0.5, modules=("decoder",)),
                      method="smp-unstructured", config=cfg)
    assert result.plan is None and "no" in (result.note or "") and "faster" in result.note
    out = save_compressed(result, tok, tmp_path / "out")
    assert (out / "masks.safetensors").is_file() and not (out / "plan.json").exists()
    reloaded = load_model(out)
    inputs = sample_inputs(1)
    torch.testing.assert_close(logits(reloaded, inputs), logits(result.model, inputs))
    assert reloaded.config.taskprune_weight_sparsity["fraction_zeroed"] == pytest.approx(0.5, abs=0.01)


def test_structured_compress_through_the_api_is_physically_smaller() -> None:
    model, tok = make_model("t5-gated"), make_tokenizer("t5-gated")
    result = compress(model, tok, TASK, EXAMPLES, RateSpec(rate=0.5), method="smp",
                      config=ScoreConfig(smp=SMPConfig(steps=5)))
    assert result.plan is not None and result.plan.method == "smp"
    assert result.model.config.d_ff == model.config.d_ff // 2
    assert result.plan.options["smp"]["steps"] == 5


def test_smp_trains_at_the_widths_the_plan_keeps_with_multiple_of() -> None:
    """SMP's hard masks pick units exactly as the planner does, multiple_of included (it learnt at the unrounded
    width before, so units trained as dropped were kept); smp-unstructured refuses the rounding."""
    from taskprune.pruning.plan import select_units
    from taskprune.scoring.smp import _unit_mask

    model, tok = make_model("bert2bert"), make_tokenizer("bert2bert")
    task = Task(name="toy", template="{text}", label_words=("good", "bad"), label_values=("1", "0"))
    examples = [Example("good movie", 0), Example("bad film", 1), Example("great", 0), Example("awful", 1)]
    ffn = next(g for g in get_adapter(model).groups() if g.layer_type == "ffn")
    s = torch.randn(ffn.size)
    assert int(_unit_mask(ffn, 8)("x", s, 0.65).sum()) == select_units(s, ffn.n_heads, 0.65, 8).numel() == 24
    rates = RateSpec(rate=0.65, modules=("decoder",), multiple_of=8)
    result = compress(model, tok, task, examples, rates, method="smp", config=ScoreConfig(smp=SMPConfig(steps=4)))
    assert all(len(g["keep"]) % 8 == 0 for g in result.plan.groups.values())
    with pytest.raises(TaskpruneError, match="multiple_of"):
        compress(model, tok, task, examples, rates, method="smp-unstructured")
