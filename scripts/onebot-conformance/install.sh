#!/usr/bin/env bash
# Installs NoneBot 2 (FastAPI driver) and its OneBot V11 adapter — an independent
# implementation of the protocol — into an ignored venv, idempotently. Used by check.py
# (fixtures vs NoneBot's models) and nonebot_app.py (the fake OneBot against NoneBot's
# reverse-WS server), both run from tests/it/onebot.rs when the venv exists.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.deps/onebot-venv"
NONEBOT_ADAPTER_VERSION="2.4.6"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import fastapi, uvicorn, importlib.metadata as m, sys; sys.exit(m.version('nonebot-adapter-onebot') != '$NONEBOT_ADAPTER_VERSION')" 2>/dev/null; then
  echo "installing nonebot-adapter-onebot==$NONEBOT_ADAPTER_VERSION into .deps/onebot-venv" >&2
  "$venv/bin/pip" install --quiet "nonebot2[fastapi]==2.*" "nonebot-adapter-onebot==$NONEBOT_ADAPTER_VERSION"
fi
