//! Warm Claude Code processes: one `claude -p --input-format stream-json` per room, kept
//! between turns, so a turn is one user line on stdin and the events up to its `result`.
//!
//! Owns: the pool of one agent's warm processes (room → process, the [`Budget`]: LRU
//! eviction of idle processes, the idle timer, graceful retirement), a turn on a warm process
//! (write, read to `result`, interrupt on stop or timeout), when a process is replaced (it
//! died, its session or role no longer fits the turn), and the hook [`Relay`].
//! The argv, environment, sandbox and settings file are the cold path's (`claude/mod.rs`),
//! plus `--input-format stream-json`; events are parsed by the same `StreamParser`.
//!
//! Session rules are the cold path's: a process is started with `--session-id` for a room's
//! first turn and `--resume <id>` otherwise, and serves only turns of that session. A turn
//! for another session (after a reset) or another role (its allow-list is in the argv)
//! retires the process and starts one that fits. A process that died between turns is
//! replaced with `--resume`, and a turn that finds its process dead before it printed
//! anything is run once more on a fresh one, so nothing the room sent is lost.
//!
//! Stop and timeout send the stream-json `interrupt` control request (verified, 2.1.197: a
//! `control_response`, then a `result` of subtype `error_during_execution`, and the process
//! takes the next turn); without a `result` within [`INTERRUPT_GRACE`] the process tree is
//! killed and the next turn resumes the session in a new process. A room's `!stop` then
//! retires the process ([`Pool::retire_room`]), so nothing of the agent outlives a stop.
//!
//! Hook secret: a warm process outlives its turns, so its settings file carries a secret of
//! the *process*. The [`Relay`] maps that secret to the ticket of the turn running on the
//! process right now and to nothing between turns: a hook call then names no live turn and
//! is denied (fail closed). The file is removed at the process's first output line, as on
//! the cold path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::process::{ChildStdin, ChildStdout};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClaudeBackend, SessionArg, SettingsFile, StreamParser};
use crate::agent::gate::{GateTicket, ToolGate};
use crate::agent::process::{self, AgentProcess, ExitInfo, LineReader, ProcessSpec, KILL_GRACE};
use crate::agent::warm::{Budget, ProcessInfo};
use crate::agent::{AgentError, TurnContext};
use crate::model::{Decision, Role, RoomKey, ToolCall, TurnOutcome, TurnRequest};

/// How long an interrupted turn has to print its `result` before the process is killed.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// How long a retired process has to exit after its stdin is closed.
const RETIRE_GRACE: Duration = Duration::from_secs(2);
/// How long a process whose stdout ended has to exit before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Process secret → the secret of the turn running on that process, if one is.
#[derive(Default)]
pub struct Relay {
    processes: Mutex<HashMap<String, Option<String>>>,
}

impl Relay {
    /// The turn secret a hook call's `secret` stands for: a warm process's secret maps to
    /// its running turn's (or to none between turns); any other secret is a cold run's own.
    fn resolve(&self, secret: &str) -> Option<String> {
        let processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        match processes.get(secret) {
            Some(turn) => turn.clone(),
            None => Some(secret.to_string()),
        }
    }

    fn set(&self, process: &str, turn: Option<String>) {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = processes.get_mut(process) {
            *slot = turn;
        }
    }
}

/// A process secret known to the relay for as long as the process lives.
struct RelayEntry {
    relay: Arc<Relay>,
    secret: String,
}

impl RelayEntry {
    fn new(relay: Arc<Relay>) -> RelayEntry {
        let secret = uuid::Uuid::new_v4().to_string();
        relay
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(secret.clone(), None);
        RelayEntry { relay, secret }
    }
}

impl Drop for RelayEntry {
    fn drop(&mut self) {
        self.relay
            .processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.secret);
    }
}

/// Binds a warm process's secret to one turn; unbinds on drop, whatever ends the turn.
struct TurnBinding {
    relay: Arc<Relay>,
    process: String,
}

impl TurnBinding {
    fn bind(entry: &RelayEntry, turn: &GateTicket) -> TurnBinding {
        entry.relay.set(&entry.secret, Some(turn.secret.clone()));
        TurnBinding {
            relay: entry.relay.clone(),
            process: entry.secret.clone(),
        }
    }
}

impl Drop for TurnBinding {
    fn drop(&mut self) {
        self.relay.set(&self.process, None);
    }
}

/// The gate in front of the hook endpoint when warm processes are on: resolves a process
/// secret to its turn's before the real gate sees it.
pub struct RelayGate {
    pub inner: Arc<dyn ToolGate>,
    pub relay: Arc<Relay>,
}

#[async_trait]
impl ToolGate for RelayGate {
    fn is_live(&self, secret: &str) -> bool {
        self.relay
            .resolve(secret)
            .is_some_and(|s| self.inner.is_live(&s))
    }

    async fn decide(&self, secret: Option<&str>, call: ToolCall) -> Decision {
        let turn = secret.and_then(|s| self.relay.resolve(s));
        self.inner.decide(turn.as_deref(), call).await
    }
}

/// What a process was started for; a turn that needs another one replaces it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fit {
    session: String,
    /// The role whose allow-list is in the argv; `None` when the hook decides (gated).
    role: Option<Role>,
}

/// One live warm process.
struct WarmProcess {
    process: AgentProcess,
    stdin: ChildStdin,
    stdout: LineReader<ChildStdout>,
    fit: Fit,
    /// Removed at the first output line (see the module doc of `claude`).
    settings: Option<SettingsFile>,
    relay: Option<RelayEntry>,
    /// `total_cost_usd` of the last `result`: cumulative for the process.
    cost: f64,
    turns: u64,
}

/// How a process came out of a turn.
enum Health {
    Keep,
    Broken,
    /// It died before printing anything for this turn: the turn can be run again.
    DeadOnArrival,
}

/// The pool's record of one room's process, readable without waiting for a running turn.
#[derive(Default)]
struct SlotInfo {
    pid: Option<u32>,
    last_used: Option<Instant>,
    idle_timer: Option<AbortHandle>,
}

#[derive(Default)]
struct Slot {
    /// Held for the whole of a turn: a room's turns run one at a time, and a busy process is
    /// never evicted (eviction only takes slots it can lock without waiting).
    process: tokio::sync::Mutex<Option<WarmProcess>>,
    info: Mutex<SlotInfo>,
}

impl Slot {
    fn info(&self) -> std::sync::MutexGuard<'_, SlotInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One agent's warm processes.
pub struct Pool {
    budget: Budget,
    slots: Mutex<HashMap<RoomKey, Arc<Slot>>>,
    relay: Arc<Relay>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Pool {
    /// A pool whose processes are stopped (and whose timers end) at `shutdown`.
    pub fn new(
        budget: Budget,
        relay: Arc<Relay>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            budget,
            slots: Mutex::new(HashMap::new()),
            relay,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        });
        // Holds the pool to the end: processes must be retired (stdin closed, a grace to
        // exit), not dropped with the backend: a CLI killed right after a `result` has not
        // written that turn to its transcript yet (verified, 2.1.197), and the session
        // would then not resume.
        let owner = pool.clone();
        tracker.spawn(async move {
            shutdown.cancelled().await;
            owner.retire_all().await;
        });
        pool
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, room: &RoomKey) -> Arc<Slot> {
        let mut slots = self.slots();
        if let Some(slot) = slots.get(room) {
            return slot.clone();
        }
        // Only when the map grows: slots without a process that no turn holds go, so the
        // map is as large as the rooms with a warm process (API requests each have a room).
        slots.retain(|_, s| Arc::strong_count(s) > 1 || s.info().pid.is_some());
        slots.entry(room.clone()).or_default().clone()
    }

    /// The room's warm process, if it has one.
    pub fn process_info(&self, room: &RoomKey) -> Option<ProcessInfo> {
        let slot = self.slots().get(room)?.clone();
        let pid = slot.info().pid?;
        Some(ProcessInfo {
            pid,
            rss_bytes: process::rss_of(pid),
        })
    }

    /// How many rooms have a warm process now.
    pub fn live(&self) -> usize {
        self.slots()
            .values()
            .filter(|s| s.info().pid.is_some())
            .count()
    }

    /// Retires the room's process (a new session follows, a turn was stopped, or a cold turn
    /// is about to change the session behind its back). Waits for a running turn of the room
    /// to end, then for the process to exit: when this returns, nothing of it is left and its
    /// transcript is written (the next process may `--resume` it). The slot stays locked
    /// meanwhile, so no turn of the room starts a process before.
    pub async fn retire_room(&self, room: &RoomKey) {
        let Some(slot) = self.slots().get(room).cloned() else {
            return;
        };
        let mut held = slot.process.lock().await;
        if let Some(p) = held.take() {
            self.forget(&slot);
            tracing::debug!(pid = p.process.pid(), "retiring a warm claude process");
            p.stop(RETIRE_GRACE).await;
        }
    }

    async fn retire_all(&self) {
        let slots: Vec<Arc<Slot>> = self.slots().drain().map(|(_, s)| s).collect();
        for slot in slots {
            let p = slot.process.lock().await.take();
            if let Some(p) = p {
                // All at once: the daemon waits for its service tasks.
                self.tracker.spawn(p.stop(RETIRE_GRACE));
            }
        }
    }

    fn forget(&self, slot: &Slot) {
        let mut info = slot.info();
        info.pid = None;
        if let Some(t) = info.idle_timer.take() {
            t.abort();
        }
    }

    /// Stops `p` in the background: stdin closed, a grace to exit, then the tree killed.
    fn retire(&self, p: WarmProcess, why: &'static str) {
        tracing::debug!(pid = p.process.pid(), why, "retiring a warm claude process");
        self.tracker.spawn(p.stop(RETIRE_GRACE));
    }

    /// Makes room for one more process: `Ok` when under budget or after retiring the least
    /// recently used idle process of another room; `Err` when every process is busy.
    fn make_room(&self, for_room: &RoomKey) -> Result<(), ()> {
        let slots: Vec<(RoomKey, Arc<Slot>)> = self
            .slots()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut live: Vec<(Instant, RoomKey, Arc<Slot>)> = slots
            .into_iter()
            .filter(|(k, _)| k != for_room)
            .filter_map(|(k, s)| {
                let info = s.info();
                info.pid?;
                let used = info.last_used.unwrap_or_else(Instant::now);
                drop(info);
                Some((used, k, s))
            })
            .collect();
        if live.len() < self.budget.max {
            return Ok(());
        }
        live.sort_by_key(|(used, _, _)| *used);
        let mut excess = live.len() + 1 - self.budget.max;
        for (_, room, slot) in live {
            // Busy (a turn holds it): never evicted.
            let Ok(mut held) = slot.process.try_lock() else {
                continue;
            };
            if let Some(p) = held.take() {
                self.forget(&slot);
                tracing::info!(%room, "warm process budget full; retiring the least recently used idle one");
                self.retire(p, "evicted");
                excess -= 1;
                if excess == 0 {
                    return Ok(());
                }
            }
        }
        Err(())
    }

    /// After a turn: the process is idle from now, and retired after the idle timeout
    /// unless another turn comes first.
    fn touch(self: &Arc<Self>, room: &RoomKey, slot: &Arc<Slot>) {
        let mut info = slot.info();
        info.last_used = Some(Instant::now());
        if let Some(t) = info.idle_timer.take() {
            t.abort();
        }
        if info.pid.is_none() {
            return;
        }
        let (pool, weak_slot, room) = (Arc::downgrade(self), Arc::downgrade(slot), room.clone());
        let (idle, shutdown) = (self.budget.idle_timeout, self.shutdown.clone());
        let timer = self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.cancelled() => return,
            }
            let (Some(pool), Some(slot)) = (pool.upgrade(), weak_slot.upgrade()) else {
                return;
            };
            // A turn that holds the slot re-arms the timer when it ends.
            let Ok(mut held) = slot.process.try_lock() else {
                return;
            };
            if let Some(p) = held.take() {
                tracing::info!(%room, "warm claude process idle; retiring it");
                slot.info().idle_timer = None;
                pool.forget(&slot);
                pool.retire(p, "idle");
            }
        });
        info.idle_timer = Some(timer.abort_handle());
    }
}

impl WarmProcess {
    /// Closes stdin (the CLI exits at end of input), waits up to `grace`, then kills the tree.
    async fn stop(mut self, grace: Duration) {
        let pid = self.process.pid();
        drop(self.stdin);
        if tokio::time::timeout(grace, self.process.wait())
            .await
            .is_err()
        {
            tracing::debug!(
                pid,
                "warm claude process did not exit at end of input; killing it"
            );
            self.process.kill(KILL_GRACE).await;
        }
    }

    /// Runs one turn. The relay entry, if any, names the turn's ticket while it runs.
    async fn turn(
        &mut self,
        turn: &TurnRequest,
        ctx: &TurnContext,
        timeout: Duration,
    ) -> (Result<TurnOutcome, AgentError>, Health) {
        let deadline = Instant::now() + timeout;
        let _bound = match (&self.relay, &ctx.gate) {
            (Some(entry), Some(ticket)) => Some(TurnBinding::bind(entry, ticket)),
            _ => None,
        };
        let mut line = serde_json::to_string(&json!({
            "type": "user",
            "message": {"role": "user", "content": [{"type": "text", "text": turn.prompt}]},
        }))
        .expect("a JSON value encodes");
        line.push('\n');
        let written = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return (Err(AgentError::Cancelled), Health::Keep),
            _ = tokio::time::sleep_until(deadline) => return (Err(AgentError::Timeout(timeout)), Health::Broken),
            w = write_line(&mut self.stdin, &line) => w,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "warm claude process took no input");
            return self.ended(StreamParser::new(&self.fit.session)).await;
        }
        self.turns += 1;
        let mut parser = StreamParser::after_cost(&self.fit.session, self.cost);
        loop {
            let next = tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return self.interrupt(AgentError::Cancelled).await,
                _ = tokio::time::sleep_until(deadline) => return self.interrupt(AgentError::Timeout(timeout)).await,
                next = self.stdout.next_line() => next,
            };
            let text = match next {
                Ok(Some(text)) => text,
                Ok(None) => return self.ended(parser).await,
                Err(e) => {
                    tracing::warn!(error = %e, "reading warm claude output failed");
                    return self.ended(parser).await;
                }
            };
            self.settings.take();
            for event in parser.feed(&text) {
                let sent = tokio::select! {
                    biased;
                    _ = ctx.cancel.cancelled() => None,
                    _ = tokio::time::sleep_until(deadline) => Some(false),
                    sent = ctx.events.send(event) => { let _ = sent; Some(true) }
                };
                match sent {
                    None => return self.interrupt(AgentError::Cancelled).await,
                    Some(false) => return self.interrupt(AgentError::Timeout(timeout)).await,
                    Some(true) => {}
                }
            }
            if parser.has_result() {
                self.cost = parser.process_cost().unwrap_or(self.cost);
                let exit = ExitInfo {
                    success: true,
                    status: "turn ended".into(),
                    stderr_tail: String::new(),
                };
                return (parser.finish(&exit), Health::Keep);
            }
        }
    }

    /// Stops the running turn: the interrupt request, then its `result` (the process stays)
    /// or, without one in time, the process is given up.
    async fn interrupt(&mut self, why: AgentError) -> (Result<TurnOutcome, AgentError>, Health) {
        let request = json!({
            "type": "control_request",
            "request_id": format!("interrupt-{}", uuid::Uuid::new_v4()),
            "request": {"subtype": "interrupt"},
        });
        let mut line = request.to_string();
        line.push('\n');
        let stopped = tokio::time::timeout(INTERRUPT_GRACE, async {
            write_line(&mut self.stdin, &line).await.ok()?;
            let mut parser = StreamParser::after_cost(&self.fit.session, self.cost);
            while let Ok(Some(text)) = self.stdout.next_line().await {
                let _ = parser.feed(&text);
                if parser.has_result() {
                    return Some(parser.process_cost());
                }
            }
            None
        })
        .await;
        match stopped {
            Ok(Some(cost)) => {
                self.cost = cost.unwrap_or(self.cost);
                tracing::info!(pid = self.process.pid(), "warm claude turn interrupted");
                (Err(why), Health::Keep)
            }
            _ => {
                tracing::info!(
                    pid = self.process.pid(),
                    "warm claude process did not end the turn when interrupted; killing it"
                );
                (Err(why), Health::Broken)
            }
        }
    }

    /// Stdout ended: the process is exiting. The turn's fate is the parser's, from the exit.
    async fn ended(&mut self, parser: StreamParser) -> (Result<TurnOutcome, AgentError>, Health) {
        let status = match tokio::time::timeout(EXIT_WAIT, self.process.wait()).await {
            Ok(s) => s,
            Err(_) => {
                self.process.kill(KILL_GRACE).await;
                Err(std::io::Error::other(
                    "did not exit after closing its output",
                ))
            }
        };
        let exit = match status {
            Ok(s) => ExitInfo {
                success: s.success(),
                status: process::describe_status(&s),
                stderr_tail: self.process.stderr_tail(),
            },
            Err(e) => ExitInfo {
                success: false,
                status: format!("wait failed: {e}"),
                stderr_tail: self.process.stderr_tail(),
            },
        };
        let health = if parser.saw_output() {
            Health::Broken
        } else {
            Health::DeadOnArrival
        };
        (parser.finish(&exit), health)
    }
}

async fn write_line(stdin: &mut ChildStdin, line: &str) -> std::io::Result<()> {
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await
}

impl ClaudeBackend {
    /// Runs a turn on the room's warm process (started or replaced as needed). `None` when
    /// the budget is full of busy processes: the caller runs the turn cold.
    pub(super) async fn run_warm(
        &self,
        pool: &Arc<Pool>,
        turn: &TurnRequest,
        ctx: &TurnContext,
        session: &str,
        resume: bool,
    ) -> Option<Result<TurnOutcome, AgentError>> {
        let fit = Fit {
            session: session.to_string(),
            role: if ctx.gate.is_some() {
                None
            } else {
                Some(turn.role)
            },
        };
        let slot = pool.slot(&turn.room);
        let mut held = slot.process.lock().await;
        let started = Instant::now();
        // The resume flag of a replacement: the session exists once any turn ran on it.
        let mut resume = resume;
        if let Some(p) = held.as_mut() {
            if !p.process.is_running() {
                tracing::info!(room = %turn.room, pid = p.process.pid(), "warm claude process died between turns; starting another");
                resume |= p.fit.session == fit.session && p.turns > 0;
                held.take();
                pool.forget(&slot);
            } else if p.fit != fit {
                resume |= p.fit.session == fit.session && p.turns > 0;
                if let Some(p) = held.take() {
                    pool.forget(&slot);
                    pool.retire(p, "does not fit the turn");
                }
            }
        }
        let mut reused = held.is_some();
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            if held.is_none() {
                if pool.make_room(&turn.room).is_err() {
                    tracing::info!(room = %turn.room, max = pool.budget.max, "every warm process is busy; running this turn cold");
                    return None;
                }
                match self.spawn_warm(&fit, resume, ctx, pool) {
                    Ok(p) => {
                        let mut info = slot.info();
                        info.pid = Some(p.process.pid());
                        drop(info);
                        tracing::info!(agent = %self.name, room = %turn.room, pid = p.process.pid(), session, resume, "warm claude process started");
                        *held = Some(p);
                    }
                    Err(e) => break Err(e),
                }
            }
            let Some(p) = held.as_mut() else {
                break Err(AgentError::Setup("no warm process".into()));
            };
            let (result, health) = p.turn(turn, ctx, self.timeout).await;
            match health {
                Health::Keep => break result,
                Health::DeadOnArrival if reused && attempts == 1 => {
                    tracing::info!(room = %turn.room, "warm claude process was gone at the turn; resuming in a new one");
                    held.take();
                    pool.forget(&slot);
                    resume = true;
                    reused = false;
                }
                Health::Broken | Health::DeadOnArrival => {
                    if let Some(p) = held.take() {
                        pool.forget(&slot);
                        pool.retire(p, "broken");
                    }
                    break result;
                }
            }
        };
        drop(held);
        pool.touch(&turn.room, &slot);
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(out) => {
                tracing::info!(agent = %self.name, room = %turn.room, session, elapsed_ms, denied = out.denied_tools.len(), "warm claude turn finished")
            }
            Err(e) => {
                tracing::info!(agent = %self.name, room = %turn.room, session, elapsed_ms, error = %e, "warm claude turn failed")
            }
        }
        Some(result)
    }

    fn spawn_warm(
        &self,
        fit: &Fit,
        resume: bool,
        ctx: &TurnContext,
        pool: &Pool,
    ) -> Result<WarmProcess, AgentError> {
        let (settings, relay) = match (&ctx.gate, &self.hook_url) {
            (Some(ticket), Some(url)) => {
                let entry = RelayEntry::new(pool.relay.clone());
                let process_ticket = GateTicket {
                    secret: entry.secret.clone(),
                    timeout: ticket.timeout,
                };
                let file = SettingsFile::write(
                    &self.scratch_dir,
                    url,
                    &process_ticket,
                    self.sandbox.as_ref().and_then(|s| s.user.as_ref()),
                    false,
                )?;
                (Some(file), Some(entry))
            }
            (Some(_), None) => {
                return Err(AgentError::Setup(format!(
                    "agent '{}': its tool calls must be asked, but it has no hook endpoint",
                    self.name
                )))
            }
            (None, _) => (None, None),
        };
        let settings_path = settings.as_ref().map(|s| s.path.clone());
        let session_arg = if resume {
            SessionArg::Resume(&fit.session)
        } else {
            SessionArg::Create(&fit.session)
        };
        let (env_remove, mut env) = self.child_env();
        let sandbox = match self.run_sandbox()? {
            Some((mut sandbox, extra)) => {
                env.extend(extra);
                sandbox.readable_files.extend(settings_path.clone());
                Some(sandbox)
            }
            None => None,
        };
        let role = fit.role.unwrap_or(Role::Guest);
        let mut args = self.argv(&session_arg, role, settings_path.as_deref(), None, None);
        // After `-p`: the CLI reads one JSON user message per line and stays for the next.
        args.splice(
            1..1,
            ["--input-format".to_string(), "stream-json".to_string()],
        );
        let spec = ProcessSpec {
            program: self.command.clone(),
            args,
            cwd: self.working_directory.clone(),
            env_remove,
            env,
            stdin: Vec::new(),
            sandbox,
        };
        let (process, pipes) =
            AgentProcess::spawn_interactive(&spec).map_err(|source| AgentError::Spawn {
                command: spec.program.clone(),
                source,
            })?;
        Ok(WarmProcess {
            process,
            stdin: pipes.stdin,
            stdout: pipes.stdout,
            fit: fit.clone(),
            settings,
            relay,
            cost: 0.0,
            turns: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Live(&'static str);

    #[async_trait]
    impl ToolGate for Live {
        fn is_live(&self, secret: &str) -> bool {
            secret == self.0
        }
        async fn decide(&self, secret: Option<&str>, _call: ToolCall) -> Decision {
            if secret == Some(self.0) {
                Decision::Allow {
                    reason: "live".into(),
                }
            } else {
                Decision::Deny {
                    reason: "not live".into(),
                }
            }
        }
    }

    fn call() -> ToolCall {
        ToolCall {
            tool: "Bash".into(),
            input: json!({"command": "true"}),
            cwd: "/".into(),
        }
    }

    #[tokio::test]
    async fn a_process_secret_stands_for_its_running_turn_only() {
        let relay = Arc::new(Relay::default());
        let gate = RelayGate {
            inner: Arc::new(Live("turn-1")),
            relay: relay.clone(),
        };
        let entry = RelayEntry::new(relay.clone());
        // Between turns: no live turn behind the process secret.
        assert!(!gate.is_live(&entry.secret));
        assert!(!crate::agent::gate::allows(
            &gate.decide(Some(&entry.secret), call()).await
        ));
        {
            let ticket = GateTicket {
                secret: "turn-1".into(),
                timeout: Duration::from_secs(1),
            };
            let _bound = TurnBinding::bind(&entry, &ticket);
            assert!(gate.is_live(&entry.secret));
            assert!(crate::agent::gate::allows(
                &gate.decide(Some(&entry.secret), call()).await
            ));
        }
        assert!(!gate.is_live(&entry.secret));
        // A cold run's own secret passes through.
        assert!(gate.is_live("turn-1"));
        let secret = entry.secret.clone();
        drop(entry);
        assert_eq!(relay.resolve(&secret), Some(secret.clone()));
        assert!(!gate.is_live(&secret));
    }
}
