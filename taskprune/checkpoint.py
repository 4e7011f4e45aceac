"""Loading base models and saving/loading pruned ones as ordinary Hugging Face checkpoints.

A pruned checkpoint is ``config.json`` + safetensors + tokenizer (+ ``plan.json``). Its config carries
``taskprune_widths`` (every group's width) and, where widths are uniform, the smaller stock fields
(``d_ff``/``d_kv`` for T5, ``intermediate_size`` for BERT FFNs), so plain ``from_pretrained`` loads it.
Non-uniform widths and BERT attention widths have no stock field: :func:`load_pruned` builds the stock
skeleton, slices it to the recorded widths and loads the weights, which covers every case. An SVD-baseline
checkpoint (:mod:`taskprune.pruning.lowrank`) records ``taskprune_lowrank`` ({layer: rank}) and loads the same way,
its layers swapped for empty low-rank ones before the weights are read.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .errors import TaskpruneError, library_message
from .files import atomic_dir
from .models import get_adapter
from .portable.remote import REMOTE_KEY, check_remote_code, write_remote_code
from .pruning.apply import record_widths, slice_model
from .pruning.biases import restore_biases
from .pruning.lowrank import LOWRANK_KEY, restore_lowrank
from .runtime import placement
from .runtime.placement import DeviceMap
from .sources.gguf import SOURCE_KEY
from .sources.hf import auto_model_class
from .sources.resolve import gguf_source, resolve_model


def _check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise TaskpruneError(f"model folder {path} not found")
    if not (path / "config.json").is_file():
        raise TaskpruneError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:  # a damaged config is one line here, not a JSONDecodeError from deep inside transformers
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskpruneError(f"{path / 'config.json'} is not valid JSON ({err}): the model folder is damaged") from None
    if not isinstance(config, dict):
        raise TaskpruneError(f"{path / 'config.json'} holds no JSON object: the model folder is damaged")
    check_remote_code(path, config)  # its modeling file present and unchanged, before anything reads the folder
    return path


def _load_weights_file(file: Path) -> dict[str, torch.Tensor]:
    """One safetensors file; a damaged or cut-short one is one line naming it."""
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise TaskpruneError(f"{file} is not a readable safetensors file ({err}): damaged or cut short") from None


def _weights_error(name_or_path: str | Path, err: Exception) -> TaskpruneError:
    """A load that failed in the weights: name the damaged file when it is a local folder."""
    folder = Path(name_or_path)
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            _load_weights_file(file)
        except TaskpruneError as named:
            return named
    return TaskpruneError(f"cannot load model {name_or_path!s}: {library_message(err)}")


def load_model(name_or_path: str | Path, dtype: torch.dtype | None = None, *, device_map: DeviceMap | None = None,
               offload_folder: str | None = None, max_memory: dict[Any, Any] | None = None) -> nn.Module:
    """Load a seq2seq or causal LM (a folder, a GGUF file, a short name such as ``smollm2-135m-instruct``, or a Hub
    id for users with internet), pruned or not.

    ``device_map`` (see :mod:`taskprune.runtime.placement`) spreads a model too big for one device over GPUs, CPU RAM and
    disk (``offload_folder``) with accelerate's big-model dispatch; ``max_memory`` caps what each device takes.
    """
    name_or_path = resolve_model(name_or_path)
    path = Path(name_or_path)
    if path.exists() or str(name_or_path).startswith((".", "/")):
        path = _check_model_dir(path)
        config = json.loads((path / "config.json").read_text())
        if config.get("taskprune_widths") or config.get(LOWRANK_KEY):
            return load_pruned(path, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                               max_memory=max_memory)
    placed: dict[str, Any] = {}
    if device_map is not None:
        offload_folder = placement.offload_folder(offload_folder, device_map)
        placed = {"device_map": device_map, "offload_folder": offload_folder}
        if max_memory is not None:
            placed["max_memory"] = max_memory
    try:
        from transformers import AutoConfig

        model_class = auto_model_class(AutoConfig.from_pretrained(str(name_or_path)))
        model = model_class.from_pretrained(str(name_or_path), dtype=dtype, **placed)
    except (OSError, ValueError, KeyError) as err:
        from .sources.resolve import PROJECT_MODELS, SHORT_NAMES

        local = "" if path.exists() else (
            f" (not a local folder or GGUF file, nor a short name: {', '.join([*PROJECT_MODELS, *SHORT_NAMES])})")
        raise TaskpruneError(f"cannot load model {name_or_path!s}{local}: {library_message(err)}") from None
    except SafetensorError as err:
        raise _weights_error(name_or_path, err) from None
    adapter = get_adapter(model)  # refuse unsupported architectures here, with one clear line
    if device_map is not None:
        placement.mark_offloaded(model, offload_folder)
    adapter.after_load()
    source = gguf_source(path) if path.is_dir() else None
    if source is not None:  # kept in every checkpoint pruned from it: GGUF export copies its tokenizer
        setattr(model.config, SOURCE_KEY, str(source))
    return model.eval()


def model_skeleton(name_or_path: str | Path) -> nn.Module | None:
    """The model ``name_or_path`` names, built from its config on the meta device (no weights read, no memory):
    enough to check options against its structure before minutes of loading. Its widths are the stock ones (a
    pruned checkpoint's recorded widths are not applied; its blocks, groups and biases are). None where no local
    config can be read (a Hub id): the load itself then says what is wrong."""
    path = Path(resolve_model(name_or_path))
    if not path.is_dir():
        return None
    path = _check_model_dir(path)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            model = auto_model_class(config).from_config(config)
        get_adapter(model)
        restore_biases(model)
    except (OSError, ValueError, KeyError, AttributeError):
        return None  # load_model names the problem, with its own message
    return model


def load_tokenizer(name_or_path: str | Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    name_or_path = resolve_model(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        raise TaskpruneError(f"cannot load a tokenizer from {name_or_path!s}: {library_message(err)}") from None


def _state_dict_files(path: Path) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    if single.is_file():
        return _load_weights_file(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
            raise TaskpruneError(f"{index} is not a safetensors index ({err}): the model folder is damaged") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_weights_file(path / shard))
        return state
    raise TaskpruneError(f"{path} holds no safetensors weights (model.safetensors)")


def load_pruned(path: str | Path, dtype: torch.dtype | None = None, *, device_map: DeviceMap | None = None,
                offload_folder: str | None = None, max_memory: dict[Any, Any] | None = None) -> nn.Module:
    """Load any pruned checkpoint (uniform or not, T5 or BERT attention widths) or factorised one, with exact shapes.

    With ``device_map`` the sliced skeleton is built on the meta device (no memory) and accelerate's
    ``load_checkpoint_and_dispatch`` reads the weights straight to their devices (as :func:`load_model` does).
    """
    from transformers import AutoConfig
    from transformers.initialization import no_init_weights

    path = _check_model_dir(path)
    config = AutoConfig.from_pretrained(str(path))
    widths: dict[str, int] | None = getattr(config, "taskprune_widths", None)
    ranks: dict[str, int] | None = getattr(config, LOWRANK_KEY, None)
    if not widths and not ranks:
        return load_model(path, dtype=dtype, device_map=device_map, offload_folder=offload_folder,
                          max_memory=max_memory)
    if device_map is not None and ranks:
        raise TaskpruneError(f"{path} is a low-rank (svd) checkpoint: it loads into memory only, without --device-map")
    if device_map is not None:
        from accelerate import init_empty_weights

        with init_empty_weights():
            model = auto_model_class(config).from_config(config)
    else:
        with no_init_weights():
            model = auto_model_class(config).from_config(config)
    adapter = get_adapter(model)
    if widths:
        keep: dict[str, torch.Tensor] = {}
        for g in adapter.groups():
            if g.name not in widths:
                raise TaskpruneError(f"{path}/config.json lists no width for group {g.name}")
            w = widths[g.name]
            if w == g.size:
                continue
            keep[g.name] = adapter.skeleton_keep(g, w)
        slice_model(adapter, keep)
        record_widths(adapter, widths, getattr(config, "taskprune_base_fingerprint", None))
    try:
        restore_biases(model)
    except (ValueError, AttributeError) as err:
        raise TaskpruneError(f"{path}/config.json: {err}") from None
    if ranks:
        if not isinstance(ranks, dict):
            raise TaskpruneError(f"{path}/config.json: {LOWRANK_KEY} must map layer names to ranks")
        restore_lowrank(model, ranks)
    recorded = "recorded " + ("widths and low-rank layers" if widths and ranks
                              else "low-rank layers" if ranks else "widths")
    if device_map is not None:
        return _dispatch_pruned(model, path, recorded, dtype, device_map, offload_folder, max_memory)
    state = _state_dict_files(path)
    stored_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    model.to(stored_dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches are raised even when not strict
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), library_message(err))
        raise TaskpruneError(f"{path} does not match its {recorded} ({detail})") from None
    model.tie_weights()
    loaded = {p.data_ptr() for n, p in model.state_dict().items() if n in state}
    really_missing = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if really_missing or unexpected:
        raise TaskpruneError(
            f"{path} does not match its {recorded} (missing {really_missing[:3]}, unexpected {unexpected[:3]})"
        )
    get_adapter(model).after_load()
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _dispatch_pruned(model: nn.Module, path: Path, recorded: str, dtype: torch.dtype | None, device_map: DeviceMap,
                     offload_folder: str | None, max_memory: dict[Any, Any] | None) -> nn.Module:
    """Weights of a pruned checkpoint read into its (meta, already sliced) skeleton, placed by ``device_map``."""
    from accelerate import load_checkpoint_and_dispatch

    folder = placement.offload_folder(offload_folder, device_map)
    model.tie_weights()  # tied tensors are stored once: the skeleton must share them before weights are read
    try:
        model = load_checkpoint_and_dispatch(model, str(path), device_map=device_map, max_memory=max_memory,
                                             no_split_module_classes=getattr(model, "_no_split_modules", None),
                                             offload_folder=folder, dtype=dtype, strict=True)
    except (RuntimeError, ValueError, KeyError) as err:
        raise TaskpruneError(f"{path} does not load with this device map or does not match its {recorded} "
                             f"({library_message(err)})") from None
    placement.mark_offloaded(model, folder)
    get_adapter(model).after_load()
    return model.eval()


def save_pruned(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    extra_files: dict[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the model (safetensors + config), its tokenizer and extra files into ``out_dir`` atomically.

    ``extra_files`` maps a file name to a callable ``write(path)`` (e.g. the plan and the scores);
    ``dtype`` casts the saved copy (e.g. ``torch.float16``), ``model`` itself is not changed.
    """
    to_save = get_adapter(model).savable(dtype)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # a device-mapped model is saved shard by shard from where its weights are
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            to_save.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_remote_code(to_save, tmp)  # widths no stock field holds: the family's modeling file + auto_map
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)

    return atomic_dir(out_dir, write, overwrite)


def fp16_checkpoint_size(model: nn.Module, folder: Path) -> tuple[int, int]:
    """(bytes on disk, values stored) of ``model`` saved as an fp16 checkpoint in ``folder``: what a user ships."""
    import math

    from safetensors import safe_open

    save_pruned(model, folder, dtype=torch.float16)
    files = sorted(folder.glob("*.safetensors"))
    values = 0
    for file in files:
        with safe_open(str(file), "pt") as f:
            values += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118
    return sum(p.stat().st_size for p in files), values


def loading_line(folder: str | Path) -> str:
    """The ONE line that loads checkpoint ``folder`` where it goes: plain ``from_pretrained`` for stock widths,
    with ``trust_remote_code=True`` where it carries its family's modeling file, ``taskprune.load_pruned`` for a
    low-rank (svd) one."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    auto = "AutoModelForSeq2SeqLM" if raw.get("is_encoder_decoder") else "AutoModelForCausalLM"
    if raw.get(LOWRANK_KEY):
        return f"taskprune.load_pruned({str(folder)!r})  (low-rank layers have no transformers class)"
    if raw.get(REMOTE_KEY):
        return (f"transformers.{auto}.from_pretrained({str(folder)!r}, trust_remote_code=True)  (its widths have no "
                f"stock config field: it carries {raw[REMOTE_KEY]['file']}; --allocate uniform gives a checkpoint "
                "plain from_pretrained loads)")
    return f"transformers.{auto}.from_pretrained({str(folder)!r})"


def loading_notes(plan: Any, folder: str | Path | None) -> list[str]:  # noqa: ANN401
    """One line each on how ``plan``'s rates were spread and its weights repaired, then how to load the checkpoint
    saved in ``folder`` (what ``compress`` and ``demo --out`` print after saving)."""
    lines = []
    if plan is not None and getattr(plan, "self_labelled", None):
        lines.append(f"scoring: the {plan.samples} labelled examples and {plan.self_labelled} calibration inputs "
                     "labelled by the dense model's own predictions (--no-self-label: the labelled ones alone)")
    if plan is not None and plan.allocation:
        a = plan.allocation
        widths = {n: len(g["keep"]) for n, g in plan.groups.items()}
        lines.append(f"allocation: {a['method']}, {a['removed_fraction']:.1%} of the prunable parameters removed; "
                     f"widths range {min(widths.values())}-{max(widths.values())} per group")
    if plan is not None and plan.repaired_with:
        r = plan.repair
        lines.append(f"repair: {r['mode']} on {r['calibration_examples']} calibration inputs ({r['groups']} groups "
                     "re-solved)")
    if folder is not None:
        lines.append(f"load it with: {loading_line(folder)}")
    return lines
