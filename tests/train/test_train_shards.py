"""Token shards (text / JSONL / Parquet, masks, document starts, resume) and the rows cut from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from puyu.train import shards as S
from puyu.train.dataset import DocRows, StreamRows


def _read(d):
    return S.load_shards([d])


def test_formats_masks_and_boundaries(tmp_path, tiny_tokenizer):
    tok = tiny_tokenizer
    (tmp_path / "a.txt").write_text("the model reads\ntokens and text\n", encoding="utf-8")
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"text": "print 1 2 3"}) + "\n\n")
        f.write(json.dumps({"prompt": "12+34=", "completion": "46"}) + "\n")
        f.write(json.dumps({"segments": [["1+2=", False], ["3", True], ["\n5-7=", False], ["-2", True]]}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["while the engine", "batches requests"]}), tmp_path / "c.parquet")
    meta = S.tokenize_to_shard([tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"],
                               tmp_path / "out", tok, progress=False)
    tokens, mask, docs, vocab = _read(tmp_path / "out")
    assert vocab == tok.vocab_size and tokens.dtype == np.uint16 and meta["n_docs"] == 6
    expected = [
        ([tok.bos_id] + tok.encode("the model reads\ntokens and text\n") + [tok.eos_id], None),
        ([tok.bos_id] + tok.encode("print 1 2 3") + [tok.eos_id], None),
        ([tok.bos_id] + tok.encode("12+34="), tok.encode("46") + [tok.eos_id]),
        ([tok.bos_id] + tok.encode("1+2="), tok.encode("3"), tok.encode("\n5-7="), tok.encode("-2") + [tok.eos_id]),
        ([tok.bos_id] + tok.encode("while the engine") + [tok.eos_id], None),
        ([tok.bos_id] + tok.encode("batches requests") + [tok.eos_id], None),
    ]
    at = 0
    for k, (first, *rest) in enumerate(expected):
        assert docs[k] == at
        if rest == [None]:  # a text document: every token but <s> is a target
            ids, want_mask = first, [0] + [1] * (len(first) - 1)
        else:  # alternating untrained / trained pieces
            pieces = [first, *rest]
            ids = [t for piece in pieces for t in piece]
            want_mask = [i % 2 for i, piece in enumerate(pieces) for _ in piece]
        assert tokens[at:at + len(ids)].tolist() == ids
        assert mask[at:at + len(ids)].tolist() == want_mask
        at += len(ids)
    assert at == len(tokens) == meta["n_tokens"]
    assert meta["n_loss_tokens"] == int(mask.sum())


def test_bad_records_are_clear_errors(tmp_path, tiny_tokenizer):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n', encoding="utf-8")
    with pytest.raises(S.ShardError, match=r"bad\.jsonl:record 2.*'text'"):
        S.tokenize_to_shard([tmp_path / "bad.jsonl"], tmp_path / "o", tiny_tokenizer, progress=False)
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(S.ShardError, match=r"broken\.jsonl:2: invalid JSON"):
        S.tokenize_to_shard([tmp_path / "broken.jsonl"], tmp_path / "o2", tiny_tokenizer, progress=False)
    with pytest.raises(S.ShardError, match="no meta.json"):
        S.Shard(tmp_path / "o2")


def test_interrupted_tokenizing_resumes_to_the_same_result(tmp_path, tiny_tokenizer, monkeypatch):
    lines = [json.dumps({"text": f"the model reads {i} tokens " * 3}) for i in range(400)]
    files = []
    for k in range(3):
        f = tmp_path / f"in{k}.jsonl"
        f.write_text("\n".join(lines[k * 130:(k + 1) * 130]) + "\n", encoding="utf-8")
        files.append(f)
    clean = S.tokenize_to_shard(files, tmp_path / "clean", tiny_tokenizer, progress=False)

    monkeypatch.setattr(S, "FLUSH_TOKENS", 500)  # flush (and record progress) often
    real = S.record_tokens
    calls = {"n": 0}

    def dying(tok, record, where):
        calls["n"] += 1
        if calls["n"] == 200:  # the "crash": in the middle of the second file
            raise KeyboardInterrupt
        return real(tok, record, where)

    monkeypatch.setattr(S, "record_tokens", dying)
    with pytest.raises(KeyboardInterrupt):
        S.tokenize_to_shard(files, tmp_path / "resumed", tiny_tokenizer, progress=False)
    assert (tmp_path / "resumed" / "progress.json").exists() and not (tmp_path / "resumed" / "meta.json").exists()
    monkeypatch.setattr(S, "record_tokens", real)
    meta = S.tokenize_to_shard(files, tmp_path / "resumed", tiny_tokenizer, progress=False)
    assert meta["n_tokens"] == clean["n_tokens"] and meta["n_docs"] == clean["n_docs"]
    for name in ("tokens.bin", "mask.bin", "docs.bin"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


def test_stream_rows_doc_ids_positions_and_order():
    tokens = np.arange(100, 140, dtype=np.uint16)  # 40 tokens
    mask = np.ones(40, dtype=np.uint8)
    docs = np.array([0, 5, 18], dtype=np.int64)
    rows = StreamRows(tokens, mask, docs, seq_len=8, seed=3)
    assert rows.n_rows == (40 - 1) // 8
    b = rows.batch([0, 2])
    assert b.input_ids[0].tolist() == list(range(100, 108)) and b.targets[0].tolist() == list(range(101, 109))
    # Row 0 covers tokens 0..8: doc 0 is 0..4, doc 1 starts at 5.
    assert b.doc_ids[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert b.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    # The target token 5 (first of doc 1) is not predicted from doc 0.
    assert b.loss_mask[0].tolist() == [1, 1, 1, 1, 0, 1, 1, 1]
    # Row 2 covers tokens 16..24: doc 1 continues (positions restart at the row), doc 2 starts at 18.
    assert b.doc_ids[1].tolist() == [1, 1, 2, 2, 2, 2, 2, 2]
    assert b.position_ids[1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    # Order: a permutation per epoch; state_dict round trip continues identically.
    first = rows.next_indices(7)
    assert sorted(first[:4]) == sorted(set(first[:4]))
    state = rows.state_dict()
    after = rows.next_indices(9)
    rows2 = StreamRows(tokens, mask, docs, seq_len=8, seed=3)
    rows2.load_state_dict(state)
    assert rows2.next_indices(9) == after


def test_doc_rows_pack_whole_documents():
    lengths = [5, 9, 3, 7, 20]
    tokens = np.concatenate([np.full(n, i + 10, dtype=np.uint16) for i, n in enumerate(lengths)])
    mask = np.ones(len(tokens), dtype=np.uint8)
    starts = np.cumsum([0] + lengths[:-1]).astype(np.int64)
    rows = DocRows(tokens, mask, starts, seq_len=11, seed=0, pad_id=2)
    assert rows.truncated == 1  # the 20-token document is cut to 12
    seen = []
    for i in range(rows.n_rows):
        b = rows.batch([i])
        full = torch.cat([b.input_ids[0], b.targets[0, -1:]]).tolist()
        for k in sorted(set(b.doc_ids[0].tolist())):
            ids = [t for t, d in zip(full, b.doc_ids[0].tolist() + [b.doc_ids[0, -1].item()]) if d == k]
            if ids[0] != 2:
                seen.append(ids[0])
                assert len(set(ids)) == 1  # never mixed with another document
        # Padding has loss mask 0.
        assert all(not m for t, m in zip(b.targets[0].tolist(), b.loss_mask[0].tolist()) if t == 2)
    assert sorted(seen) == [10, 11, 12, 13, 14]


def test_best_fit_packs_every_document_once_in_fewer_rows_than_next_fit():
    import numpy as np

    from puyu.errors import ConfigError
    from puyu.train.dataset import DocRows

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 200, size=400)  # like the nano SFT conversations: 113 tokens on average
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens = np.arange(int(lengths.sum())) % 1000
    mask = np.ones_like(tokens, dtype=np.uint8)
    nxt, best = (DocRows(tokens, mask, starts, 256, seed=3, fit=f) for f in ("next", "best"))
    for rows in (nxt, best):
        pieces = sorted(p for row in rows.layout for p in row)
        assert pieces == sorted(zip(starts.tolist(), lengths.tolist()))  # each document once, whole
        assert all(sum(n for _, n in row) <= 257 for row in rows.layout)
        t, m, doc, pos = rows.row(rows.n_rows - 1)
        assert t.shape == (257,) and pos[0] == 0
    assert best.n_rows < nxt.n_rows and best.fill > 0.95 > nxt.fill
    assert best.layout == DocRows(tokens, mask, starts, 256, seed=3, fit="best").layout  # seeded
    with pytest.raises(ConfigError, match="'next' or 'best'"):
        DocRows(tokens, mask, starts, 256, fit="first")
