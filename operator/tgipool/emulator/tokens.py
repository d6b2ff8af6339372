"""Tokenization and deterministic "model output" for the emulator.

Two tokenizers count prompt tokens (which drive validation limits, prefill time and batch budgets):

* `HfTokenizer` loads a `tokenizer.json` with HuggingFace `tokenizers` (`--tokenizer PATH`), so counts match
  the real model exactly.
* `ApproxTokenizer` (the default) needs no files: the word pieces of `tgipool.approx_tokens` (about
  4 characters per token of English), which the gateway counts too. Ids are CRC32 of the piece modulo a
  32000-entry vocabulary (stable across runs and processes).

Generated text is made of short English words (" the", " of", ...), one token each in both tokenizers
(with a real tokenizer only words that encode to a single id are used), chosen by a small PRNG seeded from
the prompt (greedy) or from the prompt and the request seed (sampling). So the output is deterministic,
the number of generated tokens is exact, and re-tokenizing the output gives the same count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tgipool.approx_tokens import PIECE

VOCAB_SIZE = 32000
WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as", "be",
    "at", "one", "have", "this", "from", "by", "hot", "word", "but", "what", "some", "we", "can", "out",
    "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each", "she",
    "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "would", "like",
    "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day",
    "could", "go", "come", "did", "my", "sound", "no", "most", "who", "over", "know", "water", "than",
    "call", "first", "may", "down", "side", "been", "now", "find", "any", "new", "work", "part", "take",
    "get", "place", "made", "live", "where", "after", "back", "only", "year", "came", "show", "good", "me",
    "give", "our", "under", "name", "very", "just", "form", "much", "great", "think", "say", "help", "low",
    "line", "turn", "cause", "same", "mean", "move", "right", "boy", "old", "too", "does", "tell", "set",
    "three", "want", "air", "well", "also", "play", "small", "end", "put", "home", "read", "hand", "port",
    "large", "add", "even", "land", "here", "must", "big", "high", "such", "act", "why", "ask", "men",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TokenSpan:
    """One prompt token: id, text and character offsets into the input (as TGI's /tokenize returns)."""

    id: int
    text: str
    start: int
    stop: int


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[TokenSpan]: ...

    def output_vocabulary(self) -> list[tuple[int, str]]:
        """(id, text) pairs the generator draws from; each must be exactly one token."""
        ...


def _piece_id(piece: str) -> int:
    return zlib.crc32(piece.encode("utf-8")) % VOCAB_SIZE


class ApproxTokenizer:
    """File-free approximation: ~4 characters per token (see the module docstring)."""

    def encode(self, text: str) -> list[TokenSpan]:
        return [TokenSpan(_piece_id(m.group()), m.group(), m.start(), m.end()) for m in PIECE.finditer(text)]

    def output_vocabulary(self) -> list[tuple[int, str]]:
        words = [" " + w for w in WORDS if len(w) <= 4]
        return [(_piece_id(w), w) for w in words]


class HfTokenizer:
    """A real tokenizer from a `tokenizer.json` file (HuggingFace `tokenizers`)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer as _HfTokenizer  # type: ignore[import-untyped]  # heavy: load lazily

        self._tok = _HfTokenizer.from_file(str(path))

    def encode(self, text: str) -> list[TokenSpan]:
        enc = self._tok.encode(text, add_special_tokens=True)
        spans = []
        for tid, (start, stop) in zip(enc.ids, enc.offsets, strict=True):
            spans.append(TokenSpan(int(tid), text[start:stop], int(start), int(stop)))
        return spans

    def output_vocabulary(self) -> list[tuple[int, str]]:
        vocab: list[tuple[int, str]] = []
        for word in WORDS:
            for text in (" " + word, word):
                ids = self._tok.encode(text, add_special_tokens=False).ids
                if len(ids) == 1:
                    vocab.append((int(ids[0]), text))
                    break
        if len(vocab) >= 8:
            return vocab
        # Odd vocabularies (e.g. character-level): fall back to whatever single ids decode to.
        special = {int(i) for i in self._tok.get_added_tokens_decoder()}
        for tid in sorted(self._tok.get_vocab().values()):
            if tid not in special:
                text = self._tok.decode([tid])
                if text.strip():
                    vocab.append((int(tid), text))
            if len(vocab) >= 256:
                break
        if not vocab:
            raise ValueError("tokenizer has no usable vocabulary")
        return vocab


def load_tokenizer(path: str | None) -> Tokenizer:
    return HfTokenizer(path) if path else ApproxTokenizer()


@dataclass(frozen=True, slots=True)
class OutputToken:
    id: int
    text: str
    logprob: float


class TextSource:
    """Deterministic token stream for one sequence (a 64-bit LCG over the output vocabulary)."""

    __slots__ = ("_state", "_vocab")

    def __init__(self, vocab: list[tuple[int, str]], prompt: str, seed: int | None) -> None:
        self._vocab = vocab
        self._state = (zlib.crc32(prompt.encode("utf-8")) ^ ((seed or 0) * 0x9E3779B97F4A7C15)) & (2**64 - 1)

    def next(self) -> OutputToken:
        self._state = (self._state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        r = self._state >> 33
        tid, text = self._vocab[r % len(self._vocab)]
        return OutputToken(tid, text, -round(0.05 + (r % 997) / 500.0, 4))
