#!/bin/sh
# Runs inside a guest booted from Debian's 6.1 kernel (soft-dirty tracking, which the hosts'
# kernels lack): checkpointd's soft-dirty tracker on a writer process, then its cost against
# the comparing tracker on the same memory. Both print RESULT lines.
P=/usr/local/bin/dirtyprobe
$P exact --tracker soft-dirty --mib 32 --rounds 6 --pages 300 --file /tmp/dp-ram 2>&1
$P bench --tracker soft-dirty --mib 128 --rounds 8 --pages 256 --file /tmp/dp-ram 2>&1
