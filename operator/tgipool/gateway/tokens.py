"""Input token counts for routing, with each pool's own counter (`Pool.counter`, from its route's
`tokenizer`), whatever its engine: TGI, vLLM and SGLang all count a prompt with the model's
tokenizer.json and its special tokens, as `HfCounter` does.

A pool with `tokenizer: path/to/tokenizer.json` counts with HuggingFace `tokenizers`, exactly as the
emulator's `HfTokenizer` (and TGI) does: `encode(text, add_special_tokens=True)`. Tokenizers are cached by
path.
A pool without one uses the shared approximation (`tgipool.approx_tokens`: word pieces of up to 4 letters,
one digit or one symbol, about 4 characters per token of English), which is also exactly what an emulator
without `--tokenizer` counts, so routing and the emulator's own validation agree.

Prompts longer than `OFFLOAD_CHARS` are tokenized in the default thread pool (`run_in_executor`):
`tokenizers` releases the GIL, and a 100 KB prompt must not stall every other request on the event loop.

What is counted (documented approximations):

* `/generate`, `/generate_stream`, `/`: `inputs`, as TGI does.
* `/v1/completions`: each prompt; a list of prompts counts as its longest prompt for fitting and as the sum
  for the tenant's token budget.
* `/v1/chat/completions`: the message contents concatenated (text parts of list contents joined). The chat
  template's own tokens (roles, separators, the generation prompt) are not counted, so this is a slight
  underestimate for many short messages; a backend still refuses with its own 422 if the rendered prompt
  exceeds its limit.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Protocol

from tgipool import approx_tokens

OFFLOAD_CHARS = 8192


class TokenCounter(Protocol):
    key: str  # counts are shared by pools whose counters have the same key

    def count(self, text: str) -> int: ...


class ApproxCounter:
    """The shared approximation (`tgipool.approx_tokens`)."""

    key = "approx"

    def count(self, text: str) -> int:
        return approx_tokens.count(text)


class HfCounter:
    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer  # type: ignore[import-untyped]  # heavy: load lazily

        self.key = path
        self._tok = Tokenizer.from_file(path)

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=True).ids)


APPROX = ApproxCounter()


@functools.cache
def counter_for(tokenizer: str | None) -> TokenCounter:
    """One counter per tokenizer file for the life of the process."""
    return HfCounter(tokenizer) if tokenizer else APPROX


async def count_tokens(counter: TokenCounter, text: str) -> int:
    if len(text) <= OFFLOAD_CHARS:
        return counter.count(text)
    return await asyncio.get_running_loop().run_in_executor(None, counter.count, text)


def chat_text(messages: Any) -> str:
    """The concatenated message contents of an OpenAI chat request (see the module docstring)."""
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str))
    return "\n".join(parts)
