"""Request decoding and validation, in TGI's order and with TGI's messages.

Decoding stands in for serde (`GenerateRequest`/`GenerateParameters` in `router/src/lib.rs`): a wrong type is
axum's plain-text 422 "Failed to deserialize the JSON body into the target type: ...". Serde also appends
"at line L column C"; the emulator cannot reproduce those positions and leaves them out.

`validate()` follows `Validation::validate` in `router/src/validation.rs` check by check, so a request with
several problems gets the same (first) error as from TGI.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from tgipool.emulator.errors import BodyRejectionError, ValidationError
from tgipool.emulator.settings import EmulatorSettings
from tgipool.emulator.tokens import Tokenizer, TokenSpan

DEFAULT_GENERATION_LENGTH = 1024  # TGI re-queues default-length requests in chunks of this size
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


@dataclass
class GenerateParameters:
    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: list[str] = field(default_factory=list)
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: dict[str, Any] | None = None
    adapter_id: str | None = None


@dataclass
class GenerateRequest:
    inputs: str
    parameters: GenerateParameters
    add_special_tokens: bool = True


@dataclass
class ValidRequest:
    """What the scheduler needs; `max_new_tokens` is the validated (first-chunk) length TGI reports."""

    inputs: str
    input_tokens: list[TokenSpan]
    max_new_tokens: int
    total_new_tokens: int
    stop: list[str]
    do_sample: bool
    seed: int
    details: bool
    decoder_input_details: bool
    top_n_tokens: int

    @property
    def input_length(self) -> int:
        return len(self.input_tokens)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, list):
        return "sequence"
    return "map"


def _reject(path: str, value: Any, expected: str) -> BodyRejectionError:
    if isinstance(value, int) and not isinstance(value, bool) and expected.startswith(("u", "usize")):
        return BodyRejectionError(
            422, f"{_DESERIALIZE}{path}: invalid value: {_json_kind(value)}, expected {expected}"
        )
    return BodyRejectionError(
        422, f"{_DESERIALIZE}{path}: invalid type: {_json_kind(value)}, expected {expected}"
    )


def _opt_int(params: dict[str, Any], name: str, expected: str, lo: int, hi: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _reject(f"parameters.{name}", value, expected)
    return value


def _opt_float(params: dict[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(f"parameters.{name}", value, "f32")
    return float(value)


def _bool(params: dict[str, Any], name: str, default: bool, optional: bool = False) -> bool | None:
    if name not in params:
        return None if optional else default
    value = params[name]
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise _reject(f"parameters.{name}", value, "a boolean")
    return value


def parse_parameters(raw: Any, path: str = "parameters") -> GenerateParameters:
    if raw is None:
        return GenerateParameters()
    if not isinstance(raw, dict):
        raise _reject(path, raw, "struct GenerateParameters")
    stop = raw.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _reject("parameters.stop", stop, "a sequence of strings")
    grammar = raw.get("grammar")
    if grammar is not None and (
        not isinstance(grammar, dict)
        or grammar.get("type") not in {"json", "json_object", "regex", "json_schema"}
    ):
        raise BodyRejectionError(
            422,
            f"{_DESERIALIZE}parameters.grammar: unknown variant, expected one of "
            "`json`, `json_object`, `regex`, `json_schema`",
        )
    adapter_id = raw.get("adapter_id")
    if adapter_id is not None and not isinstance(adapter_id, str):
        raise _reject("parameters.adapter_id", adapter_id, "a string")
    return GenerateParameters(
        best_of=_opt_int(raw, "best_of", "usize", 0, _U64),
        temperature=_opt_float(raw, "temperature"),
        repetition_penalty=_opt_float(raw, "repetition_penalty"),
        frequency_penalty=_opt_float(raw, "frequency_penalty"),
        top_k=_opt_int(raw, "top_k", "i32", -(2**31), 2**31 - 1),
        top_p=_opt_float(raw, "top_p"),
        typical_p=_opt_float(raw, "typical_p"),
        do_sample=bool(_bool(raw, "do_sample", False)),
        max_new_tokens=_opt_int(raw, "max_new_tokens", "u32", 0, _U32),
        return_full_text=_bool(raw, "return_full_text", False, optional=True),
        stop=list(stop),
        truncate=_opt_int(raw, "truncate", "usize", 0, _U64),
        watermark=bool(_bool(raw, "watermark", False)),
        details=bool(_bool(raw, "details", False)),
        decoder_input_details=bool(_bool(raw, "decoder_input_details", False)),
        seed=_opt_int(raw, "seed", "u64", 0, _U64),
        top_n_tokens=_opt_int(raw, "top_n_tokens", "u32", 0, _U32),
        grammar=grammar,
        adapter_id=adapter_id,
    )


def parse_generate_request(body: Any) -> GenerateRequest:
    if not isinstance(body, dict):
        raise BodyRejectionError(
            422, f"{_DESERIALIZE}invalid type: {_json_kind(body)}, expected struct GenerateRequest"
        )
    if "inputs" not in body:
        raise BodyRejectionError(422, f"{_DESERIALIZE}missing field `inputs`")
    inputs = body["inputs"]
    if not isinstance(inputs, str):
        raise _reject("inputs", inputs, "a string")
    return GenerateRequest(inputs=inputs, parameters=parse_parameters(body.get("parameters")))


def validate_best_of(settings: EmulatorSettings, best_of: int) -> int:
    """`Validation::validate_best_of`, run by `generate_best_of` before any permit is taken."""
    if settings.max_best_of == 1 and best_of != 1:
        raise ValidationError("`best_of` != 1 is not allowed for this endpoint")
    if best_of > settings.max_best_of:
        raise ValidationError(f"`best_of` must be > 0 and <= {settings.max_best_of}. Given: {best_of}")
    return best_of


def _validate_grammar(settings: EmulatorSettings, grammar: dict[str, Any]) -> None:
    if settings.disable_grammar_support:
        raise ValidationError("grammar is not supported")
    if grammar.get("type") == "regex":
        return
    value = grammar.get("value")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            raise ValidationError(f"grammar is not valid: {detail}") from exc
    if not isinstance(value, dict):
        raise ValidationError("grammar is not supported")
    if grammar.get("type") == "json" and "properties" not in value:
        raise ValidationError("grammar is not valid: Grammar must have a 'properties' field")


def validate(settings: EmulatorSettings, tokenizer: Tokenizer, request: GenerateRequest) -> ValidRequest:
    """`Validation::validate` + `validate_input`: same checks, same order, same messages."""
    p = request.parameters
    best_of = p.best_of if p.best_of is not None else 1
    sampling = (
        p.do_sample or p.temperature is not None or p.top_k is not None or p.top_p is not None
    ) or p.typical_p is not None
    if best_of > 1 and not sampling:
        raise ValidationError("you must use sampling when `best_of` is > 1")
    if (p.temperature if p.temperature is not None else 1.0) <= 0.0:
        raise ValidationError("`temperature` must be strictly positive")
    if (p.repetition_penalty if p.repetition_penalty is not None else 1.0) <= 0.0:
        raise ValidationError("`repetition_penalty` must be strictly positive")
    if not -2.0 <= (p.frequency_penalty or 0.0) <= 2.0:
        raise ValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and (p.top_p <= 0.0 or p.top_p >= 1.0):
        raise ValidationError("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and (p.typical_p <= 0.0 or p.typical_p >= 1.0):
        raise ValidationError("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise ValidationError("`top_k` must be strictly positive")
    if p.max_new_tokens == 0:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    if len(p.stop) > settings.max_stop_sequences:
        raise ValidationError(
            f"`stop` supports up to {settings.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if p.seed is None:
        seed = random.getrandbits(64)  # a sampling seed, not a secret
    else:
        if best_of > 1:
            raise ValidationError("`seed` must not be set when `best_of` > 1")
        seed = p.seed
    top_n_tokens = p.top_n_tokens or 0
    if top_n_tokens > settings.max_top_n_tokens:
        raise ValidationError(
            f"`top_n_tokens` must be >= 0 and <= {settings.max_top_n_tokens}. Given: {top_n_tokens}"
        )
    if not request.inputs:
        raise ValidationError("`inputs` cannot be empty")
    if p.truncate is not None and (p.truncate == 0 or p.truncate > settings.input_limit):
        raise ValidationError(
            f"`truncate` must be strictly positive and less than {settings.input_limit}. Given: {p.truncate}"
        )

    tokens = tokenizer.encode(request.inputs)
    if p.truncate is not None and len(tokens) > p.truncate:
        tokens = tokens[len(tokens) - p.truncate :]  # TGI keeps the last `truncate` tokens
    input_length = len(tokens)
    if p.max_new_tokens is not None:
        max_new_tokens = total_new_tokens = p.max_new_tokens
    else:
        total_new_tokens = max(settings.total_limit - input_length, 0)
        max_new_tokens = min(total_new_tokens, DEFAULT_GENERATION_LENGTH)
    if input_length + max_new_tokens > settings.total_limit:
        raise ValidationError(
            f"`inputs` tokens + `max_new_tokens` must be <= {settings.total_limit}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > settings.input_limit:
        raise ValidationError(
            f"`inputs` must have less than {settings.input_limit} tokens. Given: {input_length}"
        )
    if p.grammar is not None:
        _validate_grammar(settings, p.grammar)
    return ValidRequest(
        inputs=request.inputs,
        input_tokens=tokens,
        max_new_tokens=max_new_tokens,
        total_new_tokens=total_new_tokens,
        stop=p.stop,
        do_sample=p.do_sample,
        seed=seed,
        details=p.details,
        decoder_input_details=p.decoder_input_details,
        top_n_tokens=top_n_tokens,
    )
