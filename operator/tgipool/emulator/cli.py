"""`tgipool emulate`: run one emulated TGI server with launcher-style flags (`--engine vllm|sglang`: one
emulated vLLM or SGLang server instead, see openai_server.py).

Like `text-generation-launcher`, every flag can also come from its UPPER_SNAKE_CASE environment variable
(`--max-input-tokens` ↔ `MAX_INPUT_TOKENS`), so an emulator pod can take the same env as a TGI pod.
The main CLI wires it with `emulator_cli.add_parser(subparsers)` and dispatches to `emulator_cli.main(args)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from tgipool.emulator import faults
from tgipool.emulator.runner import serve_forever
from tgipool.emulator.settings import EmulatorSettings, SettingsError
from tgipool.monitoring.engine_metrics import ENGINES


def _csv(value: str) -> tuple[str, ...]:
    """TGI's comma-separated `--lora-adapters`."""
    return tuple(v for v in value.split(",") if v)


_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("model-id", str, "model id reported by /info and the OpenAI routes"),
    ("hostname", str, "bind address (TGI default 0.0.0.0)"),
    ("port", int, "HTTP port (TGI default 3000; 0 = any free port)"),
    ("max-concurrent-requests", int, "permits (queued + running); beyond it: 429 overloaded"),
    ("max-best-of", int, "largest accepted best_of"),
    ("max-stop-sequences", int, "largest number of stop sequences"),
    ("max-top-n-tokens", int, "largest top_n_tokens"),
    ("max-input-tokens", int, "prompt token limit (default max-total-tokens - 1)"),
    ("max-total-tokens", int, "prompt + generated token limit per request (default 4096)"),
    ("max-batch-prefill-tokens", int, "prompt tokens per prefill chunk (default 4096)"),
    ("max-batch-total-tokens", int, "sum of input+max_new tokens over the running batch"),
    ("max-batch-size", int, "largest batch (default unlimited)"),
    ("max-client-batch-size", int, "largest prompt list on /v1/completions"),
    ("payload-limit", int, "request body limit in bytes (413 above)"),
    ("api-key", str, "require `Authorization: Bearer KEY` on generation routes"),
    ("prefill-tokens-per-second", float, "model knob: prefill throughput"),
    ("decode-step-ms", float, "model knob: time of one decode step at batch size 0"),
    ("decode-step-growth-ms", float, "model knob: extra decode step time per running sequence"),
    ("load-seconds", float, "cold start: /health and generation answer 503 for this long after start"),
    ("tokenizer", str, "path to a tokenizer.json (default: ~4 characters per token approximation)"),
    ("lora-adapters", _csv, "LoRA adapters TGI loads at start: id[@revision] or name=/path, comma-separated"),
    ("engine", str, "server to emulate: tgi, vllm or sglang (their routes, errors and metric names)"),
    ("engine-version", str, "engine version whose metric names to export (default: its current one)"),
    ("served-model-name", str, "vLLM/SGLang: the model name of the OpenAI routes (default: model-id)"),
]


def _env_name(flag: str) -> str:
    return flag.replace("-", "_").upper()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `emulate` on the main CLI's `add_subparsers()` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "emulate",
        help="run a TGI emulator (TGI's HTTP API and batching, no GPU)",
        description=__doc__,
    )
    defaults = EmulatorSettings()
    for flag, kind, help_text in _FLAGS:
        dest = flag.replace("-", "_")
        env = os.environ.get(_env_name(flag))
        default = kind(env) if env is not None else getattr(defaults, dest)
        parser.add_argument(
            f"--{flag}", dest=dest, type=kind, default=default, help=f"{help_text} [env {_env_name(flag)}]"
        )
    env = os.environ.get("TGIPOOL_FAULT")
    parser.add_argument(
        "--fault",
        type=faults.parse,
        default=faults.parse(env) if env else None,
        metavar="oom|slow[=F]|never-ready",
        help="fail like TGI: die at warm-up out of memory, a slow model (F times, default 10), or never "
        "finish loading [env TGIPOOL_FAULT]",
    )
    parser.set_defaults(func=main)
    return parser


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    if args.engine not in ENGINES:
        raise SettingsError(f"unknown engine {args.engine!r}: one of {', '.join(ENGINES)}")
    fields = {flag.replace("-", "_") for flag, _, _ in _FLAGS}
    return EmulatorSettings(**{name: getattr(args, name) for name in fields}).resolved()


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f'Error: ArgumentValidation("{exc}")', file=sys.stderr)
        return 1
    fault: faults.Fault | None = getattr(args, "fault", None)
    served = faults.served(fault, settings)
    with contextlib.suppress(KeyboardInterrupt):
        if served is None and fault is not None and fault.kind == "oom":
            # TGI loads the weights, then its warm-up prefill runs out of memory and the launcher exits.
            print(f"tgipool emulate: loading {settings.model_id} (fault oom)", file=sys.stderr)
            asyncio.run(asyncio.sleep(settings.load_seconds))
            print(f'Error: Warmup(Generation("{faults.warmup_oom_message(settings)}"))', file=sys.stderr)
            return 1
        if served is None:
            print(
                f"tgipool emulate: loading {settings.model_id} for ever (fault never-ready)", file=sys.stderr
            )
            asyncio.run(asyncio.Event().wait())
            return 0
        loading = f", loading for {served.load_seconds:g}s" if served.load_seconds else ""
        slow = f", {fault.factor:g}x slower (fault slow)" if fault is not None else ""
        print(
            f"tgipool emulate: serving {served.model_id} on {served.hostname}:{served.port}{loading}{slow}",
            file=sys.stderr,
        )
        asyncio.run(serve_forever(served))
    return 0


if __name__ == "__main__":  # `python -m tgipool.emulator.cli ...` for quick local runs
    _parser = argparse.ArgumentParser(prog="tgipool")
    add_parser(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args()
    sys.exit(_args.func(_args))
