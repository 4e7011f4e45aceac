"""Decoder-only LMs (Llama layout: GQA, RoPE, SwiGLU): the method's equivalence laws on tiny random Llama, Mistral,
Qwen2 and Qwen3 models, and the causal reading of P(label | input) in :mod:`taskprune.lm`."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import tiny_causal, tiny_causal_tokenizer

from taskprune.api import score
from taskprune.checkpoint import load_pruned, save_pruned
from taskprune.evaluate import evaluate
from taskprune.lm import model_kind, target_logp, teacher_forced_logits
from taskprune.lm.batching import batches
from taskprune.models import get_adapter
from taskprune.pruning.apply import apply, masked
from taskprune.pruning.plan import make_plan
from taskprune.pruning.rates import RateSpec
from taskprune.scoring import ScoreConfig
from taskprune.tasks import Example, Task

CAUSAL = ("llama", "mistral", "qwen2", "qwen3")
TASK = Task("toy", "{text}", ("negative", "positive"), ("0", "1"), causal_template="review {text} Answer:")
TWO_PIECE = Task("toy2", "{text}", ("good movie", "bad film"), ("0", "1"), causal_template="review {text} Answer:")
TEXTS = ["good movie", "the film was very bad", "a great film and a good movie", "awful", "it is good",
         "this was a bad and awful film"]


def examples(n: int = 6) -> list[Example]:
    return [Example(t, i % 2, prompt=f"review {t}") for i, t in enumerate(TEXTS[:n])]


@pytest.fixture(params=CAUSAL)
def model_type(request: pytest.FixtureRequest) -> str:
    return request.param


def batch(tok, kind, exs=None):  # noqa: ANN001, ANN201
    return next(batches(exs or examples(), tok, 16, 64, kind))


@torch.no_grad()
def logits(model, b) -> torch.Tensor:  # noqa: ANN001
    """Full-sequence logits of a left-padded prompt batch (real positions only are compared)."""
    pos = (b.attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=pos, use_cache=False).logits
    return out * b.attention_mask.unsqueeze(-1)


@torch.no_grad()
def reference_probs(model, tok, example: Example, target: tuple[int, ...]) -> torch.Tensor:  # noqa: ANN001
    """P(target_j | prompt, target_<j) by one plain forward of the unpadded sequence prompt + target, without any of
    taskprune's batching, padding or cache: the yardstick for :mod:`taskprune.lm`."""
    prompt = model_kind(model).prompt_ids(tok, example, 64)
    ids = torch.tensor([prompt + list(target)])
    out = model(input_ids=ids, use_cache=False).logits[0].double().softmax(-1)
    return torch.stack([out[len(prompt) - 1 + j, t] for j, t in enumerate(target)])


def random_scores(model, seed: int = 0) -> dict[str, torch.Tensor]:  # noqa: ANN001
    g = torch.Generator().manual_seed(seed)
    return {grp.name: torch.rand(grp.size, generator=g) for grp in get_adapter(model).groups()}


def test_adapter_lists_whole_heads_under_gqa(model_type: str) -> None:
    model = tiny_causal(model_type)
    groups = get_adapter(model).groups()
    heads = [g for g in groups if g.role == "heads"]
    assert [g.layer_type for g in groups] == ["self_attn", "ffn"] * 2
    head_dim = 12 if model_type == "qwen3" else 8
    assert all((g.size, g.n_heads, g.unit_width, g.module) == (4, 2, head_dim, "decoder") for g in heads)
    assert model_kind(model).name == "causal"


def test_rank_scores_equal_full_recomputation_without_padding(model_type: str) -> None:
    """Left padding + the shared prompt cache give each candidate's log-likelihood of an unpadded, uncached pass."""
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    kind = model_kind(model)
    labels = kind.label_space(tok, TWO_PIECE)
    got = kind.rank_scores(model, batch(tok, kind), labels)
    assert (batch(tok, kind).attention_mask == 0).any()  # the batch is padded
    for i, ex in enumerate(examples()):
        for c, target in enumerate(labels.targets):
            want = reference_probs(model, tok, ex, target).log().sum().float()
            torch.testing.assert_close(got[i, c], want, rtol=1e-5, atol=1e-5)
    lg, tg = teacher_forced_logits(model, batch(tok, kind), labels, [1] * 6)  # teacher forcing agrees too
    torch.testing.assert_close(target_logp(lg, tg.unsqueeze(1)).sum((1, 2)), got[:, 1], rtol=1e-5, atol=1e-5)


def test_pruning_nothing_changes_no_logits(model_type: str) -> None:
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.0))
    b = batch(tok, model_kind(model))
    torch.testing.assert_close(logits(apply(plan, model), b), logits(model, b), rtol=0, atol=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model_type=st.sampled_from(CAUSAL), ffn=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
       heads=st.sampled_from([0.0, 0.5, 1.0]), granularity=st.sampled_from(["query", "kv"]),
       seed=st.integers(0, 1000))
def test_masked_equals_sliced(model_type: str, ffn: float, heads: float, granularity: str, seed: int) -> None:
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    rates = RateSpec(rate=0.0, layer_type_rates={"ffn": ffn, "self_attn": heads}, head_granularity=granularity)
    plan = make_plan(model, random_scores(model, seed), rates)
    b = batch(tok, model_kind(model))
    with masked(plan, model):
        want = logits(model, b)
    pruned = apply(plan, model)
    torch.testing.assert_close(logits(pruned, b), want, rtol=1e-5, atol=1e-5)
    widths = {g.name: g.size for g in get_adapter(pruned).groups()}
    assert widths == plan.widths()


def test_kv_granularity_removes_whole_kv_groups() -> None:
    model = tiny_causal("llama", heads=6, kv_heads=3, hidden=48)
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.0, layer_type_rates={"self_attn": 0.34},
                                                           head_granularity="kv"))
    pruned = apply(plan, model)
    attn = pruned.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (4 * 8, 2 * 8, 2)
    assert pruned.config.num_key_value_heads == 2 and pruned.config.num_attention_heads == 4


def test_query_granularity_keeps_every_kv_head() -> None:
    model = tiny_causal("llama", heads=6, kv_heads=3, hidden=48)
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.0, layer_type_rates={"self_attn": 0.5}))
    pruned = apply(plan, model)
    attn = pruned.model.layers[1].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.num_key_value_groups) == (3 * 8, 3 * 8, 1)
    assert pruned.config.num_attention_heads == 3 and pruned.config.num_key_value_heads == 3


@pytest.mark.parametrize("uniform", [True, False])
def test_save_load_gives_the_same_logits(model_type: str, uniform: bool, tmp_path) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    rates = RateSpec(rate=0.5, head_granularity="query" if uniform else "kv",
                     depth_rates=[] if uniform else [(1, 1, 0.25)])
    pruned = apply(make_plan(model, random_scores(model), rates), model)
    save_pruned(pruned, tmp_path / "p", tok)
    b = batch(tok, model_kind(model))
    want = logits(pruned, b)
    torch.testing.assert_close(logits(load_pruned(tmp_path / "p"), b), want, rtol=1e-5, atol=1e-5)
    if uniform:  # stock config: plain from_pretrained, no taskprune code
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
        assert plain.config.intermediate_size == 24 and plain.config.num_attention_heads == 2
        torch.testing.assert_close(logits(plain, b), want, rtol=1e-5, atol=1e-5)


def test_cached_generation_equals_full_recomputation_after_pruning(model_type: str) -> None:
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    pruned = apply(make_plan(model, random_scores(model), RateSpec(rate=0.5)), model)
    b = batch(tok, model_kind(model))
    out = pruned.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, max_new_tokens=6, do_sample=False,
                          min_new_tokens=6, pad_token_id=0, eos_token_id=None)
    ids, mask = b.input_ids, b.attention_mask
    for _ in range(6):  # greedy, recomputing the whole sequence at every step
        nxt = logits(pruned, type(b)(ids, mask, b.gold))[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, ids)


def test_ffn_at_rate_one_equals_the_sublayer_removed(model_type: str) -> None:
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.0, depth_rates=[(0, 0, 1.0)], layer_types=("ffn",)))
    pruned = apply(plan, model)
    assert pruned.model.layers[0].mlp.down_proj.in_features == 0
    b = batch(tok, model_kind(model))
    handle = model.model.layers[0].mlp.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    try:
        want = logits(model, b)
    finally:
        handle.remove()
    torch.testing.assert_close(logits(pruned, b), want, rtol=1e-5, atol=1e-5)


def test_attention_at_rate_one_leaves_a_zero_placeholder_that_adds_nothing(model_type: str) -> None:
    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.0, depth_rates=[(1, 1, 1.0)],
                                                           layer_types=("self_attn",)))
    pruned = apply(plan, model)
    assert get_adapter(pruned).group_by_name()["decoder.1.self_attn.heads"].size == 0
    b = batch(tok, model_kind(model))
    handle = model.model.layers[1].self_attn.register_forward_hook(
        lambda _m, _i, out: (torch.zeros_like(out[0]), *out[1:]))
    try:
        want = logits(model, b)
    finally:
        handle.remove()
    torch.testing.assert_close(logits(pruned, b), want, rtol=1e-5, atol=1e-5)


def float64_throughout(model):  # noqa: ANN001, ANN201
    """The model in float64 with RMSNorms that stay in float64 (transformers' compute in float32, whose rounding
    would swamp a finite difference)."""
    model = model.double()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            def forward(x, m=module):  # noqa: ANN001, ANN202
                return m.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)

            module.forward = forward
    return model


@pytest.mark.parametrize("kind_name", ["ffn", "heads"])
def test_attribution_equals_finite_differences_for_a_two_token_label(model_type: str, kind_name: str) -> None:
    """A_i = sum_pos h_i dP/dh_i = d/de P(h with unit i scaled by 1+e) at e=0, for a label of two word-pieces."""
    model, tok = float64_throughout(tiny_causal(model_type)), tiny_causal_tokenizer()
    ex = [Example("a great film", 1, prompt="review a great film")]
    cfg = ScoreConfig(example_agg="signed")
    scores = score(model, tok, TWO_PIECE, ex, config=cfg)
    kind = model_kind(model)
    labels = kind.label_space(tok, TWO_PIECE)
    assert labels.n_pieces == (2, 2)
    adapter = get_adapter(model)
    group = next(g for g in adapter.groups() if g.role == kind_name and g.depth == 1)
    site = adapter.sites(group)[0]

    pieces = labels.targets[1][: labels.n_pieces[1]]  # the word-pieces, not the end-of-turn token

    def prob(unit: int, eps: float) -> float:
        scale = torch.ones(group.size, dtype=torch.float64)
        scale[unit] += eps
        handle = site.hook(lambda t: t * scale)
        try:
            return float(reference_probs(model, tok, ex[0], pieces).sum())
        finally:
            handle.remove()

    eps = 1e-6
    units = range(min(group.size, 6))
    got = scores[group.name][: len(units)].double()
    want = torch.tensor([(prob(u, eps) - prob(u, -eps)) / (2 * eps) for u in units], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("method", ["attribution", "attribution-unsupervised", "activation", "random-attribution",
                                    "random", "smp"])
def test_every_scoring_method_runs_on_a_causal_model(model_type: str, method: str) -> None:
    from taskprune.api import compress

    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    res = compress(model, tok, TASK, examples(), RateSpec(rate=0.5), method=method,
                   config=ScoreConfig(smp={"steps": 3}))
    b = batch(tok, model_kind(model))
    assert torch.isfinite(logits(res.model, b)).all()
    widths = {g.name: g.size for g in get_adapter(res.model).groups()}
    assert widths["decoder.0.ffn"] == 24 and widths["decoder.0.self_attn.heads"] == 2


@pytest.mark.parametrize("chat", [True, False])
def test_evaluate_rank_classification_and_generation(chat: bool) -> None:
    model, tok = tiny_causal("llama"), tiny_causal_tokenizer(chat)
    ranked = evaluate(model, tok, TASK, examples(), batch_size=4)
    gen = evaluate(model, tok, TASK, examples(), batch_size=4, generate=True)
    assert ranked.n_examples == gen.n_examples == 6
    assert all(p in (0, 1) for p in ranked.predictions)
    assert all(p in (-1, 0, 1) for p in gen.predictions)


def test_label_continuation_follows_the_chat_template() -> None:
    kind = model_kind(tiny_causal("llama"))
    chat, plain = tiny_causal_tokenizer(True), tiny_causal_tokenizer(False)
    end_of_turn = chat.convert_tokens_to_ids("<|im_end|>")
    assert [t[-1] for t in kind.label_space(chat, TASK).targets] == [end_of_turn] * 2
    assert [t[-1] for t in kind.label_space(plain, TASK).targets] == [plain.eos_token_id] * 2
    ids = kind.prompt_ids(chat, examples()[0], 64)
    assert chat.convert_ids_to_tokens(ids[:6]) == ["<|im_start|>", "user", "review", "good", "movie", "<|im_end|>"]
    assert chat.convert_ids_to_tokens(ids[-2:]) == ["<|im_start|>", "assistant"]


def test_an_over_long_prompt_keeps_its_start_and_its_end() -> None:
    kind, tok = model_kind(tiny_causal("llama")), tiny_causal_tokenizer()
    long = Example("x", 0, prompt="review " + "good " * 100 + "bad")
    ids = kind.prompt_ids(tok, long, 40)
    assert len(ids) == 40
    assert tok.convert_ids_to_tokens(ids[-2:]) == ["<|im_start|>", "assistant"]
    assert tok.convert_ids_to_tokens(ids[:3]) == ["<|im_start|>", "user", "review"]


def test_pruning_scope_outside_a_decoder_only_model_is_refused() -> None:
    from taskprune.errors import TaskpruneError

    model = tiny_causal("llama")
    with pytest.raises(TaskpruneError, match="holds no group"):
        make_plan(model, random_scores(model), RateSpec(rate=0.5, modules=("encoder",)))
    with pytest.raises(TaskpruneError, match="rotary"):
        RateSpec(rate=0.5, head_granularity="dims")


def test_finetuning_loss_is_the_continuation_cross_entropy(model_type: str) -> None:
    """Fine-tuning reads causal examples through the same home: loss on the label continuation only."""
    from taskprune.training.loop import teacher_forcing_loss

    model, tok = tiny_causal(model_type), tiny_causal_tokenizer()
    labels = model_kind(model).label_space(tok, TASK)
    exs = examples()
    want = torch.cat([reference_probs(model, tok, e, labels.targets[e.label]).log() for e in exs]).mean()
    got = teacher_forcing_loss(model, tok, exs, labels, 64)
    torch.testing.assert_close(got.double(), -want, rtol=1e-5, atol=1e-6)


def test_the_server_predicts_with_a_causal_base() -> None:
    """Serving cuts a causal model's plan like a seq2seq one and reads the task's causal prompt."""
    from taskprune.serve import ServeLimits, TaskService

    model, tok = tiny_causal("qwen2"), tiny_causal_tokenizer()
    service = TaskService(model, tok, plans_dir=None, limits=ServeLimits(), model_name="tiny", extra_tasks=[TASK])
    assert service.render("toy", ["good movie"]) == ["review good movie Answer:"]
    plan = make_plan(model, random_scores(model), RateSpec(rate=0.5), task="toy")
    service.register("toy", plan.to_dict())
    got = service.predict_texts("toy", service.render("toy", ["good movie", "awful"]))
    pruned = apply(plan, model)
    kind = model_kind(model)
    want = kind.rank_scores(pruned, batch(tok, kind, [Example("x", 0, prompt=p) for p in
                                                      ["review good movie Answer:", "review awful Answer:"]]),
                            kind.label_space(tok, TASK)).softmax(-1)
    assert [p.label for p in got] == [TASK.label_words[i] for i in want.argmax(1).tolist()]


@pytest.mark.parametrize("method", ["svd", "smp-unstructured"])
def test_methods_without_a_plan_save_and_reload_on_a_causal_model(method: str, tmp_path) -> None:  # noqa: ANN001
    from taskprune.api import compress, save_compressed

    model, tok = tiny_causal("qwen3"), tiny_causal_tokenizer()
    res = compress(model, tok, TASK, examples(), RateSpec(rate=0.5), method=method,
                   config=ScoreConfig(smp={"steps": 3}))
    b = batch(tok, model_kind(model))
    want = logits(res.model, b)
    assert torch.isfinite(want).all() and not torch.allclose(want, logits(model, b))
    torch.testing.assert_close(logits(load_pruned(save_compressed(res, tok, tmp_path / "m")), b), want,
                               rtol=1e-5, atol=1e-5)


def test_a_sweep_and_its_report_run_on_a_causal_model(tmp_path) -> None:  # noqa: ANN001
    """sweep -> report on a decoder-only model: layer types, methods with trials, svd; no run fails."""
    import json

    import yaml

    from taskprune.experiments import load_rows, run_sweep
    from taskprune.experiments.report import write_report

    tiny_causal("llama").save_pretrained(tmp_path / "model")
    tiny_causal_tokenizer().save_pretrained(tmp_path / "model")
    rows = "\n".join(json.dumps({"text": e.text, "label": e.label}) for e in examples()) + "\n"
    (tmp_path / "data.jsonl").write_text(rows)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({
        "name": "toy", "template": "{text}", "causal_template": "review {text} Answer:",
        "label_words": ["negative", "positive"], "label_values": ["0", "1"],
        "files": {"fit": "data.jsonl", "eval": "data.jsonl"}}))
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": str(tmp_path / "model"), "batch_size": 4, "experiments": [
        {"name": "types", "tasks": [str(tmp_path / "toy.yaml")], "methods": ["attribution", "random", "svd"],
         "trial_seeds": [0, 1], "modules": ["decoder"], "layer_types": ["self_attn", "ffn"], "rates": [0.5],
         "samples": [4]}]}))
    summary = run_sweep(config, tmp_path / "r.jsonl")
    assert summary.failed == 0 and summary.ran == summary.total > 0
    assert all("error" not in row for row in load_rows(tmp_path / "r.jsonl"))
    out = write_report(tmp_path / "r.jsonl", tmp_path / "report")
    assert (out / "README.md").is_file() and list(out.glob("*.png"))


def _cli_space(tmp_path, chat: bool = True):  # noqa: ANN001, ANN202
    import json

    import yaml

    tiny_causal("llama", heads=6, kv_heads=3, hidden=48).save_pretrained(tmp_path / "model")
    tiny_causal_tokenizer(chat).save_pretrained(tmp_path / "model")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps({"text": e.text, "label": e.label})
                                                   for e in examples()) + "\n")
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({
        "name": "toy", "template": "{text}", "causal_template": "review {text} Answer:",
        "label_words": ["negative", "positive"], "label_values": ["0", "1"],
        "files": {"fit": "data.jsonl", "eval": "data.jsonl"}}))
    return ["--model", str(tmp_path / "model"), "--task", str(tmp_path / "toy.yaml")]


def test_cli_compress_with_kv_groups_and_without_the_chat_template(tmp_path, capsys) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    from taskprune.cli import main

    common = _cli_space(tmp_path)
    assert main(["compress", *common, "--samples", "4", "--rate", "0.34", "--layer-types", "self_attn",
                 "--head-granularity", "kv", "--chat-template", "off", "--allocate", "uniform", "--out", str(tmp_path / "out")]) == 0
    assert "whole key/value groups" in capsys.readouterr().out
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads) == (4, 2)
    assert not (tmp_path / "out" / "chat_template.jinja").exists()  # the choice is saved with the tokenizer
    assert main(["eval", "--model", str(tmp_path / "out"), "--task", str(tmp_path / "toy.yaml"), "--generate"]) == 0


def test_cli_refuses_chat_template_on_without_one(tmp_path, capsys) -> None:  # noqa: ANN001
    from taskprune.cli import main

    common = _cli_space(tmp_path, chat=False)
    assert main(["score", *common, "--chat-template", "on", "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taskprune: error:") and "chat template" in err[0]
    assert not (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("model_type", ["gpt2", "phi3", "gemma"])
def test_other_decoder_only_layouts_are_refused_in_one_line_naming_what_is_supported(model_type: str) -> None:
    """GPT-2 (fused Conv1D qkv), Phi-3 (fused qkv_proj) and Gemma (scaled embeddings, GeGLU) are not the Llama
    layout: get_adapter says so instead of pruning them wrongly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from taskprune.errors import TaskpruneError

    kw = {"gpt2": dict(n_embd=32, n_layer=1, n_head=4, vocab_size=50),
          "phi3": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                       vocab_size=50, pad_token_id=0),
          "gemma": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=48, vocab_size=50, head_dim=8)}[model_type]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw))
    with pytest.raises(TaskpruneError, match="Llama layout") as err:
        get_adapter(model)
    assert "\n" not in str(err.value)


def test_a_missing_or_broken_gguf_file_is_one_line(tmp_path, capsys, monkeypatch) -> None:  # noqa: ANN001
    from taskprune.cli import main

    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "bad.gguf").write_text("garbage")
    for name, says in (("missing.gguf", "GGUF file"), ("bad.gguf", "cannot read GGUF file")):
        assert main(["info", "--model", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("taskprune: error:") and says in err[0]


def test_cli_tuning_flags_reach_the_recipe(tmp_path, capsys) -> None:  # noqa: ANN001
    """--repair-alpha, --repair-order and --calibration, given with a recipe that uses them, are what the plan
    records (their defaults are None so that unused ones can be refused: the None must not leak through)."""
    from taskprune.cli import main
    from taskprune.pruning.plan import PruningPlan

    common = _cli_space(tmp_path)
    assert main(["compress", *common, "--samples", "4", "--rate", "0.3", "--repair", "ls", "--repair-alpha", "0.5",
                 "--repair-order", "sequential", "--calibration", "2", "--no-eval",
                 "--out", str(tmp_path / "out")]) == 0
    assert "repair: ls on 2 calibration inputs" in capsys.readouterr().out
    repair = PruningPlan.load(tmp_path / "out" / "plan.json").repair
    # 2, not the toy fit split's 3 (what the default 128 would give)
    assert (repair["alpha"], repair["sequential"], repair["calibration_examples"]) == (0.5, True, 2)
