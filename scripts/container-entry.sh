#!/usr/bin/env bash
# Container entry: what `npm start` does after its installs. The dev token is provisioned only
# when the default config is used and var/ has none; a mounted config brings its own tokens.
# With PKCS11_SUPERVISOR_TOKEN_FROM (the Kubernetes example), the SoftHSM2 token is copied from
# that directory (a Secret made by scripts/kubernetes-dev-token.sh) into var/, which is writable.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${PKCS11_SUPERVISOR_CONFIG:-config/default.json}"
if [ -n "${PKCS11_SUPERVISOR_TOKEN_FROM:-}" ]; then
  mkdir -p var/tokens/dev-token
  chmod 700 var
  find "$PKCS11_SUPERVISOR_TOKEN_FROM" -maxdepth 1 -type f ! -name '*.pin' -exec cp {} var/tokens/dev-token/ \;
  printf 'directories.tokendir = %s/var/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$PWD" > var/softhsm2.conf
elif [ "$config" = config/default.json ]; then
  bash scripts/provision-dev-token.sh
fi
exec node --max-semi-space-size=32 dist/src/daemon.js --config "$config" --listen "${PKCS11_SUPERVISOR_LISTEN:-0.0.0.0:9464}"
