"""The SVD baseline: rank-r factorised layers, the paper's rank formula, factorising, saving and counting."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import logits, make_model, make_tokenizer, sample_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from taskprune.checkpoint import load_model, load_pruned, save_pruned
from taskprune.errors import TaskpruneError
from taskprune.evaluate import count_parameters
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply
from taskprune.pruning.lowrank import LowRankLinear, factorize, is_lowrank, lowrank_rank
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.sources.fingerprint import fingerprint


def _linear(d: int, k: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, d, bias=bias)


def _factorised_linears(model: nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def _expected_ranks(model: nn.Module, rates: RateSpec) -> dict[str, int]:
    """The rank the formula gives every part of every group pruned at a rate above 0 (computed on the original)."""
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for g in adapter.groups():
        if rates.rate_for(g) > 0:
            parts = adapter.parts(g)
            for lin in (*parts.producers, *parts.consumers):
                out[names[id(lin)]] = lowrank_rank(lin.out_features, lin.in_features, rates.rate_for(g))
    return out


# -- the layer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_full_rank_reconstructs_the_linear(bias: bool) -> None:
    lin = _linear(12, 20, bias)
    low = LowRankLinear.from_linear(lin, min(12, 20))
    assert (low.in_features, low.out_features, low.rank) == (20, 12, 12)
    torch.testing.assert_close(low.weight, lin.weight, atol=1e-4, rtol=0)
    x = torch.randn(5, 3, 20)
    torch.testing.assert_close(low(x), lin(x), atol=1e-4, rtol=0)


def test_truncation_is_the_best_rank_r_approximation() -> None:
    lin = _linear(16, 10)
    s = torch.linalg.svdvals(lin.weight.detach())
    low = LowRankLinear.from_linear(lin, 4)
    # Eckart-Young: the Frobenius error of the truncated SVD is the norm of the dropped singular values
    err = torch.linalg.matrix_norm(low.weight - lin.weight.detach())
    torch.testing.assert_close(err, s[4:].norm(), atol=1e-4, rtol=1e-4)


def test_rank_zero_outputs_the_bias_only() -> None:
    x = torch.randn(2, 7, 20)
    low = LowRankLinear.from_linear(_linear(12, 20), 0)
    assert torch.equal(low(x), low.bias.expand(2, 7, 12))
    bare = LowRankLinear.from_linear(_linear(12, 20, bias=False), 0)
    assert torch.equal(bare(x), torch.zeros(2, 7, 12))
    assert sum(p.numel() for p in bare.parameters()) == 0


def test_keeps_dtype_and_refuses_bad_ranks() -> None:
    half = LowRankLinear.from_linear(_linear(12, 20).half(), 5)
    assert all(p.dtype == torch.float16 for p in half.parameters())
    with pytest.raises(TaskpruneError, match="outside 0..12"):
        LowRankLinear.from_linear(_linear(12, 20), 13)


def test_weight_is_read_only_follows_updates_and_keeps_gradients() -> None:
    low = LowRankLinear.from_linear(_linear(12, 20), 6)
    with pytest.raises((AttributeError, KeyError)):
        low.weight = nn.Parameter(torch.zeros(12, 20))
    with torch.no_grad():
        before = low.weight.clone()
        assert low.weight is low.weight  # cached outside autograd
        low.S.mul_(2.0)  # an in-place update must not leave a stale dense copy
        torch.testing.assert_close(low.weight, 2 * before)
    low.weight.sum().backward()
    assert low.S.grad is not None and low.U.grad is not None


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 96), k=st.integers(1, 96), rate=st.floats(0.0, 1.0), bias=st.booleans())
def test_rank_formula_and_parameter_count(d: int, k: int, rate: float, bias: bool) -> None:
    r = lowrank_rank(d, k, rate)
    assert r == math.floor(d * k * (1 - rate) / (d + k + 1) + 1e-9)
    assert 0 <= r < min(d, k) or r == 0
    assert r * (d + k + 1) <= d * k * (1 - rate) + 1e-6  # never more than the pruned matrix keeps
    layer = LowRankLinear(k, d, r, bias=bias)
    assert sum(p.numel() for p in layer.parameters()) == r * (d + k + 1) + (d if bias else 0)


def test_rank_formula_examples_and_bad_rates() -> None:
    assert lowrank_rank(512, 2048, 0.5) == 204  # 512*2048*0.5/2561 = 204.7
    assert lowrank_rank(32, 48, 0.0) == 18 and lowrank_rank(32, 48, 1.0) == 0
    assert lowrank_rank(10, 10, 0.79) == 1  # 100*(1-0.79)/21 is 0.9999999999999998 in floating point: the guard gives 1
    with pytest.raises(TaskpruneError, match=r"outside \[0, 1\]"):
        lowrank_rank(32, 48, 1.5)


# -- factorising a model ----------------------------------------------------------------------------

def test_rate_zero_changes_nothing(family: str) -> None:
    model = make_model(family)
    same = factorize(model, RateSpec(rate=0.0))
    assert not _factorised_linears(same) and same.config.taskprune_lowrank == {}
    inputs = sample_inputs(0)
    assert torch.equal(logits(same, inputs), logits(model, inputs))


def test_decoder_only_touches_decoder_linears_at_the_formula_rank(family: str) -> None:
    model = make_model(family)
    rates = RateSpec(rate=0.5, modules=("decoder",))
    fact = factorize(model, rates)
    layers = _factorised_linears(fact)
    assert layers and all(n.startswith("decoder.") for n in layers)
    expected = _expected_ranks(model, rates)
    assert fact.config.taskprune_lowrank == expected == {n: m.rank for n, m in layers.items()}
    for name, layer in layers.items():
        original = model.get_submodule(name)
        assert isinstance(original, nn.Linear)  # the original model is left alone
        assert layer.rank == lowrank_rank(original.out_features, original.in_features, 0.5)
        bias = 0 if layer.bias is None else layer.bias.numel()
        d, k = original.out_features, original.in_features
        assert sum(p.numel() for p in layer.parameters()) == layer.rank * (d + k + 1) + bias
    for group in get_adapter(fact).groups():  # encoder groups still hold plain linears
        if group.module == "encoder":
            parts = get_adapter(fact).parts(group)
            assert all(type(p) is nn.Linear for p in (*parts.producers, *parts.consumers))
    assert fact.config.taskprune_base_fingerprint == fingerprint(model)
    assert not is_lowrank(model) and is_lowrank(fact)
    assert logits(fact, sample_inputs(0)).isfinite().all()


def test_inplace_replaces_the_models_own_layers() -> None:
    model = make_model("t5-relu")
    assert factorize(model, RateSpec(rate=0.5, layer_types=("ffn",)), inplace=True) is model
    assert isinstance(model.encoder.block[0].layer[-1].DenseReluDense.wi, LowRankLinear)
    assert type(model.encoder.block[0].layer[0].SelfAttention.q) is nn.Linear


def test_rate_one_gives_rank_zero_and_the_model_still_runs(family: str) -> None:
    model = make_model(family)
    fact = factorize(model, RateSpec(rate=1.0))
    ranks = fact.config.taskprune_lowrank
    assert ranks and set(ranks.values()) == {0}
    out = logits(fact, sample_inputs(0))
    assert out.shape == logits(model, sample_inputs(0)).shape and out.isfinite().all()
    assert count_parameters(fact)["prunable"] == sum(  # only the producers' biases are left
        lin.bias.numel() for g in get_adapter(fact).groups() for lin in get_adapter(fact).parts(g).producers
        if lin.bias is not None
    )


def test_factorised_or_pruned_models_are_refused(tmp_path) -> None:  # noqa: ANN001
    model = make_model("t5-relu")
    fact = factorize(model, RateSpec(rate=0.5))
    with pytest.raises(TaskpruneError, match="already factorised"):
        factorize(fact, RateSpec(rate=0.3))
    with pytest.raises(TaskpruneError, match="already factorised"):
        factorize(load_model(save_pruned(fact, tmp_path / "f")), RateSpec(rate=0.3))
    g = torch.Generator().manual_seed(0)
    scores = {grp.name: torch.randn(grp.size, generator=g) for grp in get_adapter(model).groups()}
    pruned = apply(make_plan(model, scores, RateSpec(rate=0.5)), model)
    with pytest.raises(TaskpruneError, match="already pruned"):
        factorize(pruned, RateSpec(rate=0.5))
    with pytest.raises(TaskpruneError, match="already pruned"):
        factorize(load_model(save_pruned(pruned, tmp_path / "p")), RateSpec(rate=0.5))
    # a plan that removes nothing leaves the base model: factorising it is fine
    untouched = apply(make_plan(model, scores, RateSpec(rate=0.0)), model)
    both = factorize(untouched, RateSpec(rate=0.5))
    reloaded = load_model(save_pruned(both, tmp_path / "u"))  # widths and ranks recorded together
    assert torch.equal(logits(reloaded, sample_inputs(0)), logits(both, sample_inputs(0)))


# -- saving, loading, counting --------------------------------------------------------------------------

@pytest.mark.parametrize("rates", [RateSpec(rate=0.5), RateSpec(rate=0.5, modules=("decoder",)), RateSpec(rate=1.0)],
                         ids=["both", "decoder-only", "rank-zero"])
def test_save_load_gives_identical_logits(tmp_path, family: str, rates: RateSpec) -> None:  # noqa: ANN001
    fact = factorize(make_model(family), rates)
    out = save_pruned(fact, tmp_path / "m", make_tokenizer(family))
    inputs = sample_inputs(1)
    expected = logits(fact, inputs)
    for reloaded in (load_pruned(out), load_model(out)):
        assert torch.equal(logits(reloaded, inputs), expected)
        assert reloaded.config.taskprune_lowrank == fact.config.taskprune_lowrank
        assert {n: m.rank for n, m in _factorised_linears(reloaded).items()} == fact.config.taskprune_lowrank
        assert fingerprint(reloaded) == fingerprint(fact)
        assert count_parameters(reloaded) == count_parameters(fact)
        assert not reloaded.training


def test_fp16_factorised_checkpoint_keeps_its_dtype(tmp_path) -> None:  # noqa: ANN001
    fact = factorize(make_model("t5-gated"), RateSpec(rate=0.5))
    reloaded = load_pruned(save_pruned(fact, tmp_path / "m", dtype=torch.float16))
    assert all(p.dtype == torch.float16 for p in reloaded.parameters())
    assert logits(reloaded.float(), sample_inputs(0)).isfinite().all()


def test_a_checkpoint_that_contradicts_its_ranks_is_refused(tmp_path) -> None:  # noqa: ANN001
    out = save_pruned(factorize(make_model("bert2bert"), RateSpec(rate=0.5)), tmp_path / "m")
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    name = next(iter(config["taskprune_lowrank"]))
    config["taskprune_lowrank"][name] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(TaskpruneError, match="does not match its recorded low-rank layers"):
        load_pruned(out)
    del config["taskprune_lowrank"][name]
    config_path.write_text(json.dumps(config))
    with pytest.raises(TaskpruneError, match="unexpected"):
        load_model(out)
    config["taskprune_lowrank"]["decoder.no.such.layer"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(TaskpruneError, match="does not exist"):
        load_model(out)


def test_count_parameters_follows_the_formula(family: str) -> None:
    model = make_model(family)
    rates = RateSpec(rate=0.5, modules=("decoder",), layer_type_rates={"ffn": 0.8})
    fact = factorize(model, rates)
    adapter = get_adapter(model)
    names = {id(m): n for n, m in model.named_modules()}
    expected_prunable = 0
    removed = added = 0
    for g in adapter.groups():
        rate = rates.rate_for(g)
        if rate == 0:
            expected_prunable += adapter.prunable_parameters(g)
            continue
        parts = adapter.parts(g)
        for lin, producer in [(p, True) for p in parts.producers] + [(c, False) for c in parts.consumers]:
            d, k = lin.out_features, lin.in_features
            r = lowrank_rank(d, k, rate)
            assert fact.config.taskprune_lowrank[names[id(lin)]] == r
            expected_prunable += r * (d + k + 1) + (d if producer and lin.bias is not None else 0)
            removed += d * k
            added += r * (d + k + 1)
    before, after = count_parameters(model), count_parameters(fact)
    assert after["prunable"] == expected_prunable < before["prunable"]
    assert after["total"] == before["total"] - removed + added
