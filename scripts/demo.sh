#!/usr/bin/env bash
# make demo: the main job. Two simulated hosts (network namespaces), a real guest under QEMU
# (TCG) running a TCP counter service, protection by checkpointd + netbuf, a client holding one
# connection, a SIGKILL of everything on the primary, and failover to the backup. Everything it
# creates is removed on exit, also when interrupted.
#
#  [primary] QEMU ─tapP─ netbuf ─┐                  ┌─ brB ─ tapB (restored QEMU) [backup]
#            checkpointd ════════╪══ replication ═══╪═ checkpointd
#                                └── [lan] bridge ──┘
#                                        │
#                                   [client] one TCP connection, a request every 50 ms
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/debug}
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, TAP devices)" >&2; exit 5; }
P=rd$$
DIR=$(mktemp -d /tmp/remus-demo.XXXX)
MAC=52:54:00:12:34:56
START=$(date +%s%N)
say() { local now; now=$(date +%s%N); printf '\n\033[1m[%4d.%01ds] %s\033[0m\n' $(((now - START) / 1000000000)) $((((now - START) / 100000000) % 10)) "$*"; }
cleanup() {
  for ns in prim back cli lan; do
    for pid in $(ip netns pids "$P-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$P-$ns" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] && echo "demo: logs kept in $DIR" >&2 || rm -rf "$DIR"
  rm -f "/dev/shm/$P-ram" "/dev/shm/$P-bram"
}
trap cleanup EXIT INT TERM
ns() { ip netns exec "$P-$1" "${@:2}"; }

say "hosts: primary, backup, client and a LAN, as network namespaces"
for n in lan prim back cli; do
  ip netns add "$P-$n"; ns "$n" ip link set lo up
  ns "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ns lan ip link add br0 type bridge; ns lan ip link set dev br0 up
ip link add up_p netns "$P-prim" type veth peer name lp netns "$P-lan"
ip link add up_b netns "$P-back" type veth peer name lb netns "$P-lan"
ip link add c0 netns "$P-cli" type veth peer name lc netns "$P-lan"
ip link add rp netns "$P-prim" type veth peer name rb netns "$P-back"
for i in lp lb lc; do ns lan ip link set dev $i master br0; ns lan ip link set dev $i up; done
ns prim ip link set dev up_p up; ns back ip link set dev up_b up; ns cli ip link set dev c0 up
ns cli ip addr add 10.88.0.2/24 dev c0
ns prim ip addr add 10.99.0.1/24 dev rp; ns prim ip link set dev rp up
ns back ip addr add 10.99.0.2/24 dev rb; ns back ip link set dev rb up
ns prim ip tuntap add tapP mode tap; ns prim ip link set dev tapP up
ns back ip tuntap add tapB mode tap; ns back ip link add brB type bridge
for i in tapB up_b; do ns back ip link set dev $i master brB; ns back ip link set dev $i up; done
ns back ip link set dev brB up

say "guest: Debian's kernel + busybox, a TCP counter service on 10.88.0.10:7000"
scripts/guest-image.sh "$DIR/img" --run tests/guest/counter-service.sh >/dev/null
common() { # tap serial -> ARGS
  ARGS=(-accel tcg -m 128M -nodefaults -display none -no-reboot -machine pc
    -kernel "$DIR/img/vmlinuz" -initrd "$DIR/img/initramfs.cpio.gz" -append "console=ttyS0 quiet"
    -serial "file:$2" -netdev "tap,id=n0,ifname=$1,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$MAC")
}
common tapB "$DIR/backup-serial.log"
ns back "$BIN/checkpointd" backup --listen 10.99.0.2:7791 --ram-image "/dev/shm/$P-bram" \
  --state-dir "$DIR/b" --peer-timeout-ms 300 --control "$DIR/backup.sock" \
  -- qemu-system-x86_64 "${ARGS[@]}" 2>"$DIR/backup.log" &
# The primary's processes run outside this shell's job table, so killing them is quiet.
( ns prim "$BIN/netbuf" run --guest-if tapP --uplink-if up_p --control "$DIR/netbuf.sock" 2>"$DIR/netbuf.log" & )
common tapP "$DIR/primary-serial.log"
( ns prim qemu-system-x86_64 "${ARGS[@]}" \
  -object "memory-backend-file,id=remus-ram,size=128M,mem-path=/dev/shm/$P-ram,share=on" \
  -machine memory-backend=remus-ram -qmp "unix:$DIR/qmp.sock,server=on,wait=off" & )
for _ in $(seq 300); do grep -q "SERVICE up" "$DIR/primary-serial.log" 2>/dev/null && break; sleep 0.2; done
grep -q "SERVICE up" "$DIR/primary-serial.log" || { echo "demo: the guest did not boot" >&2; exit 1; }
say "guest booted on the primary; protection starts: a checkpoint every 100 ms, output held until acked"
( ns prim "$BIN/checkpointd" primary --qmp "$DIR/qmp.sock" --ram "/dev/shm/$P-ram" --backup 10.99.0.2:7791 \
  --interval-ms 100 --netbuf-control "$DIR/netbuf.sock" --compress --state-dir "$DIR/p" \
  --stats-log "$DIR/stats.jsonl" 2>"$DIR/primary.log" & )
acked() { grep -c acked "$DIR/stats.jsonl" 2>/dev/null || true; }
for _ in $(seq 300); do [ "$(acked)" -ge 3 ] 2>/dev/null && break; sleep 0.2; done
if ! [ "$(acked)" -ge 3 ] 2>/dev/null; then
  echo "demo: protection did not start; checkpointd logs:" >&2
  tail -5 "$DIR/primary.log" "$DIR/backup.log" >&2
  exit 1
fi

say "client connects and sends a request every 50 ms; each reply must be the previous + 1"
ns cli "$BIN/e2eclient" --addr 10.88.0.10:7000 --seconds 16 > "$DIR/client.log" &
CLIENT=$!
sleep 7
tail -2 "$DIR/client.log"
say "pulling the plug: SIGKILL of QEMU, checkpointd and netbuf on the primary"
for pid in $(ip netns pids "$P-prim"); do kill -9 "$pid" 2>/dev/null || true; done
KILL_MS=$(($(date +%s%N) / 1000000))
for _ in $(seq 400); do grep -q "VM restored" "$DIR/backup.log" 2>/dev/null && break; sleep 0.05; done
act=$(sed 's/\x1b\[[0-9;]*m//g' "$DIR/backup.log" | grep -o 'activation_ms=[0-9]*' | cut -d= -f2)
from=$(grep -o 'restoring the VM from checkpoint [0-9]*' "$DIR/backup.log" | grep -o '[0-9]*$')
say "backup detected the silence and restored the guest from checkpoint $from (restore took ${act} ms)"
wait "$CLIENT" && ok=1 || ok=0
grep -v unix_ms "$DIR/client.log" | tail -12
# Failover as the client saw it: detection (kill -> the backup's decision) and activation
# (decision -> the client's first reply after the kill).
"$BIN/remus" status --json --checkpointd "$DIR/backup.sock" > "$DIR/backup-status.json" || true
python3 - "$KILL_MS" "$DIR/backup-status.json" "$DIR/client.log" <<'PY' || true
import json, re, sys
kill = int(sys.argv[1])
st = json.load(open(sys.argv[2]))["checkpointd"]
first = [int(m.group(1)) for m in re.finditer(r"longest_gap_end_unix_ms=(\d+)", open(sys.argv[3]).read())]
dec, res = st["failover_decided_unix_ms"], st["restored_unix_ms"]
line = f"failover: detection {dec - kill} ms, restore {res - dec} ms"
if first:
    line += f", activation {first[0] - dec} ms, outage {first[0] - kill} ms"
print(line)
PY
if [ "$ok" = 1 ]; then
  say "the guest carried on from the backup: same TCP connection, no reply lost or out of sequence"
else
  say "FAILED: see above"; exit 1
fi
