"""GGUF files (llama.cpp's format) as models: converted once into a plain safetensors folder.

``from_pretrained`` loads the converted folder in a fraction of a second, and that folder is what every command
then works on: ``$TASKPRUNE_CACHE/gguf/<file stem>-<key>/``, reused while the file is unchanged (the key hashes its
size and its first and last MiB). Quantised weights are dequantised to float32: the rounding of the quantisation
stays, so the converted model IS the reference for pruning.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TaskpruneError, library_message
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


#: the GGUF architectures taskprune prunes (llama.cpp's names; Mistral's files say llama)
PRUNABLE_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
#: tensors every such file has (the rest is checked by the conversion)
REQUIRED_TENSORS = ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                    "blk.0.attn_v.weight", "blk.0.ffn_down.weight")


def check_gguf_header(path: Path) -> None:
    """Architecture, tensor set and tokenizer, read from the header (no tensor data): a file that cannot become a
    model taskprune prunes is refused in one line before a conversion that can take minutes."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any failure to parse is the file's
        raise TaskpruneError(f"cannot read GGUF file {path}: {library_message(err)}") from None

    def field(key: str) -> object:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    if arch not in PRUNABLE_ARCHITECTURES:
        raise TaskpruneError(f"{path}: GGUF architecture {arch!r} is not one taskprune prunes (it reads "
                             f"{', '.join(PRUNABLE_ARCHITECTURES)})")
    names = {t.name for t in reader.tensors}
    missing = [n for n in REQUIRED_TENSORS if n not in names]
    if missing:
        raise TaskpruneError(f"{path}: a {arch} GGUF without tensor(s) {', '.join(missing)}: the file is incomplete")
    tokens = field("tokenizer.ggml.tokens")
    if not tokens:
        raise TaskpruneError(f"{path} has no tokenizer (tokenizer.ggml.tokens): taskprune needs the model's own "
                             "tokenizer to build prompts")
    vocab = set(tokens)  # type: ignore[arg-type]
    for i, merge in enumerate(field("tokenizer.ggml.merges") or []):  # type: ignore[union-attr]
        parts = str(merge).split(" ", 1)
        if len(parts) != 2 or any(p not in vocab for p in parts) or "".join(parts) not in vocab:
            raise TaskpruneError(f"{path}: tokenizer merge {i} ({merge!r}) names a token missing from the file's "
                                 "vocabulary: the tokenizer is damaged")


def convert_gguf(path: Path) -> Path:
    """The cached safetensors folder of GGUF file ``path`` (converted now if not yet, after its header is checked)."""
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

    check_gguf_header(path)

    def write(tmp: Path) -> None:
        kw = {"gguf_file": path.name}
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), **kw,
                                                         quantization_config=GgufConfig(dequantize=True))
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kw)
        except Exception as err:  # noqa: BLE001 - transformers, gguf and tokenizers all raise for a bad file
            raise TaskpruneError(f"cannot read GGUF file {path}: {library_message(err)}") from None
        model.config.quantization_config = None  # dequantised: the saved folder is plain float32
        if hasattr(model, "hf_quantizer"):
            model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "taskprune-source.json").write_text(json.dumps({"gguf": str(path.resolve()), "key": out.name}) + "\n")

    return cached_dir(out, write)

