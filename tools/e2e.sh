#!/usr/bin/env bash
# e2e tests: against $KUBECONFIG when set, else against the local simulated cluster, which this
# script brings up when it is not running and takes down again at the end.
#   tools/e2e.sh                              the whole suite
#   tools/e2e.sh tests/e2e/test_x.py [-k y]   only those files
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
# Test paths given (tools/e2e.sh tests/e2e/test_x.py): only those; otherwise the whole suite (plus any flags).
targets=(tests/e2e)
for arg in "$@"; do [[ "$arg" == tests/* ]] && targets=(); done
.venv/bin/pytest -q -m e2e "${targets[@]}" "$@"
