"""Saving and loading pruned models: plain from_pretrained where the config can say it, load_pruned always."""

from __future__ import annotations

import pytest
import torch
from conftest import logits, make_model, make_tokenizer, sample_inputs
from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

from taskprune.checkpoint import load_model, load_pruned, save_pruned
from taskprune.errors import TaskpruneError
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.sources.fingerprint import fingerprint


def _scores(model, seed: int = 0):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.randn(grp.size, generator=g) for grp in get_adapter(model).groups()}


@pytest.mark.parametrize("rates", [RateSpec(rate=0.5), RateSpec(rate=0.5, modules=("decoder",)),
                                   RateSpec(rate=0.3, depth_rates=[(1, 1, 1.0)]), RateSpec(rate=1.0)],
                         ids=["uniform", "decoder-only", "non-uniform-with-zero", "everything"])
def test_save_load_gives_equal_logits(tmp_path, family: str, rates: RateSpec) -> None:  # noqa: ANN001
    model = make_model(family)
    pruned = apply(make_plan(model, _scores(model), rates), model)
    out = save_pruned(pruned, tmp_path / "m", make_tokenizer(family))
    reloaded = load_pruned(out)
    inputs = sample_inputs(1)
    torch.testing.assert_close(logits(reloaded, inputs), logits(pruned, inputs), atol=1e-6, rtol=1e-6)
    assert fingerprint(reloaded) == fingerprint(pruned)
    assert [g.size for g in get_adapter(reloaded).groups()] == [g.size for g in get_adapter(pruned).groups()]
    # load_model dispatches to load_pruned for pruned folders
    torch.testing.assert_close(logits(load_model(out), inputs), logits(pruned, inputs), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family_", ["t5-relu", "t5-gated"])
def test_plain_from_pretrained_loads_uniform_t5(tmp_path, family_: str) -> None:  # noqa: ANN001
    model = make_model(family_)
    pruned = apply(make_plan(model, _scores(model), RateSpec(rate=0.5)), model)
    out = save_pruned(pruned, tmp_path / "m")
    plain = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert plain.config.d_ff == model.config.d_ff // 2 and plain.config.d_kv == model.config.d_kv // 2
    inputs = sample_inputs(2)
    torch.testing.assert_close(logits(plain, inputs), logits(pruned, inputs), atol=1e-6, rtol=1e-6)


def test_plain_from_pretrained_loads_ffn_pruned_bert2bert(tmp_path) -> None:  # noqa: ANN001
    model = make_model("bert2bert")
    pruned = apply(make_plan(model, _scores(model), RateSpec(rate=0.5, layer_types=("ffn",))), model)
    out = save_pruned(pruned, tmp_path / "m")
    plain = EncoderDecoderModel.from_pretrained(out)
    assert plain.config.encoder.intermediate_size == 24 and plain.config.decoder.intermediate_size == 24
    inputs = sample_inputs(2)
    torch.testing.assert_close(logits(plain, inputs), logits(pruned, inputs), atol=1e-6, rtol=1e-6)


def test_fp16_checkpoint_keeps_its_dtype(tmp_path) -> None:  # noqa: ANN001
    model = make_model("t5-relu")
    pruned = apply(make_plan(model, _scores(model), RateSpec(rate=0.5, modules=("encoder",))), model).half()
    reloaded = load_pruned(save_pruned(pruned, tmp_path / "m"))
    assert next(reloaded.parameters()).dtype == torch.float16
    assert fingerprint(reloaded) == fingerprint(pruned.float())  # fingerprints ignore the storage dtype


def test_saving_never_overwrites_unasked(tmp_path) -> None:  # noqa: ANN001
    model = make_model("t5-relu")
    out = save_pruned(model, tmp_path / "m")
    before = (out / "config.json").read_bytes()
    with pytest.raises(TaskpruneError, match="already exists"):
        save_pruned(model, out)
    assert (out / "config.json").read_bytes() == before
    save_pruned(model, out, overwrite=True)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left behind


def test_loading_bad_folders(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(TaskpruneError, match="not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskpruneError, match="no config.json"):
        load_model(tmp_path / "empty")


def test_unsupported_architecture_is_named(tmp_path) -> None:  # noqa: ANN001
    from transformers import BartConfig, BartForConditionalGeneration

    bart = BartForConditionalGeneration(BartConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                                   encoder_ffn_dim=32, decoder_ffn_dim=32))
    with pytest.raises(TaskpruneError, match="unsupported architecture 'bart'"):
        get_adapter(bart)
    bart.save_pretrained(tmp_path / "bart")
    with pytest.raises(TaskpruneError, match="unsupported architecture"):
        load_model(tmp_path / "bart")


def test_outputs_get_ordinary_permissions(tmp_path) -> None:  # noqa: ANN001
    import os

    from taskprune.files import atomic_write_text

    mask = os.umask(0o022)
    try:
        out = save_pruned(make_model("t5-relu"), tmp_path / "m")
        text = atomic_write_text(tmp_path / "plan.json", "{}")
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert text.stat().st_mode & 0o777 == 0o644


def test_encoder_decoder_embedding_ties_survive_saving_and_nothing_else_is_tied(tmp_path) -> None:  # noqa: ANN001
    from taskprune.evaluate import count_parameters
    from taskprune.models.bert2bert import is_tied, tie_embeddings

    tied = make_model("bert2bert")
    assert tie_embeddings(tied, force=True) and is_tied(tied)
    inputs = sample_inputs(0)
    reloaded = load_model(save_pruned(tied, tmp_path / "tied"))
    assert is_tied(reloaded) and count_parameters(reloaded)["total"] == count_parameters(tied)["total"]
    torch.testing.assert_close(logits(reloaded, inputs), logits(tied, inputs))
    # equal but untied embeddings, and an LM head with weights of its own: loading must change nothing
    untied = make_model("bert2bert")
    with torch.no_grad():
        untied.decoder.get_input_embeddings().weight.copy_(untied.encoder.get_input_embeddings().weight)
        head = untied.decoder.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone() * 1.5)
    loaded = load_model(save_pruned(untied, tmp_path / "untied"))
    assert not is_tied(loaded)
    torch.testing.assert_close(logits(loaded, inputs), logits(untied, inputs))
