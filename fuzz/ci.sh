#!/usr/bin/env bash
# Bounded coverage-guided fuzzing, for CI and by hand: installs what it needs on a fresh machine,
# checks the fuzz crate (format, lints, seed corpus), then runs each target for FUZZ_SECONDS
# (default 60) and prints its executions and executions per second. Fails on any crash, and
# prints the crashing input as hex.
#
#   bash fuzz/ci.sh                                   # CI: 60 s of `decode`
#   FUZZ_SECONDS=3600 bash fuzz/ci.sh                 # an hour
#   FUZZ_SANITIZER=address FUZZ_SECONDS=3600 bash fuzz/ci.sh   # an hour under ASan
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-decode broker}
sanitizer=${FUZZ_SANITIZER:-none}
cargo_fuzz_version=0.13.2

# libfuzzer-sys builds libFuzzer from its bundled C++ source.
if ! command -v c++ >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
fi
command -v cargo-fuzz >/dev/null || cargo install --locked "cargo-fuzz@${cargo_fuzz_version}"

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked

# cargo-fuzz passes -Z flags (sanitizer coverage); RUSTC_BOOTSTRAP lets the stable toolchain take
# them. Nothing else is built this way.
export RUSTC_BOOTSTRAP=1
status=0
for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target" "seeds/$target"
  log=$(mktemp)
  echo "fuzzing $target for ${seconds} s (sanitizer: $sanitizer)"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=1024 -print_final_stats=1 >"$log" 2>&1; then
    status=1
    tail -n 60 "$log"
    for crash in "artifacts/$target"/*; do
      [ -f "$crash" ] || continue
      echo "crashing input $crash ($(wc -c <"$crash") bytes), as hex:"
      od -An -v -tx1 "$crash" | tr -d ' \n'
      echo
    done
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  units=$(sed -n 's/^stat::new_units_added: *//p' "$log")
  echo "fuzz $target: ${execs:-?} executions, ${rate:-?} executions/s, ${units:-?} new corpus units"
  rm -f "$log"
done
exit "$status"
