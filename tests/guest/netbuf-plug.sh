#!/bin/sh
# Runs inside the test guest (kernel with sch_plug): netbuf's plug backend on a bridge port,
# driven exactly as on the host. Prints "RESULT <step> <value>" lines the host test asserts on.
IP=/usr/local/bin/ip
TC=/usr/local/bin/tc
NB=/usr/local/bin/netbuf
FC=/usr/local/bin/framecheck
SOCK=/tmp/netbuf.sock
say() { echo "RESULT $*"; }

$IP netns add g
$IP netns add c
for ns in g c; do
  $IP netns exec $ns sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'
done
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
$IP link add br0 type bridge
$IP link set dev br0 up
$IP link add g0 netns g type veth peer name gh
$IP link add c0 netns c type veth peer name ch
for i in gh ch; do $IP link set dev $i master br0; $IP link set dev $i up; done
$IP -n g link set dev g0 up
$IP -n c link set dev c0 up

$NB run --backend plug --guest-if gh --control $SOCK --max-bytes 400 2>/tmp/netbuf.log &
NBPID=$!
i=0
until $NB ctl --control $SOCK hello >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 100 ] && { say start failed; cat /tmp/netbuf.log; exit 1; }
  sleep 0.1
done
say hello "$($NB ctl --control $SOCK hello)"
say qdisc "$($TC qdisc show dev nb-gh | head -1 | cut -d' ' -f1-2)"

$IP netns exec c $FC capture --if c0 --from guest > /tmp/cap &
until grep -q ready /tmp/cap 2>/dev/null; do sleep 0.05; done
# Prints the frames captured since the last call (runs in $(...) subshells, so the count of
# lines already reported lives in a file).
echo 1 > /tmp/seen
frames() {
  sleep 0.5
  seen=$(cat /tmp/seen)
  total=$(wc -l < /tmp/cap)
  tail -n +$((seen + 1)) /tmp/cap | head -n $((total - seen)) | tr ' ' ':' | tr '\n' ',' | sed 's/,$//'
  echo $total > /tmp/seen
}
ctl() { $NB ctl --control $SOCK "$@"; }
send() { $IP netns exec g $FC send --if g0 --from guest "$@"; }

send ping:100
say unprotected "$(frames)"
ctl barrier 1 >/dev/null
send arp:1 ns6:2 ping:3 syn:4 vlan:5
say open "[$(frames)]"
ctl barrier 2 >/dev/null
send ping:6
say closed "[$(frames)]"
out=$(ctl barrier 3 2>&1); rc=$?
say depth "$out rc=$rc"
ctl release 1 >/dev/null
say release1 "$(frames)"
ctl barrier 3 >/dev/null
ctl release 2 >/dev/null
say release2 "$(frames)"
out=$(ctl release 3 2>&1); rc=$?
say order "$out rc=$rc"
# Overflow: 8 frames of 58 bytes against a 400-byte limit: 6 fit, 2 are tail-dropped.
ctl barrier 4 >/dev/null
ctl release 3 >/dev/null
send ping:11 ping:12 ping:13 ping:14 ping:15 ping:16 ping:17 ping:18
ctl barrier 5 >/dev/null
ctl release 4 >/dev/null
say overflow "$(frames)"
say drops "$(ctl stats --json | sed 's/.*"dropped_overflow_frames":\([0-9]*\).*/\1/')"
ctl release-all >/dev/null
send syn:7
say releaseall "$(frames)"
kill -TERM $NBPID
wait $NBPID
say exit "$?"
say teardown "ifb=$($IP link show nb-gh >/dev/null 2>&1 && echo present || echo gone) ingress=$($TC qdisc show dev gh | grep -c ingress)"
