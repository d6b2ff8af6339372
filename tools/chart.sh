#!/usr/bin/env bash
# make helm-lint: `helm lint --strict` and `helm template` of charts/tgi-pool with the default values and
# with every documented option set (charts/tgi-pool/ci/*-values.yaml, the chart-testing layout); the
# monitors are rendered as if the Prometheus Operator's CRDs were there. Also fails when the chart's
# CRDs are stale against crds/. Schema refusals of bad values are tested in tests/unit/test_chart.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
chart=charts/tgi-pool
py=${PY:-.venv/bin/python}
command -v helm >/dev/null || { echo "helm not found: run 'make tools' and put 'make print-bin' on PATH" >&2; exit 1; }
"$py" tools/chart_crds.py --check
caps=(--api-versions monitoring.coreos.com/v1/PodMonitor --api-versions monitoring.coreos.com/v1/ServiceMonitor)
n=0
for values in "$chart"/ci/*-values.yaml; do
  echo "== $values"
  helm lint --strict "$chart" -f "$values" >/dev/null
  helm template lint-release "$chart" --namespace tgipool-system -f "$values" "${caps[@]}" >/dev/null
  n=$((n + 1))
done
echo "helm lint + helm template: $n value sets OK"
