"""RAP baseline: attribution toward random word-pieces that are no label's word-pieces.

Same computation as supervised attribution (eqs. 4-6, same aggregation options), but each example's target
is a fresh draw of as many random vocabulary ids as its gold label has word-pieces (then EOS), excluding
every label word-piece, the EOS (end of turn) and, for seq2seq models, the decoder start token. The draw depends on ``ScoreConfig.seed``.
"""

from __future__ import annotations

import torch

from ..data import Batch, LabelSpace
from ..lm import model_kind
from ..runtime.distributed import SINGLE
from .attribution import supervised_attribution
from .base import Scores, ScoringJob, no_progress, register_scorer


def random_label_space(labels: LabelSpace, gold: list[int], vocab_size: int, avoid: set[int],
                       generator: torch.Generator) -> LabelSpace:
    """One random 'label' per example, shaped like its gold label (same number of word-pieces, then EOS)."""
    allowed = torch.tensor([i for i in range(vocab_size) if i not in avoid])
    targets, pieces = [], []
    eos = labels.targets[0][-1]
    for c in gold:
        n = labels.n_pieces[c]
        draw = allowed[torch.randint(len(allowed), (n,), generator=generator)].tolist()
        targets.append((*draw, eos))
        pieces.append(n)
    return LabelSpace(tuple(targets), tuple(pieces))


@register_scorer("random-attribution", help="random-attribution (RAP)", group_local=True, random=True, order=40)
def random_attribution(job: ScoringJob) -> Scores:
    """Attribution (eqs. 4-6) toward random non-label word-pieces; a new draw per trial seed."""
    from dataclasses import replace

    model, labels, config = job.model, job.labels, job.config
    g = torch.Generator().manual_seed(config.seed)
    # per-batch calls: keep signs until the end so that abs_sum means |sum over ALL examples|
    per_batch_config = replace(config, example_agg="signed") if config.example_agg == "abs_sum" else config
    vocab = model.get_output_embeddings().weight.shape[0]
    avoid = {t for target in labels.targets for t in target}
    avoid |= model_kind(model).reserved_target_ids(model)
    total: Scores = {grp.name: torch.zeros(grp.size) for grp in job.groups}
    for i, batch in enumerate(job.progress(job.batches, "random attribution", len(job.batches))):
        gold = batch.gold.tolist()
        # every rank draws for EVERY batch, in order, so each example gets the draw it gets in one process
        random_labels = random_label_space(labels, gold, vocab, avoid, g)
        if not job.owns(i):
            continue
        relabelled = Batch(batch.input_ids, batch.attention_mask, torch.arange(len(gold)))
        part = supervised_attribution(replace(job, batches=[relabelled], labels=random_labels,
                                              config=per_batch_config, progress=no_progress, shard=SINGLE))
        for k, v in part.items():
            total[k] = total[k] + v
    return {k: v.abs() for k, v in total.items()} if config.example_agg == "abs_sum" else total
