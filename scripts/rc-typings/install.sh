#!/usr/bin/env bash
# Installs the official Rocket.Chat REST validators (@rocket.chat/rest-typings, Ajv) into
# .deps/rc-typings/ (git-ignored), patched so Node can import the ES modules directly.
# `npm pack` is used for the typings because `npm install` of them fails while resolving
# unrelated workspace dependencies; only ajv and ajv-formats are installed normally.
set -euo pipefail
VERSION="${RC_TYPINGS_VERSION:-8.8.1}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$ROOT/.deps/rc-typings"
if [ -f "$DEST/ready-$VERSION" ]; then
  exit 0
fi
mkdir -p "$DEST"
cd "$DEST"
echo '{"private":true,"type":"module"}' > package.json
npm install --silent --no-audit --no-fund ajv@8 ajv-formats@3
npm pack --silent "@rocket.chat/rest-typings@$VERSION" > /dev/null
rm -rf pkg rt
mkdir pkg
tar xzf "rocket.chat-rest-typings-$VERSION.tgz" -C pkg
cp -r pkg/package/dist rt
echo '{"type":"module"}' > rt/package.json
node "$ROOT/scripts/rc-typings/patch-imports.mjs" rt
touch "ready-$VERSION"
echo "rest-typings $VERSION validators ready in $DEST/rt"
