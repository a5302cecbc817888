//! Agent backends: one folder per agent CLI. Each turns a [`TurnRequest`] into a child process
//! (argv, env, working directory, resume rules) and its output into [`AgentEvent`]s.
//!
//! Owns: the [`AgentBackend`] trait, the error type rooms turn into chat messages, the
//! [`ToolGate`](gate::ToolGate) seam every agent asks about tool calls (`gate`), the list of
//! agent types (`registry`), and the subprocess guard and NDJSON run loop in `process`.
//! Must not import: `connector` — no platform name appears here.
//!
//! Adding an agent: a folder `agent/<name>/` with its backend (and its config section, its
//! wire types) plus one line in [`registry::AGENTS`]; see `docs/ARCHITECTURE.md`.

pub mod acp;
pub mod claude;
pub mod codex;
pub mod confine;
pub mod gate;
pub mod gemini;
pub mod opencode;
pub mod pipe;
pub mod process;
pub mod registry;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{AgentEvent, TurnOutcome, TurnRequest};
use gate::GateTicket;

/// Per-turn plumbing handed to a backend.
pub struct TurnContext {
    pub events: mpsc::Sender<AgentEvent>,
    pub cancel: CancellationToken,
    /// `Some` when the gateway's [`ToolGate`](gate::ToolGate) decides this run's tool calls:
    /// every call must then be asked with this ticket, and the agent must deny what it cannot
    /// ask.
    pub gate: Option<GateTicket>,
}

/// Why a turn failed. `user_message` is what the room sees; details go to the log.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("agent exited with {status}; stderr: {stderr_tail}")]
    Crashed { status: String, stderr_tail: String },
    #[error("usage limit reached (resets at {resets_at:?})")]
    RateLimited { resets_at: Option<u64> },
    #[error("model API error {status:?}: {message}")]
    Api {
        status: Option<u16>,
        message: String,
    },
    #[error("agent output could not be understood: {0}")]
    Protocol(String),
    #[error("session {0} could not be resumed")]
    SessionNotFound(String),
    #[error("turn cancelled")]
    Cancelled,
    #[error("{0}")]
    Setup(String),
}

impl AgentError {
    /// The short, clear message posted in the room. `reference` ties it to the log line.
    pub fn user_message(&self, reference: &str) -> String {
        match self {
            AgentError::Spawn { command, .. } => {
                format!("❌ Could not start the agent (`{command}`). An admin should check the gateway log. (ref: {reference})")
            }
            AgentError::Timeout(d) => format!(
                "⏱️ The agent did not finish within {} s and was stopped. Please try again. (ref: {reference})",
                d.as_secs()
            ),
            AgentError::Crashed { status, .. } => format!(
                "❌ The agent stopped unexpectedly ({status}). Please try again. (ref: {reference})"
            ),
            AgentError::RateLimited { resets_at } => match resets_at {
                Some(t) => format!(
                    "❌ The agent has reached its usage limit; it resets at {}. (ref: {reference})",
                    crate::timefmt::rfc3339_utc_secs(*t)
                ),
                None => format!(
                    "❌ The agent has reached its usage limit. Please try again later. (ref: {reference})"
                ),
            },
            AgentError::Api { message, .. } if is_auth_failure(message) => format!(
                "❌ The agent is not logged in to its model API. An admin should set its API key or log the CLI in (`agent-chat-gateway doctor` shows what it finds). (ref: {reference})"
            ),
            AgentError::Api { status, .. } => match status {
                Some(s) => format!("❌ The model API returned an error ({s}). Please try again. (ref: {reference})"),
                None => format!("❌ The model API returned an error. Please try again. (ref: {reference})"),
            },
            AgentError::Protocol(_) => format!(
                "❌ The agent's output could not be understood. Please try again. (ref: {reference})"
            ),
            AgentError::SessionNotFound(_) => format!(
                "⚠️ The previous agent session could not be resumed; a new session will start with your next message. (ref: {reference})"
            ),
            AgentError::Cancelled => "⚠️ The turn was cancelled.".to_string(),
            AgentError::Setup(_) => format!(
                "❌ The agent could not be prepared. An admin should check the gateway log. (ref: {reference})"
            ),
        }
    }
}

/// Whether a model API error says the CLI has no valid credentials (worth telling the room,
/// since only an admin can fix it).
fn is_auth_failure(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not logged in")
        || m.contains("invalid api key")
        || m.contains("authentication_error")
}

/// One agent CLI.
#[async_trait]
pub trait AgentBackend: Send + Sync + 'static {
    /// Runs one turn to completion, streaming events as they come. The child process never
    /// outlives this call: timeout, cancellation and drop all kill its process group.
    async fn run_turn(
        &self,
        turn: TurnRequest,
        ctx: TurnContext,
    ) -> Result<TurnOutcome, AgentError>;

    /// Working directory the agent runs in (for policy path normalisation and attachments).
    fn working_directory(&self) -> &PathBuf;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_login_is_named_in_the_room() {
        let e = AgentError::Api {
            status: None,
            message: "Not logged in · Please run /login".into(),
        };
        assert_eq!(
            e.user_message("abcd1234"),
            "❌ The agent is not logged in to its model API. An admin should set its API key or log the CLI in (`agent-chat-gateway doctor` shows what it finds). (ref: abcd1234)"
        );
        let e = AgentError::Api {
            status: Some(400),
            message: "bad request".into(),
        };
        assert_eq!(
            e.user_message("abcd1234"),
            "❌ The model API returned an error (400). Please try again. (ref: abcd1234)"
        );
    }
}
