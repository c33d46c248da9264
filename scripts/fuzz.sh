#!/usr/bin/env bash
# Runs Palisade's cargo-fuzz targets (fuzz/) and prints one row per target:
# executions, seconds, executions per second, crashes, corpus size.
#
# Usage: scripts/fuzz.sh [--quick | --execs N | --seconds S] [--keep] [target...]
#   --quick      every checked-in corpus input, then 20 000 new executions
#                per target (the test suite's run, about a minute)
#   --execs N    N executions per target (the issue's bar: 10 000 000)
#   --seconds S  stop each target after S seconds instead
#   --keep       merge inputs that found new coverage into fuzz/corpus/<t>
#                (commit them: the next run starts from there)
# No target named: all of them. Crashing inputs are written to
# results/fuzz/<target>-crash-*; the exit status is non-zero if any target
# crashed. The table is also written to results/fuzz/summary.tsv (or
# $FUZZ_SUMMARY: two runs at once, one per core, each with its own).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

execs=20000 seconds=0 keep=0 targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) execs=20000 ;;
    --execs) execs="${2:?--execs needs a number}"; shift ;;
    --seconds) seconds="${2:?--seconds needs a number}"; execs=0; shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; scripts/setup.sh installs it" >&2
  exit 1
fi
all=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^palisade-fuzz$' || true)
[ ${#targets[@]} -eq 0 ] && read -r -a targets <<<"$(echo $all)"
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$all" || { echo "fuzz.sh: no target $t (have: $(echo $all))" >&2; exit 2; }
done

# cargo-fuzz passes -Z flags; RUSTC_BOOTSTRAP lets the stable toolchain
# take them (the address sanitizer and coverage instrumentation work).
mkdir -p results/fuzz
echo "==> building the fuzz targets (address sanitizer, release)"
RUSTC_BOOTSTRAP=1 cargo fuzz build -O >/dev/null 2>results/fuzz-build.log || {
  tail -40 results/fuzz-build.log >&2; echo "fuzz.sh: building the targets failed" >&2; exit 1; }
bin=fuzz/target/x86_64-unknown-linux-gnu/release

summary=${FUZZ_SUMMARY:-results/fuzz/summary.tsv}
printf 'target\texecutions\tseconds\texec_per_s\tcrashes\tcorpus\n' >"$summary"
failed=0
printf '%-16s %12s %8s %10s %8s %7s\n' target executions seconds exec/s crashes corpus
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  work=$(mktemp -d)
  log=$(mktemp)
  limit=(-runs="$execs")
  [ "$seconds" != 0 ] && limit=(-max_total_time="$seconds")
  start=$(date +%s.%N)
  set +e
  # New inputs go to a scratch corpus; the checked-in one is only read.
  "$bin/$t" "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="results/fuzz/$t-" "$work" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  runs=${runs:-0}
  crashes=0
  if [ "$rc" != 0 ]; then
    crashes=1 failed=1
    echo "---- $t: libFuzzer exited $rc; its log:" >&2
    grep -E 'ERROR|panicked|SUMMARY|Test unit written|deadly signal' "$log" | head -20 >&2
  fi
  if [ "$keep" = 1 ] && [ "$rc" = 0 ]; then
    "$bin/$t" -merge=1 -rss_limit_mb=2048 "$corpus" "$work" >/dev/null 2>&1 || true
  fi
  n=$(find "$corpus" -type f | wc -l)
  rate=$(awk -v r="$runs" -v s="$secs" 'BEGIN {printf "%d", r / (s + 0.001)}')
  printf '%-16s %12s %8.0f %10s %8s %7s\n' "$t" "$runs" "$secs" "$rate" "$crashes" "$n"
  printf '%s\t%s\t%.0f\t%s\t%s\t%s\n' "$t" "$runs" "$secs" "$rate" "$crashes" "$n" >>"$summary"
  rm -rf "$work" "$log"
done
exit "$failed"
