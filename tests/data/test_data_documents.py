"""Readers and writers: every input format, broken input becoming rejects with a reason, atomic writes."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from puyu.data.documents import (
    Document,
    JsonlWriter,
    ParquetWriter,
    list_shards,
    read_jsonl,
    read_parquet,
    read_shard,
)
from puyu.errors import PuyuError

RECORDS = [{"id": "a", "text": "first document", "metadata": {"url": "https://x.org/a"}},
           {"id": "b", "text": "second document", "lang": "en"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_round_trip_all_compressions(tmp_path, suffix):
    path = str(tmp_path / f"x{suffix}")
    w = JsonlWriter(path)
    for r in RECORDS:
        w.write(r)
    assert not os.path.exists(path)  # nothing under the final name until close()
    w.close()
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]
    docs = list(read_jsonl(path))
    assert [d.id for d in docs] == ["a", "b"]
    assert docs[0].metadata == {"url": "https://x.org/a"}
    assert docs[1].metadata == {"lang": "en"}  # flat records: other fields become metadata
    if suffix == ".jsonl.gz":
        with gzip.open(path, "rt") as f:
            assert json.loads(f.readline())["id"] == "a"


def test_broken_lines_become_documents_with_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    damaged_gbk = "新华社北京电，会议在人民大会堂开幕。".encode("gbk")[:-3] + b"\xff\x20"
    path.write_bytes(b'{"id": "ok", "text": "fine"}\n'
                     b'{"id": "gbk", "text": "' + damaged_gbk + b'"}\n'
                     b'{"id": "cut", "text": "no end\n'
                     b'\n'
                     b'[1, 2]\n'
                     b'{"id": "notext", "body": "x"}\n'
                     b'{"id": "latin1", "text": "caf\xe9"}\n')
    docs = list(read_jsonl(str(path)))
    assert [d.error is None for d in docs] == [True, False, False, False, False, True]
    assert docs[1].error.startswith("undecodable bytes (likely gb18030: ") and docs[1].id == "bad.jsonl:2"
    assert docs[5].text == "café" and docs[5].metadata == {"encoding": "cp1252"}  # decoded, and said so
    assert docs[2].error.startswith("malformed json (")
    assert docs[3].error == "record is not a JSON object"
    assert docs[4].error == "no string text field ('text')" and docs[4].id == "notext"


def test_parquet_round_trip_and_metadata(tmp_path):
    path = str(tmp_path / "x.parquet")
    w = ParquetWriter(path)
    for r in RECORDS:
        w.write(r)
    w.close()
    docs = list(read_parquet(path))
    assert [(d.id, d.text) for d in docs] == [("a", "first document"), ("b", "second document")]
    assert docs[0].metadata == {"url": "https://x.org/a"}
    # a Parquet file written by someone else, with plain columns
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["t1", "t2"], "source": ["s1", "s2"]}), tmp_path / "plain.parquet")
    plain = list(read_parquet(str(tmp_path / "plain.parquet")))
    assert plain[1].id == "plain.parquet:2" and plain[1].metadata == {"source": "s2"}


def test_text_folder_shards_and_undecodable_files(tmp_path):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        (root / f"f{i}.txt").write_text(f"text number {i}")
    (root / "sub" / "g.md").write_text("nested")
    (root / "broken.txt").write_bytes("abc 中文".encode()[:-1])  # UTF-8 cut inside a character
    (root / ".hidden").write_text("skip me")
    (root / "_manifest.json").write_text("{}")
    shards = list_shards([str(root)], files_per_shard=3)
    assert [s.kind for s in shards] == ["text", "text", "text"]
    docs = [d for s in shards for d in read_shard(s, root=str(root))]
    assert sorted(d.id for d in docs) == sorted(["broken.txt", "f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt",
                                                 "sub/g.md"])
    broken = next(d for d in docs if d.id == "broken.txt")
    assert broken.error.startswith("undecodable bytes (likely utf-8: ") and broken.text.startswith("abc")
    assert list_shards([str(root)], files_per_shard=3) == shards  # same order every time


def test_list_shards_globs_and_errors(tmp_path):
    for name in ("b.jsonl", "a.jsonl.zst", "c.parquet"):
        (tmp_path / name).write_bytes(b"")
    shards = list_shards([str(tmp_path / "*")])
    assert [os.path.basename(s.files[0]) for s in shards] == ["a.jsonl.zst", "b.jsonl", "c.parquet"]
    assert [s.kind for s in shards] == ["jsonl", "jsonl", "parquet"]
    with pytest.raises(PuyuError, match="matched no files"):
        list_shards([str(tmp_path / "*.nothing")])
    with pytest.raises(PuyuError, match="does not exist"):
        list_shards([str(tmp_path / "missing.jsonl")])


def test_document_record():
    assert Document("i", "t", {"k": 1}).to_record() == {"id": "i", "text": "t", "metadata": {"k": 1}}
