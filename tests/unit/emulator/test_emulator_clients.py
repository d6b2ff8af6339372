"""Real TGI/OpenAI clients, unchanged, against the emulator: the emulator's reason to exist."""

from __future__ import annotations

import re
import warnings

import huggingface_hub
import openai
import pytest
import text_generation
from huggingface_hub.errors import ValidationError as HubValidationError

from .conftest import ThreadedEmulator


def test_text_generation_client_generate(shared_emulator: ThreadedEmulator) -> None:
    client = text_generation.Client(shared_emulator.url)
    resp = client.generate("Why is the sky blue?", max_new_tokens=7, decoder_input_details=True)
    assert resp.details.generated_tokens == 7
    assert len(resp.details.tokens) == 7
    assert resp.details.finish_reason == text_generation.types.FinishReason.Length
    assert resp.generated_text == "".join(t.text for t in resp.details.tokens)
    assert resp.details.prefill[0].logprob is None
    # Deterministic: greedy generation of the same prompt gives the same text.
    assert client.generate("Why is the sky blue?", max_new_tokens=7).generated_text == resp.generated_text


def test_text_generation_client_stream(shared_emulator: ThreadedEmulator) -> None:
    client = text_generation.Client(shared_emulator.url)
    events = list(client.generate_stream("Tell me a story", max_new_tokens=5))
    assert len(events) == 5
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].details is not None and events[-1].details.generated_tokens == 5
    assert events[-1].generated_text == "".join(e.token.text for e in events)


def test_text_generation_client_errors(shared_emulator: ThreadedEmulator) -> None:
    client = text_generation.Client(shared_emulator.url)
    with pytest.raises(text_generation.errors.ValidationError, match="must be <= 512"):
        client.generate("hi", max_new_tokens=5000)
    with pytest.raises(text_generation.errors.ValidationError, match="must be <= 512"):
        list(client.generate_stream("hi", max_new_tokens=5000))


def test_stop_sequence_and_seed(shared_emulator: ThreadedEmulator) -> None:
    client = text_generation.Client(shared_emulator.url)
    full = client.generate("abc", max_new_tokens=30).details.tokens
    stop = full[3].text
    first = next(i for i, t in enumerate(full) if t.text == stop)
    resp = client.generate("abc", max_new_tokens=30, stop_sequences=[stop])
    assert resp.details.finish_reason == text_generation.types.FinishReason.StopSequence
    assert resp.details.generated_tokens == first + 1
    sampled = client.generate("abc", max_new_tokens=5, do_sample=True, seed=42)
    assert sampled.details.seed == 42
    assert (
        client.generate("abc", max_new_tokens=5, do_sample=True, seed=42).generated_text
        == sampled.generated_text
    )


def test_huggingface_hub_inference_client(shared_emulator: ThreadedEmulator) -> None:
    client = huggingface_hub.InferenceClient(model=shared_emulator.url)
    out = client.text_generation("The huggingface_hub library is ", max_new_tokens=6, details=True)
    assert out.details is not None and out.details.generated_tokens == 6
    chunks = list(client.text_generation("Hello", max_new_tokens=4, details=True, stream=True))
    assert len(chunks) == 4
    assert chunks[-1].details is not None and chunks[-1].details.finish_reason == "length"
    assert chunks[-1].generated_text == "Hello" + "".join(c.token.text for c in chunks)  # POST / full text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(HubValidationError, match=re.escape("`top_p` must be > 0.0 and < 1.0")):
            list(client.text_generation("Hello", max_new_tokens=4, top_p=1.0, stream=True, details=True))
        with pytest.raises(HubValidationError, match="`temperature` must be strictly positive"):
            client.text_generation("Hello", max_new_tokens=4, temperature=0.0)


def test_openai_chat_completions(shared_emulator: ThreadedEmulator) -> None:
    client = openai.OpenAI(base_url=f"{shared_emulator.url}/v1", api_key="-")
    resp = client.chat.completions.create(
        model="tgi", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5
    )
    assert resp.object == "chat.completion"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.system_fingerprint == "3.3.6-dev0-native"
    stream = client.chat.completions.create(
        model="tgi",
        messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) == 4
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        client.chat.completions.create(
            model="tgi", messages=[{"role": "user", "content": "x"}], max_tokens=2, top_p=1.0
        )
    assert excinfo.value.response.json() == {
        "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
        "error_type": "validation",
    }
    with pytest.raises(openai.APIError, match="top_p"):
        list(
            client.chat.completions.create(
                model="tgi", messages=[{"role": "user", "content": "x"}], max_tokens=2, top_p=1.0, stream=True
            )
        )


def test_openai_completions(shared_emulator: ThreadedEmulator) -> None:
    client = openai.OpenAI(base_url=f"{shared_emulator.url}/v1", api_key="-")
    resp = client.completions.create(model="tgi", prompt=["a", "b"], max_tokens=3)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage is not None and resp.usage.completion_tokens == 6
    chunks = list(client.completions.create(model="tgi", prompt="a", max_tokens=3, stream=True))
    assert len(chunks) == 3
