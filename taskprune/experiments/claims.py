"""The paper's claims, checked against a sweep's rows: one verdict per claim, with the numbers behind it.

Each claim reads the rows it needs by what they vary (``row_kind``), not by experiment names, so any sweep that
runs the matching settings gets its verdicts; a claim whose rows are missing says "not measured". Verdicts are
deliberately simple rules, stated next to each one, so a reader can redo them from the tables:

- "≈" means a mean absolute gap of at most :data:`TOLERANCE` accuracy points over the compared points (about
  one standard error of accuracy on RTE's 277 dev examples, two on SST-2's 872);
- "beats" / "better" means a strictly higher mean over seeds at more than half of the compared points;
- rate points 0 and 1 are left out of comparisons where every method is equal there by construction.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .results import METRIC, dense_accuracy, row_kind, row_rate

TOLERANCE = 3.0  # accuracy points
AP, FPP, RAP, RP, SVD = "attribution", "activation", "random-attribution", "random", "svd"
UNSUPERVISED = "attribution-unsupervised"
#: unseen-domain pairs as the paper reads them: (scored on, evaluated on)
RELATED = {("rte", "qnli"), ("mrpc", "qnli")}
UNRELATED = {("sst2", "qnli"), ("cb", "qnli")}

Row = dict[str, Any]


@dataclass
class Claim:
    text: str
    verdict: str  # "holds", "does not hold", "not measured"
    evidence: str

    def line(self) -> str:
        cells = (c.replace("|", "\\|") for c in (self.text, self.evidence))  # |x| must not split the table
        text, evidence = cells
        return f"| {text} | **{self.verdict}** | {evidence} |"


def _acc(rows: Iterable[Row]) -> float:
    return statistics.fmean(r["metrics"][METRIC] for r in rows)


def _means(rows: Iterable[Row], key: Callable[[Row], tuple]) -> dict[tuple, float]:
    """Mean accuracy over seeds per key."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: _acc(v) for k, v in groups.items()}


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("holds" if ok else "does not hold")


def _task(t: str) -> str:
    return t.upper()


def _module_means(rows: list[Row]) -> dict[tuple, float]:
    """(experiment, task, module, method, samples, rate) -> mean accuracy, module-scope rows, rates in (0, 1)."""
    return _means((r for r in rows if row_kind(r) == "module" and 0 < row_rate(r) < 1),
                  lambda r: (r["experiment"], r["task"], r["setting"], r["method"], str(r["samples"]), row_rate(r)))


def _sample_order(samples: str) -> tuple[int, int]:
    return (1, 0) if samples == "all" else (0, int(samples))


def _pairs(means: dict[tuple, float], a: str, b: str) -> list[tuple[tuple, float, float]]:
    """One point per (experiment, task, module, rate, example count) where methods a and b were both run.

    Equal example counts pair up; a method that reads no examples (random, svd: recorded with 0) pairs once,
    with the other method's smallest example count.
    """
    by_point: dict[tuple, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for (exp, task, module, method, samples, rate), v in means.items():
        if method in (a, b):
            by_point[(exp, task, module, rate)][method][samples] = v
    out = []
    for point, methods in by_point.items():
        va, vb = methods.get(a, {}), methods.get(b, {})
        common = sorted(set(va) & set(vb), key=_sample_order)
        if common:
            out += [(point, va[s], vb[s]) for s in common]
        elif va and vb and ("0" in va or "0" in vb):
            first = lambda d: d[min(d, key=_sample_order)]  # noqa: E731
            out.append((point, first(va), first(vb)))
    return out


def _gap(pairs: list[tuple[tuple, float, float]]) -> float:
    return statistics.fmean(abs(a - b) for _, a, b in pairs)


def _by_task(pairs: list[tuple[tuple, float, float]], stat: Callable[[list], str]) -> str:
    tasks = sorted({p[0][1] for p in pairs})
    return "; ".join(f"{_task(t)} {stat([p for p in pairs if p[0][1] == t])}" for t in tasks)


def ap_beats_baselines(rows: list[Row]) -> Claim:
    text = "AP beats the baselines (FPP, RAP, RP, SVD) in most cases"
    means = _module_means(rows)
    parts, wins, total = [], 0, 0
    for b, name in ((FPP, "FPP"), (RAP, "RAP"), (RP, "RP"), (SVD, "SVD")):
        pairs = _pairs(means, AP, b)
        if pairs:
            w = sum(a > v for _, a, v in pairs)
            wins, total = wins + w, total + len(pairs)
            parts.append(f"{name} {w}/{len(pairs)}")
    if not total:
        return Claim(text, _verdict(None), "needs attribution and a baseline on the same module rates")
    return Claim(text, _verdict(wins > total / 2),
                 f"AP strictly above the baseline at {wins} of {total} (task, module, rate) points: " + ", ".join(parts))


def _approx(text: str, rows: list[Row], a: str, b: str, names: tuple[str, str]) -> Claim:
    pairs = _pairs(_module_means(rows), a, b)
    if not pairs:
        return Claim(text, _verdict(None), f"needs {names[0]} and {names[1]} on the same module rates")
    gap = _gap(pairs)
    signed = statistics.fmean(x - y for _, x, y in pairs)
    return Claim(text, _verdict(gap <= TOLERANCE),
                 f"mean |{names[0]} − {names[1]}| = {gap:.2f} points over {len(pairs)} points "
                 f"(mean {names[0]} − {names[1]} = {signed:+.2f}; " + _by_task(pairs, lambda p: f"{_gap(p):.2f}") + ")")


def rap_sometimes_ap(rows: list[Row]) -> Claim:
    text = "RAP is sometimes as good as AP"
    pairs = _pairs(_module_means(rows), RAP, AP)
    if not pairs:
        return Claim(text, _verdict(None), "needs RAP and AP on the same module rates")
    close = sum(abs(x - y) <= TOLERANCE or x > y for _, x, y in pairs)
    return Claim(text, _verdict(close >= len(pairs) / 4),
                 f"RAP within {TOLERANCE:g} points of AP (or above it) at {close} of {len(pairs)} points "
                 "(rule: at least a quarter); " + _by_task(pairs, lambda p: f"{sum(abs(x - y) <= TOLERANCE or x > y for _, x, y in p)}/{len(p)}"))


def decoder_more_robust(rows: list[Row]) -> Claim:
    text = "The decoder is more robust to pruning than the encoder"
    means = _module_means(rows)
    pairs = []
    for (exp, task, module, method, samples, rate), dec in means.items():
        if module == "decoder" and method == AP:
            enc = means.get((exp, task, "encoder", method, samples, rate))
            if enc is not None:
                pairs.append(((exp, task, "", rate), dec, enc))
    if not pairs:
        return Claim(text, _verdict(None), "needs AP on both modules at the same rates")
    wins = sum(d > e for _, d, e in pairs)
    return Claim(text, _verdict(wins > len(pairs) / 2),
                 f"AP decoder-pruned above encoder-pruned at {wins} of {len(pairs)} (experiment, task, examples, rate) "
                 "points; "
                 "mean gap " + _by_task(pairs, lambda p: f"{statistics.fmean(d - e for _, d, e in p):+.1f}"))


def integrated_like_specific(rows: list[Row]) -> Claim:
    text = ("Module-integrated ≈ module-specific: pruning both modules costs about what the worse of the two "
            "alone costs")
    cells = _means((r for r in rows if row_kind(r) == "grid" and r["method"] == AP),
                   lambda r: ((r["task"], r["eval_task"], str(r["samples"])), r["rates"]["module_rates"]["encoder"],
                              r["rates"]["module_rates"]["decoder"]))
    pairs = []
    for (key, e, d), both in cells.items():
        alone = [cells.get((key, e, 0.0)), cells.get((key, 0.0, d))]
        if e > 0 and d > 0 and None not in alone:
            pairs.append(((None, key[1], "", (e, d)), both, min(alone)))
    if not pairs:
        return Claim(text, _verdict(None), "needs an encoder x decoder grid with 0 in both axes")
    signed = statistics.fmean(b - a for _, b, a in pairs)
    return Claim(text, _verdict(_gap(pairs) <= TOLERANCE),
                 f"mean |acc(e, d) − min(acc(e, 0), acc(0, d))| = {_gap(pairs):.2f} over {len(pairs)} cells "
                 f"(signed {signed:+.2f}; " + _by_task(pairs, lambda p: f"{_gap(p):.2f}") + ")")


def few_examples_enough(rows: list[Row], task: str = "sst2") -> Claim:
    text = f"10 examples ≈ all examples on {_task(task)}"
    means = _means((r for r in rows if row_kind(r) == "module" and r["task"] == task and r["method"] == AP
                    and 0 < row_rate(r) < 1),
                   lambda r: (r["experiment"], r["setting"], row_rate(r), str(r["samples"])))
    pairs = [((exp, task, module, rate), v, means[(exp, module, rate, "all")])
             for (exp, module, rate, s), v in means.items() if s == "10" and (exp, module, rate, "all") in means]
    if not pairs:
        return Claim(text, _verdict(None), f"needs AP with 10 and with all examples on {_task(task)}")
    by_module = "; ".join(f"{m} {statistics.fmean(x - y for k, x, y in pairs if k[2] == m):+.2f}"
                          for m in sorted({k[2] for k, _, _ in pairs}))
    return Claim(text, _verdict(_gap(pairs) <= TOLERANCE),
                 f"mean |acc(10, mean of draws) − acc(all)| = {_gap(pairs):.2f} over {len(pairs)} points; "
                 f"mean 10 − all by module: {by_module}")


def unsupervised_like_supervised(rows: list[Row]) -> Claim:
    text = "Unsupervised attribution ≈ supervised"
    pairs = _pairs(_module_means(rows), UNSUPERVISED, AP)
    if not pairs:
        return Claim(text, _verdict(None), "needs both attribution variants on the same module rates")
    signed = statistics.fmean(x - y for _, x, y in pairs)
    return Claim(text, _verdict(_gap(pairs) <= TOLERANCE),
                 f"mean |unsupervised − supervised| = {_gap(pairs):.2f} over {len(pairs)} points (signed {signed:+.2f}; "
                 + _by_task(pairs, lambda p: f"{_gap(p):.2f}") + ")")


def related_domain_better(rows: list[Row]) -> Claim:
    text = "A related unseen domain is preserved better than an unrelated one"
    means = _means((r for r in rows if row_kind(r) == "unseen" and r["method"] == AP and 0 < row_rate(r) < 1),
                   lambda r: (r["eval_task"], r["setting"], row_rate(r), r["task"]))
    pairs = []
    for (ev, module, rate, src), v in means.items():
        if (src, ev) in RELATED:
            for (src2, ev2) in UNRELATED:
                if ev2 == ev and (ev, module, rate, src2) in means:
                    pairs.append(((src, src2, module, rate, ev), v, means[(ev, module, rate, src2)]))
    if not pairs:
        return Claim(text, _verdict(None), "needs AP scored on a related and an unrelated task, evaluated on one")
    wins = sum(a > b for _, a, b in pairs)
    signed = statistics.fmean(a - b for _, a, b in pairs)
    names = sorted({f"{_task(k[0])} vs {_task(k[1])} → {_task(k[4])}" for k, _, _ in pairs})
    return Claim(text, _verdict(wins > len(pairs) / 2),
                 f"{', '.join(names)}: related above unrelated at {wins} of "
                 f"{len(pairs)} (module, rate) points, mean gap {signed:+.2f}")


def _part_means(rows: list[Row], kind: str, parts: set[str]) -> dict[tuple[str, str], dict[str, float]]:
    """(task, module) -> {part: mean accuracy} for layer-type or depth rows, each part averaged over seeds and
    over the rates in (0, 1] that every part of ``parts`` was run at (so parts are compared at equal rates)."""
    means = _means((r for r in rows if row_kind(r) == kind and r["method"] == AP and row_rate(r) > 0
                    and r["setting"].split(":", 1)[1] in parts),
                   lambda r: (r["task"], *r["setting"].split(":", 1), row_rate(r)))
    by_tm: dict[tuple[str, str], dict[str, dict[float, float]]] = defaultdict(lambda: defaultdict(dict))
    for (task, module, part, rate), v in means.items():
        by_tm[task, module][part][rate] = v
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, per_part in by_tm.items():
        shared = set.intersection(*(set(v) for v in per_part.values()))
        if shared:
            out[key] = {p: statistics.fmean(v[r] for r in shared) for p, v in per_part.items()}
    return out


def layer_types(rows: list[Row]) -> list[Claim]:
    enc_text = "Encoder: self-attention matters more than the FFN (pruning it hurts more)"
    dec_text = "Decoder: cross-attention matters most"
    enc = {t: p for (t, m), p in _part_means(rows, "layer_type", {"self_attn", "ffn"}).items()
           if m == "encoder" and len(p) == 2}
    dec = {t: p for (t, m), p in _part_means(rows, "layer_type", {"self_attn", "cross_attn", "ffn"}).items()
           if m == "decoder" and len(p) == 3}
    fmt = lambda p: ", ".join(f"{k} {v:.1f}" for k, v in sorted(p.items()))  # noqa: E731
    claims = []
    if enc:
        ok = {t: p["self_attn"] < p["ffn"] for t, p in enc.items()}
        claims.append(Claim(enc_text, _verdict(all(ok.values())), "mean accuracy over rates with only that type pruned: "
                            + "; ".join(f"{_task(t)} {fmt(p)} ({'yes' if ok[t] else 'no'})" for t, p in sorted(enc.items()))))
    else:
        claims.append(Claim(enc_text, _verdict(None), "needs encoder layer-type runs"))
    if dec:
        ok = {t: p["cross_attn"] < min(p["self_attn"], p["ffn"]) for t, p in dec.items()}
        claims.append(Claim(dec_text, _verdict(all(ok.values())), "mean accuracy over rates with only that type pruned: "
                            + "; ".join(f"{_task(t)} {fmt(p)} ({'yes' if ok[t] else 'no'})" for t, p in sorted(dec.items()))))
    else:
        claims.append(Claim(dec_text, _verdict(None), "needs decoder layer-type runs"))
    return claims


def low_layers_matter_most(rows: list[Row]) -> Claim:
    text = "Low layers matter most (pruning the lowest third hurts most)"
    parts = {k: p for k, p in _part_means(rows, "depth", {"low", "mid", "high"}).items() if len(p) == 3}
    if not parts:
        return Claim(text, _verdict(None), "needs depth runs with low / mid / high thirds")
    ok = {k: p["low"] < min(p["mid"], p["high"]) for k, p in parts.items()}
    return Claim(text, _verdict(sum(ok.values()) > len(ok) / 2),
                 f"lowest third worst in {sum(ok.values())} of {len(ok)} (task, module): " + "; ".join(
                     f"{_task(t)} {m} low {p['low']:.1f} / mid {p['mid']:.1f} / high {p['high']:.1f}"
                     for (t, m), p in sorted(parts.items())))


def whole_layer_can_go(rows: list[Row], dense: dict[str, float]) -> Claim:
    text = "A layer pruned at rate 1.0 can go (some whole block costs ≤ 3 points)"
    single = [r for r in rows if row_kind(r) == "depth" and r["method"] == AP and row_rate(r) == 1.0
              and len(r["rates"]["depth_rates"]) == 1 and r["rates"]["depth_rates"][0][0] == r["rates"]["depth_rates"][0][1]
              and r["eval_task"] in dense]
    if not single:
        return Claim(text, _verdict(None), "needs single-block runs at rate 1.0")
    accs: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in single:  # the mean over seeds (and experiments) of each block's drop
        accs[r["task"], r["setting"].split(":")[0]][r["rates"]["depth_rates"][0][0]].append(
            dense[r["eval_task"]] - r["metrics"][METRIC])
    drops = {k: {b: statistics.fmean(v) for b, v in d.items()} for k, d in accs.items()}
    ok = {k: sum(v <= TOLERANCE for v in d.values()) for k, d in drops.items()}
    return Claim(text, _verdict(all(n > 0 for n in ok.values())),
                 "blocks removable within 3 points of dense per (task, module): " + "; ".join(
                     f"{_task(t)} {m} {ok[t, m]}/{len(d)} (smallest drop {min(d.values()):+.1f} at block "
                     f"{min(d, key=d.get)}, largest {max(d.values()):+.1f} at block {max(d, key=d.get)})"
                     for (t, m), d in sorted(drops.items())))


def check_claims(rows: list[Row]) -> list[Claim]:
    """Every claim of the paper that the rows can test (the others say "not measured")."""
    dense = dense_accuracy(rows)
    return [
        ap_beats_baselines(rows),
        _approx("FPP ≈ RP", rows, FPP, RP, ("FPP", "RP")),
        _approx("SVD ≈ RP", rows, SVD, RP, ("SVD", "RP")),
        rap_sometimes_ap(rows),
        decoder_more_robust(rows),
        integrated_like_specific(rows),
        few_examples_enough(rows),
        unsupervised_like_supervised(rows),
        related_domain_better(rows),
        *layer_types(rows),
        low_layers_matter_most(rows),
        whole_layer_can_go(rows, dense),
    ]


def claims_section(rows: list[Row]) -> list[str]:
    """Markdown: the claims table, or nothing when no claim can be tested."""
    claims = check_claims(rows)
    if all(c.verdict == "not measured" for c in claims):
        return []
    return ["## The paper's claims, checked", "",
            f"Rules: \"≈\" = mean absolute gap ≤ {TOLERANCE:g} accuracy points; \"beats\"/\"better\" = strictly "
            "higher at more than half of the compared points; means are over seeds; rates 0 and 1 are left out "
            "of method comparisons. Code: `taskprune/experiments/claims.py`.", "",
            "| claim | verdict | our numbers |", "|---|---|---|", *(c.line() for c in claims), ""]
