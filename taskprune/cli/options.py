"""Flag types and the option groups several commands share; each group's flags become one library object here
(:class:`~taskprune.pruning.rates.RateSpec`, :class:`~taskprune.recipe.Recipe`, :class:`~taskprune.scoring.ScoreConfig`).

Every numeric flag has a type from :mod:`taskprune.validate`, so a malformed value is one line naming the flag
while the arguments are parsed, before anything loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from .. import validate
from ..catalogue import DEFAULT_METHOD, get_method, list_methods, method_help
from ..errors import TaskpruneError
from ..models import LAYER_TYPES
from ..pruning.allocate import ALLOCATIONS
from ..pruning.rates import HEAD_GRANULARITIES, RateSpec, check_rate
from ..pruning.repair import REPAIR_MODES, RepairConfig
from ..recipe import DEFAULT_CALIBRATION, DEFAULT_SEARCH_ITERATIONS, Recipe
from ..scoring import ScoreConfig, SMPConfig

EXIT_USER_ERROR = 2
DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "auto": None}


class Parser(argparse.ArgumentParser):
    """argparse whose errors are the CLI's one line (``taskprune: error: argument --port: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"taskprune: error: {message} (usage: {self.prog} --help)\n")


def _flag(check: validate.Check) -> Callable[[str], Any]:
    """An argparse ``type=`` from a :mod:`taskprune.validate` check: argparse names the flag in the message."""

    def parse(text: str) -> Any:  # noqa: ANN401
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


def _device_map(text: str) -> Any:  # noqa: ANN401
    from ..runtime.placement import parse_device_map

    try:
        return parse_device_map(text)
    except TaskpruneError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def RATE(text: str) -> float:  # noqa: N802 - reads like the other flag types
    """A pruning rate, checked by the one rate check (:func:`taskprune.pruning.rates.check_rate`)."""
    try:
        return check_rate(float(text), "rate")
    except ValueError as err:  # float() of a non-number, or check_rate's TaskpruneError (a ValueError)
        raise argparse.ArgumentTypeError(str(err) if isinstance(err, TaskpruneError) else
                                         f"{text!r} is not a number (a rate is the fraction of units removed, "
                                         "in [0, 1])") from None


def add_model(p: argparse.ArgumentParser, placement: bool = False) -> None:
    p.add_argument("--model", default=None,
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


def add_task(p: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
    p.add_argument("--task", required=required, default=default,
                   help="built-in task (sst2, mrpc, qnli, rte, cb, boolq) or a task file (.json/.yaml) for your own "
                        "data" + (f" (default {default})" if default else ""))
    p.add_argument("--data-dir", default=None,
                   help="GLUE/SuperGLUE folder (holding glue/SST-2/ ... or SST-2/ directly); default: $TASKPRUNE_DATA")
    p.add_argument("--source", default="auto", choices=["auto", "dir", "hf", "file"],
                   help="where examples come from: a GLUE folder (dir), Hugging Face datasets (hf), the task "
                        "file's own files (file); auto picks file, then dir")
    p.add_argument("--max-length", type=POSITIVE_INT, default=256,
                   help="truncate inputs to this many tokens (default 256)")


def add_scoring(p: argparse.ArgumentParser, command: str) -> None:
    """--method (the choices and help ``command`` accepts, from the catalogue) and the scoring options."""
    p.add_argument("--method", default=DEFAULT_METHOD if command != "score" else "attribution",
                   choices=list_methods(command), help=method_help(command))
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
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="examples per batch (default 8)")
    p.add_argument("--micro-batch", type=NONNEG_INT, default=ScoreConfig().micro_batch or 0,
                   help="most examples per scoring forward/backward pass, a batch taking several (default "
                        "%(default)s; 0: whole batches). The same scores; memory grows with the rows per pass")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient-based scores: keep only each block's input in the forward pass and recompute the "
                        "block in the backward one (default: on; on SmolLM2 at batch 16, 0.7 GB above the loaded "
                        "model instead of 2.2 GB, for ~1.4 x the time of a plain pass; the same scores)")
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


def score_config(args: argparse.Namespace) -> ScoreConfig:
    smp = SMPConfig(steps=args.smp_steps, lr=args.smp_lr, schedule=args.smp_schedule, warmup=args.smp_warmup,
                    cooldown=args.smp_cooldown, distill=args.smp_distill, temperature=args.smp_temperature)
    return ScoreConfig(example_agg=args.example_agg, position_agg=args.position_agg, seed=args.trial_seed, smp=smp,
                       checkpoint=args.activation_checkpointing, micro_batch=args.micro_batch or None)


def add_recipe(p: argparse.ArgumentParser) -> None:
    ours = get_method(DEFAULT_METHOD)
    g = p.add_argument_group("beyond the paper: layer-adaptive rates and weight repair (docs/method.md)")
    g.add_argument("--allocate", default=None, choices=ALLOCATIONS,
                   help="how --rate (then the fraction of the scope's prunable parameters removed) is spread: "
                        "uniform (every group at --rate: the paper, stock widths), global (one ranking of "
                        "standardised scores, FLAP), global-raw (of raw scores), global-param (of raw scores per "
                        "parameter a unit owns), global-sqrt (per square root of them), search (moves budget "
                        "between groups by the KL to the dense model on calibration inputs); default: the method's own "
                        f"({DEFAULT_METHOD}: {ours.allocate}; attribution and the baselines: uniform)")
    g.add_argument("--repair", default=None, choices=REPAIR_MODES,
                   help="re-solve the kept weights on unlabelled calibration inputs: ls (ridge least squares), bias "
                        "(FLAP's bias compensation), scale (Kwon et al.'s per-unit rescaling), none; default: the "
                        f"method's own ({DEFAULT_METHOD}: {ours.repair}; attribution and the baselines: none)")
    # None = not given: a tuning flag the recipe would not use is refused (Recipe.check_tuning), not ignored
    g.add_argument("--repair-alpha", type=NONNEG_FLOAT, default=None,
                   help="repair ls/scale: ridge strength toward the original kept weights, relative to the mean input "
                        f"energy (default {RepairConfig.alpha})")
    g.add_argument("--repair-order", default=None, choices=["one-shot", "sequential"],
                   help="any repair: solve every group on the dense model's inputs (one-shot, default) or group after "
                        "group on the pruned, already repaired model's (sequential: slower)")
    g.add_argument("--repair-centred", action="store_const", const=True, default=None,
                   help="repair ls/scale on models whose consumers have no bias (Llama, Mistral, Qwen, T5): add one and "
                        "solve the centred problem (a stock config flag where the family has one, else recorded for "
                        "the checkpoint's remote code); --repair bias always adds them, as FLAP does")
    g.add_argument("--calibration", type=POSITIVE_INT, default=None, metavar="N",
                   help="inputs (labels unused) for repair and the search allocation: the scoring examples plus more "
                        f"from the fit split, N in all (default {DEFAULT_CALIBRATION})")
    g.add_argument("--search-iterations", type=POSITIVE_INT, default=None,
                   help=f"candidate moves of --allocate search (default {DEFAULT_SEARCH_ITERATIONS})")
    g.add_argument("--self-label", action=argparse.BooleanOptionalAction, default=None,
                   help="also score the calibration inputs (--calibration), each labelled by the dense model's own "
                        "prediction: more examples at no labelling cost (the plan records how many); default: the "
                        f"method's own ({DEFAULT_METHOD}: {'on' if ours.self_label else 'off'}; attribution and the "
                        "baselines: off)")
    g.add_argument("--steps", type=POSITIVE_INT, default=None, metavar="N",
                   help="iterative pruning: reach --rate in N equal rounds, scoring the pruned (and repaired) model "
                        "again after each but the last (N scorings; default 1, one shot)")


def recipe_from(args: argparse.Namespace) -> Recipe:
    """The recipe the flags ask for (commands without recipe flags: the method alone, unrepaired)."""
    if not hasattr(args, "repair"):
        return Recipe(method=args.method, allocate="uniform", repair="none")
    return Recipe(args.method, args.allocate, args.repair, args.repair_alpha, args.repair_order, args.calibration,
                  args.search_iterations, args.repair_centred, args.steps, self_label=args.self_label)


def add_rates(p: argparse.ArgumentParser, modules: str = "all") -> None:
    p.add_argument("--rate", type=RATE, default=0.5, help="fraction of units removed in every pruned group, in [0, 1]")
    p.add_argument("--modules", default=modules, choices=["all", "encoder", "decoder"],
                   help="which module --rate applies to (default %(default)s)")
    p.add_argument("--layer-types", default="all",
                   help=f"comma list of layer types --rate applies to: {', '.join(LAYER_TYPES)} (default all)")
    p.add_argument("--module-rate", action="append", default=[], metavar="MODULE=P",
                   help="override the rate of a module, e.g. encoder=0.3 (repeatable)")
    p.add_argument("--layer-type-rate", action="append", default=[], metavar="TYPE=P",
                   help="override the rate of a layer type, e.g. ffn=0.7 (repeatable)")
    p.add_argument("--depth-rate", action="append", default=[], metavar="LO-HI=P",
                   help="override the rate of blocks LO..HI (inclusive) in both modules, e.g. 0-1=0.2 (repeatable; blocks "
                        "the model does not have are refused)")
    p.add_argument("--multiple-of", type=POSITIVE_INT, default=1, metavar="N",
                   help="round every kept width up to a multiple of N, e.g. 8 for faster matrix kernels (default 1)")
    p.add_argument("--head-granularity", default="query", choices=list(HEAD_GRANULARITIES),
                   help="decoder-only attention (whole heads): remove query heads, as many in every key/value group "
                        "(query, default), or whole key/value groups with their query heads (kv: smaller KV cache)")


def rates_from(args: argparse.Namespace) -> RateSpec:
    return RateSpec.parse(args.rate, args.modules, args.layer_types, args.module_rate, args.layer_type_rate,
                          args.depth_rate, args.multiple_of, args.head_granularity)


def add_out(p: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, default=None, help=what)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
