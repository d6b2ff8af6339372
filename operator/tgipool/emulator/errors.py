"""TGI's error kinds: HTTP status, `error_type`, message and the `tgi_request_failure{err}` label.

Mirrors `router/src/infer/mod.rs` (`InferError`, `error_type()`) and `server.rs` (`From<InferError>`).
"""

from __future__ import annotations

from typing import ClassVar


class InferError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "generation"
    prefix: ClassVar[str] = ""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def message(self) -> str:
        return self.prefix + self.detail

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


class ValidationError(InferError):
    status = 422
    error_type = "validation"
    prefix = "Input validation error: "


class OverloadedError(InferError):
    status = 429
    error_type = "overloaded"

    def __init__(self) -> None:
        super().__init__("Model is overloaded")


class GenerationError(InferError):
    status = 424
    error_type = "generation"
    prefix = "Request failed during generation: "


class IncompleteGenerationError(InferError):
    status = 500
    error_type = "incomplete_generation"

    def __init__(self) -> None:
        super().__init__("Incomplete generation")


class IncompleteGenerationStreamError(InferError):
    status = 500
    error_type = "incomplete_generation_stream"

    def __init__(self) -> None:
        super().__init__("Incomplete generation stream")


class TemplateError(InferError):
    status = 422
    error_type = "template_error"
    prefix = "Template error: "


class BodyRejectionError(Exception):
    """axum's extractor rejections: plain text bodies, not TGI's JSON error shape."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
