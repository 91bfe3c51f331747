"""Perplexity and bits per byte of text files, with a sliding window (local backend).

Each file is one sample, tokenized whole (with `<s>` first). Windows of `--option window=W` tokens
(default: the model's max_position_embeddings) start every `--option stride=S` tokens (default W/2);
each window scores only the tokens the previous window did not (the first window scores all but
`<s>`), so every token is scored once with at least W - S tokens of context where the text allows (the
Hugging Face "perplexity of fixed-length models" method; a window never starts at its first scored
token, so with S = W no token goes unscored). Totals: nll (nats), tokens, UTF-8 bytes;
perplexity = exp(nll / tokens), bits per byte = nll / ln 2 / bytes.
API backends would need prompt logprobs (`echo` with `logprobs`), which puyu serve does not return:
this task is refused there.

`score(prediction, record)` takes the JSON totals written as the prediction and returns 2^-bpb (the
geometric-mean probability per byte, in (0, 1]), so the task fits the common contract; the report
gives perplexity and bits per byte only (no pass@1, no Wilson interval, no bar in accuracy.png).
Files must be UTF-8 (others are refused, naming the file and byte).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from puyu.eval.task import Context, EvalError, Generation, Sample, Task


def window_spans(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n tokens; positions 1..n-1 are each
    scored exactly once."""
    if window < 2 or not 1 <= stride <= window:
        raise EvalError(f"perplexity: need window >= 2 and 1 <= stride <= window (got {window}, {stride})")
    spans, prev_end, begin = [], 1, 0
    while prev_end < n:
        begin = min(begin, prev_end - 1)  # the first scored token needs its predecessor in the window
        end = min(begin + window, n)
        spans.append((begin, end, prev_end))
        prev_end = end
        begin += stride
        if end == n:
            break
    return spans


class Perplexity(Task):
    name = "perplexity"
    description = "perplexity and bits per byte of a folder of text files (--data), sliding window"
    options = ("window", "stride")
    data = "required"
    generation = Generation(max_new_tokens=0, temperature=0.0)
    backends = ("local",)
    interpreter_ok = False
    loglik = True

    def samples(self, ctx: Context) -> list[Sample]:
        if not ctx.data:
            raise EvalError("perplexity needs --data DIR (a folder of .txt/.md files) or a file")
        p = Path(ctx.data)
        if not p.exists():
            raise EvalError(f"perplexity: {p} does not exist")
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md"))
        if not p.exists() or not files:
            raise EvalError(f"perplexity: no .txt or .md files at {p}")
        out = []
        for f in files:
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EvalError(f"perplexity: {f} is not UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); "
                                "convert it (bits per byte count UTF-8 bytes)") from e
            if not text.strip():
                raise EvalError(f"perplexity: {f} is empty")
            out.append(Sample(id=str(f), record={"file": str(f), "bytes": len(text.encode("utf-8"))}, prompt=text))
        return out[:ctx.limit] if ctx.limit else out

    def score(self, prediction: str, record: dict) -> float:
        t = json.loads(prediction)
        return 2.0 ** (-t["nll"] / math.log(2) / max(t["bytes"], 1))

    def extract(self, prediction: str, record: dict) -> str | None:
        return None


def totals(rows: list[dict]) -> dict:
    nll = sum(r["nll"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    nbytes = sum(r["bytes"] for r in rows)
    return {"perplexity": math.exp(nll / max(tokens, 1)), "bits_per_byte": nll / math.log(2) / max(nbytes, 1),
            "tokens": tokens, "bytes": nbytes}


TASK = Perplexity()
