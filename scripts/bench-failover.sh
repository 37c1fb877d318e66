#!/usr/bin/env bash
# Failover benchmark: runs the demo scenario (scripts/demo.sh) RUNS times and reports, as the
# client saw it, detection (SIGKILL of the primary -> the backup's decision; 300 ms timeout),
# restore (QEMU start + device-state load), activation (decision -> the client's first reply)
# and the total outage. The reference is the Remus paper's ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for i in $(seq "$RUNS"); do
  BIN=${BIN:-target/release} bash scripts/demo.sh 2>&1 | grep -E '^failover:' >> "$out" || { echo "run $i failed" >&2; exit 1; }
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict((k, int(v)) for k, v in re.findall(r"(\w+) (\d+) ms", l)) for l in open(sys.argv[1])]
print(f"# failover benchmark: {len(rows)} runs of scripts/demo.sh (TCG guest, 100 ms checkpoints, 300 ms detection timeout)")
print()
print("| run | detection ms | restore ms | activation ms | outage ms |")
print("|---|---|---|---|---|")
for i, r in enumerate(rows, 1):
    print(f"| {i} | {r['detection']} | {r['restore']} | {r['activation']} | {r['outage']} |")
act = max(r["activation"] for r in rows); out = max(r["outage"] for r in rows)
print()
print(f"worst activation {act} ms (bar 500 ms: {'met' if act <= 500 else 'NOT met'}), "
      f"worst outage {out} ms (bar 1000 ms: {'met' if out <= 1000 else 'NOT met'})")
PY
