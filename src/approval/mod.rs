//! Approvals: the broker behind [`ToolGate`]. Every tool call of a permission-enabled agent
//! comes here as a neutral [`ToolCall`] (whatever way its agent asked: Claude Code's http
//! PreToolUse hook, an ACP agent's `session/request_permission`), is bound to the live turn
//! that made it (by a per-run secret), decided by [`crate::policy`], and — when the policy
//! says Ask — waits for an owner of the same room to answer `approve <id>` or `deny <id>`.
//!
//! Owns: turn bindings, pending requests and their ids, timeouts, and the audit log.
//! Knows nothing about: HTTP or any agent's wire format (the agents' adapters convert into
//! [`ToolCall`]); platform wire formats (it asks rooms through `dyn Connector`).
//!
//! Fail closed: a call that cannot be bound to a live turn, a wrong secret, a prompt that
//! cannot be posted, a timeout, or a turn/daemon that ends while waiting is a deny.

pub mod audit;
#[cfg(test)]
mod gate_tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::agent::gate::{GateTicket, ToolGate};
use crate::config::AgentConfig;
use crate::model::{Decision, ReplyTarget, Role, RoomKey, ToolCall};
use crate::outbox::Outbox;
use crate::policy;
use crate::text;
use audit::{AuditLog, AuditRecord, DecidedBy, UnboundSecret};

/// An agent's wait for an answer is the approval timeout plus this margin, so the CLI never
/// gives up on a call the gateway is still deciding (it would fall through to its permission
/// mode).
const GATE_TIMEOUT_MARGIN: Duration = Duration::from_secs(10);

/// An approval prompt is split into at most this many messages of the platform's length; a
/// call whose unmatched parameters need more is denied without asking, as they could not be
/// shown in full (and hundreds of messages would bury the room).
pub const MAX_PROMPT_PARTS: usize = 10;
/// Characters of the matched parameters' one-line summary.
const MATCHED_SUMMARY_CHARS: usize = 300;

/// What the broker needs to know about a running turn.
#[derive(Clone)]
pub struct TurnBinding {
    pub room: RoomKey,
    /// Where prompts for this turn are posted (its room and thread).
    pub target: ReplyTarget,
    /// The lowest role among the turn's senders.
    pub role: Role,
    pub agent: Arc<AgentConfig>,
    /// The turn's own room, where its owner prompt and notices go ([`Asking::InTurnRoom`]).
    pub outbox: Arc<dyn Outbox>,
    /// Who can be asked about a call the policy leaves to an owner.
    pub asking: Asking,
}

/// Where an owner is asked about a turn's calls.
// One per turn binding, never in a collection: boxing the large variant would buy nothing.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Asking {
    /// In the turn's own room (`TurnBinding::target` through `TurnBinding::outbox`).
    InTurnRoom,
    /// Nobody can be asked (an API caller cannot answer a prompt): such a call is denied.
    Nobody,
    /// In a room of another connector; only that room's owners can answer.
    Elsewhere {
        room: RoomKey,
        target: ReplyTarget,
        outbox: Arc<dyn Outbox>,
    },
}

/// The room, target and outbox a prompt goes to, resolved from a binding's [`Asking`].
struct AskPlace<'a> {
    room: &'a RoomKey,
    target: &'a ReplyTarget,
    outbox: &'a Arc<dyn Outbox>,
    /// The prompt says which room asks when it is not the room it is posted in.
    from_elsewhere: bool,
}

impl TurnBinding {
    fn ask_place(&self) -> Option<AskPlace<'_>> {
        match &self.asking {
            Asking::InTurnRoom => Some(AskPlace {
                room: &self.room,
                target: &self.target,
                outbox: &self.outbox,
                from_elsewhere: false,
            }),
            Asking::Nobody => None,
            Asking::Elsewhere {
                room,
                target,
                outbox,
            } => Some(AskPlace {
                room,
                target,
                outbox,
                from_elsewhere: true,
            }),
        }
    }
}

struct LiveTurn {
    binding: TurnBinding,
    pending: HashSet<String>,
}

struct Pending {
    /// The turn's room (`always` grants are kept per session, so per turn room).
    room: RoomKey,
    /// Where it was asked: only owners there may answer.
    asked_in: RoomKey,
    thread: Option<String>,
    secret: String,
    exact: String,
    tool: String,
    answer: oneshot::Sender<Verdict>,
}

#[derive(Debug)]
enum Verdict {
    Approved {
        by: String,
        always: bool,
    },
    Denied {
        by: String,
    },
    /// The turn or the daemon ended while waiting.
    Ended(&'static str),
}

#[derive(Default)]
struct State {
    /// Live turns by their per-run secret.
    turns: HashMap<String, LiveTurn>,
    /// Pending requests by id.
    pending: HashMap<String, Pending>,
    /// The daemon is stopping: nobody will answer a prompt any more.
    stopping: bool,
    /// `approve <id> always`: exact (tool, input) allowed for the rest of a room's session.
    always: HashMap<RoomKey, HashSet<String>>,
}

/// The approval broker of the daemon.
pub struct Approvals {
    state: Mutex<State>,
    /// Self-protection of the runtime dir, built once; each call adds its own room.
    guard: policy::Guard,
    audit: AuditLog,
    /// For notices posted after a decision was returned.
    tasks: tokio_util::task::TaskTracker,
}

/// Unbinds a turn when dropped; its pending requests are denied.
pub struct TurnGuard {
    approvals: Arc<Approvals>,
    secret: String,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.approvals.unbind(&self.secret, "the turn ended");
    }
}

/// An owner's `approve`/`deny` command from chat or from the box.
pub struct Command<'a> {
    pub approve: bool,
    pub id: &'a str,
    pub always: bool,
    /// Who answered (for the audit log).
    pub by: &'a str,
}

impl Approvals {
    /// `protected` adds paths no agent may touch besides the runtime dir (the config file).
    pub fn new(
        runtime_dir: PathBuf,
        protected: &[PathBuf],
        audit: AuditLog,
        tasks: tokio_util::task::TaskTracker,
    ) -> Arc<Self> {
        let mut guard = self_protection(&runtime_dir);
        for p in protected {
            guard = guard.with_protected(p.clone());
        }
        Arc::new(Approvals {
            state: Mutex::new(State::default()),
            guard,
            audit,
            tasks,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a turn; hand the ticket to the agent and keep the guard for the turn's life.
    pub fn bind_turn(self: &Arc<Self>, binding: TurnBinding) -> (GateTicket, TurnGuard) {
        let secret = random_secret();
        let timeout = binding.agent.permissions.timeout + GATE_TIMEOUT_MARGIN;
        self.state().turns.insert(
            secret.clone(),
            LiveTurn {
                binding,
                pending: HashSet::new(),
            },
        );
        (
            GateTicket {
                secret: secret.clone(),
                timeout,
            },
            TurnGuard {
                approvals: self.clone(),
                secret,
            },
        )
    }

    fn unbind(&self, secret: &str, why: &'static str) {
        let mut state = self.state();
        if let Some(turn) = state.turns.remove(secret) {
            for id in turn.pending {
                if let Some(p) = state.pending.remove(&id) {
                    let _ = p.answer.send(Verdict::Ended(why));
                }
            }
        }
    }

    /// The daemon is stopping: everything pending is denied, and calls that would need an
    /// owner's answer are denied from now on; calls the policy allows still run, so turns can
    /// finish within the grace period.
    pub fn shutdown(&self) {
        let mut state = self.state();
        state.stopping = true;
        for (_, p) in state.pending.drain() {
            let _ = p.answer.send(Verdict::Ended("the gateway is stopping"));
        }
    }

    /// Forgets `approve … always` grants of a room (its session was reset).
    pub fn forget_room(&self, room: &RoomKey) {
        self.state().always.remove(room);
    }

    /// Whether `secret` is a live turn's: a listener asks from the request head, before it
    /// lets the call hold anything scarce.
    pub fn is_live(&self, secret: &str) -> bool {
        self.state().turns.contains_key(secret)
    }

    /// Decides one tool call. Never returns Ask: an Ask is resolved by a human or a timeout.
    pub async fn decide(&self, secret: Option<&str>, call: ToolCall) -> Decision {
        let started = Instant::now();
        let binding = secret.and_then(|s| self.state().turns.get(s).map(|t| t.binding.clone()));
        let Some(binding) = binding else {
            let decision = Decision::Deny {
                reason: "blocked: this tool call cannot be bound to a live gateway turn".into(),
            };
            let why = match secret {
                None => UnboundSecret::Missing,
                Some(_) => UnboundSecret::Unknown,
            };
            // Rate-limited with the audit record: these come from outside, in any number.
            if self
                .audit
                .append_unbound(&AuditRecord::unbound(&call, why, &decision))
            {
                warn!(
                    tool = %text::truncate(&call.tool, 64),
                    "tool call with unknown or missing secret denied"
                );
            }
            return decision;
        };
        let secret = secret.unwrap_or_default().to_string();
        let call = Arc::new(call);
        let Some(outcome) = self.check_policy(&binding, &call).await else {
            let decision = Decision::Deny {
                reason: "blocked: the policy check failed unexpectedly".into(),
            };
            self.audit.append(
                &AuditRecord::decided(
                    &binding,
                    &call,
                    &[],
                    &decision,
                    &DecidedBy::Policy,
                    started.elapsed(),
                ),
                &DecidedBy::Policy,
            );
            return decision;
        };
        let params = outcome.parameters.clone();
        let unmatched = outcome.unmatched.clone();
        let exact = format!("{}\u{0}{}", call.tool, call.input);
        let (decision, by) = match outcome.decision {
            Decision::Ask { .. } if self.state().stopping => (
                Decision::Deny {
                    reason: "denied: the gateway is stopping, so no owner can be asked".into(),
                },
                DecidedBy::Policy,
            ),
            Decision::Ask { reason } => {
                let remembered = self
                    .state()
                    .always
                    .get(&binding.room)
                    .is_some_and(|set| set.contains(&exact));
                if remembered {
                    (
                        Decision::Allow {
                            reason: "approved earlier with 'always' for this session".into(),
                        },
                        DecidedBy::Always,
                    )
                } else {
                    let shown = Shown {
                        params: &params,
                        unmatched: &unmatched,
                    };
                    self.ask_owner(&secret, &binding, &call, shown, exact, reason)
                        .await
                }
            }
            other => (other, DecidedBy::Policy),
        };
        self.audit.append(
            &AuditRecord::decided(&binding, &call, &params, &decision, &by, started.elapsed()),
            &by,
        );
        decision
    }

    /// Runs the policy on a blocking thread: a large script takes a while to parse (about
    /// 130 ms per MiB) and paths are resolved on the filesystem, neither of which may stall
    /// the runtime that carries every room. `None` if the check panicked (the caller denies).
    async fn check_policy(
        &self,
        binding: &TurnBinding,
        call: &Arc<ToolCall>,
    ) -> Option<policy::PolicyOutcome> {
        let guard = self
            .guard
            .clone()
            .with_own_room(Some(&binding.room.connector), &binding.room.room);
        let (agent, role, owned) = (Arc::clone(&binding.agent), binding.role, Arc::clone(call));
        let checked = tokio::task::spawn_blocking(move || {
            policy::decide(&policy::PolicyInput {
                role,
                tool: &owned.tool,
                input: &owned.input,
                cwd: &owned.cwd,
                owner_rules: &agent.owner_rules,
                guest_rules: &agent.guest_rules,
                skip_owner_approval: agent.permissions.skip_owner_approval,
                guard: &guard,
            })
        })
        .await;
        match checked {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                warn!(tool = %call.tool, error = %e, "the policy check failed; denying");
                None
            }
        }
    }

    async fn ask_owner(
        &self,
        secret: &str,
        binding: &TurnBinding,
        call: &ToolCall,
        shown: Shown<'_>,
        exact: String,
        reason: String,
    ) -> (Decision, DecidedBy) {
        let Some(place) = binding.ask_place() else {
            info!(tool = %call.tool, room = %binding.room, "no owner can be asked from this room; denying");
            return (
                Decision::Deny {
                    reason: "denied: the call needs an owner's approval, and nobody can be asked from where this turn came (an API request without an approvals room)".into(),
                },
                DecidedBy::Policy,
            );
        };
        let origin = place.from_elsewhere.then(|| {
            format!(
                "**Asked from:** {} ({})\n",
                inline_code(&text::make_visible(&binding.room.to_string())),
                binding.role
            )
        });
        let prompt_text = |id: &str| {
            let body = prompt_text(id, &call.tool, shown);
            match &origin {
                // After the first line, so the prompt still starts with its 🔐 title.
                Some(o) => match body.split_once('\n') {
                    Some((title, rest)) => format!("{title}\n{o}{rest}"),
                    None => body,
                },
                None => body,
            }
        };
        // Sized before anything is registered: a prompt that cannot be shown whole is not
        // asked (the id in it does not matter for its length).
        let limit = place.outbox.capabilities().max_message_len;
        let draft = prompt_text("0000");
        let length = draft.chars().count();
        // The length first: splitting a huge text costs time quadratic in its parts.
        let too_long = length > limit.saturating_mul(MAX_PROMPT_PARTS)
            || text::split_message(&draft, limit).len() > MAX_PROMPT_PARTS;
        if too_long {
            warn!(tool = %call.tool, room = %binding.room, length, "approval prompt too long to show; denying");
            return (
                Decision::Deny {
                    reason: format!(
                        "blocked: the parameters no rule matched are too long to show an owner in full ({length} characters), so no owner was asked"
                    ),
                },
                DecidedBy::Policy,
            );
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.state();
            if !state.turns.contains_key(secret) {
                return (
                    Decision::Deny {
                        reason: "blocked: the turn ended before the call could be asked".into(),
                    },
                    DecidedBy::Policy,
                );
            }
            // Checked again under the lock that `shutdown` takes: a stop that began after
            // the first check would otherwise leave this request waiting out its timeout.
            if state.stopping {
                return (
                    Decision::Deny {
                        reason: "denied: the gateway is stopping, so no owner can be asked".into(),
                    },
                    DecidedBy::Policy,
                );
            }
            let id = loop {
                let candidate = random_id();
                if !state.pending.contains_key(&candidate) {
                    break candidate;
                }
            };
            state.pending.insert(
                id.clone(),
                Pending {
                    room: binding.room.clone(),
                    asked_in: place.room.clone(),
                    thread: place.target.thread.clone(),
                    secret: secret.to_string(),
                    exact,
                    tool: call.tool.clone(),
                    answer: tx,
                },
            );
            if let Some(turn) = state.turns.get_mut(secret) {
                turn.pending.insert(id.clone());
            }
            id
        };
        let prompt = prompt_text(&id);
        info!(id = %id, tool = %call.tool, room = %binding.room, asked_in = %place.room, reason = %reason, "asking an owner");
        // One deadline covers posting the prompt and waiting for the answer, so the decision
        // always comes back before the agent stops waiting (the ticket's timeout: approval
        // timeout + margin).
        let timeout = binding.agent.permissions.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        // `send_reply` splits a long prompt at the platform's limit (code blocks closed and
        // reopened), so nothing of it is cut.
        let posted = tokio::time::timeout(
            Duration::from_secs(30).min(timeout),
            place.outbox.send_reply(place.target, &prompt),
        )
        .await;
        if !matches!(posted, Ok(Ok(_))) {
            self.remove_pending(&id);
            warn!(id = %id, "could not post the approval prompt");
            return (
                Decision::Deny {
                    reason: "blocked: the approval request could not be delivered to the room, so no owner was asked".into(),
                },
                DecidedBy::Policy,
            );
        }
        let verdict = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => Verdict::Ended("the request was dropped"),
            Err(_) => {
                self.remove_pending(&id);
                // The deny goes back now; the notice follows on its own.
                let notice = format!("⏱️ Permission `{id}` timed out — **auto-denied**.");
                let (outbox, target) = (place.outbox.clone(), place.target.clone());
                self.tasks.spawn(async move {
                    let post = outbox.post(&target, &notice);
                    match tokio::time::timeout(Duration::from_secs(30), post).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!(error = %e, "could not post the timeout notice"),
                        Err(_) => warn!("posting the timeout notice timed out"),
                    }
                });
                return (
                    Decision::Deny {
                        reason: format!("denied: no owner answered within {} s", timeout.as_secs()),
                    },
                    DecidedBy::Timeout,
                );
            }
        };
        match verdict {
            Verdict::Approved { by, always } => (
                Decision::Allow {
                    reason: format!(
                        "approved by {by}{}",
                        if always {
                            " (always, for this session)"
                        } else {
                            ""
                        }
                    ),
                },
                DecidedBy::Owner(by),
            ),
            Verdict::Denied { by } => (
                Decision::Deny {
                    reason: format!("denied by {by}"),
                },
                DecidedBy::Owner(by),
            ),
            Verdict::Ended(why) => (
                Decision::Deny {
                    reason: format!("denied: {why} before an owner answered"),
                },
                DecidedBy::Policy,
            ),
        }
    }

    fn remove_pending(&self, id: &str) {
        let mut state = self.state();
        if let Some(p) = state.pending.remove(id) {
            if let Some(turn) = state.turns.get_mut(&p.secret) {
                turn.pending.remove(id);
            }
        }
    }

    /// An owner's command from a chat room. Only requests of the same room (and thread, when
    /// both are threaded) can be resolved; everything else gets the same "no pending" answer
    /// so ids of other rooms cannot be probed.
    pub fn command_from_room(
        &self,
        room: &RoomKey,
        thread: Option<&str>,
        role: Role,
        cmd: Command<'_>,
    ) -> String {
        if role != Role::Owner {
            return "⚠️ Only an owner of this room can approve or deny tool calls.".into();
        }
        self.resolve(cmd, |p| {
            // An owner may answer anywhere in the room the prompt was posted in: a thread
            // with a session of its own is still that room.
            p.asked_in.same_room(room)
                && match (p.thread.as_deref(), thread) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        })
        .unwrap_or_else(|notice| notice)
    }

    /// An admin's command from the box (`agent-chat-gateway approve <id>`): any room.
    pub fn command_from_admin(&self, cmd: Command<'_>) -> Result<String, String> {
        self.resolve(cmd, |_| true)
    }

    /// Resolves a pending request; `Err` carries the notice for an id that resolves nothing.
    fn resolve(
        &self,
        cmd: Command<'_>,
        allowed: impl Fn(&Pending) -> bool,
    ) -> Result<String, String> {
        let id = cmd.id.to_ascii_lowercase();
        if id.chars().count() != 4 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "⚠️ Invalid ID `{}` — expected 4 characters (e.g. `approve a3k9`).",
                text::make_visible(&text::truncate(cmd.id, 12))
            ));
        }
        let mut state = self.state();
        if !state.pending.get(&id).is_some_and(&allowed) {
            return Err(format!("⚠️ No pending permission request with ID `{id}`."));
        }
        let p = state.pending.remove(&id).expect("present");
        if let Some(turn) = state.turns.get_mut(&p.secret) {
            turn.pending.remove(&id);
        }
        if cmd.approve && cmd.always {
            state
                .always
                .entry(p.room.clone())
                .or_default()
                .insert(p.exact.clone());
            info!(id = %id, tool = %p.tool, by = %cmd.by, "approved always for this session");
        }
        let by = cmd.by.to_string();
        let verdict = if cmd.approve {
            Verdict::Approved {
                by,
                always: cmd.always,
            }
        } else {
            Verdict::Denied { by }
        };
        let _ = p.answer.send(verdict);
        Ok(if cmd.approve {
            format!("✅ Permission `{id}` approved.")
        } else {
            format!("❌ Permission `{id}` denied.")
        })
    }

    pub fn pending_count(&self) -> usize {
        self.state().pending.len()
    }
}

#[async_trait]
impl ToolGate for Approvals {
    fn is_live(&self, secret: &str) -> bool {
        Approvals::is_live(self, secret)
    }

    async fn decide(&self, secret: Option<&str>, call: ToolCall) -> Decision {
        Approvals::decide(self, secret, call).await
    }
}

/// What no agent may touch whatever its allow-lists say: the runtime dir (Read may open the
/// attachments downloaded for it).
pub fn self_protection(runtime_dir: &std::path::Path) -> policy::Guard {
    let mut guard = policy::Guard::new(runtime_dir).with_readable(runtime_dir.join("attachments"));
    if let Some(home) = std::env::var_os("HOME") {
        guard = guard.with_home(std::path::Path::new(&home));
    }
    guard
}

/// Parses `approve a3k9`, `deny a3k9`, `approve a3k9 always` (case-insensitive).
pub fn parse_command(text: &str) -> Option<(bool, String, bool)> {
    let mut words = text.split_whitespace();
    let verb = words.next()?.to_ascii_lowercase();
    let approve = match verb.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return None,
    };
    let id = words.next()?.to_string();
    let always = match words.next() {
        None => false,
        Some(w) if approve && w.eq_ignore_ascii_case("always") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((approve, id, always))
}

/// The parameters an approval prompt shows.
#[derive(Clone, Copy)]
struct Shown<'a> {
    /// Every parameter of the call, in order.
    params: &'a [String],
    /// Those no rule matched: what the owner is really asked about.
    unmatched: &'a [String],
}

/// The approval prompt. The parameters no rule matched come first, each whole in its own code
/// block (the prompt may then span several messages, never cut); the matched ones follow as
/// a short one-line summary. When the policy named none unmatched (it decided before the
/// rules, e.g. a call it could not check), every parameter is shown whole. Hidden characters
/// (controls, bidi overrides, zero-width…) are shown as `<U+XXXX>` so a command cannot be
/// disguised.
fn prompt_text(id: &str, tool: &str, shown: Shown<'_>) -> String {
    let tool = inline_code(&text::make_visible(tool));
    let mut out = format!("🔐 **Permission required** `[{id}]`\n**Tool:** {tool}\n");
    let (whole, rest): (&[String], Vec<&String>) = if shown.unmatched.is_empty() {
        (shown.params, Vec::new())
    } else {
        (shown.unmatched, matched_ones(shown.params, shown.unmatched))
    };
    if whole.is_empty() {
        out.push_str("**Params:** (none)\n");
    } else {
        let title = if shown.unmatched.is_empty() {
            "Params"
        } else {
            "Not matched by any rule"
        };
        out.push_str(&format!("**{title} ({}):**\n", whole.len()));
        for param in whole {
            out.push_str(&code_block(&text::make_visible(param)));
        }
    }
    if !rest.is_empty() {
        let summary = rest
            .iter()
            .map(|p| text::make_visible(p))
            .collect::<Vec<_>>()
            .join(" · ");
        out.push_str(&format!(
            "**Matched by rules ({}):** {}\n",
            rest.len(),
            inline_code(&text::truncate(&summary, MATCHED_SUMMARY_CHARS))
        ));
    }
    out.push_str(&format!("Reply `approve {id}` or `deny {id}`"));
    out
}

/// `params` without one occurrence of each of `unmatched`, in order.
fn matched_ones<'a>(params: &'a [String], unmatched: &[String]) -> Vec<&'a String> {
    let mut left: Vec<&String> = unmatched.iter().collect();
    params
        .iter()
        .filter(|p| match left.iter().position(|u| u == p) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .collect()
}

/// One line of inline code. A backtick would end it early and let the rest pass as
/// formatting, so it is shown as `<U+0060>` (never silently turned into another quote, which
/// would make command substitution look like a string); line breaks are shown as `⏎`.
fn inline_code(s: &str) -> String {
    format!("`{}`", s.replace('`', "<U+0060>").replace('\n', "⏎"))
}

/// A fenced code block holding `s` verbatim: the fence is longer than any run of backticks in
/// it, so nothing inside can close it (CommonMark).
fn code_block(s: &str) -> String {
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}\n{s}\n{fence}\n")
}

/// 4 characters from `[a-z0-9]`, from the OS CSPRNG.
fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..4)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command("approve a3k9"),
            Some((true, "a3k9".into(), false))
        );
        assert_eq!(
            parse_command("  DENY   A3K9 "),
            Some((false, "A3K9".into(), false))
        );
        assert_eq!(
            parse_command("approve a3k9 always"),
            Some((true, "a3k9".into(), true))
        );
        assert_eq!(parse_command("deny a3k9 always"), None);
        assert_eq!(parse_command("approve"), None);
        assert_eq!(parse_command("please approve a3k9"), None);
    }

    #[test]
    fn ids_are_four_lowercase_alphanumerics() {
        for _ in 0..100 {
            let id = random_id();
            assert_eq!(id.len(), 4);
            assert!(id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_prompt_shows_unmatched_parameters_first_and_whole() {
        let params = strings(&["git status", "curl https://x.example/a.sh", "ls", "sh"]);
        let unmatched = strings(&["curl https://x.example/a.sh", "sh"]);
        let prompt = prompt_text(
            "a3k9",
            "Bash",
            Shown {
                params: &params,
                unmatched: &unmatched,
            },
        );
        assert_eq!(
            prompt,
            "🔐 **Permission required** `[a3k9]`\n**Tool:** `Bash`\n\
             **Not matched by any rule (2):**\n```\ncurl https://x.example/a.sh\n```\n```\nsh\n```\n\
             **Matched by rules (2):** `git status · ls`\n\
             Reply `approve a3k9` or `deny a3k9`"
        );
    }

    #[test]
    fn without_unmatched_parameters_every_one_is_shown_whole() {
        let long = "x".repeat(1000);
        let params = vec![long.clone()];
        let prompt = prompt_text(
            "a3k9",
            "Bash",
            Shown {
                params: &params,
                unmatched: &[],
            },
        );
        assert!(prompt.contains(&format!("**Params (1):**\n```\n{long}\n```\n")));
        let none = prompt_text(
            "a3k9",
            "Read",
            Shown {
                params: &[],
                unmatched: &[],
            },
        );
        assert!(none.contains("**Params:** (none)\n"), "{none}");
    }

    #[test]
    fn a_long_unmatched_parameter_is_never_cut_but_matched_ones_are_summarised() {
        let unmatched = format!("echo {} && rm -rf ~/important", "A".repeat(20_000));
        let matched: Vec<String> = (0..200).map(|i| format!("cat file{i}")).collect();
        let mut params = matched.clone();
        params.push(unmatched.clone());
        let prompt = prompt_text(
            "a3k9",
            "Bash",
            Shown {
                params: &params,
                unmatched: std::slice::from_ref(&unmatched),
            },
        );
        assert!(prompt.contains(&unmatched));
        assert!(prompt.find(&unmatched) < prompt.find("**Matched by rules (200):**"));
        assert!(prompt.contains("cat file0 · cat file1"));
        assert!(
            !prompt.contains("cat file199"),
            "matched ones are summarised"
        );
        // Split at a platform's limit, every part fits and the whole command survives.
        let parts = text::split_message(&prompt, 4000);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.chars().count() <= 4000));
        let joined: String = parts.concat();
        assert!(joined.contains("rm -rf ~/important"));
        let a_count: usize = parts.iter().map(|p| p.matches('A').count()).sum();
        assert!(a_count >= 20_000, "{a_count}");
    }

    #[test]
    fn hidden_characters_and_backticks_cannot_disguise_a_command() {
        let evil = "echo safe\u{202e}\u{1b}[2K`rm -rf /`\u{200b}";
        let params = vec![evil.to_string(), "ls `x`".to_string()];
        let unmatched = vec![evil.to_string()];
        let prompt = prompt_text(
            "a3k9",
            "Ba\u{202e}sh",
            Shown {
                params: &params,
                unmatched: &unmatched,
            },
        );
        assert!(prompt.contains("**Tool:** `Ba<U+202E>sh`"), "{prompt}");
        // Verbatim in a block (backticks kept: they are the command substitution)...
        assert!(
            prompt.contains("```\necho safe<U+202E><U+001B>[2K`rm -rf /`<U+200B>\n```"),
            "{prompt}"
        );
        // ...and inline code cannot be closed early.
        assert!(prompt.contains("`ls <U+0060>x<U+0060>`"), "{prompt}");
        for c in prompt.chars() {
            assert!(c == '\n' || !text::is_hidden_char(c), "{c:?} in {prompt:?}");
        }
    }

    #[test]
    fn a_code_block_fence_outgrows_the_backticks_inside() {
        assert_eq!(code_block("ls"), "```\nls\n```\n");
        assert_eq!(
            code_block("```\nnot the end\n```"),
            "````\n```\nnot the end\n```\n````\n"
        );
        assert_eq!(code_block("a ````` b"), "``````\na ````` b\n``````\n");
    }

    #[test]
    fn matched_ones_remove_one_occurrence_per_unmatched() {
        let params = strings(&["ls", "rm x", "ls", "rm x"]);
        assert_eq!(
            matched_ones(&params, &strings(&["rm x"])),
            vec!["ls", "ls", "rm x"]
        );
    }
}
