"""Checkpoints that load where taskprune is not installed.

A pruned checkpoint whose widths a stock config can express (uniform widths of T5's ``d_ff``/``d_kv``, Llama's
``intermediate_size`` and head counts, BERT's ``intermediate_size``) is a stock checkpoint. One whose widths no
stock field holds (per-layer widths, BERT attention widths) carries its family's modeling file from this folder
and an ``auto_map`` naming it: ``from_pretrained(folder, trust_remote_code=True)`` loads it with only torch and
transformers (:mod:`.remote`). The modeling files import nothing from taskprune.
"""
