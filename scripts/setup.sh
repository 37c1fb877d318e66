#!/usr/bin/env bash
# Installs the Debian packages remus needs, only those missing. Idempotent; safe to run often.
# The one list of system packages lives here.
set -euo pipefail

# Every program the project runs outside its guests (code, tests, demo, benchmarks, scripts),
# with the Debian package that provides it. tests/tests/setup_provides.rs fails when the code
# runs a program that is neither here nor in a package every Debian system has (Priority:
# required) nor part of the fresh machine's toolchain (cargo, rustc, gcc, python3, git).
PROGRAMS=(
  "qemu-system-x86_64 qemu-system-x86"   # guests under TCG (QEMU 7.2 in bookworm)
  "qemu-img qemu-utils"                  # must match qemu-system-x86's version
  "qemu-io qemu-utils"
  "qemu-nbd qemu-utils"
  "busybox busybox-static"               # guest userland
  "cpio cpio"                            # building the guest initramfs
  "xz xz-utils"                          # compressed kernel modules for the guest
  "zstd zstd"
  "ip iproute2"
  "tc iproute2"
  "sysctl procps"                        # per-namespace settings in tests and the demo
  "iperf3 iperf3"                        # throughput tests and benchmarks
  "ping iputils-ping"                    # reachability checks in the netbuf tests
  "nbdinfo libnbd-bin"                   # real NBD clients
  "nbdcopy libnbd-bin"
  "nbdkit nbdkit"                        # NBD server to compare against
  "fio fio"                              # disk benchmarks
  "socat socat"                          # speaking the control protocol from a shell
  "ethtool ethtool"
  "mkfs.ext4 e2fsprogs"                  # the guest-disk test
  "e2fsck e2fsprogs"
  "debugfs e2fsprogs"
  "etcd etcd-server"                     # the witness that fences a partition (tests, demo)
  "etcdctl etcd-client"                  # the demo and tests check it and read a key's history
  "nft nftables"                         # one-way link cuts in the partition tests
  "protoc protobuf-compiler"             # the etcd-client crate generates its gRPC code
  "promtool prometheus"                  # checks the metrics endpoint's exposition
  "systemd-analyze systemd"              # verifies the systemd units (systemd is not PID 1 here)
  "ocf-tester resource-agents"           # validates the Pacemaker resource agent
  "xmllint libxml2-utils"                # ocf-tester validates the agent's meta-data with it
  "crm_attribute pacemaker-cli-utils"    # the agent sets promotion scores with it
  "crm_simulate pacemaker-cli-utils"     # Pacemaker's scheduler, offline, in the agent's tests
  "crm_verify pacemaker-cli-utils"       # checks the documented Pacemaker configuration
)

# Packages needed for building rather than for a program: the guest kernel, and the headers and
# libraries checkpointd's Xen driver builds against (bindgen needs libclang).
LIBRARIES=(
  linux-image-cloud-amd64
  libxen-dev
  libclang-dev
  libprotobuf-dev          # google/protobuf/*.proto, which etcd's .proto files import
)

PACKAGES=("${LIBRARIES[@]}")
for entry in "${PROGRAMS[@]}"; do
  pkg=${entry#* }
  [[ " ${PACKAGES[*]} " == *" $pkg "* ]] || PACKAGES+=("$pkg")
done

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
