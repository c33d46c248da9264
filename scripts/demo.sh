#!/usr/bin/env bash
# The Palisade demo: builds a small shop (frontend, backend, cart in "shop",
# prometheus in "monitoring", an intruder in "other"), starts palisade-ctrl
# on this machine, applies the seed policies one by one and shows, with real
# TCP connections and pings, what is allowed and what is dropped, with the
# datapath's counters. Everything it creates is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh --release
BIN=$PWD/target/release
TAG=pdemo
STATE=$(mktemp -d /tmp/palisade-demo.XXXXXX)
SOCK=$STATE/ctrl.sock
BPF_DIR=/sys/fs/bpf/palisade
export PALISADE_SOCKET=$SOCK
PODS=(shop/frontend:app=frontend shop/backend:app=backend shop/cart:app=cart
  monitoring/prometheus:app=prometheus other/intruder:app=intruder)
CTRL_PID=
SERVER_PIDS=()
FWD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)

if [ -e "$BPF_DIR" ] && [ -n "$(ls -A "$BPF_DIR" 2>/dev/null)" ]; then
  echo "demo: $BPF_DIR is in use (a palisade-ctrl already runs here?); not touching it" >&2
  exit 1
fi

cleanup() {
  set +e
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$CTRL_PID" ]; then
    for spec in "${PODS[@]}"; do "$BIN/palisade" endpoint delete "${spec%%:*}" >/dev/null 2>&1; done
    kill "$CTRL_PID" 2>/dev/null; wait "$CTRL_PID" 2>/dev/null
  fi
  for spec in "${PODS[@]}"; do
    n=${spec%%:*}; ip netns del "$TAG-${n//\//-}" 2>/dev/null
  done
  rm -rf "$BPF_DIR" "$STATE"
  echo "$FWD_BEFORE" > /proc/sys/net/ipv4/ip_forward
}
trap cleanup EXIT

banner() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

banner "starting palisade-ctrl (maps pinned in $BPF_DIR, state in $STATE)"
"$BIN/palisade-ctrl" --bpf-dir "$BPF_DIR" --state-dir "$STATE/state" --socket "$SOCK" >"$STATE/ctrl.log" 2>&1 &
CTRL_PID=$!
for _ in $(seq 100); do "$BIN/palisade" status >/dev/null 2>&1 && break; sleep 0.1; done
"$BIN/palisade" status | head -8

banner "creating pods (network namespaces) and registering them"
for spec in "${PODS[@]}"; do
  name=${spec%%:*}; labels=${spec#*:}; ns="$TAG-${name//\//-}"
  ip netns add "$ns"
  "$BIN/palisade" endpoint add "$name" --netns "$ns" --labels "$labels"
  ip netns exec "$ns" "$BIN/palisade-probe" serve --tcp 8080 --tcp 9090 --udp 8080 >/dev/null &
  SERVER_PIDS+=($!)
done
sleep 0.3
"$BIN/palisade" endpoint list

ip_of() { "$BIN/palisade" endpoint get "$1" -o json | sed -n 's/.*"ipv4": "\(.*\)".*/\1/p'; }
probe() { # from to port|ping
  local from=$1 to=$2 what=$3 ns="$TAG-${1//\//-}" ip
  ip=$(ip_of "$to")
  if [ "$what" = ping ]; then
    ip netns exec "$ns" ping -c1 -W1 -q "$ip" >/dev/null 2>&1
  else
    ip netns exec "$ns" "$BIN/palisade-probe" tcp "$ip:$what" --timeout-ms 600 >/dev/null 2>&1
  fi
}
matrix() {
  printf '  %-24s %-24s %-10s %s\n' FROM TO WHAT VERDICT
  for row in "$@"; do
    read -r from to what <<<"$row"
    if probe "$from" "$to" "$what"; then v='\033[32mALLOWED\033[0m'; else v='\033[31mDROPPED\033[0m'; fi
    printf "  %-24s %-24s %-10s $v\n" "$from" "$to" "$( [ "$what" = ping ] && echo ping || echo "tcp/$what")"
  done
}
ROWS=("shop/frontend shop/backend 8080" "shop/frontend shop/backend 9090" "shop/cart shop/backend 8080"
  "monitoring/prometheus shop/backend 9090" "other/intruder shop/backend 8080" "other/intruder shop/frontend ping"
  "shop/backend shop/frontend 8080" "shop/frontend other/intruder 8080")

banner "no policy: every direction is open (default enforcement)"
matrix "${ROWS[@]}"

for f in allow-frontend-to-backend allow-from-monitoring ns-isolation; do
  banner "palisade policy apply -f examples/policies/$f.yaml"
  [ "$f" = ns-isolation ] && echo "(allow rules add up: ns-isolation re-opens traffic inside shop, keeps other namespaces out)"
  sed -n '1,/^apiVersion/p' "examples/policies/$f.yaml" | grep '^#' || true
  "$BIN/palisade" policy apply -f "examples/policies/$f.yaml"
  matrix "${ROWS[@]}"
done

banner "palisade policy trace (answers from the live policy map)"
"$BIN/palisade" policy trace --src shop/frontend --dst shop/backend --dport 8080/TCP
"$BIN/palisade" policy trace --src shop/cart --dst shop/backend --dport 8080/TCP

banner "palisade bpf policy get shop/backend"
"$BIN/palisade" bpf policy get shop/backend

banner "palisade policy apply -f examples/policies/default-deny.yaml (explicit default deny, both directions)"
"$BIN/palisade" policy apply -f examples/policies/default-deny.yaml
matrix "${ROWS[@]}"
"$BIN/palisade" policy delete default-deny -n shop

banner "a bad policy is refused and changes nothing"
printf 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: typo, namespace: shop}\nspec:\n  endpointSelector: {}\n  ingres: []\n' >"$STATE/typo.yaml"
"$BIN/palisade" policy apply -f "$STATE/typo.yaml" || true

banner "palisade observe --verdict DROPPED --last 5 (flows, read straight from the ring)"
"$BIN/palisade" observe --state-dir "$STATE/state" --verdict DROPPED --last 5
banner "palisade observe --from-pod shop/frontend --last 2 -o json"
"$BIN/palisade" observe --state-dir "$STATE/state" --from-pod shop/frontend --last 2 -o json

banner "audit mode: default deny, audited first (palisade config set PolicyAuditMode=Enabled)"
"$BIN/palisade" config set PolicyAuditMode=Enabled
"$BIN/palisade" policy apply -f examples/policies/default-deny.yaml
"$BIN/palisade" endpoint list
matrix "shop/cart shop/backend 8080" "other/intruder shop/frontend 8080"
"$BIN/palisade" observe --state-dir "$STATE/state" --verdict AUDIT --last 4
"$BIN/palisade" config set PolicyAuditMode=Disabled
"$BIN/palisade" policy delete default-deny -n shop

banner "Prometheus metrics (curl 127.0.0.1:9962/metrics | grep drop_count)"
exec 3<>/dev/tcp/127.0.0.1/9962 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep -E '^cilium_(drop|forward)_count' <&3 || true
exec 3<&-

banner "palisade status (datapath counters by reason and direction)"
"$BIN/palisade" status
banner "done; cleaning up"
