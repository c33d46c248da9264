#!/usr/bin/env bash
# Installs Palisade on this node in Debian's places for locally built
# software, idempotently:
#   /usr/local/bin/                      palisade, palisade-ctrl, palisade-dnsproxy,
#                                        palisade-l7proxy, palisade-ipcache-sync
#   /usr/local/lib/systemd/system/       palisade-*.service
#   /usr/local/lib/cni/palisade-cni      the CNI plugin (docs/cni.md)
#   /etc/palisade/config                 commented settings (kept if present)
#   /etc/palisade/policies/              policies (kept)
#   /usr/local/share/doc/palisade/       README, docs/, runbooks/, examples/,
#                                        monitoring/ (Prometheus alerts, Grafana dashboard)
#   /usr/local/share/man/man{1,8}/       palisade(1), palisade-*(8)
#   /usr/local/share/bash-completion/completions/palisade, zsh and fish completions
# and lists what it wrote in /usr/local/share/palisade/installed-files, which
# --uninstall removes (config and policies stay unless --purge).
#
# Usage: scripts/install.sh [--root DIR] [--bin-dir DIR] [--enable]
#        scripts/install.sh --uninstall [--root DIR] [--remove-pins] [--purge]
#   --root DIR      install under DIR instead of / (packaging, tests)
#   --bin-dir DIR   take the binaries from DIR (default: build target/release)
#   --enable        systemctl enable --now palisade-ctrl, -dnsproxy, -l7proxy
#                   (when systemd runs; palisade-ipcache-sync is cluster mode:
#                   enable it yourself after setting etcd-endpoints)
#   --uninstall     stop the units, detach Palisade's programs from every
#                   interface (palisade-ctrl --teardown), remove what was installed
#   --remove-pins   with --uninstall: also remove the pinned maps (bpf-dir)
#   --purge         with --uninstall: also remove /etc/palisade and /var/lib/palisade
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=""
BIN_DIR=""
ENABLE=0
UNINSTALL=0
REMOVE_PINS=0
PURGE=0
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --root=*) ROOT="${1#--root=}"; shift ;;
    --bin-dir) BIN_DIR="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --bin-dir=*) BIN_DIR="${1#--bin-dir=}"; shift ;;
    --enable) ENABLE=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --remove-pins) REMOVE_PINS=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [ "$(id -u)" -ne 0 ] && [ -z "$ROOT" ]; then
  echo "install.sh: run as root (or give --root DIR)" >&2
  exit 1
fi
ROOT="${ROOT%/}"

DAEMONS=(palisade-ctrl palisade-dnsproxy palisade-l7proxy palisade-ipcache-sync)
BINS=(palisade "${DAEMONS[@]}")
UNIT_DIR="$ROOT/usr/local/lib/systemd/system"
MANIFEST="$ROOT/usr/local/share/palisade/installed-files"
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

if [ "$UNINSTALL" = 1 ]; then
  if systemd_running; then
    for d in palisade-ipcache-sync palisade-l7proxy palisade-dnsproxy palisade-ctrl; do
      systemctl disable --now "$d.service" 2>/dev/null || true
    done
  fi
  if [ -z "$ROOT" ] && [ -x /usr/local/bin/palisade-ctrl ]; then
    # Pods are unprotected from here on: take our programs off every
    # interface, and the proxy routing rules (docs/runbooks/remove.md).
    args=(--teardown)
    [ "$REMOVE_PINS" = 1 ] && args+=(--remove-pins)
    [ -f /etc/palisade/config ] && args+=(--config /etc/palisade/config)
    echo "==> palisade-ctrl ${args[*]}"
    /usr/local/bin/palisade-ctrl "${args[@]}"
  fi
  if [ -f "$MANIFEST" ]; then
    n=0
    while IFS= read -r f; do
      [ -n "$f" ] || continue
      rm -f "$ROOT$f"
      n=$((n + 1))
    done < "$MANIFEST"
    rm -f "$MANIFEST"
    rmdir "$ROOT/usr/local/share/palisade" "$ROOT/usr/local/share/doc/palisade/examples/policies" \
      "$ROOT/usr/local/share/doc/palisade/examples/cni" "$ROOT/usr/local/lib/cni" \
      "$ROOT/usr/local/share/doc/palisade/monitoring" "$ROOT/usr/local/share/doc/palisade/runbooks" \
      "$ROOT/usr/local/share/doc/palisade/examples" "$ROOT/usr/local/share/doc/palisade/docs" \
      "$ROOT/usr/local/share/doc/palisade" 2>/dev/null || true
    echo "==> removed $n installed files"
  else
    echo "==> nothing installed under ${ROOT:-/} (no $MANIFEST)"
  fi
  if [ "$PURGE" = 1 ]; then
    rm -rf "$ROOT/etc/palisade" "$ROOT/var/lib/palisade"
    echo "==> purged /etc/palisade and /var/lib/palisade"
  fi
  systemd_running && systemctl daemon-reload || true
  exit 0
fi

if [ -z "$BIN_DIR" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
  echo "==> building release binaries"
  cargo build --release --quiet -p palisade-ctrl -p palisade-dnsproxy -p palisade-l7proxy -p palisade-ipcache-sync -p palisade-cni
  BIN_DIR=target/release
fi
for b in "${BINS[@]}" palisade-cni; do
  [ -x "$BIN_DIR/$b" ] || { echo "install.sh: $BIN_DIR/$b is missing (build first, or give --bin-dir)" >&2; exit 1; }
done

mkdir -p "$(dirname "$MANIFEST")"
: > "$MANIFEST.new"
put() { # put MODE SRC DEST (DEST relative to the root)
  install -D -m "$1" "$2" "$ROOT$3"
  echo "$3" >> "$MANIFEST.new"
}
for b in "${BINS[@]}"; do
  put 0755 "$BIN_DIR/$b" "/usr/local/bin/$b"
done
# The CNI plugin where runtimes look for local plugins (podman's and
# CRI-O's default list has /usr/local/lib/cni; kubelet/containerd use
# /opt/cni/bin: link it there). No network config is installed: which
# network a runtime uses is the operator's choice (docs/cni.md).
put 0755 "$BIN_DIR/palisade-cni" /usr/local/lib/cni/palisade-cni
for d in "${DAEMONS[@]}"; do
  put 0644 "scripts/$d.service" "/usr/local/lib/systemd/system/$d.service"
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PALISADE_PRINT_MAN=1 "$BIN_DIR/palisade" > "$tmp/palisade.1"
put 0644 "$tmp/palisade.1" /usr/local/share/man/man1/palisade.1
for d in "${DAEMONS[@]}"; do
  PALISADE_PRINT_MAN=1 "$BIN_DIR/$d" > "$tmp/$d.8"
  put 0644 "$tmp/$d.8" "/usr/local/share/man/man8/$d.8"
done
"$BIN_DIR/palisade" completion bash > "$tmp/palisade.bash"
put 0644 "$tmp/palisade.bash" /usr/local/share/bash-completion/completions/palisade
"$BIN_DIR/palisade" completion zsh > "$tmp/_palisade"
put 0644 "$tmp/_palisade" /usr/local/share/zsh/site-functions/_palisade
"$BIN_DIR/palisade" completion fish > "$tmp/palisade.fish"
put 0644 "$tmp/palisade.fish" /usr/local/share/fish/vendor_completions.d/palisade.fish
put 0644 README.md /usr/local/share/doc/palisade/README.md
for f in docs/*.md; do
  put 0644 "$f" "/usr/local/share/doc/palisade/$(basename "$f")"
done
if [ -d docs/runbooks ]; then
  for f in docs/runbooks/*.md; do
    put 0644 "$f" "/usr/local/share/doc/palisade/runbooks/$(basename "$f")"
  done
fi
for f in monitoring/*; do
  put 0644 "$f" "/usr/local/share/doc/palisade/monitoring/$(basename "$f")"
done
for f in examples/policies/*.yaml; do
  put 0644 "$f" "/usr/local/share/doc/palisade/examples/policies/$(basename "$f")"
done
for f in examples/cni/*; do
  put 0644 "$f" "/usr/local/share/doc/palisade/examples/cni/$(basename "$f")"
done
# The operator's files: created once, never overwritten or listed for removal.
if [ ! -f "$ROOT/etc/palisade/config" ]; then
  install -D -m 0644 scripts/palisade.config "$ROOT/etc/palisade/config"
  echo "==> wrote /etc/palisade/config (standalone defaults; policies from /etc/palisade/policies)"
else
  echo "==> kept the existing /etc/palisade/config"
fi
mkdir -p "$ROOT/etc/palisade/policies"
# Files an earlier install wrote and this one did not: gone.
if [ -f "$MANIFEST" ]; then
  while IFS= read -r f; do
    grep -qxF "$f" "$MANIFEST.new" || rm -f "$ROOT$f"
  done < "$MANIFEST"
fi
mv "$MANIFEST.new" "$MANIFEST"
echo "==> installed $(wc -l < "$MANIFEST") files under ${ROOT:-/} (list: ${MANIFEST#"$ROOT"})"

if systemd_running; then
  systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    systemctl enable --now palisade-ctrl.service palisade-dnsproxy.service palisade-l7proxy.service
    systemctl --no-pager status palisade-ctrl.service | head -5 || true
  else
    echo "==> start with: systemctl enable --now palisade-ctrl palisade-dnsproxy palisade-l7proxy"
  fi
elif [ "$ENABLE" = 1 ]; then
  echo "install.sh: --enable: systemd is not running here; start the units' ExecStart lines by hand" >&2
fi
