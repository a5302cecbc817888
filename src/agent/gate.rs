//! The seam between agents and the gateway's approval broker: how any agent asks "may this
//! tool call run?".
//!
//! Owns: the [`ToolGate`] trait and the per-turn [`GateTicket`] an agent presents with each
//! call. Claude Code reaches the gate through its http PreToolUse hook (`claude/hook.rs`); an
//! ACP agent would call it from its own stdio loop when it sends `session/request_permission`.
//! Knows nothing about: HTTP, any agent's wire format, chat platforms, the policy.
//!
//! Fail closed: a gate answers Allow or Deny only — an Ask is resolved inside it (an owner's
//! answer or a timeout). A caller that gets no answer (the gate is gone, its task failed, the
//! agent's own wait ran out) must deny.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Decision, ToolCall};

/// Binds the tool calls of one run to the turn that started it. Handed to the backend in its
/// [`TurnContext`](super::TurnContext); the backend gives the secret to its CLI (Claude: a
/// header value in the per-run settings file) or keeps it (an agent that asks over stdio).
#[derive(Clone, Debug)]
pub struct GateTicket {
    /// Per-run secret that names the live turn; a call without it cannot be bound (deny).
    pub secret: String,
    /// How long an agent should wait for an answer: longer than the owner's approval
    /// timeout, so a pending approval is never cut short by the CLI (which would fall through
    /// to its permission mode).
    pub timeout: Duration,
}

/// Decides the tool calls of running turns.
#[async_trait]
pub trait ToolGate: Send + Sync + 'static {
    /// Whether `secret` names a live turn. Cheap, so a listener can check it before it lets
    /// a caller hold anything scarce (a work slot, a large body).
    fn is_live(&self, secret: &str) -> bool;

    /// Decides one call of the turn named by `secret` (`None`: the caller presented none).
    /// Returns [`Decision::Allow`] or [`Decision::Deny`], never Ask: an Ask waits here for an
    /// owner or the timeout. A call that cannot be bound to a live turn is a deny.
    async fn decide(&self, secret: Option<&str>, call: ToolCall) -> Decision;
}

/// Whether a gate's answer lets the call run. Anything but an explicit Allow is a deny — an
/// Ask that leaked out of a gate included.
pub fn allows(decision: &Decision) -> bool {
    matches!(decision, Decision::Allow { .. })
}
