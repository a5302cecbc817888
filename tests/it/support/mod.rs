//! What the tests share, one file per concern:
//!
//! - `ports`: free 127.0.0.1 ports for servers a test starts later;
//! - `deps`: where the real agent CLI, Chromium and the NoneBot venv are (missing under
//!   `CI=true` is a failure, elsewhere a loud skip);
//! - `daemon`: the real gateway binary started as a daemon with a temp runtime dir, and the
//!   config pieces tests build it from (a Claude agent on the fake model, the fake agent, a
//!   web chat connector);
//! - `webclient`: a web chat user over the JSON API and its event stream (no sleeps);
//! - `tcp`: raw connections for the HTTP listeners' bounds;
//! - `dispatcher`: a connector run in process with a stand-in for the dispatcher;
//! - `fake_llm`, `fake_agent`, `fake_rocketchat`, `fake_mattermost`, `fake_onebot`: the fakes
//!   of the model APIs,
//!   the agent CLI and the chat platforms;
//! - `agent_homes`: isolated HOMEs (config and environment) that point OpenCode, Codex and
//!   Gemini CLI at `fake_llm`.
//!
//! Nothing here knows a test; tests know nothing of each other.

pub mod agent_homes;
pub mod daemon;
pub mod deps;
pub mod dispatcher;
pub mod fake_agent;
pub mod fake_llm;
pub mod fake_mattermost;
pub mod fake_onebot;
pub mod fake_rocketchat;
pub mod ports;
pub mod tcp;
pub mod webclient;

use std::path::Path;
use std::time::Duration;

use agent_chat_gateway::config::{AgentConfig, PermissionsConfig};
use agent_chat_gateway::policy::RuleSet;
use serde_json::Value;

/// How long a test waits for something that should happen at once (a delivery, an answer
/// from an in-process server) before it fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// Fails the test after [`WAIT`] instead of hanging it.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The lines of a JSON Lines file (the audit log); none when it does not exist yet.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A Claude agent's configuration as `config` would validate it: `command` in `work`, one
/// minute per turn, no permissions, no allow-lists. Tests change the fields they are about.
pub fn agent_config(command: &str, work: &Path) -> AgentConfig {
    AgentConfig {
        name: "a".into(),
        kind: "claude".into(),
        settings: Default::default(),
        command: command.into(),
        args: Vec::new(),
        working_directory: work.to_path_buf(),
        timeout: Duration::from_secs(60),
        permissions: PermissionsConfig {
            enabled: false,
            timeout: Duration::from_secs(30),
            skip_owner_approval: false,
        },
        owner_rules: RuleSet::default(),
        guest_rules: RuleSet::default(),
        env: Vec::new(),
        system_prompt: None,
        sandbox: Default::default(),
    }
}
