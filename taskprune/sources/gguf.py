"""GGUF files (llama.cpp's format) as models: converted once into a plain safetensors folder.

``from_pretrained`` loads the converted folder in a fraction of a second, and that folder is what every command
then works on: ``$TASKPRUNE_CACHE/gguf/<file stem>-<key>/``, reused while the file is unchanged (the key hashes its
size and its first and last MiB). Quantised weights are dequantised to float32: the rounding of the quantisation
stays, so the converted model IS the reference for pruning.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TaskpruneError
from .cache import cache_dir, cached_dir, file_key

#: config attribute of a model whose weights came from a GGUF file: that file (its tokenizer is copied on export)
SOURCE_KEY = "taskprune_source_gguf"


def gguf_in(folder: Path) -> Path | None:
    if (folder / "config.json").is_file():
        return None
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        raise TaskpruneError(f"{folder} holds several GGUF files ({', '.join(p.name for p in found)}); "
                             "pass --model with the one you mean")
    return found[0] if found else None


def convert_gguf(path: Path) -> Path:
    """The cached safetensors folder of GGUF file ``path`` (converted now if not yet)."""
    out = cache_dir() / "gguf" / f"{path.stem}-{file_key(path)}"
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

