"""The paper's claims, checked against a sweep's rows: one verdict per claim, decided by paired tests over the eval
examples, with the numbers behind it.

Each claim reads the rows it needs by what they vary (``row_kind``), not by experiment names, so any sweep that
runs the matching settings gets its verdicts; a claim whose rows are missing says "not measured". Every row
records which eval examples it got right (``outcomes``), so two runs on the same examples are compared example by
example (:mod:`.stats`: exact McNemar for one run a side, a two-level paired bootstrap where a side has several
seeds). The rules, stated again in the report:

- the p-values of one claim's tests are Holm-adjusted together (a claim over 80 points is 80 chances to be lucky);
  alpha = :data:`~.stats.ALPHA`;
- "A beats B" / "better" / "more robust": A significantly above B (adjusted p < alpha) at more than half of the
  compared points; "A matters more than B" (layer types, depth): pruning A costs significantly more than pruning B,
  pooled over the rates both were run at, in every compared task (layer types) or most (task, module) pairs (depth);
- "A ≈ B": the one-sided (1 - alpha) upper bound of the mean absolute gap over the compared points is at most
  :data:`TOLERANCE` points (shown close, TOST-style, not merely "not shown different"); "does not hold" when its
  lower bound is above it; "inconclusive" in between (the eval sets are too small to tell);
- "as good as" (RAP vs AP) and "can go" (a whole block vs dense): non-inferiority, shown at most
  :data:`TOLERANCE` points worse (one-sided paired bootstrap) at enough points; "does not hold" when too many
  points are shown MORE than :data:`TOLERANCE` worse for the claim to hold, "inconclusive" otherwise;
- "beats" and "matters more" claims say "does not hold" when the tests do not show them (not shown = not
  supported; the evidence column gives the intervals, so "no difference" and "too noisy to tell" can be told apart);
- rate points 0 and 1 are left out of method comparisons, where every method is equal by construction;
- a claim whose rows lack per-example outcomes (sweeps recorded before they were) is "not tested": it shows the
  means, and the sweep must be re-run to test it. The old rule (counting wins of any size) is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .results import (
    Pair,
    Row,
    Unpairable,
    compare_pairs,
    group_rows,
    mean_abs_gap,
    mean_acc,
    mean_signed_gap,
    method_pairs,
    module_groups,
    part_acc,
    part_groups,
    part_pairs,
    row_kind,
    row_rate,
)
from .stats import ALPHA, Comparisons, margin_tests, point_pvalues, pooled_tests, significance

TOLERANCE = 3.0  # accuracy points: the margin of "≈", "as good as" and "can go"
MANY_EXAMPLES = 1000  # fewest fit examples that may stand in for "all" when a sweep capped it
AP, FPP, RAP, RP, SVD = "attribution", "activation", "random-attribution", "random", "svd"
UNSUPERVISED = "attribution-unsupervised"
#: unseen-domain pairs as the paper reads them: (scored on, evaluated on)
RELATED = {("rte", "qnli"), ("mrpc", "qnli")}
UNRELATED = {("sst2", "qnli"), ("cb", "qnli")}
NOT_TESTED = "not tested"


@dataclass
class Claim:
    """One claim's verdict and the numbers behind it (a row of the report's claims table)."""

    text: str
    verdict: str  # "holds", "does not hold", "inconclusive", "not tested", "not measured"
    evidence: str


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("holds" if ok else "does not hold")


def _task(t: str) -> str:
    return t.upper()


def _tested(text: str, pairs: Sequence[Pair], means: str, decide: Callable[[Comparisons], tuple[str, str]]) -> Claim:
    """The claim's verdict from ``decide`` on the paired points, or "not tested" (with the means) when the rows
    cannot be paired."""
    try:
        cmp = compare_pairs(pairs)
    except Unpairable as why:
        rows = list({id(r): r for _, ra, rb in pairs for r in (*ra, *rb)}.values())  # a row may serve several points
        missing = sum(r.get("outcomes") is None for r in rows)
        reason = str(why) or f"no per-example outcomes in {missing} of the {len(rows)} rows it needs"
        return Claim(text, NOT_TESTED, f"{reason}: re-run the sweep to test (means only, no test: {means})")
    verdict, evidence = decide(cmp)
    return Claim(text, verdict, evidence)


def _by_task(pairs: Sequence[Pair], stat: Callable[[list[int]], str]) -> str:
    """``stat`` of each task's point indices (the task is the second field of a point label)."""
    tasks = sorted({p[0][1] for p in pairs})
    return "; ".join(f"{_task(t)} {stat([k for k, p in enumerate(pairs) if p[0][1] == t])}" for t in tasks)


def ap_beats_baselines(rows: list[Row]) -> Claim:
    text = "AP beats the baselines (FPP, RAP, RP, SVD) in most cases"
    groups = module_groups(rows)
    pairs: list[Pair] = []
    for b, name in ((FPP, "FPP"), (RAP, "RAP"), (RP, "RP"), (SVD, "SVD")):
        pairs += [((name, *p[0]), p[1], p[2]) for p in method_pairs(groups, AP, b)]
    if not pairs:
        return Claim(text, _verdict(None), "needs attribution and a baseline on the same module rates")
    names = list(dict.fromkeys(p[0][0] for p in pairs))
    wins = sum(mean_acc(a) > mean_acc(b) for _, a, b in pairs)
    means = f"AP strictly above the baseline at {wins} of {len(pairs)} points"

    def decide(cmp: Comparisons) -> tuple[str, str]:
        above, below, raw = significance(cmp)
        parts = []
        for name in names:
            idx = [k for k, p in enumerate(pairs) if p[0][0] == name]
            parts.append(f"{name} {sum(above[k] for k in idx)}/{sum(below[k] for k in idx)} of {len(idx)}, "
                         f"pooled {cmp.pooled(idx).brief()}")
        return _verdict(sum(above) > len(pairs) / 2), (
            f"AP significantly above the baseline at {sum(above)} of {len(pairs)} (baseline, task, module, rate) "
            "points, "
            f"below at {sum(below)} (Holm over the {len(pairs)}; {raw} above at unadjusted p < {ALPHA:g}; "
            f"old count of any win: {wins}). Per baseline, above/below and AP − baseline pooled over its points: "
            + "; ".join(parts))
    return _tested(text, pairs, means, decide)


def _equivalence(cmp: Comparisons, pairs: Sequence[Pair], what: str) -> tuple[str, str]:
    """The "≈" rule on paired points: the mean absolute gap's upper bound within TOLERANCE."""
    gap, lo, hi = cmp.mean_abs_gap()
    verdict = "holds" if hi <= TOLERANCE else "does not hold" if lo > TOLERANCE else "inconclusive"
    _, adj = point_pvalues(cmp)
    tost = sum(cmp.point(k).equivalent(TOLERANCE) for k in range(len(pairs)))
    return verdict, (
        f"mean |{what}| = {gap:.2f} points over {len(pairs)} points, one-sided {100 * (1 - ALPHA):g} % bounds "
        f"{lo:.2f}–{hi:.2f} (≈ needs the upper ≤ {TOLERANCE:g}); {what} pooled {cmp.pooled().brief()}; "
        f"TOST-equivalent within ±{TOLERANCE:g} at {tost}, significantly different (Holm) at "
        f"{sum(a < ALPHA for a in adj)} of {len(pairs)} points; mean |gap| by task: "
        + _by_task(pairs, lambda idx: "{0:.2f} (≤ {2:.2f})".format(*cmp.mean_abs_gap(idx))))


def _approx(text: str, pairs: list[Pair], names: tuple[str, str]) -> Claim:
    if not pairs:
        return Claim(text, _verdict(None), f"needs {names[0]} and {names[1]} on the same settings")
    what = f"{names[0]} − {names[1]}"
    means = (f"mean |{what}| = {mean_abs_gap(pairs):.2f} over {len(pairs)} points, signed "
             f"{mean_signed_gap(pairs):+.2f}")
    return _tested(text, pairs, means, lambda cmp: _equivalence(cmp, pairs, what))


def _method_approx(text: str, rows: list[Row], a: str, b: str, names: tuple[str, str]) -> Claim:
    return _approx(text, method_pairs(module_groups(rows), a, b), names)


def rap_sometimes_ap(rows: list[Row]) -> Claim:
    text = "RAP is sometimes as good as AP"
    pairs = method_pairs(module_groups(rows), RAP, AP)
    if not pairs:
        return Claim(text, _verdict(None), "needs RAP and AP on the same module rates")
    close = sum(abs(mean_acc(x) - mean_acc(y)) <= TOLERANCE or mean_acc(x) > mean_acc(y) for _, x, y in pairs)
    means = f"RAP within {TOLERANCE:g} points of AP (or above) at {close} of {len(pairs)} points"

    def decide(cmp: Comparisons) -> tuple[str, str]:
        good, bad = margin_tests(cmp, TOLERANCE)
        quarter = len(pairs) / 4
        if sum(good) >= quarter:
            verdict = "holds"
        else:  # "does not hold" once too few points are left that could still be "as good"
            verdict = "does not hold" if len(pairs) - sum(bad) < quarter else "inconclusive"
        return verdict, (
            f"RAP shown at most {TOLERANCE:g} points below AP at {sum(good)} of {len(pairs)} points, more than "
            f"{TOLERANCE:g} below at {sum(bad)} (one-sided tests, Holm over the {len(pairs)}; rule: a quarter shown "
            f"as good; {close} by the old ±{TOLERANCE:g} count of means); "
            + _by_task(pairs, lambda idx: f"{sum(good[k] for k in idx)}/{len(idx)}")
            + f"; RAP − AP pooled {cmp.pooled().brief()}")
    return _tested(text, pairs, means, decide)


def _above_rule(text: str, pairs: list[Pair], means: str, unit: str, per: Callable[[Comparisons], str]) -> Claim:
    """"A beats B": significantly above (Holm over the points) at more than half of them."""
    def decide(cmp: Comparisons) -> tuple[str, str]:
        above, below, raw = significance(cmp)
        return _verdict(sum(above) > len(pairs) / 2), (
            f"significantly above at {sum(above)} of {len(pairs)} {unit} points, below at {sum(below)} (Holm; "
            f"{raw} above at unadjusted p < {ALPHA:g}); {per(cmp)}")
    return _tested(text, pairs, means, decide)


def decoder_more_robust(rows: list[Row]) -> Claim:
    text = "The decoder is more robust to pruning than the encoder"
    groups = module_groups(rows)
    pairs: list[Pair] = []
    for (exp, task, module, method, samples, rate), dec in groups.items():
        if module == "decoder" and method == AP:
            enc = groups.get((exp, task, "encoder", method, samples, rate))
            if enc is not None:
                pairs.append(((exp, task, samples, rate), dec, enc))
    if not pairs:
        return Claim(text, _verdict(None), "needs AP on both modules at the same rates")
    wins = sum(mean_acc(d) > mean_acc(e) for _, d, e in pairs)
    return _above_rule(text, pairs, f"decoder-pruned above encoder-pruned at {wins} of {len(pairs)} points",
                       "(experiment, task, examples, rate)",
                       lambda cmp: "decoder − encoder pooled by task: "
                       + _by_task(pairs, lambda i: cmp.pooled(i).brief()))


def integrated_like_specific(rows: list[Row]) -> Claim:
    text = ("Module-integrated ≈ module-specific: pruning both modules costs about what the worse of the two "
            "alone costs")
    cells = group_rows((r for r in rows if row_kind(r) == "grid" and r["method"] == AP),
                       lambda r: ((r["task"], r["eval_task"], str(r["samples"])),
                                  r["rates"]["module_rates"]["encoder"], r["rates"]["module_rates"]["decoder"]))
    pairs: list[Pair] = []
    for (key, e, d), both in cells.items():
        alone = [cells.get((key, e, 0.0)), cells.get((key, 0.0, d))]
        if e > 0 and d > 0 and alone[0] is not None and alone[1] is not None:
            worse = min(alone, key=mean_acc)  # chosen by its accuracy, then compared example by example
            pairs.append(((None, key[1], "", (e, d)), both, worse))
    if not pairs:
        return Claim(text, _verdict(None), "needs an encoder x decoder grid with 0 in both axes")
    return _approx(text, pairs, ("acc(e, d)", "min(acc(e, 0), acc(0, d))"))


def few_examples_enough(rows: list[Row], task: str = "sst2") -> Claim:
    text = f"10 examples ≈ all examples on {_task(task)}"
    groups = group_rows((r for r in rows if row_kind(r) == "module" and r["task"] == task and r["method"] == AP
                         and 0 < row_rate(r) < 1),
                        lambda r: (r["experiment"], r["setting"], row_rate(r), str(r["samples"])))
    # "all" where the sweep ran it; else the largest count of at least MANY_EXAMPLES stands in for it (a sweep
    # that cannot afford every fit example, e.g. 67k SST-2 scorings of a causal LM, caps "all") and is named
    def most(exp: str, module: str, rate: float) -> str | None:
        if (exp, module, rate, "all") in groups:
            return "all"
        counts = [int(s) for (e, m, r, s) in groups if (e, m, r) == (exp, module, rate) and s.isdigit()]
        return str(max(counts)) if counts and max(counts) >= MANY_EXAMPLES else None

    pairs: list[Pair] = []
    used: set[str] = set()
    for (exp, module, rate, s), v in groups.items():
        if s == "10" and (big := most(exp, module, rate)) is not None:
            pairs.append(((exp, task, module, rate), v, groups[(exp, module, rate, big)]))
            used.add(big)
    if not pairs:
        return Claim(text, _verdict(None), f"needs AP with 10 and with all (or ≥ {MANY_EXAMPLES}) examples on "
                                           f"{_task(task)}")
    stand_in = " / ".join(sorted(used, key=lambda x: (x != "all", x)))
    return _approx(text, pairs, ("10 examples (draws pooled)", "all" if stand_in == "all" else
                                 f"{stand_in} examples (in place of all)"))


def unsupervised_like_supervised(rows: list[Row]) -> Claim:
    return _method_approx("Unsupervised attribution ≈ supervised", rows, UNSUPERVISED, AP,
                          ("unsupervised", "supervised"))


def related_domain_better(rows: list[Row]) -> Claim:
    text = "A related unseen domain is preserved better than an unrelated one"
    groups = group_rows((r for r in rows if row_kind(r) == "unseen" and r["method"] == AP and 0 < row_rate(r) < 1),
                        lambda r: (r["eval_task"], r["setting"], row_rate(r), r["task"]))
    pairs: list[Pair] = []
    for (ev, module, rate, src), v in groups.items():
        if (src, ev) in RELATED:
            for (src2, ev2) in UNRELATED:
                if ev2 == ev and (ev, module, rate, src2) in groups:
                    pairs.append(((f"{_task(src)} vs {_task(src2)} → {_task(ev)}", ev, module, rate), v,
                                  groups[(ev, module, rate, src2)]))
    if not pairs:
        return Claim(text, _verdict(None), "needs AP scored on a related and an unrelated task, evaluated on one")
    names = ", ".join(sorted({p[0][0] for p in pairs}))
    wins = sum(mean_acc(a) > mean_acc(b) for _, a, b in pairs)
    return _above_rule(text, pairs, f"{names}: related above unrelated at {wins} of {len(pairs)} points",
                       f"{names} (module, rate)", lambda cmp: f"related − unrelated pooled {cmp.pooled().brief()}")


def layer_types(rows: list[Row]) -> list[Claim]:
    enc_text = "Encoder: self-attention matters more than the FFN (pruning it hurts more)"
    dec_text = "Decoder: cross-attention matters most"
    enc = {t: p for (t, m), p in part_groups(rows, "layer_type", {"self_attn", "ffn"}, AP).items()
           if m == "encoder" and len(p) == 2}
    decoder_only = False
    if not enc and not any(r.get("setting", "").endswith(":cross_attn") for r in rows):
        # a decoder-only model: its one stack is self-attention + FFN like an encoder, so the encoder's claim
        # is the one it can test
        enc = {t: p for (t, m), p in part_groups(rows, "layer_type", {"self_attn", "ffn"}, AP).items()
               if m == "decoder" and len(p) == 2}
        decoder_only = bool(enc)
        if decoder_only:
            enc_text = "Decoder-only stack: self-attention matters more than the FFN (the paper's encoder claim)"
    dec = {t: p for (t, m), p in part_groups(rows, "layer_type", {"self_attn", "cross_attn", "ffn"}, AP).items()
           if m == "decoder" and len(p) == 3}
    fmt = lambda p: ", ".join(f"{k} {part_acc(v):.1f}" for k, v in sorted(p.items()))  # noqa: E731
    claims = []
    if enc:
        tasks = sorted(enc)
        pairs, members = part_pairs([((t,), enc[t]["ffn"], enc[t]["self_attn"]) for t in tasks])

        def decide_enc(cmp: Comparisons) -> tuple[str, str]:
            ok, briefs = pooled_tests(cmp, members)
            return _verdict(all(ok)), ("mean accuracy over rates with only that type pruned; ffn − self_attn pooled "
                                       "over rates (Holm over tasks): " + "; ".join(
                                           f"{_task(t)} {fmt(enc[t])}, {b} ({'yes' if o else 'no'})"
                                           for t, o, b in zip(tasks, ok, briefs)))
        claims.append(_tested(enc_text, pairs, "; ".join(f"{_task(t)} {fmt(enc[t])}" for t in tasks), decide_enc))
    else:
        claims.append(Claim(enc_text, _verdict(None), "needs encoder layer-type runs"))
    if dec:
        tasks = sorted(dec)
        pairs, members = part_pairs([((t, o), dec[t][o], dec[t]["cross_attn"]) for t in tasks
                                     for o in ("self_attn", "ffn")])

        def decide_dec(cmp: Comparisons) -> tuple[str, str]:
            ok, briefs = pooled_tests(cmp, members)
            return _verdict(all(ok)), ("mean accuracy over rates with only that type pruned; self_attn − cross_attn "
                                       "and ffn − cross_attn pooled over rates (Holm over the tests): " + "; ".join(
                                           f"{_task(t)} {fmt(dec[t])}, {briefs[2 * i]} and {briefs[2 * i + 1]} "
                                           f"({'yes' if ok[2 * i] and ok[2 * i + 1] else 'no'})"
                                           for i, t in enumerate(tasks)))
        claims.append(_tested(dec_text, pairs, "; ".join(f"{_task(t)} {fmt(dec[t])}" for t in tasks), decide_dec))
    else:
        claims.append(Claim(dec_text, _verdict(None), "a decoder-only model has no cross-attention"
                            if decoder_only else "needs decoder layer-type runs"))
    return claims


def low_layers_matter_most(rows: list[Row]) -> Claim:
    text = "Low layers matter most (pruning the lowest third hurts most)"
    parts = {k: p for k, p in part_groups(rows, "depth", {"low", "mid", "high"}, AP).items() if len(p) == 3}
    if not parts:
        return Claim(text, _verdict(None), "needs depth runs with low / mid / high thirds")
    keys = sorted(parts)
    pairs, members = part_pairs([(k, parts[k][o], parts[k]["low"]) for k in keys for o in ("mid", "high")])
    accs = lambda p: " / ".join(f"{d} {part_acc(p[d]):.1f}" for d in ("low", "mid", "high"))  # noqa: E731
    means = "; ".join(f"{_task(t)} {m} {accs(parts[t, m])}" for t, m in keys)

    def decide(cmp: Comparisons) -> tuple[str, str]:
        ok, briefs = pooled_tests(cmp, members)
        both = [ok[2 * i] and ok[2 * i + 1] for i in range(len(keys))]
        return _verdict(sum(both) > len(keys) / 2), (
            f"lowest third significantly worst in {sum(both)} of {len(keys)} (task, module); mid − low and "
            "high − low pooled over rates (Holm over the tests): " + "; ".join(
                f"{_task(t)} {m} {accs(parts[t, m])}: {briefs[2 * i]} and {briefs[2 * i + 1]}"
                for i, (t, m) in enumerate(keys)))
    return _tested(text, pairs, means, decide)


def whole_layer_can_go(rows: list[Row]) -> Claim:
    text = "A layer pruned at rate 1.0 can go (some whole block costs ≤ 3 points)"
    dense = group_rows((r for r in rows if row_kind(r) == "dense"), lambda r: (r["eval_task"],))
    single = group_rows((r for r in rows if row_kind(r) == "depth" and r["method"] == AP and row_rate(r) == 1.0
                         and len(r["rates"]["depth_rates"]) == 1
                         and r["rates"]["depth_rates"][0][0] == r["rates"]["depth_rates"][0][1]
                         and (r["eval_task"],) in dense),
                        lambda r: (r["task"], r["setting"].split(":")[0], r["rates"]["depth_rates"][0][0],
                                   r["eval_task"]))
    if not single:
        return Claim(text, _verdict(None), "needs single-block runs at rate 1.0")
    # the seeds (and experiments) of each block against the dense model on the same eval set
    pairs: list[Pair] = [((t, m, b), v, dense[(ev,)]) for (t, m, b, ev), v in sorted(single.items())]
    keys = sorted({(t, m) for (t, m, _), _, _ in pairs})
    drop = {p[0]: mean_acc(p[2]) - mean_acc(p[1]) for p in pairs}
    means = "; ".join(f"{_task(t)} {m} {sum(d <= TOLERANCE for k, d in drop.items() if k[:2] == (t, m))}/"
                      f"{sum(k[:2] == (t, m) for k in drop)} blocks with a mean drop ≤ {TOLERANCE:g}"
                      for t, m in keys)

    def decide(cmp: Comparisons) -> tuple[str, str]:
        good, bad = margin_tests(cmp, TOLERANCE)
        gone = {p[0]: g for p, g in zip(pairs, good)}
        stays = {p[0]: b for p, b in zip(pairs, bad)}
        parts, ok, refuted = [], [], []
        for t, m in keys:
            blocks = {k[2]: drop[k] for k in drop if k[:2] == (t, m)}
            n_ok = sum(gone[(t, m, b)] for b in blocks)
            ok.append(n_ok > 0)
            refuted.append(all(stays[(t, m, b)] for b in blocks))
            best = min(blocks, key=blocks.get)
            k = next(i for i, p in enumerate(pairs) if p[0] == (t, m, best))
            lo, hi = cmp.point(k).ci
            parts.append(f"{_task(t)} {m} {n_ok}/{len(blocks)} (smallest drop {blocks[best]:+.1f} [{-hi:+.1f}, "
                         f"{-lo:+.1f}] at block {best}, largest {max(blocks.values()):+.1f})")
        verdict = "holds" if all(ok) else "does not hold" if any(refuted) else "inconclusive"
        return verdict, (
            f"blocks shown to cost at most {TOLERANCE:g} points against dense (one-sided paired test, Holm over "
            f"{len(pairs)} blocks) per (task, module): " + "; ".join(parts)
            + f" (\"does not hold\" needs every block of a (task, module) shown to cost more than {TOLERANCE:g})")
    return _tested(text, pairs, means, decide)


def check_claims(rows: list[Row]) -> list[Claim]:
    """Every claim of the paper that the rows can test (the others say "not measured").

    When only some rows carry per-example outcomes (an old sweep reported together with its paired re-run), each
    claim is judged on the rows that have them; a claim none of whose rows has them falls back to all rows, which
    gives "not tested" with its means. So one old row cannot make a claim untestable that its re-run can test.
    """
    paired = [r for r in rows if r.get("outcomes") is not None]
    if not paired or len(paired) == len(rows):
        return _claims(rows)
    fallback = {c.text: c for c in _claims(rows)}
    return [c if c.verdict != _verdict(None) else fallback.get(c.text, c) for c in _claims(paired)]


def unpaired_rows(rows: list[Row]) -> int:
    """How many rows the claims leave out because others can be paired (:func:`check_claims`)."""
    missing = sum(r.get("outcomes") is None for r in rows)
    return 0 if missing == len(rows) else missing


def _claims(rows: list[Row]) -> list[Claim]:
    return [
        ap_beats_baselines(rows),
        _method_approx("FPP ≈ RP", rows, FPP, RP, ("FPP", "RP")),
        _method_approx("SVD ≈ RP", rows, SVD, RP, ("SVD", "RP")),
        rap_sometimes_ap(rows),
        decoder_more_robust(rows),
        integrated_like_specific(rows),
        few_examples_enough(rows),
        unsupervised_like_supervised(rows),
        related_domain_better(rows),
        *layer_types(rows),
        low_layers_matter_most(rows),
        whole_layer_can_go(rows),
    ]

