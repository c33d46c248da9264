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
  monitoring/prometheus:app=prometheus other/intruder:app=intruder
  kube-system/coredns:k8s-app=kube-dns pay/payments:app=payments
  shop/web:app=web shop/api:app=api)
CTRL_PID=
PROXY_PID=
L7_PID=
NGINX_PID=
DNSMASQ_PID=
SERVER_PIDS=()
FWD_BEFORE=$(cat /proc/sys/net/ipv4/ip_forward)

if [ -e "$BPF_DIR" ] && [ -n "$(ls -A "$BPF_DIR" 2>/dev/null)" ]; then
  echo "demo: $BPF_DIR is in use (a palisade-ctrl already runs here?); not touching it" >&2
  exit 1
fi

CLUSTER_UP=
CLUSTER_NS=()

cleanup() {
  set +e
  if [ -n "$CLUSTER_UP" ]; then
    bash scripts/cluster.sh down >/dev/null
    for ns in "${CLUSTER_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  fi
  for p in "${SERVER_PIDS[@]}" $DNSMASQ_PID $PROXY_PID $L7_PID $NGINX_PID; do kill "$p" 2>/dev/null; done
  [ -n "$PROXY_PID" ] && wait "$PROXY_PID" 2>/dev/null
  if [ -n "$CTRL_PID" ]; then
    for spec in "${PODS[@]}"; do "$BIN/palisade" endpoint delete "${spec%%:*}" >/dev/null 2>&1; done
    kill "$CTRL_PID" 2>/dev/null; wait "$CTRL_PID" 2>/dev/null
  fi
  for spec in "${PODS[@]}"; do
    n=${spec%%:*}; ip netns del "$TAG-${n//\//-}" 2>/dev/null
  done
  ip netns del "$TAG-world" 2>/dev/null
  # palisade-ctrl's policy routing for redirected connections (docs/dns.md, docs/l7.md)
  ip -4 rule del pref 90 lookup 2005 2>/dev/null
  ip -4 route flush table 2005 2>/dev/null
  ip -6 rule del pref 90 lookup 2005 2>/dev/null
  ip -6 route flush table 2005 2>/dev/null
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

banner "DNS-aware egress: palisade-dnsproxy, DNS rules and toFQDNs (docs/dns.md)"
# The world: a namespace behind a veth from this host, serving TCP 443 and
# 5432 on addresses of TEST-NET-3 (203.0.113.0/24); a real dnsmasq in
# kube-system/coredns serves the names. The section is skipped if this
# machine already uses that range: the demo's traffic must stay on the
# demo's own interfaces.
W="$TAG-world"
NET=203.0.113
if ip -4 addr show | grep -q " $NET\." || ip -4 route show | grep -q "^$NET\."; then
  echo "demo: $NET.0/24 is in use on this machine; skipping the DNS section"
else
ip netns add "$W"
ip link add "$TAG-up" type veth peer name eth0 netns "$W"
ip addr add "$NET.1/24" dev "$TAG-up"; ip link set "$TAG-up" up
ip -n "$W" link set lo up; ip -n "$W" link set eth0 up
for a in 100 101 102 103; do ip -n "$W" addr add "$NET.$a/24" dev eth0; done
ip -n "$W" route add 10.200.0.0/16 via "$NET.1"
if ! ip -4 route get "$NET.100" | grep -q "dev $TAG-up"; then
  echo "demo: $NET.100 would not leave through $TAG-up; skipping the DNS section" >&2
  exit 1
fi
ip netns exec "$W" "$BIN/palisade-probe" serve --tcp 443 --tcp 5432 >/dev/null &
SERVER_PIDS+=($!)
DNS_IP=$(ip_of kube-system/coredns)
printf "$NET.100 api.stripe.com hooks.stripe.com\n$NET.101 prod-db.cxyz.us-east-1.rds.amazonaws.com\n$NET.102 api.github.com\n" >"$STATE/zone.hosts"
ip netns exec "$TAG-kube-system-coredns" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
  --addn-hosts="$STATE/zone.hosts" --listen-address="$DNS_IP" --bind-interfaces --port=53 --user=root --group=root --pid-file --local-ttl=30 &
DNSMASQ_PID=$!
"$BIN/palisade-dnsproxy" --bpf-dir "$BPF_DIR" --state-dir "$STATE/state" >"$STATE/dnsproxy.stdout" 2>"$STATE/dnsproxy.log" &
PROXY_PID=$!
sleep 0.5
sed -n '1,/^apiVersion/p' examples/policies/payments-dns.yaml | grep '^#' || true
"$BIN/palisade" policy apply -f examples/policies/payments-dns.yaml
resolve() { # name port: resolve from pay/payments, then connect to the answer at once
  local out rc
  out=$(ip netns exec "$TAG-pay-payments" "$BIN/palisade-probe" resolve "$DNS_IP:53" "$1" --connect "$2" --timeout-ms 800 2>&1) && rc=ALLOWED || rc=DROPPED
  printf "  %-44s %-6s %s\n" "$1:$2" "$( [ $rc = ALLOWED ] && printf '\033[32mALLOWED\033[0m' || printf '\033[31mDROPPED\033[0m')" "$out"
}
resolve api.stripe.com 443
resolve prod-db.cxyz.us-east-1.rds.amazonaws.com 5432
resolve api.github.com 443
echo "  direct to $NET.103:443 (no name resolved to it):"
ip netns exec "$TAG-pay-payments" "$BIN/palisade-probe" tcp "$NET.103:443" --timeout-ms 600 >/dev/null 2>&1 && echo "    ALLOWED" || echo "    DROPPED"
sleep 1.2
banner "palisade fqdn cache list"
"$BIN/palisade" fqdn cache list --state-dir "$STATE/state"
banner "palisade observe --verdict REDIRECTED --last 3 (DNS handed to the proxy)"
"$BIN/palisade" observe --state-dir "$STATE/state" --verdict REDIRECTED --last 3
banner "palisade fqdn status"
"$BIN/palisade" fqdn status --state-dir "$STATE/state"
fi

banner "cluster mode: two nodes and a real etcd (scripts/cluster.sh up 2; docs/cluster.md)"
if [ -e /run/palisade/cluster/nodes ]; then
  echo "demo: a cluster is already up on this machine; skipping the cluster section"
else
  CLUSTER_UP=1
  PALISADE_BIN=$BIN bash scripts/cluster.sh up 2 --lease-ttl 5 | sed -n '1,/^Palisade cluster up/p'
  N() { local node=$1; shift; "$BIN/palisade" --node "$node" "$@"; }
  for spec in node-1:shop/frontend:app=frontend node-1:shop/other:app=other node-2:shop/backend:app=backend; do
    IFS=: read -r node name labels <<<"$spec"
    ns="$TAG-c-${name//\//-}"; ip netns add "$ns"; CLUSTER_NS+=("$ns")
    N "$node" endpoint add "$name" --netns "$ns" --labels "$labels"
  done
  ip netns exec "$TAG-c-shop-backend" "$BIN/palisade-probe" serve --tcp 8080 --tcp 9090 >/dev/null &
  SERVER_PIDS+=($!)
  sleep 0.5
  N node-1 node list
  cip() { N "$1" endpoint get "$2" -o json | sed -n 's/.*"ipv4": "\(.*\)".*/\1/p'; }
  BE=$(cip node-2 shop/backend); FE=$(cip node-1 shop/frontend)
  cprobe() { # from-netns port
    ip netns exec "$1" "$BIN/palisade-probe" tcp "$BE:$2" --timeout-ms 600 >/dev/null 2>&1 \
      && printf '\033[32mALLOWED\033[0m' || printf '\033[31mDROPPED\033[0m'
  }
  echo "policy applied on node-1 (examples/policies/allow-frontend-to-backend.yaml), enforced by node-2:"
  N node-1 policy apply -f examples/policies/allow-frontend-to-backend.yaml
  sleep 0.5
  printf "  %-44s %s\n" "shop/frontend (node-1) -> shop/backend (node-2) :8080" "$(cprobe "$TAG-c-shop-frontend" 8080)"
  printf "  %-44s %s\n" "shop/frontend (node-1) -> shop/backend (node-2) :9090" "$(cprobe "$TAG-c-shop-frontend" 9090)"
  printf "  %-44s %s\n" "shop/other (node-1)    -> shop/backend (node-2) :8080" "$(cprobe "$TAG-c-shop-other" 8080)"
  banner "node-2 traces the remote frontend by its cluster identity"
  N node-2 policy trace --src "$FE" --dst shop/backend --dport 8080/TCP
  banner "what etcd holds (/palisade/v1/)"
  ip netns exec palisade-underlay etcdctl --endpoints http://172.31.0.1:2379 get --prefix /palisade/v1/ --keys-only | grep -v '^$'
  banner "palisade --node node-1 status (cluster lines)"
  N node-1 status | grep -A1 '^Cluster'
fi

banner "L7: HTTP rules through palisade-l7proxy (examples/policies/api-l7-ingress.yaml; docs/l7.md)"
API_IP=$(ip_of shop/api)
mkdir -p "$STATE/nginx/logs"
NGX=$STATE/nginx
printf '%s\n' "daemon off; master_process off; worker_processes 1; pid $NGX/nginx.pid; error_log $NGX/logs/error.log warn;" \
  "events { worker_connections 256; }" \
  "http { access_log off; client_body_temp_path $NGX/body; proxy_temp_path $NGX/proxy; fastcgi_temp_path $NGX/fcgi; uwsgi_temp_path $NGX/uwsgi; scgi_temp_path $NGX/scgi;" \
  "  server { listen $API_IP:80; location / { default_type text/plain; return 200 \"shop/api saw \$request_method \$request_uri\"; } } }" >"$NGX/nginx.conf"
ip netns exec "$TAG-shop-api" nginx -c "$NGX/nginx.conf" -p "$NGX" &
NGINX_PID=$!
"$BIN/palisade-l7proxy" --bpf-dir "$BPF_DIR" --state-dir "$STATE/state" >"$STATE/l7proxy.stdout" 2>"$STATE/l7proxy.log" &
L7_PID=$!
sleep 0.5
sed -n '1,/^apiVersion/p' examples/policies/api-l7-ingress.yaml | grep '^#' || true
"$BIN/palisade" policy apply -f examples/policies/api-l7-ingress.yaml
req() { # method path: curl from shop/web
  local out
  out=$(ip netns exec "$TAG-shop-web" curl -s -m 3 -X "$1" -w ' [%{http_code}]' "http://$API_IP$2" | tr -d '\r\n')
  printf "  %-28s %s\n" "$1 $2" "$out"
}
echo "with ns-isolation still applied (every shop pod may reach every shop pod on every port):"
req DELETE /api/users
echo "  an L3/L4 allow of the same peer and port wins over L7 rules (Cilium's semantics); policy trace names it:"
"$BIN/palisade" policy trace --src shop/web --dst shop/api --dport 80/TCP | sed -n 's/^Ingress/  Ingress/p'
"$BIN/palisade" policy delete ns-isolation -n shop
echo "without it, the L7 rules decide:"
req GET /api/status
req DELETE /api/users
req POST /api/admin/exec
req POST /api/orders/42
banner "palisade policy trace ... --method DELETE --path /api/users"
"$BIN/palisade" policy trace --src shop/web --dst shop/api --dport 80/TCP --method DELETE --path /api/users
banner "palisade observe --protocol http --last 4"
"$BIN/palisade" observe --state-dir "$STATE/state" --protocol http --last 4

banner "Prometheus metrics (curl 127.0.0.1:9962/metrics | grep drop_count)"
curl -s --max-time 5 http://127.0.0.1:9962/metrics | grep -E '^(cilium_(drop|forward)_count|hubble_drop)' || true

banner "palisade status (datapath counters by reason and direction)"
"$BIN/palisade" status
banner "done; cleaning up"
