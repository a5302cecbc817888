//! Where the real programs some tests drive are: the pinned Claude Code CLI and its ACP
//! adapter, OpenCode, Codex, Gemini CLI, Chromium and the NoneBot venv, all installed by
//! `scripts/test.sh`. Under
//! `CI=true` a missing one fails the test; elsewhere the test is skipped with a loud notice.

use std::path::{Path, PathBuf};

/// The real Claude Code CLI (`scripts/install-test-deps.sh`; `$ACG_CLAUDE_BIN` overrides).
pub fn claude() -> Option<PathBuf> {
    let path = std::env::var_os("ACG_CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".deps/node/node_modules/.bin/claude"));
    let found = path.exists();
    present(
        path,
        found,
        "the Claude Code CLI",
        "scripts/install-test-deps.sh",
    )
}

/// The Claude ACP adapter, `claude-agent-acp` (`scripts/install-test-deps.sh`).
pub fn claude_agent_acp() -> Option<PathBuf> {
    let path = root().join(".deps/node/node_modules/.bin/claude-agent-acp");
    let found = path.exists();
    present(
        path,
        found,
        "claude-agent-acp",
        "scripts/install-test-deps.sh",
    )
}

/// The OpenCode CLI, `opencode` (`scripts/install-test-deps.sh`).
pub fn opencode() -> Option<PathBuf> {
    node_bin("opencode", "the OpenCode CLI")
}

/// The Codex CLI, `codex` (`scripts/install-test-deps.sh`).
pub fn codex() -> Option<PathBuf> {
    node_bin("codex", "the Codex CLI")
}

/// The Gemini CLI, `gemini` (`scripts/install-test-deps.sh`).
pub fn gemini() -> Option<PathBuf> {
    node_bin("gemini", "the Gemini CLI")
}

/// A binary the pinned npm packages put in `.deps/node/node_modules/.bin`.
fn node_bin(name: &str, what: &str) -> Option<PathBuf> {
    let path = root().join(".deps/node/node_modules/.bin").join(name);
    let found = path.exists();
    present(path, found, what, "scripts/install-test-deps.sh")
}

/// The Python of `.deps/venv` when it has the reference Prometheus client (whose text
/// parser reads `/metrics`; `scripts/install-test-deps.sh`).
pub fn prometheus_python() -> Option<PathBuf> {
    let python = root().join(".deps/venv/bin/python");
    let usable = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import prometheus_client.parser"])
            .status()
            .is_ok_and(|s| s.success());
    present(
        python,
        usable,
        "the Python prometheus_client parser",
        "scripts/install-test-deps.sh",
    )
}

/// The Python of `.deps/venv` when it has the reference `jsonschema` validator
/// (`scripts/install-test-deps.sh`).
pub fn jsonschema_python() -> Option<PathBuf> {
    let python = root().join(".deps/venv/bin/python");
    let usable = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import jsonschema"])
            .status()
            .is_ok_and(|s| s.success());
    present(
        python,
        usable,
        "the Python jsonschema validator",
        "scripts/install-test-deps.sh",
    )
}

/// Headless Chromium (`scripts/install-chromium.sh`; `$ACG_CHROMIUM` overrides).
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("ACG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let found = path.exists();
    present(path, found, "Chromium", "scripts/install-chromium.sh")
}

/// The Python of the NoneBot venv (`scripts/onebot-conformance/install.sh`), when it can
/// import what the OneBot conformance scripts need.
pub fn nonebot_python() -> Option<PathBuf> {
    let python = root().join(".deps/onebot-venv/bin/python");
    let usable = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import fastapi, uvicorn, nonebot.adapters.onebot.v11"])
            .status()
            .is_ok_and(|s| s.success());
    present(
        python,
        usable,
        "NoneBot with its OneBot adapter",
        "scripts/onebot-conformance/install.sh",
    )
}

/// The Python of the test venv when it can import the pinned `openai` SDK
/// (`scripts/install-test-deps.sh`).
pub fn openai_python() -> Option<PathBuf> {
    let python = root().join(".deps/venv/bin/python");
    let usable = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import openai, pydantic"])
            .status()
            .is_ok_and(|s| s.success());
    present(
        python,
        usable,
        "the openai Python SDK",
        "scripts/install-test-deps.sh",
    )
}

/// The project's root (where `tests/`, `scripts/` and `.deps/` are).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `path` when `found`; otherwise the failure or the skip notice.
fn present(path: PathBuf, found: bool, what: &str, installer: &str) -> Option<PathBuf> {
    if found {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what} is missing or unusable at {} and CI=true: run {installer}",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {what} not found at {}; run {installer} ***\n",
        path.display()
    );
    None
}
