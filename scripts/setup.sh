#!/usr/bin/env bash
# Installs what building Sluice needs and a fresh machine may lack.
# RocksDB's Rust bindings are generated at build time with libclang.
set -euo pipefail

# libclang itself: libclang.so or libclang-<version>.so (libclang-cpp, which
# some machines have alone, is a different library and does not do).
have_libclang() {
    ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so' ||
        compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null ||
        compgen -G '/usr/lib/llvm-*/lib/libclang-[0-9]*.so*' >/dev/null
}

if ! have_libclang; then
    echo "setup: installing libclang-dev (needed to build RocksDB's bindings)"
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi

for tool in cargo c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "setup: $tool is missing; install a Rust toolchain (rustup) and a C++ compiler" >&2
        exit 1
    fi
done
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
