#!/usr/bin/env bash
# Installs what the test suite needs into ignored folders of the repo, idempotently:
#   .deps/node/      pinned agent CLIs from npm (Claude Code, its ACP adapter, OpenCode, Codex,
#                    Gemini CLI)
#   .deps/venv/      a Python venv with the `openai` SDK (client-side tests) and the
#                    `prometheus_client` text parser (the admin endpoint's /metrics) and
#                    the `jsonschema` validator (`config schema`)
#   strace, bwrap    (Linux only, Debian packages `strace` and `bubblewrap`) for the bash policy
#                    oracle, tests/it/policy_oracle.rs, which runs allowed commands in a sandbox
# Safe to run repeatedly: a pinned version already present is not reinstalled.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
deps="$root/.deps"
mkdir -p "$deps/node"

# Pinned versions: bump deliberately, together with the contract fixtures in tests/fixtures.
# Each line: npm package, version, the binary it must provide in node_modules/.bin.
PINS=(
  "@anthropic-ai/claude-code 2.1.197 claude"
  # The Agent Client Protocol adapter for Claude (brings its own claude-agent-sdk and CLI).
  "@agentclientprotocol/claude-agent-acp 0.49.0 claude-agent-acp"
  # The other agent CLIs the fake model server speaks for (tests/it/agent_clis.rs).
  "opencode-ai 1.18.33 opencode"
  "@openai/codex 0.169.0 codex"
  "@google/gemini-cli 0.61.0 gemini"
)

npm_install() {
  # A stale `nodedir` in ~/.npmrc makes npm exit 1 silently; override it with an empty value.
  (cd "$deps/node" && npm install --no-audit --no-fund --no-save --nodedir= "$@")
}

installed_version() {
  local pkg_json="$deps/node/node_modules/$1/package.json"
  [ -f "$pkg_json" ] && node -p "require('$pkg_json').version" 2>/dev/null || true
}

[ -f "$deps/node/package.json" ] || echo '{"name":"acg-test-deps","private":true}' > "$deps/node/package.json"

# npm prunes packages a later install does not name, so one install names every pin whenever
# any of them is missing or at another version.
specs=()
stale=()
for pin in "${PINS[@]}"; do
  read -r pkg version bin <<<"$pin"
  specs+=("$pkg@$version")
  if [ "$(installed_version "$pkg")" != "$version" ] || [ ! -x "$deps/node/node_modules/.bin/$bin" ]; then
    stale+=("$pkg@$version")
  fi
done
if [ "${#stale[@]}" -gt 0 ]; then
  echo "installing ${stale[*]} into .deps/node (with every other pin: ${specs[*]})" >&2
  npm_install "${specs[@]}"
fi
for pin in "${PINS[@]}"; do
  read -r pkg version bin <<<"$pin"
  if ! "$deps/node/node_modules/.bin/$bin" --version </dev/null >/dev/null 2>&1; then
    echo "$bin (from $pkg@$version) does not run: $deps/node/node_modules/.bin/$bin --version" >&2
    exit 1
  fi
done

if [ "${ACG_SKIP_PYTHON_DEPS:-}" != 1 ]; then
  if [ ! -x "$deps/venv/bin/python" ]; then
    python3 -m venv "$deps/venv"
  fi
  # Pinned: tests/it/openai_api.rs drives the gateway's OpenAI API with this SDK.
  openai_version=1.109.1
  if ! "$deps/venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$openai_version')" 2>/dev/null; then
    "$deps/venv/bin/pip" install --quiet "openai==$openai_version"
  fi
  # The reference Prometheus text parser, for the admin endpoint's /metrics (tests/it/admin_http.rs).
  if ! "$deps/venv/bin/python" -c 'import prometheus_client.parser' 2>/dev/null; then
    "$deps/venv/bin/pip" install --quiet "prometheus-client==0.21.1"
  fi
  # A reference JSON Schema validator, for `config schema` (tests/it/config_cli.rs).
  if ! "$deps/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('jsonschema') != '4.23.0')" 2>/dev/null; then
    "$deps/venv/bin/pip" install --quiet "jsonschema==4.23.0"
  fi
fi
# The bash policy oracle (tests/it/policy_oracle.rs) traces real bash in a bubblewrap sandbox.
# System packages from the configured apt mirrors; `apt-get update` only when one is missing.
if [ "$(uname -s)" = Linux ]; then
  missing=()
  command -v strace >/dev/null 2>&1 || missing+=(strace)
  command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "apt-get not found: install ${missing[*]} yourself (needed by tests/it/policy_oracle.rs)" >&2
      exit 1
    fi
    as_root=()
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
      else
        echo "need root (or sudo) to apt-get install ${missing[*]}" >&2
        exit 1
      fi
    fi
    echo "installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

echo "test dependencies ready in $deps" >&2
