#!/usr/bin/env bash
# A Palisade cluster on this machine: N nodes (network namespaces
# palisade-node-1 … palisade-node-N, node names node-1 … node-N), each with
# its own palisade-ctrl, palisade-dnsproxy and palisade-ipcache-sync, joined
# by an underlay bridge (namespace palisade-underlay, 172.31.0.0/24) where a
# real etcd listens on 172.31.0.1:2379. Pod CIDR of node i: 10.210.i.0/24,
# routed between the nodes over the underlay. Every address lives inside
# these namespaces; nothing is routed to or from the machine's own network.
#
#   scripts/cluster.sh up N [--lease-ttl SECONDS]   build it (N = 1..9)
#   scripts/cluster.sh status                       what runs
#   scripts/cluster.sh down                         remove all of it
#
# Run as root. Binaries: target/debug (built by scripts/setup.sh), or
# PALISADE_BIN=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

# The nodes' settings come from their --config files only.
unset PALISADE_SOCKET PALISADE_STATE_DIR PALISADE_BPF_DIR PALISADE_NODE PALISADE_NODE_NAME \
  PALISADE_ETCD_ENDPOINTS PALISADE_ETCD_CA_FILE PALISADE_ETCD_CERT_FILE PALISADE_ETCD_KEY_FILE PALISADE_LEASE_TTL \
  PALISADE_POD_CIDR PALISADE_DNS_PROXY_PORT PALISADE_METRICS_ADDRESS

RUN=/run/palisade/cluster
UL=palisade-underlay
ETCD_IP=172.31.0.1
ETCD_URL=http://$ETCD_IP:2379

die() { echo "cluster.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it creates namespaces and loads BPF programs)"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

node_ns() { echo "palisade-node-$1"; }

# Stops a process we started, by the PID we recorded, only if that PID is
# still the binary we started (never by name).
stop_pid() {
  local pidfile=$1 pid exe
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ -n "$exe" ] && [ "$(basename "$exe")" = "$(basename "$pidfile" .pid)" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  local n=0
  [ -f "$RUN/nodes" ] && n=$(cat "$RUN/nodes")
  for i in $(seq "$n"); do
    for p in palisade-ipcache-sync palisade-dnsproxy palisade-ctrl; do stop_pid "$RUN/node-$i/$p.pid"; done
    ip netns del "$(node_ns "$i")" 2>/dev/null || true
    rm -rf "/sys/fs/bpf/palisade/node-$i" "/var/lib/palisade/node-$i" "/run/palisade/node-$i"
  done
  stop_pid "$RUN/etcd.pid"
  ip netns del "$UL" 2>/dev/null || true
  rm -rf "$RUN"
  echo "cluster removed"
}

status() {
  [ -f "$RUN/nodes" ] || { echo "no cluster (scripts/cluster.sh up N builds one)"; return 0; }
  local n; n=$(cat "$RUN/nodes")
  echo "etcd $ETCD_URL (namespace $UL): $(ip netns exec "$UL" etcdctl --endpoints "$ETCD_URL" endpoint health 2>&1 | tail -1)"
  for i in $(seq "$n"); do
    echo "--- node-$i"
    "$BIN/palisade" --node "node-$i" status 2>&1 | grep -E '^(Mode|Endpoints|Identities|Policies|Cluster| {15})' || true
  done
}

wait_for() { # seconds, command...
  local t=$1; shift
  for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

up() {
  local n=$1 ttl=$2
  [[ "$n" =~ ^[1-9]$ ]] || die "up N: N is the number of nodes, 1 to 9"
  [ -e "$RUN/nodes" ] && die "a cluster is already up ($(cat "$RUN/nodes") nodes); scripts/cluster.sh down first"
  ip netns list | grep -qE "^($UL|palisade-node-[0-9])( |$)" && die "namespaces of an earlier cluster remain; scripts/cluster.sh down first"
  if [ ! -x "$BIN/palisade-ipcache-sync" ]; then
    bash scripts/setup.sh
  fi
  command -v etcd >/dev/null || die "etcd not installed (scripts/setup.sh installs etcd-server)"
  mkdir -p "$RUN"
  echo "$n" >"$RUN/nodes"
  built=0
  trap '[ "$built" = 1 ] || { echo "cluster.sh: failed; removing what was built" >&2; down >/dev/null; }' EXIT

  echo "==> underlay $UL ($ETCD_IP/24) and etcd"
  ip netns add "$UL"
  ip -n "$UL" link set lo up
  ip -n "$UL" link add br0 type bridge
  ip -n "$UL" addr add "$ETCD_IP/24" dev br0
  ip -n "$UL" link set br0 up
  mkdir -p "$RUN/etcd"
  ip netns exec "$UL" setsid etcd --name palisade --data-dir "$RUN/etcd/data" \
    --listen-client-urls "$ETCD_URL,http://127.0.0.1:2379" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster palisade=http://127.0.0.1:2380 --log-level warn >"$RUN/etcd/etcd.log" 2>&1 </dev/null &
  echo $! >"$RUN/etcd.pid"
  wait_for 20 ip netns exec "$UL" etcdctl --endpoints "$ETCD_URL" endpoint health || die "etcd did not start: $(tail -5 "$RUN/etcd/etcd.log")"

  for i in $(seq "$n"); do
    local ns dir; ns=$(node_ns "$i"); dir="$RUN/node-$i"
    echo "==> node-$i: namespace $ns, underlay 172.31.0.$((10 + i)), pod CIDR 10.210.$i.0/24"
    mkdir -p "$dir"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "n$i" netns "$UL" type veth peer name ul0 netns "$ns"
    ip -n "$UL" link set "n$i" master br0 up
    ip -n "$ns" addr add "172.31.0.$((10 + i))/24" dev ul0
    ip -n "$ns" link set ul0 up
    # The processes read their settings from per-node files, as a unit would.
    # nsenter (not `ip netns exec`) keeps this mount namespace, so all
    # three processes see the same bpffs and pinned maps.
    # One file for the node's three daemons: shared keys at the top, each
    # daemon's own under its name.
    cat >"$dir/node.yaml" <<EOF
node-name: node-$i
etcd-endpoints: [$ETCD_URL]
lease-ttl: $ttl
palisade-ctrl:
  pod-cidr: 10.210.$i.0/24
  metrics-address: "off"
EOF
    nsenter --net="/run/netns/$ns" setsid "$BIN/palisade-ctrl" --config "$dir/node.yaml" >"$dir/ctrl.log" 2>&1 </dev/null &
    echo $! >"$dir/palisade-ctrl.pid"
    wait_for 20 "$BIN/palisade" --node "node-$i" status || die "palisade-ctrl of node-$i did not start: $(tail -5 "$dir/ctrl.log")"
    nsenter --net="/run/netns/$ns" setsid "$BIN/palisade-dnsproxy" --config "$dir/node.yaml" >/dev/null 2>"$dir/dnsproxy.log" </dev/null &
    echo $! >"$dir/palisade-dnsproxy.pid"
    nsenter --net="/run/netns/$ns" setsid "$BIN/palisade-ipcache-sync" --config "$dir/node.yaml" >/dev/null 2>"$dir/ipcache-sync.log" </dev/null &
    echo $! >"$dir/palisade-ipcache-sync.pid"
  done
  for i in $(seq "$n"); do
    for j in $(seq "$n"); do
      [ "$i" = "$j" ] || ip -n "$(node_ns "$i")" route add "10.210.$j.0/24" via "172.31.0.$((10 + j))"
    done
  done
  # Every node sees every node.
  for i in $(seq "$n"); do
    wait_for 20 bash -c "[ \"\$('$BIN/palisade' --node node-$i node list -o json | grep -c '\"name\"')\" = $n ]" \
      || die "node-$i does not see $n nodes: $(tail -5 "$RUN/node-$i/ipcache-sync.log")"
  done
  built=1
  echo
  echo "Palisade cluster up: $n nodes, etcd $ETCD_URL (in namespace $UL)."
  echo
  for i in $(seq "$n"); do
    echo "  node-$i: namespace $(node_ns "$i"), pod CIDR 10.210.$i.0/24, CLI: palisade --node node-$i ..., config $RUN/node-$i/node.yaml"
  done
  cat <<EOF

  palisade --node node-1 node list
  ip netns add web1 && palisade --node node-1 endpoint add shop/web --netns web1 --labels app=web
  palisade --node node-2 policy apply -f examples/policies/allow-frontend-to-backend.yaml   # every node enforces it
  ip netns exec $UL etcdctl --endpoints $ETCD_URL get --prefix /palisade/v1/ --keys-only

  (palisade is $BIN/palisade; logs in $RUN/node-*/; scripts/cluster.sh down removes it all)
EOF
}

BIN=${PALISADE_BIN:-$PWD/target/debug}
case "${1:-}" in
  up)
    [ $# -ge 2 ] || { usage; exit 64; }
    n=$2; ttl=15
    shift 2
    while [ $# -gt 0 ]; do
      case "$1" in
        --lease-ttl) ttl=${2:?--lease-ttl needs seconds}; shift 2 ;;
        *) die "unknown option $1" ;;
      esac
    done
    up "$n" "$ttl" ;;
  down) down ;;
  status) status ;;
  -h|--help|help) usage ;;
  *) usage; exit 64 ;;
esac
