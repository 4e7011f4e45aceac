"""The repaired tensors of a compression, stored beside its plan so a server can cut the REPAIRED model from the base.

A plan holds the kept units; weight repair (:mod:`.repair`) then re-solves some consumer tensors (down_proj,
o_proj, wo, ...) and may add biases (FLAP's compensation on bias-less consumers). Cutting the plan from the base
gives every other tensor exactly (slices of the base); the tensors repair changed are the only extra bytes a task
needs. ``repair.safetensors`` holds them, by parameter name of the pruned model, bound to the plan and to the base
model's fingerprint by hash, so a file never meets a plan or a base it was not made for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import TaskpruneError
from ..files import atomic_write
from .apply import apply
from .plan import PruningPlan

REPAIR_FILE = "repair.safetensors"
FORMAT = "taskprune-repair/1"


def plan_digest(plan: PruningPlan) -> str:
    """SHA-256 of the plan's canonical JSON (key order and whitespace do not matter; every field does)."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()


def repaired_tensors(plan: PruningPlan, base: nn.Module, repaired: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters and buffers of ``repaired`` (the plan applied to a repaired copy of ``base``) that the plain
    cut of ``base`` does not give bit for bit: changed ones and ones repair added."""
    cut = apply(plan, base, check=False, share=True).state_dict()
    out = {}
    for name, t in repaired.state_dict().items():
        ref = cut.get(name)
        if ref is None or ref.shape != t.shape or ref.dtype != t.dtype or not torch.equal(ref, t):
            out[name] = t.detach().to("cpu").contiguous().clone()
    return out


def consumer_tensors(model: nn.Module, consumers: list[str]) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the ``consumers`` (module names) of a model repaired and pruned IN PLACE: what
    :func:`repaired_tensors` gives when no plain cut of the base is left to compare with (a consumer repair left
    bit for bit unchanged is included too, which a server loads to the same values). The model's own tensors, not
    copies: a model pruned in place to fit memory should not hold its consumers twice."""
    prefixes = tuple(c + "." for c in consumers)
    return {name: t.detach() for name, t in model.state_dict().items() if name.startswith(prefixes)}


def save_repaired(tensors: dict[str, torch.Tensor], path: str | Path, plan: PruningPlan,
                  overwrite: bool = True) -> Path:
    from safetensors.torch import save

    meta = {"format": FORMAT, "plan_sha256": plan_digest(plan), "base_fingerprint": plan.base_fingerprint}
    data = save(tensors, metadata=meta)
    return atomic_write(path, lambda p: p.write_bytes(data), overwrite=overwrite)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (8-byte little-endian header length, then the JSON header)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}


def read_repaired(data: bytes, plan: PruningPlan, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``repair.safetensors`` (its bytes), checked against ``plan``; one line naming ``where``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors, meta = load(data), _metadata(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as err:
        raise TaskpruneError(f"{where} is not a readable safetensors file: {err}") from None
    if meta.get("format") != FORMAT:
        raise TaskpruneError(f"{where} is not a taskprune repair file (expected format {FORMAT!r})")
    if meta.get("base_fingerprint") != plan.base_fingerprint:
        raise TaskpruneError(f"{where} was made for another base model (fingerprint {meta.get('base_fingerprint')}, "
                             f"the plan's {plan.base_fingerprint})")
    if meta.get("plan_sha256") != plan_digest(plan):
        raise TaskpruneError(f"{where} belongs to another plan (its plan hash differs): keep plan.json and "
                             f"{REPAIR_FILE} of one compress output together")
    return tensors


def load_repaired(path: str | Path, plan: PruningPlan) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TaskpruneError(f"cannot read {path}: {err.strerror or err}") from None
    return read_repaired(data, plan, str(path))


def check_fits(cut: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Every stored tensor replaces one of the cut's own of the same shape, or adds a bias to a Linear without one."""
    own = cut.state_dict()
    for name, t in tensors.items():
        if name in own:
            if own[name].shape != t.shape:
                raise TaskpruneError(f"{where}: {name} has shape {list(t.shape)}, the cut model's "
                                     f"{list(own[name].shape)}")
            continue
        module_name, _, attr = name.rpartition(".")
        module = cut.get_submodule(module_name) if module_name else cut
        if not (attr == "bias" and isinstance(module, nn.Linear) and module.bias is None
                and list(t.shape) == [module.out_features]):
            raise TaskpruneError(f"{where}: {name} is neither a tensor of the cut model nor a bias it can take")


def with_repaired(cut: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """``cut`` (a plan applied to the base) with the stored tensors in place of its own (new parameters: the base's
    tensors a shared cut holds are never written), biases added where repair added them."""
    for name, t in tensors.items():
        module_name, _, attr = name.rpartition(".")
        module = cut.get_submodule(module_name) if module_name else cut
        old = getattr(module, attr, None)
        dtype = old.dtype if isinstance(old, torch.Tensor) else next(module.parameters()).dtype
        device = old.device if isinstance(old, torch.Tensor) else next(module.parameters()).device
        value = t.to(device=device, dtype=dtype)
        if attr in module._buffers:
            module._buffers[attr] = value
        else:
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
    return cut
