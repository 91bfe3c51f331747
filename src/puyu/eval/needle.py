"""Needle in a haystack: single-needle retrieval over a grid of context lengths x depths, multi-needle
retrieval and multi-needle reasoning (after Kamradt's test, RULER's variants, and InternLM2's report).

Placement (`place`): in a haystack of L tokens the needle starts at token index floor(L * depth / 100),
moved back to just after the nearest preceding sentence end (or to 0 when there is none); depth 100
appends it. Sentence ends are found on the decoded text: the token boundaries whose decoded prefix
ends with one of . 。 ！ ？ ! ? (`sentence_boundaries`; a tokenizer may spell `。` as three byte tokens,
which no single-token test sees). A haystack without any sentence end is refused.
Lengths are whole-prompt lengths in the evaluated model's own tokens: the haystack is cut so that
header + haystack + needles + question is exactly the cell's length.

Haystack: `--haystack DIR` (= `--option haystack=DIR`) (every .txt/.md file under it, concatenated in name order),
`haystack=filler` (the nano recipe's passkey filler, `puyu.tasks.synthetic.FILLER`; the default with the
passkey style) or `haystack=prose` (seeded generated sentences; the default with the chat style). No
data download. Prompt styles (`--option
style=`): `passkey` (default; the nano recipe's raw-text passkey layout) or `chat` (one user turn).

Needle texts start with a space and end with a period, so they read as sentences both after a sentence
end and after a haystack cut mid-sentence (depth 100).
Score: 1 if the needle's answer string appears in the output, else 0 (multi-retrieval: the share of the
k answers present). No partial credit within an answer, no LLM judge.
Effective length: the longest tested length up to which every length's mean score is above 85.6%
(RULER, Hsieh et al. 2024: Llama-2-7B's mean at 4K, the threshold RULER uses).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path

from puyu.eval.task import Context, EvalError, Generation, Sample, Task

SENTENCE_ENDS = (".", "。", "！", "？", "!", "?")
RULER_THRESHOLD = 0.856
DEPTHS = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def place(haystack_ids: list[int], needle_ids: list[int], depth: float, sentence_end_ids=(), *,
          boundaries=None) -> tuple[list[int], int]:
    """Insert `needle_ids` into `haystack_ids` at `depth` percent -> (ids, start), where
    ids[start:start + len(needle_ids)] == needle_ids and len(ids) == len(haystack) + len(needle).

    start = floor(L * depth / 100) with L = len(haystack_ids), then moved back to just after the nearest
    sentence end before it (0 if none); depth 100 appends at the end. A sentence end is a token in
    `sentence_end_ids`, or, when `boundaries` is given (token indices b whose decoded prefix
    `ids[:b]` ends a sentence: `sentence_boundaries`), a boundary in that set; the latter also finds
    ends spelled by several byte tokens (`。` as three byte-fallback tokens). Raises ValueError for a
    depth outside [0, 100]."""
    if not 0 <= depth <= 100:
        raise ValueError(f"depth must be in [0, 100] percent, got {depth}")
    n = len(haystack_ids)
    if depth == 100:
        start = n
    else:
        start = math.floor(Fraction(n) * Fraction(depth) / 100)  # exact for float depths too
        if boundaries is not None:
            while start > 0 and start not in boundaries:
                start -= 1
        else:
            ends = set(sentence_end_ids)
            while start > 0 and haystack_ids[start - 1] not in ends:
                start -= 1
    return list(haystack_ids[:start]) + list(needle_ids) + list(haystack_ids[start:]), start


def sentence_end_ids(tokenizer) -> set[int]:
    """Token ids whose text ends with a sentence end (trailing spaces ignored)."""
    out = set()
    for i in range(tokenizer.vocab_size):
        try:
            piece = tokenizer.decode([i])
        except Exception:
            continue
        if piece.rstrip().endswith(SENTENCE_ENDS):
            out.add(i)
    return out


_END_BYTES = tuple(e.encode("utf-8") for e in SENTENCE_ENDS)


def _token_bytes(tokenizer) -> list[bytes]:
    """Each token's bytes in a decoded text (`<0xE3>` byte-fallback pieces are that byte; `▁` a space)."""
    cached = getattr(tokenizer, "_puyu_token_bytes", None)
    if cached is not None:
        return cached
    out = []
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.id_to_piece(i)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                out.append(bytes([int(piece[3:5], 16)]))
                continue
            except ValueError:
                pass
        out.append(piece.replace("\u2581", " ").encode("utf-8"))
    try:
        tokenizer._puyu_token_bytes = out
    except AttributeError:
        pass
    return out


def sentence_boundaries(tokenizer, ids: list[int]) -> set[int]:
    """Token indices b (1 <= b <= len(ids)) where the decoded text of ids[:b] ends with one of
    . 。 ！ ？ ! ? (trailing whitespace ignored). Works on bytes, so a `。` split into byte tokens counts
    once its last byte is in."""
    table = _token_bytes(tokenizer)
    out, tail = set(), b""
    for b, i in enumerate(ids, 1):
        tail = (tail + table[i])[-16:]
        if tail.rstrip(b" \t\r\n").endswith(_END_BYTES):
            out.add(b)
    return out


_WORDS = ("walked rested grew opened closed waited listened wrote painted carried counted "
          "quietly slowly early late together alone north south near far").split()


def generated_haystack(seed: int, chars: int) -> str:
    """Seeded filler prose (short plain sentences) of at least `chars` characters."""
    rng = random.Random(f"puyu-haystack-{seed}")
    subjects = ["The river", "The old town", "The library", "A small boat", "The market", "The garden",
                "The council", "The baker", "A tall tree", "The station"]
    out, size = [], 0
    while size < chars:
        s = f"{rng.choice(subjects)} {rng.choice(_WORDS)} {rng.choice(_WORDS)} {rng.choice(_WORDS)}. "
        out.append(s)
        size += len(s)
    return "".join(out)


def read_haystack(folder: str) -> str:
    p = Path(folder)
    if not p.is_dir():
        raise EvalError(f"needle: --haystack {folder}: not a folder")
    files = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
    if not files:
        raise EvalError(f"needle: no .txt or .md files under {p}")
    return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


PASSKEY_INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and "
                 "memorize it. I will quiz you about the pass key.\n")


def _needles(kind: str, rng: random.Random, k: int) -> tuple[list[str], str, list[str]]:
    """(needle texts, question, answer strings) for one sample."""
    if kind == "single":
        key = rng.randrange(10000, 100000)
        return [f" The pass key is {key}. Remember it. {key} is the pass key."], \
            "\nWhat is the pass key? The pass key is ", [str(key)]
    if kind == "multi":
        keys = rng.sample(range(10000, 100000), k)
        names = rng.sample(["red", "blue", "green", "gold", "grey", "pink", "teal", "white"], k)
        needles = [f" The {c} pass key is {v}." for c, v in zip(names, keys)]
        q = "\nWhat are the " + ", ".join(names) + " pass keys? They are "
        return needles, q, [str(v) for v in keys]
    if kind == "reasoning":
        a, b = rng.randrange(100, 1000), rng.randrange(100, 1000)
        box = rng.choice(["A", "B", "C", "D"])
        needles = [f" The pass key is in box {box}.", f" Box {box} holds {a} and the pass key is {a} plus {b}."]
        return needles, "\nWhat is the pass key? The pass key is ", [str(a + b)]
    raise EvalError(f"needle: unknown kind {kind!r} (single, multi, reasoning)")


def effective_length(mean_by_length: dict[int, float], threshold: float = RULER_THRESHOLD) -> int | None:
    """The longest length L such that every tested length <= L scores above `threshold` (None if the
    shortest already does not)."""
    best = None
    for length in sorted(mean_by_length):
        if mean_by_length[length] <= threshold:
            break
        best = length
    return best


def grid_lengths(trained: int, lo: float, hi: float, points: int) -> list[int]:
    """`points` lengths spaced geometrically from lo x to hi x the trained length (inclusive)."""
    if points < 1 or lo <= 0 or hi < lo:
        raise EvalError(f"needle: bad length grid (min_factor={lo}, max_factor={hi}, points={points})")
    if points == 1:
        return [int(trained * hi)]
    r = (hi / lo) ** (1 / (points - 1))
    return sorted({int(round(trained * lo * r ** i)) for i in range(points)})


class Needle(Task):
    name = "needle"
    description = ("needle in a haystack: single/multi retrieval and 2-hop reasoning over lengths x depths "
                   "(needs the model's tokenizer); heatmap and effective length")
    generation = Generation(max_new_tokens=16, temperature=0.7)
    interpreter_ok = False
    options = ("kind", "style", "k", "trained_length", "lengths", "min_factor", "max_factor", "points", "depths",
               "per_cell", "haystack")

    def samples(self, ctx: Context) -> list[Sample]:
        tok = ctx.tokenizer
        if tok is None:
            raise EvalError("needle counts lengths in the model's tokens: give --model, or --tokenizer with --api-base")
        o = ctx.options
        kind = o.get("kind", "single")
        style = o.get("style", "passkey")
        k = int(o.get("k", 3))
        trained = int(o.get("trained_length") or getattr(ctx.model_config, "max_position_embeddings", 0) or 0)
        if not trained:
            raise EvalError("needle: the training length is unknown (give --option trained_length=N)")
        if "lengths" in o:
            lengths = sorted(int(x) for x in str(o["lengths"]).split(","))
        else:
            lengths = grid_lengths(trained, float(o.get("min_factor", 0.25)), float(o.get("max_factor", 2)),
                                   int(o.get("points", 4)))
        depths = [float(x) for x in str(o["depths"]).split(",")] if "depths" in o else DEPTHS
        per_cell = int(o.get("per_cell", 1))
        hay_opt = o.get("haystack") or ("filler" if style == "passkey" else "prose")
        if hay_opt == "filler":  # the nano recipe's own passkey filler (what its long-context stage saw)
            from puyu.tasks.synthetic import FILLER

            text = FILLER * (1 + (8 * max(lengths) + 2000) // len(FILLER))
        elif hay_opt == "prose":
            text = generated_haystack(ctx.seed, 8 * max(lengths) + 2000)
        else:
            text = read_haystack(hay_opt)
        hay = tok.encode(text)
        if not sentence_boundaries(tok, hay):
            raise EvalError(f"needle: the haystack ({hay_opt}) has no sentence end (. 。 ！ ？ ! ?), so every "
                            "needle would sit at depth 0; give a haystack of sentences")
        rng = random.Random(f"puyu-needle-{ctx.seed}-{kind}")
        if style == "passkey":
            head, tail = [tok.bos_id] + tok.encode(PASSKEY_INTRO), None
        elif style == "chat":
            from puyu.model.chat_format import encode_chat

            marker = "\ue000HAYSTACK\ue001"
            ids = encode_chat(tok, [{"role": "user", "content": PASSKEY_INTRO + marker}], None)
            mids = tok.encode(marker)
            cut = next(i for i in range(len(ids)) if ids[i:i + len(mids)] == mids)
            head, tail = ids[:cut], ids[cut + len(mids):]
        else:
            raise EvalError(f"needle: unknown style {style!r} (passkey, chat)")
        out = []
        for length in lengths:
            for depth in depths:
                for rep in range(per_cell):
                    needles, question, answers = _needles(kind, rng, k)
                    nids = [tok.encode(n) for n in needles]
                    qids = tok.encode(question) + (tail or [])
                    room = length - len(head) - len(qids) - sum(map(len, nids))
                    if room < 0 and "lengths" not in o:
                        break  # a grid length shorter than the prompt frame (tiny vocabularies): skipped
                    if room < 0:
                        raise EvalError(f"needle: length {length} is too short for the prompt frame "
                                        f"({length - room} tokens)")
                    if room > len(hay):
                        raise EvalError(f"needle: the haystack has {len(hay)} tokens, {room} are needed for "
                                        f"length {length}; give a bigger --option haystack=DIR")
                    ids = hay[:room]
                    # spread several needles: the first at `depth`, the others evenly after it
                    spots = [depth + (100 - depth) * i / len(nids) for i in range(len(nids))]
                    for spot, n in sorted(zip(spots, nids), key=lambda x: -x[0]):
                        ids, _ = place(ids, n, spot, boundaries=sentence_boundaries(tok, ids))
                    prompt = head + ids + qids
                    assert len(prompt) == length
                    out.append(Sample(id=f"{length}-{depth:g}-{rep}", prompt_ids=prompt, beyond_context=True,
                                      record={"answers": answers, "length": length, "depth": depth, "kind": kind},
                                      groups={"length": length, "depth": f"{depth:g}"}))
        if ctx.limit is not None:  # a larger limit takes every cell
            out = out[:ctx.limit]
        return out

    def score(self, prediction: str, record: dict) -> float:
        answers = record.get("answers") or [record.get("answer")]
        if not answers or any(not isinstance(a, str) or not a for a in answers):
            raise EvalError("needle: the sample has no answer string")
        return sum(a in (prediction or "") for a in answers) / len(answers)

    def extract(self, prediction: str, record: dict) -> str | None:
        return (prediction or "").strip()[:40] or None


TASK = Needle()
