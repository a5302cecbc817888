//! One turn: build the prompt, run the agent, stream its answer back into the room, and turn
//! every failure into a short message in the room. A turn always ends with the batch either
//! answered or reported failed — or, when the agent reached its usage limit, handed back to
//! the worker unanswered, with the agent put on hold (`hold`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{hold, prompt, QueuedMessage, RoomDeps};
use crate::agent::{AgentError, TurnContext};
use crate::approval::TurnBinding;
use crate::connector::{Capabilities, ConnectorError};
use crate::model::{AgentEvent, PostedMessage, ReplyTarget, Role, RoomKey, TurnEnd, TurnRequest};
use crate::outbox::Outbox;
use crate::state::ThreadSeen;
use crate::text;

/// Connector calls that hang must not hold a room forever.
const CONNECTOR_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What the worker needs to know after a turn.
#[derive(Debug, Default)]
pub struct TurnReport {
    /// Messages this turn answered or reported failed.
    pub message_ids: Vec<String>,
    /// Session to resume next time.
    pub session_id: Option<String>,
    /// `session_id` replaces the worker's (a new session, or a lost one cleared).
    pub session_changed: bool,
    /// Messages of a turn cancelled before its agent started (waiting for a slot): they go
    /// back to the front of the queue.
    pub unstarted: Vec<QueuedMessage>,
    /// What the agent reported the turn used.
    pub usage: Option<crate::model::Usage>,
    /// In a thread with its own session, a turn that ran: how far the session has now seen
    /// the thread.
    pub thread_seen: Option<ThreadSeen>,
    /// The agent reached its usage limit: it is on hold, and the batch is back in
    /// `unstarted`, neither answered nor failed.
    pub held: bool,
}

pub struct TurnRunner {
    pub key: RoomKey,
    pub deps: RoomDeps,
    pub session_id: Option<String>,
    /// The room's model (`!model`), unless the message names its own (an API request).
    pub model: Option<String>,
    pub batch: Vec<QueuedMessage>,
    pub cancel: CancellationToken,
    /// The previous turn's "stopped typing", awaited before this turn says it is typing, so
    /// the two never arrive out of order.
    pub typing_off: Option<JoinHandle<()>>,
    /// In a thread with its own session: how far the session has seen the thread (`None`:
    /// nothing yet, so every earlier message is context).
    pub thread_seen: Option<ThreadSeen>,
}

impl TurnRunner {
    pub async fn run(self) -> TurnReport {
        let started = Instant::now();
        let message_ids: Vec<String> = self.batch.iter().map(|q| q.message.id.clone()).collect();
        let Some(anchor) = self.batch.last() else {
            return TurnReport::default();
        };
        let target = anchor.message.reply_target();
        let mut role = self
            .batch
            .iter()
            .map(|q| q.role)
            .min()
            .unwrap_or(Role::Guest);
        let outbox = self.deps.outbox.clone();
        let caps = outbox.capabilities();
        let mut prompt = prompt::build(&self.deps.platform, &self.batch);
        let mut thread_seen = None;
        if let (Some(thread), true) = (&self.key.thread, caps.threads) {
            let context = self.thread_context(anchor, thread, role).await;
            prompt = context.block + &prompt;
            thread_seen = context.seen;
            role = context.role;
        }
        if let Some(previous) = self.typing_off {
            let _ = previous.await;
        }
        best_effort(outbox.typing(&target, true)).await;
        // Wait for a free agent slot; a stop while waiting ends the turn unanswered, and its
        // messages stay pending for the next start.
        let slot = tokio::select! {
            permit = self.deps.turn_slots.clone().acquire_owned() => permit.ok(),
            _ = self.cancel.cancelled() => None,
        };
        let Some(_slot) = slot else {
            return TurnReport {
                message_ids: Vec::new(),
                session_id: self.session_id.clone(),
                session_changed: false,
                unstarted: self.batch,
                usage: None,
                thread_seen: None,
                held: false,
            };
        };

        let (events_tx, mut events_rx) = mpsc::channel::<AgentEvent>(64);
        let binding = self.deps.approvals.as_ref().map(|a| {
            a.bind_turn(TurnBinding {
                room: self.key.clone(),
                target: target.clone(),
                role,
                agent: self.deps.agent_config.clone(),
                outbox: self.deps.outbox.clone(),
                asking: self.deps.asking.clone(),
            })
        });
        let ctx = TurnContext {
            events: events_tx,
            cancel: self.cancel.clone(),
            gate: binding.as_ref().map(|(ticket, _)| ticket.clone()),
        };
        let request = TurnRequest {
            room: self.key.clone(),
            session: self.session_id.clone(),
            prompt,
            role,
            model: anchor
                .message
                .conversation
                .as_ref()
                .and_then(|c| c.model.clone())
                .or_else(|| self.model.clone()),
            output_schema: anchor
                .message
                .conversation
                .as_ref()
                .and_then(|c| c.output_schema.clone()),
        };
        info!(role = %role, messages = message_ids.len(), resume = request.session.is_some(), "turn started");
        let agent = self.deps.agent.clone();
        let run = agent.run_turn(request, ctx);
        tokio::pin!(run);
        // A platform answering requests takes the events as data; a chat room gets them
        // as a message that grows.
        let answers_requests = outbox.answers_requests();
        let mut reply = ReplyStream::new(outbox.clone(), target.clone(), caps, self.cancel.clone());
        let agent_name = self.deps.agent_config.name.clone();
        // Whether the agent said or did anything (text, a tool call) before the turn ended:
        // such a turn is not run again after a usage limit, since its tools would run twice.
        let mut acted = false;
        let mut observe = |event: &AgentEvent| {
            acted |= matches!(
                event,
                AgentEvent::Text { .. } | AgentEvent::ToolStart { .. }
            );
            if let AgentEvent::RateLimit {
                status,
                resets_at,
                kind,
            } = event
            {
                let state = hold::LimitState {
                    status: status.clone(),
                    kind: kind.clone(),
                    resets_at: *resets_at,
                };
                self.deps.holds.observe(&agent_name, state);
            }
        };
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                Some(event) = events_rx.recv() => {
                    observe(&event);
                    reply.deliver(event, answers_requests).await;
                }
                _ = reply.flush_due(), if !answers_requests => reply.flush().await,
            }
        };
        while let Ok(event) = events_rx.try_recv() {
            observe(&event);
            reply.deliver(event, answers_requests).await;
        }
        drop(binding);

        let mut report = TurnReport {
            message_ids,
            session_id: self.session_id.clone(),
            session_changed: false,
            unstarted: Vec::new(),
            usage: None,
            thread_seen: None,
            held: false,
        };
        crate::metrics::turn_ended(
            &self.deps.agent_config.name,
            result.as_ref().err().map(AgentError::kind),
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(outcome) => {
                if outcome.session_id.is_some() && outcome.session_id != self.session_id {
                    report.session_id = outcome.session_id.clone();
                    report.session_changed = true;
                }
                if !outcome.denied_tools.is_empty() {
                    info!(denied = ?outcome.denied_tools, "tools denied during turn");
                }
                if let Some(usage) = &outcome.usage {
                    let mut entry = crate::ledger::Entry::new(usage, std::time::SystemTime::now());
                    entry.connector = self.key.connector.to_string();
                    // The platform room: its threads' sessions are spending of the room.
                    entry.room = self.key.of_room().to_string();
                    entry.user = anchor.message.sender.username.clone();
                    entry.agent = self.deps.agent_config.name.clone();
                    entry.session = outcome.session_id.clone().or(self.session_id.clone());
                    entry.duration_ms = started.elapsed().as_millis() as u64;
                    self.deps.store.ledger().record(&entry);
                }
                log_usage(outcome.usage.as_ref());
                report.usage = outcome.usage.clone();
                report.thread_seen = thread_seen;
                if answers_requests {
                    let end = TurnEnd::Answered {
                        text: outcome.text,
                        usage: outcome.usage,
                    };
                    outbox.conclude(&target, end).await;
                } else {
                    reply.finish(&outcome.text).await;
                }
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "turn finished"
                );
            }
            Err(e) => {
                let reference = short_ref();
                error!(reference = %reference, error = %e, "turn failed");
                match (&e, reply.started_session.take()) {
                    (AgentError::SessionNotFound(_), _) => {
                        report.session_id = None;
                        report.session_changed = true;
                    }
                    // A first turn that failed after its session was created: keep it, so
                    // the conversation so far is not lost with the next message.
                    (_, Some(created)) if self.session_id.is_none() => {
                        report.session_id = Some(created);
                        report.session_changed = true;
                    }
                    _ => {}
                }
                // An agent that said or did something has read the prompt: a kept session has
                // seen the thread's context.
                if acted {
                    report.thread_seen = thread_seen;
                }
                // The limit is the account's: every room on this agent holds. A chat room's
                // messages wait for the reset; an API caller, who waits for its own answer,
                // is told at once, and so is a room whose turn had begun to act (run again,
                // its tool calls would run twice).
                if let AgentError::RateLimited {
                    resets_at,
                    kind,
                    usage,
                } = &e
                {
                    let now = std::time::SystemTime::now();
                    let kind = kind.clone();
                    self.deps
                        .holds
                        .hold(&agent_name, *resets_at, kind, *usage, now);
                    if !answers_requests && anchor.message.conversation.is_none() && !acted {
                        report.message_ids.clear();
                        report.unstarted = self.batch;
                        report.held = true;
                        return report;
                    }
                }
                if answers_requests {
                    let end = TurnEnd::Failed {
                        message: e.user_message(&reference),
                        timed_out: matches!(e, AgentError::Timeout(_)),
                    };
                    outbox.conclude(&target, end).await;
                } else {
                    reply.fail(&e.user_message(&reference)).await;
                }
            }
        }
        // "Stopped typing" (which a web chat reads as "answer complete") is sent by the
        // worker once it has recorded this report: see `RoomWorker::end_turn`.
        report
    }
}

impl TurnRunner {
    /// The context block for a turn in a thread with its own session: the thread's messages
    /// since the session last saw it, up to the turn's own, without the turn's own (a
    /// platform that cannot be read is said in the block; the turn still runs). Messages of
    /// authors with no role on the connector are left out (counted in the block): the
    /// gateway would not have taken their words as a message, so it does not pass them on.
    ///
    /// A guest's words in the thread steer the turn as much as a guest's message in a
    /// catch-up batch: the turn runs with the lowest role among its senders (`role`) and the
    /// authors shown.
    async fn thread_context(
        &self,
        anchor: &QueuedMessage,
        thread: &str,
        role: Role,
    ) -> ThreadContext {
        let own = self
            .batch
            .iter()
            .map(|q| (q.message.id.as_str(), q.message.ts));
        let room = &anchor.message.room;
        let read = self
            .deps
            .outbox
            .thread_history(&room.id, thread, prompt::MAX_THREAD_CONTEXT);
        // A stop does not wait for the read (the slot wait that follows sees it too).
        let read = async {
            tokio::select! {
                r = tokio::time::timeout(THREAD_READ_TIMEOUT, read) => Some(r),
                _ = self.cancel.cancelled() => None,
            }
        };
        let (earlier, unreadable) = match read.await {
            Some(Ok(Ok(messages))) => (messages, None),
            Some(Ok(Err(e))) => {
                warn!(error = %e, "could not read the thread's earlier messages");
                (Vec::new(), Some(e.to_string()))
            }
            Some(Err(_)) => {
                warn!("reading the thread's earlier messages timed out");
                (Vec::new(), Some("timed out".to_string()))
            }
            None => (Vec::new(), Some("the turn was stopped".to_string())),
        };
        let until = anchor.message.ts;
        let unseen: Vec<_> = earlier
            .into_iter()
            .filter(|m| !self.batch.iter().any(|q| q.message.id == m.id))
            .filter(|m| m.ts <= until)
            .filter(|m| {
                !self
                    .thread_seen
                    .as_ref()
                    .is_some_and(|s| s.covers(&m.id, m.ts))
            })
            .collect();
        // What could not be read was not seen: the position stays where it was, so the next
        // turn shows it.
        let seen = unreadable
            .is_none()
            .then(|| ThreadSeen::of(own.chain(unseen.iter().map(|m| (m.id.as_str(), m.ts)))));
        let mut turn_role = role;
        let total = unseen.len();
        let shown: Vec<_> = unseen
            .into_iter()
            .filter(|m| match self.deps.users.role_of(&m.sender) {
                // The bot's own words (a thread's root) are shown; they carry no role.
                _ if m.own => true,
                Some(r) => {
                    turn_role = turn_role.min(r);
                    true
                }
                None => false,
            })
            .collect();
        let block = prompt::thread_context(
            &self.deps.platform,
            &room.name,
            &shown,
            total - shown.len(),
            unreadable.as_deref(),
            (turn_role < role).then_some(turn_role),
        );
        ThreadContext {
            block,
            seen,
            role: turn_role,
        }
    }
}

/// What a thread turn is told of the thread before its own messages.
struct ThreadContext {
    block: String,
    /// How far the session will have seen the thread once the turn ran (`None`: no further
    /// than before, the thread could not be read).
    seen: Option<ThreadSeen>,
    /// The role the turn runs with.
    role: Role,
}

/// How long reading a thread's earlier messages may hold a turn.
const THREAD_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// The turn's tokens and cost as the agent reported them (a cost only the log shows).
fn log_usage(usage: Option<&crate::model::Usage>) {
    if let Some(u) = usage {
        info!(
            input_tokens = u.input_tokens,
            output_tokens = u.output_tokens,
            cache_read_tokens = u.cache_read_tokens,
            cache_write_tokens = u.cache_write_tokens,
            cost_usd = ?u.cost_usd,
            "turn usage"
        );
    }
}

/// Eight hex digits tying a room message to its log line.
fn short_ref() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Runs a connector call that may fail without consequence (typing), bounded in time.
pub(super) async fn best_effort(
    call: impl std::future::Future<Output = Result<(), ConnectorError>>,
) {
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "best-effort connector call failed"),
        Err(_) => tracing::debug!("best-effort connector call timed out"),
    }
}

/// Pauses between attempts at a final delivery: a platform that is reconnecting gets about
/// half a minute before the answer is given up (and logged).
const DELIVERY_RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(8),
    Duration::from_secs(20),
];

/// Runs a final delivery, retrying transient failures (not connected, timeouts, transport
/// errors) but not refusals, unless the turn is being stopped.
async fn persistently<T, Fut>(
    cancel: &CancellationToken,
    mut call: impl FnMut() -> Fut,
) -> Result<T, ConnectorError>
where
    Fut: std::future::Future<Output = Result<T, ConnectorError>>,
{
    let mut delays = DELIVERY_RETRY_DELAYS.iter();
    loop {
        let e = match with_timeout(call()).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let transient = matches!(
            e,
            ConnectorError::NotConnected(_) | ConnectorError::Other(_)
        );
        let Some(delay) = delays.next().filter(|_| transient) else {
            return Err(e);
        };
        warn!(error = %e, retry_in = ?delay, "delivery failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = cancel.cancelled() => return Err(e),
        }
    }
}

async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    tokio::time::timeout(CONNECTOR_CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(ConnectorError::Other("timed out".into())))
}

/// Streams an answer into the room: on platforms that can edit, one message grows as text
/// blocks arrive (edits rate-limited); elsewhere the whole answer is sent at the end.
struct ReplyStream {
    outbox: Arc<dyn Outbox>,
    target: ReplyTarget,
    caps: Capabilities,
    text: String,
    message: Option<PostedMessage>,
    shown: String,
    last_flush: Option<Instant>,
    retry_noticed: bool,
    cancel: CancellationToken,
    /// The session the agent reported, kept in case the turn fails.
    started_session: Option<String>,
}

impl ReplyStream {
    fn new(
        outbox: Arc<dyn Outbox>,
        target: ReplyTarget,
        caps: Capabilities,
        cancel: CancellationToken,
    ) -> Self {
        ReplyStream {
            outbox,
            target,
            caps,
            text: String::new(),
            message: None,
            shown: String::new(),
            last_flush: None,
            retry_noticed: false,
            cancel,
            started_session: None,
        }
    }

    /// Hands one agent event on: to the platform as data when it answers requests (the
    /// session is still noted, in case the turn fails), else into the growing message.
    async fn deliver(&mut self, event: AgentEvent, answers_requests: bool) {
        if !answers_requests {
            return self.on_event(event).await;
        }
        if let AgentEvent::SessionStarted { session_id } = &event {
            self.started_session = Some(session_id.clone());
        }
        self.outbox.progress(&self.target, &event).await;
    }

    async fn on_event(&mut self, event: AgentEvent) {
        match event {
            AgentEvent::SessionStarted { session_id } => self.started_session = Some(session_id),
            AgentEvent::Text { text } => {
                if !self.text.is_empty() {
                    self.text.push('\n');
                }
                self.text.push_str(&text);
                if self.caps.edit && self.flush_allowed() {
                    self.flush().await;
                }
            }
            AgentEvent::Retrying {
                attempt,
                max,
                error,
                ..
            } if !self.retry_noticed => {
                self.retry_noticed = true;
                warn!(attempt, max, error = %error, "agent is retrying the model API");
                let notice = format!("⏳ The model API is not answering ({error}); retrying…");
                if let Err(e) = with_timeout(self.outbox.post(&self.target, &notice)).await {
                    warn!(error = %e, "could not post retry notice");
                }
            }
            _ => {}
        }
    }

    fn flush_allowed(&self) -> bool {
        self.last_flush
            .is_none_or(|t| t.elapsed() >= self.caps.edit_interval)
    }

    /// Resolves when unflushed text is waiting and the edit interval has passed.
    async fn flush_due(&self) {
        if !self.caps.edit || self.shown == self.streaming_view() {
            return std::future::pending().await;
        }
        if let Some(t) = self.last_flush {
            tokio::time::sleep_until(t + self.caps.edit_interval).await;
        }
    }

    /// The text shown while streaming: cut to the platform limit.
    fn streaming_view(&self) -> String {
        let max = self.caps.max_message_len.saturating_sub(2).max(1);
        text::truncate(&self.text, max)
    }

    async fn flush(&mut self) {
        let view = self.streaming_view();
        if view.is_empty() || view == self.shown {
            return;
        }
        self.last_flush = Some(Instant::now());
        let result = match &self.message {
            None => with_timeout(self.outbox.post(&self.target, &view))
                .await
                .map(|m| self.message = Some(m)),
            Some(m) => with_timeout(self.outbox.edit(&self.target, m, &view)).await,
        };
        match result {
            Ok(()) => self.shown = view,
            Err(e) => warn!(error = %e, "streaming update failed"),
        }
    }

    async fn finish(&mut self, answer: &str) {
        let answer = if answer.trim().is_empty() {
            "(the agent finished without a text answer)"
        } else {
            answer
        };
        let (c, to, cancel) = (&self.outbox, &self.target, &self.cancel);
        let delivered = match (&self.message, self.caps.edit) {
            (Some(m), true) => {
                let parts = text::split_message(answer, self.caps.max_message_len);
                let mut result = if parts[0] != self.shown {
                    persistently(cancel, || c.edit(to, m, &parts[0])).await
                } else {
                    Ok(())
                };
                for part in &parts[1..] {
                    if result.is_err() {
                        break;
                    }
                    result = persistently(cancel, || c.post(to, part)).await.map(|_| ());
                }
                result
            }
            _ => persistently(cancel, || c.send_reply(to, answer)).await,
        };
        if let Err(e) = delivered {
            error!(error = %e, "could not deliver the answer");
            let notice = "❌ The answer could not be delivered to this room. Please try again.";
            if let Err(e) = persistently(cancel, || c.post(to, notice)).await {
                error!(error = %e, "could not report the failed delivery either");
            }
        }
    }

    async fn fail(&mut self, message: &str) {
        let (c, to) = (&self.outbox, &self.target);
        if let Err(e) = persistently(&self.cancel, || c.post(to, message)).await {
            error!(error = %e, "could not post the failure notice");
        }
    }
}
