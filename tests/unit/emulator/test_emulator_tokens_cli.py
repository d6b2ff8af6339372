"""Real tokenizer files, the approximate tokenizer, launcher-style settings and the `emulate` CLI wiring."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tgipool.emulator import EmulatorSettings, SettingsError
from tgipool.emulator import cli as emulator_cli
from tgipool.emulator.tokens import WORDS, ApproxTokenizer

from .conftest import ThreadedEmulator


@pytest.fixture
def tokenizer_json(tmp_path: Path) -> Path:
    """A tiny word-level tokenizer.json made on the spot (no downloads)."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    tok.train_from_iterator([" ".join(WORDS), "hello world how are you"], trainer=trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_hf_tokenizer_counts(emulator_factory: Callable[..., ThreadedEmulator], tokenizer_json: Path) -> None:
    emu = emulator_factory(tokenizer=str(tokenizer_json))
    toks = requests.post(emu.url + "/tokenize", json={"inputs": "hello world, how are you"}, timeout=5).json()
    assert [t["text"] for t in toks] == ["hello", "world", ",", "how", "are", "you"]
    resp = requests.post(
        emu.url + "/generate", json={"inputs": "hello world", "parameters": {"max_new_tokens": 9}}, timeout=5
    )
    assert resp.headers["x-prompt-tokens"] == "2"
    text = resp.json()["generated_text"]
    assert len(Tokenizer.from_file(str(tokenizer_json)).encode(text).ids) == 9


def test_approx_tokenizer_round_trips_generated_text() -> None:
    tok = ApproxTokenizer()
    assert len(tok.encode("Hello, tokenization!")) == 7
    text = "".join(t for _, t in tok.output_vocabulary()[:50])
    assert len(tok.encode(text)) == 50


def test_settings_defaults_and_launcher_errors() -> None:
    s = EmulatorSettings(max_total_tokens=2048).resolved()
    assert (s.max_input_tokens, s.max_batch_prefill_tokens, s.max_batch_total_tokens) == (2047, 4096, 16384)
    with pytest.raises(SettingsError, match=r"`max_input_tokens`\(10\) must be < `max_total_tokens`\(10\)"):
        EmulatorSettings(max_input_tokens=10, max_total_tokens=10).resolved()
    with pytest.raises(SettingsError, match="`max_total_tokens` must be <= `max_batch_total_tokens`"):
        EmulatorSettings(max_total_tokens=100, max_batch_total_tokens=50).resolved()


def test_cli_wiring(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MAX_TOTAL_TOKENS", "1000")
    parser = argparse.ArgumentParser(prog="tgipool")
    emulator_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["emulate", "--decode-step-ms", "5", "--port", "8080"])
    settings = emulator_cli.settings_from_args(args)
    assert (settings.max_total_tokens, settings.decode_step_ms, settings.port) == (1000, 5.0, 8080)
    assert args.func is emulator_cli.main
    lora = parser.parse_args(["emulate", "--lora-adapters", "org/legal-lora@abc,med=/data/med"])
    assert emulator_cli.settings_from_args(lora).adapter_ids == {"org/legal-lora", "med"}
    bad = parser.parse_args(["emulate", "--max-input-tokens", "2000"])
    assert emulator_cli.main(bad) == 1
    assert 'Error: ArgumentValidation("`max_input_tokens`(2000) must be < `max_total_tokens`(1000)")' in (
        capsys.readouterr().err
    )
