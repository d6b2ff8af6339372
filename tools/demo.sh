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
gw_pidfile="$root/.cluster/gateway.pid"
gw_log="$root/.cluster/gateway.log"
gw_port=${TGIPOOL_DEMO_GATEWAY_PORT:-18080}
op_metrics_port=${TGIPOOL_DEMO_OPERATOR_METRICS_PORT:-18081}

stop_pid() {
  if [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill "$(cat "$1")"; sleep 1
  fi
  rm -f "$1"
}
stop_operator() { stop_pid "$pidfile"; stop_pid "$gw_pidfile"; }

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
prom_url=$(cat .cluster/prometheus-url)
# Short metrics window and rounds, so the demo's burst shows within a minute (defaults: 2m, 15s).
nohup .venv/bin/tgipool run --json-logs --prometheus-url "$prom_url" --metrics-window 30s \
  --metrics-interval 5 --metrics-port "$op_metrics_port" >"$log" 2>&1 &
echo $! >"$pidfile"
# The operator's per-pool gauges (objective, replicas, max, GPU cost) feed the alerts.
printf '[{"targets": ["127.0.0.1:%s"], "labels": {"job": "tgipool-operator"}}]\n' "$op_metrics_port" \
  >.cluster/prometheus/targets/operator.json
# The data plane (an emulated TGI on every pool pod's address, and the pods' readiness) is the
# cluster's own `tgipool sim`, started by tools/cluster.sh up (log: .cluster/sim.log).
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
step "the gateway (ModelGateway main), run here as its pod would run it (log: $gw_log)"
nohup .venv/bin/tgipool gateway --modelgateway main --namespace default --host 127.0.0.1 \
  --port "$gw_port" --core auto --log-level INFO >"$gw_log" 2>&1 &
echo $! >"$gw_pidfile"
# The gateway runs as a process here: tell Prometheus where to scrape it (file discovery).
printf '[{"targets": ["127.0.0.1:%s"], "labels": {"job": "tgipool-gateway", "namespace": "default"}}]\n' \
  "$gw_port" >.cluster/prometheus/targets/gateway.json
kubectl get modelgateway main -o wide
step "requests through the gateway, answered by emulated pods (tgipool sim)"
ask() {  # model, prompt words, max_new_tokens
  local body="{\"inputs\":\"$(printf "%s " $(yes "$2" | head -n "$3"))\",\"parameters\":{\"max_new_tokens\":12}}"
  for i in $(seq 1 40); do
    if out=$(curl -sf -D - -o /tmp/tgipool-demo-answer "http://127.0.0.1:$gw_port/generate" \
        -H 'content-type: application/json' -H "X-Model: $1" -d "$body"); then
      echo "  $1, $3-word prompt -> pool $(grep -i '^x-tgipool-pool' <<<"$out" | cut -d' ' -f2 | tr -d '\r')" \
        "pod $(grep -i '^x-tgipool-endpoint' <<<"$out" | cut -d' ' -f2 | tr -d '\r'):" \
        "$(cat /tmp/tgipool-demo-answer)"
      return
    fi
    sleep 0.5
  done
  echo "  no answer from the gateway; see $gw_log"; exit 1
}
ask llama3-8b-ru "hello" 5
ask llama3-8b-ru "context" 3000
ask code-7b "def" 5
step "a burst of load on llama3-8b-ru-short through the gateway (the metrics loop: Prometheus -> adapter -> HPA)"
.venv/bin/python tools/demo_load.py --url "http://127.0.0.1:$gw_port/generate" --model llama3-8b-ru \
  --clients 96 --seconds 45 --max-new-tokens 120
for i in $(seq 1 30); do  # the HPA acts within a few 5 s rounds of the controller
  [[ "$(kubectl get deploy llama3-8b-ru-short -o jsonpath='{.spec.replicas}')" -gt 2 ]] && break
  sleep 2
done
step "kubectl get modelpools (P95 from Prometheus)"
kubectl get modelpools
step "kubectl get hpa (real values from the custom metrics API; scaled above replicas.min by the burst)"
kubectl get hpa
step "a warm pool: weights cached, zero GPUs at rest; the first request wakes it"
kubectl apply --server-side -f examples/tiers/warm-pool.yaml >/dev/null
for i in $(seq 1 60); do
  [[ "$(kubectl get modelpool mistral-7b-warm -o jsonpath='{.status.phase}')" == Standby ]] && break
  sleep 1
done
kubectl get modelpool mistral-7b-warm
for i in $(seq 1 20); do  # the gateway follows the new pool by watch
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Model: mistral-7b' "http://127.0.0.1:$gw_port/info")" == 503 ]] && break
  sleep 0.5
done
took=$(curl -sf -D /tmp/tgipool-demo-wake -o /tmp/tgipool-demo-answer -w '%{time_total}' \
  "http://127.0.0.1:$gw_port/generate" -H 'content-type: application/json' -H 'X-Model: mistral-7b' \
  -d '{"inputs":"hello","parameters":{"max_new_tokens":8}}') \
  || { echo "  the warm pool did not answer; see $gw_log and $log"; exit 1; }
echo "  answered in ${took} s (held by the gateway: X-TGIPool-Cold-Start" \
  "$(grep -i '^x-tgipool-cold-start' /tmp/tgipool-demo-wake | cut -d' ' -f2 | tr -d '\r') s): $(cat /tmp/tgipool-demo-answer)"
for i in $(seq 1 20); do
  kubectl get modelpool mistral-7b-warm -o jsonpath='{.status.lastActivation.readyAt}' | grep -q . && break
  sleep 0.5
done
echo "  the wake, from status.lastActivation:"
kubectl get modelpool mistral-7b-warm -o jsonpath='{.status.lastActivation}' | python3 -m json.tool | sed 's/^/    /'
kubectl get modelpool mistral-7b-warm

cat <<TXT

Look further:
  export KUBECONFIG=$KUBECONFIG PATH=$(tools/build.sh --print-bin):\$PATH
  kubectl describe modelpool llama3-8b-ru-short      # conditions (SLOMet), live metrics, events
  kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/tgi_queue_size
  curl '$prom_url/api/v1/query?query=tgipool:request_latency_ms:p95'   # Prometheus
  kubectl get deploy,svc,pvc,job,hpa,pdb,pods -l app.kubernetes.io/managed-by=tgipool
  .venv/bin/tgipool render -f examples/               # what the operator applies, as YAML
  tail -f $log   # operator log (JSON)
  curl -i http://127.0.0.1:$gw_port/generate -H 'X-Model: llama3-8b-ru' -d '{"inputs":"hi"}'   # the gateway
  kubectl get pods -o wide; curl http://<pod IP>:8080/info   # any pool pod answers like TGI (tgipool sim)
Stop everything:
  make demo-down
TXT
