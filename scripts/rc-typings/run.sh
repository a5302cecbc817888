#!/usr/bin/env bash
# CI step: run the Rocket.Chat connector tests with request recording on, then check every
# recorded REST request against @rocket.chat/rest-typings' own validators.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
bash "$ROOT/scripts/rc-typings/install.sh"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
export ACG_RC_RECORD="$OUT/requests.jsonl"
(cd "$ROOT" && cargo test --quiet --test it rocketchat)
node "$ROOT/scripts/rc-typings/check.mjs" "$ROOT/.deps/rc-typings/rt" "$ACG_RC_RECORD"
