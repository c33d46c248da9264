#!/usr/bin/env bash
# The reliability suite in one command (docs/reliability.md): crashes and an
# etcd outage under load, the datapath against its model, the bad-input
# corpus and the fault tests, and every fuzz target. Prints each part's
# table and writes them to results/reliability/. Run as root.
#
# Usage: scripts/reliability.sh [--quick] [--fuzz-seconds S] [--skip-setup]
#   --quick           what the test suite runs: 3 kills per daemon, an 8 s
#                     etcd outage, 300 differential cases, 20 000 executions
#                     per fuzz target (about 10 minutes)
#   --fuzz-seconds S  seconds per fuzz target in the full run (default 1800:
#                     the issue's bar; all eight targets take 4 hours)
#   --skip-setup      do not run scripts/setup.sh first
# The full run takes about 4.5 hours, nearly all of it fuzzing. The exit
# status is non-zero if any part failed; the others still run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

quick=0 fuzz_seconds=1800 setup=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --fuzz-seconds) fuzz_seconds="${2:?--fuzz-seconds needs a number}"; shift ;;
    --skip-setup) setup=0 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "reliability.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$(id -u)" != 0 ]; then
  echo "reliability.sh: run as root (it makes namespaces and loads BPF programs)" >&2
  exit 1
fi
[ "$setup" = 1 ] && bash scripts/setup.sh
cargo build --workspace --bins --quiet

out=results/reliability
mkdir -p "$out"
failed=()
part() {
  local name=$1; shift
  echo "==> $name: $*"
  if "$@"; then echo "==> $name: ok"; else echo "==> $name: FAILED"; failed+=("$name"); fi
}

if [ "$quick" = 1 ]; then
  part chaos target/debug/palisade-bench chaos --kills 3 --etcd-outage-s 8 --out "$out/chaos.md"
  part differential target/debug/palisade-bench differential --cases 300 --out "$out/differential.txt"
  part fuzz bash scripts/fuzz.sh --quick
else
  part chaos target/debug/palisade-bench chaos --kills 20 --etcd-outage-s 60 --out "$out/chaos.md"
  part differential target/debug/palisade-bench differential --cases 10000 --out "$out/differential.txt"
  part fuzz env FUZZ_SUMMARY="$out/fuzz.tsv" bash scripts/fuzz.sh --seconds "$fuzz_seconds" --keep
fi
# The bad-input corpus, and the fault and adversary tests (each a netns
# test on real packets; docs/reliability.md lists them).
part bad-input cargo test -q -p palisade-netns-tests --test bad_input -- --nocapture
part faults cargo test -q -p palisade-netns-tests --test lifecycle -- a_full_ a_corrupt_ a_read_only_ a_reused_
part dns-faults cargo test -q -p palisade-netns-tests --test dns -- clock_jumps a_corrupt_ a_full_fqdn learned_addresses_close
part cluster-faults cargo test -q -p palisade-netns-tests --test cluster -- etcd_ partition_ bad_records ipcache_sync_restart
part flood cargo test -q -p palisade-netns-tests --test observe -- a_flood_keeps
part security cargo test -q -p palisade-netns-tests --test operator -- a_non_root idle_and_slow

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "reliability: failed: ${failed[*]} (tables so far in $out/)"
  exit 1
fi
echo "reliability: every part passed; tables in $out/"
