#!/usr/bin/env bash
# Builds the local control plane and metrics stack from the pinned Go wrapper modules in tools/.
# Output goes to a cache directory outside the repo; each binary carries a key (its wrapper's
# go.mod/go.sum, package and flags), so changing one wrapper rebuilds only its binaries and a second
# run (or CI on the same machine) reuses the rest. `--print-bin` prints that directory.
# `tools/build.sh NAME...` builds only those binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
bin="${TGIPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tgipool}/bin"
if [[ "${1:-}" == "--print-bin" ]]; then echo "$bin"; exit 0; fi
mkdir -p "$bin"

k8s_version=v1.36.3
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=36"
  stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2026-01-01T00:00:00Z"
done
prom_stamp="-X github.com/prometheus/common/version.Version=3.16.0"

# module dir | binary name | package | ldflags
targets=(
  "k8s|kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|$stamp"
  "k8s|kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|$stamp"
  "k8s|kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|$stamp"
  "k8s|kubectl|k8s.io/kubernetes/cmd/kubectl|$stamp"
  "etcd|etcd|go.etcd.io/etcd/server/v3|"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|"
  "kwok|kwokctl|sigs.k8s.io/kwok/cmd/kwokctl|"
  "helm|helm|helm.sh/helm/v3/cmd/helm|"
  "prometheus|prometheus|github.com/prometheus/prometheus/cmd/prometheus|$prom_stamp"
  "prometheus|promtool|github.com/prometheus/prometheus/cmd/promtool|$prom_stamp"
  "adapter|prometheus-adapter|sigs.k8s.io/prometheus-adapter/cmd/adapter|"
)
only=("$@")
n=${#targets[@]}; i=0; t0=$SECONDS
for t in "${targets[@]}"; do
  IFS='|' read -r mod name pkg ldflags <<<"$t"
  i=$((i + 1))
  if ((${#only[@]})) && [[ ! " ${only[*]} " == *" $name "* ]]; then continue; fi
  key=$( { cat "$here/$mod/go.mod" "$here/$mod/go.sum"; echo "$pkg $ldflags"; } | sha256sum | cut -c1-16)
  if [[ -x "$bin/$name" && "$(cat "$bin/.$name.key" 2>/dev/null)" == "$key" ]]; then
    echo "[$i/$n] $name: cached"; continue
  fi
  echo "[$i/$n] building $name (first build on 2 cores takes minutes; elapsed $((SECONDS - t0))s)"
  s=$SECONDS
  # Heartbeat so a long compile never looks hung.
  ( while sleep 60; do echo "    ... still building $name ($((SECONDS - s))s)"; done ) &
  hb=$!
  trap 'kill $hb 2>/dev/null || true' EXIT
  (cd "$here/$mod" && go build -trimpath -tags=selinux,notest -ldflags "-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg")
  kill $hb 2>/dev/null || true
  mv "$bin/.$name.tmp" "$bin/$name"
  echo "$key" >"$bin/.$name.key"
  echo "    built $name in $((SECONDS - s))s"
done
echo "binaries in $bin ($((SECONDS - t0))s)"
