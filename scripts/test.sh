#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (pinned agent CLIs, the Python
# `openai` SDK, the Synapse Matrix homeserver, headless Chromium, the NoneBot OneBot
# reference, the Rocket.Chat REST validators) into ignored folders, idempotently, then runs
# every test and checks every REST request the Rocket.Chat tests recorded against
# @rocket.chat/rest-typings' own validators.
# `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh
bash scripts/install-chromium.sh
bash scripts/onebot-conformance/install.sh
bash scripts/rc-typings/install.sh

record="$(mktemp -d)"
trap 'rm -rf "$record"' EXIT
export ACG_RC_RECORD="$record/rocketchat-requests.jsonl"

# Tests that start daemons and real CLIs are I/O bound; two threads per core keeps the
# suite short without starving the agents.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
status=0
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$record/cargo-test.log" || status=$?

if [ -s "$ACG_RC_RECORD" ]; then
  node scripts/rc-typings/check.mjs .deps/rc-typings/rt "$ACG_RC_RECORD" || status=1
elif [ "$#" -eq 0 ]; then
  echo "error: the Rocket.Chat tests recorded no REST requests to validate" >&2
  status=1
fi

# One closing line for the whole suite (cargo's own last line is the empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$record/cargo-test.log"
exit "$status"
