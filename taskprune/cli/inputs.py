"""What the arguments name, loaded: the model (placed by --device-map or on this rank's device), its tokenizer,
the task and its examples. Inputs are read in the order that names a mistake soonest (data before the model)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..api import default_data_dir, default_model_dir
from ..applies import check_args
from ..checkpoint import load_model, load_tokenizer, model_skeleton
from ..errors import TaskpruneError
from ..lm import use_chat_template
from ..pruning.rates import RateSpec, check_rates_fit
from ..runtime.distributed import current, device_for
from ..runtime.placement import max_memory_for_rank
from ..tasks import Example, Task, get_task, load_examples, sample_k_shot
from .options import DTYPES
from .render import echo


def model_path(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    default = default_model_dir()
    if default is None:
        raise TaskpruneError("no --model given and the default model (models/minilm-glue6) is not installed")
    return str(default)


def load(args: argparse.Namespace, rates: RateSpec | None = None) -> tuple[str, nn.Module, Any]:
    """(path, model, tokenizer): the model placed by --device-map, or on this rank's device. Before its weights
    load, the options are checked against its skeleton (:mod:`taskprune.applies`), and ``rates`` against its
    blocks and groups: ``--depth-rate 50-60=0.2`` on a 6-block model would otherwise prune nothing, silently."""
    path = model_path(args)
    skeleton = model_skeleton(path)
    if skeleton is not None:
        check_args(args, skeleton)
        if rates is not None:
            check_rates_fit(rates, skeleton, "--depth-rate")
    name = DTYPES[args.dtype]
    dtype = getattr(torch, name) if name else None
    device_map = getattr(args, "device_map", None)
    shard = current()
    if device_map is None:
        model = load_model(path, dtype=dtype)
        device = device_for(shard)
        if device.type != "cpu":
            model.to(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if shard.active else 1
        memory = max_memory_for_rank(shard.local_rank, local_world) if isinstance(device_map, str) else None
        model = load_model(path, dtype=dtype, device_map=device_map, offload_folder=args.offload_folder,
                           max_memory=memory)
    tokenizer = load_tokenizer(path)
    use_chat_template(tokenizer, getattr(args, "chat_template", "auto"))
    return path, model, tokenizer


def gguf_tokenizer(gguf: Path, tokenizer: str | None, chat_template: str) -> Any:  # noqa: ANN401
    """The Hugging Face tokenizer that builds prompts for a GGUF file: ``--tokenizer``, else the file's own."""
    if tokenizer:
        tok = load_tokenizer(tokenizer)
    else:
        from transformers import PreTrainedTokenizerFast  # not AutoTokenizer: it reads the architecture (deci)

        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise TaskpruneError(f"cannot read a tokenizer from {gguf} ({' '.join(str(err).split())[:300]}): pass "
                                 "--tokenizer with the checkpoint folder it was exported from") from None
    use_chat_template(tok, chat_template)
    return tok


def data_dir(args: argparse.Namespace) -> str | None:
    if args.data_dir:
        return args.data_dir
    env = default_data_dir()
    return str(env) if env else None


def task(name: str) -> Task:
    """The task called ``name`` (built-in, or a task file)."""
    return get_task(name)


def examples(args: argparse.Namespace, t: Task, split: str) -> list[Example]:
    return load_examples(t, split, data_dir(args), source=args.source)


def fit_sample(args: argparse.Namespace, t: Task) -> list[Example]:
    return sample_k_shot(examples(args, t, "fit"), args.samples, seed=args.seed)


def eval_examples(args: argparse.Namespace, t: Task) -> list[Example]:
    """The eval split (capped by --eval-examples), or none with a word why (--no-eval, or no such split)."""
    if args.no_eval:
        return []
    try:
        found = examples(args, t, "eval")
    except TaskpruneError as err:
        echo(f"(no evaluation: {err})")
        return []
    return found[: args.eval_examples] if args.eval_examples else found


def quiet_transformers() -> None:
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # no "Retrying in 8s" lines before the one error line of an unknown model
