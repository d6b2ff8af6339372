"""API errors -> what a handler does next: retry soon, or show the refusal on a condition and stop.

409 Conflict, 429 Too Many Requests and 5xx are the API server's passing trouble: the same write
will likely succeed in a few seconds. Any other 4xx refuses the request itself (RBAC, an admission
webhook, a schema): repeating it cannot help until someone changes something, and that change (a
spec edit, a child event, an operator restart) runs the reconcile again.
"""

from __future__ import annotations

from collections.abc import Sequence

import kopf

from tgipool.k8s.client import ApplyError
from tgipool.status import Refused

RETRY_DELAY_SECONDS = 10


def transient(err: ApplyError) -> bool:
    return err.status in (409, 429) or err.status >= 500


def refused(err: ApplyError) -> Refused:
    """How status shows a refused write: retried (ApplyFailed) or left for a person (ApplyRefused)."""
    reason = "ApplyFailed" if transient(err) else "ApplyRefused"
    return Refused(reason, f"the API server refused {err.kind} {err.name}: {err.status} {err.message}")


def handler_error(errors: Sequence[ApplyError], what: str) -> kopf.TemporaryError | kopf.PermanentError:
    """The kopf error for refused writes: a short retry when any of them may pass, else permanent."""
    message = f"{what}: {len(errors)} write(s) refused, first {errors[0]}"
    if any(transient(e) for e in errors):
        return kopf.TemporaryError(message, delay=RETRY_DELAY_SECONDS)
    return kopf.PermanentError(message)
