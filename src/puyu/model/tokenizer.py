"""SentencePiece tokenizers with InternLM2's chat tokens: load, encode/decode, train, save.

With the real InternLM2 `tokenizer.model` the chat tokens are spare pieces renamed by hand
(`[UNUSED_TOKEN_141..146]` -> ids 92538..92543); a tokenizer trained by puyu carries pieces literally
named `<|im_start|>` etc. Either way `special_ids` maps the chat-token text to its id.

Injection safety: with `allow_special=False` (the default, for user text) no special or user-defined
piece can come out of `encode`: text such as "<|im_start|>" or "[UNUSED_TOKEN_146]" stays plain text.
Templates encode with `allow_special=True`; chats go through `puyu.model.chat_format.encode_chat`, which
allows specials only for the template's own markers.

Text SentencePiece cannot take: a Python string may hold lone UTF-16 surrogates ("\\ud800": valid in
JSON, produced by `surrogateescape` when argv or a file holds bytes that are not UTF-8), which have no
UTF-8 form, and SentencePiece fails on them. `encode` repairs them once, here, for every caller (CLI,
agent tool results, interpreter output, training data, evaluation inputs): a surrogate pair is joined
into its character and each lone surrogate becomes U+FFFD, the replacement character the data pipeline
also uses. `errors="strict"` raises `UnencodableTextError` instead. The server refuses such text before
it gets here (400 naming the field, `puyu.serve.openai_schema`). Every other code point (NUL, U+FFFE,
private use, U+10FFFF) is encodable (byte fallback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from puyu.errors import TokenizerError
from puyu.model.chat_format import BOS, CHAT_TOKENS, EOS, IM_END, TEMPLATE_VERSION, chat_template

log = logging.getLogger(__name__)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class UnencodableTextError(TokenizerError, ValueError):
    """Text the tokenizer cannot encode (a lone surrogate) with `errors="strict"`."""


def repair_text(text: str, errors: str = "replace") -> str:
    """`text` with surrogate pairs joined and lone surrogates replaced by U+FFFD ("replace"), or an
    UnencodableTextError naming the first one ("strict"). Text without surrogates is returned as is."""
    m = _SURROGATE_RE.search(text)
    if m is None:
        return text
    if errors == "strict":
        raise UnencodableTextError(f"text contains a lone UTF-16 surrogate (U+{ord(m.group()):04X} at character "
                                   f"{m.start()}), which is not valid Unicode and cannot be tokenized")
    if errors != "replace":
        raise ValueError(f"errors must be 'replace' or 'strict', got {errors!r}")
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

# The real InternLM2 tokenizer's spare pieces behind the chat tokens (docs/internlm2.md).
_INTERNLM2_RAW = {tok: f"[UNUSED_TOKEN_{141 + i}]" for i, tok in enumerate(CHAT_TOKENS)}


class Tokenizer:
    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self.model_file = Path(model_file)
        if not self.model_file.exists():
            raise TokenizerError(f"tokenizer file {self.model_file} does not exist")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.model_file} is not a SentencePiece model ({e})") from None
        sp = self.sp
        self.vocab_size = sp.get_piece_size()
        self.unk_id, self.bos_id, self.eos_id = sp.unk_id(), sp.bos_id(), sp.eos_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        self.special_ids: dict[str, int] = {BOS: self.bos_id, EOS: self.eos_id}
        for tok in CHAT_TOKENS:
            for piece in (tok, _INTERNLM2_RAW[tok]):
                pid = sp.piece_to_id(piece)
                if pid != self.unk_id and sp.id_to_piece(pid) == piece:
                    self.special_ids[tok] = pid
                    break
            else:
                raise TokenizerError(f"{self.model_file} has no piece for chat token {tok}")
        self.id_to_special = {i: t for t, i in self.special_ids.items()}
        # Pieces that raw SentencePiece would match inside plain text: user-defined and special pieces.
        self._protected = sorted({sp.id_to_piece(i) for i in range(self.vocab_size)
                                  if sp.is_control(i) is False and _is_user_defined(sp, i) and len(sp.id_to_piece(i)) > 1}
                                 | set(self.special_ids), key=len, reverse=True)
        self._protected_ids = {sp.piece_to_id(p) for p in self._protected if sp.piece_to_id(p) != self.unk_id}
        self._protected_ids |= set(self.special_ids.values())
        self._special_re = re.compile("(" + "|".join(re.escape(t) for t in
                                                     sorted(self.special_ids, key=len, reverse=True)) + ")")
        self._protected_re = re.compile("|".join(re.escape(p) for p in self._protected))

    # ---- encode / decode ---------------------------------------------------------------------
    @property
    def stop_ids(self) -> list[int]:
        """Chat models stop on </s> and <|im_end|>."""
        return [self.eos_id, self.special_ids[IM_END]]

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self.sp.encode(text)
        if not self._protected_ids.intersection(ids):
            return ids
        # Break every protected string after its first character so no special piece can match.
        out: list[int] = []
        pos = 0
        for m in self._protected_re.finditer(text):
            out += self.sp.encode(text[pos:m.start()]) if m.start() > pos else []
            s = m.group(0)
            out += self.sp.encode(s[0]) + self._encode_plain(s[1:])
            pos = m.end()
        out += self._encode_plain(text[pos:]) if pos < len(text) else []
        return out

    def encode(self, text: str, add_bos: bool = False, allow_special: bool = False,
               errors: str = "replace") -> list[int]:
        """Ids of `text`. allow_special: marker text becomes special ids (module docstring); errors:
        "replace" (lone surrogates -> U+FFFD) or "strict" (UnencodableTextError)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        text = repair_text(text, errors)
        ids = [self.bos_id] if add_bos else []
        if not allow_special:
            return ids + self._encode_plain(text)
        for part in self._special_re.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
            elif part:
                ids += self._encode_plain(part)
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in self.id_to_special:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                if not skip_special:
                    out.append(self.id_to_special[i])
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return "".join(out)

    def id_to_piece(self, i: int) -> str:
        return self.id_to_special.get(i) or self.sp.id_to_piece(i)

    # ---- saving --------------------------------------------------------------------------------
    def hf_config(self) -> dict:
        added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                          "single_word": False, "special": True}
                 for t, i in sorted(self.special_ids.items(), key=lambda kv: kv[1])}
        if self.unk_id >= 0:
            added[str(self.unk_id)] = {"content": "<unk>", "lstrip": False, "normalized": False,
                                       "rstrip": False, "single_word": False, "special": True}
        return {
            "tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
            "add_prefix_space": False, "legacy": True, "clean_up_tokenization_spaces": False,
            "bos_token": BOS, "eos_token": EOS, "unk_token": "<unk>", "pad_token": EOS,
            "additional_special_tokens": list(CHAT_TOKENS), "added_tokens_decoder": added,
            "model_max_length": 1_000_000, "chat_template": chat_template(),
            "puyu_chat_template_version": TEMPLATE_VERSION,
        }

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.model_file.resolve() != (d / "tokenizer.model").resolve():
            shutil.copy2(self.model_file, d / "tokenizer.model")
        (d / "tokenizer_config.json").write_text(json.dumps(self.hf_config(), indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
        special_map = {"bos_token": BOS, "eos_token": EOS, "unk_token": "<unk>", "pad_token": EOS,
                       "additional_special_tokens": list(CHAT_TOKENS)}
        (d / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")


def _is_user_defined(sp, i: int) -> bool:
    # sentencepiece exposes no is_user_defined(); user-defined pieces are those that are not normal,
    # control, unknown, byte or unused. `sp.is_*` answers for the latter.
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i):
        return False
    return _piece_types(sp).get(i) == 4  # ModelProto.SentencePiece.USER_DEFINED


_TYPES_CACHE: dict[int, dict[int, int]] = {}


def _piece_types(sp) -> dict[int, int]:
    key = id(sp)
    if key not in _TYPES_CACHE:
        from sentencepiece import sentencepiece_model_pb2 as pb

        m = pb.ModelProto()
        m.ParseFromString(sp.serialized_model_proto())
        _TYPES_CACHE[key] = {i: p.type for i, p in enumerate(m.pieces) if p.type != 1}
    return _TYPES_CACHE[key]


def _gguf_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a GGUF file (`puyu.model.gguf_file.gguf_tokenizer_proto` rebuilds it), its model written
    once to $XDG_CACHE_HOME/puyu/gguf-tokenizers/<sha256>.model (a Tokenizer reads and copies a file)."""
    import hashlib

    from puyu.model.gguf_file import gguf_tokenizer_proto

    proto = gguf_tokenizer_proto(path)
    if proto is None:
        raise TokenizerError(f"{path} carries no SentencePiece tokenizer (tokenizer.ggml.model 'llama'); "
                             f"pass --tokenizer")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "puyu" / "gguf-tokenizers"
    root.mkdir(parents=True, exist_ok=True)
    out = root / f"{hashlib.sha256(proto).hexdigest()[:24]}.model"
    if not out.exists():
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        tmp.write_bytes(proto)
        os.replace(tmp, out)
    return Tokenizer(out)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A directory holding `tokenizer.model`, the `.model` file itself, or a GGUF file (its tokenizer rebuilt:
    `puyu.model.gguf_file.gguf_tokenizer`). A directory whose
    `tokenizer_config.json` carries an older puyu chat template gets a warning (see `template_status`)."""
    p = Path(path)
    if p.suffix.lower() == ".gguf":  # the SentencePiece model rebuilt from a GGUF file's metadata
        return _gguf_tokenizer(p)
    if p.is_dir():
        if template_status(p) == "outdated":
            log.warning("%s carries an older puyu chat template (Hugging Face apply_chat_template would render "
                        "differently from puyu); update it with: puyu tokenizer update-template %s", p, p)
        p = p / "tokenizer.model"
    return Tokenizer(p)


# ---- the chat template saved beside the tokenizer ---------------------------------------------------
_V1_SIGNATURE = "{%- set ns = namespace(start=0) -%}"  # puyu's template before versions were written


def template_status(directory: str | Path) -> str:
    """What `directory/tokenizer_config.json` holds: "absent" (no file or no chat_template), "current"
    (this puyu's template), "outdated" (a template written by an older puyu: version key lower than
    `TEMPLATE_VERSION`, or the unversioned first template) or "foreign" (anything else, e.g. InternLM's
    own template: left alone). puyu itself never renders with the saved template; only Hugging Face
    `apply_chat_template` users see the difference. Checkpoints saved since carry the current template
    (`save_pretrained` rewrites it); older ones: `puyu tokenizer update-template DIR`."""
    f = Path(directory) / "tokenizer_config.json"
    if not f.is_file():
        return "absent"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "foreign"
    tmpl = cfg.get("chat_template") if isinstance(cfg, dict) else None
    if not isinstance(tmpl, str):
        return "absent"
    if tmpl == chat_template():
        return "current"
    version = cfg.get("puyu_chat_template_version")
    if (isinstance(version, int) and version < TEMPLATE_VERSION) or (version is None and _V1_SIGNATURE in tmpl):
        return "outdated"
    return "foreign"


def update_template(directory: str | Path, force: bool = False) -> str:
    """Rewrite the chat template (and its version) in `directory/tokenizer_config.json`, keeping every
    other key. Only an "outdated" puyu template is replaced (or a missing one written) unless `force`.
    -> the status before."""
    d = Path(directory)
    status = template_status(d)
    f = d / "tokenizer_config.json"
    if not f.is_file():
        raise TokenizerError(f"{f} does not exist")
    if status == "current" or (status not in ("outdated", "absent") and not force):
        return status
    cfg = json.loads(f.read_text(encoding="utf-8"))
    cfg["chat_template"] = chat_template()
    cfg["puyu_chat_template_version"] = TEMPLATE_VERSION
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, f)
    return status


# ---- training ------------------------------------------------------------------------------------
CAPS_DELIMITER = "\x1f"  # marks the boundaries caps_apart and sign_apart keep in the training text
_CAPS_BOUNDARY = r"(?<= )(?=[A-Z])"  # a space, then a capital letter
_SIGN_BOUNDARY = r"(?<==)(?=-)"  # `=`, then a minus sign


def train_tokenizer(inputs: list[str | Path], out_dir: str | Path, vocab_size: int = 2048,
                    max_sentences: int = 2_000_000, character_coverage: float = 0.9995,
                    caps_apart: bool = False, sign_apart: bool = False) -> Tokenizer:
    """Train a BPE SentencePiece tokenizer like InternLM2's (byte fallback, identity normalizer, no dummy
    prefix) but with digits split one by one (better arithmetic at small scale), and the chat tokens
    plus newline as atomic pieces. Writes `tokenizer.model` and `tokenizer_config.json` into `out_dir`.

    `caps_apart=True`: no piece joins a space to a following capital letter, so ` Oslo` is encoded as
    ` ` + `Oslo`, the same `Oslo` piece as in `"Oslo"`. A name copied from a question into a JSON
    argument is then the same token in both places (without it ` Oslo` and `Oslo` are two unrelated
    tokens, and a small model must learn each name's pair; see the nano recipe). Done with
    SentencePiece's `pretokenization_delimiter`: the training text gets a delimiter between such a
    space and the capital, so no learned piece spans them; encoding needs no change (a plain
    SentencePiece model, loadable by Hugging Face's InternLM2 tokenizer). It costs about 0.2-0.6%
    more tokens on English text (measured on the nano corpus).

    `sign_apart=True`: no piece joins `=` to a following minus sign, so the answer of `63-91=-28`
    starts with the same `-` token whether the text is cut after `=` (a prompt, then its completion)
    or not (a worksheet line, a chat reply). Without it the nano tokenizer learns `=-`, and a negative
    answer is two different token sequences (most of pretraining's problems have `=` `-`, the chats
    `=-`). Same mechanism as `caps_apart`. Raises TokenizerError when the text already holds the
    delimiter character (U+001F) and either option is on."""
    import sentencepiece as spm

    files = [str(p) for p in inputs]
    for f in files:
        if not Path(f).is_file():
            raise TokenizerError(f"tokenizer training input {f} does not exist")
    if vocab_size < 256 + len(CHAT_TOKENS) + 16:
        raise TokenizerError(f"vocab_size {vocab_size} is too small (byte fallback alone needs 256 pieces)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "tokenizer")
        extra = {}
        boundaries = [b for b, on in ((_CAPS_BOUNDARY, caps_apart), (_SIGN_BOUNDARY, sign_apart)) if on]
        if boundaries:
            files = [_mark_boundaries(f, os.path.join(tmp, f"input_{i}.txt"), boundaries)
                     for i, f in enumerate(files)]
            extra["pretokenization_delimiter"] = CAPS_DELIMITER
        try:
            spm.SentencePieceTrainer.train(
                input=files, model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
                byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=list(CHAT_TOKENS) + ["\n"],
                character_coverage=character_coverage, input_sentence_size=max_sentences,
                shuffle_input_sentence=True, max_sentence_length=16384, num_threads=os.cpu_count() or 1,
                hard_vocab_limit=False, minloglevel=2, **extra,
            )
        except RuntimeError as e:
            m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
            if m:  # SentencePiece: one piece per distinct character kept, besides the byte and special pieces
                raise TokenizerError(
                    f"vocab_size {vocab_size} is too small for this text: SentencePiece needs {m.group(2)} pieces for "
                    f"its distinct characters, the 256 byte pieces and the special tokens; use vocab_size >= "
                    f"{m.group(2)} (more for merges)") from None
            raise TokenizerError(f"tokenizer training failed: {e}") from None
        shutil.copy2(prefix + ".model", out / "tokenizer.model")
    tok = Tokenizer(out / "tokenizer.model")
    tok.save(out)
    return tok


def _mark_boundaries(src: str, dst: str, boundaries: list[str]) -> str:
    """Copy text file `src` to `dst` with CAPS_DELIMITER at every match of the `boundaries` regexes."""
    text = Path(src).read_text(encoding="utf-8")
    if CAPS_DELIMITER in text:
        raise TokenizerError(f"tokenizer training input {src} holds the character U+001F, which caps_apart "
                             "and sign_apart use as their delimiter")
    Path(dst).write_text(re.sub("|".join(boundaries), CAPS_DELIMITER, text), encoding="utf-8")
    return dst


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tok_command", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a BPE tokenizer with the InternLM2 chat tokens")
    t.add_argument("inputs", nargs="+", help="text files")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=int, default=2048)
    t.add_argument("--caps-apart", action="store_true",
                   help="keep a space apart from a following capital letter (` Oslo` -> ` ` + `Oslo`)")
    t.add_argument("--sign-apart", action="store_true",
                   help="keep `=` apart from a following minus sign (`=-28` -> `=` + `-` + `2` + `8`)")
    e = sub.add_parser("encode", help="show the ids and pieces of a text")
    e.add_argument("--tokenizer", required=True, help="directory or tokenizer.model")
    e.add_argument("text")
    e.add_argument("--allow-special", action="store_true", help="map chat-token text to special ids")
    u = sub.add_parser("update-template", help="rewrite an older puyu chat template in tokenizer_config.json")
    u.add_argument("directory", help="checkpoint or tokenizer directory")
    u.add_argument("--check", action="store_true", help="only report; exit 1 when the template is outdated")
    u.add_argument("--force", action="store_true", help="also replace a template puyu did not write")


def run(args: argparse.Namespace) -> int:
    if args.tok_command == "update-template":
        if args.check:
            status = template_status(args.directory)
            print(f"{args.directory}: chat template {status}")
            return 1 if status in ("outdated", "absent") else 0  # absent: the template would be missing
        before = update_template(args.directory, force=args.force)
        done = before in ("outdated", "absent") or (args.force and before != "current")
        print(f"{args.directory}: chat template {before}" + (" -> rewritten" if done else " (left as is)"))
        return 0
    if args.tok_command == "train":
        tok = train_tokenizer(args.inputs, args.out, vocab_size=args.vocab_size, caps_apart=args.caps_apart,
                              sign_apart=args.sign_apart)
        print(f"trained tokenizer with {tok.vocab_size} pieces -> {args.out}")
    else:
        tok = load_tokenizer(args.tokenizer)
        ids = tok.encode(args.text, allow_special=args.allow_special)
        print(json.dumps({"ids": ids, "pieces": [tok.id_to_piece(i) for i in ids]}, ensure_ascii=False))
    return 0
