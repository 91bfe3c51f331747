"""Rows for training, cut from token shards, in a deterministic order that can be resumed.

Two packings:
- `StreamRows` (pretraining): the concatenated token stream is cut into windows of T + 1 tokens with
  stride T (each token is a target exactly once per epoch); documents may span windows.
- `DocRows` (SFT): whole documents (conversations) are packed into rows of T + 1 tokens in shuffled
  order, never split; the rest of a row is padding with loss mask 0. `fit="next"` closes a row when the
  next document does not fit (next fit: the nano SFT data, 113 tokens a conversation on average, fills
  76% of its 257-token rows); `fit="best"` puts each document into the open row whose free space is the
  smallest that holds it (best fit, in the same shuffled order: 96.5-96.9% there, by seed). A document longer than
  T + 1 is cut to its first T + 1 tokens (counted in `truncated`).

Both yield `Batch`es: input_ids [B, T], targets [B, T], loss_mask [B, T] (1 = target counts),
doc_ids [B, T] and position_ids [B, T] (restarting at 0 at each document start inside the row;
with RoPE only relative positions affect attention, so this changes nothing but keeps positions < T).

Order: epoch e visits rows in `torch.randperm(n, generator=seed + e)`; the position is just
(epoch, cursor), saved in training checkpoints. Every process computes the same global batch and
takes its own slice of rows, so the global batch does not depend on the number of processes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch

from puyu.errors import ConfigError


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64
    loss_mask: torch.Tensor  # [B, T] bool
    doc_ids: torch.Tensor  # [B, T] int64
    position_ids: torch.Tensor  # [B, T] int64

    def to(self, device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.input_ids, self.targets, self.loss_mask, self.doc_ids, self.position_ids)))

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.targets[start:stop], self.loss_mask[start:stop],
                     self.doc_ids[start:stop], self.position_ids[start:stop])

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


class Rows:
    """Common ordering logic. Subclasses define `n_rows` and `row(i) -> (tokens, mask, doc, pos)`,
    each an int64/uint8 array of T + 1."""

    def __init__(self, seq_len: int, seed: int):
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._perm: torch.Tensor | None = None

    n_rows: int
    fill: float | None = None  # share of row tokens that are document tokens, where packing leaves padding

    def row(self, i: int):
        raise NotImplementedError

    # ---- position (saved in checkpoints) ------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n_rows": self.n_rows}

    def load_state_dict(self, state: dict) -> None:
        if state["n_rows"] != self.n_rows or state["seed"] != self.seed:
            raise ConfigError(f"the data changed since the checkpoint was written (rows {state['n_rows']} -> "
                              f"{self.n_rows}, seed {state['seed']} -> {self.seed}); cannot resume exactly")
        self.epoch, self.cursor, self._perm = state["epoch"], state["cursor"], None

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n_rows, generator=g)
        return self._perm

    def next_indices(self, n: int) -> list[int]:
        """The next `n` row indices of the global order (crossing epochs as needed)."""
        out: list[int] = []
        while len(out) < n:
            perm = self._order()
            take = min(n - len(out), self.n_rows - self.cursor)
            out += perm[self.cursor:self.cursor + take].tolist()
            self.cursor += take
            if self.cursor == self.n_rows:
                self.epoch, self.cursor, self._perm = self.epoch + 1, 0, None
        return out

    def batch(self, indices: list[int]) -> Batch:
        """Rows `indices` as a Batch (inputs are tokens[:-1], targets tokens[1:])."""
        toks, masks, docs, poss = zip(*(self.row(i) for i in indices))
        tokens = torch.from_numpy(np.stack(toks).astype(np.int64))  # [B, T + 1]
        mask = torch.from_numpy(np.stack(masks).astype(np.bool_))  # [B, T + 1]
        doc = torch.from_numpy(np.stack(docs).astype(np.int64))  # [B, T + 1]
        pos = torch.from_numpy(np.stack(poss).astype(np.int64))  # [B, T + 1]
        # A target counts when its mask says so and it belongs to the same document as its input.
        same_doc = doc[:, 1:] == doc[:, :-1]
        return Batch(tokens[:, :-1], tokens[:, 1:], mask[:, 1:] & same_doc, doc[:, :-1], pos[:, :-1])

    def next_batch(self, global_batch: int, rank: int = 0, world: int = 1) -> Batch:
        """This process's rows of the next global batch: rows rank, rank + world, ... of it."""
        indices = self.next_indices(global_batch)
        return self.batch(indices[rank::world])


class StreamRows(Rows):
    """Windows of T + 1 tokens with stride T over the concatenated stream."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, doc_starts: np.ndarray, seq_len: int, seed: int = 0):
        super().__init__(seq_len, seed)
        self.tokens, self.mask, self.doc_starts = tokens, mask, doc_starts
        self.n_rows = (len(tokens) - 1) // seq_len
        if self.n_rows < 1:
            raise ConfigError(f"{len(tokens)} tokens are too few for one row of seq_len {seq_len} + 1")

    def row(self, i: int):
        a, b = i * self.seq_len, i * self.seq_len + self.seq_len + 1
        doc = np.searchsorted(self.doc_starts, np.arange(a, b), side="right") - 1  # [T + 1] document index
        start = np.maximum(self.doc_starts[np.maximum(doc, 0)], a) - a  # [T + 1] its start inside the row
        return self.tokens[a:b], self.mask[a:b], doc, np.arange(b - a) - start


class DocRows(Rows):
    """Whole documents packed (in a seeded shuffled order; `fit`: "next" or "best", see the module
    docstring) into rows of T + 1 tokens. `fill`: the share of row tokens that are document tokens."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, doc_starts: np.ndarray, seq_len: int,
                 seed: int = 0, pad_id: int = 2, fit: str = "next"):
        super().__init__(seq_len, seed)
        self.tokens, self.mask, self.pad_id = tokens, mask, pad_id
        ends = np.append(doc_starts[1:], len(tokens))
        lengths = np.minimum(ends - doc_starts, seq_len + 1)
        self.truncated = int(((ends - doc_starts) > seq_len + 1).sum())
        order = torch.randperm(len(doc_starts), generator=torch.Generator().manual_seed(seed)).tolist()
        self.layout: list[list[tuple[int, int]]] = []  # per row: (doc start, length) pieces
        docs = [(int(doc_starts[d]), int(lengths[d])) for d in order if lengths[d] > 0]
        if fit == "next":
            row: list[tuple[int, int]] = []
            used = 0
            for start, n in docs:
                if used + n > seq_len + 1:
                    self.layout.append(row)
                    row, used = [], 0
                row.append((start, n))
                used += n
            if row:
                self.layout.append(row)
        elif fit == "best":
            free: list[tuple[int, int]] = []  # (free tokens, row index), sorted
            for start, n in docs:
                k = bisect.bisect_left(free, (n, -1))
                if k < len(free):
                    room, r = free.pop(k)
                else:
                    room, r = seq_len + 1, len(self.layout)
                    self.layout.append([])
                self.layout[r].append((start, n))
                bisect.insort(free, (room - n, r))
        else:
            raise ConfigError(f"unknown packing fit {fit!r}; use 'next' or 'best'")
        self.n_rows = len(self.layout)
        self.fill = float(sum(n for row in self.layout for _, n in row)) / max(self.n_rows * (seq_len + 1), 1)
        if self.n_rows < 1:
            raise ConfigError("no documents to pack")

    def row(self, i: int):
        L = self.seq_len + 1
        tokens = np.full(L, self.pad_id, dtype=np.int64)
        mask = np.zeros(L, dtype=np.uint8)
        doc = np.full(L, len(self.layout[i]), dtype=np.int64)  # padding: its own document
        start = np.zeros(L, dtype=np.int64)
        at = 0
        for k, (s, n) in enumerate(self.layout[i]):
            tokens[at:at + n] = self.tokens[s:s + n]
            mask[at:at + n] = self.mask[s:s + n]
            doc[at:at + n] = k
            start[at:at + n] = at
            at += n
        start[at:] = at
        return tokens, mask, doc, np.arange(L) - start


def make_rows(kind: str, tokens, mask, doc_starts, seq_len: int, seed: int, pad_id: int = 2, fit: str = "next") -> Rows:
    if kind == "stream":
        return StreamRows(tokens, mask, doc_starts, seq_len, seed)
    if kind == "docs":
        return DocRows(tokens, mask, doc_starts, seq_len, seed, pad_id, fit)
    raise ConfigError(f"unknown packing {kind!r}; use 'stream' or 'docs'")
