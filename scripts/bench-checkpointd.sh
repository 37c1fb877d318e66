#!/usr/bin/env bash
# checkpointd benchmark: a 128 MiB TCG guest running a CPU+memory workload, unprotected and then
# protected at 10, 20 and 40 checkpoints per second (backup on loopback), in one run.
# Per rate: checkpoints achieved, pause p50/p99, dirty pages, bytes and ship time per
# checkpoint, ack latency, and the workload's slowdown against the unprotected run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SECS=${SECS:-20}
DIR=$(mktemp -d /tmp/remus-ckbench.XXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_all; rm -rf "$DIR" /dev/shm/ckbench-*' EXIT INT TERM
scripts/guest-image.sh "$DIR/img" --run tests/guest/workload.sh >/dev/null
# The replication links are authenticated (as in production): one key for both sides.
KEY=$DIR/replication.key
$BIN/remus keygen "$KEY" >/dev/null
COMMON=(-accel tcg -m 128M -nodefaults -display none -no-reboot -kernel "$DIR/img/vmlinuz"
        -initrd "$DIR/img/initramfs.cpio.gz" -append "console=ttyS0 quiet" -machine pc)

run_one() { # rate (0 = unprotected) [--compress] -> prints "iters/s", stats in $DIR/stats-$rate$2
  local rate=$1 extra=${2:-} ram=/dev/shm/ckbench-$1 port=$((19000 + $1))
  rm -f "$ram" "$DIR/serial-$rate" "$DIR/stats-$rate$extra"
  setsid qemu-system-x86_64 "${COMMON[@]}" -serial "file:$DIR/serial-$rate" \
    -object "memory-backend-file,id=remus-ram,size=128M,mem-path=$ram,share=on" -machine memory-backend=remus-ram \
    -qmp "unix:$DIR/qmp-$rate,server=on,wait=off" & PIDS+=($!)
  until grep -q ITER "$DIR/serial-$rate" 2>/dev/null; do sleep 0.2; done
  if [ "$rate" -gt 0 ]; then
    setsid $BIN/checkpointd backup --key-file "$KEY" --listen 127.0.0.1:$port --ram-image "$ram-b" --state-dir "$DIR/b-$rate" \
      --peer-timeout-ms 2000 --witness none -- qemu-system-x86_64 "${COMMON[@]}" 2>/dev/null & PIDS+=($!)
    sleep 0.3
    setsid $BIN/checkpointd primary --key-file "$KEY" --qmp "$DIR/qmp-$rate" --ram "$ram" --backup 127.0.0.1:$port \
      --interval-ms $((1000 / rate)) --peer-timeout-ms 2000 --witness none --state-dir "$DIR/p-$rate" --stats-log "$DIR/stats-$rate$extra" $extra 2>/dev/null & PIDS+=($!)
    sleep 3   # the initial full copy
  fi
  local a b
  a=$(grep -c ITER "$DIR/serial-$rate")
  sleep "$SECS"
  b=$(grep -c ITER "$DIR/serial-$rate")
  stop_all
  rm -f "$ram" "$ram-b"
  python3 -c "print(($b - $a) / $SECS)"
}

declare -A IT
for r in 0 10 20 40; do IT[$r]=$(run_one $r); done
IT[z]=$(run_one 20 --compress)

python3 - "$DIR" "$SECS" "${IT[0]}" "${IT[10]}" "${IT[20]}" "${IT[40]}" "${IT[z]}" <<'PY'
import json, sys, statistics
d, secs = sys.argv[1], float(sys.argv[2])
base = float(sys.argv[3])
rows = [(10, "", float(sys.argv[4])), (20, "", float(sys.argv[5])), (40, "", float(sys.argv[6])), (20, "--compress", float(sys.argv[7]))]
print(f"# checkpointd benchmark: 128 MiB TCG guest, CPU+memory workload, {secs:.0f}s per rate, backup on loopback")
print()
print(f"unprotected: {base:.2f} workload iterations/s")
print()
print("| target rate | achieved/s | pause p50 ms | pause p99 ms | dirty pages p50 | MiB/ckpt p50 | ship p50 ms | ack p50 ms | iterations/s | slowdown |")
print("|---|---|---|---|---|---|---|---|---|---|")
for rate, extra, it in rows:
    ck, acks = [], []
    for line in open(f"{d}/stats-{rate}{extra}"):
        v = json.loads(line)
        (acks if "acked" in v else ck).append(v)
    ck = ck[1:]  # the first checkpoint is the initial full copy
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")
    achieved = len(ck) / (secs + 3)
    label = f"{rate}/s" + (" compressed" if extra else "")
    if extra:
        raw = sum(c["raw_bytes"] for c in ck); wire = sum(c["bytes"] for c in ck)
        cpu = sum(c["compress_us"] for c in ck)
        zline = (f"compression at 20/s: {raw/2**20:.1f} MiB of pages and device state shipped as {wire/2**20:.1f} MiB "
                 f"({raw/max(wire,1):.2f}x), {cpu/1e3:.0f} ms of one core over {len(ck)} checkpoints "
                 f"({cpu/max(len(ck),1)/1e3:.2f} ms each, after the pause)")
    print(f"| {label} | {achieved:.1f} | {q([c['pause_us'] for c in ck], .5)/1e3:.1f} | {q([c['pause_us'] for c in ck], .99)/1e3:.1f} "
          f"| {q([c['dirty_pages'] for c in ck], .5)} | {q([c['bytes'] for c in ck], .5)/2**20:.2f} | {q([c['ship_us'] for c in ck], .5)/1e3:.1f} "
          f"| {q([a['ack_us'] for a in acks], .5)/1e3:.1f} | {it:.2f} | {(1 - it / base) * 100:.0f}% |")
print()
print(zline)
PY
