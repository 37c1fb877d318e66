#!/usr/bin/env bash
# Failover benchmark: `remus demo` (release build) crashes the primary host ROUNDS times at
# random moments and reports, as the client saw it, detection (crash -> the backup's decision;
# 300 ms timeout), restore (QEMU start + device-state load), activation (decision -> the
# client's first reply) and the total outage. The reference is the Remus paper's ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
BIN=${BIN:-target/release}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$BIN/remus" demo --rounds "$ROUNDS" --json > "$out" 2> >(grep -E 'round [0-9]+: (OK|FAILED)|BROKEN' >&2) ||
  { echo "bench-failover: a round failed" >&2; exit 1; }
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"# failover benchmark: {len(rows)} rounds of remus demo (TCG guest, 100 ms checkpoints, "
      "300 ms detection timeout, crash 2-6 s after the client connects)")
print()
print("| round | detection ms | restore ms | activation ms | outage ms | longest gap ms | replies | disk records |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['round']} | {r['detection_ms']} | {r['restore_ms']} | {r['activation_ms']} | "
          f"{r['outage_ms']} | {r['longest_gap_ms']} | {r['replies']} | {r['disk_records']} |")
act = max(r["activation_ms"] for r in rows); out = max(r["outage_ms"] for r in rows)
print()
print(f"worst activation {act} ms (bar 500 ms: {'met' if act <= 500 else 'NOT met'}), "
      f"worst outage {out} ms (bar 1000 ms: {'met' if out <= 1000 else 'NOT met'})")
PY
