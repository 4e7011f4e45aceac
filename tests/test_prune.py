"""Equivalence laws of pruning: p = 0 changes nothing; mask == slice; p = 1 removes a sublayer exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FAMILIES, logits, make_model, make_tokenizer, sample_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskprune.errors import TaskpruneError
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply, mask, masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.sources.fingerprint import fingerprint

MODELS = {name: make() for name, make in FAMILIES.items()}


def random_scores(model, seed: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randn(grp.size, generator=g) for grp in get_adapter(model).groups()}


def test_rate_zero_changes_nothing(family: str) -> None:
    model = make_model(family)
    inputs = sample_inputs()
    plan = make_plan(model, random_scores(model, 0), RateSpec(rate=0.0))
    pruned = apply(plan, model)
    assert torch.equal(logits(pruned, inputs), logits(model, inputs))
    with masked(plan, model):
        assert torch.equal(logits(model, inputs), logits(pruned, inputs))
    assert sum(p.numel() for p in pruned.parameters()) == sum(p.numel() for p in model.parameters())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    seed=st.integers(0, 10_000),
    rate=st.floats(0.0, 1.0),
    enc=st.floats(0.0, 1.0),
    ffn=st.floats(0.0, 1.0),
    modules=st.sampled_from([("encoder", "decoder"), ("encoder",), ("decoder",)]),
)
def test_mask_equals_slice(family: str, seed: int, rate: float, enc: float, ffn: float, modules: tuple) -> None:
    model = MODELS[family]
    before = fingerprint(model)
    rates = RateSpec(rate=rate, modules=modules, module_rates={"encoder": enc} if seed % 2 and "encoder" in modules else {},
                     layer_type_rates={"ffn": ffn} if seed % 3 == 0 else {})
    plan = make_plan(model, random_scores(model, seed), rates)
    inputs = sample_inputs(seed)
    with mask(plan, model):
        masked_out = logits(model, inputs)
    pruned = apply(plan, model)
    torch.testing.assert_close(logits(pruned, inputs), masked_out, atol=1e-5, rtol=1e-5)
    # the base model is untouched by both, and no hook stays behind
    assert fingerprint(model) == before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_apply_is_physically_smaller(family: str) -> None:
    model = make_model(family)
    plan = make_plan(model, random_scores(model, 1), RateSpec(rate=0.5))
    pruned = apply(plan, model)
    adapter, before = get_adapter(pruned), get_adapter(model)
    for g_before, g_after in zip(before.groups(), adapter.groups()):
        assert g_after.size == g_before.size // 2
        for lin in adapter.parts(g_after).producers:
            assert lin.weight.shape[0] == g_after.size
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def _zero_sublayer_reference(model, layer_type: str, kind: str):  # noqa: ANN001, ANN202
    """An independent construction of 'this sublayer contributes nothing': zero the weights by hand."""
    ref = copy.deepcopy(model)
    adapter = get_adapter(ref)
    with torch.no_grad():
        for g in adapter.groups():
            if g.layer_type != layer_type or g.role != kind:
                continue
            parts = adapter.parts(g)
            for lin in parts.producers:
                lin.weight.zero_()
                if lin.bias is not None:
                    lin.bias.zero_()
            for lin in parts.consumers:
                lin.weight.zero_()
    return ref


@pytest.mark.parametrize("layer_type,kind", [("ffn", "ffn"), ("self_attn", "vo"), ("cross_attn", "vo"),
                                             ("self_attn", "qk"), ("cross_attn", "qk")])
def test_rate_one_removes_the_sublayer(family: str, layer_type: str, kind: str) -> None:
    model = make_model(family)
    inputs = sample_inputs(3)
    # only the chosen group kind at rate 1, its sibling untouched: score the sibling, plan it at rate 0 by hand
    scores = random_scores(model, 2)
    plan = make_plan(model, scores, RateSpec(rate=1.0, layer_types=(layer_type,)))
    for name, g in plan.groups.items():
        if not name.endswith(kind) and name.split(".")[2] == layer_type or g["size"] == 0:
            g["keep"] = list(range(g["size"]))
    reference = _zero_sublayer_reference(model, layer_type, kind)
    with masked(plan, model):
        masked_out = logits(model, inputs)
    torch.testing.assert_close(masked_out, logits(reference, inputs), atol=1e-5, rtol=1e-5)
    if kind == "ffn":  # width 0 is a real zero-width FFN
        pruned = apply(plan, model)
        torch.testing.assert_close(logits(pruned, inputs), masked_out, atol=1e-5, rtol=1e-5)
        assert all(g.size == 0 for g in get_adapter(pruned).groups() if g.role == "ffn")


def test_rate_one_on_whole_attention_slices_to_zero_width(family: str) -> None:
    model = make_model(family)
    inputs = sample_inputs(4)
    plan = make_plan(model, random_scores(model, 4), RateSpec(rate=1.0))
    pruned = apply(plan, model)
    with masked(plan, model):
        torch.testing.assert_close(logits(pruned, inputs), logits(model, inputs), atol=1e-5, rtol=1e-5)
    reference = model
    for layer_type, kind in [("self_attn", "qk"), ("self_attn", "vo"), ("cross_attn", "qk"), ("cross_attn", "vo"),
                             ("ffn", "ffn")]:
        reference = _zero_sublayer_reference(reference, layer_type, kind)
    torch.testing.assert_close(logits(pruned, inputs), logits(reference, inputs), atol=1e-5, rtol=1e-5)
    assert all(g.size == 0 for g in get_adapter(pruned).groups())


def test_apply_refuses_a_plan_for_another_model(family: str) -> None:
    model = make_model(family)
    plan = make_plan(model, random_scores(model, 0), RateSpec(rate=0.5))
    other = FAMILIES[family]()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(TaskpruneError, match="made for another model"):
        apply(plan, other)
    with pytest.raises(TaskpruneError, match="made for another model"):
        mask(plan, other)


def test_unequal_qk_vo_widths_are_refused() -> None:
    model = make_model("t5-relu")
    plan = make_plan(model, random_scores(model, 0), RateSpec(rate=0.5))
    name = "encoder.0.self_attn.qk"
    plan.groups[name]["keep"] = list(range(plan.groups[name]["size"]))
    with pytest.raises(TaskpruneError, match="must be equal"):
        apply(plan, model)
    mask(plan, model).remove()  # masks need no common head size


def test_a_shared_cut_leaves_the_base_untouched_and_shares_only_whole_tensors(family: str) -> None:
    """apply(share=True) builds new modules around the base's unsliced tensors: the base's config, hooks and
    outputs do not change, tied weights stay tied, sliced tensors are new, and outputs equal a full copy's."""
    model = make_model(family).eval()
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(5)
    plan = make_plan(model, {grp.name: torch.rand(grp.size, generator=g) for grp in adapter.groups()},
                     RateSpec(rate=0.5, modules=("decoder",)))
    inputs = sample_inputs()
    before = logits(model, inputs)
    base_params = {id(p) for p in model.parameters()}
    shared = apply(plan, model, share=True)
    assert shared.config is not model.config and not getattr(model.config, "taskprune_widths", None)
    assert shared.config.taskprune_widths
    enc = [p for n, p in shared.named_parameters() if n.startswith("encoder.")]
    assert enc and all(id(p) in base_params for p in enc)  # the encoder was not pruned: nothing copied
    dec = get_adapter(shared).parts(get_adapter(shared).groups()[-1]).producers[0]
    assert id(dec.weight) not in base_params  # a sliced tensor is the cut's own
    assert (shared.get_input_embeddings().weight is shared.get_output_embeddings().weight) == (
        model.get_input_embeddings().weight is model.get_output_embeddings().weight)
    calls = []
    shared.get_encoder().register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)
    assert not calls  # a hook on the cut is not a hook on the base
    torch.testing.assert_close(logits(shared, inputs), logits(apply(plan, model), inputs), rtol=0, atol=0)


def test_a_plan_lacking_a_group_is_refused_by_apply_and_mask_naming_it() -> None:
    from taskprune.errors import TaskpruneError
    from taskprune.pruning.apply import apply, mask
    from taskprune.pruning.plan import make_plan
    from taskprune.pruning.rates import RateSpec

    model = make_model("t5-relu")
    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    plan = make_plan(model, scores, RateSpec(rate=0.5))
    del plan.groups["encoder.0.self_attn.vo"]
    for fn in (apply, mask):
        with pytest.raises(TaskpruneError, match="lacks group encoder.0.self_attn.vo"):
            fn(plan, model)


def test_library_compress_refuses_depths_the_model_lacks_before_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskprune.api as api
    from taskprune.errors import TaskpruneError
    from taskprune.pruning.rates import RateSpec
    from taskprune.tasks import Example, Task

    def no_scoring(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("scored before refusing the rates")

    monkeypatch.setattr(api, "score", no_scoring)
    task = Task("toy", "{text}", ("negative", "positive"))
    with pytest.raises(TaskpruneError, match="50-60 names blocks this model does not have"):
        api.compress(make_model("t5-relu"), make_tokenizer("t5-relu"), task, [Example("good", 1)],
                     RateSpec(rate=0.1, depth_rates=[(50, 60, 0.2)]), method="attribution")
    # the default recipe allocates every group's rate itself: a per-part rate would be dropped, so it is refused
    with pytest.raises(TaskpruneError, match="--depth-rate sets rates per part.*--allocate uniform"):
        api.compress(make_model("t5-relu"), make_tokenizer("t5-relu"), task, [Example("good", 1)],
                     RateSpec(rate=0.1, depth_rates=[(0, 0, 0.2)]))
