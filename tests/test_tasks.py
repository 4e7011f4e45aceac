"""Tests for taskprune.tasks: task definitions, loaders (with GLUE's real quirks), hash split, k-shot, metrics.

All fixtures are tiny files written to tmp_path; only the integration class reads the real benchmark data
in ../shared/data, and it skips with a visible reason when that folder is missing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from taskprune.errors import TaskpruneError
from taskprune.tasks import (
    Example,
    Task,
    compute_metrics,
    get_task,
    hash_bucket,
    list_tasks,
    load_examples,
    sample_k_shot,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------- fixture writers


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


SST2_TRAIN = "sentence\tlabel\nhide new secretions from the parental units \t0\nit 's a \" charming journey \t1\n"
SST2_DEV = "sentence\tlabel\na great film \t1\nboring \" and dull\t0\nok\t1\n"
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_TRAIN = MRPC_HEADER + '1\t1\t2\the said " the witness\tthe witness " spoke\n0\t3\t4\ta b\tc d\n'
MRPC_DEV = MRPC_HEADER + "1\t5\t6\tx y\tx y z\n"
CB_TRAIN = [
    {"premise": "p1", "hypothesis": "h1", "label": "entailment", "idx": 0},
    {"premise": "p2", "hypothesis": "h2", "label": "contradiction", "idx": 1},
    {"premise": "p3", "hypothesis": "h3", "label": "neutral", "idx": 2},
]
CB_VAL = [{"premise": "q", "hypothesis": "g", "label": "Neutral", "idx": 0}]


@pytest.fixture
def glue_tree(tmp_path: Path) -> Path:
    """A GLUE-like root: glue/SST-2, glue/MRPC (BOM headers), superglue/CB."""
    root = tmp_path / "data"
    write(root / "glue" / "SST-2" / "train.tsv", SST2_TRAIN)
    write(root / "glue" / "SST-2" / "dev.tsv", SST2_DEV)
    write(root / "glue" / "MRPC" / "train.tsv", MRPC_TRAIN, bom=True)
    write(root / "glue" / "MRPC" / "dev.tsv", MRPC_DEV, bom=True)
    jsonl(root / "superglue" / "CB" / "train.jsonl", CB_TRAIN)
    jsonl(root / "superglue" / "CB" / "val.jsonl", CB_VAL)
    return root


def synthetic_rows(n: int) -> list[dict]:
    return [{"question": f"question number {i}?", "sentence": f"sentence {i * 7}.", "index": i,
             "label": "entailment" if i % 2 else "not_entailment"} for i in range(n)]


def qnli_dev(folder: Path, n: int = 200) -> Path:
    lines = ["index\tquestion\tsentence\tlabel"]
    lines += [f"{r['index']}\t{r['question']}\t{r['sentence']}\t{r['label']}" for r in synthetic_rows(n)]
    return write(folder / "dev.tsv", "\n".join(lines) + "\n")


# ---------------------------------------------------------------- Task


class TestTask:
    def test_builtins(self):
        assert list_tasks() == ["sst2", "mrpc", "qnli", "rte", "cb", "boolq"]
        assert get_task("SST2") is get_task("sst2")
        assert get_task("SST-2").name == "sst2"
        assert get_task("mrpc").metrics == ("accuracy", "f1")
        assert get_task("cb").metrics == ("accuracy", "macro_f1")
        assert get_task("cb").label_words == ("entailment", "contradiction", "neutral")

    def test_render_strips_and_reports_missing_column(self):
        task = get_task("sst2")
        assert task.render({"sentence": "  great film ", "label": "1"}) == "sst2 sentence: great film"
        with pytest.raises(TaskpruneError, match="'sentence'"):
            task.render({"text": "x"})

    @pytest.mark.parametrize(
        "name,raw,expected",
        [("sst2", 1, 1), ("sst2", "0", 0), ("sst2", True, 1), ("sst2", 1.0, 1), ("sst2", "positive", 1),
         ("boolq", True, 1), ("boolq", False, 0), ("boolq", "true", 1), ("boolq", "False", 0),
         ("qnli", "not_entailment", 1), ("rte", "Entailment", 0), ("cb", "neutral", 2)],
    )
    def test_label_index(self, name, raw, expected):
        assert get_task(name).label_index(raw) == expected

    @pytest.mark.parametrize("raw", ["2", 7, None, "maybe", [1]])
    def test_label_index_unknown(self, raw):
        with pytest.raises(TaskpruneError, match="unknown label value"):
            get_task("sst2").label_index(raw)

    def test_dict_roundtrip_is_json(self):
        for name in list_tasks():
            task = get_task(name)
            assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task
        t = Task("x", "{a}", ("n", "y"), files={"fit": "/a.jsonl", "eval": "/b.csv"})
        assert Task.from_dict(json.loads(json.dumps(t.to_dict()))) == t
        hash(t)

    def test_values_default_to_words_and_lowercase(self):
        t = Task("x", "in: {a}", ["Bad", "Good"])
        assert t.label_values == ("bad", "good") and t.label_words == ("Bad", "Good")
        assert t.label_index("GOOD") == 1

    @pytest.mark.parametrize(
        "kwargs,message",
        [
            (dict(label_words=("a",)), "at least 2"),
            (dict(label_values=("0", "1", "2")), "same order"),
            (dict(label_words=("a", "a")), "duplicates"),
            (dict(metrics=("accuracy", "bleu")), "unknown metric"),
            (dict(label_words=("a", "b", "c"), metrics=("f1",)), "macro_f1"),
            (dict(template="x: {"), "bad task template"),
            (dict(template="x: {}"), "must name a column"),
            (dict(label_words="ab"), "must be a list"),
        ],
    )
    def test_validation(self, kwargs, message):
        base = dict(name="t", template="x: {a}", label_words=("a", "b"))
        with pytest.raises(TaskpruneError, match=message):
            Task(**{**base, **kwargs})

    def test_from_dict_errors(self):
        with pytest.raises(TaskpruneError, match="required key 'template'"):
            Task.from_dict({"name": "x", "label_words": ["a", "b"]})
        with pytest.raises(TaskpruneError, match="unknown task key"):
            Task.from_dict({"name": "x", "template": "{a}", "label_words": ["a", "b"], "labels": 1})

    def test_unknown_task_lists_builtins(self):
        with pytest.raises(TaskpruneError, match="sst2, mrpc, qnli, rte, cb, boolq"):
            get_task("mnli")
        with pytest.raises(TaskpruneError, match="task file not found"):
            get_task("/nowhere/task.yaml")


# ---------------------------------------------------------------- user task files


class TestTaskFile:
    def _data(self, folder: Path) -> None:
        jsonl(folder / "train.jsonl", [{"text": "good stuff", "label": 1}, {"text": "bad stuff", "label": 0}])
        write(folder / "dev.csv", 'text,label\n"nice, really",1\n"awful ""x""",0\n')

    def test_yaml(self, tmp_path: Path):
        self._data(tmp_path)
        write(tmp_path / "task.yaml", (
            "name: my_sentiment\ntemplate: \"review: {text}\"\nlabel_words: [bad, good]\n"
            "label_values: [\"0\", \"1\"]\nmetrics: [accuracy, f1]\nfiles: {fit: train.jsonl, eval: dev.csv}\n"))
        task = get_task(str(tmp_path / "task.yaml"))
        assert task.metrics == ("accuracy", "f1")
        fit = load_examples(task, "fit")  # auto -> file
        assert [(e.text, e.label) for e in fit] == [("review: good stuff", 1), ("review: bad stuff", 0)]
        ev = load_examples(task, "eval", data_dir="/ignored")
        assert [(e.text, e.label) for e in ev] == [("review: nice, really", 1), ('review: awful "x"', 0)]

    def test_json_defaults(self, tmp_path: Path):
        self._data(tmp_path)
        sub = tmp_path / "tasks"
        write(sub / "t.json", json.dumps({"name": "j", "template": "{text}", "label_words": ["0", "1"],
                                          "files": {"fit": "../train.jsonl", "eval": "../dev.csv"}}))
        task = get_task(sub / "t.json")
        assert task.label_values == ("0", "1") and task.label_column == "label"
        assert len(load_examples(task, "eval", source="file")) == 2

    def test_yaml_yes_no_stay_words(self, tmp_path: Path):
        write(tmp_path / "t.yml", "name: yn\ntemplate: 'q: {q}'\nlabel_words: [no, yes]\nlabel_values: [false, true]\n")
        task = get_task(tmp_path / "t.yml")
        assert task.label_words == ("no", "yes") and task.label_values == ("false", "true")

    def test_single_file_is_hash_split(self, tmp_path: Path):
        rows = [{"text": f"row {i}", "y": i % 2} for i in range(100)]
        jsonl(tmp_path / "all.jsonl", rows)
        write(tmp_path / "t.yaml", "name: s\ntemplate: '{text}'\nlabel_words: [a, b]\nlabel_values: ['0', '1']\n"
                                   "label_column: y\nfiles: all.jsonl\n")
        task = get_task(tmp_path / "t.yaml")
        fit, ev = load_examples(task, "fit"), load_examples(task, "eval")
        assert len(fit) + len(ev) == 100 and not {e.text for e in fit} & {e.text for e in ev}

    @pytest.mark.parametrize(
        "body,message",
        [
            ("name: a\nlabel_words: [x, y]\n", "required key 'template'"),
            ("name: a\ntemplate: '{t}'\nlabel_words: [x, y]\nlabel_values: ['1']\n", "label_values"),
            ("name: a\ntemplate: '{t}'\nlabel_words: [x, y]\nmetrics: [auc]\n", "unknown metric"),
            ("name: a\ntemplate: '{t}'\nlabel_words: [x, y]\nfiles: {fit: nope.jsonl}\n", "nope.jsonl"),
            ("name: a\ntemplate: '{t}'\nlabel_words: [x, y]\nfiles: {train: a.jsonl}\n", "'files' keys"),
            ("- just\n- a list\n", "must hold a mapping"),
            ("name: [unclosed\n", "not valid YAML"),
        ],
    )
    def test_bad_task_files(self, tmp_path: Path, body: str, message: str):
        path = write(tmp_path / "bad.yaml", body)
        with pytest.raises(TaskpruneError, match=message) as info:
            get_task(str(path))
        assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)

    def test_bad_rows_name_file_and_line(self, tmp_path: Path):
        jsonl(tmp_path / "a.jsonl", [{"text": "ok", "label": 1}, {"txt": "typo", "label": 0}])
        jsonl(tmp_path / "b.jsonl", [{"text": "ok", "label": 3}])
        jsonl(tmp_path / "c.jsonl", [{"text": "ok", "gold": 1}])
        for name, message in [("a", r"a\.jsonl, line 2: .*'text'"), ("b", r"b\.jsonl, line 1: .*unknown label value 3"),
                              ("c", r"c\.jsonl, line 1: no label column 'label'")]:
            task = Task(name, "r: {text}", ("x", "y"), ("0", "1"), files={"fit": str(tmp_path / f"{name}.jsonl"),
                                                                         "eval": str(tmp_path / "other.jsonl")})
            with pytest.raises(TaskpruneError, match=message):
                load_examples(task, "fit")

    def test_task_without_files(self):
        task = Task("custom", "{a}", ("x", "y"))
        with pytest.raises(TaskpruneError, match="names no data files"):
            load_examples(task, "fit", source="file")
        with pytest.raises(TaskpruneError, match="not a GLUE/SuperGLUE task"):
            load_examples(task, "fit", data_dir="/tmp", source="dir")


# ---------------------------------------------------------------- GLUE / SuperGLUE directory loader


class TestDirLoader:
    def test_tree_root(self, glue_tree: Path):
        fit = load_examples(get_task("sst2"), "fit", glue_tree)
        assert [e.text for e in fit] == ["sst2 sentence: hide new secretions from the parental units",
                                        "sst2 sentence: it 's a \" charming journey"]
        assert [e.label for e in fit] == [0, 1]
        ev = load_examples(get_task("sst2"), "eval", glue_tree, source="dir")
        assert [e.label for e in ev] == [1, 0, 1] and ev[1].text == 'sst2 sentence: boring " and dull'
        assert len({e.uid for e in ev}) == 3

    def test_mrpc_bom_and_quotes(self, glue_tree: Path):
        fit = load_examples(get_task("mrpc"), "fit", glue_tree)
        assert fit[0] == Example('mrpc sentence1: he said " the witness sentence2: the witness " spoke', 1, fit[0].uid,
                                 fit[0].prompt)
        assert fit[0].prompt.endswith('Sentence 1: he said " the witness\nSentence 2: the witness " spoke')
        assert [e.label for e in fit] == [1, 0]
        assert len(load_examples(get_task("mrpc"), "eval", glue_tree)) == 1

    def test_cb_jsonl_string_labels(self, glue_tree: Path):
        fit = load_examples(get_task("cb"), "fit", glue_tree)
        assert [e.label for e in fit] == [0, 1, 2] and fit[0].text == "cb hypothesis: h1 premise: p1"
        assert [e.uid for e in fit] == ["train-0", "train-1", "train-2"]
        assert load_examples(get_task("cb"), "eval", glue_tree)[0].label == 2

    def test_folder_holding_task_dirs_and_task_dir_itself(self, tmp_path: Path):
        write(tmp_path / "flat" / "SST-2" / "train.tsv", SST2_TRAIN)
        write(tmp_path / "flat" / "SST-2" / "dev.tsv", SST2_DEV)
        assert len(load_examples(get_task("sst2"), "eval", tmp_path / "flat")) == 3
        assert len(load_examples(get_task("sst2"), "fit", tmp_path / "flat" / "SST-2")) == 2
        write(tmp_path / "glue_data" / "sst2" / "dev.tsv", SST2_DEV)  # download-script and lowercase names
        assert len(load_examples(get_task("sst2"), "eval", tmp_path)) == 3

    def test_boolq_bool_and_string_labels(self, tmp_path: Path):
        rows = [{"question": f"q{i}", "passage": f"T -- p{i}", "idx": i, "label": [True, "false", "True", False][i % 4]}
                for i in range(40)]
        jsonl(tmp_path / "BoolQ" / "val.jsonl", rows)
        fit = load_examples(get_task("boolq"), "fit", tmp_path)
        ev = load_examples(get_task("boolq"), "eval", tmp_path)
        assert len(fit) + len(ev) == 40
        labels = {e.uid: e.label for e in fit + ev}
        assert labels["val-0"] == 1 and labels["val-1"] == 0 and labels["val-2"] == 1 and labels["val-3"] == 0

    def test_task_name_and_custom_template_on_builtin_data(self, glue_tree: Path, tmp_path: Path):
        assert len(load_examples("sst2", "eval", glue_tree)) == 3
        write(tmp_path / "t.yaml", "name: sst2\ntemplate: 'review: {sentence}'\nlabel_words: [bad, good]\n"
                                   "label_values: ['0', '1']\n")
        ev = load_examples(get_task(tmp_path / "t.yaml"), "eval", glue_tree)
        assert ev[0].text == "review: a great film"

    def test_hash_split_qnli(self, tmp_path: Path):
        qnli_dev(tmp_path / "glue" / "QNLI", 200)
        task = get_task("qnli")
        fit = load_examples(task, "fit", tmp_path)
        ev = load_examples(task, "eval", tmp_path)
        assert len(fit) + len(ev) == 200
        assert not {e.text for e in fit} & {e.text for e in ev}
        assert 0.2 <= len(ev) / 200 <= 0.4
        assert load_examples(task, "fit", tmp_path) == fit  # deterministic
        assert all(hash_bucket(e.text) < 70 for e in fit) and all(hash_bucket(e.text) >= 70 for e in ev)

    def test_train_file_present_for_qnli(self, tmp_path: Path):
        folder = tmp_path / "QNLI"
        qnli_dev(folder, 20)
        write(folder / "train.tsv", "index\tquestion\tsentence\tlabel\n0\tq?\ts.\tentailment\n")
        assert len(load_examples(get_task("qnli"), "fit", tmp_path)) == 1
        assert len(load_examples(get_task("qnli"), "eval", tmp_path)) == 20

    def test_hash_bucket_is_stable(self):
        import hashlib

        text = "qnli question: a sentence: b"
        expected = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100
        assert hash_bucket(text) == expected

    def test_missing_things(self, tmp_path: Path, glue_tree: Path):
        with pytest.raises(TaskpruneError, match="no RTE folder found"):
            load_examples(get_task("rte"), "fit", glue_tree)
        with pytest.raises(TaskpruneError, match="data directory not found"):
            load_examples(get_task("rte"), "fit", tmp_path / "nope")
        write(tmp_path / "only_dev" / "SST-2" / "dev.tsv", SST2_DEV)
        with pytest.raises(TaskpruneError, match=r"looked for .*only_dev/SST-2/train\.tsv"):
            load_examples(get_task("sst2"), "fit", tmp_path / "only_dev")
        with pytest.raises(TaskpruneError, match="--data-dir"):
            load_examples(get_task("sst2"), "fit")
        with pytest.raises(TaskpruneError, match="unknown split"):
            load_examples(get_task("sst2"), "train", glue_tree)
        with pytest.raises(TaskpruneError, match="unknown data source"):
            load_examples(get_task("sst2"), "fit", glue_tree, source="s3")

    def test_ragged_tsv_row(self, tmp_path: Path):
        write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
        with pytest.raises(TaskpruneError, match=r"dev\.tsv, line 3: 3 fields but the header has 2"):
            load_examples(get_task("sst2"), "eval", tmp_path)

    def test_hf_without_datasets_is_clear(self, monkeypatch):
        import builtins

        real_import = builtins.__import__

        def fake_import(name, *args, **kwargs):
            if name == "datasets":
                raise ImportError("no datasets")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)
        with pytest.raises(TaskpruneError, match="pip install datasets"):
            load_examples(get_task("sst2"), "fit", source="hf")

    def test_hf_maps_class_label_ints(self, monkeypatch):
        import sys
        import types

        class Feature:
            names = ["entailment", "not_entailment"]

        class Dataset(list):
            features = {"label": Feature()}

        fake = types.ModuleType("datasets")
        calls = []

        def load_dataset(path, config, split):
            calls.append((path, config, split))
            return Dataset([{"question": "q", "sentence": "s", "label": 1, "idx": 5}])

        fake.load_dataset = load_dataset
        monkeypatch.setitem(sys.modules, "datasets", fake)
        (ex,) = load_examples(get_task("qnli"), "eval", source="hf")
        assert ex == Example("qnli question: q sentence: s", 1, "validation-5", ex.prompt)
        assert ex.prompt.endswith("Question: q\nSentence: s")
        assert calls == [("nyu-mll/glue", "qnli", "validation")]

        def offline(path, config, split):
            raise ConnectionError("Hub unreachable")

        fake.load_dataset = offline
        with pytest.raises(TaskpruneError, match="could not load qnli .*Hub unreachable"):
            load_examples(get_task("qnli"), "fit", source="hf")


# ---------------------------------------------------------------- k-shot sampling


def pool(counts: dict[int, int]) -> list[Example]:
    return [Example(f"text {label} {i}", label, f"{label}-{i}") for label, n in counts.items() for i in range(n)]


class TestSampling:
    def test_balanced(self):
        sample = sample_k_shot(pool({0: 50, 1: 50, 2: 50}), 10, seed=0)
        counts = Counter(e.label for e in sample)
        assert len(sample) == 10 and sorted(counts.values()) == [3, 3, 4]
        assert len({e.uid for e in sample}) == 10

    def test_deterministic_and_seed_dependent(self):
        data = pool({0: 100, 1: 100})
        assert sample_k_shot(data, 10, seed=1) == sample_k_shot(data, 10, seed=1)
        samples = {tuple(e.uid for e in sample_k_shot(data, 10, seed=s)) for s in range(5)}
        assert len(samples) == 5

    def test_remainder_goes_to_different_classes_across_seeds(self):
        data = pool({0: 50, 1: 50})
        majority = {Counter(e.label for e in sample_k_shot(data, 11, seed=s)).most_common(1)[0][0] for s in range(20)}
        assert majority == {0, 1}

    def test_small_class_is_filled_from_others(self):
        sample = sample_k_shot(pool({0: 100, 1: 100, 2: 2}), 30, seed=3)
        counts = Counter(e.label for e in sample)
        assert len(sample) == 30 and counts[2] == 2 and counts[0] + counts[1] == 28 and abs(counts[0] - counts[1]) <= 1

    def test_k_at_least_len_returns_all_shuffled(self):
        data = pool({0: 5, 1: 3})
        sample = sample_k_shot(data, 100, seed=0)
        assert sorted(e.uid for e in sample) == sorted(e.uid for e in data)
        assert sample == sample_k_shot(data, 8, seed=0)

    def test_unbalanced(self):
        data = pool({0: 90, 1: 10})
        sample = sample_k_shot(data, 20, seed=0, balanced=False)
        assert len(sample) == 20 and sample == sample_k_shot(data, 20, seed=0, balanced=False)

    @pytest.mark.parametrize("k", [0, -3, 2.5, True])
    def test_bad_k(self, k):
        with pytest.raises(TaskpruneError, match="positive integer"):
            sample_k_shot(pool({0: 3, 1: 3}), k, seed=0)

    def test_empty(self):
        with pytest.raises(TaskpruneError, match="empty"):
            sample_k_shot([], 3, seed=0)


# ---------------------------------------------------------------- metrics


class TestMetrics:
    def test_accuracy_only(self):
        assert compute_metrics(get_task("sst2"), [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 75.0}

    def test_binary_f1(self):
        # golds 1,1,1,0,0 preds 1,0,1,1,0: TP=2 FP=1 FN=1 -> F1 = 4/6
        result = compute_metrics(get_task("mrpc"), [1, 0, 1, 1, 0], [1, 1, 1, 0, 0])
        assert result["accuracy"] == pytest.approx(60.0)
        assert result["f1"] == pytest.approx(100 * 4 / 6)
        assert compute_metrics(get_task("mrpc"), [0, 0], [0, 0])["f1"] == 0.0

    def test_macro_f1(self):
        # class 0: TP=1 FP=1 FN=1 -> 0.5; class 1: TP=1 FP=0 FN=1 -> 2/3; class 2: TP=1 FP=1 FN=0 -> 2/3
        golds = [0, 0, 1, 1, 2]
        preds = [0, 2, 1, 0, 2]
        result = compute_metrics(get_task("cb"), preds, golds)
        assert result["accuracy"] == pytest.approx(60.0)
        assert result["macro_f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 2 / 3) / 3)
        # class 2 absent from golds and predictions: averaged over classes 0 and 1 (as scikit-learn)
        assert compute_metrics(get_task("cb"), [0, 1], [0, 1])["macro_f1"] == pytest.approx(100.0)

    def test_invalid_prediction_counts_wrong(self):
        assert compute_metrics(get_task("mrpc"), [-1, 1], [0, 1]) == {"accuracy": 50.0, "f1": 100.0}

    def test_errors(self):
        with pytest.raises(TaskpruneError, match="must match"):
            compute_metrics(get_task("sst2"), [1], [1, 0])
        with pytest.raises(TaskpruneError, match="zero examples"):
            compute_metrics(get_task("sst2"), [], [])
        with pytest.raises(TaskpruneError, match="not in 0..1"):
            compute_metrics(get_task("sst2"), [1], [2])


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real GLUE/SuperGLUE data not found at {SHARED_DATA}")
class TestRealData:
    EXPECTED = {"sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277), "cb": (250, 56)}
    HASH_SPLIT_TOTALS = {"qnli": 5463, "boolq": 3270}

    @pytest.mark.parametrize("name", ["sst2", "mrpc", "rte", "cb", "qnli", "boolq"])
    def test_counts(self, name: str):
        task = get_task(name)
        fit = load_examples(task, "fit", SHARED_DATA)
        ev = load_examples(task, "eval", SHARED_DATA)
        if name in self.EXPECTED:
            assert (len(fit), len(ev)) == self.EXPECTED[name]
        else:
            total = self.HASH_SPLIT_TOTALS[name]
            assert len(fit) + len(ev) == total
            assert 0.27 <= len(ev) / total <= 0.33
            assert not {e.text for e in fit} & {e.text for e in ev}
        assert set(e.label for e in fit) == set(range(task.num_labels))
        assert all(e.text.startswith(name + " ") for e in ev)

    def test_label_balance_matches_sources(self):
        counts = Counter(e.label for e in load_examples(get_task("boolq"), "fit", SHARED_DATA))
        counts += Counter(e.label for e in load_examples(get_task("boolq"), "eval", SHARED_DATA))
        assert counts == {1: 2033, 0: 1237}
        cb = Counter(e.label for e in load_examples(get_task("cb"), "fit", SHARED_DATA))
        assert cb == {0: 115, 1: 119, 2: 16}
