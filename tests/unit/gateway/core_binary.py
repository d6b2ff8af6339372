"""Where the compiled core is: `make core` builds it next to the other binaries (on PATH in `make`)."""

from __future__ import annotations

import shutil


def core_binary() -> str:
    path = shutil.which("tgipool-gateway-core")
    assert path, "tgipool-gateway-core is not on PATH: run `make core` (make unit builds it)"
    return path
