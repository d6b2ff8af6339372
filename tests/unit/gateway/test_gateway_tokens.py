"""Token counting: a pool's tokenizer.json (cached), else the emulator's approximation; chat text."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # type: ignore[import-untyped]

from tgipool.emulator.tokens import ApproxTokenizer
from tgipool.gateway.tokens import APPROX, OFFLOAD_CHARS, chat_text, count_tokens, counter_for


def _tokenizer_json(tmp_path: Path) -> Path:
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(["abcdefgh hello world"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_counts_and_is_cached(tmp_path: Path) -> None:
    path = str(_tokenizer_json(tmp_path))
    counter = counter_for(path)
    assert counter_for(path) is counter
    text = " ".join(["abcdefgh"] * 100)
    assert counter.count(text) == 100  # one word, one token
    assert APPROX.count(text) == 200  # the approximation: pieces of up to 4 letters
    big = " ".join(["hello"] * (OFFLOAD_CHARS // 5 + 10))  # > OFFLOAD_CHARS: counted in the executor
    assert asyncio.run(count_tokens(counter, big)) == OFFLOAD_CHARS // 5 + 10


def test_approx_matches_the_emulator_tokenizer() -> None:
    for text in ("Hello, tokenization!", "x = 12345;\n  y", "naïve café — ok"):
        assert APPROX.count(text) == len(ApproxTokenizer().encode(text))
    assert counter_for(None) is APPROX


def test_chat_text_concatenates_contents() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None},
    ]
    assert chat_text(messages) == "Be brief.\nHi"
    assert chat_text("nope") == ""
