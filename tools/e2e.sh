#!/usr/bin/env bash
# e2e tests: against $KUBECONFIG when set, else against the local simulated cluster, which this
# script brings up when it is not running and takes down again at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$(tools/build.sh --print-bin):$PATH"
started=0
if [[ -z "${KUBECONFIG:-}" ]]; then
  export KUBECONFIG="$root/.cluster/kubeconfig"
  if ! tools/cluster.sh status >/dev/null 2>&1; then
    tools/cluster.sh up
    started=1
  fi
fi
cleanup() { if ((started)); then tools/cluster.sh down; fi; }
trap cleanup EXIT
echo "e2e against $KUBECONFIG ($(kubectl config current-context))"
.venv/bin/pytest -q -m e2e tests/e2e "$@"
