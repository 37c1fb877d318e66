#!/usr/bin/env bash
# diskrep benchmark: the same image file, the same client (fio's nbd engine), in one run:
#   qemu-nbd, nbdkit's file plugin, diskrep alone, diskrep replicating to a local backup
#   (with barrier + commit every 25 ms, as checkpointd would).
# Rows: 4 KiB random writes at QD1 and QD32, 1 MiB sequential write and read (QD8).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SECS=${SECS:-5}
DIR=${DIR:-/var/tmp/remus-bench-$$}
mkdir -p "$DIR"
IMG=$DIR/disk.img
BIMG=$DIR/backup.img
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
rm -f "$IMG" "$BIMG"
fallocate -l 1G "$IMG"
fallocate -l 1G "$BIMG"
PORT=18809
# The replication links are authenticated (as in production): one key for both sides.
KEY=$DIR/replication.key
$BIN/remus keygen "$KEY" >/dev/null

wait_port() { for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/disk" >/dev/null 2>&1 && return; sleep 0.05; done; echo "server did not start" >&2; exit 1; }
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); rm -f $DIR/*.sock; }

# fio job -> "value unit"
fio_run() { # name rw bs depth
  fio --name="$1" --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/disk" --rw="$2" --bs="$3" --iodepth="$4" \
      --size=1G --time_based --runtime="$SECS" --output-format=json --randrepeat=1 --norandommap 2>/dev/null \
    | python3 -c '
import json,sys
t=sys.stdin.read()
j=json.loads(t[t.index("{"):])["jobs"][0]  # fio prints a banner line before the JSON
rw=sys.argv[1]
d=j["read"] if "read" in rw else j["write"]
print(d["iops"] if sys.argv[2]=="4k" else d["bw_bytes"]/2**20)' "$2" "$3"
}

rows() { # prints 4 numbers
  echo "$(fio_run rw4k1 randwrite 4k 1) $(fio_run rw4k32 randwrite 4k 32) $(fio_run sw1m write 1M 8) $(fio_run sr1m read 1M 8)"
}

declare -A R
qemu-nbd -f raw -x disk -p $PORT -b 127.0.0.1 --persistent --shared=8 "$IMG" & PIDS+=($!)
wait_port; R[qemu]=$(rows); stop_all

nbdkit -f -p $PORT -i 127.0.0.1 -e disk file "$IMG" & PIDS+=($!)
wait_port; R[nbdkit]=$(rows); stop_all

$BIN/diskrep primary --image "$IMG" --listen 127.0.0.1:$PORT --control $DIR/p.sock 2>/dev/null & PIDS+=($!)
wait_port; R[alone]=$(rows); stop_all

replicated() { # backup image path -> sets R[$2]
  $BIN/diskrep backup --key-file "$KEY" --image "$1" --repl-listen 127.0.0.1:18790 --listen 127.0.0.1:18810 --control $DIR/b.sock 2>/dev/null & PIDS+=($!)
  sleep 0.3
  $BIN/diskrep primary --image "$IMG" --listen 127.0.0.1:$PORT --control $DIR/p.sock --backup 127.0.0.1:18790 --key-file "$KEY" 2>/dev/null & PIDS+=($!)
  wait_port
  for _ in $(seq 600); do $BIN/diskrep ctl --control $DIR/p.sock status | grep -q "link=protected" && break; sleep 0.1; done
  $BIN/nbbench disk-epochs --primary $DIR/p.sock --backup $DIR/b.sock --interval-ms 25 --seconds $((SECS * 4 + 8)) > $DIR/epochs &
  local ep=$!
  R[$2]=$(rows)
  wait $ep || true
  E[$2]=$(cat $DIR/epochs 2>/dev/null || echo 0)
  S[$2]=$($BIN/diskrep ctl --control $DIR/p.sock status)
  stop_all
}
declare -A E S
# The backup's image on the same disk as the primary's (both hosts share one disk here), and
# on /dev/shm (as if the backup were another machine with its own disk).
replicated "$BIMG" repl
SHM=/dev/shm/remus-bench-$$.img
fallocate -l 1G "$SHM"
replicated "$SHM" shm
rm -f "$SHM"
epochs="${E[repl]} / ${E[shm]}"
pstat="same disk: $(echo "${S[repl]}" | tr ' ' '\n' | grep -E '^(stalls|protection_drops|committed_through)=' | tr '\n' ' '); shm: $(echo "${S[shm]}" | tr ' ' '\n' | grep -E '^(stalls|protection_drops|committed_through)=' | tr '\n' ' ')"

python3 - "${R[qemu]}" "${R[nbdkit]}" "${R[alone]}" "${R[repl]}" "$epochs" "$pstat" "$SECS" "${R[shm]}" <<'PY'
import sys
q, k, a, r = (list(map(float, s.split())) for s in sys.argv[1:5])
epochs, pstat, secs = sys.argv[5], sys.argv[6], sys.argv[7]
m = list(map(float, sys.argv[8].split()))
names = ["4 KiB randwrite QD1 (IOPS)", "4 KiB randwrite QD32 (IOPS)", "1 MiB seq write QD8 (MiB/s)", "1 MiB seq read QD8 (MiB/s)"]
print(f"# diskrep benchmark: fio nbd engine, 1 GiB preallocated image, {secs}s per cell")
print()
print("| workload | qemu-nbd | nbdkit file | diskrep alone | ratio | replicating, backup on same disk | ratio | replicating, backup on /dev/shm | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
ok_alone = ok_repl = ok_shm = True
for i, n in enumerate(names):
    ra, rr, rm = a[i] / q[i], r[i] / q[i], m[i] / q[i]
    ok_alone &= ra >= 1.0; ok_repl &= rr >= 0.8; ok_shm &= rm >= 0.8
    print(f"| {n} | {q[i]:.0f} | {k[i]:.0f} | {a[i]:.0f} | {ra:.2f} | {r[i]:.0f} | {rr:.2f} | {m[i]:.0f} | {rm:.2f} |")
print()
print(f"ratios are against qemu-nbd; replicating: barrier + commit (fdatasync on the backup) every 25 ms; epochs (same disk / shm): {epochs}")
print(f"primary after the replicated runs: {pstat}")
for name, ok in [("alone >= 1.0x qemu-nbd on every row", ok_alone), ("replicating (same disk) >= 0.8x", ok_repl), ("replicating (backup on shm) >= 0.8x", ok_shm)]:
    print(f"bar {name}: {'met' if ok else 'NOT met'}")
PY
