#!/usr/bin/env bash
# Node 24 LTS, the target runtime, from the npm registry (the `node` package and its prebuilt
# binary) into var/node24, for running the suite on it next to the machine's Node 20. Prints
# the directory of its `node` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=var/node24/node_modules/node/bin
if [ ! -x "$bin/node" ] || [[ "$("$bin/node" --version)" != v24.* ]]; then
  npm install --prefix var/node24 --no-audit --no-fund --no-save --loglevel=error node@24 >&2
fi
echo "$PWD/$bin"
