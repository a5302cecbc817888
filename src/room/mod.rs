//! Room workers: one task per room, owning that room's queue, its agent session id and the
//! turn that is running. Turns run strictly one at a time, in arrival order; messages that
//! arrive during a turn are merged into the next one (catch-up).
//!
//! Owns: the room's queue (bounded, persisted so a restart loses nothing), pause/resume/reset,
//! the session id (the worker is its only writer), the room's model and agent overrides and
//! past sessions, carrying out room commands ([`controls`]), the budget check before a turn,
//! holding the queue while the agent is at its usage limit ([`hold`]), and running turns
//! through [`turn`].
//! Must not import: platform or agent wire formats — it answers through `dyn Outbox` and runs
//! turns through `dyn AgentBackend` only.

mod controls;
pub mod hold;
pub mod prompt;
mod turn;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::agent::AgentBackend;
use crate::approval::{Approvals, Asking};
use crate::commands::Command;
use crate::config::{AgentConfig, Budgets, CommandsConfig};
use crate::connector::Acceptance;
use crate::model::{ReplyTarget, Role, RoomKey};
use crate::outbox::Outbox;
use crate::state::{AgentHold, PendingMessage, StateStore};

pub use prompt::QueuedMessage;
use turn::{TurnReport, TurnRunner};

/// "This room is idle and has received `offers_seen` messages in all." The dispatcher drops
/// the room's handle only if it has offered exactly that many, so no message is in flight.
#[derive(Debug)]
pub struct IdleReport {
    pub key: RoomKey,
    /// Which worker of this room reports (a released worker may still report once).
    pub generation: u64,
    pub offers_seen: u64,
}

/// Requests a room worker accepts besides messages.
#[derive(Debug)]
pub enum RoomControl {
    Pause,
    Resume,
    /// Forget the session (the next turn starts a fresh one); stops a running turn.
    Reset {
        done: oneshot::Sender<()>,
    },
    Status {
        reply: oneshot::Sender<RoomStatus>,
    },
    /// Its sender no longer waits for the message `id` (an API caller hung up): its turn is
    /// stopped (and its agent killed), or it leaves the queue.
    Cancel {
        id: String,
    },
    /// A room command (`!stop`, `!status`, …); boxed so the control channel's slots stay
    /// small.
    Command(Box<RoomCommand>),
}

/// A command already allowed for `role` by the dispatcher; the answer goes to `target`.
#[derive(Debug)]
pub struct RoomCommand {
    pub command: Command,
    pub role: Role,
    /// The sender's user name (whose budget `!status` shows).
    pub sender: String,
    pub target: ReplyTarget,
}

#[derive(Clone, Debug)]
pub struct RoomStatus {
    pub session_id: Option<String>,
    pub paused: bool,
    pub busy: bool,
    pub queued: usize,
}

/// Boxed so each slot of a room's hand-off channel stays small: a thousand idle rooms should
/// not each hold a block of full messages.
type Offer = (Box<QueuedMessage>, oneshot::Sender<Acceptance>);

/// The dispatcher's handle to a room worker. Controls have their own channel so they never
/// wait behind messages.
#[derive(Clone)]
pub struct RoomHandle {
    messages: mpsc::Sender<Offer>,
    controls: mpsc::Sender<RoomControl>,
}

impl RoomHandle {
    /// Hands a message to the room; the worker sends its verdict on `ack`. Never waits: a
    /// full hand-off channel counts as busy, and the verdict is then the caller's to give.
    pub fn offer(
        &self,
        message: QueuedMessage,
        ack: oneshot::Sender<Acceptance>,
    ) -> Result<(), (String, oneshot::Sender<Acceptance>)> {
        match self.messages.try_send((Box::new(message), ack)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full((_, ack))) => {
                Err(("too many messages are arriving at once".into(), ack))
            }
            Err(mpsc::error::TrySendError::Closed((_, ack))) => {
                Err(("the room is shutting down".into(), ack))
            }
        }
    }

    /// Queues a control without waiting, in order with earlier ones; `Err` gives it back when
    /// the channel is full or closed.
    pub fn try_control(&self, c: RoomControl) -> Result<(), RoomControl> {
        self.controls.try_send(c).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    pub async fn control(&self, c: RoomControl) -> bool {
        self.controls.send(c).await.is_ok()
    }
}

/// One configured agent a room can talk to.
#[derive(Clone)]
pub struct AgentChoice {
    pub backend: Arc<dyn AgentBackend>,
    pub config: Arc<AgentConfig>,
    /// The broker, when this agent's tool calls are asked about.
    pub approvals: Option<Arc<Approvals>>,
}

/// Everything a room worker needs, shared by all rooms of a watcher.
#[derive(Clone)]
pub struct RoomDeps {
    pub watcher: Arc<str>,
    /// Where the room's replies, notices and typing go.
    pub outbox: Arc<dyn Outbox>,
    pub platform: Arc<str>,
    /// The agent of this turn: the watcher's, or the one the room was switched to.
    pub agent: Arc<dyn AgentBackend>,
    pub agent_config: Arc<AgentConfig>,
    pub approvals: Option<Arc<Approvals>>,
    /// Every configured agent, by name, for `!agent`.
    pub agents: Arc<BTreeMap<String, AgentChoice>>,
    pub commands: Arc<CommandsConfig>,
    pub budgets: Arc<Budgets>,
    /// The connector's owners and guests: the authors of a thread's earlier messages are
    /// resolved with them (a turn's own senders were resolved by the dispatcher).
    pub users: crate::config::UserRoles,
    /// `merge_window_ms`: how long the first message of an idle room waits for others.
    pub merge_window: Duration,
    /// Where an owner is asked about this room's tool calls.
    pub asking: Asking,
    pub store: StateStore,
    pub max_queue_depth: usize,
    /// Shared by every room: bounds agent processes running at once.
    pub turn_slots: Arc<tokio::sync::Semaphore>,
    /// Shared by every room: the agents held for their usage limit.
    pub holds: Arc<hold::Holds>,
    /// Where an idle worker offers to stop, after this long with nothing to do (the
    /// dispatcher decides; see [`IdleReport`]).
    pub idle: mpsc::Sender<IdleReport>,
    pub idle_after: Duration,
    pub tracker: TaskTracker,
    /// Stop taking new turns (graceful shutdown: running turns may finish).
    pub drain: CancellationToken,
    /// Stop now: running turns are cancelled and their agents killed.
    pub kill: CancellationToken,
}

/// Starts a worker for `key`. `restored` are messages accepted before a restart.
pub fn spawn(
    key: RoomKey,
    room_name: String,
    deps: RoomDeps,
    paused: bool,
    restored: Vec<QueuedMessage>,
    generation: u64,
) -> RoomHandle {
    // The hand-off channel only needs to absorb bursts between two polls of the worker; the
    // real bound is `max_queue_depth`, checked by the worker.
    let (messages, rx) = mpsc::channel(deps.max_queue_depth.clamp(8, 256));
    let (controls, ctl_rx) = mpsc::channel(16);
    let stored = deps.store.room(&key).unwrap_or_default();
    let holds_changed = deps.holds.subscribe();
    let mut worker = RoomWorker {
        key,
        room_name,
        pending: restored.into(),
        session_id: stored.session_id,
        model: stored.model,
        agent: stored.agent,
        hold_until: None,
        told_hold: None,
        told_retry: None,
        holds_changed,
        paused,
        paused_notice_sent: false,
        running: None,
        typing_off: None,
        offers_seen: 0,
        generation,
        ephemeral: false,
        release_offered: false,
        deps: deps.clone(),
    };
    // Messages restored during a hold were accepted, and the room told, before the restart.
    if !worker.pending.is_empty() {
        worker.told_hold = worker.usage_hold().map(|h| h.until);
    }
    deps.tracker.spawn(worker.run(rx, ctl_rx));
    RoomHandle { messages, controls }
}

struct RunningTurn {
    task: JoinHandle<TurnReport>,
    cancel: CancellationToken,
    /// Kept here too, so a turn that panicked is still reported and cleared.
    message_ids: Vec<String>,
    target: ReplyTarget,
}

struct RoomWorker {
    key: RoomKey,
    room_name: String,
    pending: VecDeque<QueuedMessage>,
    session_id: Option<String>,
    /// The room's `!model`, passed with every turn that does not name its own.
    model: Option<String>,
    /// The room's `!agent`, when it is not the watcher's.
    agent: Option<String>,
    /// The merge window of an idle room's first message: no turn starts before it ends.
    hold_until: Option<tokio::time::Instant>,
    /// The end of the usage-limit hold this room was last told about.
    told_hold: Option<u64>,
    /// That hold's reset was unknown (only a time to try again), with this many messages
    /// waiting: a retry that meets the limit again with the same messages is not told again
    /// (until a turn runs, the queue is dropped or an admin resumes the room).
    told_retry: Option<usize>,
    /// Wakes the worker when any agent's hold is set or cleared.
    holds_changed: watch::Receiver<()>,
    paused: bool,
    paused_notice_sent: bool,
    running: Option<RunningTurn>,
    /// The last turn's "stopped typing", still on its way (see `end_turn`).
    typing_off: Option<JoinHandle<()>>,
    offers_seen: u64,
    generation: u64,
    /// The room exists for one API request: forgotten, and offered for release, as soon as
    /// its turn is over.
    ephemeral: bool,
    /// An idle report was made since the last message arrived.
    release_offered: bool,
    deps: RoomDeps,
}

impl RoomWorker {
    #[tracing::instrument(name = "room", skip_all, fields(room = %self.key))]
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Offer>,
        mut controls: mpsc::Receiver<RoomControl>,
    ) {
        self.persist_room_info();
        // Set once the dispatcher dropped our handle: finish what is here, then stop.
        let mut closed = false;
        loop {
            self.maybe_start_turn();
            let draining = self.deps.drain.is_cancelled();
            let idle = self.running.is_none() && self.pending.is_empty();
            let idle_after = self.idle_after();
            if (draining || closed) && idle || draining && self.running.is_none() {
                break;
            }
            // One timer for the end of the hold; a hold set or cleared early wakes us too.
            let usage_hold_ends = (self.running.is_none() && !self.pending.is_empty())
                .then(|| self.usage_hold())
                .flatten()
                .map(|h| hold::end_instant(&h));
            tokio::select! {
                // A finished turn is recorded before anything else is looked at, so a status
                // request that follows the end of a turn sees its session and queue.
                biased;
                joined = join_running(&mut self.running) => {
                    let running = self.running.take().expect("joined a running turn");
                    self.end_turn(joined, running);
                }
                offer = rx.recv(), if !draining && !closed => match offer {
                    Some((m, ack)) => {
                        self.offers_seen += 1;
                        self.release_offered = false;
                        let verdict = self.accept(*m);
                        let _ = ack.send(verdict);
                    }
                    None => closed = true,
                },
                _ = tokio::time::sleep(idle_after), if idle && !closed => {
                    self.release_offered = true;
                    let report = IdleReport {
                        key: self.key.clone(),
                        generation: self.generation,
                        offers_seen: self.offers_seen,
                    };
                    let _ = self.deps.idle.try_send(report);
                }
                _ = sleep_until_some(self.hold_until), if self.running.is_none() => {
                    self.hold_until = None;
                }
                _ = sleep_until_some(usage_hold_ends) => {}
                Ok(()) = self.holds_changed.changed() => {}
                Some(c) = controls.recv() => self.control(c).await,
                _ = self.deps.drain.cancelled(), if !draining => {}
                _ = self.deps.kill.cancelled() => break,
            }
        }
        if let Some(mut running) = self.running.take() {
            running.cancel.cancel();
            let joined = (&mut running.task).await;
            self.end_turn(joined, running);
        }
    }

    /// Records a joined turn, then tells the room the bot stopped typing. The order matters:
    /// a client that takes "stopped typing" as "answer complete" and asks for the room's
    /// status right away must see this turn's session. A turn task that died is reported
    /// failed in the room, before the typing stops.
    fn end_turn(
        &mut self,
        joined: Result<TurnReport, tokio::task::JoinError>,
        running: RunningTurn,
    ) {
        let target = running.target.clone();
        let (report, notice) = match joined {
            Ok(report) if report.held => (report, Some(EndNotice::UsageLimit)),
            Ok(report) => {
                self.told_retry = None;
                (report, None)
            }
            Err(e) => {
                tracing::error!(error = %e, "turn task died");
                let report = TurnReport {
                    message_ids: running.message_ids,
                    session_id: self.session_id.clone(),
                    session_changed: false,
                    unstarted: Vec::new(),
                    usage: None,
                    thread_seen: None,
                    held: false,
                };
                let notice = "❌ The gateway failed while handling your message. Please try again.";
                (report, Some(EndNotice::Text(notice.to_string())))
            }
        };
        self.finish_turn(report);
        // A turn that met the usage limit is reported even when the room was told of this
        // hold before (an admin cleared it and the limit was still there); only a retry of
        // the same waiting messages after an unknown reset is not (`told_retry`).
        let notice = match notice {
            Some(EndNotice::UsageLimit) => self.usage_hold().and_then(|h| {
                let waiting = self.pending.len();
                let again = !h.reset_known && self.told_retry == Some(waiting);
                self.told_hold = Some(h.until);
                self.told_retry = (!h.reset_known).then_some(waiting);
                (!again).then(|| hold::notice(&h, self.pending.len()))
            }),
            Some(EndNotice::Text(t)) => Some(t),
            None => None,
        };
        let outbox = self.deps.outbox.clone();
        let key = self.key.clone();
        self.typing_off = Some(self.deps.tracker.spawn(async move {
            if let Some(text) = notice {
                post_notice(&*outbox, &key, &target, &text).await;
            }
            turn::best_effort(outbox.typing(&target, false)).await;
        }));
    }

    /// An ephemeral room offers to stop at once, but only once: should that report be lost
    /// (a full channel), it offers again at the usual pace rather than in a busy loop.
    fn idle_after(&self) -> Duration {
        if self.ephemeral && !self.release_offered {
            Duration::ZERO
        } else {
            self.deps.idle_after
        }
    }

    fn accept(&mut self, m: QueuedMessage) -> Acceptance {
        if self.pending.len() >= self.deps.max_queue_depth {
            let reason = format!(
                "⚠️ Too many messages are waiting in this room (limit {}); this one was not queued. Please send it again later.",
                self.deps.max_queue_depth
            );
            self.notify(m.message.reply_target(), reason.clone());
            return Acceptance::Rejected(reason);
        }
        self.ephemeral |= m.message.conversation.as_ref().is_some_and(|c| c.ephemeral);
        let pending = PendingMessage::from_message(&m.message);
        self.deps
            .store
            .update_room(&self.key, |r| r.pending.push(pending));
        if self.paused && !self.paused_notice_sent {
            self.paused_notice_sent = true;
            self.notify(
                m.message.reply_target(),
                "⏸️ The agent in this room is paused; your message is kept and will be answered when an admin resumes it.".into(),
            );
        }
        // The first message of an idle room waits for the merge window; an API request is
        // answered alone, so it never waits.
        let window = self.deps.merge_window;
        if self.running.is_none()
            && self.pending.is_empty()
            && !window.is_zero()
            && m.message.conversation.is_none()
        {
            self.hold_until = Some(tokio::time::Instant::now() + window);
        }
        self.pending.push_back(m);
        Acceptance::Queued
    }

    async fn control(&mut self, c: RoomControl) {
        match c {
            RoomControl::Pause => self.paused = true,
            RoomControl::Resume => {
                self.paused = false;
                self.paused_notice_sent = false;
                self.told_retry = None;
            }
            RoomControl::Reset { done } => {
                self.new_session().await;
                let _ = done.send(());
            }
            RoomControl::Command(c) => {
                let RoomCommand {
                    command,
                    role,
                    sender,
                    target,
                } = *c;
                let answer = self.command(command, role, &sender).await;
                self.notify(target, answer);
            }
            RoomControl::Cancel { id } => {
                if let Some(running) = self
                    .running
                    .as_ref()
                    .filter(|r| r.message_ids.contains(&id))
                {
                    info!(message = %id, "its sender stopped waiting; stopping the turn");
                    running.cancel.cancel();
                } else if let Some(at) = self.pending.iter().position(|q| q.message.id == id) {
                    info!(message = %id, "its sender stopped waiting; dropped from the queue");
                    self.pending.remove(at);
                    self.deps
                        .store
                        .update_room(&self.key, |r| r.pending.retain(|p| p.id != id));
                }
            }
            RoomControl::Status { reply } => {
                let _ = reply.send(RoomStatus {
                    session_id: self.session_id.clone(),
                    paused: self.paused,
                    busy: self.running.is_some(),
                    queued: self.pending.len(),
                });
            }
        }
    }

    /// Stops the running turn, if any, and waits until it has ended (its agent's process
    /// tree killed and reaped, its messages reported); `true` if one was running.
    async fn stop_running(&mut self) -> bool {
        let Some(mut running) = self.running.take() else {
            return false;
        };
        running.cancel.cancel();
        let joined = (&mut running.task).await;
        self.end_turn(joined, running);
        true
    }

    /// Stops a running turn and forgets the session (kept in the past sessions): the next
    /// turn starts a fresh one. Shared by `!new` and the admin `reset`.
    async fn new_session(&mut self) {
        self.stop_running().await;
        // A warm process holds the old session: it would only be replaced at the next
        // message, holding its memory until then.
        self.agent_choice().backend.retire(&self.key).await;
        self.retire_session();
        info!("session reset");
    }

    /// Moves the current session to the room's past ones.
    fn retire_session(&mut self) {
        self.session_id = None;
        let agent = self.agent_name().to_string();
        let now = std::time::SystemTime::now();
        self.deps
            .store
            .update_room(&self.key, |r| r.retire_session(&agent, now));
    }

    /// The agent this room talks to.
    fn agent_choice(&self) -> AgentChoice {
        self.agent
            .as_ref()
            .and_then(|name| self.deps.agents.get(name))
            .cloned()
            .unwrap_or_else(|| AgentChoice {
                backend: self.deps.agent.clone(),
                config: self.deps.agent_config.clone(),
                approvals: self.deps.approvals.clone(),
            })
    }

    fn agent_name(&self) -> &str {
        match &self.agent {
            Some(name) if self.deps.agents.contains_key(name) => name,
            _ => &self.deps.agent_config.name,
        }
    }

    fn maybe_start_turn(&mut self) {
        loop {
            if self.running.is_some()
                || self.paused
                || self.pending.is_empty()
                || self.hold_until.is_some()
                || self.deps.drain.is_cancelled()
            {
                return;
            }
            if let Some(h) = self.usage_hold() {
                // An API caller waits for its own answer: it is told now, not in hours.
                if self.pending[0].message.conversation.is_some() {
                    let refused = self.pending.pop_front().into_iter().collect();
                    self.refuse(refused, hold::refusal(&h));
                    continue;
                }
                return self.tell_hold(h);
            }
            // An API request is answered alone: its caller waits for its own answer.
            let alone = self.pending[0].message.conversation.is_some();
            let batch: Vec<QueuedMessage> = if alone {
                self.pending.pop_front().into_iter().collect()
            } else {
                self.pending.drain(..).collect()
            };
            let Some(refusal) = self.over_budget(&batch) else {
                return self.start_turn(batch);
            };
            // Owners' messages are never held back by a budget: they run without the
            // guests' ones, which are refused.
            let (owners, others): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|q| q.role == Role::Owner);
            self.refuse(others, refusal);
            if !owners.is_empty() {
                return self.start_turn(owners);
            }
        }
    }

    /// The agent's usage-limit hold, if it is held now.
    fn usage_hold(&self) -> Option<AgentHold> {
        let now = std::time::SystemTime::now();
        self.deps.holds.active(self.agent_name(), now)
    }

    /// Tells the room, once per hold, that its waiting messages are kept until the hold ends.
    fn tell_hold(&mut self, h: AgentHold) {
        if self.told_hold == Some(h.until) {
            return;
        }
        self.told_hold = Some(h.until);
        let Some(last) = self.pending.back() else {
            return;
        };
        info!(
            waiting = self.pending.len(),
            "queue held for the agent's usage limit"
        );
        self.notify(
            last.message.reply_target(),
            hold::notice(&h, self.pending.len()),
        );
    }

    /// The budget message when this batch may not run: a batch with a guest's message is
    /// checked against its senders' and the room's budgets; owners' turns always run, and
    /// so do guests' while an owner's `!budget override` lasts.
    /// Only the guests' names are checked: an owner's own total never stops anyone.
    fn over_budget(&self, batch: &[QueuedMessage]) -> Option<String> {
        let role = batch.iter().map(|q| q.role).min()?;
        if role == Role::Owner || !self.deps.budgets.is_set() || self.budget_override().is_some() {
            return None;
        }
        let mut users: Vec<&str> = batch
            .iter()
            .filter(|q| q.role != Role::Owner)
            .map(|q| q.message.sender.username.as_str())
            .collect();
        users.sort_unstable();
        users.dedup();
        // A thread's turns spend the room's budget.
        let room = self.key.of_room().to_string();
        let who = crate::budget::Spenders {
            connector: &self.key.connector,
            users,
            room: &room,
        };
        let now = std::time::SystemTime::now();
        let refusal = self
            .deps
            .store
            .ledger()
            .spending(|s| crate::budget::check(&self.deps.budgets, s, &who, now))?;
        info!(reason = %refusal, "turn not started: budget reached");
        // An API caller has no room to send a command in.
        if batch.iter().any(|q| q.message.conversation.is_some()) {
            return Some(refusal);
        }
        Some(format!(
            "{refusal} An owner can let guests past it until the end of the UTC day with `{}budget override`.",
            self.deps.commands.prefix
        ))
    }

    /// Reports a batch that will not run, and takes it off the persisted queue.
    fn refuse(&mut self, batch: Vec<QueuedMessage>, text: String) {
        let done: Vec<String> = batch.iter().map(|q| q.message.id.clone()).collect();
        let last = done.last().cloned();
        self.deps.store.update_room(&self.key, |r| {
            r.pending.retain(|p| !done.contains(&p.id));
            if last.is_some() {
                r.last_processed = last;
            }
        });
        let Some(anchor) = batch.last() else {
            return;
        };
        let target = anchor.message.reply_target();
        if self.deps.outbox.answers_requests() {
            let outbox = self.deps.outbox.clone();
            self.deps.tracker.spawn(async move {
                let end = crate::model::TurnEnd::Failed {
                    message: text,
                    timed_out: false,
                };
                outbox.conclude(&target, end).await;
            });
        } else {
            self.notify(target, text);
        }
    }

    fn start_turn(&mut self, batch: Vec<QueuedMessage>) {
        let message_ids = batch.iter().map(|q| q.message.id.clone()).collect();
        let target = batch
            .last()
            .map(|q| q.message.reply_target())
            .unwrap_or_default();
        let cancel = self.deps.kill.child_token();
        let choice = self.agent_choice();
        let mut deps = self.deps.clone();
        deps.agent = choice.backend;
        deps.agent_config = choice.config;
        deps.approvals = choice.approvals;
        let runner = TurnRunner {
            key: self.key.clone(),
            deps,
            session_id: self.session_id.clone(),
            model: self.model.clone(),
            batch,
            cancel: cancel.clone(),
            typing_off: self.typing_off.take(),
            thread_seen: self
                .key
                .thread
                .as_ref()
                .and_then(|_| self.deps.store.room(&self.key)?.thread_seen),
        };
        let task = self.deps.tracker.spawn(runner.run());
        self.running = Some(RunningTurn {
            task,
            cancel,
            message_ids,
            target,
        });
    }

    fn finish_turn(&mut self, report: TurnReport) {
        for q in report.unstarted.into_iter().rev() {
            self.pending.push_front(q);
        }
        if report.session_changed {
            self.session_id = report.session_id.clone();
        }
        let usage = report.usage;
        let thread_seen = report.thread_seen;
        let done = report.message_ids;
        if self.ephemeral && self.pending.is_empty() {
            self.deps.store.remove_room(&self.key);
            // No turn will come back to its warm agent process.
            let (agent, key) = (self.deps.agent.clone(), self.key.clone());
            self.deps
                .tracker
                .spawn(async move { agent.retire(&key).await });
            return;
        }
        let session = self.session_id.clone();
        // The agent lost the session: the next one has seen nothing of its thread.
        let lost = report.session_changed && session.is_none();
        let last = done.last().cloned();
        let now = crate::model::epoch_ms(std::time::SystemTime::now());
        self.deps.store.update_room(&self.key, |r| {
            r.pending.retain(|p| !done.contains(&p.id));
            r.session_id = session;
            if last.is_some() {
                r.last_processed = last;
                r.active_ms = Some(now);
            }
            if let Some(u) = &usage {
                r.session_usage.add(u);
            }
            if lost {
                r.thread_seen = None;
            }
            if let Some(seen) = thread_seen {
                r.thread_seen = Some(match r.thread_seen.take() {
                    Some(old) => old.max(seen),
                    None => seen,
                });
            }
        });
    }

    fn persist_room_info(&self) {
        let watcher = self.deps.watcher.to_string();
        let name = self.room_name.clone();
        self.deps.store.update_room(&self.key, |r| {
            r.watcher = watcher;
            r.room_name = name;
        });
    }

    /// Posts a short notice without blocking the worker.
    fn notify(&self, to: ReplyTarget, text: String) {
        let outbox = self.deps.outbox.clone();
        let key = self.key.clone();
        self.deps
            .tracker
            .spawn(async move { post_notice(&*outbox, &key, &to, &text).await });
    }
}

/// What `end_turn` posts before the typing stops.
enum EndNotice {
    /// The turn met the usage limit: the hold's notice, worded once the batch is requeued.
    UsageLimit,
    Text(String),
}

/// Posts a notice, bounded in time; a failure is logged (there is nobody else to tell).
async fn post_notice(outbox: &dyn Outbox, key: &RoomKey, to: &ReplyTarget, text: &str) {
    let posted = tokio::time::timeout(Duration::from_secs(30), outbox.post(to, text)).await;
    match posted {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(room = %key, error = %e, "could not post a notice"),
        Err(_) => warn!(room = %key, "could not post a notice: timed out"),
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the running turn, or forever when there is none (so `select!` skips it).
async fn join_running(
    running: &mut Option<RunningTurn>,
) -> Result<TurnReport, tokio::task::JoinError> {
    match running {
        Some(r) => (&mut r.task).await,
        None => std::future::pending().await,
    }
}
