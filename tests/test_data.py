"""Data: every input form, tokenise-once caching, and the seeded, world-size-independent window order."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nitp_train.config import DataConfig
from nitp_train.data import WindowSampler, prepare_data, read_documents
from nitp_train.errors import UserError

DOCS = ["The first document.", "A second one, longer than the first.", "Third."]


@pytest.fixture
def corpus_dir(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text(DOCS[0])
    with open(d / "b.jsonl", "w") as f:
        f.write(json.dumps({"text": DOCS[1], "id": 1}) + "\n\n")
    pq.write_table(pa.table({"text": [DOCS[2]]}), d / "c.parquet")
    return d


def test_every_input_form_reads_the_same_documents(corpus_dir, tmp_path):
    assert list(read_documents(str(corpus_dir))) == DOCS  # a dir: files in name order
    assert list(read_documents(str(corpus_dir / "*.jsonl"))) == [DOCS[1]]  # a glob
    assert list(read_documents(str(corpus_dir / "c.parquet"))) == [DOCS[2]]
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    assert list(read_documents(str(gz))) == ["zipped"]
    assert list(read_documents(str(corpus_dir), max_docs=2)) == DOCS[:2]


def test_missing_text_field_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UserError, match="no 'text' field"):
        list(read_documents(str(bad)))


def test_parquet_without_the_text_column_is_a_user_error(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        list(read_documents(str(tmp_path / "p.parquet")))


def test_parquet_is_read_a_row_group_at_a_time_in_order(tmp_path):
    docs = [f"document {i}" for i in range(7)]
    pq.write_table(
        pa.table({"id": list(range(7)), "text": docs[:3] + [""] + docs[4:]}), tmp_path / "p.parquet", row_group_size=2
    )
    assert pq.ParquetFile(tmp_path / "p.parquet").num_row_groups == 4
    assert list(read_documents(str(tmp_path / "p.parquet"))) == docs[:3] + docs[4:]  # the empty text skipped


def test_hf_dataset_id_goes_through_datasets(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, streaming=False, revision=None):  # the hub is unreachable
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict(
            {"text": ["hub doc one", "", "hub doc two"], "id": [1, 2, 3]}
        ).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(read_documents("someone/corpus:en")) == ["hub doc one", "hub doc two"]  # empty texts skipped
    assert list(read_documents("someone/corpus", split="validation")) == ["hub doc one", "hub doc two"]
    assert calls == [("someone/corpus", "en", "train", True), ("someone/corpus", None, "validation", True)]  # streamed
    with pytest.raises(UserError, match="no 'body' field"):
        list(read_documents("someone/corpus", text_field="body"))


def test_unreachable_hf_dataset_is_one_clear_error():
    with pytest.raises(UserError, match="not a local path and not loadable as an HF dataset"):
        list(read_documents("no-such-user/no-such-dataset-nitp"))


@pytest.mark.parametrize("kind, needle", [("empty", "empty corpus"), ("no-column", "no 'text' column")])
def test_failed_tokenisation_leaves_no_partial_dir(tmp_path, kind, needle):
    if kind == "empty":
        (tmp_path / "bad.txt").write_text("  \n")
        path = tmp_path / "bad.txt"
    else:
        pq.write_table(pa.table({"body": ["x"]}), tmp_path / "bad.parquet")
        path = tmp_path / "bad.parquet"
    with pytest.raises(UserError, match=needle):
        prepare_data(DataConfig(path=str(path), tokenizer="train:300"), tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_tokenised_once_and_reused(tiny_corpus, tmp_path, shared_data):
    cfg = DataConfig(path=str(tiny_corpus), tokenizer=str(shared_data / "tokenizers" / "gpt2"), val_fraction=0.05)
    first = prepare_data(cfg, tmp_path)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    second = prepare_data(cfg, tmp_path)
    assert second.dir == first.dir and (second.dir / "train.bin").stat().st_mtime_ns == mtime
    # the token stream is the documents tokenised with the tokenizer, EOS-separated; 5 % held out at the tail
    ids = first.tokenizer(tiny_corpus.read_text(), add_special_tokens=False)["input_ids"] + [
        first.tokenizer.eos_token_id
    ]
    n_val = int(len(ids) * 0.05)
    assert np.array_equal(np.asarray(first.train), ids[: len(ids) - n_val])
    assert np.array_equal(np.asarray(first.val), ids[len(ids) - n_val :])
    # a different tokenizer is a different cache entry, not a silent reuse
    other = prepare_data(DataConfig(path=str(tiny_corpus), tokenizer="train:300"), tmp_path)
    assert other.dir != first.dir and other.vocab_size <= 300


def test_window_order_is_seeded_and_independent_of_the_world_size():
    tokens = np.arange(10_000, dtype=np.uint16)
    a, b = WindowSampler(tokens, 50, seed=1), WindowSampler(tokens, 50, seed=1)
    assert a.sample_ids(3, 8) == b.sample_ids(3, 8)
    assert a.sample_ids(3, 8) != WindowSampler(tokens, 50, seed=2).sample_ids(3, 8)
    # one epoch visits every window once
    epoch = [w for s in range(25) for w in a.sample_ids(s, 8)]
    assert sorted(epoch) == list(range(200))
    # rows are contiguous slices of the stream
    batch = a.batch(a.sample_ids(0, 2)).numpy()
    assert all(np.array_equal(row, np.arange(row[0], row[0] + 50)) for row in batch)


def test_moe_preset_trains_with_router_loss(tmp_path, tiny_sets, tiny_corpus):
    from transformers import AutoModelForCausalLM

    from nitp_train.config import load_config
    from nitp_train.train import train

    sets = [s for s in tiny_sets if "hf_overrides" not in s] + [
        "model.preset=tiny-moe",
        "model.hf_overrides.hidden_size=32",
        "model.hf_overrides.num_hidden_layers=3",
        f"data.path={tiny_corpus}",
        "steps=2",
        "save_every=2",
    ]
    train(load_config(sets=sets), tmp_path / "moe", progress=False)
    records = [json.loads(line) for line in (tmp_path / "moe" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_router"] > 0 for r in records)
    # total = CE + coef * router loss + lambda * NITP
    r = records[0]
    assert r["loss_total"] == pytest.approx(r["loss_ntp"] + 0.001 * r["loss_router"] + r["loss_nitp"], rel=1e-5)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "moe" / "checkpoints" / "step-000002")
    assert type(model).__name__ == "Qwen2MoeForCausalLM"


def test_hf_dataset_revisions_are_passed_recorded_and_keyed(monkeypatch):
    """The hub is unreachable here, so datasets.load_dataset is replaced by a recorder: this checks the
    plumbing (the revision reaches it, from the trainer and from geometry) and the cache key, not the hub."""
    import datasets

    from nitp_eval.geometry.extract import read_text
    from nitp_train.data import _cache_key

    seen = []

    def fake_load_dataset(name, config=None, **kwargs):
        seen.append((name, config, kwargs["split"], kwargs.get("revision")))
        return [{"text": "a document"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(read_documents("org/corpus:en", revision="abc123")) == ["a document"]
    assert list(read_text("org/corpus", "validation", "v1.0")) == ["a document"]
    assert seen == [("org/corpus", "en", "train", "abc123"), ("org/corpus", None, "validation", "v1.0")]
    a, b = (_cache_key(DataConfig(path="org/corpus", revision=r)) for r in ("abc123", "def456"))
    assert a != b and a["revision"] == "abc123"  # two revisions never share a token cache
