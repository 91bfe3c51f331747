"""Documents, shards, readers and writers.

A `Document` is (id, text, metadata). Inputs are JSONL (plain, .gz, .zst), Parquet, or folders of text
files; outputs are sharded JSONL (plain/.gz/.zst) or Parquet. A *shard* is the unit of work and of
resumption: one input JSONL/Parquet file, or a fixed-size group of text files (sorted by path), so the
shard list is the same on every run over the same inputs.

Encodings: text files and JSONL lines that are not UTF-8 are decoded by `decode_bytes` (byte-order
marks for UTF-8/16/32, then charset-normalizer: GBK/GB18030, Big5, Shift-JIS, EUC-KR, UTF-16 without a
BOM, Western code pages), and the encoding found is recorded in metadata["encoding"] (absent for
UTF-8). Nothing disappears silently: bytes that no encoding decodes, a line that is not JSON, or a
record without a text field come out of a reader as a Document whose `error` is set (for bytes: the
likely encoding and where decoding failed), and the executor writes it to the rejects with step
`reader`. Writers are atomic: they write `NAME.tmp.PID` and rename on `close()`, so a crash leaves no
half-written file under a final name.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
import re
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


_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_surrogates(text: str) -> str:
    """`text` with UTF-16 surrogate pairs joined into their character and lone surrogates replaced by
    U+FFFD (as puyu.model.tokenizer.repair_text does). A Python string can hold them (JSON "\\ud800"
    escapes, `surrogateescape` decoding) but UTF-8 cannot, so no writer could write them out; the
    replacement character then counts as an abnormal character in the `characters` step."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


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
    return Document(repair_surrogates(doc_id), repair_surrogates(text), meta)


# byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Latin-script single-byte code pages. charset-normalizer cannot tell them apart on short text (it calls
# "Ça été où? Déjà là." in Latin-1 cp1257, and "café" cp1250); when it answers one of these and the bytes
# are valid cp1252 we take cp1252, the Windows superset of Latin-1 (what browsers use for "latin-1")
_WESTERN = frozenset({"cp1250", "cp1252", "cp1254", "cp1257", "cp775", "cp850", "cp437", "cp858", "latin_1",
                      "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_9", "iso8859_10", "iso8859_13",
                      "iso8859_14", "iso8859_15", "iso8859_16", "mac_latin2", "mac_roman", "mac_iceland",
                      "mac_turkish", "hp_roman8"})
# tried, for the message, when nothing decodes: the likely encoding is the one with the fewest bad bytes
_LIKELY = ("utf_8", "gb18030", "big5", "shift_jis", "euc_kr", "utf_16")


class Undecodable(ValueError):
    """Bytes that no encoding decodes; the message names the likely encoding."""


def decode_bytes(data: bytes) -> tuple[str, str]:
    """(text, encoding) of `data`: a byte-order mark decides (UTF-8/16/32); else UTF-8; else
    charset-normalizer's best match (GB18030 for GBK, Big5, cp932, UTF-16 without a BOM, ...; among
    Latin-script code pages cp1252). Raises `Undecodable` naming the likely encoding (the one of
    utf-8, gb18030, big5, shift_jis, euc_kr, utf-16 that leaves the fewest bad bytes) and where it
    fails, when no encoding decodes the bytes cleanly (damaged or truncated text, binary data)."""
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as e:
                raise Undecodable(f"undecodable bytes ({enc} by its byte-order mark, invalid at offset "
                                  f"{e.start})") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        utf8_error = e.start
    # damaged UTF-8 (a truncated file, a few bad bytes) is not another encoding: most of its non-ASCII
    # characters are valid UTF-8 sequences (GBK, Big5 or Latin-1 text almost never forms one), and a
    # multi-byte code page would turn all of it into other characters
    replaced = data.decode("utf-8", errors="replace")
    n_bad = replaced.count("\ufffd")
    if sum(1 for c in replaced if c > "\x7f") - n_bad >= n_bad:  # GBK prose: 0.2-0.3 valid per invalid
        raise Undecodable(f"undecodable bytes (likely utf-8: {n_bad} invalid sequence(s), the first at "
                          f"offset {utf8_error})")
    from charset_normalizer import from_bytes
    from charset_normalizer.utils import is_multi_byte_encoding

    best = from_bytes(data).best()
    if best is not None:
        enc = best.encoding
        # a Western code page, or a guess on a few high bytes (charset-normalizer calls b"abc \xff\xfe"
        # cp1006, Urdu): cp1252 when the bytes are valid in it
        if enc in _WESTERN or (not is_multi_byte_encoding(enc) and sum(b >= 0x80 for b in data) < 16):
            try:
                return data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                pass
        try:
            return data.decode(enc), codecs.lookup(enc).name
        except (UnicodeDecodeError, LookupError):
            pass
    # UTF-16 decodes almost any even-length bytes, so it is a candidate only for text with NUL bytes
    cands = [e for e in _LIKELY if e != "utf_16" or data.count(b"\x00") * 8 > len(data)]
    bad = {enc: data.decode(enc, errors="replace").count("\ufffd") for enc in cands}
    likely = min(cands, key=bad.__getitem__)  # ties: the earlier one (UTF-8 first)
    try:
        data.decode(likely)
        first = utf8_error
    except UnicodeDecodeError as e:
        first = e.start
    raise Undecodable(f"undecodable bytes (likely {likely.replace('_', '-')}: {bad[likely]} invalid "
                      f"sequence(s), the first at offset {first})")


def _lines_utf16(path: str, enc: str) -> Iterator[tuple[int, str]]:
    # invalid sequences become U+FFFD, and read_jsonl rejects those lines
    with io.TextIOWrapper(open_binary(path), encoding=enc, errors="replace", newline="") as f:
        yield from enumerate(f, 1)


def _sniff_jsonl(path: str) -> str | None:
    """A UTF-16/32 encoding for a JSONL file whose lines cannot be split at b"\\n" (a BOM, or "{" with a
    NUL byte beside it), else None."""
    with open_binary(path) as f:
        head = f.read(4)
    for bom, enc in _BOMS:
        if head.startswith(bom) and enc != "utf-8-sig":
            return enc
    if head[:2] == b"{\x00":
        return "utf-16-le"
    if head[:2] == b"\x00{":
        return "utf-16-be"
    return None


def read_jsonl(path: str, text_key: str = "text", id_key: str = "id") -> Iterator[Document]:
    """Yield one Document per line. Blank lines are skipped; bad lines yield a Document with `error`.
    Lines that are not UTF-8 are decoded by `decode_bytes` (the encoding found for one line is tried
    first on the next) and their documents get metadata["encoding"]; a UTF-16/32 file (BOM, or NUL
    bytes beside the first "{") is read as text in that encoding."""
    name = os.path.basename(path)
    wide = _sniff_jsonl(path)
    if wide is not None:
        for lineno, line in _lines_utf16(path, wide):
            where = f"{name}:{lineno}"
            if not line.strip():
                continue
            if "\ufffd" in line:
                yield Document(where, line, {}, error=f"undecodable bytes ({wide}: invalid sequence in the line)")
                continue
            yield _parse_line(line, where, text_key, id_key, wide)
        return
    file_enc: str | None = None
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{name}:{lineno}"
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            if not raw.strip():
                continue
            try:
                yield _record_to_doc(_loads_fast(raw), where, text_key, id_key)
                continue
            except ValueError:
                pass  # the slow path below says what is wrong with the line
            enc = "utf-8"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = None
                if file_enc is not None:
                    try:
                        line, enc = raw.decode(file_enc), file_enc
                    except UnicodeDecodeError:
                        line = None
                if line is None:
                    try:
                        line, enc = decode_bytes(raw)
                    except Undecodable as e:
                        yield Document(where, raw.decode("utf-8", errors="replace"), {}, error=str(e))
                        continue
                    file_enc = enc
            yield _parse_line(line, where, text_key, id_key, enc)


def _parse_line(line: str, where: str, text_key: str, id_key: str, enc: str) -> Document:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return Document(where, line, {}, error=f"malformed json ({e.msg})")
    d = _record_to_doc(rec, where, text_key, id_key)
    if enc not in ("utf-8", "utf-8-sig") and d.error is None:
        d.metadata["encoding"] = enc
    return d


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
    """One Document per file; the id is the path (relative to `root` when given). Files that are not
    UTF-8 are decoded by `decode_bytes` (metadata["encoding"] says how); files that no encoding decodes
    become a Document with `error` naming the likely encoding."""
    for p in paths:
        doc_id = os.path.relpath(p, root) if root else p
        data = Path(p).read_bytes()
        try:
            text, enc = decode_bytes(data)
        except Undecodable as e:
            yield Document(doc_id, data.decode("utf-8", errors="replace"), {"source": doc_id}, error=str(e))
            continue
        meta = {"source": doc_id} if enc == "utf-8" else {"source": doc_id, "encoding": enc}
        yield Document(doc_id, text, meta)


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
