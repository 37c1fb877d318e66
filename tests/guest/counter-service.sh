#!/bin/sh
# Runs inside the test guest: a TCP service on port 7000 whose every reply depends on the
# guest's memory (a running counter kept by the handler process). One connection, many
# requests: each line in gets the next number out.
ip link set eth0 up
ip addr add 10.88.0.10/24 dev eth0
cat > /handler <<'H'
#!/bin/sh
n=0
while read -r line; do n=$((n + 1)); echo "$n"; done
H
chmod +x /handler
echo "SERVICE up"
while true; do nc -l -p 7000 -e /handler; done
