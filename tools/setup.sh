#!/usr/bin/env bash
# Installs what a fresh machine lacks: nats-server (Debian) and the npm dependencies,
# then builds. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nats-server >/dev/null 2>&1; then
  echo "setup: installing nats-server from Debian" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
# Debian's package enables a system service on the default port; ckv runs its own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nats-server 2>/dev/null; then
  systemctl stop nats-server || true
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies" >&2
  # `npm ci` refuses this lock file on npm 11 (optional per-platform packages of
  # msgpackr-extract are not all listed); `npm install` honours the lock's versions.
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent build
