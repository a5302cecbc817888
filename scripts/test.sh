#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (pinned agent CLIs, the Python
# `openai` SDK, headless Chromium) into ignored folders, idempotently, then runs every test.
# `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh
bash scripts/install-chromium.sh
bash scripts/onebot-conformance/install.sh

# Tests that start daemons and real CLIs are I/O bound; two threads per core keeps the
# suite short without starving the agents.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
cargo test --locked --no-fail-fast "$@"
