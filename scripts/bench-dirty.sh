#!/usr/bin/env bash
# Dirty-tracking benchmark: checkpoint pause against guest RAM size, per dirty tracker, one run.
# Every row's daemons are this checkout's release build; the machine's load is whatever it is.
# A TCG guest (Debian's cloud kernel, busybox) runs tests/guest/workload.sh (4 MiB of fresh
# random data to tmpfs per iteration) at 128 MiB, 512 MiB, 1 GiB and 2 GiB of RAM: unprotected,
# then protected at a target of 40 checkpoints/s (backup on loopback) with each tracker that
# runs here. Per row: achieved rate, pause p50/p99, dirty pages p50, workload iterations/s and
# slowdown against the unprotected run of the same size. Then the light workload
# (tests/guest/counter.sh) at 128 MiB and 2 GiB, and at 128 MiB with --ram-blocks main (the cost of carrying every
# RAM block in QEMU's migration stream), and soft-dirty (not in this host's kernel) against
# comparison inside a guest booted from Debian's 6.1 kernel (tests/src/bin/dirtyprobe.rs).
#
#   SECS=20 SIZES="128 512 1024 2048" TRACKERS="uffd compare" bash scripts/bench-dirty.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SECS=${SECS:-20}
SIZES=${SIZES:-128 512 1024 2048}
TRACKERS=${TRACKERS:-uffd compare}
RATE=${RATE:-40}
DIR=$(mktemp -d /tmp/remus-dirtybench.XXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_all; rm -rf "$DIR" /dev/shm/dirtybench-*' EXIT INT TERM
scripts/guest-image.sh "$DIR/work" --run tests/guest/workload.sh >/dev/null
# The replication links are authenticated (as in production): one key for both sides.
KEY=$DIR/replication.key
$BIN/remus keygen "$KEY" >/dev/null
scripts/guest-image.sh "$DIR/light" --run tests/guest/counter.sh >/dev/null
scripts/guest-image.sh "$DIR/soft" --bin "$BIN/dirtyprobe" --run tests/guest/softdirty.sh >/dev/null

# run_one IMAGE MIB TRACKER(none = unprotected) MARK [RAM_BLOCKS] -> prints MARKs/s; stats in
# $DIR/stats-$MIB-$TRACKER-IMAGE[-RAM_BLOCKS]
run_one() {
  local img=$1 mib=$2 tracker=$3 mark=$4 blocks=${5:-all} tag="$2-$3-$1" ram=/dev/shm/dirtybench-$2 port=$((19400 + RANDOM % 500))
  [ "$blocks" != all ] && tag="$tag-$blocks"
  local common=(-accel tcg -m "${mib}M" -nodefaults -display none -no-reboot -kernel "$DIR/$img/vmlinuz"
                -initrd "$DIR/$img/initramfs.cpio.gz" -append "console=ttyS0 quiet" -machine pc)
  rm -f "$ram" "$ram-b" "$DIR/serial-$tag" "$DIR/stats-$tag"
  local pre=()
  [ "$tracker" = uffd ] && pre=(env "LD_PRELOAD=$PWD/$BIN/libremus_uffd_shim.so")
  setsid "${pre[@]}" qemu-system-x86_64 "${common[@]}" -serial "file:$DIR/serial-$tag" \
    -object "memory-backend-file,id=remus-ram,size=${mib}M,mem-path=$ram,share=on" -machine memory-backend=remus-ram \
    -qmp "unix:$DIR/qmp-$tag,server=on,wait=off" & PIDS+=($!)
  until grep -q "$mark" "$DIR/serial-$tag" 2>/dev/null; do sleep 0.2; done
  if [ "$tracker" != none ]; then
    setsid $BIN/checkpointd backup --key-file "$KEY" --witness none --listen 127.0.0.1:$port --ram-image "$ram-b" --state-dir "$DIR/b-$tag" \
      --peer-timeout-ms 3000 -- qemu-system-x86_64 "${common[@]}" 2>/dev/null & PIDS+=($!)
    sleep 0.3
    setsid $BIN/checkpointd primary --key-file "$KEY" --witness none --qmp "$DIR/qmp-$tag" --ram "$ram" --backup 127.0.0.1:$port \
      --interval-ms $((1000 / RATE)) --peer-timeout-ms 3000 --state-dir "$DIR/p-$tag" \
      --stats-log "$DIR/stats-$tag" --dirty-tracker "$tracker" --ram-blocks "$blocks" 2>"$DIR/log-$tag" & PIDS+=($!)
    # Measure from the end of the first (full) checkpoint.
    until grep -q pause_us "$DIR/stats-$tag" 2>/dev/null; do
      kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$DIR/log-$tag" >&2; exit 1; }
      sleep 0.1
    done
    sleep 1
  fi
  local a b t0 t1
  a=$(grep -c "$mark" "$DIR/serial-$tag"); t0=$(date +%s.%N)
  sleep "$SECS"
  b=$(grep -c "$mark" "$DIR/serial-$tag"); t1=$(date +%s.%N)
  [ "$tracker" != none ] && { grep -h "dirty tracking" "$DIR/log-$tag" | head -1 >&2 || true; echo "$t0 $t1" > "$DIR/window-$tag"; }
  stop_all
  rm -f "$ram" "$ram-b"
  python3 -c "print(($b - $a) / ($t1 - $t0))"
}

declare -A IT
for m in $SIZES; do
  IT[$m-none]=$(run_one work "$m" none ITER)
  for t in $TRACKERS; do IT[$m-$t]=$(run_one work "$m" "$t" ITER); done
done
LIGHT_SIZES=${LIGHT_SIZES:-128 2048}
for m in $LIGHT_SIZES; do
  for t in $TRACKERS; do IT[light-$m-$t]=$(run_one light "$m" "$t" COUNT); done
done
# The cost of carrying every RAM block (QEMU's migration stream) against xen-save-devices-state.
IT[light-128-uffd-main]=$(run_one light 128 uffd COUNT main)
# Soft-dirty against comparison, same memory, same run, inside a 6.1 guest.
timeout 600 qemu-system-x86_64 -accel tcg -m 768M -nodefaults -display none -no-reboot -nographic \
  -kernel "$DIR/soft/vmlinuz" -initrd "$DIR/soft/initramfs.cpio.gz" -append "console=ttyS0 quiet" \
  -serial "file:$DIR/soft-console" -machine pc || true

python3 - "$DIR" "$SECS" "$RATE" "$SIZES" "$TRACKERS" "$LIGHT_SIZES" <<'PY' "$(for k in "${!IT[@]}"; do echo "$k=${IT[$k]}"; done)"
import json, sys
d, secs, rate, sizes, trackers, light, its = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(), sys.argv[5].split(), sys.argv[6].split(), sys.argv[7]
it = dict(l.split("=") for l in its.split())
q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")
def stats(tag):
    t0, t1 = map(float, open(f"{d}/window-{tag}").read().split())
    ck = [json.loads(l) for l in open(f"{d}/stats-{tag}") if "pause_us" in l]
    win = [c for c in ck if t0 * 1000 <= c["unix_ms"] <= t1 * 1000]
    return len(win) / (t1 - t0), [c["pause_us"] / 1e3 for c in win], [c["dirty_pages"] for c in win]
print(f"# dirty trackers: TCG guest, tests/guest/workload.sh, target {rate} checkpoints/s, {secs:.0f} s per row, backup on loopback")
print()
print("| RAM | tracker | achieved/s | pause p50 ms | pause p99 ms | dirty pages p50 | iterations/s | slowdown |")
print("|---|---|---|---|---|---|---|---|")
for m in sizes:
    base = float(it[f"{m}-none"])
    print(f"| {m} MiB | unprotected | - | - | - | - | {base:.2f} | - |")
    for t in trackers:
        r, p, dp = stats(f"{m}-{t}-work")
        i = float(it[f"{m}-{t}"])
        print(f"| {m} MiB | {t} | {r:.1f} | {q(p,.5):.2f} | {q(p,.99):.2f} | {q(dp,.5)} | {i:.2f} | {(1 - i / base) * 100:.0f}% |")
print()
print(f"light workload (tests/guest/counter.sh), target {rate}/s:")
print()
print("| RAM | tracker | achieved/s | pause p50 ms | pause p99 ms | dirty pages p50 |")
print("|---|---|---|---|---|---|")
rows = [(m, t, f"{m}-{t}-light") for m in light for t in trackers]
rows.append(("128", "uffd, --ram-blocks main", "128-uffd-light-main"))
for m, t, tag in rows:
    r, p, dp = stats(tag)
    print(f"| {m} MiB | {t} | {r:.1f} | {q(p,.5):.2f} | {q(p,.99):.2f} | {q(dp,.5)} |")
print()
soft = [l.strip() for l in open(f"{d}/soft-console", errors="replace") if l.startswith("RESULT ")]
print("soft-dirty inside a Debian 6.1 guest (768 MiB, TCG), dirtyprobe:")
for l in soft:
    print(f"    {l}")
PY
