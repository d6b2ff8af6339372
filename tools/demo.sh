#!/usr/bin/env bash
# `make demo`: the local simulated cluster, the CRDs, the operator, the example pools, Ready.
# `tools/demo.sh down` stops the operator and the cluster.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$(tools/build.sh --print-bin):$PATH"
export KUBECONFIG="$root/.cluster/kubeconfig"
pidfile="$root/.cluster/operator.pid"
log="$root/.cluster/operator.log"

stop_operator() {
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")"; sleep 1
  fi
  rm -f "$pidfile"
}

if [[ "${1:-}" == "down" ]]; then
  stop_operator
  tools/cluster.sh down
  exit 0
fi
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: tools/demo.sh [down]   (make demo / make demo-down)"; exit 0
fi

step() { printf '\n==> %s\n' "$*"; }
step "local cluster (simulated GPU nodes)"
tools/cluster.sh up
step "CRDs"
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for=condition=Established crd/modelpools.tgipool.io --timeout=60s
step "operator (log: $log)"
stop_operator
mkdir -p "$(dirname "$log")"
nohup .venv/bin/tgipool run --json-logs >"$log" 2>&1 &
echo $! >"$pidfile"
# The examples reference an hf-token Secret; a placeholder is enough on simulated GPUs.
kubectl create secret generic hf-token --from-literal=token=placeholder --dry-run=client -o yaml \
  | kubectl apply -f - >/dev/null
step "example pools"
kubectl apply --server-side -f examples/
step "waiting for the pools to be Ready (weights prefetch, scheduling on GPUs, rollout)"
for i in $(seq 1 90); do
  if kubectl wait --for=condition=Ready modelpool --all --timeout=2s >/dev/null 2>&1; then break; fi
  if ((i % 5 == 0)); then kubectl get modelpools --no-headers | awk '{print "   ", $1, $5, $6}'; fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "operator exited; see $log"; tail -20 "$log"; exit 1; fi
done
kubectl wait --for=condition=Ready modelpool --all --timeout=10s
step "kubectl get modelpools"
kubectl get modelpools
cat <<TXT

Look further:
  export KUBECONFIG=$KUBECONFIG PATH=$(tools/build.sh --print-bin):\$PATH
  kubectl describe modelpool llama3-8b-ru-short      # conditions, events
  kubectl get deploy,svc,pvc,job,hpa,pdb,pods -l app.kubernetes.io/managed-by=tgipool
  .venv/bin/tgipool render -f examples/               # what the operator applies, as YAML
  tail -f $log                                        # operator log (JSON)
Stop everything:
  make demo-down
TXT
