#!/usr/bin/env bash
# Everything `npm start`, `npm test` and `npm run bench` need on a fresh Debian machine with
# Node 20: system packages, node_modules, a build, and (with --dev-token) the dev token.
# --vendors (npm test) adds the other PKCS#11 implementations the conformance suite runs
# against: openCryptoki's soft token, and tpm2-pkcs11 on swtpm behind tpm2-abrmd on a
# private D-Bus session bus (test/support/vendors/ starts and provisions them).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux) # the bench pins threads to vCPUs
command -v cc >/dev/null || need+=(gcc libc6-dev)
[ -e /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || need+=(libp11-kit-dev)
if [[ " $* " == *" --vendors "* ]]; then
  lib=/usr/lib/x86_64-linux-gnu
  [ -e $lib/pkcs11/libopencryptoki.so ] && command -v pkcsslotd >/dev/null || need+=(opencryptoki)
  [ -e $lib/pkcs11/libtpm2_pkcs11.so ] || need+=(libtpm2-pkcs11-1)
  command -v tpm2_ptool >/dev/null || need+=(libtpm2-pkcs11-tools)
  command -v tpm2_getrandom >/dev/null || need+=(tpm2-tools)
  command -v swtpm >/dev/null || need+=(swtpm)
  command -v tpm2-abrmd >/dev/null || need+=(tpm2-abrmd)
  [ -e $lib/libtss2-tcti-swtpm.so.0 ] || need+=(libtss2-tcti-swtpm0)
  [ -e $lib/libtss2-tcti-tabrmd.so.0 ] || need+=(libtss2-tcti-tabrmd0)
  command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
  command -v promtool >/dev/null || need+=(prometheus) # promtool checks the metrics and alert rules
fi
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

# From scratch: a module moved or removed must not live on in dist/.
rm -rf dist
npx --no-install tsc -p tsconfig.json

if [[ " $* " == *" --dev-token "* ]]; then
  bash scripts/provision-dev-token.sh
fi
