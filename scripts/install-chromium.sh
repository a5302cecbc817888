#!/usr/bin/env bash
# Installs headless Chromium for tests/it/webchat_browser.rs, idempotently.
# Uses the distribution package (Debian `chromium`, /usr/bin/chromium): no downloads from
# anywhere but the configured apt mirrors. Safe to run repeatedly: an installed binary is kept.
set -euo pipefail

CHROMIUM="${ACG_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  echo "chromium already installed at $CHROMIUM" >&2
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-get not found: install Chromium yourself and set ACG_CHROMIUM to its path" >&2
  exit 1
fi

as_root=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-noto-color-emoji >/dev/null
"$CHROMIUM" --version >&2
