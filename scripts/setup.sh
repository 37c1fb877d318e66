#!/usr/bin/env bash
# Installs the Debian packages remus needs, only those missing. Idempotent; safe to run often.
# The one list of system packages lives here.
set -euo pipefail

PACKAGES=(
  qemu-system-x86      # guests under TCG (QEMU 7.2 in bookworm)
  qemu-utils           # qemu-img, qemu-io, qemu-nbd: must match qemu-system-x86's version
  linux-image-cloud-amd64  # guest kernel (virtio, sch_plug, ifb modules)
  busybox-static       # guest userland
  cpio                 # building the guest initramfs
  iproute2             # ip, tc
  util-linux           # setpriv, unshare
  iperf3               # throughput tests and benchmarks
  iputils-ping         # ping: reachability checks in the netbuf tests
  libnbd-bin           # nbdinfo, nbdcopy, nbdsh
  nbdkit               # NBD server to compare against
  fio                  # disk benchmarks
  socat                # speaking the control protocol from a shell
  ethtool
  e2fsprogs            # mkfs.ext4 and e2fsck for the guest-disk test
  libxen-dev           # headers and libraries checkpointd's Xen driver builds against
  libclang-dev         # bindgen, which generates those bindings at build time
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${missing[*]}; run as root (apt-get install)" >&2
  exit 5
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
extra=()
if ! installed qemu-system-x86; then
  # Images may ship a newer qemu-utils from backports, which conflicts with bookworm's
  # qemu-system-x86 7.2: pin the QEMU family to one version (a downgrade of qemu-utils).
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  extra=(--allow-downgrades "qemu-utils=$v" "qemu-system-common=$v" "qemu-block-extra=$v")
  missing=("${missing[@]/qemu-utils/}")
fi
apt-get install -y -qq --no-install-recommends "${extra[@]}" ${missing[@]} >/tmp/remus-apt.log 2>&1 || {
  tail -20 /tmp/remus-apt.log >&2
  exit 1
}
echo "setup: done"
