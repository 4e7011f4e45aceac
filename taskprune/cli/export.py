"""``taskprune export``: a compressed (or dense) decoder-only checkpoint as a GGUF file for llama.cpp (and so
Ollama and LM Studio), quantized by llama.cpp's own quantizer."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..files import check_writable
from ..portable.gguf import TYPES, export_gguf, plan_layers
from . import inputs
from .options import add_model, add_out
from .render import echo


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("export", help="write a decoder-only checkpoint as a GGUF file (llama.cpp, Ollama, LM Studio)",
                description="Uniform widths become the family's own llama.cpp architecture (llama, qwen2, qwen3); "
                            "per-layer widths become deci, whose graph reads each layer's head counts and FFN size. "
                            "The tokenizer and chat template go in the file.")
    add_model(p)
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    p.add_argument("--quantize", default="f16", choices=list(TYPES), metavar="TYPE",
                   help=f"tensor type: {', '.join(TYPES)} (default f16; quantized types are made by llama.cpp's "
                        "quantizer and need llama-cpp-python)")
    add_out(p, "output .gguf file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    check_writable(args.out, args.overwrite, folder=False)
    if args.quantize not in ("f32", "f16", "bf16"):
        from ..portable.gguf import llama_cpp

        llama_cpp()  # the quantizer is there, before the model loads
    path, model, tok = inputs.load(args)
    arch, layers, head_dim = plan_layers(model)  # what llama.cpp cannot run is refused before anything is written
    out, arch, warnings = export_gguf(model, tok, args.out, args.quantize, overwrite=args.overwrite)
    widths = "per-layer widths" if arch == "deci" else "uniform widths"
    echo(f"{path} -> {out} ({arch}: {widths}, {len(layers)} layers, head size {head_dim}; {args.quantize}, "
         f"{out.stat().st_size / 1e6:.1f} MB)")
    for warning in warnings:
        echo(f"llama.cpp quantizer: {warning}" + (" (compress with --multiple-of 32, 256 for k-quants, to quantize "
                                                  "them all)" if "no multiple" in warning else ""))
    echo(f"run it: llama-cli -m {out}  |  Ollama Modelfile: FROM ./{out.name}  |  "
         f"taskprune eval --model {out} --backend llama.cpp --task T")
