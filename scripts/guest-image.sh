#!/usr/bin/env bash
# Builds a small Linux guest from Debian packages: the cloud kernel, a busybox initramfs with
# the kernel modules listed below (and their dependencies), and any extra host binaries (with
# their shared libraries). At boot /init mounts the basics, loads the modules, runs /remus/run
# if present, and powers off.
#
#   scripts/guest-image.sh OUT_DIR [--bin PATH]... [--run SCRIPT] [--modules "m1 m2"]
#
# Produces OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz.
set -euo pipefail

out=${1:?usage: guest-image.sh OUT_DIR [--bin PATH]... [--run SCRIPT] [--modules LIST]}
shift
bins=()
run=""
# Virtio for disks and NICs (in the load order the guest needs), then what netbuf's kernel
# backend and the test topologies use.
modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover \
net_failover virtio_net virtio_blk veth bridge ifb sch_plug sch_ingress cls_u32 act_mirred"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bins+=("$2"); shift 2 ;;
    --run) run="$2"; shift 2 ;;
    --modules) modules="$2"; shift 2 ;;
    *) echo "guest-image: unknown argument $1" >&2; exit 2 ;;
  esac
done

kver=$(ls /lib/modules | grep -- '-cloud-amd64$' | sort -V | tail -1 || true)
if [ -z "$kver" ] || [ ! -f "/boot/vmlinuz-$kver" ]; then
  echo "guest-image: linux-image-cloud-amd64 is not installed (run make setup)" >&2
  exit 6
fi
[ -x /bin/busybox ] || { echo "guest-image: busybox-static is not installed (run make setup)" >&2; exit 6; }
kdir=/lib/modules/$kver

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,run,etc,lib/modules,remus,var}
cp /bin/busybox "$root/bin/busybox"

# Resolve module dependencies from modules.dep: each dependency before its user, once.
declare -A seen=()
order=()
add_module() {
  local path=$1
  [ -n "${seen[$path]:-}" ] && return
  seen[$path]=1
  local deps
  deps=$(awk -F': ' -v p="$path" '$1 == p { print $2 }' "$kdir/modules.dep")
  local d
  # modules.dep lists deps with the most basic last.
  for d in $(echo "$deps" | tr ' ' '\n' | tac); do add_module "$d"; done
  order+=("$path")
}
for m in $modules; do
  p=$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\.xz|\.zst|\.gz)?$/, "", n); if (n == m) { print $1; exit } }' "$kdir/modules.dep")
  if [ -z "$p" ]; then
    grep -qw "$m" "$kdir/modules.builtin" 2>/dev/null && continue
    echo "guest-image: module $m not found for $kver" >&2
    exit 6
  fi
  add_module "$p"
done
: > "$root/etc/modules.order"
for p in "${order[@]}"; do
  name=$(basename "$p")
  case "$name" in
    *.xz) xz -dc "$kdir/$p" > "$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
    *.zst) zstd -qdc "$kdir/$p" > "$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
    *) cp "$kdir/$p" "$root/lib/modules/$name" ;;
  esac
  echo "$name" >> "$root/etc/modules.order"
done

# Extra binaries go to /usr/local/bin/NAME (not their host path: the guest mounts a tmpfs on
# /tmp, which would hide a binary built under /tmp); their shared libraries keep their paths.
# Busybox sh prefers its own applets over PATH, so guest scripts call these by full path.
copy_with_libs() {
  local f=$1
  cp -L "$f" "$root/usr/local/bin/$(basename "$f")"
  local lib
  for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}
mkdir -p "$root/usr/local/bin"
for b in "${bins[@]}"; do copy_with_libs "$b"; done
[ -n "$run" ] && install -m 0755 "$run" "$root/remus/run"

cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
# Extra host binaries (iproute2 ip, ...) win over busybox applets of the same name.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m || echo "init: insmod $m failed"; done
ip link set lo up
echo "remus-guest: up"
if [ -x /remus/run ]; then /remus/run; echo "remus-guest: run exited $?"; fi
poweroff -f
INIT
chmod 0755 "$root/init"

mkdir -p "$out"
cp "/boot/vmlinuz-$kver" "$out/vmlinuz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz"
echo "guest-image: $out (kernel $kver, ${#order[@]} modules, ${#bins[@]} extra binaries)"
