#!/usr/bin/env bash
# Builds the fault-injecting PKCS#11 module (tests and soak) with the system compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
out=var/test/fault-pkcs11.so
src=test/fault-module/fault-pkcs11.c
mkdir -p var/test
if [ ! -e "$out" ] || [ "$src" -nt "$out" ]; then
  cc -shared -fPIC -O2 -Wall -Werror -I/usr/include/p11-kit-1 -o "$out" "$src" -ldl -lpthread
fi
echo "$PWD/$out"
