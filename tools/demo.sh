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
sim_pidfile="$root/.cluster/sim.pid"
sim_log="$root/.cluster/sim.log"

stop_pid() {
  if [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill "$(cat "$1")"; sleep 1
  fi
  rm -f "$1"
}
stop_operator() { stop_pid "$pidfile"; stop_pid "$sim_pidfile"; }

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
step "data plane: an emulated TGI on every pool pod's address (log: $sim_log)"
nohup .venv/bin/tgipool sim >"$sim_log" 2>&1 &
echo $! >"$sim_pidfile"
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
step "a request to an emulated pod of llama3-8b-ru-short"
pod_ip=$(kubectl get pods -l tgipool.io/pool=llama3-8b-ru-short,app.kubernetes.io/component=inference-server \
  -o jsonpath='{.items[0].status.podIP}')
body='{"inputs":"What is a weight cache?","parameters":{"max_new_tokens":12}}'
echo "curl http://$pod_ip:8080/generate -d '$body'"
for i in $(seq 1 20); do
  if answer=$(curl -sf "http://$pod_ip:8080/generate" -H 'content-type: application/json' -d "$body"); then break; fi
  sleep 0.5
done
echo "$answer"
cat <<TXT

Look further:
  export KUBECONFIG=$KUBECONFIG PATH=$(tools/build.sh --print-bin):\$PATH
  kubectl describe modelpool llama3-8b-ru-short      # conditions, events
  kubectl get deploy,svc,pvc,job,hpa,pdb,pods -l app.kubernetes.io/managed-by=tgipool
  .venv/bin/tgipool render -f examples/               # what the operator applies, as YAML
  tail -f $log   # operator log (JSON)
  curl http://$pod_ip:8080/info                       # any pool pod answers like TGI (tgipool sim)
Stop everything:
  make demo-down
TXT
