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

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .results import METRIC, row_kind, row_outcomes, row_rate
from .stats import ALPHA, Comparisons, Point, holm

TOLERANCE = 3.0  # accuracy points: the margin of "≈", "as good as" and "can go"
MANY_EXAMPLES = 1000  # fewest fit examples that may stand in for "all" when a sweep capped it
AP, FPP, RAP, RP, SVD = "attribution", "activation", "random-attribution", "random", "svd"
UNSUPERVISED = "attribution-unsupervised"
#: unseen-domain pairs as the paper reads them: (scored on, evaluated on)
RELATED = {("rte", "qnli"), ("mrpc", "qnli")}
UNRELATED = {("sst2", "qnli"), ("cb", "qnli")}
NOT_TESTED = "not tested"

Row = dict[str, Any]
Pair = tuple[tuple, list[Row], list[Row]]  # (point label, A's rows (seeds), B's rows)


@dataclass
class Claim:
    text: str
    verdict: str  # "holds", "does not hold", "inconclusive", "not tested", "not measured"
    evidence: str

    def line(self) -> str:
        cells = (c.replace("|", "\\|") for c in (self.text, self.evidence))  # |x| must not split the table
        text, evidence = cells
        return f"| {text} | **{self.verdict}** | {evidence} |"


def _acc(rows: Iterable[Row]) -> float:
    return statistics.fmean(r["metrics"][METRIC] for r in rows)


def _groups(rows: Iterable[Row], key: Callable[[Row], tuple]) -> dict[tuple, list[Row]]:
    """The rows of each key (the seeds of one setting)."""
    out: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(out)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("holds" if ok else "does not hold")


def _task(t: str) -> str:
    return t.upper()


class _Untestable(Exception):
    """The rows cannot be paired: no per-example outcomes, or different eval examples."""


def _runs(rows: list[Row]) -> tuple[str, np.ndarray]:
    """(eval set id, [seeds, examples] 0/1) of one setting's rows."""
    got = [row_outcomes(r) for r in rows]
    if any(g is None for g in got):
        raise _Untestable
    ids = {g[0] for g in got}  # type: ignore[index]
    if len(ids) != 1:
        raise _Untestable("the seeds of one setting were evaluated on different examples")
    return ids.pop(), np.stack([g[1] for g in got]).astype(np.float64)  # type: ignore[index]


def _comparisons(pairs: Sequence[Pair]) -> Comparisons:
    points = []
    cache: dict[tuple[int, ...], tuple[str, np.ndarray]] = {}  # one array per setting: the bootstrap reuses it

    def runs(rows: list[Row]) -> tuple[str, np.ndarray]:
        key = tuple(id(r) for r in rows)
        if key not in cache:
            cache[key] = _runs(rows)
        return cache[key]

    for _, ra, rb in pairs:
        (ida, a), (idb, b) = runs(ra), runs(rb)
        if ida != idb:
            raise _Untestable("two compared runs were evaluated on different examples")
        points.append(Point(a, b, ida))
    return Comparisons(points)


def _tested(text: str, pairs: Sequence[Pair], means: str, decide: Callable[[Comparisons], tuple[str, str]]) -> Claim:
    """The claim's verdict from ``decide`` on the paired points, or "not tested" (with the means) when the rows
    cannot be paired."""
    try:
        cmp = _comparisons(pairs)
    except _Untestable as why:
        rows = list({id(r): r for _, ra, rb in pairs for r in (*ra, *rb)}.values())  # a row may serve several points
        missing = sum(r.get("outcomes") is None for r in rows)
        reason = str(why) or f"no per-example outcomes in {missing} of the {len(rows)} rows it needs"
        return Claim(text, NOT_TESTED, f"{reason}: re-run the sweep to test (means only, no test: {means})")
    verdict, evidence = decide(cmp)
    return Claim(text, verdict, evidence)


def _pvalues(cmp: Comparisons) -> tuple[list[float], list[float]]:
    """(two-sided p per point, Holm-adjusted over the points)."""
    ps = [cmp.point(k).p for k in range(len(cmp.points))]
    return ps, holm(ps)


def _significance(cmp: Comparisons) -> tuple[list[bool], list[bool], int]:
    """(A significantly above B per point, significantly below, how many above at unadjusted p < alpha)."""
    ps, adj = _pvalues(cmp)
    d = cmp.diffs
    above = [bool(d[k] > 0 and adj[k] < ALPHA) for k in range(len(ps))]
    below = [bool(d[k] < 0 and adj[k] < ALPHA) for k in range(len(ps))]
    return above, below, sum(bool(d[k] > 0 and ps[k] < ALPHA) for k in range(len(ps)))


def _by_task(pairs: Sequence[Pair], stat: Callable[[list[int]], str]) -> str:
    """``stat`` of each task's point indices (the task is the second field of a point label)."""
    tasks = sorted({p[0][1] for p in pairs})
    return "; ".join(f"{_task(t)} {stat([k for k, p in enumerate(pairs) if p[0][1] == t])}" for t in tasks)


def _module_groups(rows: list[Row]) -> dict[tuple, list[Row]]:
    """(experiment, task, module, method, samples, rate) -> rows (seeds), module-scope rows, rates in (0, 1)."""
    return _groups((r for r in rows if row_kind(r) == "module" and 0 < row_rate(r) < 1),
                   lambda r: (r["experiment"], r["task"], r["setting"], r["method"], str(r["samples"]), row_rate(r)))


def _sample_order(samples: str) -> tuple[int, int]:
    return (1, 0) if samples == "all" else (0, int(samples))


def _pairs(groups: dict[tuple, list[Row]], a: str, b: str) -> list[Pair]:
    """One point per (experiment, task, module, rate, example count) where methods a and b were both run.

    Equal example counts pair up; a method that reads no examples (random, svd: recorded with 0) pairs once,
    with the other method's smallest example count.
    """
    by_point: dict[tuple, dict[str, dict[str, list[Row]]]] = defaultdict(lambda: defaultdict(dict))
    for (exp, task, module, method, samples, rate), v in groups.items():
        if method in (a, b):
            by_point[(exp, task, module, rate)][method][samples] = v
    out: list[Pair] = []
    for point, methods in by_point.items():
        va, vb = methods.get(a, {}), methods.get(b, {})
        common = sorted(set(va) & set(vb), key=_sample_order)
        if common:
            out += [(point, va[s], vb[s]) for s in common]
        elif va and vb and ("0" in va or "0" in vb):
            first = lambda d: d[min(d, key=_sample_order)]  # noqa: E731
            out.append((point, first(va), first(vb)))
    return out


def _mean_gap(pairs: Sequence[Pair]) -> float:
    return statistics.fmean(abs(_acc(a) - _acc(b)) for _, a, b in pairs)


def _signed(pairs: Sequence[Pair]) -> float:
    return statistics.fmean(_acc(a) - _acc(b) for _, a, b in pairs)


def _holds_above(cmp: Comparisons, idx: Sequence[int]) -> str:
    above, below, _ = _significance(cmp)
    return f"{sum(above[k] for k in idx)} above / {sum(below[k] for k in idx)} below of {len(idx)}"


def ap_beats_baselines(rows: list[Row]) -> Claim:
    text = "AP beats the baselines (FPP, RAP, RP, SVD) in most cases"
    groups = _module_groups(rows)
    pairs: list[Pair] = []
    for b, name in ((FPP, "FPP"), (RAP, "RAP"), (RP, "RP"), (SVD, "SVD")):
        pairs += [((name, *p[0]), p[1], p[2]) for p in _pairs(groups, AP, b)]
    if not pairs:
        return Claim(text, _verdict(None), "needs attribution and a baseline on the same module rates")
    names = list(dict.fromkeys(p[0][0] for p in pairs))
    wins = sum(_acc(a) > _acc(b) for _, a, b in pairs)
    means = f"AP strictly above the baseline at {wins} of {len(pairs)} points"

    def decide(cmp: Comparisons) -> tuple[str, str]:
        above, below, raw = _significance(cmp)
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
    _, adj = _pvalues(cmp)
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
    means = f"mean |{what}| = {_mean_gap(pairs):.2f} over {len(pairs)} points, signed {_signed(pairs):+.2f}"
    return _tested(text, pairs, means, lambda cmp: _equivalence(cmp, pairs, what))


def _method_approx(text: str, rows: list[Row], a: str, b: str, names: tuple[str, str]) -> Claim:
    return _approx(text, _pairs(_module_groups(rows), a, b), names)


def rap_sometimes_ap(rows: list[Row]) -> Claim:
    text = "RAP is sometimes as good as AP"
    pairs = _pairs(_module_groups(rows), RAP, AP)
    if not pairs:
        return Claim(text, _verdict(None), "needs RAP and AP on the same module rates")
    close = sum(abs(_acc(x) - _acc(y)) <= TOLERANCE or _acc(x) > _acc(y) for _, x, y in pairs)
    means = f"RAP within {TOLERANCE:g} points of AP (or above) at {close} of {len(pairs)} points"

    def decide(cmp: Comparisons) -> tuple[str, str]:
        good, bad = _margin_tests(cmp)
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


def _margin_tests(cmp: Comparisons) -> tuple[list[bool], list[bool]]:
    """Per point: A shown at most TOLERANCE below B, and A shown more than TOLERANCE below B (each one-sided,
    Holm-adjusted over the points)."""
    points = [cmp.point(k) for k in range(len(cmp.points))]
    good = holm([c.p_noninferior(TOLERANCE) for c in points])
    bad = holm([c.p_inferior(TOLERANCE) for c in points])
    return [a < ALPHA for a in good], [a < ALPHA for a in bad]


def _above_rule(text: str, pairs: list[Pair], means: str, unit: str, per: Callable[[Comparisons], str]) -> Claim:
    """"A beats B": significantly above (Holm over the points) at more than half of them."""
    def decide(cmp: Comparisons) -> tuple[str, str]:
        above, below, raw = _significance(cmp)
        return _verdict(sum(above) > len(pairs) / 2), (
            f"significantly above at {sum(above)} of {len(pairs)} {unit} points, below at {sum(below)} (Holm; "
            f"{raw} above at unadjusted p < {ALPHA:g}); {per(cmp)}")
    return _tested(text, pairs, means, decide)


def decoder_more_robust(rows: list[Row]) -> Claim:
    text = "The decoder is more robust to pruning than the encoder"
    groups = _module_groups(rows)
    pairs: list[Pair] = []
    for (exp, task, module, method, samples, rate), dec in groups.items():
        if module == "decoder" and method == AP:
            enc = groups.get((exp, task, "encoder", method, samples, rate))
            if enc is not None:
                pairs.append(((exp, task, samples, rate), dec, enc))
    if not pairs:
        return Claim(text, _verdict(None), "needs AP on both modules at the same rates")
    wins = sum(_acc(d) > _acc(e) for _, d, e in pairs)
    return _above_rule(text, pairs, f"decoder-pruned above encoder-pruned at {wins} of {len(pairs)} points",
                       "(experiment, task, examples, rate)",
                       lambda cmp: "decoder − encoder pooled by task: "
                       + _by_task(pairs, lambda i: cmp.pooled(i).brief()))


def integrated_like_specific(rows: list[Row]) -> Claim:
    text = ("Module-integrated ≈ module-specific: pruning both modules costs about what the worse of the two "
            "alone costs")
    cells = _groups((r for r in rows if row_kind(r) == "grid" and r["method"] == AP),
                    lambda r: ((r["task"], r["eval_task"], str(r["samples"])), r["rates"]["module_rates"]["encoder"],
                               r["rates"]["module_rates"]["decoder"]))
    pairs: list[Pair] = []
    for (key, e, d), both in cells.items():
        alone = [cells.get((key, e, 0.0)), cells.get((key, 0.0, d))]
        if e > 0 and d > 0 and alone[0] is not None and alone[1] is not None:
            worse = min(alone, key=_acc)  # chosen by its accuracy, then compared example by example
            pairs.append(((None, key[1], "", (e, d)), both, worse))
    if not pairs:
        return Claim(text, _verdict(None), "needs an encoder x decoder grid with 0 in both axes")
    return _approx(text, pairs, ("acc(e, d)", "min(acc(e, 0), acc(0, d))"))


def few_examples_enough(rows: list[Row], task: str = "sst2") -> Claim:
    text = f"10 examples ≈ all examples on {_task(task)}"
    groups = _groups((r for r in rows if row_kind(r) == "module" and r["task"] == task and r["method"] == AP
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
    groups = _groups((r for r in rows if row_kind(r) == "unseen" and r["method"] == AP and 0 < row_rate(r) < 1),
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
    wins = sum(_acc(a) > _acc(b) for _, a, b in pairs)
    return _above_rule(text, pairs, f"{names}: related above unrelated at {wins} of {len(pairs)} points",
                       f"{names} (module, rate)", lambda cmp: f"related − unrelated pooled {cmp.pooled().brief()}")


ByRate = dict[float, list[Row]]  # the rows (seeds) of one part at each rate


def _part_groups(rows: list[Row], kind: str, parts: set[str]) -> dict[tuple[str, str], dict[str, ByRate]]:
    """(task, module) -> {part: {rate: rows}} for layer-type or depth rows, at the rates in (0, 1] that every part
    of ``parts`` present there was run at (so parts are compared at equal rates)."""
    groups = _groups((r for r in rows if row_kind(r) == kind and r["method"] == AP and row_rate(r) > 0
                      and r["setting"].split(":", 1)[1] in parts),
                     lambda r: (r["task"], *r["setting"].split(":", 1), row_rate(r)))
    by_tm: dict[tuple[str, str], dict[str, ByRate]] = defaultdict(lambda: defaultdict(dict))
    for (task, module, part, rate), v in groups.items():
        by_tm[task, module][part][rate] = v
    out = {}
    for key, per_part in by_tm.items():
        shared = set.intersection(*(set(v) for v in per_part.values()))
        if shared:
            out[key] = {p: {r: v[r] for r in sorted(shared)} for p, v in per_part.items()}
    return out


def _part_tests(tests: list[tuple[tuple, ByRate, ByRate]]) -> tuple[list[Pair], list[list[int]]]:
    """Points for "pruning part B hurts more than pruning part A" tests: (label, A's rates, B's rates) each pooled
    over its rates; returns the pairs and each test's point indices."""
    pairs: list[Pair] = []
    members: list[list[int]] = []
    for label, a, b in tests:
        members.append(list(range(len(pairs), len(pairs) + len(a))))
        pairs += [((*label, rate), a[rate], b[rate]) for rate in a]
    return pairs, members


def _pooled_tests(cmp: Comparisons, members: list[list[int]]) -> tuple[list[bool], list[str]]:
    """Per test: A significantly above B pooled over its rates (Holm over the claim's tests), and its brief."""
    pooled = [cmp.pooled(m) for m in members]
    adj = holm([c.p for c in pooled])
    return [c.diff > 0 and a < ALPHA for c, a in zip(pooled, adj)], [c.brief() for c in pooled]


def _part_acc(part: ByRate) -> float:
    return statistics.fmean(_acc(v) for v in part.values())


def layer_types(rows: list[Row]) -> list[Claim]:
    enc_text = "Encoder: self-attention matters more than the FFN (pruning it hurts more)"
    dec_text = "Decoder: cross-attention matters most"
    enc = {t: p for (t, m), p in _part_groups(rows, "layer_type", {"self_attn", "ffn"}).items()
           if m == "encoder" and len(p) == 2}
    decoder_only = False
    if not enc and not any(r.get("setting", "").endswith(":cross_attn") for r in rows):
        # a decoder-only model: its one stack is self-attention + FFN like an encoder, so the encoder's claim
        # is the one it can test
        enc = {t: p for (t, m), p in _part_groups(rows, "layer_type", {"self_attn", "ffn"}).items()
               if m == "decoder" and len(p) == 2}
        decoder_only = bool(enc)
        if decoder_only:
            enc_text = "Decoder-only stack: self-attention matters more than the FFN (the paper's encoder claim)"
    dec = {t: p for (t, m), p in _part_groups(rows, "layer_type", {"self_attn", "cross_attn", "ffn"}).items()
           if m == "decoder" and len(p) == 3}
    fmt = lambda p: ", ".join(f"{k} {_part_acc(v):.1f}" for k, v in sorted(p.items()))  # noqa: E731
    claims = []
    if enc:
        tasks = sorted(enc)
        pairs, members = _part_tests([((t,), enc[t]["ffn"], enc[t]["self_attn"]) for t in tasks])

        def decide_enc(cmp: Comparisons) -> tuple[str, str]:
            ok, briefs = _pooled_tests(cmp, members)
            return _verdict(all(ok)), ("mean accuracy over rates with only that type pruned; ffn − self_attn pooled "
                                       "over rates (Holm over tasks): " + "; ".join(
                                           f"{_task(t)} {fmt(enc[t])}, {b} ({'yes' if o else 'no'})"
                                           for t, o, b in zip(tasks, ok, briefs)))
        claims.append(_tested(enc_text, pairs, "; ".join(f"{_task(t)} {fmt(enc[t])}" for t in tasks), decide_enc))
    else:
        claims.append(Claim(enc_text, _verdict(None), "needs encoder layer-type runs"))
    if dec:
        tasks = sorted(dec)
        pairs, members = _part_tests([((t, o), dec[t][o], dec[t]["cross_attn"]) for t in tasks
                                      for o in ("self_attn", "ffn")])

        def decide_dec(cmp: Comparisons) -> tuple[str, str]:
            ok, briefs = _pooled_tests(cmp, members)
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
    parts = {k: p for k, p in _part_groups(rows, "depth", {"low", "mid", "high"}).items() if len(p) == 3}
    if not parts:
        return Claim(text, _verdict(None), "needs depth runs with low / mid / high thirds")
    keys = sorted(parts)
    pairs, members = _part_tests([(k, parts[k][o], parts[k]["low"]) for k in keys for o in ("mid", "high")])
    accs = lambda p: " / ".join(f"{d} {_part_acc(p[d]):.1f}" for d in ("low", "mid", "high"))  # noqa: E731
    means = "; ".join(f"{_task(t)} {m} {accs(parts[t, m])}" for t, m in keys)

    def decide(cmp: Comparisons) -> tuple[str, str]:
        ok, briefs = _pooled_tests(cmp, members)
        both = [ok[2 * i] and ok[2 * i + 1] for i in range(len(keys))]
        return _verdict(sum(both) > len(keys) / 2), (
            f"lowest third significantly worst in {sum(both)} of {len(keys)} (task, module); mid − low and "
            "high − low pooled over rates (Holm over the tests): " + "; ".join(
                f"{_task(t)} {m} {accs(parts[t, m])}: {briefs[2 * i]} and {briefs[2 * i + 1]}"
                for i, (t, m) in enumerate(keys)))
    return _tested(text, pairs, means, decide)


def whole_layer_can_go(rows: list[Row]) -> Claim:
    text = "A layer pruned at rate 1.0 can go (some whole block costs ≤ 3 points)"
    dense = _groups((r for r in rows if row_kind(r) == "dense"), lambda r: (r["eval_task"],))
    single = _groups((r for r in rows if row_kind(r) == "depth" and r["method"] == AP and row_rate(r) == 1.0
                      and len(r["rates"]["depth_rates"]) == 1
                      and r["rates"]["depth_rates"][0][0] == r["rates"]["depth_rates"][0][1]
                      and (r["eval_task"],) in dense),
                     lambda r: (r["task"], r["setting"].split(":")[0], r["rates"]["depth_rates"][0][0], r["eval_task"]))
    if not single:
        return Claim(text, _verdict(None), "needs single-block runs at rate 1.0")
    # the seeds (and experiments) of each block against the dense model on the same eval set
    pairs: list[Pair] = [((t, m, b), v, dense[(ev,)]) for (t, m, b, ev), v in sorted(single.items())]
    keys = sorted({(t, m) for (t, m, _), _, _ in pairs})
    drop = {p[0]: _acc(p[2]) - _acc(p[1]) for p in pairs}
    means = "; ".join(f"{_task(t)} {m} {sum(d <= TOLERANCE for k, d in drop.items() if k[:2] == (t, m))}/"
                      f"{sum(k[:2] == (t, m) for k in drop)} blocks with a mean drop ≤ {TOLERANCE:g}"
                      for t, m in keys)

    def decide(cmp: Comparisons) -> tuple[str, str]:
        good, bad = _margin_tests(cmp)
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


RULES = (
    "Verdicts come from paired tests over the eval examples (`taskprune/experiments/stats.py`), never from counting "
    "wins of any size: exact McNemar when each side is one run; a two-level paired bootstrap (10,000 replicates "
    "resampling the eval examples and, where a side has several seeds, its seeds; seed 0) otherwise. "
    f"The p-values of one claim's tests are Holm-adjusted together; alpha = {ALPHA:g}. "
    "\"Beats\"/\"better\"/\"more robust\" = significantly higher at more than half of the compared points; "
    "\"matters more\"/\"hurts most\" = pruning it costs significantly more, pooled over the rates both were run at. "
    f"\"≈\" = the one-sided 95 % upper bound of the mean absolute gap over the points ≤ {TOLERANCE:g} accuracy "
    "points (TOST-style: shown close, not merely not shown different); \"does not hold\" when its lower bound is "
    f"above {TOLERANCE:g}, \"inconclusive\" in between. \"As good as\" and \"can go\" = shown at most "
    f"{TOLERANCE:g} points worse (one-sided non-inferiority test), \"does not hold\" when shown more than "
    f"{TOLERANCE:g} points worse where it matters, \"inconclusive\" in between; for \"beats\" and \"matters "
    "more\", \"does not hold\" means not shown. Brackets are 95 % intervals of the difference "
    "in accuracy points; means are over seeds; rates 0 and 1 are left out of method comparisons. Rows recorded "
    "without per-example outcomes (older sweeps) give \"not tested\": re-run the sweep. "
    "Code: `taskprune/experiments/claims.py`."
)


def claims_section(rows: list[Row]) -> list[str]:
    """Markdown: the claims table, or nothing when no claim can be tested."""
    claims = check_claims(rows)
    if all(c.verdict == "not measured" for c in claims):
        return []
    left_out = unpaired_rows(rows)
    note = (f" {left_out} of the {len(rows)} rows were recorded without per-example outcomes (an older sweep): "
            "each claim is judged on the rows that have them, and only a claim with none of its rows among them "
            "falls back to the older rows (\"not tested\")." if left_out else "")
    return ["## The paper's claims, checked", "", RULES + note, "",
            "| claim | verdict | our numbers |", "|---|---|---|", *(c.line() for c in claims), ""]
