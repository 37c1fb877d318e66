# Sourced by the netbuf demo and benchmark: three namespaces and two veth pairs.
#
#   $P-guest: g0 10.77.0.1  ── veth ──  $P-host: gh  [netbuf or bridge]  hup ── veth ── $P-client: c0 10.77.0.2
#
# topo_up creates them, topo_down removes them and every process inside (call it from a trap).

topo_up() {
  P=$1
  for ns in guest host client; do
    ip netns add "$P-$ns"
    ip -n "$P-$ns" link set lo up
    ip netns exec "$P-$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  ip link add g0 netns "$P-guest" type veth peer name gh netns "$P-host"
  ip link add hup netns "$P-host" type veth peer name c0 netns "$P-client"
  ip -n "$P-guest" link set dev g0 up
  ip -n "$P-host" link set dev gh up
  ip -n "$P-host" link set dev hup up
  ip -n "$P-client" link set dev c0 up
  ip -n "$P-guest" addr add 10.77.0.1/24 dev g0
  ip -n "$P-client" addr add 10.77.0.2/24 dev c0
}

# Joins gh and hup with a Linux bridge (the kernel-forwarding baseline).
topo_bridge() {
  ip -n "$P-host" link add br0 type bridge
  ip -n "$P-host" link set dev gh master br0
  ip -n "$P-host" link set dev hup master br0
  ip -n "$P-host" link set dev br0 up
}

topo_unbridge() {
  ip -n "$P-host" link del br0 2>/dev/null || true
}

topo_down() {
  local ns pid
  for ns in guest host client; do
    for pid in $(ip netns pids "$P-$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$P-$ns" 2>/dev/null || true
  done
}
