"""Token shards: text, chat and prompt/completion records tokenized into packed memory-mapped files.

A shard directory holds
- `tokens.bin`: every document's tokens back to back, uint16 when the vocabulary fits, else uint32;
- `mask.bin`:   uint8 per token, 1 where the token is a training target (0 for `<s>`, prompts,
                non-assistant chat turns);
- `docs.bin`:   int64 start offset of each document in `tokens.bin`;
- `meta.json`:  dtype, counts, vocabulary size, the tokenizer's SHA-256 and the input files, written
                last: a directory without it is unfinished.
While tokenizing, `progress.json` records how far the inputs have been read after every flush;
running the same command again truncates the files to that point and continues (resumable).

Inputs, streamed record by record (never loaded whole):
- `*.txt`: the whole file is one document, read line by line;
- `*.jsonl`: one record per line, one of
    {"text": str}                                   loss on every token,
    {"prompt": str, "completion": str}              loss on the completion and the closing `</s>`,
    {"segments": [[str, bool], ...]}                pieces tokenized one by one, loss where the flag is
                                                    true, and on the closing `</s>`,
    {"messages": [...], "tools": [...], "interpreter": ...}
                                                    rendered with the InternLM2 chat template, loss on
                                                    assistant turns only (see `chat_tokens`);
- `*.parquet`: a `text` column, read in record batches with pyarrow.
Text and prompt/completion documents are `<s> ... </s>`; chat documents are the rendered template
(which starts with `<s>`, and whose turns end with `<|im_end|>`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from puyu.errors import PuyuError
from puyu.train.state import sha256_file

FLUSH_TOKENS = 1 << 20  # write to disk (and record progress) about every million tokens


class ShardError(PuyuError):
    pass


def record_tokens(tok, record: dict, where: str) -> tuple[list[int], list[int]]:
    """Tokens and loss mask of one JSONL record (see the module docstring for the formats)."""
    if not isinstance(record, dict):
        raise ShardError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ShardError(f"{where}: 'messages' must be a non-empty list")
        try:
            from puyu.model.chat_format import chat_tokens

            return chat_tokens(tok, msgs, tools=record.get("tools"), interpreter=record.get("interpreter"))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardError(f"{where}: cannot render conversation ({e})") from None
    if "segments" in record:
        segs = record["segments"]
        if not isinstance(segs, list) or not segs or not all(
                isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], bool) for x in segs):
            raise ShardError(f"{where}: 'segments' must be a non-empty list of [text, train_on_it] pairs")
        ids, mask = [tok.bos_id], [0]
        for text, train_on in segs:
            part = tok.encode(text)
            ids += part
            mask += [int(train_on)] * len(part)
        return ids + [tok.eos_id], mask + [1]
    if "prompt" in record and "completion" in record:
        p, c = record["prompt"], record["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            raise ShardError(f"{where}: 'prompt' and 'completion' must be strings")
        prompt = [tok.bos_id] + tok.encode(p)
        completion = tok.encode(c) + [tok.eos_id]
        return prompt + completion, [0] * len(prompt) + [1] * len(completion)
    if "text" in record:
        if not isinstance(record["text"], str):
            raise ShardError(f"{where}: 'text' must be a string")
        ids = [tok.bos_id] + tok.encode(record["text"]) + [tok.eos_id]
        return ids, [0] + [1] * (len(ids) - 1)
    raise ShardError(f"{where}: a record needs 'text', 'prompt' and 'completion', or 'messages'; "
                     f"got keys {sorted(record)}")


# ---- reading inputs ------------------------------------------------------------------------------
def iter_records(path: Path) -> Iterator[tuple[str, object]]:
    """Yield ("text", str) pieces of one document for .txt, or ("record", dict) per document otherwise.
    A .txt file yields several text pieces of one document (lines grouped up to ~1 MB)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        buf, size = [], 0
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                buf.append(line)
                size += len(line)
                if size > 1_000_000:
                    yield "text", "".join(buf)
                    buf, size = [], 0
        if buf:
            yield "text", "".join(buf)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield "record", json.loads(line)
                except json.JSONDecodeError as e:
                    raise ShardError(f"{path}:{n}: invalid JSON ({e})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise ShardError(f"{path}: parquet input needs a 'text' column (has {pf.schema_arrow.names})")
        for batch in pf.iter_batches(columns=["text"], batch_size=1024):
            for text in batch.column(0).to_pylist():
                yield "record", {"text": text or ""}
    else:
        raise ShardError(f"{path}: unsupported input type {suffix!r} (use .txt, .jsonl or .parquet)")



def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


# ---- writing shards ------------------------------------------------------------------------------
def tokenize_to_shard(inputs: list[str | Path], out_dir: str | Path, tokenizer, progress: bool = True) -> dict:
    """Tokenize `inputs` into the shard directory `out_dir` (see module docstring); return its meta.

    Resumable: if `out_dir` holds a `progress.json` from an interrupted run over the same inputs and
    tokenizer, the files are cut back to the last recorded flush and reading continues from there.
    A finished directory (with `meta.json`) for the same inputs is returned as is."""
    from tqdm import tqdm

    out = Path(out_dir)
    files = [Path(p) for p in inputs]
    for f in files:
        if not f.is_file():
            raise ShardError(f"input {f} does not exist")
    tok_sha = sha256_file(tokenizer.model_file)
    identity = {"inputs": [str(f) for f in files], "sizes": [f.stat().st_size for f in files],
                "tokenizer_sha256": tok_sha}
    meta_path, prog_path = out / "meta.json", out / "progress.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if all(meta.get(k) == v for k, v in identity.items()):
            return meta
        meta_path.unlink()  # different inputs: rebuild from scratch
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    state = {"file_index": 0, "record_index": 0, "n_tokens": 0, "n_docs": 0}
    if prog_path.exists():
        saved = json.loads(prog_path.read_text(encoding="utf-8"))
        if all(saved.get(k) == v for k, v in identity.items()):
            state = {k: saved[k] for k in state}
    # Cut the data files back to the last recorded flush (everything when starting fresh).
    for name, itemsize, count in (("tokens.bin", dtype.itemsize, state["n_tokens"]),
                                  ("mask.bin", 1, state["n_tokens"]), ("docs.bin", 8, state["n_docs"])):
        with open(out / name, "ab") as f:
            f.truncate(count * itemsize)

    bufs: dict[str, list] = {"tokens": [], "mask": [], "docs": []}
    pending = 0

    def flush(file_index: int, record_index: int) -> None:
        nonlocal pending
        for name, key, dt in (("tokens.bin", "tokens", dtype), ("mask.bin", "mask", np.uint8),
                              ("docs.bin", "docs", np.int64)):
            with open(out / name, "ab") as f:
                np.asarray(bufs[key], dtype=dt).tofile(f)
                f.flush()
                os.fsync(f.fileno())
            bufs[key] = []
        pending = 0
        state.update(file_index=file_index, record_index=record_index)
        _write_json(prog_path, {**identity, **state})

    total_bytes = sum(identity["sizes"])
    done_bytes = sum(identity["sizes"][: state["file_index"]])
    bar = tqdm(total=total_bytes, initial=done_bytes, unit="B", unit_scale=True, disable=not progress,
               desc=f"tokenize {out.name}", dynamic_ncols=True)
    for fi in range(state["file_index"], len(files)):
        path = files[fi]
        skip = state["record_index"] if fi == state["file_index"] else 0
        in_txt_doc = skip > 0 and path.suffix.lower() == ".txt"  # resumed inside a .txt document
        for ri, (kind, item) in enumerate(iter_records(path)):
            if ri < skip:
                continue
            if kind == "text":  # a piece of the single document of a .txt file
                ids = tokenizer.encode(item)
                mask = [1] * len(ids)
                if not in_txt_doc:
                    bufs["docs"].append(state["n_tokens"])
                    state["n_docs"] += 1
                    ids, mask = [tokenizer.bos_id] + ids, [0] + mask
                    in_txt_doc = True
            else:
                ids, mask = record_tokens(tokenizer, item, f"{path}:record {ri + 1}")
                bufs["docs"].append(state["n_tokens"])
                state["n_docs"] += 1
            bufs["tokens"] += ids
            bufs["mask"] += mask
            state["n_tokens"] += len(ids)
            pending += len(ids)
            if pending >= FLUSH_TOKENS:
                flush(fi, ri + 1)
                bar.set_postfix(tokens=state["n_tokens"])
        if in_txt_doc:  # close the .txt document
            bufs["tokens"].append(tokenizer.eos_id)
            bufs["mask"].append(1)
            state["n_tokens"] += 1
        flush(fi + 1, 0)
        bar.update(identity["sizes"][fi])
    bar.close()
    if state["n_tokens"] == 0:
        raise ShardError(f"inputs {', '.join(map(str, files))} produced no tokens")
    meta = {**identity, "version": 1, "dtype": dtype.name, "n_tokens": state["n_tokens"],
            "n_docs": state["n_docs"], "vocab_size": tokenizer.vocab_size,
            "n_loss_tokens": int(np.fromfile(out / "mask.bin", dtype=np.uint8).sum(dtype=np.int64))}
    _write_json(meta_path, meta)
    prog_path.unlink(missing_ok=True)
    return meta


# ---- reading shards ------------------------------------------------------------------------------
class Shard:
    """One finished shard directory, memory-mapped. `tokens`, `mask`: [N]; `doc_starts`: [n_docs]."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            hint = " (tokenizing was interrupted: run it again to resume)" if (self.path / "progress.json").exists() else ""
            raise ShardError(f"{self.path} is not a finished token shard: no meta.json{hint}")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        n, dt = self.meta["n_tokens"], np.dtype(self.meta["dtype"])
        for name, itemsize, count in (("tokens.bin", dt.itemsize, n), ("mask.bin", 1, n),
                                      ("docs.bin", 8, self.meta["n_docs"])):
            f = self.path / name
            if not f.exists() or f.stat().st_size != itemsize * count:
                raise ShardError(f"{f} is missing or has the wrong size (expected {itemsize * count} bytes); "
                                 f"re-run `puyu train tokenize`")
        self.tokens = np.memmap(self.path / "tokens.bin", dtype=dt, mode="r", shape=(n,))
        self.mask = np.memmap(self.path / "mask.bin", dtype=np.uint8, mode="r", shape=(n,))
        self.doc_starts = np.fromfile(self.path / "docs.bin", dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])


def load_shards(paths: list[str | Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Concatenate shard directories: (tokens int64 [N], mask uint8 [N], doc_starts int64 [D], vocab).
    Small shards (the nano scale) are read into memory; the arrays are views of memmaps otherwise."""
    if not paths:
        raise ShardError("no shard directories given")
    shards = [Shard(p) for p in paths]
    vocab = {s.vocab_size for s in shards}
    if len(vocab) > 1:
        raise ShardError(f"shards were tokenized with different vocabularies: {sorted(vocab)}")
    if len(shards) == 1:
        s = shards[0]
        return s.tokens, s.mask, s.doc_starts, s.vocab_size
    offsets = np.cumsum([0] + [len(s) for s in shards[:-1]])
    tokens = np.concatenate([s.tokens for s in shards])
    mask = np.concatenate([s.mask for s in shards])
    docs = np.concatenate([s.doc_starts + off for s, off in zip(shards, offsets)])
    return tokens, mask, docs, shards[0].vocab_size
