#!/usr/bin/env bash
# Local Kubernetes cluster for tgipool development and end-to-end tests.
# Run `tools/cluster.sh --help` for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: tools/cluster.sh <command>

Commands:
  up        Start the simulated cluster "tgipool" (no Docker needed): etcd, kube-apiserver,
            kube-controller-manager, kube-scheduler and kwok-controller as local processes
            (kwokctl --runtime binary, binaries from tools/build.sh). Then creates the fake
            nodes in tools/nodes/*.yaml (4x gpu-h100-N with 8 nvidia.com/gpu, gpu-l4-0 with 2,
            gpu-l40s-0 with 4, cpu-0), the default StorageClass tgipool-sim, and starts
            tools/sim_provisioner.py in the background. KWOK's stages are tools/kwok/stages.yaml:
            pool TGI pods become Running but not Ready; `tgipool sim` (started in the background too) serves an
            emulated TGI on every pool pod's address and, as the kubelet's readiness prober,
            marks the pod Ready once its /health answers (after the weights "load").
            Then the metrics stack: a real Prometheus (built from Go modules,
            Kubernetes pod discovery) scraping every pool and gateway pod, and prometheus-adapter
            serving custom.metrics.k8s.io (APIService through an ExternalName Service), so the
            pools' HPAs read real values. A no-op if the cluster already answers.
  down      Delete the cluster, stop the provisioner, remove .cluster/. Leaves no process
            behind. A no-op if nothing is running.
  status    Exit 0 if the cluster answers /readyz, non-zero otherwise.
  nodes N   Make the number of bulk simulated GPU nodes exactly N (sim-gpu-0 .. sim-gpu-<N-1>, 8x H100
            each, label node.kubernetes.io/instance-type=sim-bulk, from tools/nodes/node.yaml.tmpl):
            creates the missing ones and waits until they are Ready, deletes the extra ones. For scale
            tests (bench/operator_bench.py --nodes 1000); `nodes 0` removes them all. The default
            cluster has none.
  kind-up   Alternative for machines with a Docker engine and `kind`: kind cluster "tgipool"
            (tools/kind/kind-config.yaml) whose workers get fake nvidia.com/gpu: 8 capacity
            and H100 labels. `down` deletes it too.

Everything lives in <repo>/.cluster/ (git-ignored):
  .cluster/kubeconfig               admin kubeconfig (export KUBECONFIG=$PWD/.cluster/kubeconfig)
  .cluster/logs/                    component logs (kube-apiserver.log, kwok-controller.log, ...)
  .cluster/logs/audit.log           kube-apiserver audit log (Metadata level, write verbs)
  .cluster/sim-provisioner.log|pid  volume provisioner log and pid
  .cluster/sim.log|pid              `tgipool sim` (data plane and readiness of pool pods) log and pid
  .cluster/volumes/<ns>-<pvc>/      hostPath directories of provisioned volumes
  .cluster/prometheus-url           the local Prometheus' URL (also printed)
  .cluster/prometheus/              its config, rules, adapter rules, data; targets/*.json adds
                                    processes that run outside pods (the operator, a gateway)
  .cluster/logs/prometheus.log, prometheus-adapter.log

Environment:
  TGIPOOL_BIN     directory with the binaries (default: `tools/build.sh --print-bin`;
                  missing ones are built by tools/build.sh)
  TGIPOOL_AUDIT   1 (default) enables the apiserver audit log, 0 disables it
  TGIPOOL_WAIT    timeout for the control plane to become ready (default 2m)
  TGIPOOL_SIM_LOAD_BYTES_PER_SECOND
                  how fast sim pods "load" their weights (default 2e9; 0 = no cold start)
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
state="$root/.cluster"
name=tgipool
kubeconfig="$state/kubeconfig"
export KWOK_WORKDIR="$state/kwok"
cluster_dir="$KWOK_WORKDIR/clusters/$name"
prov_pid="$state/sim-provisioner.pid"
prov_log="$state/sim-provisioner.log"
sim_pidfile="$state/sim.pid"
sim_log="$state/sim.log"
t_start=$SECONDS

log() { printf '[cluster.sh +%ss] %s\n' "$((SECONDS - t_start))" "$*"; }
warn() { printf 'cluster.sh: warning: %s\n' "$*" >&2; }
die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }

# Serialise concurrent invocations (e.g. parallel test workers) on a lock held on this
# script itself, so no lock file is left behind. Children must not inherit fd 9.
lock() {
  exec 9<"${BASH_SOURCE[0]}"
  if ! flock -n 9; then
    log "another cluster.sh is running; waiting for it"
    flock 9
  fi
}

# The cluster's processes outlive this script: they must not inherit the caller's descriptors.
# Under `flock /tmp/e2e.lock make cluster-up`, an inherited lock fd kept the lock held for the
# cluster's whole life (and `flock /tmp/e2e.lock make cluster-down` then waited forever).
close_inherited_fds() {
  local fd
  for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2 && fd != 9)); then eval "exec $fd<&-" 2>/dev/null || true; fi
  done
}

components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok kwokctl kubectl prometheus prometheus-adapter)

# Locate (and if needed build) the binaries; put them first on PATH (the machine has an
# older /usr/bin/kubectl, and kwokctl calls `kubectl`).
setup_bin() {
  local build=${1:-build} missing=() c
  BIN="${TGIPOOL_BIN:-$("$here/build.sh" --print-bin)}"
  for c in "${components[@]}"; do [[ -x "$BIN/$c" ]] || missing+=("$c"); done
  if ((${#missing[@]})); then
    if [[ $build != build ]]; then return 1; fi
    [[ -z "${TGIPOOL_BIN:-}" ]] || die "TGIPOOL_BIN=$BIN lacks: ${missing[*]}"
    log "building missing binaries: ${missing[*]} (tools/build.sh)"
    "$here/build.sh" "${missing[@]}"
  fi
  export PATH="$BIN:$PATH" KWOK_KUBECTL_BINARY="$BIN/kubectl"
}

kubectl_bin() {
  if [[ -n "${BIN:-}" && -x "$BIN/kubectl" ]]; then echo "$BIN/kubectl"; else command -v kubectl; fi
}

kc() { "$(kubectl_bin)" --kubeconfig "$kubeconfig" "$@"; }

answers() {
  [[ -s "$kubeconfig" ]] && kc --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# Names of kwokctl-managed components whose process is gone (kwokctl's binary runtime
# does not restart crashed components).
dead_components() {
  local f pid
  [[ -d "$cluster_dir/pids" ]] || return 0
  for f in "$cluster_dir"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    pid=$(<"$f")
    tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n 1 | grep -q "^$state/" \
      || basename "$f" .pid
  done
}

# True if the pid is a live (non-zombie) process.
running() {
  local st
  st=$(sed 's/.*) //' 2>/dev/null </proc/"$1"/stat) || return 1
  [[ -n "$st" && "${st:0:1}" != Z ]]
}

# ---------------------------------------------------------------- provisioner
provisioner_pid() {
  # Prints the pid if the pidfile names a live sim_provisioner.py of this repo.
  local pid
  [[ -f "$prov_pid" ]] || return 1
  pid=$(<"$prov_pid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$here/sim_provisioner.py" || return 1
  echo "$pid"
}

start_provisioner() {
  local pid py
  if pid=$(provisioner_pid); then
    log "sim-provisioner already running (pid $pid)"
    return 0
  fi
  py=$(python3 -c 'import sys; print(sys.executable)') || die "python3 not found"
  mkdir -p "$state/volumes"
  # setsid: own session, so a Ctrl-C in the caller's terminal does not stop it.
  setsid "$py" "$here/sim_provisioner.py" --kubeconfig "$kubeconfig" --kubectl "$BIN/kubectl" \
    --volumes-dir "$state/volumes" --interval 1 </dev/null >>"$prov_log" 2>&1 9<&- &
  echo $! >"$prov_pid"
  sleep 0.5
  pid=$(provisioner_pid) || { tail -n 20 "$prov_log" >&2 || true; die "sim-provisioner failed to start"; }
  log "sim-provisioner started (pid $pid, log .cluster/sim-provisioner.log)"
}

stop_provisioner() {
  local pid i
  if pid=$(provisioner_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "sim-provisioner stopped (pid $pid)"
  fi
  rm -f "$prov_pid"
}

# ---------------------------------------------------------------- sim (data plane + readiness)
sim_pid() {
  # Prints the pid if the pidfile names a live `tgipool sim` of this repo's venv.
  local pid
  [[ -f "$sim_pidfile" ]] || return 1
  pid=$(<"$sim_pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "$root/.venv/bin/python -m tgipool.cli sim " || return 1
  echo "$pid"
}

# `tgipool sim`: an emulated TGI on every pool pod's address, and the readiness those pods report
# (KWOK leaves them unready, tools/kwok/stages.yaml). One per cluster: two would fight over addresses.
start_sim() {
  local pid py="$root/.venv/bin/python"
  if pid=$(sim_pid); then
    log "tgipool sim already running (pid $pid)"
    return 0
  fi
  [[ -x "$py" ]] || die "no .venv: run 'make install' (the sim is the tgipool package)"
  # setsid: own session, so a Ctrl-C in the caller's terminal does not stop it.
  KUBECONFIG="$kubeconfig" setsid "$py" -m tgipool.cli sim --interval 0.5 \
    --load-bytes-per-second "${TGIPOOL_SIM_LOAD_BYTES_PER_SECOND:-2e9}" \
    </dev/null >>"$sim_log" 2>&1 9<&- &
  echo $! >"$sim_pidfile"
  sleep 0.5
  pid=$(sim_pid) || { tail -n 20 "$sim_log" >&2 || true; die "tgipool sim failed to start"; }
  log "tgipool sim started (pid $pid, log .cluster/sim.log)"
}

stop_sim() {
  local pid i
  if pid=$(sim_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "tgipool sim stopped (pid $pid)"
  fi
  rm -f "$sim_pidfile"
}

# Pids of processes started from this repo's .cluster/ (kwokctl runs the components as
# .cluster/kwok/clusters/tgipool/bin/<name>) or of this repo's provisioner.
our_pids() {
  local p argv
  for p in /proc/[0-9]*; do
    argv=$(tr '\0' '\n' 2>/dev/null <"$p/cmdline" | head -n 4 | tr '\n' ' ') || continue
    case "$argv" in
      "$state/"*|*" $here/sim_provisioner.py "*|*" --"*"=$state/"*) echo "${p#/proc/}" ;;
      "$root/.venv/bin/python -m tgipool.cli sim "*) echo "${p#/proc/}" ;;
    esac
  done
}

# ---------------------------------------------------------------- metrics stack
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pid_alive() { [[ -f "$1" ]] && running "$(<"$1")"; }

# Prometheus (pods by Kubernetes discovery) and prometheus-adapter, registered as the
# custom.metrics.k8s.io APIService. Config and rules come from `tgipool monitoring local`, the same
# builders that write the chart's rule and adapter files.
start_metrics() {
  local prom="$state/prometheus" pport aport py="$root/.venv/bin/python" i
  [[ -x "$py" ]] || die "no .venv: run 'make install' (the monitoring config comes from the tgipool package)"
  mkdir -p "$prom" "$state/adapter-certs"
  "$py" -m tgipool.cli monitoring local --dir "$prom" --kubeconfig "$kubeconfig" >/dev/null
  if ! pid_alive "$prom/prometheus.pid"; then
    # A restarted Prometheus keeps its address: the operator and the adapter were told it.
    pport=$(sed -n 's|^http://127.0.0.1:\([0-9]*\)$|\1|p' "$state/prometheus-url" 2>/dev/null || true)
    [[ -n "$pport" ]] || pport=$(free_port)
    # setsid: own session, so a Ctrl-C in the caller's terminal does not stop it.
    setsid "$BIN/prometheus" --config.file="$prom/prometheus.yml" --storage.tsdb.path="$prom/data" \
      --web.listen-address="127.0.0.1:$pport" --web.enable-lifecycle --storage.tsdb.retention.time=1d \
      </dev/null >>"$state/logs/prometheus.log" 2>&1 9<&- &
    echo $! >"$prom/prometheus.pid"
    echo "http://127.0.0.1:$pport" >"$state/prometheus-url"
  fi
  local url; url=$(<"$state/prometheus-url")
  curl -sf -X POST "$url/-/reload" >/dev/null 2>&1 || true  # a running one re-reads the config
  for i in $(seq 1 100); do curl -sf "$url/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf "$url/-/ready" >/dev/null || { tail -n 20 "$state/logs/prometheus.log" >&2; die "Prometheus did not start"; }
  log "Prometheus ready at $url (log .cluster/logs/prometheus.log)"

  if ! pid_alive "$prom/adapter.pid"; then
    aport=$(cat "$prom/adapter.port" 2>/dev/null || free_port)
    setsid "$BIN/prometheus-adapter" --config="$prom/adapter.yaml" --prometheus-url="$url/" \
      --metrics-relist-interval=5s --secure-port="$aport" --bind-address=127.0.0.1 \
      --cert-dir="$state/adapter-certs" --lister-kubeconfig="$kubeconfig" \
      --authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
      --client-ca-file="$cluster_dir/pki/ca.crt" --v=1 \
      </dev/null >>"$state/logs/prometheus-adapter.log" 2>&1 9<&- &
    echo $! >"$prom/adapter.pid"
    echo "$aport" >"$prom/adapter.port"
  fi
  aport=$(<"$prom/adapter.port")
  # kwokctl's API server has no aggregator routing: an ExternalName Service to loopback works.
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: tgipool-metrics}
---
apiVersion: v1
kind: Service
metadata: {name: prometheus-adapter, namespace: tgipool-metrics}
spec: {type: ExternalName, externalName: 127.0.0.1, ports: [{port: $aport, targetPort: $aport}]}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.custom.metrics.k8s.io}
spec:
  group: custom.metrics.k8s.io
  version: v1beta1
  service: {name: prometheus-adapter, namespace: tgipool-metrics, port: $aport}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta2.custom.metrics.k8s.io}
spec:
  group: custom.metrics.k8s.io
  version: v1beta2
  service: {name: prometheus-adapter, namespace: tgipool-metrics, port: $aport}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 200
YAML
  if ! kc wait --for=condition=Available apiservice/v1beta2.custom.metrics.k8s.io --timeout=60s >/dev/null; then
    tail -n 20 "$state/logs/prometheus-adapter.log" >&2 || true
    die "custom.metrics.k8s.io did not become Available (see .cluster/logs/prometheus-adapter.log)"
  fi
  log "prometheus-adapter serves custom.metrics.k8s.io (port $aport, log .cluster/logs/prometheus-adapter.log)"
}

stop_metrics() {
  local f pid i
  for f in "$state/prometheus/prometheus.pid" "$state/prometheus/adapter.pid"; do
    pid_alive "$f" || continue
    pid=$(<"$f"); kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# ---------------------------------------------------------------- commands
cmd_status() {
  local dead
  setup_bin nobuild || true
  if answers; then
    dead=$(dead_components)
    if [[ -n "$dead" ]]; then
      echo "tgipool cluster answers but these components are not running: $(echo $dead)" \
        "(see .cluster/logs/; 'tools/cluster.sh up' recreates the cluster)"
      return 3
    fi
    echo "tgipool cluster is up ($(cat "$state/mode" 2>/dev/null || echo kwok)); KUBECONFIG=$kubeconfig"
    return 0
  fi
  echo "tgipool cluster is not answering (no $kubeconfig or /readyz failed)"
  return 1
}

print_info() {
  echo
  echo "  export KUBECONFIG=$kubeconfig"
  [[ -z "${BIN:-}" ]] || echo "  export PATH=$BIN:\$PATH    # kubectl v1.36.3"
  if [[ "$(cat "$state/mode" 2>/dev/null)" == kwok ]]; then
    echo "  component logs: .cluster/logs/   provisioner log: .cluster/sim-provisioner.log"
    echo "  tgipool sim:    .cluster/sim.log  (emulated TGI on every pool pod's address; their readiness)"
    if [[ -f "$state/prometheus-url" ]]; then
      echo "  Prometheus:     $(<"$state/prometheus-url")   (custom metrics: kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2)"
    fi
    if [[ -f "$state/logs/audit.log" ]]; then
      echo "  audit log:      .cluster/logs/audit.log  (= $cluster_dir/logs/audit.log)"
    fi
  fi
}

cmd_up() {
  close_inherited_fds
  lock
  setup_bin
  local dead
  dead=$(dead_components)
  if [[ -n "$dead" ]]; then
    log "components not running: $(echo $dead) (see .cluster/logs/); recreating the cluster"
  elif answers; then
    log "cluster tgipool is already up and answering: nothing to do"
    if [[ "$(cat "$state/mode" 2>/dev/null)" == kwok ]]; then start_provisioner; start_sim; start_metrics; fi
    print_info
    return 0
  fi
  if [[ -e "$state" ]]; then
    [[ -n "$dead" ]] || log "found stale state in .cluster/ (cluster not answering); cleaning it up first"
    down_locked
  fi
  mkdir -p "$state"
  echo kwok >"$state/mode"

  local audit_args=()
  if [[ "${TGIPOOL_AUDIT:-1}" == 1 ]]; then
    audit_args=(--kube-audit-policy "$here/kwok/audit-policy.yaml")
  fi
  # Pod IPs are loopback addresses that `tgipool sim` binds; a /16 derived from this checkout's
  # path keeps two clones' clusters on one machine from serving each other's pod addresses.
  local octet=$(( $(printf '%s' "$root" | cksum | cut -d' ' -f1) % 200 + 20 ))
  # kwokctl loads no default stage once its config holds one: stages.yaml is the whole default set,
  # with pool TGI pods left unready for `tgipool sim` to probe.
  { sed "s|cidr: 127.1.0.0/16|cidr: 127.$octet.0.0/16|" "$here/kwok/kwokctl.yaml"; echo "---"
    cat "$here/kwok/stages.yaml"; } >"$state/kwokctl.yaml"
  log "starting control plane (kwokctl --runtime binary, binaries from $BIN; pod CIDR 127.$octet.0.0/16)"
  if ! kwokctl -c "$state/kwokctl.yaml" create cluster --name "$name" --runtime binary \
      --etcd-binary "$BIN/etcd" \
      --kube-apiserver-binary "$BIN/kube-apiserver" \
      --kube-controller-manager-binary "$BIN/kube-controller-manager" \
      --kube-scheduler-binary "$BIN/kube-scheduler" \
      --kwok-controller-binary "$BIN/kwok" \
      "${audit_args[@]}" \
      --kubeconfig "$kubeconfig" \
      --wait "${TGIPOOL_WAIT:-2m}" >"$state/kwokctl.log" 2>&1 9<&-; then
    tail -n 20 "$state/kwokctl.log" >&2 || true
    die "kwokctl create cluster failed (full log: .cluster/kwokctl.log; clean up with: tools/cluster.sh down)"
  fi
  ln -sfn "kwok/clusters/$name/logs" "$state/logs"
  answers || die "control plane started but /readyz does not answer (see .cluster/logs/)"
  log "control plane ready"

  log "creating StorageClass tgipool-sim and nodes from tools/nodes/"
  kc apply -f "$here/kwok/storageclass.yaml" -f "$here/nodes/" >/dev/null
  # kwokctl's readiness check does not cover kwok-controller: nodes turning Ready does.
  if ! kc wait --for=condition=Ready node --all --timeout=60s >/dev/null; then
    tail -n 5 "$state/logs/kwok-controller.log" >&2 || true
    die "nodes did not become Ready (is kwok-controller running? see .cluster/logs/kwok-controller.log)"
  fi
  log "nodes Ready: $(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name} {end}')"

  # Pods can only be created once the ServiceAccount controller made "default".
  local i
  for i in $(seq 1 120); do
    kc -n default get serviceaccount default >/dev/null 2>&1 && break
    sleep 0.5
  done
  kc -n default get serviceaccount default >/dev/null 2>&1 || die "default ServiceAccount never appeared"

  start_provisioner
  start_sim
  start_metrics
  log "cluster tgipool is up ($((SECONDS - t_start))s)"
  print_info
}

# down without taking the lock (cmd_up calls it while holding it).
down_locked() {
  local mode pids pid i
  mode=$(cat "$state/mode" 2>/dev/null || echo kwok)
  stop_sim
  stop_provisioner
  stop_metrics

  if [[ "$mode" == kind ]]; then
    if command -v kind >/dev/null && docker info >/dev/null 2>&1; then
      log "deleting kind cluster $name"
      kind delete cluster --name "$name" --kubeconfig "$kubeconfig" 9<&- || warn "kind delete cluster failed"
    else
      warn "state says kind, but kind/docker engine is unavailable: not deleting any kind cluster"
    fi
  fi

  local component_pids=""
  local f
  for f in "$cluster_dir"/pids/*.pid; do  # kwokctl writes them without a trailing newline
    if [[ -f "$f" ]]; then component_pids+=" $(<"$f")"; fi
  done
  if [[ -d "$cluster_dir" ]]; then
    if setup_bin nobuild; then
      log "deleting kwok cluster $name"
      kwokctl delete cluster --name "$name" --kubeconfig "$kubeconfig" >>"$state/kwokctl.log" 2>&1 9<&- \
        || warn "kwokctl delete cluster failed (see .cluster/kwokctl.log); killing leftovers"
    else
      warn "kwokctl binary not found; killing leftover processes directly"
    fi
  fi

  # Whatever kwokctl missed (e.g. state left by a crashed run): only our own processes.
  pids=$(our_pids)
  if [[ -n "$pids" ]]; then
    log "stopping leftover processes: $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    for i in $(seq 1 50); do
      pids=$(for pid in $pids; do if running "$pid"; then echo "$pid"; fi; done)
      [[ -z "$pids" ]] && break
      sleep 0.1
    done
    [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
  fi

  rm -rf "$state"
  pids=$(our_pids)
  [[ -z "$pids" ]] || die "processes still running after down: $(echo $pids)"
  # The components were re-parented to PID 1 when kwokctl exited; until PID 1 reaps them
  # they show up in ps as <defunct>. Give it a moment so `ps` is clean afterwards.
  for i in $(seq 1 50); do
    pids=$(for pid in $component_pids; do if [[ -e /proc/$pid ]]; then echo "$pid"; fi; done)
    [[ -z "$pids" ]] && break
    sleep 0.2
  done
  [[ -z "$pids" ]] || log "note: exited processes $(echo $pids) not yet reaped by PID 1 (zombies, not running)"
}

cmd_down() {
  lock
  if [[ ! -e "$state" && -z "$(our_pids)" ]]; then
    log "no cluster state in .cluster/ and no cluster processes: nothing to do"
    return 0
  fi
  down_locked
  log "cluster tgipool is down, .cluster/ removed ($((SECONDS - t_start))s)"
}

# Bulk simulated GPU nodes for scale tests (the default cluster stays small: tests rely on it).
bulk_selector=node.kubernetes.io/instance-type=sim-bulk

cmd_nodes() {
  local want=${1:-} have i name doc
  [[ "$want" =~ ^[0-9]+$ ]] || die "usage: tools/cluster.sh nodes COUNT"
  setup_bin nobuild || die "binaries missing: run 'tools/cluster.sh up' first"
  answers || die "the cluster is not answering: run 'tools/cluster.sh up' first"
  have=$(kc get nodes -l "$bulk_selector" -o name | sed -n 's|^node/sim-gpu-\([0-9]*\)$|\1|p' | sort -n)
  # Extra ones (index >= N) go; deletes are not waited for (KWOK holds no pods' state for them).
  local extra=()
  for i in $have; do ((i < want)) || extra+=("sim-gpu-$i"); done
  if ((want == 0 && ${#extra[@]})); then
    kc delete nodes -l "$bulk_selector" --wait=false >/dev/null
    log "deleted ${#extra[@]} bulk node(s)"
  elif ((${#extra[@]})); then
    printf '%s\n' "${extra[@]}" | xargs -n 200 "$(kubectl_bin)" --kubeconfig "$kubeconfig" delete node --wait=false >/dev/null
    log "deleted ${#extra[@]} bulk node(s)"
  fi
  ((want > 0)) || return 0
  local tmpl; tmpl=$(<"$here/nodes/node.yaml.tmpl")
  # Only the missing ones: applying an existing node again conflicts with kube-controller-manager's fields.
  local -A present=()
  for i in $have; do present[$i]=1; done
  doc=$(for ((i = 0; i < want; i++)); do
    [[ -n "${present[$i]:-}" ]] && continue
    echo "---"
    NAME=sim-gpu-$i GPU_COUNT=8 GPU_PRODUCT=NVIDIA-H100-80GB-HBM3 GPU_MEMORY=81559 INSTANCE_TYPE=sim-bulk \
      CPU=96 MEMORY=1Ti envsubst_node "$tmpl"
  done)
  [[ -z "$doc" ]] || kc apply --server-side --field-manager=cluster-sh -f - <<<"$doc" >/dev/null
  if ! kc wait --for=condition=Ready node -l "$bulk_selector" --timeout=300s >/dev/null; then
    die "bulk nodes did not become Ready within 300 s (see .cluster/logs/kwok-controller.log)"
  fi
  log "$want bulk node(s) Ready ($bulk_selector)"
}

# The node template with its ${VAR}s filled from the environment (no envsubst needed).
envsubst_node() {
  local out=$1 v
  for v in NAME GPU_COUNT GPU_PRODUCT GPU_MEMORY INSTANCE_TYPE CPU MEMORY; do out=${out//\$\{$v\}/${!v}}; done
  printf '%s\n' "$out"
}

cmd_kind_up() {
  lock
  command -v kind >/dev/null || die "kind is not installed (https://kind.sigs.k8s.io/docs/user/quick-start/#installation).
On machines without Docker use: tools/cluster.sh up"
  command -v docker >/dev/null || die "docker is not installed; kind needs a Docker engine. Without Docker use: tools/cluster.sh up"
  docker info >/dev/null 2>&1 || die "no working Docker engine ('docker info' failed; a docker client alone is not enough).
Start Docker, or use: tools/cluster.sh up"
  setup_bin nobuild || BIN=""
  kubectl_bin >/dev/null || die "kubectl not found (build it with tools/build.sh kubectl)"
  if answers; then
    [[ "$(cat "$state/mode" 2>/dev/null)" == kind ]] \
      || die "a simulated (kwok) cluster is running; run 'tools/cluster.sh down' first"
    log "kind cluster tgipool is already up and answering: nothing to do"
    return 0
  fi
  [[ -e "$state" ]] && { log "cleaning stale .cluster/ state first"; down_locked; }
  mkdir -p "$state"
  echo kind >"$state/mode"

  log "creating kind cluster $name (tools/kind/kind-config.yaml)"
  kind create cluster --name "$name" --config "$here/kind/kind-config.yaml" \
    --kubeconfig "$kubeconfig" --wait 3m 9<&-
  kc wait --for=condition=Ready node --all --timeout=180s >/dev/null

  local node workers
  workers=$(kc get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}')
  [[ -n "$workers" ]] || die "no worker nodes found"
  for node in $workers; do
    log "faking 8 H100 GPUs on $node"
    kc label node "$node" --overwrite \
      nvidia.com/gpu.present=true \
      nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3 \
      nvidia.com/gpu.count=8 \
      nvidia.com/gpu.memory=81559 \
      node.kubernetes.io/instance-type=kind-fake-8xh100 >/dev/null
    # The documented way to advertise an extended resource; the kubelet keeps unknown
    # capacity entries and recomputes allocatable from them.
    kc patch node "$node" --subresource=status --type=json -p \
      '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"},
        {"op":"add","path":"/status/allocatable/nvidia.com~1gpu","value":"8"}]' >/dev/null
  done
  kc apply -f "$here/kind/storageclass.yaml" >/dev/null
  log "kind cluster tgipool is up ($((SECONDS - t_start))s)"
  kc get nodes -o custom-columns='NAME:.metadata.name,GPU:.status.allocatable.nvidia\.com/gpu,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product'
  print_info
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  nodes) cmd_nodes "${2:-}" ;;
  kind-up) cmd_kind_up ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) printf 'cluster.sh: unknown command: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
esac
