"""The serving core, without HTTP: one base model, the tasks' plans, and a byte-bounded cache of cut models.

A task's model is cut from the base on first use (``apply(..., share=True)``: only the sliced tensors are new,
everything the plan leaves whole stays the base's own tensor) and kept while it fits the cache. Every public
method that runs the model is synchronous and meant for a worker thread; the HTTP layer never calls it on
the event loop. Cut models share tensors with the base: never train them or move them in place (``.to()``,
``.half()``), that would change the base too.

Tasks are the built-in ones, plus task files given at start (``extra_tasks``); names are made canonical once
(``SST-2`` is ``sst2``), so plans, cache entries, batch queues and metric labels all use one name per task.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_model, load_tokenizer
from ..data import LabelSpace
from ..errors import TaskpruneError
from ..evaluate import rank_scores
from ..files import check_writable
from ..lm import model_kind
from ..lm.batching import batches
from ..models import get_adapter
from ..pruning.apply import apply, validate_plan
from ..pruning.plan import PruningPlan
from ..pruning.repaired import REPAIR_FILE, check_fits, read_repaired, with_repaired
from ..sources.fingerprint import fingerprint
from ..tasks import Example, Task, get_task, list_tasks
from ..validate import nonneg_float, positive_float, positive_int
from .cache import ByteLRU
from .metrics import ServeMetrics
from .plans import Entry, read_folder, removable, remove_entry, tensor_bytes, write_entry


class ServeError(Exception):
    """An error with the HTTP status it maps to and one clear message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@contextmanager
def observed(done: Callable[[int, float], None]) -> Iterator[None]:
    """Run one request's body and call ``done(status, seconds)`` once it ends, however it ends: 200, the
    ServeError's status, or 500 for anything else (the exception still propagates to the app's handlers)."""
    t0, status = time.perf_counter(), 200
    try:
        yield
    except ServeError as err:
        status = err.status
        raise
    except Exception:
        status = 500
        raise
    finally:
        done(status, time.perf_counter() - t0)


@dataclass
class ServeLimits:
    max_inputs: int = 64  # inputs per request (413 above)
    max_input_chars: int = 4000  # characters of one input's own text, all columns together (413 above)
    max_batch: int = 32  # inputs per model call; concurrent requests for one task are merged up to this
    max_wait_ms: float = 0.0  # extra wait for more requests; 0: a batch takes what queued while the last one ran
    cache_bytes: int = 1 << 30  # bound of the cut-model cache
    max_length: int = 256  # tokens per input (longer inputs are truncated, as in evaluation)
    timeout_s: float = 60.0  # a prediction request waits at most this long for queue and model (504 after)
    max_tokens: int = 512  # tokens one OpenAI-route generation may ask for (400 above)
    max_generations: int = 4  # OpenAI-route generations running at once (429 above)

    def __post_init__(self) -> None:
        """The checks of ``taskprune serve``'s flags (:mod:`taskprune.validate`), for library users too."""
        for name in ("max_inputs", "max_input_chars", "max_batch", "cache_bytes", "max_length", "max_tokens",
                     "max_generations"):
            setattr(self, name, positive_int(getattr(self, name), name))
        self.max_wait_ms = nonneg_float(self.max_wait_ms, "max_wait_ms")
        self.timeout_s = positive_float(self.timeout_s, "timeout_s")


@dataclass
class Prediction:
    label: str
    scores: dict[str, float]  # probability of each label word (softmax over the candidates' log-likelihoods)


def owned_bytes(model: nn.Module, base: nn.Module) -> int:
    """Bytes of the tensors ``model`` holds that are not the base model's own (what caching it costs)."""
    shared = {t.data_ptr() for t in (*base.parameters(), *base.buffers())}
    seen: set[int] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        ptr = t.data_ptr()
        if ptr not in shared and ptr not in seen:
            seen.add(ptr)
            total += t.numel() * t.element_size()
    return total


def _plan_task(plan: PruningPlan, name: str) -> str:
    """The task a plan serves: its recorded task, else the name it was registered under."""
    return plan.task or name


class TaskService:
    """Plans by task name, the base model, and the cut models' cache; thread-safe for one inference thread."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, plans_dir: str | Path | None = None,
                 limits: ServeLimits | None = None, model_name: str = "model",
                 metrics: ServeMetrics | None = None, extra_tasks: list[Task] | None = None) -> None:
        self.base = model.eval()
        self.tok = tokenizer
        self.limits = limits or ServeLimits()
        self.model_name = model_name
        self.metrics = metrics or ServeMetrics()
        self.fingerprint = fingerprint(model)
        self.adapter = get_adapter(model)
        self.tasks_by_name: dict[str, Task] = {n: get_task(n) for n in list_tasks()}
        for t in extra_tasks or []:
            self.tasks_by_name[t.name] = t
        self.tasks = {_key(n): t for n, t in self.tasks_by_name.items()}
        self.plans: dict[str, PruningPlan] = {}
        self.repairs: dict[str, dict[str, torch.Tensor]] = {}  # repaired plans' stored tensors (pruning.repaired)
        self._files: dict[str, Path] = {}  # the file or folder each plan came from (replaced or deleted with it)
        self._cut_locks: dict[str, threading.Lock] = {}
        self.plans_dir = Path(plans_dir) if plans_dir is not None else None
        self._lock = threading.RLock()
        self.cache: ByteLRU[nn.Module] = ByteLRU(self.limits.cache_bytes, on_evict=self._evicted)
        self.cut_seconds: dict[str, float] = {}
        self._labels: dict[str, LabelSpace] = {}
        if self.plans_dir is not None:
            self._load_dir(self.plans_dir)

    @classmethod
    def from_path(cls, model_path: str | Path, plans_dir: str | Path | None = None,
                  limits: ServeLimits | None = None, dtype: torch.dtype = torch.float32,
                  extra_tasks: list[Task] | None = None) -> TaskService:
        return cls(load_model(model_path, dtype=dtype), load_tokenizer(model_path), plans_dir=plans_dir,
                   limits=limits, model_name=str(model_path), extra_tasks=extra_tasks)

    # -- plans ------------------------------------------------------------------------------------------
    def _load_dir(self, folder: Path) -> None:
        check_plans_dir(folder)
        for entry in read_folder(folder):
            try:
                task = self.canonical(_plan_task(entry.plan, entry.name))
                if entry.path.is_dir() and entry.plan.repaired_with and entry.repair is None:
                    raise ServeError(422, f"a compression repaired with {entry.plan.repaired_with}, without its "
                                          f"{REPAIR_FILE}: it was made before compress stored the repaired tensors "
                                          "(or the file was removed); compress it again")
                self._check_plan(entry.plan, task, entry.repair)
            except ServeError as err:
                raise TaskpruneError(f"{entry.path}: {err.message}") from None
            if task in self.plans:
                raise TaskpruneError(f"{entry.path} and {self._files[task]} are both plans for task {task}; keep one")
            self._add(task, entry)

    def _add(self, task: str, entry: Entry) -> None:
        self.plans[task], self._files[task] = entry.plan, entry.path
        if entry.repair is not None:
            self.repairs[task] = entry.repair
        else:
            self.repairs.pop(task, None)

    def _check_plan(self, plan: PruningPlan, task: str, repair: dict[str, torch.Tensor] | None = None) -> None:
        self.task(task)  # an unknown task is refused
        if plan.base_fingerprint != self.fingerprint:
            raise ServeError(422, f"this plan was made for another base model (plan fingerprint "
                                  f"{plan.base_fingerprint}, served model {self.fingerprint})")
        if plan.repaired_with and repair is None:
            raise ServeError(422, f"this plan was made with weight repair ({plan.repaired_with}) and comes without "
                                  f"its {REPAIR_FILE} (the repaired tensors): place the whole compress output "
                                  "folder in the plans folder, or POST {\"plan\": ..., \"repair\": <base64 of "
                                  f"{REPAIR_FILE}>}}")
        try:
            validate_plan(plan, self.adapter)  # lacking groups included
        except (TaskpruneError, RuntimeError, ValueError, OverflowError) as err:
            raise ServeError(422, f"the plan does not fit the served model: {err}") from None
        if repair is not None:
            try:
                check_fits(apply(plan, self.base, check=False, share=True, validated=True), repair, REPAIR_FILE)
            except TaskpruneError as err:
                raise ServeError(422, str(err)) from None

    def task(self, name: str) -> Task:
        """The task called ``name`` (any spelling of a built-in name, or an extra task's name); 404 otherwise."""
        task = self.tasks.get(_key(name)) if isinstance(name, str) and len(name) <= 100 else None
        if task is None:
            shown = name if isinstance(name, str) and len(name) <= 100 else f"{str(name)[:100]}..."
            raise ServeError(404, f"unknown task {shown!r}; served tasks: {', '.join(sorted(self.tasks_by_name))}")
        return task

    def canonical(self, name: str) -> str:
        return self.task(name).name

    def known(self, name: str) -> bool:
        try:
            self.task(name)
        except ServeError:
            return False
        return True

    def register(self, task: str, plan_data: dict[str, Any], replace: bool = False) -> bool:
        """Add a plan (saved to the plans folder when there is one); refuses another model's plan. ``plan_data`` is
        a plan, or ``{"plan": <plan>, "repair": <base64 of repair.safetensors>}`` for a repaired one. Returns
        whether a plan was replaced."""
        task = self.canonical(task)
        repair_b64 = None
        if isinstance(plan_data, dict) and "plan" in plan_data and "format" not in plan_data:
            extra = set(plan_data) - {"plan", "repair"}
            if extra:
                raise ServeError(422, f"unknown field(s) {sorted(extra)} beside plan and repair")
            plan_data, repair_b64 = plan_data["plan"], plan_data.get("repair")
        if isinstance(plan_data, dict) and plan_data.get("task") is not None and (
                not self.known(str(plan_data["task"])) or self.canonical(str(plan_data["task"])) != task):
            raise ServeError(422, f"this plan is for task {plan_data['task']!r}, not {task!r}")
        plan = _parse_plan(plan_data)
        repair = None
        if repair_b64 is not None:
            if not isinstance(repair_b64, str):
                raise ServeError(422, f"repair must be the base64 text of {REPAIR_FILE}")
            try:
                repair = read_repaired(base64.b64decode(repair_b64, validate=True), plan, "repair")
            except binascii.Error:
                raise ServeError(422, f"repair is not base64 text (of {REPAIR_FILE})") from None
            except TaskpruneError as err:
                raise ServeError(422, str(err)) from None
        self._check_plan(plan, task, repair)
        with self._lock:
            replaced = task in self.plans
            if replaced and not replace:
                raise ServeError(409, f"task {task!r} already has a plan; add ?replace=true to replace it")
            old = self._files.get(task)
            path = old
            if self.plans_dir is not None:
                if old is not None and not removable(old):
                    raise ServeError(409, f"task {task!r} is served from the compress output folder {old}; the "
                                          "server does not replace a checkpoint: move it out of the plans folder")
                target = self.plans_dir / (task if repair is not None else f"{task}.json")
                if target.exists() and target != old:
                    raise ServeError(409, f"{target} exists and is not task {task!r}'s plan; the server does not "
                                          "replace it: rename or move it")
                try:
                    path = write_entry(self.plans_dir, task, plan, repair)
                    if old is not None and old != path:
                        remove_entry(old)  # else it would come back at the next start
                except TaskpruneError as err:  # the atomic writer's one line about the plan file
                    raise ServeError(500, f"could not save the plan: {err}") from None
                except OSError as err:
                    raise ServeError(500, f"could not write the plan to {self.plans_dir}: {err.strerror}") from None
            self._add(task, Entry(task, plan, repair, path))
            if path is None:
                self._files.pop(task, None)
            self.cache.pop(task)
        self._update_cache_gauge()
        return replaced

    def unregister(self, task: str) -> None:
        task = self.canonical(task)
        with self._lock:
            if task not in self.plans:
                raise ServeError(404, f"task {task!r} has no plan")
            path = self._files.get(task)
            if path is not None:
                if not removable(path):
                    raise ServeError(409, f"task {task!r} is served from the compress output folder {path}; the "
                                          "server does not delete a checkpoint: move it out of the plans folder")
                try:
                    remove_entry(path)
                except OSError as err:
                    raise ServeError(500, f"could not remove the plan file {path}: {err.strerror}") from None
            del self.plans[task]
            self.repairs.pop(task, None)
            self._files.pop(task, None)
            self.cache.pop(task)
        self._update_cache_gauge()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            for name, plan in sorted(self.plans.items()):
                out.append({"task": name, "method": plan.method, "rates": plan.rates, "samples": plan.samples,
                            "labels": list(self.task(name).label_words), "cached": name in self.cache,
                            "cached_bytes": self.cache.size_of(name), "created": plan.created,
                            "repaired_with": plan.repaired_with,
                            "repair_bytes": tensor_bytes(self.repairs.get(name))})
            return out

    # -- models -----------------------------------------------------------------------------------------
    def _evicted(self, _key: str, _size: int) -> None:
        self.metrics.cache_evictions.inc()

    def _update_cache_gauge(self) -> None:
        self.metrics.cache_bytes.set(self.cache.total_bytes)

    def check_servable(self, task: str, dense: bool = False) -> None:
        """404 for an unknown task, or for a task without a plan unless the dense base is asked for."""
        task = self.canonical(task)
        if not dense and task not in self.plans:
            raise ServeError(404, f"task {task!r} has no plan; register one (POST /v1/plans/{task}) or "
                                  'ask for the dense base model with "dense": true')

    def model_for(self, task: str, dense: bool = False) -> nn.Module:
        """The model serving ``task``: the base when ``dense``, else the task's cut model (cut if not cached).

        The cut runs outside the service lock (so /v1/tasks and plan changes never wait for it) under a per-task
        lock (so one task is not cut twice at once); a plan replaced meanwhile is not cached under its name.
        """
        self.check_servable(task, dense)
        if dense:
            return self.base
        task = self.canonical(task)
        with self._lock:
            cut_lock = self._cut_locks.setdefault(task, threading.Lock())
        with cut_lock:
            with self._lock:
                plan = self.plans.get(task)
                if plan is None:  # removed since the check
                    raise ServeError(404, f"task {task!r} has no plan")
                repair = self.repairs.get(task)
                cached = self.cache.get(task)
            if cached is not None:
                self.metrics.cache_hits.inc()
                return cached
            self.metrics.cache_misses.inc()
            t0 = time.perf_counter()
            model = apply(plan, self.base, check=False, share=True, validated=True).eval()  # checked when loaded
            if repair is not None:  # the repaired tensors in place of the cut's (fit checked when loaded)
                model = with_repaired(model, repair)
            seconds = time.perf_counter() - t0
            self.cut_seconds[task] = seconds
            self.metrics.cut_seconds.observe(seconds)
            with self._lock:
                if self.plans.get(task) is plan:
                    self.cache.put(task, model, owned_bytes(model, self.base))
        self._update_cache_gauge()
        return model

    # -- inference --------------------------------------------------------------------------------------
    def render(self, task: str, inputs: list[str | dict[str, Any]]) -> list[str]:
        """Model inputs from raw ones: a string fills a one-column template, an object names the columns."""
        t = self.task(task)
        if len(inputs) > self.limits.max_inputs:
            raise ServeError(413, f"{len(inputs)} inputs in one request; the limit is {self.limits.max_inputs}")
        texts = []
        for i, raw in enumerate(inputs):
            if isinstance(raw, str):
                if len(t.columns) != 1:
                    raise ServeError(422, f"inputs[{i}]: task {task!r} reads columns {list(t.columns)}; send an "
                                          "object with each of them")
                raw = {t.columns[0]: raw}
            # the limit counts what the client sent (every column's text), not the task's template around it:
            # a client can check it before sending, and it means the same for every task
            chars = sum(len(v) for v in raw.values() if isinstance(v, str))
            if chars > self.limits.max_input_chars:
                raise ServeError(413, f"inputs[{i}] is {chars} characters; the limit is "
                                      f"{self.limits.max_input_chars} (the input's own text, all columns together)")
            try:  # a decoder-only base reads the task's causal prompt where it has one (taskprune.lm)
                text = t.render(raw, causal=model_kind(self.adapter.model).reads_causal_prompt and bool(t.causal_template))
            except TaskpruneError as err:
                raise ServeError(422, f"inputs[{i}]: {err}") from None
            texts.append(text)
        return texts

    def predict_texts(self, task: str, texts: list[str], dense: bool = False) -> list[Prediction]:
        """Rank classification of rendered inputs, in chunks of ``max_batch``; runs the model (call off-loop)."""
        model = self.model_for(task, dense)
        t = self.task(task)
        kind = model_kind(model)
        labels = self._labels.get(t.name) or self._labels.setdefault(t.name, kind.label_space(self.tok, t))
        device = next(model.parameters()).device
        out: list[Prediction] = []
        examples = [Example(text, 0) for text in texts]
        for batch in batches(examples, self.tok, self.limits.max_batch, self.limits.max_length, kind):
            self.metrics.batch_inputs.observe(len(batch.input_ids))
            logp = rank_scores(model, batch.to(device), labels)
            probs = logp.softmax(-1)
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append(Prediction(t.label_words[best], dict(zip(t.label_words, row))))
        return out

    def predict(self, task: str, inputs: list[str | dict[str, Any]], dense: bool = False) -> list[Prediction]:
        """Render, check and predict in one call (for direct use; the server splits render and predict)."""
        return self.predict_texts(task, self.render(task, inputs), dense)


def check_plans_dir(folder: str | Path) -> Path:
    """The plans folder: it must exist (plans are read from it at start) and be a writable folder (plans added or
    removed through the API are written there). Checked by ``taskprune serve`` before the model loads."""
    folder = Path(folder)
    if not folder.exists():
        raise TaskpruneError(f"plans folder {folder} not found; create it (it may be empty) or point --plans at the "
                             "folder of plan files")
    if not folder.is_dir():
        raise TaskpruneError(f"--plans {folder} is a file, not a folder: give the folder that holds the plan JSON "
                             "files (one per task)")
    return check_writable(folder, folder=True, update=True)


def _key(name: str) -> str:
    """Spellings of one task name that mean the same task: case, spaces, hyphens and underscores ignored."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _parse_plan(data: dict[str, Any]) -> PruningPlan:
    """A plan from a request body, with the same checks as a plan file."""
    try:
        return PruningPlan.from_dict(data, "the request body")
    except TaskpruneError as err:
        raise ServeError(422, str(err)) from None
