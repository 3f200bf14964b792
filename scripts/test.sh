#!/usr/bin/env bash
# The one test command: set up (packages, build, Go driver), then run every
# workspace test in release mode with root-only tests mandatory.
#
#   scripts/test.sh [extra cargo test args, e.g. -p weft-tests] [-- test filters]
#
# WEFT_TEST_THREADS overrides the test thread count (default: 2 x cores, at
# least 2). Tests isolate themselves in their own network namespaces, so they
# run in parallel; the few that share global state serialize themselves.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
if [[ -d "$HOME/.cargo/bin" ]]; then export PATH="$HOME/.cargo/bin:$PATH"; fi

cores="$(nproc 2>/dev/null || echo 2)"
threads="${WEFT_TEST_THREADS:-$((cores * 2))}"
((threads >= 2)) || threads=2

# Split our arguments into cargo's and the test binaries'.
cargo_args=()
test_args=()
seen_sep=0
for a in "$@"; do
    if ((seen_sep)); then test_args+=("$a")
    elif [[ $a == -- ]]; then seen_sep=1
    else cargo_args+=("$a")
    fi
done
((${#cargo_args[@]} > 0)) || cargo_args=(--workspace)

# Gates: every landing is formatted, clippy-clean and declares no unused
# dependency (cargo-machete, installed by setup.sh, exits 1 on one).
log() { printf '==> %s\n' "$*" >&2; }
log "cargo fmt --all -- --check"
cargo fmt --all -- --check
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo machete --skip-target-dir"
cargo machete --skip-target-dir

# Root-only tests are #[ignore = "needs root"], so a plain non-root
# `cargo test` lists them as ignored; here they are included and mandatory.
export WEFT_REQUIRE_ROOT=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
log "WEFT_REQUIRE_ROOT=1 cargo test --release ${cargo_args[*]} -- --include-ignored --test-threads=$threads ${test_args[*]}"
exec cargo test --release "${cargo_args[@]}" -- --include-ignored --test-threads="$threads" "${test_args[@]}"
