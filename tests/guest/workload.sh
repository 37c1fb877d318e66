#!/bin/sh
# Runs inside the test guest: a CPU and memory workload. Each iteration writes 4 MiB of fresh
# random data to tmpfs (new page contents every time, so the pages really are dirty) and
# hashes it, then prints the guest's uptime so the host can count iterations.
while true; do
  dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null
  md5sum /tmp/w >/dev/null
  echo "ITER $(cut -d' ' -f1 /proc/uptime)"
done
