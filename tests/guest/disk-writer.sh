#!/bin/sh
# Runs inside the test guest: an ext4 file system on a virtio-blk disk served over NBD by
# diskrep. Writes files, a random blob, syncs, unmounts cleanly.
mkdir -p /mnt
if ! mount -t ext4 /dev/vda /mnt; then echo "RESULT mount failed"; exit 1; fi
i=0
while [ $i -lt 200 ]; do echo "record $i" > /mnt/f$i; i=$((i + 1)); done
dd if=/dev/urandom of=/mnt/big bs=64k count=64 2>/dev/null
sync
echo "RESULT big $(md5sum /mnt/big | cut -d' ' -f1)"
echo "RESULT files $(ls /mnt | grep -c '^f')"
umount /mnt
echo "RESULT umount $?"
