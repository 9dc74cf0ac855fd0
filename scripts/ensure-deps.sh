#!/usr/bin/env bash
# Installs the Debian packages the E2E tests and the demo need, when missing.
# Idempotent; runs `apt-get update` only when something must be installed (or when the
# package lists are too empty to resolve the guest kernel package). Needs root.
# Works on a fresh Debian 12 that has only node, npm, g++, python3 and make.
#
#   qemu-system-x86     qemu-system-x86_64 (TCG)
#   qemu-system-common  /usr/lib/qemu/virtiofsd (the C virtiofsd, QEMU 7.2) lives here
#   busybox-static      /bin/busybox for the guest initramfs
#   cpio                (handy for inspecting initramfs images; the harness writes its own)
#   libc6-dev gcc       static guest tools (gcc -static needs libc.a)
#   attr                getfattr/setfattr, used by the host-side checks
#   xz-utils zstd       decompress kernel modules if the kernel package ships them compressed
#   systemd-container   systemd-nspawn: the real-systemd test boots systemd as PID 1 in a container
#   libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
#                       a real libvirt 9.0 (libvirtd, virtlogd, virsh) for the libvirt E2E test
#   prometheus-node-exporter
#                       node_exporter's textfile collector reads our metrics.prom (operators' test)
#   ca-certificates     not needed; apt's own transport is used
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-deps.sh: must run as root (apt-get install)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# package -> a file it must provide
declare -A NEED=(
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [qemu-system-common]=/usr/lib/qemu/virtiofsd
  [busybox-static]=/bin/busybox
  [cpio]=/bin/cpio
  [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
  [gcc]=/usr/bin/gcc
  [attr]=/usr/bin/getfattr
  [xz-utils]=/usr/bin/xz
  [zstd]=/usr/bin/zstd
  [systemd-container]=/usr/bin/systemd-nspawn
  [libvirt-daemon-system]=/usr/sbin/libvirtd
  [libvirt-clients]=/usr/bin/virsh
  [libvirt-daemon-driver-qemu]=/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
  [prometheus-node-exporter]=/usr/bin/prometheus-node-exporter
)

installed() {
  [ "$(dpkg-query -W -f '${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for pkg in "${!NEED[@]}"; do
  if ! installed "$pkg" || [ ! -e "${NEED[$pkg]}" ]; then
    missing+=("$pkg")
  fi
done

# A dynamically linked busybox (package "busybox") would make a guest that cannot run it.
if [ -e /bin/busybox ] && ! installed busybox-static; then
  missing+=(busybox-static)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-deps.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The guest kernel comes from `apt-get download` of the package linux-image-cloud-amd64
# depends on (see test/e2e/guest-image.ts); that needs package lists.
if ! apt-cache depends linux-image-cloud-amd64 2>/dev/null | grep -q 'Depends:'; then
  echo "ensure-deps.sh: refreshing package lists (no linux-image-cloud-amd64)" >&2
  apt-get update -qq
fi

# Verify.
fail=0
for pkg in "${!NEED[@]}"; do
  if [ ! -e "${NEED[$pkg]}" ]; then
    echo "ensure-deps.sh: ${NEED[$pkg]} (from $pkg) is still missing" >&2
    fail=1
  fi
done
if ! /bin/busybox true; then
  echo "ensure-deps.sh: /bin/busybox does not run" >&2
  fail=1
fi
if ! /usr/lib/qemu/virtiofsd --version >/dev/null 2>&1 && ! /usr/lib/qemu/virtiofsd --help >/dev/null 2>&1; then
  echo "ensure-deps.sh: /usr/lib/qemu/virtiofsd does not run" >&2
  fail=1
fi
if ! apt-cache depends linux-image-cloud-amd64 2>/dev/null | grep -q 'Depends:'; then
  echo "ensure-deps.sh: apt cannot resolve linux-image-cloud-amd64" >&2
  fail=1
fi
exit $fail
