#!/usr/bin/env bash
# The throughput cost of authenticating (HMAC-SHA256) and of encrypting (ChaCha20-Poly1305)
# the two replication streams, against no authentication (--insecure-no-auth), in one run,
# the three modes interleaved round by round (ROUNDS, default 3; the median is reported):
#   checkpoint stream: a hand-driven primary (ckstream) sends checkpoints of every page of a
#     MIB MiB RAM to a real `checkpointd backup` and waits for each ACK (staged, applied,
#     acknowledged); MiB/s of checkpoint data.
#   disk stream: fio (nbd engine) writes 1 MiB blocks sequentially at QD8 to a replicating
#     diskrep primary, the backup's image on /dev/shm, barrier + commit every 25 ms; MiB/s.
# Both ends on loopback: the link is not the limit, so the cost shows in full.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SECS=${SECS:-5}
MIB=${MIB:-256}
CKPTS=${CKPTS:-6}
ROUNDS=${ROUNDS:-3}
DIR=$(mktemp -d /tmp/remus-authbench.XXXX)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); rm -f "$DIR"/*.sock; }
trap 'stop_all; rm -rf "$DIR" /dev/shm/remus-authbench-*' EXIT INT TERM
KEY=$DIR/replication.key
$BIN/remus keygen "$KEY" >/dev/null
declare -A ARGS=([none]="--insecure-no-auth" [mac]="--key-file $KEY" [enc]="--key-file $KEY --encrypt")
MODES="none mac enc"

ck_run() { # mode -> MiB/s
  local port=$((19700 + RANDOM % 200)) ram=/dev/shm/remus-authbench-ram
  # shellcheck disable=SC2086
  setsid $BIN/checkpointd backup --listen 127.0.0.1:$port ${ARGS[$1]} --witness none --ram-image "$ram" \
    --state-dir "$DIR/st" --peer-timeout-ms 10000 -- true 2>"$DIR/ck-$1.log" & PIDS+=($!)
  # shellcheck disable=SC2086
  $BIN/ckstream --addr 127.0.0.1:$port ${ARGS[$1]} --mib "$MIB" --checkpoints "$CKPTS" 2>>"$DIR/ck-$1.log" | cut -d' ' -f1
  stop_all
  rm -f "$ram"
}

NBD=19809
disk_run() { # mode -> MiB/s
  local img=$DIR/disk.img bimg=/dev/shm/remus-authbench-disk repl=$((19900 + RANDOM % 90))
  fallocate -l 1G "$img"; fallocate -l 1G "$bimg"
  # shellcheck disable=SC2086
  $BIN/diskrep backup ${ARGS[$1]} --image "$bimg" --repl-listen 127.0.0.1:$repl --listen 127.0.0.1:19810 \
    --control "$DIR/b.sock" 2>"$DIR/d-$1.log" & PIDS+=($!)
  sleep 0.3
  # shellcheck disable=SC2086
  $BIN/diskrep primary ${ARGS[$1]} --image "$img" --listen 127.0.0.1:$NBD --control "$DIR/p.sock" \
    --backup 127.0.0.1:$repl 2>>"$DIR/d-$1.log" & PIDS+=($!)
  for _ in $(seq 600); do $BIN/diskrep ctl --control "$DIR/p.sock" status 2>/dev/null | grep -q "link=protected" && break; sleep 0.1; done
  $BIN/nbbench disk-epochs --primary "$DIR/p.sock" --backup "$DIR/b.sock" --interval-ms 25 --seconds $((SECS + 4)) >/dev/null &
  local ep=$!
  fio --name=sw --ioengine=nbd --uri="nbd://127.0.0.1:$NBD/disk" --rw=write --bs=1M --iodepth=8 \
      --size=1G --time_based --runtime="$SECS" --output-format=json 2>/dev/null \
    | python3 -c 'import json,sys; t=sys.stdin.read(); print(json.loads(t[t.index("{"):])["jobs"][0]["write"]["bw_bytes"]/2**20)'
  wait $ep || true
  local drops
  drops=$($BIN/diskrep ctl --control "$DIR/p.sock" status | tr ' ' '\n' | grep '^protection_drops=' || true)
  [ "$drops" = "protection_drops=0" ] || echo "warning: $1: $drops" >&2
  stop_all
  rm -f "$img" "$bimg"
}

declare -A CK DK
for r in $(seq "$ROUNDS"); do
  for m in $MODES; do
    CK[$m]="${CK[$m]:-} $(ck_run $m)"
    DK[$m]="${DK[$m]:-} $(disk_run $m)"
  done
done

python3 - "$MIB" "$CKPTS" "$SECS" "$ROUNDS" "${CK[none]}" "${CK[mac]}" "${CK[enc]}" "${DK[none]}" "${DK[mac]}" "${DK[enc]}" <<'PY'
import statistics, sys
mib, ckpts, secs, rounds = sys.argv[1:5]
ck = [list(map(float, s.split())) for s in sys.argv[5:8]]
dk = [list(map(float, s.split())) for s in sys.argv[8:11]]
print(f"# authentication cost: loopback, {rounds} rounds interleaved, median (all runs in brackets)")
print()
print("| stream | none (--insecure-no-auth) MiB/s | HMAC-SHA256 MiB/s | ratio | ChaCha20-Poly1305 MiB/s | ratio |")
print("|---|---|---|---|---|---|")
for name, rows in [(f"checkpoint ({mib} MiB of pages per checkpoint, {ckpts} timed, to ACK)", ck),
                   (f"disk (fio 1 MiB seq write QD8, {secs}s, commit every 25 ms)", dk)]:
    med = [statistics.median(r) for r in rows]
    fmt = lambda r: f"{statistics.median(r):.0f} [{', '.join(f'{x:.0f}' for x in r)}]"
    print(f"| {name} | {fmt(rows[0])} | {fmt(rows[1])} | {med[1]/med[0]:.2f} | {fmt(rows[2])} | {med[2]/med[0]:.2f} |")
PY
