#!/usr/bin/env bash
# Everything `npm start`, `npm test` and `npm run bench` need on a fresh Debian machine with
# Node 20: system packages, node_modules, a build, and (with --dev-token) the dev token.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
command -v cc >/dev/null || need+=(gcc libc6-dev)
[ -e /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || need+=(libp11-kit-dev)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: missing system packages. Run:  sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing node modules" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

npx --no-install tsc -p tsconfig.json

if [ "${1:-}" = "--dev-token" ]; then
  bash scripts/provision-dev-token.sh
fi
