"""Documents, shards, readers and writers.

A `Document` is (id, text, metadata). Inputs are JSONL (plain, .gz, .zst), Parquet, or folders of text
files; outputs are sharded JSONL (plain/.gz/.zst) or Parquet. A *shard* is the unit of work and of
resumption: one input JSONL/Parquet file, or a fixed-size group of text files (sorted by path), so the
shard list is the same on every run over the same inputs.

Nothing disappears silently: a line that is not valid UTF-8, is not JSON, or has no text field comes
out of a reader as a Document whose `error` is set, and the executor writes it to the rejects with step
`reader`. Writers are atomic: they write `NAME.tmp.PID` and rename on `close()`, so a crash leaves no
half-written file under a final name.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from puyu.errors import PuyuError

try:  # orjson (in the `data` extra) is several times faster; the stdlib is the fallback
    import orjson

    def _dumps(record: dict) -> bytes:
        return orjson.dumps(record)

    def _loads_fast(raw: bytes):
        return orjson.loads(raw)
except ImportError:  # pragma: no cover - exercised only without the data extra
    orjson = None

    def _dumps(record: dict) -> bytes:
        return json.dumps(record, ensure_ascii=False).encode("utf-8")

    def _loads_fast(raw: bytes):
        return json.loads(raw.decode("utf-8"))

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.zst", ".ndjson.zst")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class Document:
    """One document. `metadata` travels with it through every step and into the outputs.

    `error` is set only by readers, for input that could not be parsed; such a document is rejected
    before any step sees it. `cache` holds per-document work that steps share (the segmentation, see
    puyu.data.segment) and is never written out."""

    id: str
    text: str
    metadata: dict = field(default_factory=dict)
    error: str | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def to_record(self) -> dict:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}


@dataclass(frozen=True)
class Shard:
    """A unit of work: `files` read in order by `kind` ("jsonl", "parquet" or "text")."""

    index: int
    kind: str
    files: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}"


# ---------------------------------------------------------------- input discovery


def file_kind(path: str) -> str:
    """'jsonl', 'parquet' or 'text', from the file name."""
    low = path.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def list_shards(paths: list[str], files_per_shard: int = 256, base_dir: str | None = None) -> list[Shard]:
    """Expand `paths` (files, folders searched recursively, or glob patterns) into shards.

    Each JSONL/Parquet file is one shard; text files are grouped `files_per_shard` at a time. Files
    whose name starts with "." or "_" (hidden files, `_manifest.json`) and our temporary files are
    skipped when a folder is expanded. Raises PuyuError if nothing matches."""
    found: list[str] = []
    for p in paths:
        p = os.path.join(base_dir, p) if base_dir and not os.path.isabs(p) else p
        matches = sorted(glob.glob(p, recursive=True)) if glob.has_magic(p) else [p]
        if not matches:
            raise PuyuError(f"input pattern matched no files: {p}")
        for m in matches:
            if os.path.isdir(m):
                for root, dirs, files in os.walk(m):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    found += [os.path.join(root, f) for f in sorted(files)
                              if not f.startswith((".", "_")) and ".tmp." not in f]
            elif os.path.isfile(m):
                found.append(m)
            else:
                raise PuyuError(f"input path does not exist: {m}")
    if not found:
        raise PuyuError(f"no input files under {paths}")
    shards: list[Shard] = []
    texts: list[str] = []
    for f in found:
        kind = file_kind(f)
        if kind == "text":
            texts.append(f)
        else:
            shards.append(Shard(len(shards), kind, (f,)))
    for i in range(0, len(texts), files_per_shard):
        shards.append(Shard(len(shards), "text", tuple(texts[i:i + files_per_shard])))
    return shards


# ---------------------------------------------------------------- readers


def open_binary(path: str, mode: str = "rb", name: str | None = None):
    """Open a possibly compressed file as a binary stream; the compression follows the suffix (.gz,
    .zst) of `name` (default: `path`; writers pass the final name while writing a temporary file)."""
    name = name or path
    if name.endswith(".gz"):
        return gzip.open(path, mode)
    if name.endswith(".zst"):
        import zstandard

        if "r" in mode:
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
        return zstandard.ZstdCompressor(level=3).stream_writer(open(path, "wb"))
    return open(path, mode)


def _record_to_doc(rec: object, where: str, text_key: str, id_key: str) -> Document:
    if not isinstance(rec, dict):
        return Document(where, json.dumps(rec)[:2000], {}, error="record is not a JSON object")
    text = rec.get(text_key)
    doc_id = rec.get(id_key)
    doc_id = where if doc_id is None else str(doc_id)
    if not isinstance(text, str):
        return Document(doc_id, "", {}, error=f"no string text field ({text_key!r})")
    meta = rec.get("metadata")
    if not isinstance(meta, dict):
        # flat records: every other field becomes metadata
        meta = {k: v for k, v in rec.items() if k not in (text_key, id_key)}
    return Document(doc_id, text, meta)


def read_jsonl(path: str, text_key: str = "text", id_key: str = "id") -> Iterator[Document]:
    """Yield one Document per line. Blank lines are skipped; bad lines yield a Document with `error`."""
    name = os.path.basename(path)
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{name}:{lineno}"
            if not raw.strip():
                continue
            try:
                yield _record_to_doc(_loads_fast(raw), where, text_key, id_key)
                continue
            except ValueError:
                pass  # the slow path below says what is wrong with the line
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Document(where, raw.decode("utf-8", errors="replace"), {},
                               error=f"undecodable bytes (at offset {e.start})")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield Document(where, line, {}, error=f"malformed json ({e.msg})")
                continue
            yield _record_to_doc(rec, where, text_key, id_key)


def read_parquet(path: str, text_key: str = "text", id_key: str = "id") -> Iterator[Document]:
    """Yield Documents from a Parquet file, batch by batch. A `metadata` column may hold dicts or
    JSON strings (what `ParquetWriter` writes)."""
    import pyarrow.parquet as pq

    name = os.path.basename(path)
    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            meta = rec.get("metadata")
            if isinstance(meta, str):
                try:
                    rec["metadata"] = json.loads(meta)
                except json.JSONDecodeError:
                    rec["metadata"] = {"raw_metadata": meta}
            yield _record_to_doc(rec, f"{name}:{row}", text_key, id_key)


def read_text_files(paths: tuple[str, ...], root: str | None = None) -> Iterator[Document]:
    """One Document per file; the id is the path (relative to `root` when given)."""
    for p in paths:
        doc_id = os.path.relpath(p, root) if root else p
        data = Path(p).read_bytes()
        try:
            yield Document(doc_id, data.decode("utf-8"), {"source": doc_id})
        except UnicodeDecodeError as e:
            yield Document(doc_id, data.decode("utf-8", errors="replace"), {"source": doc_id},
                           error=f"undecodable bytes (at offset {e.start})")


def read_shard(shard: Shard, text_key: str = "text", id_key: str = "id",
               root: str | None = None) -> Iterator[Document]:
    """All documents of a shard, in a fixed order."""
    if shard.kind == "jsonl":
        for f in shard.files:
            yield from read_jsonl(f, text_key, id_key)
    elif shard.kind == "parquet":
        for f in shard.files:
            yield from read_parquet(f, text_key, id_key)
    else:
        yield from read_text_files(shard.files, root)


def read_any(path: str) -> Iterator[Document]:
    """Read a single file by its suffix (JSONL, Parquet or text)."""
    kind = file_kind(path)
    return read_shard(Shard(0, kind, (path,)))


# ---------------------------------------------------------------- writers


class JsonlWriter:
    """Atomic JSONL writer; compression follows the suffix (.zst, .gz or none)."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp.{os.getpid()}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._f = open_binary(self.tmp, "wb", name=path)
        self.count = 0

    def write(self, record: dict) -> None:
        self._f.write(_dumps(record) + b"\n")
        self.count += 1

    def write_raw(self, line: bytes) -> None:
        """Write bytes as they are (the synthetic corpus uses this to plant broken lines)."""
        self._f.write(line.rstrip(b"\n") + b"\n")

    def close(self) -> None:
        self._f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._f.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class ParquetWriter:
    """Atomic Parquet writer: columns id, text, metadata (a JSON string, since metadata dicts differ
    from document to document). Rows are buffered and written as one table on close."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = f"{path}.tmp.{os.getpid()}"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._rows: dict[str, list] = {"id": [], "text": [], "metadata": []}
        self.count = 0

    def write(self, record: dict) -> None:
        self._rows["id"].append(record["id"])
        self._rows["text"].append(record["text"])
        rest = {k: v for k, v in record.items() if k not in ("id", "text", "metadata")}
        self._rows["metadata"].append(json.dumps({**record.get("metadata", {}), **rest}, ensure_ascii=False))
        self.count += 1

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table(self._rows), self.tmp, compression="zstd")
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def open_writer(path: str) -> JsonlWriter | ParquetWriter:
    """A writer chosen by suffix: .parquet, or JSONL (optionally .gz/.zst)."""
    return ParquetWriter(path) if path.endswith(".parquet") else JsonlWriter(path)


def output_suffix(fmt: str, compression: str) -> str:
    """File suffix for an output format ('jsonl' or 'parquet') and JSONL compression."""
    if fmt == "parquet":
        return ".parquet"
    if fmt != "jsonl":
        raise PuyuError(f"output.format must be 'jsonl' or 'parquet', not {fmt!r}")
    if compression not in ("zst", "gz", "none"):
        raise PuyuError(f"output.compression must be 'zst', 'gz' or 'none', not {compression!r}")
    return ".jsonl" + ("" if compression == "none" else "." + compression)
