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
pub mod warm;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{AgentEvent, RoomKey, TurnOutcome, TurnRequest};
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
    /// The account's usage limit: `resets_at` in epoch seconds, `kind` the limit's name
    /// (`five_hour`), when the agent said. `usage` is false for a bare "too many requests"
    /// (HTTP 429 with no usage-limit report): a rate limit that passes in a minute, not a
    /// quota that may last hours, so rooms hold only briefly.
    #[error("usage limit reached (resets at {resets_at:?})")]
    RateLimited {
        resets_at: Option<u64>,
        kind: Option<String>,
        usage: bool,
    },
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
    /// A fixed name of the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::Spawn { .. } => "spawn",
            AgentError::Timeout(_) => "timeout",
            AgentError::Crashed { .. } => "crashed",
            AgentError::RateLimited { .. } => "rate_limited",
            AgentError::Api { message, .. } if is_auth_failure(message) => "not_logged_in",
            AgentError::Api { .. } => "api",
            AgentError::Protocol(_) => "protocol",
            AgentError::SessionNotFound(_) => "session_not_found",
            AgentError::Cancelled => "cancelled",
            AgentError::Setup(_) => "setup",
        }
    }

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
            AgentError::RateLimited { usage: false, .. } => format!(
                "❌ The model API is refusing requests for now (too many requests). Please try again in a minute. (ref: {reference})"
            ),
            AgentError::RateLimited { resets_at, .. } => match resets_at {
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

/// What an agent's error text (a pipe CLI's error line, an ACP prompt's error) means: a
/// usage limit, a refused credential (worded so the room is told an admin must act), or
/// another model API error.
pub fn api_error(message: &str) -> AgentError {
    let m = message.to_ascii_lowercase();
    if m.contains("usage limit") || m.contains("quota") {
        return AgentError::RateLimited {
            resets_at: None,
            kind: None,
            usage: true,
        };
    }
    let status = http_status_in(&m);
    if status == Some(429) || m.contains("rate limit") {
        return AgentError::RateLimited {
            resets_at: None,
            kind: None,
            usage: false,
        };
    }
    let auth = status.is_some_and(|s| s == 401 || s == 403)
        || m.contains("api key")
        || m.contains("unauthorized")
        || m.contains("not logged in");
    AgentError::Api {
        status,
        message: if auth && !m.contains("invalid api key") {
            format!("invalid api key: {message}")
        } else {
            message.to_string()
        },
    }
}

/// The first number of exactly three digits from 400 to 599 in `text` (the CLIs put the
/// status in their messages in different places: "unexpected status 401", `"code":400`,
/// "status 429:"); longer numbers (ports, ids) are not mistaken for one.
fn http_status_in(text: &str) -> Option<u16> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|run| run.len() == 3)
        .filter_map(|run| run.parse::<u16>().ok())
        .find(|s| (400..600).contains(s))
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

    /// The room's agent process kept between turns (a warm process), if it has one now.
    fn process_info(&self, _room: &RoomKey) -> Option<warm::ProcessInfo> {
        None
    }

    /// Stops the room's process kept between turns, if any (its session was reset, or its
    /// turn stopped). Waits for a turn of the room that is running on it, then until the
    /// process has exited.
    async fn retire(&self, _room: &RoomKey) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_become_the_rooms_messages() {
        assert!(matches!(
            api_error("You've hit your usage limit"),
            AgentError::RateLimited { usage: true, .. }
        ));
        assert!(matches!(
            api_error("unexpected status 429 Too Many Requests"),
            AgentError::RateLimited { usage: false, .. }
        ));
        let e = api_error("unexpected status 401 Unauthorized: Incorrect API key provided");
        assert!(e.user_message("r").contains("not logged in"), "{e}");
        let e = api_error("stream disconnected");
        assert!(matches!(e, AgentError::Api { status: None, .. }));
        assert!(e.user_message("r").contains("model API returned an error"));
        // Gemini CLI's wording; a port is not a status.
        let e = api_error(r#"[API Error: {"error":{"code":400,"message":"bad"}}]"#);
        assert!(
            matches!(
                e,
                AgentError::Api {
                    status: Some(400),
                    ..
                }
            ),
            "{e}"
        );
        let e = api_error("connection refused: http://127.0.0.1:40679/v1/responses");
        assert!(matches!(e, AgentError::Api { status: None, .. }), "{e}");
    }

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
