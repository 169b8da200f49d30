#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it use the sanitizer flags it needs.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
export RUSTC_BOOTSTRAP=1
for target in client_hello server_flight host policy; do
  mkdir -p "corpus/$target"
  cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$secs" -max_len=20000
done
