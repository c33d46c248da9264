#!/usr/bin/env bash
# Sets up the machine and runs every test: formatting, clippy, unit tests,
# BPF_PROG_TEST_RUN fixtures and the real-packet netns tests. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/setup.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test (unit, BPF fixtures, netns)"
log=$(mktemp)
set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {s += $4} END {print s+0}' "$log")
failed=$(awk '/^test result:/ {s += $6} END {print s+0}' "$log")
rm -f "$log"
# The benchmarks must keep running (numbers are not judged here, only that
# each quick suite completes and cleans up after itself).
if [ "$status" = 0 ]; then
  echo "==> benchmark smoke (palisade-bench datapath --quick, apply --quick, cluster --quick)"
  target/debug/palisade-bench datapath --quick >/dev/null 2>&1 || { echo "palisade-bench datapath --quick failed"; status=1; }
  target/debug/palisade-bench apply --quick >/dev/null 2>&1 || { echo "palisade-bench apply --quick failed"; status=1; }
  target/debug/palisade-bench cluster --quick >/dev/null 2>&1 || { echo "palisade-bench cluster --quick failed"; status=1; }
  if ls /sys/fs/bpf/palisade-bench >/dev/null 2>&1; then echo "benchmark left pins behind"; status=1; fi
  echo "==> fuzz smoke (scripts/fuzz.sh --quick: every corpus input, then 20 000 executions per target)"
  bash scripts/fuzz.sh --quick || { echo "scripts/fuzz.sh --quick failed (crashing inputs in results/fuzz/)"; status=1; }
fi
echo
echo "palisade: $passed passed, $failed failed"
exit "$status"
