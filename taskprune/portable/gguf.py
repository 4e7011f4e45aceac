"""GGUF export: a (pruned or dense) Llama-layout checkpoint as a llama.cpp model file, quantized by llama.cpp.

Uniform widths are written as the family's own architecture (``llama`` for Llama/Mistral/SmolLM2, ``qwen2``,
``qwen3``), which every llama.cpp build reads. Per-layer widths are written as ``deci`` (Nemotron-NAS), the one
architecture whose graph reads ``n_head(il)``, ``n_head_kv(il)`` and ``n_ff(il)`` per layer (the ``llama`` graph
uses layer 0's everywhere). Facts of llama.cpp this writer is built around (measured, see issue #27):

- For ``llama`` and ``deci`` (interleaved rotary pairs) Q and K rows are stored in llama.cpp's order (its
  converter's ``permute``), per layer with that layer's head counts, q/k biases too; ``qwen2``/``qwen3`` rotate
  halves as Hugging Face stores them. llama.cpp's ``qwen2`` graph sizes Q as hidden x hidden, so a Qwen2 with
  fewer query heads is written as ``deci`` too.
- One head size for all layers; ``n_head(il)`` a multiple of ``n_head_kv(il)``. An attention pruned away is
  written as the one all-zero head taskprune keeps in its place (exact: its output projection is zero).
- A layer with attention but ``n_ff == 0`` would lose its attention output in ``deci`` (llama.cpp skips the
  residual add): such a layer is written with one FFN unit whose down-projection column is zero (exact).
- The tokenizer and chat template come from the GGUF file the base model was converted from, when there is one
  (copied key for key); else they are built from the Hugging Face tokenizer (BPE vocabulary and merges).
- Quantized types are made by llama.cpp's own quantizer (``llama_model_quantize``) from an f32 file; a tensor
  whose row length is not a multiple of the type's block falls back to another type (``--multiple-of`` at
  compress time aligns widths).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TaskpruneError
from ..files import atomic_write
from ..sources.gguf import SOURCE_KEY

#: HF model type -> llama.cpp architecture of a uniform-width export
ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
PER_LAYER_ARCH = "deci"
#: written directly by this module
FLOAT_TYPES = ("f32", "f16", "bf16")
#: made by llama.cpp's quantizer (name -> llama_ftype attribute of llama_cpp)
QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
               "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
               "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
               "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
               "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K"}
TYPES = (*FLOAT_TYPES, *QUANT_TYPES)


@dataclass(frozen=True)
class Layer:
    """One decoder layer as written: query heads, key/value heads, FFN units (after the placeholders)."""

    heads: int
    kv_heads: int
    ffn: int


def check_type(name: str) -> str:
    if name not in TYPES:
        raise TaskpruneError(f"unknown GGUF type {name!r}; choose from {', '.join(TYPES)}")
    return name


def plan_layers(model: nn.Module) -> tuple[str, list[Layer], int]:
    """(llama.cpp architecture, every layer's written widths, head size); refuses what llama.cpp cannot run."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in ARCHS:
        raise TaskpruneError(f"GGUF export is for decoder-only Llama-layout models ({', '.join(ARCHS)}); this is a "
                             f"model of type {model_type or type(model).__name__} (seq2seq models have no llama.cpp graph here)")
    if getattr(config, "taskprune_lowrank", None):
        raise TaskpruneError("a low-rank (svd) checkpoint has factorised layers, which no GGUF architecture holds: "
                             "export a checkpoint pruned by units")
    layers, head_dims = [], set()
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        d = int(attn.head_dim)
        head_dims.add(d)
        heads = attn.q_proj.out_features // d  # a pruned-away attention keeps one zero head: written as it is
        ffn = max(mlp.down_proj.in_features, 1)  # n_ff == 0 would drop the attention output in deci: one zero unit
        layers.append(Layer(heads, attn.k_proj.out_features // d, ffn))
    if len(head_dims) != 1:
        raise TaskpruneError(f"layers have different head sizes ({sorted(head_dims)}): llama.cpp needs one head size")
    d = head_dims.pop()
    uniform = len(set(layers)) == 1
    # llama.cpp's qwen2 graph sizes Q as hidden x hidden: fewer query heads than that need deci, which reads them
    stock = uniform and not (model_type == "qwen2" and layers[0].heads * d != config.hidden_size)
    arch = ARCHS[model_type] if stock else PER_LAYER_ARCH
    if arch == PER_LAYER_ARCH and model_type == "qwen3":
        raise TaskpruneError("Qwen3's per-head q/k norms have no per-layer GGUF architecture (deci has none): compress "
                             "with --allocate uniform for a stock qwen3 GGUF")
    if arch == "qwen3" and any(lin.bias is not None for layer in model.model.layers
                               for lin in (*layer.mlp.children(), layer.self_attn.o_proj) if isinstance(lin, nn.Linear)):
        raise TaskpruneError("llama.cpp's qwen3 architecture has no o_proj/FFN bias tensors, which this model's repair "
                             "added (FLAP's bias compensation or --repair-centred): compress with --repair ls or none "
                             "for a qwen3 GGUF")
    return arch, layers, d


def _rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) -> llama.cpp's (interleaved pairs), for the rows of one layer's Q or K."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config: Any) -> float:  # noqa: ANN401
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


#: architectures whose graph rotates interleaved pairs (llama.cpp's "norm" rope): Q/K rows are permuted for them;
#: qwen2/qwen3 rotate halves ("neox"), as Hugging Face stores them
PERMUTED = ("llama", PER_LAYER_ARCH)


def _tensors(model: nn.Module, layers: list[Layer], arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every weight, in llama.cpp's names and layouts."""
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).cpu().numpy()

    def rope(w: np.ndarray, n_head: int) -> np.ndarray:
        return _rope_permute(w, n_head) if arch in PERMUTED else w

    out = [("token_embd.weight", arr(model.model.embed_tokens.weight))]
    for i, (layer, widths) in enumerate(zip(model.model.layers, layers)):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"blk.{i}."
        out.append((p + "attn_norm.weight", arr(layer.input_layernorm.weight)))
        for name, lin, n in (("attn_q", attn.q_proj, widths.heads), ("attn_k", attn.k_proj, widths.kv_heads)):
            out.append((p + name + ".weight", rope(arr(lin.weight), n)))
            if lin.bias is not None:
                out.append((p + name + ".bias", rope(arr(lin.bias), n)))
        out.append((p + "attn_v.weight", arr(attn.v_proj.weight)))
        if attn.v_proj.bias is not None:
            out.append((p + "attn_v.bias", arr(attn.v_proj.bias)))
        out.append((p + "attn_output.weight", arr(attn.o_proj.weight)))
        if attn.o_proj.bias is not None:  # FLAP's compensation / a centred repair (pruning/biases.py)
            out.append((p + "attn_output.bias", arr(attn.o_proj.bias)))
        for norm in ("q_norm", "k_norm"):  # Qwen3: per-head RMS norms over head_dim
            if hasattr(attn, norm):
                out.append((p + f"attn_{norm[0]}_norm.weight", arr(getattr(attn, norm).weight)))
        out.append((p + "ffn_norm.weight", arr(layer.post_attention_layernorm.weight)))
        gate, up, down = arr(mlp.gate_proj.weight), arr(mlp.up_proj.weight), arr(mlp.down_proj.weight)
        if gate.shape[0] == 0:  # pruned away: one unit whose output column is zero contributes exactly nothing
            gate, up = np.zeros((1, gate.shape[1]), np.float32), np.zeros((1, up.shape[1]), np.float32)
            down = np.zeros((down.shape[0], 1), np.float32)
        out += [(p + "ffn_gate.weight", gate), (p + "ffn_up.weight", up), (p + "ffn_down.weight", down)]
        for name, lin in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj), ("ffn_down", mlp.down_proj)):
            if lin.bias is not None:  # a zero-unit FFN's placeholder unit gets a zero bias entry
                b = arr(lin.bias)
                out.append((p + name + ".bias", b if b.shape[0] else np.zeros(1, np.float32)))
    out.append(("output_norm.weight", arr(model.model.norm.weight)))
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.model.embed_tokens.weight:  # tied: llama.cpp reuses token_embd
        out.append(("output.weight", arr(head.weight)))
    return out


def _copy_tokenizer(writer: Any, source: Path) -> None:  # noqa: ANN401
    """Every ``tokenizer.*`` key of the GGUF file the base came from, with its exact types."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)


def _build_tokenizer(writer: Any, tokenizer: Any) -> None:  # noqa: ANN401
    """A GGUF tokenizer from a Hugging Face fast tokenizer: a BPE one (vocabulary, merges, special ids, chat
    template) as llama.cpp's ``gpt2`` model; any other as ``no_vocab`` (llama.cpp then runs token ids only, which
    is what taskprune's llama.cpp backend feeds it)."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or not model.get("merges"):
        writer.add_tokenizer_model("no_vocab")
        return
    vocab = tokenizer.get_vocab()
    tokens = [""] * (max(vocab.values()) + 1)
    for text, i in vocab.items():
        tokens[i] = text
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for name, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                         ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        value = getattr(tokenizer, name, None)
        if value is not None:
            setter(int(value))
    writer.add_add_bos_token(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def write_gguf(model: nn.Module, tokenizer: Any, path: Path, dtype: str = "f32",  # noqa: ANN401
               source: Path | None = None) -> str:
    """Write ``model`` as a GGUF file at ``path`` in a float type; returns the architecture written."""
    import gguf

    arch, layers, head_dim = plan_layers(model)
    config = model.config
    per_layer = arch == PER_LAYER_ARCH
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(str(getattr(config, "_name_or_path", "") or "taskprune export").rsplit("/", 1)[-1])
    writer.add_block_count(len(layers))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length([ln.ffn for ln in layers] if per_layer else layers[0].ffn)
    writer.add_head_count([ln.heads for ln in layers] if per_layer else layers[0].heads)
    writer.add_head_count_kv([ln.kv_heads for ln in layers] if per_layer else layers[0].kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]
    writer.add_file_type(int(file_type))
    if source is not None and source.is_file():
        _copy_tokenizer(writer, source)
    else:
        _build_tokenizer(writer, tokenizer)
    for name, value in _tensors(model, layers, arch):
        if value.ndim == 1 or dtype == "f32":  # norms and biases stay f32, as llama.cpp's converter writes them
            writer.add_tensor(name, value.astype(np.float32))
        elif dtype == "f16":
            writer.add_tensor(name, value.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(value, gguf.GGMLQuantizationType.BF16),
                              raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arch


def llama_cpp() -> Any:  # noqa: ANN401
    """The llama-cpp-python module, or one line saying how to install it."""
    try:
        import llama_cpp as module
    except ImportError:
        raise TaskpruneError("quantizing and running GGUF files needs llama-cpp-python: pip install "
                             "llama-cpp-python==0.3.36 (a source build, 16-28 min on 2 cores; the project's "
                             "`make` takes a prebuilt wheel from ../shared/wheels where it exists)") from None
    return module


def quantize(source: Path, out: Path, kind: str) -> list[str]:
    """llama.cpp's own quantizer: ``source`` (an f32/f16 GGUF) -> ``out`` in type ``kind``. Its per-tensor log
    (written by C to file descriptor 2) is kept out of the terminal; its warnings are returned (e.g. tensors whose
    rows are not a multiple of the type's block fell back to another type)."""
    import os

    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANT_TYPES[kind])
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            code = lib.llama_model_quantize(str(source).encode(), str(out).encode(), params)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    if code != 0:
        raise TaskpruneError(f"llama.cpp could not quantize {source} to {kind} (code {code}): "
                             f"{' '.join(lines[-2:])[:300]}")
    return summarize_quantizer_log(lines, kind)


_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by\s+(\d+).*falling back to\s+(\S+)")


def summarize_quantizer_log(lines: list[str], kind: str) -> list[str]:
    """The quantizer's warnings, its per-tensor fallbacks (rows that are no multiple of the type's block stay at a
    wider type) as one line naming the tensors, their widths and the type they kept."""
    fallbacks = [m.groups() for ln in lines if (m := _FALLBACK.search(ln))]
    out = [ln.split("WARNING:", 1)[1].strip() for ln in lines
           if "WARNING:" in ln and not _FALLBACK.search(ln) and "required fallback" not in ln]
    if fallbacks:
        names = ", ".join(f"{n} ({c})" for n, c, _, _ in fallbacks[:4]) + (", ..." if len(fallbacks) > 4 else "")
        kept = "/".join(sorted({f for *_, f in fallbacks}))
        block = fallbacks[0][2]
        out.append(f"{len(fallbacks)} tensor(s) stay {kept}, not {kind}: their rows are no multiple of {kind}'s "
                   f"block of {block}: {names}")
    return out


def export_gguf(model: nn.Module, tokenizer: Any, out: str | Path, kind: str = "f16",  # noqa: ANN401
                overwrite: bool = False) -> tuple[Path, str, list[str]]:
    """``model`` as GGUF file ``out`` of type ``kind`` (written atomically); returns (path, architecture, the
    quantizer's warnings)."""
    check_type(kind)
    plan_layers(model)  # refusals first: nothing is written for a model llama.cpp cannot run
    if kind in QUANT_TYPES:
        llama_cpp()
    source = getattr(model.config, SOURCE_KEY, None)
    source = Path(source) if source else None
    arch: list[str] = []
    warnings: list[str] = []

    def write(tmp: Path) -> None:
        if kind in FLOAT_TYPES:
            arch.append(write_gguf(model, tokenizer, tmp, kind, source))
            return
        with tempfile.TemporaryDirectory(dir=tmp.parent) as scratch:
            f32 = Path(scratch) / "f32.gguf"
            arch.append(write_gguf(model, tokenizer, f32, "f32", source))
            warnings.extend(quantize(f32, tmp, kind))

    path = atomic_write(out, write, overwrite)
    return path, arch[0], warnings

