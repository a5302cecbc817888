//! The dispatcher: the single owner of the watcher table and the room workers. Every connector
//! event and every control request passes through its loop.
//!
//! Owns: sender → role (from configuration, by platform user id or username only), watcher
//! lookup, the mention gate, `approve`/`deny` and room command interception (before any
//! queue, so an approval or a `!stop` never waits behind the turn it concerns; a command is
//! parsed with the sender's configured role, so text never grants one), routing to room
//! workers, and the admin operations (list, pause, resume, reset, send, approve).
//! Must not import: platform wire formats or agent internals.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::agent::AgentBackend;
use crate::approval::{self, Approvals, Asking};
use crate::commands::{self, Parsed};
use crate::config::{AgentConfig, Config, ConnectorConfig, SessionScope, WatcherConfig};
use crate::connector::{Acceptance, ApprovalPlace, ConnectorEvent, Connectors};
use crate::model::{InboundMessage, ReplyTarget, RoomKey, RoomKind, RoomRef};
use crate::ratelimit::{RateLimiter, Verdict};
use crate::room::{
    self, AgentChoice, IdleReport, QueuedMessage, RoomControl, RoomDeps, RoomHandle,
};
use crate::schedule::{ScheduleRow, Schedules};
use crate::state::StateStore;

/// Admin operations, sent by the control server.
#[derive(Debug)]
pub enum ControlRequest {
    List(oneshot::Sender<Vec<WatcherRow>>),
    Pause(String, oneshot::Sender<Result<String, String>>),
    Resume(String, oneshot::Sender<Result<String, String>>),
    Reset(String, oneshot::Sender<Result<String, String>>),
    Send {
        room: String,
        text: Option<String>,
        attach: Option<PathBuf>,
        connector: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Approve {
        id: String,
        approve: bool,
        always: bool,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Status(oneshot::Sender<StatusReport>),
}

/// One line of `list`.
#[derive(Clone, Debug, Serialize)]
pub struct WatcherRow {
    pub watcher: String,
    pub connector: String,
    pub room: String,
    pub room_id: Option<String>,
    pub agent: String,
    pub session_id: Option<String>,
    /// `active`, `paused`, `waiting` (room not resolved yet) or `failed: <why>`.
    pub state: String,
    pub busy: bool,
    pub queued: usize,
    /// `warm` (the room's agent process is kept between turns) or `cold` (started for the
    /// next turn).
    pub process: &'static str,
    /// The warm process's pid.
    pub agent_pid: Option<u32>,
    /// Its resident memory, with its descendants.
    pub rss_bytes: Option<u64>,
    /// The watcher's schedules (on its first row only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub pid: u32,
    pub connectors: Vec<ConnectorStatus>,
    pub rooms: usize,
    pub pending_approvals: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub connected: bool,
    pub detail: String,
}

/// How long a thread's session is kept after its last turn (see `forget_old_threads`).
const THREAD_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

struct WatcherRuntime {
    config: WatcherConfig,
    connector: Arc<str>,
    resolved: Option<RoomRef>,
    failed: Option<String>,
}

impl WatcherRuntime {
    fn is_wildcard(&self) -> bool {
        self.config.room == "*"
    }
}

struct RoomEntry {
    handle: RoomHandle,
    watcher: usize,
    name: String,
    /// Messages offered to this worker, to tell a truly idle worker from one with mail in
    /// flight (see [`IdleReport`]).
    offered: u64,
    /// Tells this worker from earlier ones of the same room.
    generation: u64,
}

/// Everything the dispatcher is built from.
pub struct DispatcherParts {
    pub config: Arc<Config>,
    pub connectors: Arc<Connectors>,
    pub agents: HashMap<String, Arc<dyn AgentBackend>>,
    pub approvals: Option<Arc<Approvals>>,
    pub store: StateStore,
    pub tracker: TaskTracker,
    /// Graceful stop: no new turns; running ones may finish.
    pub drain: CancellationToken,
    /// Hard stop: running turns are cancelled.
    pub kill: CancellationToken,
}

pub struct Dispatcher {
    parts: DispatcherParts,
    watchers: Vec<WatcherRuntime>,
    rooms: HashMap<RoomKey, RoomEntry>,
    connection: HashMap<Arc<str>, ConnectorStatus>,
    agent_configs: HashMap<String, Arc<AgentConfig>>,
    /// Every agent a room can be switched to (`!agent`).
    choices: Arc<BTreeMap<String, AgentChoice>>,
    commands: Arc<crate::config::CommandsConfig>,
    budgets: Arc<crate::config::Budgets>,
    /// `rate_limit:`, per connector and sender id.
    limiter: Option<RateLimiter<(Arc<str>, String)>>,
    turn_slots: Arc<tokio::sync::Semaphore>,
    /// Agents held for their usage limit, shared by every room.
    holds: Arc<room::hold::Holds>,
    idle_tx: mpsc::Sender<IdleReport>,
    idle_rx: Option<mpsc::Receiver<IdleReport>>,
    generations: u64,
    schedules: Schedules,
}

impl Dispatcher {
    pub fn new(parts: DispatcherParts) -> Self {
        let watchers = parts
            .config
            .watchers
            .iter()
            .map(|w| WatcherRuntime {
                config: w.clone(),
                connector: parts
                    .connectors
                    .keys()
                    .find(|k| ***k == *w.connector)
                    .cloned()
                    .unwrap_or_else(|| w.connector.as_str().into()),
                resolved: None,
                failed: None,
            })
            .collect();
        for w in &parts.config.watchers {
            let threads = parts
                .connectors
                .get(w.connector.as_str())
                .map(|c| c.capabilities().threads);
            if w.session_scope == SessionScope::Thread && threads == Some(false) {
                warn!(watcher = %w.name, connector = %w.connector, "session_scope: thread has no effect: this platform has no threads; each room keeps one session");
            }
        }
        let agent_configs: HashMap<String, Arc<AgentConfig>> = parts
            .config
            .agents
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect();
        let choices = parts
            .agents
            .iter()
            .filter_map(|(name, backend)| {
                let config: Arc<AgentConfig> = agent_configs.get(name).cloned()?;
                let approvals = config
                    .permissions
                    .enabled
                    .then(|| parts.approvals.clone())
                    .flatten();
                Some((
                    name.clone(),
                    AgentChoice {
                        backend: backend.clone(),
                        config,
                        approvals,
                    },
                ))
            })
            .collect();
        let (idle_tx, idle_rx) = mpsc::channel(64);
        let schedules = Schedules::new(&parts.config.schedules, SystemTime::now());
        Dispatcher {
            schedules,
            choices: Arc::new(choices),
            commands: Arc::new(parts.config.commands.clone()),
            budgets: Arc::new(parts.config.budgets.clone()),
            limiter: parts.config.rate_limit.clone().map(RateLimiter::new),
            idle_tx,
            idle_rx: Some(idle_rx),
            generations: 0,
            turn_slots: Arc::new(tokio::sync::Semaphore::new(
                parts.config.max_concurrent_turns,
            )),
            holds: Arc::new(room::hold::Holds::load(parts.store.clone())),
            parts,
            watchers,
            rooms: HashMap::new(),
            connection: HashMap::new(),
            agent_configs,
        }
    }

    /// Routes events and control requests until the drain token fires.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<(Arc<str>, ConnectorEvent)>,
        mut control: mpsc::Receiver<ControlRequest>,
    ) {
        self.forget_old_threads(SystemTime::now());
        self.restore_pending();
        let drain = self.parts.drain.clone();
        let mut idle = self.idle_rx.take().expect("run is called once");
        // A daemon that runs for months forgets idle threads daily, not only at start.
        let day = std::time::Duration::from_secs(24 * 3600);
        let mut prune = tokio::time::interval_at(tokio::time::Instant::now() + day, day);
        loop {
            let wake = self.schedules.wake_in(SystemTime::now());
            tokio::select! {
                Some((connector, event)) = events.recv() => self.on_event(connector, event),
                Some(request) = control.recv() => self.on_control(request),
                Some(report) = idle.recv() => self.on_idle(report),
                _ = tokio::time::sleep(wake.unwrap_or_default()), if wake.is_some() => self.run_schedules(),
                _ = prune.tick() => self.forget_old_threads(SystemTime::now()),
                _ = drain.cancelled() => break,
            }
        }
        // Messages that arrive while draining are refused (and stay replayable on platforms
        // that replay), never silently dropped.
        events.close();
        while let Some((_, event)) = events.recv().await {
            if let ConnectorEvent::Message {
                accepted: Some(ack),
                ..
            } = event
            {
                let _ = ack.send(Acceptance::Rejected("the gateway is shutting down".into()));
            }
        }
    }

    /// Drops the state of threads (in `session_scope: thread`) where nothing has happened for
    /// [`THREAD_RETENTION`], that wait for nothing and have no worker (at start, then daily):
    /// every thread keeps a state entry, and
    /// a busy channel starts many. A thread mentioned again after that starts a new session,
    /// with the whole thread as its context.
    fn forget_old_threads(&mut self, now: SystemTime) {
        let Some(before) = now.checked_sub(THREAD_RETENTION) else {
            return;
        };
        let before = crate::model::epoch_ms(before);
        let names: Vec<Arc<str>> = self.parts.connectors.keys().cloned().collect();
        for connector in names {
            let old: Vec<RoomKey> = self
                .parts
                .store
                .rooms(&connector)
                .into_iter()
                .map(|(id, state)| (RoomKey::from_id(connector.clone(), &id), state))
                .filter(|(key, state)| {
                    key.thread.is_some()
                        && !self.rooms.contains_key(key)
                        && state.pending.is_empty()
                        && match state.active_ms.or(state.thread_seen.as_ref().map(|s| s.ms)) {
                            Some(ms) => ms < before,
                            // Nothing ever happened in it: only an empty one goes.
                            None => {
                                state.session_id.is_none()
                                    && state.past_sessions.is_empty()
                                    && state.model.is_none()
                                    && state.agent.is_none()
                            }
                        }
                })
                .map(|(key, _)| key)
                .collect();
            if !old.is_empty() {
                info!(connector = %connector, threads = old.len(), "forgot the state of threads idle for over 30 days");
            }
            for key in old {
                self.parts.store.remove_room(&key);
            }
        }
    }

    /// Re-queues messages that were accepted but not answered before the last stop.
    fn restore_pending(&mut self) {
        let names: Vec<Arc<str>> = self.parts.connectors.keys().cloned().collect();
        for connector in names {
            let Some(cconf) = self.parts.config.connector(&connector).cloned() else {
                continue;
            };
            for (room_id, state) in self.parts.store.rooms(&connector) {
                if state.pending.is_empty() {
                    continue;
                }
                let key = RoomKey::from_id(connector.clone(), room_id.as_str());
                let Some(widx) = self
                    .watchers
                    .iter()
                    .position(|w| w.config.name == state.watcher)
                else {
                    warn!(room = %room_id, watcher = %state.watcher, count = state.pending.len(), "pending messages of a watcher that no longer exists are dropped");
                    self.parts.store.update_room(&key, |r| r.pending.clear());
                    continue;
                };
                let mut restored = Vec::new();
                let mut dropped = Vec::new();
                for p in &state.pending {
                    if p.api_request {
                        info!(room = %room_id, id = %p.id, "an API request accepted before the restart is not run again: its caller is gone");
                        dropped.push(p.id.clone());
                        continue;
                    }
                    let message = p.to_message(&connector);
                    match cconf.users.role_of(&message.sender) {
                        Some(role) => restored.push(QueuedMessage { message, role }),
                        None => {
                            warn!(sender = %p.sender_username, "pending message of a sender no longer allowed is dropped");
                            dropped.push(p.id.clone());
                        }
                    }
                }
                if !dropped.is_empty() {
                    self.parts
                        .store
                        .update_room(&key, |r| r.pending.retain(|p| !dropped.contains(&p.id)));
                }
                if restored.is_empty() {
                    continue;
                }
                info!(room = %key, count = restored.len(), "re-queueing messages accepted before the restart");
                let generation = self.next_generation();
                if let Some(handle) =
                    self.spawn_room(&key, state.room_name.clone(), widx, restored, generation)
                {
                    self.rooms.insert(
                        key,
                        RoomEntry {
                            handle,
                            watcher: widx,
                            name: state.room_name,
                            offered: 0,
                            generation,
                        },
                    );
                }
            }
        }
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Lets an idle worker go, unless a message reached it after it reported (or the report
    /// comes from a worker that was already let go).
    fn on_idle(&mut self, report: IdleReport) {
        if self
            .rooms
            .get(&report.key)
            .is_some_and(|e| e.generation == report.generation && e.offered == report.offers_seen)
        {
            debug!(room = %report.key, "idle room worker released");
            self.rooms.remove(&report.key);
        }
    }

    fn on_event(&mut self, connector: Arc<str>, event: ConnectorEvent) {
        match event {
            ConnectorEvent::Message { message, accepted } => {
                self.route(message, accepted, Origin::Chat)
            }
            ConnectorEvent::RoomResolved { spec, room } => {
                for w in self
                    .watchers
                    .iter_mut()
                    .filter(|w| w.connector == connector && w.config.room == spec)
                {
                    info!(watcher = %w.config.name, room = %room.id, "room resolved");
                    w.resolved = Some(room.clone());
                    w.failed = None;
                }
            }
            ConnectorEvent::RoomFailed { spec, error } => {
                for w in self
                    .watchers
                    .iter_mut()
                    .filter(|w| w.connector == connector && w.config.room == spec)
                {
                    error!(watcher = %w.config.name, room = %spec, error = %error, "watcher inactive: room could not be resolved");
                    w.failed = Some(error.clone());
                }
            }
            ConnectorEvent::Cancel { room, id } => {
                let key = RoomKey::new(connector, room.as_str());
                if let Some(entry) = self.rooms.get(&key) {
                    if let Err(c) = entry.handle.try_control(RoomControl::Cancel { id }) {
                        let handle = entry.handle.clone();
                        self.parts.tracker.spawn(async move {
                            handle.control(c).await;
                        });
                    }
                }
            }
            ConnectorEvent::Forget { room } => {
                let key = RoomKey::new(connector, room.as_str());
                // A live worker is the only writer of its room's state: leave it be (it
                // is released when idle and its entry stays, as for any chat room).
                if !self.rooms.contains_key(&key) {
                    debug!(room = %key, "room forgotten at its connector's request");
                    self.parts.store.remove_room(&key);
                    if let Some(a) = &self.parts.approvals {
                        a.forget_room(&key);
                    }
                    self.retire_agent_process(key);
                }
            }
            ConnectorEvent::Connection { connected, detail } => {
                info!(connector = %connector, connected, detail = %detail, "connection state");
                self.connection.insert(
                    connector.clone(),
                    ConnectorStatus {
                        name: connector.to_string(),
                        connected,
                        detail,
                    },
                );
            }
        }
    }

    fn route(
        &mut self,
        mut message: InboundMessage,
        ack: Option<oneshot::Sender<Acceptance>>,
        origin: Origin,
    ) {
        let verdict = |ack: Option<oneshot::Sender<Acceptance>>, v: Acceptance| {
            if let Some(ack) = ack {
                let _ = ack.send(v);
            }
        };
        let Some(cconf) = self.parts.config.connector(&message.connector) else {
            return verdict(ack, Acceptance::Ignored("unknown connector".into()));
        };
        let Some(role) = cconf.users.role_of(&message.sender) else {
            debug!(sender = %message.sender.username, "message from a sender who is neither owner nor guest ignored");
            return verdict(
                ack,
                Acceptance::Ignored("sender is not an owner or guest".into()),
            );
        };
        let Some(widx) = self.watcher_for(&message) else {
            return verdict(ack, Acceptance::Ignored("room is not watched".into()));
        };
        let threads = self.thread_scoped(widx);
        let mut key = message.room_key();
        if let (true, Some(thread)) = (threads, &message.thread) {
            key = key.in_thread(thread.as_str());
        }
        if let Some((approve, id, always)) = approval::parse_command(&message.text) {
            if self
                .room_agent(&key, widx)
                .is_some_and(|a| a.permissions.enabled)
            {
                let reply = match &self.parts.approvals {
                    Some(a) => a.command_from_room(
                        &key,
                        message.thread.as_deref(),
                        role,
                        approval::Command {
                            approve,
                            id: &id,
                            always,
                            by: &message.sender.username,
                        },
                    ),
                    None => format!("⚠️ No pending permission request with ID `{id}`."),
                };
                self.post_notice(&key, message.reply_target(), reply);
                return verdict(ack, Acceptance::Handled);
            }
        }
        // Commands need no mention: the prefix itself addresses the gateway. An API request
        // is a conversation with the model, never a command.
        let command = match message.conversation {
            None => commands::parse(&message.text, &self.commands, role),
            Some(_) => None,
        };
        match command {
            Some(Parsed::Refused(answer)) => {
                self.post_notice(&key, message.reply_target(), answer);
                return verdict(ack, Acceptance::Handled);
            }
            // In thread scope a group room's own session is used only by schedules (every
            // top-level message starts a thread): a command there acts on that session when
            // there is one, and is otherwise pointed to the thread it is meant for.
            Some(Parsed::Run(command))
                if threads
                    && message.thread.is_none()
                    && message.room.kind == RoomKind::Group
                    && !matches!(command, commands::Command::Help)
                    && self.rooms.get(&key).is_none_or(|e| e.offered == 0)
                    && self
                        .parts
                        .store
                        .room(&key)
                        .is_none_or(|r| r.session_id.is_none()) =>
            {
                let notice = "🧵 This room keeps an agent session per thread: send the command in the thread it is for.";
                self.post_notice(&key, message.reply_target(), notice.into());
                return verdict(ack, Acceptance::Handled);
            }
            Some(Parsed::Run(command)) => {
                let Some(entry) = self.room_entry(&key, &message.room.name, widx) else {
                    return verdict(
                        ack,
                        Acceptance::Ignored("the watcher's agent is missing".into()),
                    );
                };
                let control = RoomControl::Command(Box::new(room::RoomCommand {
                    command,
                    role,
                    sender: message.sender.username.clone(),
                    target: message.reply_target(),
                }));
                if let Err(c) = entry.handle.try_control(control) {
                    let handle = entry.handle.clone();
                    self.parts.tracker.spawn(async move {
                        handle.control(c).await;
                    });
                }
                return verdict(ack, Acceptance::Handled);
            }
            None => {}
        }
        if message.room.kind == RoomKind::Group && require_mention(cconf) && !message.addressed {
            return verdict(ack, Acceptance::Ignored("the bot was not mentioned".into()));
        }
        if self.rate_limited(&message) {
            return verdict(ack, Acceptance::Ignored("rate limited".into()));
        }
        // In thread scope a top-level message in a group room starts a thread of its own: its
        // answer opens the thread, whose later messages continue that session. (A DM's
        // top-level messages keep the room's session: a thread per DM line would be noise. A
        // schedule's prompt was never posted, so no thread can hang from it: it runs in the
        // room's own session and is answered at the top level.)
        if threads
            && message.thread.is_none()
            && message.room.kind == RoomKind::Group
            && origin == Origin::Chat
        {
            message.thread = Some(message.id.clone());
            key = key.in_thread(message.id.as_str());
        }
        let Some(entry) = self.room_entry(&key, &message.room.name, widx) else {
            return verdict(
                ack,
                Acceptance::Ignored("the watcher's agent is missing".into()),
            );
        };
        let target = message.reply_target();
        // The worker answers the connector directly; a message nobody waits on still needs a
        // sender for the worker to answer.
        let ack = ack.unwrap_or_else(|| oneshot::channel().0);
        match entry.handle.offer(QueuedMessage { message, role }, ack) {
            Ok(()) => entry.offered += 1,
            Err((why, ack)) => {
                let notice = format!(
                "⚠️ This room is busy ({why}); your message was not queued. Please send it again later."
            );
                self.post_notice(&key, target, notice.clone());
                let _ = ack.send(Acceptance::Rejected(notice));
            }
        }
    }

    /// Posts the prompt of every schedule that is due into its watcher's room, as its user:
    /// the message goes the way a chat message goes (role from the config, queue, turn), only
    /// it needs no mention.
    fn run_schedules(&mut self) {
        let now = SystemTime::now();
        for schedule in self.schedules.take_due(now) {
            let outcome = self.post_scheduled(&schedule, now);
            info!(schedule = %schedule.name, watcher = %schedule.watcher, %outcome, "schedule ran");
            self.schedules.record(&schedule.name, now, outcome);
        }
    }

    fn post_scheduled(
        &mut self,
        schedule: &crate::config::ScheduleConfig,
        now: SystemTime,
    ) -> String {
        let Some(w) = self
            .watchers
            .iter()
            .find(|w| w.config.name == schedule.watcher)
        else {
            return "skipped: the watcher is gone".into();
        };
        if let Some(why) = &w.failed {
            return format!("skipped: the room failed to resolve ({why})");
        }
        let Some(room) = w.resolved.clone() else {
            return "skipped: the room is not resolved yet".into();
        };
        let unix = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let message = InboundMessage {
            connector: w.connector.clone(),
            room,
            id: format!("schedule:{}:{unix}", schedule.name),
            thread: None,
            sender: schedule.sender.clone(),
            text: schedule.prompt.clone(),
            addressed: true,
            attachments: Vec::new(),
            notes: vec![format!(
                "This message was posted by the gateway's schedule '{}' ({}) on behalf of {}.",
                schedule.name, schedule.cron_text, schedule.sender.username
            )],
            ts: now,
            conversation: None,
        };
        let (tx, mut rx) = oneshot::channel();
        self.route(message, Some(tx), Origin::Schedule);
        // `route` answers refusals at once; an accepted message's verdict comes from its worker.
        match rx.try_recv() {
            Ok(Acceptance::Ignored(why)) => format!("skipped: {why}"),
            Ok(Acceptance::Rejected(why)) => format!("refused: {why}"),
            _ => "posted".into(),
        }
    }

    /// Counts a message that would start a turn against its sender's `rate_limit:`; true when
    /// it is over the limit (the first such message of a window gets a notice). API requests
    /// are limited by their own connector; commands and approvals never get here.
    fn rate_limited(&self, message: &InboundMessage) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
        if message.conversation.is_some() {
            return false;
        }
        let user = (message.connector.clone(), message.sender.id.clone());
        let Verdict::Limited {
            notify,
            retry_after,
        } = limiter.check(user, std::time::Instant::now())
        else {
            return false;
        };
        info!(room = %message.room_key(), user = %message.sender.username, notify, "rate limited");
        if notify {
            let text = format!(
                "You are sending messages faster than I can take them. Please wait about {} s; messages until then are not processed.",
                retry_after.as_secs().max(1)
            );
            self.post_notice(&message.room_key(), message.reply_target(), text);
        }
        true
    }

    /// The room's worker, started if it has none; `None` when the watcher's agent is missing.
    fn room_entry(&mut self, key: &RoomKey, name: &str, widx: usize) -> Option<&mut RoomEntry> {
        if !self.rooms.contains_key(key) {
            let generation = self.next_generation();
            let handle = self.spawn_room(key, name.to_string(), widx, Vec::new(), generation)?;
            self.rooms.insert(
                key.clone(),
                RoomEntry {
                    handle,
                    watcher: widx,
                    name: name.to_string(),
                    offered: 0,
                    generation,
                },
            );
        }
        self.rooms.get_mut(key)
    }

    /// The agent a room talks to: the one an owner switched it to (`!agent`), else its
    /// watcher's. Read from the state file, which the room's worker keeps current.
    fn room_agent(&self, key: &RoomKey, widx: usize) -> Option<&AgentConfig> {
        let watcher_agent = &self.watchers[widx].config.agent;
        self.parts
            .store
            .room(key)
            .and_then(|r| r.agent)
            .and_then(|a| self.agent_configs.get(&a))
            .or_else(|| self.agent_configs.get(watcher_agent))
            .map(|a| &**a)
    }

    /// Whether watcher `widx` gives each thread its own session: `session_scope: thread` on
    /// a platform with threads (elsewhere the room's session, warned about at start).
    fn thread_scoped(&self, widx: usize) -> bool {
        let w = &self.watchers[widx];
        w.config.session_scope == SessionScope::Thread
            && self
                .parts
                .connectors
                .get(&w.connector)
                .is_some_and(|c| c.capabilities().threads)
    }

    /// The watcher for a message: one naming its room, else the connector's `*` watcher.
    fn watcher_for(&self, m: &InboundMessage) -> Option<usize> {
        // A conversation's room is matched by the watched room it was opened under.
        let room_id = m.conversation.as_ref().map_or(&m.room.id, |c| &c.watched);
        let of_connector = || {
            self.watchers
                .iter()
                .enumerate()
                .filter(|(_, w)| *w.connector == *m.connector)
        };
        of_connector()
            .find(|(_, w)| {
                !w.is_wildcard()
                    && w.failed.is_none()
                    && match &w.resolved {
                        Some(r) => r.id == *room_id,
                        None => w.config.room == *room_id,
                    }
            })
            .or_else(|| of_connector().find(|(_, w)| w.is_wildcard()))
            .map(|(i, _)| i)
    }

    fn spawn_room(
        &self,
        key: &RoomKey,
        name: String,
        widx: usize,
        restored: Vec<QueuedMessage>,
        generation: u64,
    ) -> Option<RoomHandle> {
        let w = &self.watchers[widx];
        let connector = self.parts.connectors.get(&key.connector)?.clone();
        let agent = self.parts.agents.get(&w.config.agent)?.clone();
        let agent_config = self.agent_configs.get(&w.config.agent)?.clone();
        let platform = self
            .parts
            .config
            .connector(&key.connector)
            .map(crate::connector::registry::label)
            .unwrap_or("Chat");
        let paused = self
            .parts
            .store
            .watcher_paused(&key.connector, &w.config.name);
        let asking = self.asking_for(key, &*connector);
        let deps = RoomDeps {
            asking,
            watcher: w.config.name.as_str().into(),
            outbox: crate::outbox::of(connector),
            platform: platform.into(),
            agent,
            approvals: agent_config
                .permissions
                .enabled
                .then(|| self.parts.approvals.clone())
                .flatten(),
            agent_config,
            agents: self.choices.clone(),
            commands: self.commands.clone(),
            budgets: self.budgets.clone(),
            users: self
                .parts
                .config
                .connector(&key.connector)
                .map(|c| c.users.clone())
                .unwrap_or_default(),
            merge_window: self.parts.config.merge_window,
            store: self.parts.store.clone(),
            max_queue_depth: self.parts.config.max_queue_depth,
            turn_slots: self.turn_slots.clone(),
            holds: self.holds.clone(),
            idle: self.idle_tx.clone(),
            idle_after: self.parts.config.room_idle_eviction,
            tracker: self.parts.tracker.clone(),
            drain: self.parts.drain.clone(),
            kill: self.parts.kill.clone(),
        };
        Some(room::spawn(
            key.clone(),
            name,
            deps,
            paused,
            restored,
            generation,
        ))
    }

    /// Where the owners of a room's tool calls are asked: the room itself, nobody, or the
    /// room of another connector its platform names (an approvals room). A named room whose
    /// connector does not exist is nobody, so its calls are denied.
    fn asking_for(&self, key: &RoomKey, connector: &dyn crate::connector::Connector) -> Asking {
        match connector.approvals() {
            ApprovalPlace::InRoom => Asking::InTurnRoom,
            ApprovalPlace::Nowhere => Asking::Nobody,
            ApprovalPlace::Room { connector, room } => {
                match self.parts.connectors.get_key_value(connector.as_str()) {
                    Some((name, c)) => Asking::Elsewhere {
                        room: RoomKey::new(name.clone(), room.as_str()),
                        target: ReplyTarget::room(room),
                        outbox: crate::outbox::of(c.clone()),
                    },
                    None => {
                        error!(room = %key, connector = %connector, "the approvals room's connector does not exist; calls that need an owner are denied");
                        Asking::Nobody
                    }
                }
            }
        }
    }

    fn post_notice(&self, key: &RoomKey, to: ReplyTarget, text: String) {
        let Some(connector) = self.parts.connectors.get(&key.connector).cloned() else {
            return;
        };
        let key = key.clone();
        self.parts.tracker.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), connector.post(&to, &text)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(room = %key, error = %e, "could not post a notice"),
                Err(_) => warn!(room = %key, "posting a notice timed out"),
            }
        });
    }

    fn on_control(&mut self, request: ControlRequest) {
        match request {
            ControlRequest::List(reply) => self.list(reply),
            ControlRequest::Pause(name, reply) => {
                let _ = reply.send(self.set_paused(&name, true));
            }
            ControlRequest::Resume(name, reply) => {
                let _ = reply.send(self.set_paused(&name, false));
            }
            ControlRequest::Reset(name, reply) => self.reset(&name, reply),
            ControlRequest::Send {
                room,
                text,
                attach,
                connector,
                reply,
            } => self.send(room, text, attach, connector, reply),
            ControlRequest::Approve {
                id,
                approve,
                always,
                reply,
            } => {
                let result = match &self.parts.approvals {
                    Some(a) => a.command_from_admin(approval::Command {
                        approve,
                        id: &id,
                        always,
                        by: "admin (control socket)",
                    }),
                    None => {
                        Err("no agent has permissions enabled, so nothing can be pending".into())
                    }
                };
                let _ = reply.send(result);
            }
            ControlRequest::Status(reply) => {
                let connectors = self
                    .parts
                    .connectors
                    .keys()
                    .map(|name| {
                        self.connection
                            .get(name)
                            .cloned()
                            .unwrap_or(ConnectorStatus {
                                name: name.to_string(),
                                connected: false,
                                detail: "no connection reported yet".into(),
                            })
                    })
                    .collect();
                let _ = reply.send(StatusReport {
                    pid: std::process::id(),
                    connectors,
                    rooms: self.rooms.len(),
                    pending_approvals: self
                        .parts
                        .approvals
                        .as_ref()
                        .map_or(0, |a| a.pending_count()),
                });
            }
        }
    }

    fn watcher_index(&self, name: &str) -> Result<usize, String> {
        self.watchers
            .iter()
            .position(|w| w.config.name == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .watchers
                    .iter()
                    .map(|w| w.config.name.as_str())
                    .collect();
                format!("unknown watcher '{name}' (known: {})", known.join(", "))
            })
    }

    fn set_paused(&mut self, name: &str, paused: bool) -> Result<String, String> {
        let widx = self.watcher_index(name)?;
        let connector = self.watchers[widx].connector.clone();
        self.parts
            .store
            .set_watcher_paused(&connector, name, paused);
        // An admin's resume also ends the usage-limit holds of the watcher's agents early
        // (the limit was raised, or the admin wants a retry now): its own, and those its
        // rooms were switched to.
        let mut agents = vec![self.watchers[widx].config.agent.clone()];
        for (_, state) in self.parts.store.rooms(&connector) {
            if let (true, Some(a)) = (state.watcher == name, state.agent) {
                if !agents.contains(&a) {
                    agents.push(a);
                }
            }
        }
        let now = SystemTime::now();
        let cleared: Vec<String> = agents
            .into_iter()
            .filter(|a| !paused && self.holds.clear(a, now))
            .map(|a| format!("agent '{a}' is no longer held for its usage limit"))
            .collect();
        for entry in self.rooms.values().filter(|e| e.watcher == widx) {
            let c = if paused {
                RoomControl::Pause
            } else {
                RoomControl::Resume
            };
            // Sent from here, in order, so `pause; resume` cannot arrive reversed. A full
            // control channel (16 slots) falls back to a waiting send.
            if let Err(c) = entry.handle.try_control(c) {
                let handle = entry.handle.clone();
                self.parts.tracker.spawn(async move {
                    handle.control(c).await;
                });
            }
        }
        Ok(format!(
            "watcher '{name}' {}{}",
            if paused { "paused" } else { "resumed" },
            cleared.iter().map(|c| format!("; {c}")).collect::<String>()
        ))
    }

    fn reset(&mut self, name: &str, reply: oneshot::Sender<Result<String, String>>) {
        let widx = match self.watcher_index(name) {
            Ok(i) => i,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let connector = self.watchers[widx].connector.clone();
        // Rooms without a live worker keep their session only in the state file.
        for (room_id, state) in self.parts.store.rooms(&connector) {
            if state.watcher == name {
                let key = RoomKey::from_id(connector.clone(), room_id.as_str());
                let agent = state
                    .agent
                    .clone()
                    .unwrap_or_else(|| self.watchers[widx].config.agent.clone());
                let now = std::time::SystemTime::now();
                self.parts
                    .store
                    .update_room(&key, |r| r.retire_session(&agent, now));
                if let Some(a) = &self.parts.approvals {
                    a.forget_room(&key);
                }
            }
        }
        let handles: Vec<RoomHandle> = self
            .rooms
            .values()
            .filter(|e| e.watcher == widx)
            .map(|e| e.handle.clone())
            .collect();
        let name = name.to_string();
        self.parts.tracker.spawn(async move {
            for h in handles {
                let (tx, rx) = oneshot::channel();
                if h.control(RoomControl::Reset { done: tx }).await {
                    let _ = rx.await;
                }
            }
            let _ = reply.send(Ok(format!(
                "watcher '{name}' reset: the next message starts a new session"
            )));
        });
    }

    /// Stops the warm agent process of a room that will not come back (if it has one), on
    /// whichever agent serves rooms of its connector.
    fn retire_agent_process(&self, key: RoomKey) {
        let agents: Vec<Arc<dyn AgentBackend>> = self
            .watchers
            .iter()
            .filter(|w| w.connector == key.connector)
            .filter_map(|w| self.parts.agents.get(&w.config.agent).cloned())
            .collect();
        self.parts.tracker.spawn(async move {
            for agent in agents {
                agent.retire(&key).await;
            }
        });
    }

    fn list(&self, reply: oneshot::Sender<Vec<WatcherRow>>) {
        let mut rows: Vec<(WatcherRow, Option<RoomHandle>)> = Vec::new();
        for (widx, w) in self.watchers.iter().enumerate() {
            let paused = self
                .parts
                .store
                .watcher_paused(&w.connector, &w.config.name);
            let watcher_state = match (&w.failed, paused) {
                (Some(e), _) => Some(format!("failed: {e}")),
                (None, true) => Some("paused".into()),
                (None, false)
                    if !w.is_wildcard()
                        && w.resolved.is_none()
                        && !self
                            .rooms
                            .keys()
                            .any(|k| k.connector == w.connector && *k.room == *w.config.room) =>
                {
                    Some("waiting".into())
                }
                _ => None,
            };
            // A room answers with its own agent (`!agent`), whose hold is the room's.
            let state_with = |agent: &str| {
                watcher_state.clone().unwrap_or_else(|| {
                    match self.holds.active(agent, SystemTime::now()) {
                        Some(h) => room::hold::status(&h),
                        None => "active".into(),
                    }
                })
            };
            let agent_of = |key: &RoomKey| {
                self.room_agent(key, widx)
                    .map_or_else(|| w.config.agent.clone(), |a| a.name.clone())
            };
            let mut room_rows: Vec<(WatcherRow, Option<RoomHandle>)> = Vec::new();
            let mut seen: Vec<String> = Vec::new();
            for (key, entry) in self.rooms.iter().filter(|(_, e)| e.watcher == widx) {
                seen.push(key.id().into_owned());
                let agent = agent_of(key);
                let process = self
                    .parts
                    .agents
                    .get(&agent)
                    .and_then(|b| b.process_info(key));
                room_rows.push((
                    WatcherRow {
                        watcher: w.config.name.clone(),
                        connector: w.connector.to_string(),
                        room: entry.name.clone(),
                        room_id: Some(key.id().into_owned()),
                        state: state_with(&agent),
                        agent,
                        session_id: None,
                        busy: false,
                        queued: 0,
                        process: if process.is_some() { "warm" } else { "cold" },
                        agent_pid: process.map(|p| p.pid),
                        rss_bytes: process.and_then(|p| p.rss_bytes),
                        schedules: Vec::new(),
                    },
                    Some(entry.handle.clone()),
                ));
            }
            for (room_id, state) in self.parts.store.rooms(&w.connector) {
                if state.watcher == w.config.name && !seen.contains(&room_id) {
                    // A room whose worker was released may still have a warm process.
                    let key = RoomKey::from_id(w.connector.clone(), room_id.as_str());
                    let agent = agent_of(&key);
                    let process = self
                        .parts
                        .agents
                        .get(&agent)
                        .and_then(|b| b.process_info(&key));
                    room_rows.push((
                        WatcherRow {
                            watcher: w.config.name.clone(),
                            connector: w.connector.to_string(),
                            room: state.room_name.clone(),
                            room_id: Some(room_id),
                            state: state_with(&agent),
                            agent,
                            session_id: state.session_id.clone(),
                            busy: false,
                            queued: 0,
                            process: if process.is_some() { "warm" } else { "cold" },
                            agent_pid: process.map(|p| p.pid),
                            rss_bytes: process.and_then(|p| p.rss_bytes),
                            schedules: Vec::new(),
                        },
                        None,
                    ));
                }
            }
            if room_rows.is_empty() {
                room_rows.push((
                    WatcherRow {
                        watcher: w.config.name.clone(),
                        connector: w.connector.to_string(),
                        room: w.config.room.clone(),
                        room_id: w.resolved.as_ref().map(|r| r.id.clone()),
                        agent: w.config.agent.clone(),
                        session_id: None,
                        state: state_with(&w.config.agent),
                        busy: false,
                        queued: 0,
                        process: "cold",
                        agent_pid: None,
                        rss_bytes: None,
                        schedules: Vec::new(),
                    },
                    None,
                ));
            }
            room_rows.sort_by(|a, b| a.0.room.cmp(&b.0.room));
            if let Some((first, _)) = room_rows.first_mut() {
                first.schedules = self.schedules.rows_of(&w.config.name);
            }
            rows.extend(room_rows);
        }
        self.parts.tracker.spawn(async move {
            let mut out = Vec::with_capacity(rows.len());
            for (mut row, handle) in rows {
                if let Some(h) = handle {
                    let (tx, rx) = oneshot::channel();
                    if h.control(RoomControl::Status { reply: tx }).await {
                        if let Ok(s) = rx.await {
                            row.session_id = s.session_id;
                            row.busy = s.busy;
                            row.queued = s.queued;
                            if s.paused && row.state == "active" {
                                row.state = "paused".into();
                            }
                        }
                    }
                }
                out.push(row);
            }
            let _ = reply.send(out);
        });
    }

    fn send(
        &self,
        room: String,
        text: Option<String>,
        attach: Option<PathBuf>,
        connector: Option<String>,
        reply: oneshot::Sender<Result<String, String>>,
    ) {
        let chosen = match &connector {
            Some(name) => self
                .parts
                .connectors
                .get(name.as_str())
                .cloned()
                .ok_or_else(|| format!("unknown connector '{name}'")),
            None if self.parts.connectors.len() == 1 => {
                Ok(self.parts.connectors.values().next().cloned().expect("one"))
            }
            None => {
                let mut names: Vec<&str> = self.parts.connectors.keys().map(|k| &**k).collect();
                names.sort();
                Err(format!(
                    "several connectors are configured ({}); choose one with --connector",
                    names.join(", ")
                ))
            }
        };
        let connector = match chosen {
            Ok(c) => c,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.parts.tracker.spawn(async move {
            let result = async {
                let resolved = connector
                    .resolve_room(&room)
                    .await
                    .map_err(|e| e.to_string())?;
                let target = ReplyTarget::room(resolved.id.clone());
                if let Some(path) = &attach {
                    connector
                        .upload(&target, path, text.as_deref())
                        .await
                        .map_err(|e| e.to_string())?;
                } else if let Some(text) = &text {
                    connector
                        .send_reply(&target, text)
                        .await
                        .map_err(|e| e.to_string())?;
                } else {
                    return Err("nothing to send: give a text or --attach".to_string());
                }
                Ok(format!("sent to {}", resolved.name))
            }
            .await;
            let _ = reply.send(result);
        });
    }
}

fn require_mention(c: &ConnectorConfig) -> bool {
    c.require_mention
}

/// Where a message the dispatcher routes came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A platform delivered it: it exists there, and a thread can hang from it.
    Chat,
    /// A schedule posted it on someone's behalf: the platform never saw it.
    Schedule,
}
