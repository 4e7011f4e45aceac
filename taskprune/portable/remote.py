"""Remote code for checkpoints whose widths no stock config field holds (the Nemotron/DeciLM convention).

The family's adapter says which modeling file and class express its widths (:meth:`Adapter.remote_code`, the
per-layer shapes recorded in the config); the file is copied byte for byte next to the weights, and the config
gets ``auto_map`` (for the model class only: the config stays the family's stock one, so ``AutoConfig``,
``AutoTokenizer`` and tools reading ``model_type`` need no remote code and never prompt for it) and the file's
SHA-256 (``taskprune_remote_code``), which taskprune's own loaders check before they read such a folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TaskpruneError
from ..models import get_adapter
from ..sources.hf import auto_model_class

HERE = Path(__file__).resolve().parent
#: config key: {"file": the modeling file's name, "sha256": its hash}
REMOTE_KEY = "taskprune_remote_code"



def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stock_expresses(model: nn.Module) -> bool:
    """True if the stock class built from ``model``'s config has exactly ``model``'s parameter shapes (the config's
    stock fields hold every width), checked by building that model on the meta device (no memory, no weights)."""
    config = model.config
    with torch.device("meta"):
        stock = auto_model_class(config).from_config(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in stock.state_dict().items()}
    return want == have


def write_remote_code(model: nn.Module, folder: Path) -> bool:
    """After ``save_pretrained(folder)``: make ``folder`` load with ``trust_remote_code=True`` when its widths need
    it (returns whether they did). A dense model, or uniform widths, stays a stock checkpoint."""
    if not getattr(model.config, "taskprune_widths", None) or stock_expresses(model):
        return False
    spec = get_adapter(model).remote_code()
    if spec is None:
        return False
    source = HERE / spec["file"]
    shutil.copyfile(source, folder / spec["file"])
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(spec["config"])
    config[REMOTE_KEY] = {"file": spec["file"], "sha256": sha256(source)}
    stem = spec["file"].removesuffix(".py")
    config["auto_map"] = {auto: f"{stem}.{name}" for auto, name in spec["auto_map"].items()}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def check_remote_code(folder: Path, config: dict[str, Any]) -> None:
    """A remote-code checkpoint's modeling file must be in ``folder`` with the hash its config records: one line
    naming it otherwise (taskprune reads such a folder as its stock family, but a user's transformers would run
    that file)."""
    remote = config.get(REMOTE_KEY)
    if not remote:
        return
    try:
        name, expected = str(remote["file"]), str(remote["sha256"])
    except (KeyError, TypeError):
        raise TaskpruneError(f"{folder / 'config.json'}: {REMOTE_KEY} must name the modeling file and its sha256") from None
    file = folder / name
    if not file.is_file():
        raise TaskpruneError(f"{folder} names remote code {name} in its config (auto_map) but the file is missing: "
                             "copy the whole checkpoint folder")
    if sha256(file) != expected:
        raise TaskpruneError(f"{file} is not the file this checkpoint was saved with (SHA-256 {sha256(file)[:12]}... "
                             f"vs {expected[:12]}... recorded in config.json): it was changed; restore it")
