"""The one type for a Kubernetes object as the API server speaks it: a JSON dict."""

from typing import Any

Manifest = dict[str, Any]
