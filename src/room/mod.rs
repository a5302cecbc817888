//! Room workers: one task per room, owning that room's queue, its agent session id and the
//! turn that is running. Turns run strictly one at a time, in arrival order; messages that
//! arrive during a turn are merged into the next one (catch-up).
//!
//! Owns: the room's queue (bounded, persisted so a restart loses nothing), pause/resume/reset,
//! the session id (the worker is its only writer), and running turns through [`turn`].
//! Must not import: platform or agent wire formats — it answers through `dyn Outbox` and runs
//! turns through `dyn AgentBackend` only.

pub mod prompt;
mod turn;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::agent::AgentBackend;
use crate::approval::{Approvals, Asking};
use crate::config::AgentConfig;
use crate::connector::Acceptance;
use crate::model::{ReplyTarget, RoomKey};
use crate::outbox::Outbox;
use crate::state::{PendingMessage, StateStore};

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

/// Everything a room worker needs, shared by all rooms of a watcher.
#[derive(Clone)]
pub struct RoomDeps {
    pub watcher: Arc<str>,
    /// Where the room's replies, notices and typing go.
    pub outbox: Arc<dyn Outbox>,
    pub platform: Arc<str>,
    pub agent: Arc<dyn AgentBackend>,
    pub agent_config: Arc<AgentConfig>,
    pub approvals: Option<Arc<Approvals>>,
    /// Where an owner is asked about this room's tool calls.
    pub asking: Asking,
    pub store: StateStore,
    pub max_queue_depth: usize,
    /// Shared by every room: bounds agent processes running at once.
    pub turn_slots: Arc<tokio::sync::Semaphore>,
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
    let session_id = deps.store.room(&key).and_then(|r| r.session_id);
    let worker = RoomWorker {
        key,
        room_name,
        pending: restored.into(),
        session_id,
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
            Ok(report) => (report, None),
            Err(e) => {
                tracing::error!(error = %e, "turn task died");
                let report = TurnReport {
                    message_ids: running.message_ids,
                    session_id: self.session_id.clone(),
                    session_changed: false,
                    unstarted: Vec::new(),
                };
                let notice = "❌ The gateway failed while handling your message. Please try again.";
                (report, Some(notice.to_string()))
            }
        };
        self.finish_turn(report);
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
        self.pending.push_back(m);
        Acceptance::Queued
    }

    async fn control(&mut self, c: RoomControl) {
        match c {
            RoomControl::Pause => self.paused = true,
            RoomControl::Resume => {
                self.paused = false;
                self.paused_notice_sent = false;
            }
            RoomControl::Reset { done } => {
                if let Some(mut running) = self.running.take() {
                    running.cancel.cancel();
                    let joined = (&mut running.task).await;
                    self.end_turn(joined, running);
                }
                self.session_id = None;
                self.deps
                    .store
                    .update_room(&self.key, |r| r.session_id = None);
                // A warm process holds the old session: it would only be replaced at the
                // next message, holding its memory until then.
                self.deps.agent.retire(&self.key).await;
                info!("session reset");
                let _ = done.send(());
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

    fn maybe_start_turn(&mut self) {
        if self.running.is_some()
            || self.paused
            || self.pending.is_empty()
            || self.deps.drain.is_cancelled()
        {
            return;
        }
        // An API request is answered alone: its caller waits for its own answer.
        let alone = self.pending[0].message.conversation.is_some();
        let batch: Vec<QueuedMessage> = if alone {
            self.pending.pop_front().into_iter().collect()
        } else {
            self.pending.drain(..).collect()
        };
        let message_ids = batch.iter().map(|q| q.message.id.clone()).collect();
        let target = batch
            .last()
            .map(|q| q.message.reply_target())
            .unwrap_or_default();
        let cancel = self.deps.kill.child_token();
        let runner = TurnRunner {
            key: self.key.clone(),
            deps: self.deps.clone(),
            session_id: self.session_id.clone(),
            batch,
            cancel: cancel.clone(),
            typing_off: self.typing_off.take(),
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
        let last = done.last().cloned();
        self.deps.store.update_room(&self.key, |r| {
            r.pending.retain(|p| !done.contains(&p.id));
            r.session_id = session;
            if last.is_some() {
                r.last_processed = last;
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

/// Posts a notice, bounded in time; a failure is logged (there is nobody else to tell).
async fn post_notice(outbox: &dyn Outbox, key: &RoomKey, to: &ReplyTarget, text: &str) {
    let posted = tokio::time::timeout(Duration::from_secs(30), outbox.post(to, text)).await;
    match posted {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(room = %key, error = %e, "could not post a notice"),
        Err(_) => warn!(room = %key, "could not post a notice: timed out"),
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
