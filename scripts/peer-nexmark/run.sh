#!/usr/bin/env bash
# Measures the issue's peer, LaminarDB 0.33 (in memory, no durability), on
# this machine: Nexmark bids from the same generator as `sluice bench
# nexmark`, fed as Arrow batches in-process, one continuous query.
#
#   scripts/peer-nexmark/run.sh QUERY [BIDS] [BATCH_ROWS]
#
# QUERY is q1, q7-core, q12 or q5-core; BIDS defaults to 5,000,000 (the
# issue's figure), BATCH_ROWS to 8,192 (as `sluice bench nexmark` stores
# them). Prints one JSON line with `events_per_cpu_s`.
#
# Not part of the Sluice workspace: it builds its own DataFusion and arrow
# (the versions LaminarDB pins), in its own target directory. The first
# build takes most of an hour on the 2-core development machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${PEER_TARGET_DIR:-$HOME/.cache/peer-target}"
mkdir -p "$CARGO_TARGET_DIR"

# laminar-db depends on laminar-connectors with its default features
# (Kafka, Postgres, MongoDB, NATS, Delta Lake, Iceberg...). None is used
# here, they double the build, and the Delta Lake kernel that the lock
# picks does not compile. So the harness patches in the same crate with no
# default features, copied from cargo's registry.
vendor="$here/vendor/laminar-connectors"
if [ ! -f "$vendor/Cargo.toml" ]; then
    # The harness's own manifest cannot fetch it: its patch points at the
    # copy not made yet. A scratch manifest without the patch can.
    scratch="$(mktemp -d)"
    mkdir -p "$scratch/src"
    touch "$scratch/src/lib.rs"
    cat > "$scratch/Cargo.toml" <<'TOML'
[package]
name = "fetch-laminar-connectors"
version = "0.0.0"
edition = "2021"

[dependencies]
laminar-connectors = { version = "=0.33.0", default-features = false }
TOML
    (cd "$scratch" && cargo fetch --quiet)
    rm -rf "$scratch"
    registry="$(ls -d "$HOME"/.cargo/registry/src/*/laminar-connectors-0.33.0 | head -1)"
    mkdir -p "$here/vendor"
    cp -r "$registry" "$vendor"
    python3 - "$vendor/Cargo.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
start = text.index("default = [")
end = text.index("]", start) + 1
open(path, "w").write(text[:start] + "default = []" + text[end:])
PY
fi
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
exec "$CARGO_TARGET_DIR/release/peer-nexmark" "$@"
