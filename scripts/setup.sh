#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for Palisade: packages, bpffs, build.
# Idempotent; run as root. Usage: scripts/setup.sh [--release]
# (--release also puts the binaries in /usr/local/bin for the demo and the
# benchmarks; to install Palisade on a node with its units, scripts/install.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs packages and loads BPF programs)" >&2
  exit 1
fi

PACKAGES=(gcc libc6-dev make pkg-config libelf-dev zlib1g-dev clang-19 llvm-19
  iproute2 iputils-ping util-linux procps iptables nftables iperf3
  dnsmasq-base dnsperf dnsutils etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl
  curl nginx-light nghttp2-client wrk haproxy kcat python3 python3-grpcio python3-kafka linux-perf
  systemd man-db jq prometheus containernetworking-plugins podman runc busybox-static libfaketime)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup.sh: no Rust toolchain (cargo) found; install rustup first" >&2
    exit 1
  fi
fi

# tansu: a Kafka-compatible broker (in memory) for the Kafka L7 tests; not in
# Debian, built from crates.io once (about 20 minutes on 2 cores).
if ! command -v tansu >/dev/null 2>&1; then
  echo "==> installing tansu (Kafka-compatible broker, crates.io)"
  cargo install tansu --version 0.6.0 --locked --features dynostore --quiet
fi

# cargo-fuzz: drives the libFuzzer targets in fuzz/ (scripts/fuzz.sh); the
# nightly-only sanitizer flags are enabled with RUSTC_BOOTSTRAP there.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi

# bpffs for pinned maps
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  echo "==> mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

echo "==> building ($([ "${1:-}" = --release ] && echo release || echo debug))"
if [ "${1:-}" = --release ]; then
  cargo build --release --workspace --bins --quiet
  # Put the operator's tools on PATH (the systemd unit expects them here).
  for b in palisade palisade-ctrl palisade-dnsproxy palisade-l7proxy palisade-ipcache-sync palisade-bench palisade-probe; do
    install -m 0755 "target/release/$b" /usr/local/bin/
  done
  echo "==> installed palisade, palisade-ctrl, palisade-dnsproxy, palisade-l7proxy, palisade-ipcache-sync, palisade-bench, palisade-probe in /usr/local/bin"
else
  cargo build --workspace --bins --quiet
fi
