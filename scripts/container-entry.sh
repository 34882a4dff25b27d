#!/usr/bin/env bash
# Container entry: what `npm start` does after its installs. The dev token is provisioned only
# when the default config is used and var/ has none; a mounted config brings its own tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${PKCS11_SUPERVISOR_CONFIG:-config/default.json}"
if [ "$config" = config/default.json ]; then bash scripts/provision-dev-token.sh; fi
exec node dist/src/daemon.js --config "$config" --listen "${PKCS11_SUPERVISOR_LISTEN:-0.0.0.0:9464}"
