#!/usr/bin/env bash
# Compares what two builds of the CLI and agent print: runs one scenario
# (endpoints, namespaces, policies, trace, identities, bpf maps, options,
# errors; every command as a table and with -o json) against a fresh
# palisade-ctrl of each build, in network namespaces of its own, and diffs
# the outputs. For refactors that must not change output.
#   scripts/cli-compare.sh OLD_BIN_DIR NEW_BIN_DIR   (e.g. an old worktree's target/debug)
# Exit 0 when only MACs (random per veth) and timings differ. Run as root.
set -u
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then sed -n 2,8p "$0" >&2; exit 64; fi
EX=$PWD/examples/policies
WORK=$(mktemp -d /tmp/palisade-cli-compare.XXXXXX)
N=cmpnode-$$; FE=cmpfe-$$; BE=cmpbe-$$; BPF=/sys/fs/bpf/palisade-cmp-$$
scenario() {
BIN=$1; OUT=$2; T=$WORK/node
rm -rf $T $BPF; mkdir -p $T
for n in $N $FE $BE; do ip netns del $n 2>/dev/null; ip netns add $n; done
ip -n $N link set lo up
nsenter --net=/run/netns/$N $BIN/palisade-ctrl --bpf-dir $BPF --state-dir $T/state --socket $T/ctrl.sock --metrics-address off --pod-cidr 10.231.0.0/24 >$T/ctrl.log 2>&1 &
PID=$!
for i in $(seq 50); do [ -S $T/ctrl.sock ] && break; sleep 0.2; done
p() { echo "### palisade $*"; nsenter --net=/run/netns/$N $BIN/palisade --socket $T/ctrl.sock "$@" 2>&1; echo "exit=$?"; }
both() { p "$@"; p "$@" -o json; }
{
both status
both endpoint add shop/frontend --netns $FE --ip 10.231.0.10 --labels app=frontend
both endpoint add shop/backend --netns $BE --labels app=backend --port http=8080/TCP
both endpoint list
both endpoint get shop/frontend
both namespace set shop --labels team=a
both namespace list
both policy apply -f $EX/allow-frontend-to-backend.yaml -f $EX/default-deny.yaml
both policy get
p policy get allow-frontend-to-backend -n shop -o json
both policy trace --src shop/frontend --dst shop/backend --dport 8080/TCP
both policy trace --src shop/backend --dst 192.0.2.7 --dport 53/UDP
both identity list
both identity get 256
both bpf policy get shop/backend
both bpf ct list
both bpf fqdn list
both config set PolicyAuditMode=Enabled
both config get
both endpoint config shop/frontend PolicyAuditMode=Disabled
both endpoint label shop/frontend tier=web
both policy validate -f $EX/shop-egress.yaml
both policy delete -f $EX/default-deny.yaml
both endpoint delete shop/backend
both node list
both endpoint get nope
both config set Nope=1
both policy trace --src shop/frontend --dst shop/frontend --dport 80
both status
} > $OUT
kill $PID; wait $PID 2>/dev/null
for n in $N $FE $BE; do ip netns del $n 2>/dev/null; done
rm -rf $BPF
cp $T/ctrl.log $OUT.log
}

scenario "$1" "$WORK/old.txt"
scenario "$2" "$WORK/new.txt"
volatile='"mac"|"enforced_ms"|"uptime_s"|^Uptime:|"age_s"|"idle_s"'
if diff <(grep -Ev "$volatile" "$WORK/old.txt") <(grep -Ev "$volatile" "$WORK/new.txt"); then
  echo "same output: $(grep -c '^### ' "$WORK/new.txt") commands ($WORK)"
else
  echo "outputs differ (full outputs in $WORK)"; exit 1
fi
