# The two commands of the README: `make run` and `make test`.
# Build output goes to a cache outside the clone, shared by every checkout.

CARGO_TARGET_DIR ?= $(HOME)/.cache/sluice-target
export CARGO_TARGET_DIR
SLUICE := $(CARGO_TARGET_DIR)/release/sluice

.PHONY: setup build run test lint fmt bench-ingest

## Install what a fresh machine lacks (libclang for RocksDB's bindings).
setup:
	@bash scripts/setup.sh

## Build the optimised `sluice` binary.
build: setup
	cargo build --release -p sluice-server

## Build and start the server on ./sluice-data, listening on 127.0.0.1:7878.
run: build
	$(SLUICE) server --data-dir ./sluice-data

## Formatting, lints, and every test.
test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

fmt:
	cargo fmt --all

## The log's ingest benchmark with the figures BENCHMARKS.md records.
bench-ingest: build
	$(SLUICE) bench ingest --records 5000000 --size 100 --partitions 4 --batch 1000 --writers 1 --durability os
	$(SLUICE) bench ingest --records 5000000 --size 100 --partitions 4 --batch 1000 --writers 4 --durability fsync
