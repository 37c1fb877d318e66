#!/bin/sh
# Runs inside the test guest: a counter kept in the guest's memory, printed every 50 ms. After a
# failover it must continue from the last committed checkpoint.
i=0
while true; do i=$((i + 1)); echo "COUNT $i"; sleep 0.05; done
