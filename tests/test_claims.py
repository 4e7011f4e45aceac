"""The paper's claims, checked by paired tests: each rule gives 'holds' on rows made to satisfy it and 'does not hold'
on rows made to break it; wins too small to be told from noise do not count; rows without per-example outcomes say
'not tested' and missing rows 'not measured'."""

from __future__ import annotations

import itertools

import pytest

from taskprune.experiments.claims import check_claims
from taskprune.experiments.report import claims_section
from taskprune.experiments.results import pack_outcomes

_ids = itertools.count()
N = 400  # eval examples per task in these rows


def nested(acc: float, n: int = N) -> list[int]:
    """Outcomes with the first round(acc % of n) examples right: two such runs disagree on exactly their gap."""
    k = round(acc * n / 100)
    return [1] * k + [0] * (n - k)


def row(method: str, setting: str, rate: float, acc: float, *, task: str = "sst2", eval_task: str | None = None,
        experiment: str = "e", samples: int | str = 10, seed: int = 0, correct: list[int] | None = None,
        **rates) -> dict:  # noqa: ANN003
    spec = {"rate": rate, "modules": ["decoder"], "layer_types": ["self_attn", "cross_attn", "ffn"],
            "module_rates": {}, "layer_type_rates": {}, "depth_rates": [], **rates}
    eval_task = eval_task or task
    correct = nested(acc) if correct is None else correct
    return {"id": f"r{next(_ids)}", "experiment": experiment, "task": task, "eval_task": eval_task,
            "method": method, "samples": samples, "sample_seed": seed, "trial_seed": seed, "rates": spec,
            "setting": setting, "metrics": {"accuracy": 100 * sum(correct) / len(correct)},
            "outcomes": pack_outcomes(correct, f"{eval_task}-{len(correct)}")}


def claims(rows: list[dict]) -> dict[str, object]:
    return {c.text.split(" (")[0].split(":")[0]: c for c in check_claims(rows)}


def verdicts(rows: list[dict]) -> dict[str, str]:
    return {k: c.verdict for k, c in claims(rows).items()}


def methods_rows(ap: float, fpp: float, rp: float, svd: float, rap: float) -> list[dict]:
    rows = []
    for module, rate in itertools.product(("encoder", "decoder"), (0.3, 0.5, 0.7)):
        drop = 20 * rate if module == "encoder" else 5 * rate
        for method, acc, samples in (("attribution", ap, 10), ("activation", fpp, 10), ("random", rp, 0),
                                     ("svd", svd, 0), ("random-attribution", rap, 10)):
            rows.append(row(method, module, rate, acc - drop, samples=samples))
        rows.append(row("attribution", module, 1.0, 50.0))  # rate 1 is left out of comparisons
    return rows


def test_method_claims_follow_the_numbers() -> None:
    good = verdicts(methods_rows(ap=90, fpp=70, rp=71, svd=72, rap=89))
    assert good["AP beats the baselines"] == "holds"
    assert good["FPP ≈ RP"] == good["SVD ≈ RP"] == "holds"
    assert good["RAP is sometimes as good as AP"] == "holds"
    assert good["The decoder is more robust to pruning than the encoder"] == "holds"
    bad = verdicts(methods_rows(ap=70, fpp=90, rp=60, svd=80, rap=40))
    assert bad["AP beats the baselines"] == "does not hold"
    assert bad["FPP ≈ RP"] == bad["SVD ≈ RP"] == "does not hold"
    assert bad["RAP is sometimes as good as AP"] == "does not hold"


def test_missing_rows_are_not_measured_and_no_section_without_any() -> None:
    assert set(verdicts([row("dense", "dense", 0.0, 90.0)]).values()) == {"not measured"}
    assert claims_section([row("dense", "dense", 0.0, 90.0)]) == []
    section = "\n".join(claims_section(methods_rows(90, 70, 71, 72, 89)))
    assert "## The paper's claims, checked" in section and "| FPP ≈ RP | **holds** |" in section


@pytest.mark.parametrize("interaction, expected", [(0.0, "holds"), (-10.0, "does not hold")])
def test_integrated_against_the_worse_module_alone(interaction: float, expected: str) -> None:
    rows = []
    for e, d in itertools.product((0.0, 0.3, 0.6), (0.0, 0.3, 0.6)):
        acc = 90 - max(30 * e, 10 * d) + (interaction if e and d else 0.0)
        rows.append(row("attribution", f"enc={e},dec={d}", 0.0, acc, module_rates={"encoder": e, "decoder": d}))
    assert verdicts(rows)["Module-integrated ≈ module-specific"] == expected


def test_examples_unsupervised_and_unseen() -> None:
    rows = [row("dense", "dense", 0.0, 90.0)]
    for rate in (0.3, 0.5):
        rows += [row("attribution", "encoder", rate, 80 + s, samples=10, seed=s) for s in range(3)]
        rows.append(row("attribution", "encoder", rate, 81, samples="all"))
        rows += [row("attribution-unsupervised", "encoder", rate, 70, samples=10, seed=s) for s in range(3)]
        rows.append(row("attribution", "decoder", rate, 75, task="rte", eval_task="qnli"))
        rows.append(row("attribution", "decoder", rate, 65, task="sst2", eval_task="qnli"))
    v = verdicts(rows)
    assert v["10 examples ≈ all examples on SST2"] == "holds"  # mean of the draws 81 vs 81
    capped = [dict(r, samples=1000) if r["samples"] == "all" else r for r in rows]
    claim = claims(capped)["10 examples ≈ all examples on SST2"]
    assert claim.verdict == "holds" and "1000 examples (in place of all)" in claim.evidence
    too_few = [dict(r, samples=100) if r["samples"] == "all" else r for r in rows]
    assert claims(too_few)["10 examples ≈ all examples on SST2"].verdict == "not measured"
    assert v["Unsupervised attribution ≈ supervised"] == "does not hold"  # 70 vs 81
    assert v["A related unseen domain is preserved better than an unrelated one"] == "holds"


def test_layer_types_depth_and_whole_blocks() -> None:
    rows = [row("dense", "dense", 0.0, 90.0)]
    for rate in (0.5, 1.0):
        for module, parts in (("encoder", {"self_attn": 60, "ffn": 80}),
                              ("decoder", {"self_attn": 85, "cross_attn": 50, "ffn": 88})):
            rows += [row("attribution", f"{module}:{p}", rate, a, layer_types=[p]) for p, a in parts.items()]
            rows += [row("attribution", f"{module}:{d}", 0.0, a, depth_rates=[[lo, hi, rate]])
                     for d, lo, hi, a in (("low", 0, 1, 60), ("mid", 2, 3, 85), ("high", 4, 5, 88))]
    for module, block in itertools.product(("encoder", "decoder"), range(3)):
        rows.append(row("attribution", f"{module}:b{block}", 0.0, 89.0 if block == 2 else 60.0,
                        depth_rates=[[block, block, 1.0]]))
    v = verdicts(rows)
    assert v["Encoder"] == v["Decoder"] == "holds"
    assert v["Low layers matter most"] == "holds"
    assert v["A layer pruned at rate 1.0 can go"] == "holds"
    worse = [dict(r, metrics={"accuracy": 60.0}, outcomes=pack_outcomes(nested(60), r["outcomes"]["examples"]))
             if r["setting"].endswith(":b2") else r for r in rows]
    assert verdicts(worse)["A layer pruned at rate 1.0 can go"] == "does not hold"


def test_a_decoder_only_stack_tests_the_encoders_layer_type_claim() -> None:
    """A decoder-only model's one stack is self-attention + FFN: the encoder's claim is tested on it, and the
    cross-attention claim says why it cannot be."""
    rows = [row("dense", "dense", 0.0, 90.0)]
    for rate in (0.5, 1.0):
        rows += [row("attribution", f"decoder:{p}", rate, a, layer_types=[p])
                 for p, a in (("self_attn", 60), ("ffn", 80))]
    c = claims(rows)
    assert c["Decoder-only stack"].verdict == "holds" and "Encoder" not in c
    assert c["Decoder"].verdict == "not measured" and "no cross-attention" in c["Decoder"].evidence
    flipped = [dict(r, setting=r["setting"].replace("self_attn", "x").replace("ffn", "self_attn").replace("x", "ffn"))
               if r["setting"].startswith("decoder:") else r for r in rows]
    assert claims(flipped)["Decoder-only stack"].verdict == "does not hold"


def test_rates_0_and_1_are_left_out_and_baselines_pair_once() -> None:
    rows = [row("attribution", "decoder", 0.5, 80), row("random", "decoder", 0.5, 70, samples=0),
            row("attribution", "decoder", 1.0, 50), row("random", "decoder", 1.0, 99, samples=0),
            row("attribution", "decoder", 0.5, 60, samples="all")]
    claim = next(c for c in check_claims(rows) if c.text.startswith("AP beats"))
    assert claim.verdict == "holds" and "1 of 1" in claim.evidence  # AP at 10 examples vs RP, once


def test_whole_blocks_average_their_seeds() -> None:
    rows = [row("dense", "dense", 0.0, 90.0)]
    rows += [row("attribution", "encoder:b0", 0.0, acc, seed=s, depth_rates=[[0, 0, 1.0]])
             for s, acc in enumerate((60.0, 89.5))]
    # mean drop 15.25: not shown within 3 points; but with one of two seeds at no drop, not shown worse either
    assert verdicts(rows)["A layer pruned at rate 1.0 can go"] == "inconclusive"
    rows[-1] = row("attribution", "encoder:b0", 0.0, 60.0, seed=1, depth_rates=[[0, 0, 1.0]])
    assert verdicts(rows)["A layer pruned at rate 1.0 can go"] == "does not hold"  # both seeds 30 points down


def _baseline_rows(gain: list[int]) -> list[dict]:
    """AP and the four baselines at len(gain) rates; AP gets gain[i] more examples right than every baseline."""
    rows = []
    for rate, g in zip((0.2, 0.4, 0.6, 0.8), gain):
        base = nested(70)
        ap = list(base)
        for i in range(g):  # examples the baselines miss, AP gets right
            ap[280 + i] = 1
        rows.append(row("attribution", "decoder", rate, 0, correct=ap))
        rows += [row(m, "decoder", rate, 0, samples=s, correct=list(base))
                 for m, s in (("activation", 10), ("random", 0), ("svd", 0), ("random-attribution", 10))]
    return rows


def test_tiny_wins_counted_by_the_old_rule_are_not_wins() -> None:
    """AP one example of 400 above every baseline at every point: the old rule (any win counts, at more than half the
    points) said 'holds'; a paired test sees 1 discordant example per point, p = 1."""
    claim = claims(_baseline_rows([1, 1, 1, 1]))["AP beats the baselines"]
    assert claim.verdict == "does not hold"
    assert "old count of any win: 16" in claim.evidence
    assert "significantly above the baseline at 0 of 16" in claim.evidence


def test_many_points_are_corrected_for_multiplicity() -> None:
    """b = 10, c = 2 gives p = 0.039 at one point (a win); the same at 8 points is 8 chances: Holm says no."""
    ap, rp = nested(50), nested(50)
    ap[200:210] = [1] * 10  # only AP right
    rp[210:212] = [1] * 2  # only RP right
    single = [row("attribution", "decoder", 0.5, 0, correct=ap),
              row("random", "decoder", 0.5, 0, samples=0, correct=rp)]
    claim = claims(single)["AP beats the baselines"]
    assert claim.verdict == "holds" and "p=0.039" in claim.evidence
    many = [row(m, "decoder", rate, 0, samples=s, correct=c) for rate in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
            for m, s, c in (("attribution", 10, ap), ("random", 0, rp))]
    claim = claims(many)["AP beats the baselines"]
    assert claim.verdict == "does not hold" and "8 above at unadjusted p < 0.05" in claim.evidence


def test_a_small_gap_on_a_small_eval_set_is_not_shown_equivalent() -> None:
    """Unsupervised one example of 40 (2.5 points) below supervised: the old '≈' rule (mean gap <= 3) said 'holds';
    the interval of the gap reaches past 3 points, so it is inconclusive; on 4,000 examples the same gap holds."""
    for n, expected in ((40, "inconclusive"), (4000, "holds")):
        sup = nested(50, n)
        uns = list(sup)
        for i in range(n // 40):
            uns[i] = 0
        rows = [row(m, "encoder", rate, 0, correct=c) for rate in (0.3, 0.5) for m, c in
                (("attribution", sup), ("attribution-unsupervised", uns))]
        claim = claims(rows)["Unsupervised attribution ≈ supervised"]
        assert claim.verdict == expected, claim.evidence
        assert "mean |unsupervised − supervised| = 2.50" in claim.evidence


def test_rows_without_outcomes_are_not_tested() -> None:
    rows = [{k: v for k, v in r.items() if k != "outcomes"} for r in methods_rows(90, 70, 71, 72, 89)]
    result = claims(rows)
    claim = result["AP beats the baselines"]
    assert claim.verdict == "not tested" and "re-run the sweep to test" in claim.evidence
    assert "no per-example outcomes in 30 of the 30 rows" in claim.evidence  # each row counted once
    assert "means only, no test" in claim.evidence
    assert result["Module-integrated ≈ module-specific"].verdict == "not measured"


def test_an_old_sweep_reported_with_its_paired_rerun_is_judged_on_the_paired_rows() -> None:
    """Old rows without outcomes beside re-run rows with them: a claim the re-run covers gets a tested verdict
    (the old rows are left out, and the section says how many); a claim only old rows cover stays "not tested"."""
    paired = methods_rows(90, 70, 71, 72, 89)
    old_only = [dict({k: v for k, v in r.items() if k != "outcomes"}, samples=1000)
                for r in paired if r["method"] == "attribution"]  # e.g. Fig. 4a's 1000-example draws
    mixed = claims(paired + old_only)
    assert mixed["AP beats the baselines"].verdict == claims(paired)["AP beats the baselines"].verdict == "holds"
    assert mixed["The decoder is more robust to pruning than the encoder"].verdict \
        == claims(paired)["The decoder is more robust to pruning than the encoder"].verdict != "not tested"
    assert claims(old_only)["The decoder is more robust to pruning than the encoder"].verdict == "not tested"
    section = "\n".join(claims_section(paired + old_only))
    assert f"{len(old_only)} of the {len(paired) + len(old_only)} rows were recorded without per-example" in section


def test_runs_on_different_examples_are_not_paired() -> None:
    rows = methods_rows(90, 70, 71, 72, 89)
    for r in rows:
        if r["method"] == "random":
            r["outcomes"] = dict(r["outcomes"], examples="another-eval-set")
    claim = claims(rows)["FPP ≈ RP"]
    assert claim.verdict == "not tested" and "different examples" in claim.evidence


def test_the_section_states_the_rules() -> None:
    section = "\n".join(claims_section(methods_rows(90, 70, 71, 72, 89)))
    assert "paired tests over the eval examples" in section and "Holm" in section and "TOST" in section
