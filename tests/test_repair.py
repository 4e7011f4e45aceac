"""Beyond the paper: weight repair, layer-adaptive allocation, Fisher and FLAP scores, the peers' presets.

Each promise is checked against an independent computation: a duplicated unit is merged back exactly by
least squares; a constant unit is absorbed exactly by bias compensation; a repaired model's masks equal its
slices and survive save -> load; an allocation removes the budget it was given; Fisher equals the squared
per-example attribution of the log-likelihood.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import logits, make_model, make_tokenizer, sample_inputs
from tiny import tiny_causal, tiny_causal_tokenizer

from taskprune.api import compress
from taskprune.checkpoint import load_pruned, save_pruned
from taskprune.errors import TaskpruneError
from taskprune.lm import label_space, model_kind, teacher_forced_logits
from taskprune.lm.batching import batches
from taskprune.models import REPAIRABLE_ROLES, get_adapter
from taskprune.pruning.allocate import MAX_RATE, global_rates, removed_fraction, search_rates
from taskprune.pruning.apply import apply, masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.pruning.repair import RepairConfig, repair
from taskprune.scoring import ScoreConfig, ScoringJob, get_scorer
from taskprune.tasks import Example, Task

TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film", "a very good film", "the movie was awful and bad", "great great film",
         "it was a bad movie", "good and great", "a film that was awful"]
EXAMPLES = [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(TEXTS)]
SEQ2SEQ = ("t5-relu", "t5-gated", "bert2bert")


def _batches(model, tok, exs=EXAMPLES, size=4):  # noqa: ANN001, ANN202
    return list(batches(exs, tok, size, 64, model_kind(model)))


def _ffn_parts(model, group):  # noqa: ANN001, ANN202
    return get_adapter(model).parts(group)


def _only(model, name: str, n_removed: int) -> RateSpec:  # noqa: ANN001
    size = get_adapter(model).group_by_name()[name].size
    return RateSpec(rate=0.0, group_rates={name: n_removed / size})


@pytest.mark.parametrize("family", SEQ2SEQ)
@pytest.mark.parametrize("sequential", [True, False])
def test_least_squares_merges_a_duplicated_unit_back_exactly(family: str, sequential: bool) -> None:
    model, tok = make_model(family).double(), make_tokenizer(family)
    adapter = get_adapter(model)
    group = next(g for g in adapter.groups() if g.role == "ffn" and g.module == "encoder")
    with torch.no_grad():  # unit 7 becomes a copy of unit 3: removing it loses nothing a re-solve cannot restore
        for lin in _ffn_parts(model, group).producers:
            lin.weight[7] = lin.weight[3]
            if lin.bias is not None:
                lin.bias[7] = lin.bias[3]
        _ffn_parts(model, group).consumers[0].weight[:, [3, 7]] *= 50.0  # a unit whose loss shows (random BERT
        # weights are 0.02-small: removing one plain unit moves the logits by ~1e-6, rounding-noise level)
    scores = {group.name: torch.ones(group.size)}
    scores[group.name][7] = -1.0
    plan = make_plan(model, scores, _only(model, group.name, 1))
    assert plan.groups[group.name]["keep"] == [i for i in range(group.size) if i != 7]
    labels = label_space(model, tok, TASK)
    fixed, info = repair(model, plan, _batches(model, tok), labels, RepairConfig("ls", alpha=1e-9, sequential=sequential))
    pruned, unrepaired = apply(plan, fixed, check=False), apply(plan, model, check=False)
    inputs = sample_inputs()
    dense = logits(model, inputs)
    repaired_err = (logits(pruned, inputs) - dense).abs().max()
    unrepaired_err = (logits(unrepaired, inputs) - dense).abs().max()
    # T5: exact up to rounding. BERT's centred solve sees ~60 encoder tokens for 47 kept units (one pass per input,
    # not per label): the null-space directions stay at the old weights, so off-sample inputs keep a small error
    factor = 0.2 if family == "bert2bert" else 1e-3
    assert unrepaired_err > 1e-6 and repaired_err < factor * unrepaired_err
    assert info["groups"] == 1 and info["tokens"] > group.size


def test_bias_compensation_absorbs_a_constant_unit_exactly() -> None:
    model, tok = make_model("bert2bert").double(), make_tokenizer("bert2bert")
    adapter = get_adapter(model)
    group = next(g for g in adapter.groups() if g.role == "ffn" and g.module == "decoder")
    with torch.no_grad():  # unit 5 reads nothing: its activation is gelu(bias), the same at every token
        producer = _ffn_parts(model, group).producers[0]
        producer.weight[5] = 0.0
        producer.bias[5] = 1.5
    scores = {group.name: torch.ones(group.size)}
    scores[group.name][5] = -1.0
    plan = make_plan(model, scores, _only(model, group.name, 1))
    labels = label_space(model, tok, TASK)
    fixed, _ = repair(model, plan, _batches(model, tok), labels, RepairConfig("bias"))
    inputs = sample_inputs()
    torch.testing.assert_close(logits(apply(plan, fixed, check=False), inputs), logits(model, inputs),
                               atol=1e-9, rtol=1e-9)
    flap = get_scorer("flap")(ScoringJob(model, _batches(model, tok), labels, [group]))[group.name]
    assert bool((flap[torch.arange(group.size) != 5] > flap[5]).all())  # the constant unit ranks last


def test_flap_scores_follow_its_published_structure() -> None:
    """FLAP's AL-AM (CASIA-IVA-Lab/FLAP lib/prune.py): an attention channel's WIFV squared, standardised over the
    layer's channels, a head the mean of its channels; an FFN unit's WIFV standardised over the layer's units."""
    from taskprune.scoring.flap import unit_scores

    var = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.5])
    norms = torch.tensor([1.0, 1.0, 2.0, 1.0, 4.0, 2.0])
    m = (var * norms) ** 2  # 1, 4, 36, 16, 4, 1: heads of two channels each
    z = (m - m.mean()) / m.std()
    torch.testing.assert_close(unit_scores(var, norms, 3, attention=True), z.reshape(3, 2).mean(1))
    m = var * norms
    torch.testing.assert_close(unit_scores(var, norms, 6, attention=False), (m - m.mean()) / m.std())
    # on a model: every group's scores standardised (an FFN's exactly; heads average their channels' z-scores)
    model, tok = tiny_causal("llama", layers=2), tiny_causal_tokenizer()
    groups = get_adapter(model).groups()
    scores = get_scorer("flap")(ScoringJob(model, _batches(model, tok), label_space(model, tok, TASK), groups))
    for grp in groups:
        assert abs(float(scores[grp.name].mean())) < 1e-5
        if grp.role == "ffn":
            assert abs(float(scores[grp.name].std()) - 1) < 1e-4


def _constant_attention_qwen2():  # noqa: ANN202
    """Qwen2 (q/k/v biases, o_proj without one) whose layer-1 values of KV head 0 ignore the input: query heads 0
    and 1 output that head's v bias (a softmax average of one vector), the same at every token, while heads 2 and
    3 vary; and a plan removing KV group 0 with its two query heads."""
    model = tiny_causal("qwen2", layers=2).double()
    attn = model.model.layers[1].self_attn
    d = attn.head_dim
    with torch.no_grad():
        attn.v_proj.weight[:d].zero_()
        attn.o_proj.weight.mul_(20.0)  # its loss must show above rounding: random weights are 0.02-small
    group = next(g for g in get_adapter(model).groups() if g.role == "heads" and g.depth == 1)
    scores = {group.name: torch.tensor([0.0, 0.0, 1.0, 1.0])}
    rates = RateSpec(rate=0.0, group_rates={group.name: 0.5}, head_granularity="kv")
    plan = make_plan(model, scores, rates)
    assert plan.groups[group.name]["keep"] == [2, 3]
    return model, plan


def _causal_logits(model, ids=((3, 5, 7, 9, 11, 4, 8, 6), (4, 8, 12, 3, 3, 5, 9, 10))):  # noqa: ANN001, ANN202
    with torch.no_grad():
        return model(torch.tensor(ids), use_cache=False).logits


@pytest.mark.parametrize(("mode", "centred", "exact"), [("bias", False, True), ("ls", True, True), ("ls", False, False)])
def test_a_constant_head_is_absorbed_exactly_where_the_consumer_has_no_bias(mode: str, centred: bool,
                                                                            exact: bool) -> None:
    model, plan = _constant_attention_qwen2()
    tok = tiny_causal_tokenizer()
    fixed, _ = repair(model, plan, _batches(model, tok), label_space(model, tok, TASK),
                      RepairConfig(mode, alpha=1e-10, centred=centred))
    o_proj = "model.layers.1.self_attn.o_proj"
    assert (fixed.get_submodule(o_proj).bias is not None) == (mode == "bias" or centred)
    assert model.get_submodule(o_proj).bias is None  # the base is left alone
    dense, unrepaired = _causal_logits(model), _causal_logits(apply(plan, model, check=False))
    err = (_causal_logits(apply(plan, fixed, check=False)) - dense).abs().max()
    lost = (unrepaired - dense).abs().max()
    assert lost > 1e-2
    if exact:  # FLAP's compensation (and a centred solve) put the removed heads' constant into the new bias
        assert err < 1e-5 * lost  # exact up to the float32 products of the statistics
    else:  # an uncentred solve has no constant to move it into: the other heads' columns absorb part of it
        assert err > 1e-2 * lost


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "qwen2", "mistral"])
def test_added_biases_are_what_the_config_says(model_type: str, tmp_path) -> None:  # noqa: ANN001
    """Stock flags where the family has them (Llama: both; Qwen3: attention), names in config.taskprune_biases
    elsewhere; either way the saved folder loads back with the same logits."""
    model, tok = tiny_causal(model_type, layers=2), tiny_causal_tokenizer()
    g = torch.Generator().manual_seed(1)
    plan = make_plan(model, {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()},
                     RateSpec(rate=0.5))
    fixed, _ = repair(model, plan, _batches(model, tok), label_space(model, tok, TASK), RepairConfig("bias"))
    pruned = apply(plan, fixed, check=False)
    config = pruned.config
    flags = {"llama": {"attention_bias", "mlp_bias"}, "qwen3": {"attention_bias"}}.get(model_type, set())
    assert {f for f in ("attention_bias", "mlp_bias") if getattr(config, f, False)} == flags
    recorded = set(getattr(config, "taskprune_biases", None) or [])
    for i in range(2):
        for part, flag in (("mlp.down_proj", "mlp_bias"), ("self_attn.o_proj", "attention_bias")):
            name = f"model.layers.{i}.{part}"
            assert pruned.get_submodule(name).bias is not None
            assert (name in recorded) == (flag not in flags)
    with torch.no_grad():  # the compensation must show: make it large, so a load that drops it cannot pass
        for i in range(2):
            pruned.model.layers[i].mlp.down_proj.bias.add_(0.5)
    save_pruned(pruned, tmp_path / "m", tok)
    torch.testing.assert_close(_causal_logits(load_pruned(tmp_path / "m")), _causal_logits(pruned))


def test_repair_centred_is_refused_where_it_would_change_nothing() -> None:
    from taskprune.recipe import Recipe

    with pytest.raises(TaskpruneError, match="--repair-centred"):
        Recipe(method="attribution", repair="none", repair_centred=True).check_tuning()
    with pytest.raises(TaskpruneError, match="--repair-centred"):
        Recipe(method="attribution", repair="bias", repair_centred=True).check_tuning()
    Recipe(method="attribution", repair="ls", repair_centred=True).check_tuning()


@pytest.mark.parametrize("family", [*SEQ2SEQ, "llama", "qwen3"])
@pytest.mark.parametrize("mode", ["ls", "bias", "scale"])
def test_repaired_masks_equal_slices_and_survive_save_load(family: str, mode: str, tmp_path) -> None:  # noqa: ANN001
    if family in SEQ2SEQ:
        model, tok = make_model(family), make_tokenizer(family)
    else:
        model, tok = tiny_causal(family), tiny_causal_tokenizer()
    labels = label_space(model, tok, TASK)
    g = torch.Generator().manual_seed(1)
    scores = {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}
    plan = make_plan(model, scores, RateSpec(rate=0.5))
    fixed, info = repair(model, plan, _batches(model, tok), labels, RepairConfig(mode))
    assert info["groups"] > 0
    b = _batches(model, tok)[0]
    tf = model_kind(model).teacher_forced(model, b, labels, b.gold.tolist())
    with torch.no_grad(), masked(plan, fixed, check=False):
        via_mask = fixed(**tf.kwargs).logits
    pruned = apply(plan, fixed, check=False)
    with torch.no_grad():
        via_slice = pruned(**tf.kwargs).logits
    torch.testing.assert_close(via_slice, via_mask, atol=1e-5, rtol=1e-5)
    save_pruned(pruned, tmp_path / "m", tok)
    with torch.no_grad():
        reloaded = load_pruned(tmp_path / "m")(**tf.kwargs).logits
    torch.testing.assert_close(reloaded, via_slice.to(reloaded.dtype), atol=2e-3, rtol=2e-3)  # fp16 on disk


def test_repair_makes_a_new_model_and_leaves_the_base_alone() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    before = copy.deepcopy(model.state_dict())
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    fixed, _ = repair(model, plan, _batches(model, tok), label_space(model, tok, TASK), RepairConfig("ls"))
    assert fixed is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in [*model.modules(), *fixed.modules()])


def test_repair_settings_are_checked() -> None:
    with pytest.raises(TaskpruneError, match="repair 'magic'"):
        RepairConfig("magic")
    with pytest.raises(TaskpruneError, match="alpha"):
        RepairConfig("ls", alpha=-1.0)


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert", "llama"])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_global_allocation_removes_the_budget(family: str, budget: float) -> None:
    model = make_model(family) if family in SEQ2SEQ else tiny_causal(family, layers=3)
    g = torch.Generator().manual_seed(2)
    scores = {grp.name: torch.rand(grp.size, generator=g) * (1 + 10 * i)
              for i, grp in enumerate(get_adapter(model).groups())}
    rates = global_rates(model, scores, RateSpec(rate=budget), budget)
    adapter = get_adapter(model)
    ceiling = removed_fraction(model, RateSpec(rate=MAX_RATE))  # a decoder-only model's K/V blocks stay below it
    if budget > ceiling:  # tiny Llama at 0.7: 0.696 is all it can lose, and every group gives what it can
        assert set(rates.group_rates.values()) == {MAX_RATE} and removed_fraction(model, rates) == ceiling
        return
    per_unit = max(adapter.prunable_parameters(grp, grp.n_heads) for grp in adapter.groups())
    total = sum(adapter.prunable_parameters(grp) for grp in adapter.groups())
    assert abs(removed_fraction(model, rates) - budget) <= len(adapter.groups()) * per_unit / total
    assert len(set(rates.group_rates.values())) > 1  # not uniform
    for grp in adapter.groups():  # an attention's Q/K and V/O share one rate
        if grp.role == "qk":
            vo = grp.name.removesuffix("qk") + "vo"
            assert rates.group_rates[grp.name] == rates.group_rates[vo]
    plan = make_plan(model, scores, rates)
    apply(plan, model)  # a valid plan: every head keeps one width
    assert RateSpec.from_dict(plan.rates) == rates


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("family", ["t5-gated", "llama"])
def test_per_parameter_ranking_is_the_raw_ranking_of_each_units_score_per_parameter(family: str, power: float) -> None:
    """global-param (power 1) and global-sqrt (power 0.5): the raw ranking of score / parameters ** power."""
    model = make_model(family) if family in SEQ2SEQ else tiny_causal(family, layers=3)
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(3)
    scores = {grp.name: torch.rand(grp.size, generator=g) * (1 + 10 * i) for i, grp in enumerate(adapter.groups())}
    divided = {grp.name: scores[grp.name].double() / adapter.prunable_parameters(grp, 1) ** power
               for grp in adapter.groups()}
    per_param = global_rates(model, scores, RateSpec(rate=0.5), 0.5, per_parameter=power)
    assert per_param == global_rates(model, divided, RateSpec(rate=0.5), 0.5, standardise=False)
    assert abs(removed_fraction(model, per_param) - 0.5) < 0.1


def test_the_raw_ranking_keeps_whole_heads_that_the_per_parameter_ranking_removes() -> None:
    """Every unit equally important per parameter it owns: a whole head's raw score is then far above an FFN
    unit's, so the raw ranking spends the budget on the FFNs alone (what collapsed SmolLM2 at 0.7); the
    per-parameter ranking removes heads too."""
    model = tiny_causal("llama", layers=3)
    adapter = get_adapter(model)
    g = torch.Generator().manual_seed(4)
    scores = {grp.name: adapter.prunable_parameters(grp, 1) * (1 + 0.01 * torch.rand(grp.size, generator=g))
              for grp in adapter.groups()}
    heads = [grp.name for grp in adapter.groups() if grp.role == "heads"]
    assert heads and min(adapter.prunable_parameters(grp, 1) for grp in adapter.groups() if grp.role == "heads") > \
        max(adapter.prunable_parameters(grp, 1) for grp in adapter.groups() if grp.role == "ffn")
    raw = global_rates(model, scores, RateSpec(rate=0.4), 0.4, standardise=False)
    per_param = global_rates(model, scores, RateSpec(rate=0.4), 0.4, per_parameter=True)
    assert all(raw.group_rates[h] == 0 for h in heads)
    assert any(per_param.group_rates[h] > 0 for h in heads)

    # scores growing as parameters ** 0.75: per square root of them a head still outranks an FFN unit (global-sqrt
    # keeps every head, as the raw ranking does); per parameter it ranks below (global-param removes heads)
    scores = {grp.name: adapter.prunable_parameters(grp, 1) ** 0.75 * (1 + 0.01 * torch.rand(grp.size, generator=g))
              for grp in adapter.groups()}
    per_sqrt = global_rates(model, scores, RateSpec(rate=0.4), 0.4, per_parameter=0.5)
    assert all(per_sqrt.group_rates[h] == 0 for h in heads)
    assert any(global_rates(model, scores, RateSpec(rate=0.4), 0.4, per_parameter=1.0).group_rates[h] > 0 for h in heads)


def test_search_keeps_the_budget_and_never_worsens_its_fitness() -> None:
    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    labels = label_space(model, tok, TASK)
    scores = {grp.name: torch.rand(grp.size) for grp in get_adapter(model).groups()}
    spec, info = search_rates(model, scores, RateSpec(rate=0.5), 0.5, _batches(model, tok), labels,
                              lambda r: make_plan(model, scores, r), iterations=12)
    assert info["kl_end"] <= info["kl_start"]
    assert abs(removed_fraction(model, spec) - 0.5) < 0.08


def test_fisher_is_the_squared_attribution_of_the_log_likelihood() -> None:
    model, tok = make_model("t5-relu").double(), make_tokenizer("t5-relu")
    labels = label_space(model, tok, TASK)
    groups = get_adapter(model).groups()
    exs = EXAMPLES[:3]
    fisher = get_scorer("fisher")(ScoringJob(model, _batches(model, tok, exs, 3), labels, groups))
    expected = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in groups}
    for e in exs:  # one example at a time: signed attribution of P, divided by P, squared (single-piece labels)
        b = _batches(model, tok, [e], 1)
        signed = get_scorer("attribution")(ScoringJob(model, b, labels, groups, ScoreConfig(example_agg="signed")))
        with torch.no_grad():
            lg, target = teacher_forced_logits(model, b[0], labels, [e.label], pieces_only=True)
            p = lg.double().softmax(-1)[0, 0, target[0, 0]]
        for name in expected:
            expected[name] += (signed[name].double() / p) ** 2
    for name in expected:
        torch.testing.assert_close(fisher[name].double(), expected[name], rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert", "llama"])
@pytest.mark.parametrize("method", ["flap", "kwon"])
def test_peer_presets_compress_and_record_what_they_did(family: str, method: str) -> None:
    if family in SEQ2SEQ:
        model, tok = make_model(family), make_tokenizer(family)
    else:
        model, tok = tiny_causal(family, layers=3), tiny_causal_tokenizer()
    res = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), method=method, calibration=EXAMPLES)
    assert res.plan.allocation["method"] == "global-raw"  # FLAP's scores come standardised
    assert res.plan.repair["mode"] == ("bias" if method == "flap" else "scale")
    assert abs(res.plan.allocation["removed_fraction"] - 0.5) < 0.1
    assert sum(p.numel() for p in res.model.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("allocate", ["global-param", "global-sqrt"])
def test_compress_with_the_per_parameter_allocation_records_it(allocate: str) -> None:
    model, tok = tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    res = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), method="attribution",
                   allocate=allocate, repair="ls", calibration=EXAMPLES)
    assert res.plan.allocation["method"] == allocate and res.plan.repair["mode"] == "ls"
    assert abs(res.plan.allocation["removed_fraction"] - 0.5) < 0.1


def test_cached_generation_equals_full_recomputation_after_repair() -> None:
    model, tok = tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    pruned = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), allocate="global", repair="ls",
                      calibration=EXAMPLES).model
    b = _batches(model, tok, EXAMPLES[:4], 4)[0]
    out = pruned.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=5, do_sample=False,
                          min_new_tokens=5, pad_token_id=0, eos_token_id=None)
    ids, mask = b.input_ids, b.attention_mask
    for _ in range(5):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            nxt = pruned(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        nxt = nxt.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, ids)


def test_the_server_refuses_a_repaired_plan_in_one_line() -> None:
    pytest.importorskip("fastapi")
    from taskprune.serve import TaskService
    from taskprune.serve.service import ServeError

    model, tok = make_model("t5-relu"), make_tokenizer("t5-relu")
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    plan.repair = {"mode": "ls"}
    service = TaskService(model, tok)
    with pytest.raises(ServeError, match="weight repair"):
        service.register("sst2", plan.to_dict())
    plan.repair = None
    service.register("sst2", plan.to_dict())  # the same plan unrepaired is served


def test_masks_refuse_a_repaired_plan() -> None:
    """A mask of a repaired plan would silently be the unrepaired model: refused in one line."""
    model = make_model("t5-relu")
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    plan.repair = {"mode": "ls"}
    with pytest.raises(TaskpruneError, match="masks cannot hold the repaired weights"):
        masked(plan, model).__enter__()
    plan.repair = {"mode": "none"}
    with masked(plan, model):
        pass


def test_the_library_reads_the_same_table_as_the_cli() -> None:
    """compress(repair=RepairConfig(centred=True)) on BERT and kv granularity on T5 are refused by the rows of
    taskprune/applies.py, before any scoring."""
    from taskprune.pruning.rates import check_rates_fit

    bert, tok = make_model("bert2bert"), make_tokenizer("bert2bert")
    with pytest.raises(TaskpruneError, match="--repair-centred applies to models whose FFN"):
        compress(bert, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), repair=RepairConfig("ls", centred=True))
    with pytest.raises(TaskpruneError, match="--head-granularity kv applies to decoder-only LMs"):
        check_rates_fit(RateSpec(rate=0.5, head_granularity="kv"), make_model("t5-relu"))
    with pytest.raises(TaskpruneError, match="head granularity kv would change nothing"):
        check_rates_fit(RateSpec(rate=0.5, head_granularity="kv", layer_types=("ffn",)), tiny_causal("llama"))


TASK3 = Task("toy3", "{text}", ("negative", "positive", "so so"), ("0", "1", "2"),
             causal_template="review {text} Answer:")


def _reference_sums(model, tok, groups, cols, labels):  # noqa: ANN001, ANN202
    """What one-shot repair summed before its passes were shared: one whole teacher-forced pass per candidate
    label, an encoder's tokens counted on the first candidate's pass only; y = W x from the consumer's input."""
    adapter, kind = get_adapter(model), model_kind(model)
    rows: dict[str, list] = {g.name: [] for g in groups}
    for b in _batches(model, tok):
        for c in range(len(labels)):
            tf = kind.teacher_forced(model, b, labels, [c] * len(b))
            seen: dict[str, torch.Tensor] = {}
            handles = [adapter.parts(g).consumers[0].register_forward_pre_hook(
                lambda _m, inp, g=g: seen.__setitem__(g.name, inp[0].detach())) for g in groups]
            with torch.no_grad():
                model(**tf.kwargs)
            for h in handles:
                h.remove()
            for g in groups:
                if g.module == "encoder" and kind.has_encoder and c > 0:
                    continue
                m = kind.site_mask(g, 0, b, tf).bool()
                x = seen[g.name].reshape(m.shape[0], -1, seen[g.name].shape[-1])[m]
                rows[g.name].append((x, x @ adapter.parts(g).consumers[0].weight.detach().T))
    out = {}
    for g in groups:
        x = torch.cat([r[0] for r in rows[g.name]])[:, cols[g.name]]
        y = torch.cat([r[1] for r in rows[g.name]])
        out[g.name] = (x.shape[0], x.sum(0), y.sum(0), x.T @ x, y.T @ x)
    return out


@pytest.mark.parametrize("family", ["t5-gated", "bert2bert", "llama", "qwen3"])
@pytest.mark.parametrize("task", [TASK, TASK3], ids=["2-labels", "3-labels"])
def test_shared_calibration_passes_sum_what_one_pass_per_candidate_sums(family: str, task: Task) -> None:
    """A causal prompt (KV cache, weighted by the candidates) and an encoder run once per batch, yet every group's
    sums equal those of one teacher-forced pass per candidate label."""
    from taskprune.pruning.repair import gather, kept_columns

    if family in SEQ2SEQ:
        model, tok = make_model(family).double(), make_tokenizer(family)
    else:
        model, tok = tiny_causal(family, layers=2).double(), tiny_causal_tokenizer()
    labels = label_space(model, tok, task)
    if task is TASK3:  # a continuation of several tokens runs on the cache, which is cropped back after it
        assert max(len(t) for t in labels.targets) > 2
    groups = [g for g in get_adapter(model).groups() if g.role in ("ffn", "vo", "heads")]
    gen = torch.Generator().manual_seed(0)
    cols = {g.name: kept_columns(g, torch.randperm(g.size, generator=gen)[: g.size // 2].sort().values)
            for g in groups}
    got = gather(model, groups, cols, _batches(model, tok), labels)
    want = _reference_sums(model, tok, groups, cols, labels)
    for g in groups:
        n, sx, sy, sxx, syx = want[g.name]
        st = got[g.name]
        assert st.n == n
        for a, b in ((st.sx, sx), (st.sy, sy), (st.sxx, sxx), (st.syx, syx)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["ls", "bias"])
def test_statistics_split_into_chunks_give_the_same_repair(mode: str) -> None:
    model, tok = tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    labels, bs = label_space(model, tok, TASK), _batches(model, tok)
    whole, info = repair(model, plan, bs, labels, RepairConfig(mode))
    chunked, info_chunked = repair(model, plan, bs, labels, RepairConfig(mode), budget=1)  # one group per pass
    assert info == info_chunked and info["groups"] >= 6
    for (name, a), b in zip(whole.state_dict().items(), chunked.state_dict().values()):
        assert torch.equal(a, b), name


def test_repair_copies_only_what_it_rewrites_and_compress_owns_every_tensor() -> None:
    """Repair's work copy shares the untouched tensors with the base (no second whole model in memory); the
    compressed model then owns all of its tensors, its tied embeddings still tied, and the base is unchanged."""
    model, tok = tiny_causal("llama", layers=2), tiny_causal_tokenizer()
    before = copy.deepcopy(model.state_dict())
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    work, _ = repair(model, plan, _batches(model, tok), label_space(model, tok, TASK), RepairConfig("ls"))
    adapter = get_adapter(work)
    rewritten = {id(adapter.parts(g).consumers[0].weight) for g in adapter.groups() if g.role in REPAIRABLE_ROLES}
    assert rewritten
    base_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for p in work.parameters():
        assert (p.untyped_storage().data_ptr() in base_storage) != (id(p) in rewritten)
    res = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), repair="ls", calibration=EXAMPLES)
    out = res.model
    assert not base_storage & {t.untyped_storage().data_ptr() for t in [*out.parameters(), *out.buffers()]}
    assert out.get_input_embeddings().weight is out.get_output_embeddings().weight
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("mode", "sequential"), [("ls", False), ("ls", True), ("bias", False)])
def test_repair_in_place_equals_repair_on_a_copy(mode: str, sequential: bool) -> None:
    """``repair(inplace=True)`` rewrites the model's own consumers, copying none of them, and gives the copy path's
    weights bit for bit (every group solved on the dense model's inputs although the statistics come in chunks, one
    group per pass here, and the first chunk's solutions would change the second's inputs if written at once)."""
    import taskprune.pruning.repair as repair_module

    model, tok = tiny_causal("llama", layers=3), tiny_causal_tokenizer()
    plan = make_plan(model, {g.name: torch.rand(g.size) for g in get_adapter(model).groups()}, RateSpec(rate=0.5))
    labels, bs = label_space(model, tok, TASK), _batches(model, tok)
    cfg = RepairConfig(mode, sequential=sequential)
    on_copy, info = repair(model, plan, bs, labels, cfg, budget=1)
    own = copy.deepcopy(model)
    real = repair_module._work_copy
    repair_module._work_copy = lambda *a: pytest.fail("repair in place made a work copy")  # type: ignore[assignment]
    try:
        fixed, info_in_place = repair(own, plan, bs, labels, cfg, budget=1, inplace=True)
    finally:
        repair_module._work_copy = real
    assert fixed is own and info_in_place == info and info["groups"] >= 6
    for (name, a), b in zip(on_copy.state_dict().items(), fixed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("family", ["llama", "t5-gated"])
def test_compress_in_place_with_repair_gives_the_copys_model_and_record(family: str) -> None:
    """``compress(inplace=True)`` with the default recipe's repair prunes the caller's model itself: the same
    outputs as the copy path, and a repaired-tensors record (what ``taskprune serve`` cuts the repaired model with)
    that holds every tensor the copy path's record holds, with the same values."""
    if family == "llama":
        model, tok = tiny_causal(family, layers=2), tiny_causal_tokenizer()
    else:
        model, tok = make_model(family), make_tokenizer(family)
    own = copy.deepcopy(model)
    on_copy = compress(model, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), calibration=EXAMPLES)
    in_place = compress(own, tok, TASK, EXAMPLES[:6], RateSpec(rate=0.5), calibration=EXAMPLES, inplace=True)
    assert in_place.model is own and on_copy.model is not model
    assert in_place.plan.repair == on_copy.plan.repair and on_copy.plan.repair["groups"] > 0
    b = _batches(model, tok)[0]
    labels = label_space(model, tok, TASK)
    tf = model_kind(model).teacher_forced(model, b, labels, b.gold.tolist())
    with torch.no_grad():
        torch.testing.assert_close(in_place.model(**tf.kwargs).logits, on_copy.model(**tf.kwargs).logits,
                                   rtol=0, atol=0)
    assert on_copy.repaired and set(on_copy.repaired) <= set(in_place.repaired)
    for name, t in on_copy.repaired.items():
        assert torch.equal(in_place.repaired[name], t), name
    state = in_place.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in in_place.repaired.items())


def test_self_labelled_inputs_carry_the_dense_models_predictions() -> None:
    """``self_labelled`` labels each calibration input the labelled examples do not hold with the dense model's own
    prediction (what evaluation predicts), and keeps text and prompt."""
    from taskprune.evaluate import evaluate
    from taskprune.recipe import self_labelled

    model, tok = tiny_causal("llama", layers=2), tiny_causal_tokenizer()
    fit = EXAMPLES[:4]
    out = self_labelled(model, tok, TASK, EXAMPLES, fit)
    rest = EXAMPLES[4:]
    assert [(e.text, e.prompt) for e in out] == [(e.text, e.prompt) for e in rest]
    assert [e.label for e in out] == evaluate(model, tok, TASK, rest).predictions
    assert self_labelled(model, tok, TASK, fit, fit) == []


def test_compress_self_label_scores_the_self_labelled_calibration_inputs() -> None:
    """``compress(self_label=True)`` scores the labelled examples plus the self-labelled calibration inputs (the
    same scores as scoring that list directly), records how many in the plan, and keeps ``samples`` the count of
    labelled examples; without calibration inputs beyond the examples it changes nothing."""
    from taskprune.api import score
    from taskprune.recipe import self_labelled

    model, tok = tiny_causal("llama", layers=2), tiny_causal_tokenizer()
    fit = EXAMPLES[:4]
    res = compress(model, tok, TASK, fit, RateSpec(rate=0.5), calibration=EXAMPLES, self_label=True)
    expected = score(model, tok, TASK, [*fit, *self_labelled(model, tok, TASK, EXAMPLES, fit)])
    assert res.plan.self_labelled == len(EXAMPLES) - len(fit) and res.plan.samples == len(fit)
    for name, s in res.scores.items():
        torch.testing.assert_close(s, expected[name])
    plain = compress(model, tok, TASK, fit, RateSpec(rate=0.5), calibration=EXAMPLES, self_label=False)
    assert plain.plan.self_labelled is None and any(not torch.equal(plain.scores[k], res.scores[k]) for k in res.scores)
    same = compress(model, tok, TASK, fit, RateSpec(rate=0.5), calibration=fit, self_label=True)
    assert same.plan.self_labelled is None and all(torch.equal(plain.scores[k], same.scores[k]) for k in same.scores)


def test_the_self_label_flag_draws_calibration_inputs_even_without_repair() -> None:
    from taskprune.cli import build_parser
    from taskprune.cli.options import recipe_from
    from taskprune.recipe import Recipe

    args = build_parser().parse_args(["compress", "--model", "m", "--task", "sst2", "--out", "o", "--self-label",
                                      "--repair", "none", "--calibration", "20"])
    recipe = recipe_from(args)
    assert recipe.self_label and recipe.uses_calibration
    recipe.check_tuning()  # --calibration is used: by the self-labelling
    pool = [Example(f"text {i}", i % 2) for i in range(40)]
    kwargs = recipe.compress_kwargs(pool, pool[:4], 0)
    assert kwargs["self_label"] and len(kwargs["calibration"]) == 20
    with pytest.raises(TaskpruneError, match="--calibration would change nothing"):
        Recipe("attribution", calibration=20).check_tuning()
    with pytest.raises(TaskpruneError, match="--calibration would change nothing"):
        Recipe(repair="none", calibration=20, allocate="uniform", self_label=False).check_tuning()
    with pytest.raises(TaskpruneError, match="--self-label would change nothing"):
        Recipe("svd", self_label=True).check_tuning()


def test_the_default_recipe_self_labels_and_the_paper_method_does_not() -> None:
    """taskprune's recipe scores self-labelled calibration inputs by default (chosen on SmolLM2's validation
    split); ``--method attribution`` (the paper) does not; ``--no-self-label`` turns it off."""
    from taskprune.recipe import Recipe

    model, tok = tiny_causal("llama", layers=2), tiny_causal_tokenizer()
    assert Recipe().self_labels and not Recipe("attribution").self_labels and not Recipe(self_label=False).self_labels
    res = compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), calibration=EXAMPLES)
    assert res.plan.self_labelled == len(EXAMPLES) - 4
    paper = compress(model, tok, TASK, EXAMPLES[:4], RateSpec(rate=0.5), method="attribution", calibration=EXAMPLES)
    assert paper.plan.self_labelled is None
