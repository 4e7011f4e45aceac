"""The built-in GLUE/SuperGLUE tasks, with the T5 paper's task prefixes and label words, and an instruction
prompt for decoder-only LMs (``causal_template``).

Each built-in has a :class:`Task` plus two small records that say where its data lives: a
:class:`DirSpec` for a GLUE/SuperGLUE folder in the original layout (``glue/SST-2/train.tsv``) and an
:class:`HFSpec` for the Hugging Face Hub. Loaders look these up by task name, so a user task file named
like a built-in (e.g. ``sst2`` with a different template) still loads the built-in's data.
"""

from __future__ import annotations

from dataclasses import dataclass

from taskprune.tasks.base import Task


@dataclass(frozen=True)
class DirSpec:
    """Where a task's files lie in a GLUE/SuperGLUE download and how to read them.

    ``hash_split``: the tasks whose train file is too large to ship here (QNLI, BoolQ) fall back to
    splitting the dev file by a hash of the rendered text when no train file is present.
    """

    group: str  # "glue" or "superglue": the folder above the task folder
    folder: str  # "SST-2", "CB", ...
    fit_file: str  # "train.tsv" / "train.jsonl"
    eval_file: str  # "dev.tsv" / "val.jsonl"
    renames: tuple[tuple[str, str], ...] = ()  # raw column -> normalised column
    hash_split: bool = False


@dataclass(frozen=True)
class HFSpec:
    """Hugging Face ``datasets`` location: candidate repo ids (newest first), config name, split names."""

    paths: tuple[str, ...]
    config: str
    fit_split: str = "train"
    eval_split: str = "validation"


_GLUE_HF = ("nyu-mll/glue", "glue")
_SUPERGLUE_HF = ("aps/super_glue", "super_glue")

_MRPC_RENAMES = (
    ("Quality", "label"),
    ("#1 ID", "id1"),
    ("#2 ID", "id2"),
    ("#1 String", "sentence1"),
    ("#2 String", "sentence2"),
)

_ENTAIL2 = ("entailment", "not_entailment")
_ENTAIL3 = ("entailment", "contradiction", "neutral")

def _ask(question: str, fields: str, words: tuple[str, ...]) -> str:
    """A causal-LM instruction: the question naming the label words to answer with, then the row's fields.

    Measured on SmolLM2-135M-Instruct zero-shot (64 SST-2 dev examples): this order ("Classify ... as positive or
    negative." then the review) predicted both classes (61 % accuracy); the review first, or a closing "Answer with
    one word: ..." line, made it answer one class for every example (docs/method.md)."""
    return f"{question} Answer {' or '.join(words)}.\n\n{fields}"


_SST2 = ("negative", "positive")
_MRPC = ("not_equivalent", "equivalent")

BUILTIN_TASKS: dict[str, Task] = {
    "sst2": Task("sst2", "sst2 sentence: {sentence}", _SST2, ("0", "1"),
                 causal_template="Classify the sentiment of the following movie review as positive or negative.\n\n"
                                 "{sentence}"),
    "mrpc": Task(
        "mrpc",
        "mrpc sentence1: {sentence1} sentence2: {sentence2}",
        _MRPC,
        ("0", "1"),
        metrics=("accuracy", "f1"),
        causal_template=_ask("Do these two sentences mean the same thing?",
                             "Sentence 1: {sentence1}\nSentence 2: {sentence2}", _MRPC),
    ),
    "qnli": Task("qnli", "qnli question: {question} sentence: {sentence}", _ENTAIL2, _ENTAIL2,
                 causal_template=_ask("Does the sentence contain the answer to the question?",
                                      "Question: {question}\nSentence: {sentence}", _ENTAIL2)),
    "rte": Task("rte", "rte sentence1: {sentence1} sentence2: {sentence2}", _ENTAIL2, _ENTAIL2,
                causal_template=_ask("Does the first sentence entail the second one?",
                                     "Sentence 1: {sentence1}\nSentence 2: {sentence2}", _ENTAIL2)),
    "cb": Task(
        "cb", "cb hypothesis: {hypothesis} premise: {premise}", _ENTAIL3, _ENTAIL3, metrics=("accuracy", "macro_f1"),
        causal_template=_ask("Does the premise entail the hypothesis, contradict it, or neither (neutral)?",
                             "Premise: {premise}\nHypothesis: {hypothesis}", _ENTAIL3),
    ),
    "boolq": Task("boolq", "boolq question: {question} passage: {passage}", ("false", "true"), ("false", "true"),
                  causal_template=_ask("Read the passage and answer the question.",
                                       "Passage: {passage}\nQuestion: {question}?", ("true", "false"))),
}

DIR_SPECS: dict[str, DirSpec] = {
    "sst2": DirSpec("glue", "SST-2", "train.tsv", "dev.tsv"),
    "mrpc": DirSpec("glue", "MRPC", "train.tsv", "dev.tsv", renames=_MRPC_RENAMES),
    "qnli": DirSpec("glue", "QNLI", "train.tsv", "dev.tsv", hash_split=True),
    "rte": DirSpec("glue", "RTE", "train.tsv", "dev.tsv"),
    "cb": DirSpec("superglue", "CB", "train.jsonl", "val.jsonl"),
    "boolq": DirSpec("superglue", "BoolQ", "train.jsonl", "val.jsonl", hash_split=True),
}

HF_SPECS: dict[str, HFSpec] = {
    "sst2": HFSpec(_GLUE_HF, "sst2"),
    "mrpc": HFSpec(_GLUE_HF, "mrpc"),
    "qnli": HFSpec(_GLUE_HF, "qnli"),
    "rte": HFSpec(_GLUE_HF, "rte"),
    "cb": HFSpec(_SUPERGLUE_HF, "cb"),
    "boolq": HFSpec(_SUPERGLUE_HF, "boolq"),
}
