#!/usr/bin/env bash
# The Secret the Kubernetes example runs on: a SoftHSM2 dev token (its files) and its user PIN,
# written flat into OUTDIR, one file a Secret key. Every replica copies the same token into its
# own var/ at start (scripts/container-entry.sh), so all of them sign with the same demo keys.
# A development stand-in for a network HSM partition, which holds the keys in production.
#   bash scripts/kubernetes-dev-token.sh OUTDIR
#   kubectl create secret generic pkcs11-supervisor-token --from-file=OUTDIR
set -euo pipefail
out="${1:?usage: kubernetes-dev-token.sh OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bash "$here/provision-dev-token.sh" "$work" 2>/dev/null
mkdir -p "$out"
token_dir="$(find "$work/var/tokens" -mindepth 1 -maxdepth 1 -type d | head -1)"
cp "$token_dir"/* "$out"/
cp "$work/var/dev-token.pin" "$out/dev-token.pin"
chmod 600 "$out"/*
echo "wrote the dev token and its PIN to $out: kubectl create secret generic pkcs11-supervisor-token --from-file=$out" >&2
