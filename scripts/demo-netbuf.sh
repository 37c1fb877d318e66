#!/usr/bin/env bash
# netbuf on its own (make demo-netbuf): a "guest" namespace pings a "client" namespace
# through netbuf while epochs turn over; every reply is visibly held until its epoch is
# released, and an epoch that never commits is discarded.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/netbuf-topo.sh
BIN=${BIN:-target/debug}
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 5; }
P=demo$$
CTL=/tmp/$P-netbuf.sock
trap 'topo_down; rm -f $CTL' EXIT INT TERM
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { "$BIN/netbuf" ctl --control "$CTL" "$@"; }

say "three namespaces: guest (10.77.0.1) -- host [netbuf] -- client (10.77.0.2)"
topo_up "$P"
ip netns exec "$P-host" "$BIN/netbuf" run --guest-if gh --uplink-if hup --control "$CTL" 2>/tmp/$P-netbuf.log &
until ctl hello >/dev/null 2>&1; do sleep 0.05; done
ctl hello

say "unprotected: frames pass straight through"
ip netns exec "$P-guest" ping -c 3 -i 0.2 10.77.0.2 | tail -2

say "protected, one epoch every 100 ms: every frame the guest sends waits for its epoch's release"
"$BIN/nbbench" epochs --control "$CTL" --interval-ms 100 --seconds 3 >/dev/null &
EP=$!
sleep 0.2
ip netns exec "$P-guest" ping -c 10 -i 0.23 10.77.0.2 | grep -E "bytes from|rtt"
wait $EP
echo "(round trips grow by up to one epoch: that is the price of output commit)"

say "a checkpoint that never commits: barrier, the guest talks, the backup never acks"
last=$(ctl stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_barrier"] or 0)')
ctl barrier $((last + 1)) >/dev/null
ip netns exec "$P-guest" ping -c 3 -i 0.2 -W 1 10.77.0.2 | tail -2 || true
ctl stats | tr ' ' '\n' | grep -E "^(protected|open_epoch|held_frames)="
echo "discard (failover happened elsewhere; these frames must never be seen):"
ctl discard
ctl release-all >/dev/null

say "released (unprotected again)"
ip netns exec "$P-guest" ping -c 2 -i 0.2 10.77.0.2 | tail -1
ctl stats
say "done; namespaces removed"
