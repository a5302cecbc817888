#!/usr/bin/env bash
# Builds and installs agent-chat-gateway, writes a starter config if there is none (never
# overwrites one), and starts the gateway: the local web chat on 127.0.0.1:8790 talking to
# Claude Code. Re-running it upgrades the binary and restarts the gateway.
#
#   PREFIX     install prefix (default ~/.local; the binary goes to $PREFIX/bin)
#   ACG_HOME   runtime dir (default ~/.agent-chat-gateway)
#   ACG_NO_START=1   install only
#   ACG_SERVICE=user run it as a systemd user service (`service install --user`); once
#                    installed, re-runs keep doing so. Config and state are always kept.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PREFIX="${PREFIX:-$HOME/.local}"
ACG_HOME="${ACG_HOME:-$HOME/.agent-chat-gateway}"
CONFIG="${ACG_CONFIG:-$ACG_HOME/config.yaml}"
BIN="$PREFIX/bin/agent-chat-gateway"

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

echo "==> building and installing to $BIN"
cargo install --path . --locked --root "$PREFIX" --bin agent-chat-gateway --force

# The default agent is Claude Code. Install the CLI next to the gateway if it is missing.
CLAUDE="$(command -v claude || true)"
if [ -z "$CLAUDE" ] && [ -x "$PREFIX/bin/claude" ]; then CLAUDE="$PREFIX/bin/claude"; fi
if [ -z "$CLAUDE" ]; then
  if command -v npm >/dev/null; then
    echo "==> installing Claude Code (npm @anthropic-ai/claude-code) into $PREFIX"
    npm install -g --prefix "$PREFIX" --no-audit --no-fund --nodedir= @anthropic-ai/claude-code
    CLAUDE="$PREFIX/bin/claude"
  else
    echo "warning: 'claude' not found and npm is missing; install Claude Code, then edit 'command:' in $CONFIG" >&2
    CLAUDE="claude"
  fi
fi

mkdir -p "$ACG_HOME"
chmod 700 "$ACG_HOME"
if [ ! -f "$CONFIG" ]; then
  WORK="$HOME/acg-work"
  mkdir -p "$WORK"
  OWNER="${USER:-$(id -un)}"
  echo "==> writing a starter config to $CONFIG"
  umask 077
  cat > "$CONFIG" <<YAML
# agent-chat-gateway starter config. Every key is documented in config.example.yaml.
connectors:
  - name: local
    type: webchat
    listen: "127.0.0.1:8790"
    allowed_users: {owners: [$OWNER], guests: []}

default_agent: assistant
agents:
  assistant:
    type: claude
    command: "$CLAUDE"
    working_directory: "$WORK"
    timeout: 600
    # Claude Code needs credentials: ANTHROPIC_API_KEY in the gateway's environment, or a
    # logged-in CLI (claude /login). Tool calls need an owner's approval in the chat.
    permissions: {enabled: true, timeout: 300}
    owner_allowed_tools:
      - {tool: "Read|Glob|Grep|LS"}
      - {tool: Bash, params: "(ls|pwd|cat|head|tail|wc|git (status|log|diff|show))( .*)?"}
    guest_allowed_tools: []

watchers:
  - {name: local-all, connector: local, room: "*", agent: assistant}
YAML
else
  echo "==> keeping the existing config $CONFIG"
fi

"$BIN" config validate --config "$CONFIG"
if [ "${ACG_NO_START:-}" = 1 ]; then
  echo "installed; start it with: $BIN start"
  exit 0
fi
export ACG_HOME
UNIT="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/agent-chat-gateway.service"
if [ -f "$UNIT" ] || [ "${ACG_SERVICE:-}" = user ]; then
  # A user service: its unit is rewritten (paths may have moved) and the service restarted.
  if [ -f "$UNIT" ]; then echo "==> restarting the user service"; else echo "==> installing a user service"; fi
  if "$BIN" status --config "$CONFIG" >/dev/null 2>&1 && ! systemctl --user is-active --quiet agent-chat-gateway.service; then
    "$BIN" stop --config "$CONFIG"   # started by hand: the service needs the pid lock
  fi
  "$BIN" service install --user --config "$CONFIG"
elif "$BIN" status --config "$CONFIG" >/dev/null 2>&1; then
  echo "==> restarting the running gateway"
  "$BIN" restart --config "$CONFIG"
else
  "$BIN" start --config "$CONFIG"
fi
case ":$PATH:" in *":$PREFIX/bin:"*) ;; *) echo "note: add $PREFIX/bin to your PATH";; esac
