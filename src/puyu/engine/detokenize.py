"""Incremental detokenisation and stop-string matching for streamed generation.

`IncrementalDetokenizer` turns token ids, pushed one at a time, into text deltas whose concatenation
equals `tokenizer.decode(all_ids)` exactly. Multi-byte characters that arrive as several byte-fallback
pieces (Chinese, emoji) are held back until complete: a delta never ends in a partial character.
The work per token is bounded: only the ids since the last emitted delta (plus one of context) are
decoded, never the whole output.

`StopStringMatcher` sits after it: text that could still be the start of a stop string is held back;
when a stop string completes, everything from its first character on is dropped. Matching spans token
boundaries, and the search per delta only looks at the held-back tail, so it is bounded by the longest
stop string.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what SentencePiece yields for an incomplete UTF-8 byte sequence


class IncrementalDetokenizer:
    """Stream text from token ids.

    push(id) -> the new text it completes (possibly ""); flush() -> whatever is still held back
    (an incomplete byte sequence at the very end decodes to U+FFFD, like the full decode).
    Invariant: "".join(all returned deltas) == tokenizer.decode(ids, skip_special=False)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already emitted (kept as left context)
        self.read = 0  # ids[read:] are not emitted yet

    def _decode(self, start: int, end: int) -> str:
        return self.tok.decode(self.ids[start:end], skip_special=False)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        # Decoding from `prefix` (one id of left context) keeps piece-boundary rules identical to
        # a decode of the whole sequence; the emitted part is then cut off by length.
        done = self._decode(self.prefix, self.read)
        text = self._decode(self.prefix, len(self.ids))
        if text.endswith(REPLACEMENT) or not text.startswith(done):
            return ""  # an incomplete character: wait for the rest of its bytes
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        done = self._decode(self.prefix, self.read)
        text = self._decode(self.prefix, len(self.ids))
        self.prefix = self.read = len(self.ids)
        return text[len(done):] if text.startswith(done) else text


class StopStringMatcher:
    """Hold back text that may begin a stop string; cut at the first complete one.

    push(text) -> (text safe to emit, stopped). Once stopped, the match and anything after it are gone.
    flush() -> the held-back text (when generation ends for another reason)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.held = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self.held + text
        # Earliest complete match: it can only start inside `held` or the new text, never earlier,
        # because `held` always covers every possible partial match.
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held, self.stopped = "", True
            return buf[:cut], True
        keep = self._partial_suffix(buf)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        for n in range(min(len(buf), self.longest - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out
