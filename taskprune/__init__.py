"""taskprune: compress a multi-task language model (seq2seq or decoder-only) for ONE task, without training.

Scores every neuron by attribution (activation x gradient of the label-token probabilities) on a few
examples, removes the least important units layer by layer and returns a physically smaller model.
"""

__version__ = "0.1.0"

from .api import compress, compress_trials, save_compressed, score
from .catalogue import list_methods
from .checkpoint import load_model, load_pruned, load_tokenizer, save_pruned
from .errors import TaskpruneError
from .evaluate import count_parameters, evaluate
from .pruning.apply import apply, mask, masked
from .pruning.plan import PruningPlan, make_plan
from .pruning.rates import RateSpec
from .runtime import distributed  # `taskprune.distributed.init_from_env()` in torchrun scripts (docs/distributed.md)
from .scoring import ScoreConfig, SMPConfig
from .tasks import Example, Task, get_task, load_examples, sample_k_shot

__all__ = [
    "Example", "PruningPlan", "RateSpec", "SMPConfig", "ScoreConfig", "Task", "TaskpruneError", "apply", "compress",
    "compress_trials", "list_methods",
    "count_parameters", "distributed", "evaluate", "get_task", "load_examples", "load_model", "load_pruned", "load_tokenizer",
    "make_plan", "mask", "masked", "sample_k_shot", "save_compressed", "save_pruned", "score",
]
