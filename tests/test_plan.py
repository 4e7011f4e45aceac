"""Selection (eqs. 7-8), rate specs and the plan file."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_model
from hypothesis import given
from hypothesis import strategies as st

from taskprune.errors import TaskpruneError
from taskprune.models import get_adapter
from taskprune.models.base import NeuronGroup
from taskprune.pruning.plan import PruningPlan, make_plan, select_units
from taskprune.pruning.rates import RateSpec, check_rate


def test_select_keeps_the_highest_per_head_with_ties_to_lower_index() -> None:
    scores = torch.tensor([5.0, 1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 9.0])
    kept = select_units(scores, n_heads=2, rate=0.5)
    # head 0: [5, 1, 1, 3] keeps 5 and 3; head 1: [0, 2, 2, 9] keeps 9 and the first 2 (index 5)
    assert kept.tolist() == [0, 3, 5, 7]
    assert select_units(torch.ones(4), 1, 0.5).tolist() == [0, 1]


@given(size=st.integers(1, 64), heads=st.sampled_from([1, 2, 4]), rate=st.floats(0.0, 1.0))
def test_select_removes_floor_k_p_per_head(size: int, heads: int, rate: float) -> None:
    size *= heads
    kept = select_units(torch.randn(size), heads, rate)
    head = size // heads
    assert kept.numel() == heads * (head - math.floor(head * rate + 1e-9))
    assert torch.equal(kept, torch.sort(kept).values)
    assert len(set(kept.tolist())) == kept.numel()
    counts = torch.bincount(kept // head, minlength=heads) if kept.numel() else torch.zeros(heads)
    assert len(set(counts.tolist())) == 1


def test_float_guard_and_extremes() -> None:
    # 10 * 0.3 is 2.9999999999999996 in floating point: the guard removes 3, not 2
    assert select_units(torch.arange(10.0), 1, 0.3).numel() == 7
    assert select_units(torch.arange(10.0), 1, 0.0).numel() == 10
    assert select_units(torch.arange(10.0), 1, 1.0).numel() == 0


@given(head=st.integers(1, 64), heads=st.sampled_from([1, 2, 3, 8, 12]), rate=st.floats(0.0, 1.0),
       multiple=st.sampled_from([2, 8, 16]))
def test_multiple_of_rounds_kept_widths_up(head: int, heads: int, rate: float, multiple: int) -> None:
    """The kept width is the plain one rounded up so that heads x per-head width is a multiple (or the whole group,
    when the head is too small to round within); an emptied group stays empty; the extra units are the next best."""
    scores = torch.randn(head * heads)
    plain, rounded = select_units(scores, heads, rate), select_units(scores, heads, rate, multiple)
    if plain.numel() == 0:
        assert rounded.numel() == 0
        return
    assert rounded.numel() >= plain.numel()
    assert rounded.numel() % multiple == 0 or rounded.numel() == scores.numel()
    step = multiple // math.gcd(multiple, heads)
    assert rounded.numel() - plain.numel() < step * heads  # the smallest such rounding
    assert set(plain.tolist()) <= set(rounded.tolist())


def test_multiple_of_on_real_shapes() -> None:
    """MiniLM shapes at p = 0.7: FFN 1536 -> 461 plain, 464 rounded; 12 heads x 32 -> 10 per head is already a
    multiple of 8 in total (120), while p = 0.3 (23 per head, 276) rounds to 24 per head (288)."""
    assert select_units(torch.randn(1536), 1, 0.7).numel() == 461
    assert select_units(torch.randn(1536), 1, 0.7, 8).numel() == 464
    assert select_units(torch.randn(384), 12, 0.7, 8).numel() == 120
    assert select_units(torch.randn(384), 12, 0.3).numel() == 276
    assert select_units(torch.randn(384), 12, 0.3, 8).numel() == 288
    for bad in (0, -8, 2.5, True):
        with pytest.raises(TaskpruneError, match="multiple_of must be a positive integer"):
            RateSpec(rate=0.5, multiple_of=bad)
    assert "multiple_of" not in RateSpec(rate=0.5).to_dict()  # older plans and sweep rows compare equal
    assert RateSpec.from_dict(RateSpec(rate=0.5, multiple_of=8).to_dict()).multiple_of == 8


def test_plans_with_rounded_widths_slice_like_their_masks(family: str) -> None:
    """A plan made with multiple_of has widths that are multiples of it, and its sliced model equals the masked one."""
    from conftest import sample_inputs

    from taskprune.pruning.apply import apply, masked

    model = make_model(family).eval()
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(3)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in adapter.groups()}
    plan = make_plan(model, scores, RateSpec(rate=0.65, multiple_of=8))  # FFN 48 -> 17 -> 24; heads 4x8 -> 4x3 -> 4x4
    for grp in adapter.groups():
        n = len(plan.groups[grp.name]["keep"])
        assert n % 8 == 0 and n > (0.35 * grp.size), (grp.name, n)
    assert plan.rates["multiple_of"] == 8
    inputs = sample_inputs()
    with torch.no_grad():
        sliced = apply(plan, model)(**inputs).logits
        with masked(plan, model):
            reference = model(**inputs).logits
    torch.testing.assert_close(sliced, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_rates_outside_unit_interval_are_refused(bad: float) -> None:
    with pytest.raises(TaskpruneError, match=r"outside \[0, 1\]"):
        check_rate(bad)
    with pytest.raises(TaskpruneError, match=r"outside \[0, 1\]"):
        RateSpec(rate=bad)
    with pytest.raises(TaskpruneError, match=r"outside \[0, 1\]"):
        RateSpec(module_rates={"encoder": bad})


def test_rate_spec_precedence_and_scope() -> None:
    spec = RateSpec(rate=0.5, module_rates={"encoder": 0.2}, layer_type_rates={"ffn": 0.7},
                    depth_rates=[(1, 2, 0.9)])

    def g(module: str, layer_type: str, depth: int) -> NeuronGroup:
        return NeuronGroup("x", module, layer_type, "ffn" if layer_type == "ffn" else "qk", depth, 8)  # type: ignore[arg-type]

    assert spec.rate_for(g("decoder", "self_attn", 0)) == 0.5
    assert spec.rate_for(g("encoder", "self_attn", 0)) == 0.2
    assert spec.rate_for(g("encoder", "ffn", 0)) == 0.7
    assert spec.rate_for(g("encoder", "ffn", 2)) == 0.9
    # outside the scope nothing is pruned, whatever the overrides say
    scoped = RateSpec(rate=0.5, modules=("decoder",), layer_type_rates={"ffn": 0.7}, depth_rates=[(0, 5, 0.9)])
    assert scoped.rate_for(g("encoder", "ffn", 0)) == 0.0
    assert scoped.rate_for(g("decoder", "ffn", 0)) == 0.9
    assert RateSpec(rate=0.5, layer_types=("ffn",)).rate_for(g("decoder", "self_attn", 0)) == 0.0
    with pytest.raises(TaskpruneError, match="outside the pruned scope"):
        RateSpec(rate=0.5, modules=("decoder",), module_rates={"encoder": 0.3})
    with pytest.raises(TaskpruneError, match="outside the pruned scope"):
        RateSpec(rate=0.5, layer_types=("ffn",), layer_type_rates={"cross_attn": 0.3})
    with pytest.raises(TaskpruneError, match="unknown module"):
        RateSpec(modules=("middle",))
    with pytest.raises(TaskpruneError, match="unknown layer type"):
        RateSpec(layer_type_rates={"mlp": 0.1})


def test_plan_round_trip_and_provenance(tmp_path, family: str) -> None:  # noqa: ANN001
    model = make_model(family)
    scores = {g.name: torch.randn(g.size) for g in get_adapter(model).groups()}
    plan = make_plan(model, scores, RateSpec(rate=0.25), task="sst2", method="attribution", samples=10, seed=3)
    path = plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(path)
    assert loaded == plan
    assert loaded.task == "sst2" and loaded.samples == 10 and loaded.seed == 3 and loaded.rates["rate"] == 0.25
    with pytest.raises(TaskpruneError, match="already exists"):
        plan.save(path)
    plan.save(path, overwrite=True)


def test_malformed_or_shuffled_keep_lists_are_refused(tmp_path) -> None:  # noqa: ANN001
    from taskprune.pruning.apply import apply, mask

    model = make_model("t5-relu")
    plan = make_plan(model, {g.name: torch.randn(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    name = "encoder.0.self_attn.qk"
    keep = plan.groups[name]["keep"]
    plan.groups[name]["keep"] = keep[1:2] + keep[:1] + keep[2:]  # same units, out of order
    for fn in (apply, mask):
        with pytest.raises(TaskpruneError, match="out of order"):
            fn(plan, model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # nothing left half-done
    data = plan.to_dict()
    data["groups"][name]["keep"] = ["a"]
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(TaskpruneError, match="list of integer 'keep'"):
        PruningPlan.load(tmp_path / "p.json")


def test_bad_plan_files(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TaskpruneError, match="not found"):
        PruningPlan.load(tmp_path / "missing.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(TaskpruneError, match="not a JSON plan"):
        PruningPlan.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(TaskpruneError, match="not a taskprune plan"):
        PruningPlan.load(tmp_path / "b.json")


def test_scores_for_another_model_are_refused() -> None:
    model = make_model("t5-relu")
    scores = {g.name: torch.randn(g.size + 1) for g in get_adapter(model).groups()}
    with pytest.raises(TaskpruneError, match="scores were made for another model"):
        make_plan(model, scores, RateSpec(rate=0.5))
    with pytest.raises(TaskpruneError, match="no scores for group"):
        make_plan(model, {}, RateSpec(rate=0.5))
    # groups at rate 0 need no scores
    assert make_plan(model, {}, RateSpec(rate=0.0)).widths()


def test_a_pruned_model_can_be_planned_again() -> None:
    """Re-pruning: empty (zero-width) groups need no scores and stay empty."""
    from taskprune.pruning.apply import apply

    model = make_model("bert2bert")
    scores = {g.name: torch.randn(g.size) for g in get_adapter(model).groups()}
    once = apply(make_plan(model, scores, RateSpec(rate=0.5, layer_type_rates={"cross_attn": 1.0})), model)
    groups = get_adapter(once).groups()
    again = make_plan(once, {g.name: torch.randn(g.size) for g in groups if g.size}, RateSpec(rate=0.5))
    twice = apply(again, once)
    sizes = {g.name: g.size for g in get_adapter(twice).groups()}
    assert all(sizes[g.name] == (0 if g.size == 0 else g.size // 2) for g in groups)
