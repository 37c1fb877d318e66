#!/bin/sh
# The demo guest (runs as /remus/run inside the busybox initramfs). Two jobs whose state lives
# in the guest's memory and on its disk:
#  - a disk writer appends record i to the raw disk /dev/vda (512-byte sector i:
#    "REC <i, 8 digits> <i*7919 mod 1000003>") with an fsync each, then notes i in memory;
#  - a TCP service on 10.88.0.10:7000: each line in gets "<n> <w>" out, n a running counter
#    (the handler's memory), w the last record the writer has fsync'd.
# So every reply the client sees tells it something about the guest's memory and its disk.
# The line "hold" parks the writer (its reply comes once the writer is parked: the disk then
# stays as it is, so two replicas can be compared); "go" lets it go on.
ip link set eth0 up
ip addr add 10.88.0.10/24 dev eth0
echo -1 > /run/written
cat > /writer <<'W'
#!/bin/sh
i=0
while true; do
  while [ -e /run/hold ]; do
    [ -e /run/held ] || : > /run/held
    usleep 10000
  done
  rm -f /run/held
  if printf 'REC %08d %d\n' "$i" $(( (i * 7919) % 1000003 )) |
      dd of=/dev/vda bs=512 seek="$i" count=1 conv=notrunc,sync,fsync 2>/dev/null; then
    # rename(2) is atomic: the handler never reads a half-written number.
    echo "$i" > /run/written.new && mv /run/written.new /run/written
    i=$((i + 1))
  else
    echo "WRITER failed at $i"
    sleep 1
  fi
  usleep 20000
done
W
cat > /handler <<'H'
#!/bin/sh
n=0
while read -r line; do
  case "$line" in
    hold) : > /run/hold; while [ ! -e /run/held ]; do usleep 10000; done ;;
    go) rm -f /run/hold ;;
  esac
  n=$((n + 1)); echo "$n $(cat /run/written)"
done
H
chmod +x /writer /handler
/writer &
echo "SERVICE up"
while true; do nc -l -p 7000 -e /handler; done
