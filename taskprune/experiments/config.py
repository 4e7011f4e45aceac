"""Sweep configuration: a YAML file of named experiments, each a grid that expands into single runs.

A run is one (scored task, evaluated task, method, examples, sample seed, trial seed, rates) point; its id is
a hash of exactly those fields, so a re-run of the same config finds its finished rows and a changed grid
only runs what is new. Example (docs/sweeps.md has every key)::

    model: models/minilm-glue6
    data_dir: ../shared/data
    experiments:
      - name: module_specific
        tasks: [sst2, rte]
        methods: [attribution, activation, random-attribution, random, svd]
        modules: [encoder, decoder]
        rates: [0.1, 0.3, 0.5, 0.7, 0.9]
        trial_seeds: [0, 1, 2, 3, 4]      # random methods only
      - name: integrated
        tasks: [sst2]
        grid: {encoder: [0.0, 0.3, 0.6], decoder: [0.0, 0.3, 0.6]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalogue import get_method, list_methods
from ..errors import TaskpruneError, library_message
from ..models import LAYER_TYPES, MODULES
from ..pruning.rates import RateSpec, check_rate
from ..validate import check_depths, positive_int

ALL = "all"  # every fit example

EXPERIMENT_KEYS = {"name", "tasks", "eval_tasks", "methods", "modules", "rates", "grid", "layer_types", "depths",
                   "samples", "sample_seeds", "trial_seeds", "options"}
TOP_KEYS = {"model", "data_dir", "batch_size", "eval_batch_size", "max_length", "eval_examples", "experiments"}


@dataclass(frozen=True)
class Run:
    """One point of a sweep. ``samples`` is an int or "all"; ``rates`` is a RateSpec as a dict."""

    experiment: str
    task: str
    eval_task: str
    method: str
    samples: int | str
    sample_seed: int
    trial_seed: int
    rates: dict[str, Any]
    setting: str  # what varies, for the report: e.g. "decoder", "enc=0.3,dec=0.6", "ffn", "low"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        fields = {k: getattr(self, k) for k in ("experiment", "task", "eval_task", "method", "samples",
                                                "sample_seed", "trial_seed", "rates", "options")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def score_key(self) -> tuple:
        """Runs with equal keys share one scoring (rates do not matter to rate-free methods)."""
        return (self.task, self.method, self.samples, self.sample_seed, self.trial_seed,
                json.dumps(self.options, sort_keys=True))

    def rate_spec(self) -> RateSpec:
        return RateSpec.from_dict(self.rates)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "experiment": self.experiment, "task": self.task, "eval_task": self.eval_task,
                "method": self.method, "samples": self.samples, "sample_seed": self.sample_seed,
                "trial_seed": self.trial_seed, "rates": self.rates, "setting": self.setting, "options": self.options}


@dataclass
class SweepConfig:
    model: str | None
    data_dir: str | None
    runs: list[Run]
    batch_size: int = 8
    eval_batch_size: int = 32
    max_length: int = 256
    eval_examples: int | dict[str, int] | None = None

    def eval_cap(self, task: str) -> int | None:
        """How many eval examples of ``task`` to use (None: all): one cap for every task, or one per task."""
        if isinstance(self.eval_examples, dict):
            return self.eval_examples.get(task)
        return self.eval_examples


def _list(exp: dict[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = exp.get(key, default)
    value = value if isinstance(value, list) else [value]
    if not value:
        raise TaskpruneError(f"experiment {exp.get('name')!r}: {key} is empty")
    return value


def _depth_ranges(exp: dict[str, Any], n_layers: int | None) -> dict[str, tuple[int, int]]:
    depths = exp["depths"]
    if depths == "thirds":
        if n_layers is None:  # the model is not loaded yet (a check of the config first): names only, no spans
            return dict.fromkeys(("low", "mid", "high"), (0, 0))
        if n_layers < 3:
            raise TaskpruneError(f"depths: thirds needs a model of at least 3 blocks (got {n_layers})")
        third = n_layers / 3
        return {"low": (0, round(third) - 1), "mid": (round(third), round(2 * third) - 1),
                "high": (round(2 * third), n_layers - 1)}
    if not isinstance(depths, dict) or not depths:
        raise TaskpruneError(f"experiment {exp.get('name')!r}: depths must be 'thirds' or {{name: [lo, hi]}}")
    out = {}
    for name, span in depths.items():
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
            raise TaskpruneError(f"experiment {exp.get('name')!r}: depth {name} must be [lo, hi] (block indices)")
        out[str(name)] = (span[0], span[1])
    if n_layers is not None:  # a depth the model does not have would prune nothing: refuse it before the sweep
        for dname, (lo, hi) in out.items():
            check_depths([(lo, hi, 0.0)], n_layers, f"experiment {exp.get('name')!r}: depths {dname}:")
    return out


def _rate_points(exp: dict[str, Any], n_layers: int | None) -> list[tuple[str, RateSpec]]:
    """(setting, RateSpec) for every rate point of an experiment."""
    name = exp["name"]
    modules = _list(exp, "modules", ["decoder"])
    for m in modules:
        if m not in (*MODULES, ALL):
            raise TaskpruneError(f"experiment {name!r}: unknown module {m!r}; choose encoder, decoder or all")
    scopes = {m: (MODULES if m == ALL else (m,)) for m in modules}
    if "grid" in exp:
        grid = exp["grid"]
        if not isinstance(grid, dict) or set(grid) != set(MODULES):
            raise TaskpruneError(f"experiment {name!r}: grid needs both encoder: [...] and decoder: [...] rates")
        return [(f"enc={check_rate(e)},dec={check_rate(d)}",
                 RateSpec(rate=0.0, module_rates={"encoder": e, "decoder": d}))
                for e in _list(grid, "encoder", []) for d in _list(grid, "decoder", [])]
    rates = [check_rate(r, f"rate in experiment {name!r}") for r in _list(exp, "rates", [])]
    points: list[tuple[str, RateSpec]] = []
    if "layer_types" in exp:
        for lt in _list(exp, "layer_types", []):
            if lt not in LAYER_TYPES:
                raise TaskpruneError(f"experiment {name!r}: unknown layer type {lt!r}; choose {', '.join(LAYER_TYPES)}")
            for m, scope in scopes.items():
                if lt == "cross_attn" and m == "encoder":
                    continue  # an encoder has no cross-attention: these runs would all be the dense model
                points += [(f"{m}:{lt}", RateSpec(rate=r, modules=scope, layer_types=(lt,))) for r in rates]
        return points
    if "depths" in exp:
        for dname, (lo, hi) in _depth_ranges(exp, n_layers).items():
            for m, scope in scopes.items():
                points += [(f"{m}:{dname}", RateSpec(rate=0.0, modules=scope, depth_rates=[(lo, hi, r)]))
                           for r in rates]
        return points
    for m, scope in scopes.items():
        points += [(m, RateSpec(rate=r, modules=scope)) for r in rates]
    return points


def _task_ref(task: str) -> str:
    """A built-in task by its canonical name, a task file by its path (checked now, not mid-sweep)."""
    from ..tasks import get_task

    t = get_task(str(task))
    return str(task) if Path(str(task)).suffix else t.name


def expand(exp: dict[str, Any], n_layers: int | None = None) -> list[Run]:
    """Every run of one experiment, in an order that keeps runs sharing a scoring together."""
    if not isinstance(exp, dict) or "name" not in exp:
        raise TaskpruneError("every experiment needs a name")
    unknown = set(exp) - EXPERIMENT_KEYS
    if unknown:
        raise TaskpruneError(f"experiment {exp['name']!r}: unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(sorted(EXPERIMENT_KEYS))}")
    if sum(k in exp for k in ("grid", "layer_types", "depths")) > 1:
        raise TaskpruneError(f"experiment {exp['name']!r}: use one of grid, layer_types, depths")
    tasks = [_task_ref(t) for t in _list(exp, "tasks", [])]
    eval_tasks = [_task_ref(t) for t in _list(exp, "eval_tasks", [])] if "eval_tasks" in exp else None
    methods = _list(exp, "methods", ["attribution"])
    known = list_methods()
    for m in methods:
        if m not in known:
            raise TaskpruneError(f"experiment {exp['name']!r}: unknown method {m!r}; choose from {', '.join(known)}")
    samples = _list(exp, "samples", [10])
    for s in samples:
        if s != ALL and (not isinstance(s, int) or isinstance(s, bool) or s <= 0):
            raise TaskpruneError(f"experiment {exp['name']!r}: samples must be positive integers or 'all', got {s!r}")
    sample_seeds = _list(exp, "sample_seeds", [0])
    trial_seeds = _list(exp, "trial_seeds", [0])
    for seed in (*sample_seeds, *trial_seeds):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TaskpruneError(f"experiment {exp['name']!r}: seeds must be integers, got {seed!r}")
    options = exp.get("options", {})
    if not isinstance(options, dict) or {"seed", "target_rates"} & set(options):
        raise TaskpruneError(f"experiment {exp['name']!r}: options must map scoring options (not seed or "
                             "target_rates: use trial_seeds and the rate keys)")
    from ..scoring import ScoreConfig

    ScoreConfig.from_dict(options)  # unknown or bad options fail now, not mid-sweep
    points = _rate_points(exp, n_layers)
    runs = []
    for task in tasks:
        for eval_task in eval_tasks or [task]:
            for method in methods:
                for n in ([0] if not get_method(method).needs_examples else samples):
                    for s_seed in ([0] if not get_method(method).needs_examples or n == ALL else sample_seeds):
                        for t_seed in (trial_seeds if get_method(method).random else [0]):
                            for setting, spec in points:
                                runs.append(Run(exp["name"], task, eval_task, method, n, s_seed, t_seed,
                                                spec.to_dict(), setting, dict(options)))
    return runs


def load_config(path: str | Path, n_layers: int | None = None) -> SweepConfig:
    """Parse and validate a sweep YAML; every run id is unique. ``n_layers`` = the model's blocks: without it
    (before the model loads) everything is checked but depth spans, and ``depths: thirds`` spans are placeholders."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise TaskpruneError(f"sweep config {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskpruneError(f"{path} is not valid YAML ({library_message(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list) or not data["experiments"]:
        raise TaskpruneError(f"{path}: a sweep config needs a non-empty list under 'experiments'")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise TaskpruneError(f"{path}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    names = [e.get("name") if isinstance(e, dict) else None for e in data["experiments"]]
    if len(set(names)) != len(names):
        raise TaskpruneError(f"{path}: experiment names must be unique")
    if "dense" in names:
        raise TaskpruneError(f"{path}: 'dense' is reserved for the unpruned reference rows; rename that experiment")
    caps = data.get("eval_examples")
    if isinstance(caps, dict):  # per task: canonical names, so an unknown task fails now and QNLI == qnli
        caps = {_task_ref(k): v for k, v in caps.items()}
    checked = {f"eval_examples.{k}": v for k, v in caps.items()} if isinstance(caps, dict) else {"eval_examples": caps}
    for key, value in {**{k: data.get(k) for k in ("batch_size", "eval_batch_size", "max_length")}, **checked}.items():
        if value is not None and not isinstance(value, str):  # "8" in quotes is a string, not a count
            positive_int(value, f"{path}: {key}")
        elif value is not None:
            raise TaskpruneError(f"{path}: {key} must be a positive integer, got {value!r}")
    runs: list[Run] = []
    for exp in data["experiments"]:
        runs += expand(exp, n_layers)
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(r.id, r)
    return SweepConfig(
        model=data.get("model"), data_dir=data.get("data_dir"), runs=list(seen.values()),
        batch_size=int(data.get("batch_size", 8)), eval_batch_size=int(data.get("eval_batch_size", 32)),
        max_length=int(data.get("max_length", 256)), eval_examples=caps,
    )
