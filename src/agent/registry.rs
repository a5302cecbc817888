//! The list of agent types: the one place that names every agent the gateway can run.
//!
//! Owns: [`AGENTS`] (type name → its own config keys and their parser, default command,
//! construction) and the [`BuildContext`] a backend is built from.
//! Knows nothing about: any agent's argv, wire format or config keys (each entry points into
//! its folder), chat platforms.
//!
//! Adding an agent: write `agent/<name>/` with a backend and a `pub const AGENT_TYPE:
//! AgentType`, then add one line to [`AGENTS`]. `config` validates the agent's section through
//! the entry (`COMMON_AGENT_KEYS` plus the entry's `keys`; it is handed [`AGENTS`] as
//! `config::AgentTypes` and imports nothing from here), the daemon builds it through `build`;
//! neither names an agent.

use std::path::PathBuf;
use std::sync::Arc;

use serde_yaml::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::confine::Sandbox;
use super::gate::ToolGate;
use super::{acp, claude, codex, gemini, opencode, AgentBackend};
use crate::config::schema::SectionSchema;
use crate::config::{
    AgentConfig, AgentSection, AgentSectionParser, AgentSettings, AgentTypes, Gating, Validator,
};

/// Every agent type, by the name its config sections give as `type`.
pub static AGENTS: Agents = Agents(&[
    claude::AGENT_TYPE,
    acp::AGENT_TYPE,
    codex::AGENT_TYPE,
    gemini::AGENT_TYPE,
    opencode::AGENT_TYPE,
]);

/// A list of agent types (the program's is [`AGENTS`]; tests make their own).
pub struct Agents(pub &'static [AgentType]);

/// One agent type.
pub struct AgentType {
    /// The `type` of its config sections.
    pub name: &'static str,
    /// The program run when the section names no `command`.
    pub default_command: &'static str,
    /// Keys its sections may hold besides `config::COMMON_AGENT_KEYS`.
    pub keys: &'static [&'static str],
    /// Validates those keys (a mapping holding only them), reporting problems under `path`.
    /// `None` when a problem was reported.
    pub parse: AgentSectionParser,
    /// The JSON Schema of those keys (`config schema`; `config::schema::no_own_keys` when
    /// there are none).
    pub schema: SectionSchema,
    /// Whether the gateway's [`ToolGate`] can decide its calls one by one (`config` checks
    /// `permissions.enabled` against it).
    pub gating: Gating,
    /// What `doctor` shows of an installed agent: its version as it reports it (Claude:
    /// `--version`; ACP: the `agentInfo` of an `initialize` handshake), or why it could not.
    pub version: fn(&AgentConfig) -> Result<String, String>,
    /// What `doctor` can tell of the agent's model credential (`agent::state::credentials`):
    /// what provides one, or what to set.
    pub credentials: fn(&AgentConfig) -> Result<String, String>,
    /// The version the test suite pins (scripts/install-test-deps.sh), for `doctor`.
    pub tested: &'static str,
    /// Builds the backend; may start the agent's own services (Claude's hook endpoint) under
    /// the context's tracker and token.
    pub build: fn(BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>>,
}

/// What the daemon hands an agent type to build one backend.
pub struct BuildContext<'a> {
    pub config: &'a AgentConfig,
    /// The confinement every run of this agent gets (see `daemon::agent_sandbox`).
    pub sandbox: Sandbox,
    /// The agent's private scratch dir (per-run files such as Claude's settings).
    pub scratch: PathBuf,
    /// `Some` when the agent's permissions are enabled: every tool call must be asked here
    /// (with the turn's [`GateTicket`](super::gate::GateTicket)), and what cannot be asked is
    /// denied.
    pub gate: Option<Arc<dyn ToolGate>>,
    /// For services the agent starts (stopped with the daemon's other services).
    pub tracker: &'a TaskTracker,
    pub cancel: &'a CancellationToken,
}

impl Agents {
    /// The entry named `name`.
    pub fn find(&self, name: &str) -> Option<&'static AgentType> {
        self.0.iter().find(|a| a.name == name)
    }
}

impl AgentTypes for Agents {
    fn type_names(&self) -> Vec<&'static str> {
        self.0.iter().map(|a| a.name).collect()
    }

    fn section(&self, type_name: &str) -> Option<AgentSection> {
        self.find(type_name).map(|a| AgentSection {
            name: a.name,
            default_command: a.default_command,
            keys: a.keys,
            parse: a.parse,
            schema: a.schema,
            gating: a.gating,
        })
    }
}

/// `<command> --version` (stdin closed), its first line.
pub fn version_flag(config: &AgentConfig) -> Result<String, String> {
    let out = std::process::Command::new(&config.command)
        .arg("--version")
        .env_remove("CLAUDECODE")
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", config.command))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed ({}): {}",
            config.command,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// For agent types whose sections hold nothing beyond the common keys.
pub fn no_own_keys(_path: &str, _own: Value, _v: &mut Validator) -> Option<AgentSettings> {
    Some(AgentSettings::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_commands_set() {
        let mut names = AGENTS.type_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AGENTS.0.len());
        for a in AGENTS.0 {
            assert!(!a.default_command.is_empty(), "{}", a.name);
            for k in a.keys {
                assert!(
                    !crate::config::COMMON_AGENT_KEYS.contains(k),
                    "{}: `{k}` is a common key",
                    a.name
                );
            }
        }
    }
}
