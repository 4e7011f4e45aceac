"""Where a model's weights live: one device, or spread over GPUs, CPU RAM and disk by an accelerate device map.

Models bigger than one device are loaded with transformers' ``device_map=`` (accelerate's big-model dispatch:
``infer_auto_device_map`` + ``dispatch_model``; pruned checkpoints with ``load_checkpoint_and_dispatch``).
Accelerate's hooks then move each block's weights to its execution device just before the block runs and, for
offloaded blocks, drop them again right after (the parameters themselves stay on the ``meta`` device).

Everything else in taskprune reaches weights through this module where they may be offloaded:

- :func:`execution_device`: where inputs and score accumulators go (never ``meta``);
- :func:`weight_value` / :func:`set_weight`: read and replace a parameter whether it is resident or offloaded
  (slicing and fingerprints use them, so a dispatched model prunes and hashes exactly like an in-memory one);
- :func:`offloaded_weights_refetched`: scoring's backward pass reads offloaded weights again instead of keeping
  every one of them alive in the autograd graph.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..errors import TaskpruneError

DeviceMap = Union[str, dict[str, Union[int, str]]]
#: the named strategies of accelerate / transformers (``auto`` = ``balanced`` over the GPUs, then CPU, then disk)
NAMED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text: str) -> DeviceMap:
    """``auto|balanced|balanced_low_0|sequential``, a JSON object ``{"module": device}`` or a ``.json`` file of one.

    Devices: a GPU index (``0``), ``"cuda:N"``, ``"cpu"`` (CPU RAM; with GPUs present, offloaded there and run on
    the GPU) or ``"disk"`` (offloaded to ``--offload-folder``). Checked here, before any weight is read.
    """
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise TaskpruneError("--device-map needs the accelerate package: pip install accelerate")
    text = text.strip()
    if text in NAMED_MAPS:
        return text
    source = "--device-map"
    if not text.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise TaskpruneError(f"--device-map {text!r} is neither {', '.join(NAMED_MAPS)}, a JSON object nor a "
                                 "JSON file")
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskpruneError(f"{source} is not valid JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise TaskpruneError(f"{source} must be a non-empty JSON object mapping module names to devices")
    n_gpus = torch.cuda.device_count()
    for module, device in mapping.items():
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise TaskpruneError(f"{source}: device of {module!r} must be a GPU index, \"cpu\" or \"disk\", got "
                                 f"{device!r}")
        index = device if isinstance(device, int) else (
            int(device[5:]) if device.startswith("cuda:") and device[5:].isdigit() else None)
        if index is None and device not in ("cpu", "disk", "cuda"):
            raise TaskpruneError(f"{source}: unknown device {device!r} for {module!r} (use a GPU index, \"cpu\" or "
                                 "\"disk\")")
        if (index is not None or device == "cuda") and (index or 0) >= n_gpus:
            raise TaskpruneError(f"{source}: {module!r} is mapped to GPU {index or 0} but this machine has "
                                 f"{n_gpus} GPU{'s' if n_gpus != 1 else ''}")
    return mapping


def uses_disk(device_map: DeviceMap | None) -> bool:
    """A named strategy may offload to disk too (when GPUs and RAM are full); a JSON map says it explicitly."""
    return device_map is not None and (isinstance(device_map, str) or "disk" in device_map.values())


_TEMP_FOLDERS: list[str] = []


def offload_folder(folder: str | None, device_map: DeviceMap | None) -> str | None:
    """The folder for disk-offloaded (and, after pruning, re-offloaded) weights: ``folder``, or a temp folder
    removed when the process ends."""
    if not uses_disk(device_map):
        return folder
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return folder
    tmp = tempfile.mkdtemp(prefix="taskprune-offload-")
    if not _TEMP_FOLDERS:
        atexit.register(lambda: [shutil.rmtree(f, ignore_errors=True) for f in _TEMP_FOLDERS])
    _TEMP_FOLDERS.append(tmp)
    return tmp


def max_memory_for_rank(local_rank: int, local_world: int) -> dict[Any, Any] | None:
    """Several processes on one node, each with a named device map: give each its own GPUs (GPU ``i`` belongs to
    local rank ``i % local_world``) and an equal share of CPU RAM, so that ``auto`` maps do not overlap."""
    if local_world <= 1:
        return None
    from accelerate.utils import get_max_memory

    memory = get_max_memory()
    mine: dict[Any, Any] = {k: v for k, v in memory.items() if isinstance(k, int) and k % local_world == local_rank}
    if torch.cuda.is_available() and not mine:
        raise TaskpruneError(f"{local_world} processes on this node but {torch.cuda.device_count()} GPUs: a named "
                             "--device-map needs at least one GPU per process (or give a JSON map)")
    if "cpu" in memory:
        mine["cpu"] = memory["cpu"] // local_world
    return mine


def execution_device(model: nn.Module) -> torch.device:
    """Where a batch goes in and where scores accumulate: the main device of a dispatched model (its first GPU, or
    the CPU when everything is on CPU/disk), else the device of the model's parameters."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        for device in device_map.values():
            if device not in ("cpu", "disk"):
                return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        return torch.device("cpu")
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def is_dispatched(model: nn.Module) -> bool:
    """True when accelerate placed this model (a device map spanning several devices, or offloading)."""
    return bool(getattr(model, "hf_device_map", None)) and any(
        hasattr(m, "_hf_hook") for m in model.modules())


_HOME = "_taskprune_offload"  # on each module of an offloaded block: (accelerate weights map, key prefix, folder)


def mark_offloaded(model: nn.Module, folder: str | None) -> None:
    """Tell every module inside an offloaded block where accelerate keeps its weights, and freeze every weight.

    Accelerate hooks the offloaded block or layer (its weights map is prefixed by that module's name); slicing works
    on layers, so each layer is given the map and its key prefix once, after loading. ``folder`` receives sliced
    copies of disk-offloaded weights. A placed model is scored, evaluated and pruned, never trained: its weights are
    frozen for good (accelerate re-creates offloaded placeholders after every forward pass, under
    ``inference_mode`` too, and such tensors cannot be made to require grad again).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        weights_map = getattr(hook, "weights_map", None)
        if weights_map is None or not getattr(hook, "offload", False):
            continue
        for sub_path, sub in module.named_modules():
            object.__setattr__(sub, _HOME, (weights_map, f"{sub_path}." if sub_path else "", folder))


def _offload_home(module: nn.Module, name: str) -> tuple[Any, str, str | None] | None:
    home = getattr(module, _HOME, None)
    if home is None and getattr(getattr(module, "_hf_hook", None), "offload", False):
        raise TaskpruneError("this model was dispatched with offloading outside taskprune: load it with "
                             "taskprune.load_model(..., device_map=...) (or call taskprune.runtime.placement.mark_offloaded)")
    return None if home is None else (home[0], home[1] + name, home[2])


def weight_value(module: nn.Module, name: str) -> torch.Tensor:
    """The values of ``module.<name>``: the tensor itself, or (offloaded: a ``meta`` placeholder) read from where
    accelerate offloaded it (CPU RAM or disk)."""
    tensor = getattr(module, name)
    home = _offload_home(module, name) if tensor.device.type == "meta" else None
    if home is None:  # resident (or an empty skeleton being sliced to a checkpoint's widths)
        return tensor.data
    weights_map, key, _ = home
    return weights_map[key]


def set_weight(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace ``module.<name>`` by ``value`` (a new shape, after slicing). A resident weight is replaced in place;
    an offloaded one is written back where accelerate reads it before each forward pass (CPU RAM stays RAM, disk
    goes to the offload folder), and the module keeps a ``meta`` placeholder of the new shape."""
    old = getattr(module, name)
    home = _offload_home(module, name) if old.device.type == "meta" else None
    if home is None:
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
        return
    weights_map, key, folder = home
    loader = getattr(weights_map, "dataset", weights_map)
    full = f"{getattr(weights_map, 'prefix', '')}{key}"
    value = value.detach().to("cpu").contiguous()
    if isinstance(loader, dict):
        loader[full] = value
    elif full in loader.state_dict:  # offloaded to CPU RAM (a GPU runs it): stays in RAM
        loader.state_dict[full] = value
    else:  # offloaded to disk: the sliced copy goes to disk too
        from safetensors.torch import save_file

        folder = folder or getattr(loader, "save_folder", None) or offload_folder(None, "auto")
        file = Path(folder) / f"taskprune-sliced.{full}.safetensors"
        save_file({full: value}, str(file))
        loader.index[full] = {"safetensors_file": str(file), "weight_name": full,
                              "dtype": str(value.dtype).removeprefix("torch.")}
    setattr(module, name, nn.Parameter(torch.empty(value.shape, dtype=value.dtype, device="meta"),
                                       requires_grad=old.requires_grad))


def has_offloaded(model: nn.Module) -> bool:
    return any(p.device.type == "meta" for p in model.parameters())


class _Refetch:
    """Marker of a saved weight that the backward pass reads again from where it is offloaded."""


@contextmanager
def offloaded_weights_refetched(model: nn.Module) -> Iterator[None]:
    """Within the block, the autograd graph does not keep offloaded weights alive for the backward pass.

    A backward through ``y = x W^T`` needs W (for the gradient w.r.t. x, which attribution needs even with every
    weight frozen), so by default the graph would hold every weight that accelerate loaded for the forward pass:
    at the peak, the whole model would sit on the execution device and offloading would buy nothing. Here a saved
    tensor that IS an offloaded layer's weight (its storage, while that layer's forward runs) is saved as a
    reference and read again from accelerate's weights map (CPU RAM or disk) when the backward needs it.
    """
    owners = [m for m in model.modules() if getattr(m, _HOME, None) is not None
              and any(True for _ in m.parameters(recurse=False))]
    if not owners:
        yield
        return
    live: dict[int, tuple[Any, str]] = {}  # storage address -> (weights map, key), only during that layer's forward

    def enter(module: nn.Module) -> None:
        weights_map, prefix, _ = getattr(module, _HOME)
        for name, p in module.named_parameters(recurse=False):
            if p.device.type != "meta":
                live[p.untyped_storage().data_ptr()] = (weights_map, prefix + name)

    def leave(module: nn.Module) -> None:
        for p in module.parameters(recurse=False):
            if p.device.type != "meta":
                live.pop(p.untyped_storage().data_ptr(), None)

    def pack(t: torch.Tensor) -> Any:
        if t.device.type != "meta" and live:
            home = live.get(t.untyped_storage().data_ptr())
            if home is not None:
                return (_Refetch, *home, t.device, t.dtype, t.size(), t.stride(), t.storage_offset())
        return t

    def unpack(saved: Any) -> torch.Tensor:
        if isinstance(saved, tuple) and saved and saved[0] is _Refetch:
            _, weights_map, key, device, dtype, size, stride, offset = saved
            return weights_map[key].to(device, dtype).contiguous().as_strided(size, stride, offset)
        return saved

    def around(module: nn.Module, forward: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            enter(module)
            try:
                return forward(*args, **kwargs)
            finally:
                leave(module)

        return run

    # accelerate loads a layer's weights inside the forward it wraps (module._old_forward runs between its
    # pre_forward and post_forward): torch's module hooks run outside that window and see meta tensors
    wrapped = [(m, m._old_forward) for m in owners if hasattr(m, "_old_forward")]
    for m, forward in wrapped:
        m._old_forward = around(m, forward)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for m, forward in wrapped:
            m._old_forward = forward
        live.clear()
