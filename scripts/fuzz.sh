#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser that reads outside bytes (`make fuzz`): libFuzzer
# on the stable toolchain. The fuzz/ crate is built with LLVM's sanitizer-coverage passes
# (edge counters, PC table, comparison tracing) for the target only (not build scripts), so
# libFuzzer sees which code each input reaches and keeps the inputs that reach new code.
# FUZZ_SECS seconds per parser (default 60); the corpus persists in fuzz/corpus/TARGET
# (seeded with valid inputs) and crashes land in fuzz/artifacts/. Prints, per parser, the
# inputs executed and how the corpus grew.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECS:-60}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=3 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
cargo build --release --manifest-path fuzz/Cargo.toml --target "$TRIPLE"
unset RUSTFLAGS
cargo build -p remus-tests --bin fuzz_seeds
BIN=fuzz/target/$TRIPLE/release/remus-fuzz
mkdir -p fuzz/corpus fuzz/artifacts
printf '| parser | inputs run | exec/s | corpus before | corpus after | new coverage (edges) |\n|---|---|---|---|---|---|\n'
status=0
for t in $(target/debug/fuzz_seeds fuzz/corpus); do
  before=$(ls fuzz/corpus/"$t" | wc -l)
  log=fuzz/artifacts/"$t".log
  if ! FUZZ_TARGET=$t "$BIN" fuzz/corpus/"$t" -max_total_time="$SECS" -print_final_stats=1 \
       -artifact_prefix=fuzz/artifacts/"$t"- -rss_limit_mb=2048 -max_len=70000 >"$log" 2>&1; then
    echo "$t: CRASH (see $log and fuzz/artifacts/$t-*)" >&2
    status=1
  fi
  after=$(ls fuzz/corpus/"$t" | wc -l)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | head -1 | cut -d' ' -f2)..$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "| $t | ${runs:-?} | ${eps:-?} | $before | $after | $cov |"
done
exit $status
