#!/usr/bin/env bash
# Provisions the local SoftHSM2 dev token that config/default.json points at, under var/ of the
# given project directory (default: this checkout), with its own SOFTHSM2_CONF: the system token
# directory is never touched. Idempotent. The PINs are random and live in var/*.pin (mode 600);
# nothing here prints them. `pkcs11-supervisor init` runs it for an application's project.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
MODULE=/usr/lib/softhsm/libsofthsm2.so
LABEL=dev-token
mkdir -p var/tokens
chmod 700 var
export SOFTHSM2_CONF="$PWD/var/softhsm2.conf"
cat > "$SOFTHSM2_CONF" <<CONF
directories.tokendir = $PWD/var/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

if softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*\b$LABEL\b"; then
  exit 0
fi
umask 077
openssl rand -hex 8 > var/dev-token.pin
openssl rand -hex 8 > var/dev-token.so-pin
softhsm2-util --init-token --free --label "$LABEL" --so-pin "$(cat var/dev-token.so-pin)" --pin "$(cat var/dev-token.pin)" >/dev/null
p11() { pkcs11-tool --module "$MODULE" --token-label "$LABEL" --login --pin "$(cat var/dev-token.pin)" "$@" >/dev/null 2>&1; }
p11 --keypairgen --key-type rsa:2048 --label demo-rsa --id 01 --usage-sign
p11 --keypairgen --key-type EC:prime256v1 --label demo-ec --id 02 --usage-sign
echo "provisioned SoftHSM2 token \"$LABEL\" in var/tokens (user PIN in var/dev-token.pin)" >&2
