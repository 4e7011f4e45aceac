"""A model's fingerprint: what a plan records so that it is never applied to another model."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..runtime.placement import weight_value

_SAMPLES_PER_TENSOR = 4096


@torch.no_grad()
def fingerprint(model: nn.Module) -> str:
    """Hash of the architecture, every tensor's name and shape and a strided sample of its values.

    Sampling keeps this fast on large models (a full hash of t5-base takes seconds) while any two
    checkpoints that differ by training, pruning or architecture differ in the hash. Values are hashed
    in float16 so the same weights loaded in fp32 or fp16 share one fingerprint.
    """
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}".encode())
        if tensor.device.type == "meta":  # offloaded by a device map: hash the values where they are kept
            owner, _, attr = name.rpartition(".")
            tensor = weight_value(model.get_submodule(owner), attr)
        flat = tensor.detach().reshape(-1)
        if flat.numel():
            step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
            h.update(flat[::step].to(torch.float16).cpu().numpy().tobytes())
    return h.hexdigest()[:16]
