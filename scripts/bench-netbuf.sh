#!/usr/bin/env bash
# netbuf benchmark: in one run on the same veth topology,
#   (a) the kernel bridge forwarding guest→client (the baseline, the competitor),
#   (b) netbuf pass-through (unprotected),
#   (c) netbuf with barrier + release every 25 ms (protected),
# TCP throughput (iperf3, guest→client), 64-byte frame rate, and netbuf's release latency
# (release command → first frame on the client's interface). Needs root and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/netbuf-topo.sh
BIN=${BIN:-target/release}
SECS=${SECS:-5}
P=nbb$$
CTL=/tmp/$P-netbuf.sock
trap 'topo_down; rm -f $CTL' EXIT INT TERM
topo_up "$P"

G="ip netns exec $P-guest"
C="ip netns exec $P-client"
H="ip netns exec $P-host"

iperf() {
  $C iperf3 -s -1 -B 10.77.0.2 >/dev/null 2>&1 &
  sleep 0.3
  $G iperf3 -c 10.77.0.2 -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
  wait
}

pps() {
  local before after sent
  before=$($C cat /sys/class/net/c0/statistics/rx_packets)
  sent=$($G "$BIN/framecheck" flood --if g0 --seconds "$SECS" --size 64)
  sleep 0.2
  after=$($C cat /sys/class/net/c0/statistics/rx_packets)
  python3 -c "print(f'{($after - $before) / $SECS / 1e6:.3f}')"
}

start_netbuf() {
  $H "$BIN/netbuf" run --guest-if gh --uplink-if hup --control "$CTL" --max-frames 200000 --max-bytes 268435456 2>/tmp/$P-netbuf.log &
  for _ in $(seq 100); do "$BIN/netbuf" ctl --control "$CTL" hello >/dev/null 2>&1 && return; sleep 0.05; done
  echo "netbuf did not start" >&2; cat /tmp/$P-netbuf.log >&2; exit 1
}

echo "# netbuf benchmark ($(date -u +%F), $(nproc) cores, ${SECS}s per measurement)"
topo_bridge
a_tcp=$(iperf); a_pps=$(pps)
topo_unbridge

start_netbuf
b_tcp=$(iperf); b_pps=$(pps)

"$BIN/nbbench" epochs --control "$CTL" --interval-ms 25 --seconds $((SECS + 1)) > /tmp/$P-epochs &
EP=$!
c_tcp=$(iperf)
wait $EP
"$BIN/nbbench" epochs --control "$CTL" --interval-ms 25 --seconds $((SECS + 1)) > /tmp/$P-epochs2 &
EP=$!
c_pps=$(pps)
wait $EP
epochs=$(cat /tmp/$P-epochs)

# (c') the same with TCP windows sized for the added delay: held output adds up to one epoch
# (25 ms) to every RTT, so a flow needs bandwidth x 25 ms of window; Linux's default 4-6 MiB
# caps that near 1-2 Gbit/s whatever the buffer does. Raise the guest's and client's limits.
for ns in guest client; do
  ip netns exec "$P-$ns" sysctl -qw net.ipv4.tcp_rmem="4096 131072 134217728" net.ipv4.tcp_wmem="4096 16384 134217728"
done
"$BIN/nbbench" epochs --control "$CTL" --interval-ms 25 --seconds $((SECS + 1)) > /tmp/$P-epochs3 &
EP=$!
d_tcp=$(iperf)
wait $EP

lat=$("$BIN/nbbench" latency --control "$CTL" --guest-ns "$P-guest" --guest-if g0 --client-ns "$P-client" --client-if c0 --iters 2000)
errors=$("$BIN/netbuf" ctl --control "$CTL" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["io_errors"])')

python3 - "$a_tcp" "$b_tcp" "$c_tcp" "$a_pps" "$b_pps" "$c_pps" "$lat" "$epochs" "$errors" "$d_tcp" <<'PY'
import json, sys
a, b, c, ap, bp, cp = map(float, sys.argv[1:7])
lat = json.loads(sys.argv[7]); epochs = int(sys.argv[8]); errors = int(sys.argv[9])
d = float(sys.argv[10])
print()
print("| path | TCP Gbit/s | ratio to bridge | 64-byte Mframes/s | ratio to bridge |")
print("|---|---|---|---|---|")
print(f"| (a) kernel bridge | {a:.2f} | 1.00 | {ap:.3f} | 1.00 |")
print(f"| (b) netbuf pass-through | {b:.2f} | {b/a:.2f} | {bp:.3f} | {bp/ap:.2f} |")
print(f"| (c) netbuf, epoch every 25 ms | {c:.2f} | {c/a:.2f} | {cp:.3f} | {cp/ap:.2f} |")
print(f"| (c') as (c), TCP windows sized for +25 ms RTT | {d:.2f} | {d/a:.2f} | | |")
print()
print(f"release latency (release command -> first frame on the client interface), {lat['iters']} releases: "
      f"p50 {lat['p50_us']:.1f} us, p99 {lat['p99_us']:.1f} us, max {lat['max_us']:.1f} us")
print(f"epochs turned over during (c) TCP: {epochs}; netbuf io_errors: {errors}")
print("64-byte rates are bounded by the single-threaded AF_PACKET sender (the same in every row).")
for name, ok in [("(b) >= 0.30x bridge TCP", b/a >= 0.30), ("(c) >= 0.25x bridge TCP, default windows", c/a >= 0.25),
                 ("(c') >= 0.25x bridge TCP, sized windows", d/a >= 0.25), ("release p99 <= 200 us", lat['p99_us'] <= 200)]:
    print(f"bar {name}: {'met' if ok else 'NOT met'}")
PY
