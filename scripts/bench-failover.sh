#!/usr/bin/env bash
# Failover benchmark: `remus demo` (release build) crashes the primary host ROUNDS times at
# random moments and reports, as the client saw it, detection (crash -> the backup's decision:
# 300 ms timeout, then with a witness the 150 ms grace and the claim at etcd), restore (QEMU
# start + device-state load), activation (decision -> the client's first reply) and the total
# outage. Run twice in one go: fenced through the etcd witness (the default) and without it
# (--no-witness), so the cost of fencing is the ratio of the two. The reference is the Remus
# paper's ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
BIN=${BIN:-target/release}
with=$(mktemp)
without=$(mktemp)
trap 'rm -f "$with" "$without"' EXIT
for mode in with without; do
  flags=()
  [ "$mode" = without ] && flags=(--no-witness)
  out=$with
  [ "$mode" = without ] && out=$without
  "$BIN/remus" demo --rounds "$ROUNDS" --json "${flags[@]}" > "$out" \
    2> >(grep -E 'round [0-9]+: (OK|FAILED)|BROKEN|FALSE' >&2) ||
    { echo "bench-failover: a round failed ($mode witness)" >&2; exit 1; }
done
python3 - "$with" "$without" <<'PY'
import json, sys
def rows(path):
    return [json.loads(l) for l in open(path)]
def table(title, rs):
    print(f"## {title}: {len(rs)} rounds of remus demo (TCG guest, 100 ms checkpoints, "
          "300 ms detection timeout, crash 2-6 s after the client connects)")
    print()
    print("| round | detection ms | restore ms | activation ms | outage ms | longest gap ms | replies | disk records |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rs:
        print(f"| {r['round']} | {r['detection_ms']} | {r['restore_ms']} | {r['activation_ms']} | "
              f"{r['outage_ms']} | {r['longest_gap_ms']} | {r['replies']} | {r['disk_records']} |")
    act = max(r["activation_ms"] for r in rs); out = max(r["outage_ms"] for r in rs)
    print()
    print(f"worst activation {act} ms (bar 500 ms: {'met' if act <= 500 else 'NOT met'}), "
          f"worst outage {out} ms (bar 1000 ms: {'met' if out <= 1000 else 'NOT met'})")
    print()
    return sum(r["outage_ms"] for r in rs) / len(rs), out
w, wo = rows(sys.argv[1]), rows(sys.argv[2])
mean_w, worst_w = table("with the etcd witness (fenced)", w)
mean_wo, worst_wo = table("without a witness (--no-witness: a partition would yield two copies)", wo)
print(f"outage with/without the witness: mean {mean_w:.0f}/{mean_wo:.0f} ms = {mean_w / mean_wo:.2f}x, "
      f"worst {worst_w}/{worst_wo} ms")
PY
