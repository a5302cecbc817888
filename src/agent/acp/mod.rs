//! ACP backend (`type: acp`): any Agent Client Protocol agent over stdio — the Claude adapter
//! (`claude-agent-acp`), `opencode acp`, `gemini --acp` — on the official
//! `agent-client-protocol` SDK.
//!
//! Owns: its registry entry ([`AGENT_TYPE`]) and config keys, one worker per room (one agent
//! process that keeps the room's session across turns; respawned, with `session/load`, when
//! it died or was stopped for idleness), the child's environment and confinement. The
//! connection and the turn loop are `session.rs`; the mapping of ACP tool calls onto the
//! rules' tool names and the permission options is `tools.rs`; the file callbacks `host.rs`.
//! Must not import: `connector`, `approval` (the broker is only a [`ToolGate`] here).
//!
//! Every tool call the agent asks about goes to the gate (`session/request_permission`), and
//! so does every file callback. What the agent does without asking is up to the agent: the
//! Claude adapter is told to ask about every built-in tool (an `ask` rule for each, which
//! beats `allow` rules in the project's settings) and is kept out of the modes that skip
//! asking; OpenCode is started with `ask` for every tool (`OPENCODE_PERMISSION`); Gemini CLI
//! asks about shell and write calls in its default mode, but runs its read-only tools without
//! asking, and its shell calls carry no `rawInput` (only a display title), so they are
//! decided as the unknown tool `acp:execute`, never by a `Bash` rule. Arguments that skip
//! asking (`--yolo`, `--approval-mode`, …) are refused. For every agent the OS confinement
//! (Landlock, `run_as`) is the hard boundary.

mod host;
mod session;
mod tools;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_yaml::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::confine::Sandbox;
use super::gate::ToolGate;
use super::process::ProcessSpec;
use super::registry::{AgentType, BuildContext};
use super::state::{self, StateLayout};
use super::warm::ProcessInfo;
use super::{claude, AgentBackend, AgentError, TurnContext};
use crate::config::{AgentConfig, AgentSettings, Gating, Validator};
use crate::model::{RoomKey, TurnOutcome, TurnRequest};
use session::{Command, Settings, Worker};

/// ACP agents in the [agent registry](super::registry). The gateway must decide their calls:
/// `permissions.enabled` is required.
pub const AGENT_TYPE: AgentType = AgentType {
    name: "acp",
    default_command: "claude-agent-acp",
    keys: &["idle_timeout", "max_warm_agents"],
    parse,
    schema: crate::config::schema::of::<Section>,
    gating: Gating::Required,
    credentials: |c| state::credentials(&state::layout_of_command(&c.command), &c.env),
    version: session::probe,
    tested: "claude-agent-acp 0.49.0 (@agentclientprotocol/claude-agent-acp)",
    build,
};

/// Keys only ACP sections have.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Section {
    /// Seconds an idle agent process is kept for its room (default 900).
    #[serde(default = "default_idle_timeout")]
    idle_timeout: u64,
    /// How many rooms may keep a process at once (default from memory, `agent::warm`).
    #[serde(default)]
    max_warm_agents: Option<usize>,
}

fn default_idle_timeout() -> u64 {
    900
}

/// What `parse` leaves for `build`.
#[derive(Debug)]
struct AcpSettings {
    idle_timeout: Duration,
    max_warm_agents: usize,
}

fn parse(path: &str, own: Value, v: &mut Validator) -> Option<AgentSettings> {
    let own = match own {
        Value::Mapping(m) if m.is_empty() => Value::Mapping(serde_yaml::Mapping::new()),
        other => other,
    };
    let section: Section = v.parse(path, own)?;
    if section.idle_timeout == 0 {
        v.error(format!("{path}.idle_timeout"), "must be at least 1 second");
        return None;
    }
    if section.max_warm_agents == Some(0) {
        v.error(format!("{path}.max_warm_agents"), "must be at least 1");
        return None;
    }
    Some(AgentSettings::new(AcpSettings {
        idle_timeout: Duration::from_secs(section.idle_timeout),
        max_warm_agents: section
            .max_warm_agents
            .unwrap_or_else(|| crate::agent::warm::Budget::default().max),
    }))
}

fn build(ctx: BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>> {
    let Some(gate) = ctx.gate else {
        anyhow::bail!(
            "agent '{}': type acp needs `permissions: {{enabled: true}}` (the gateway decides its tool calls)",
            ctx.config.name
        );
    };
    let own = ctx.config.settings.get::<AcpSettings>();
    let idle_timeout = own.map_or(Duration::from_secs(default_idle_timeout()), |s| {
        s.idle_timeout
    });
    let backend = AcpBackend::new(
        ctx.config,
        Some(ctx.sandbox),
        gate,
        idle_timeout,
        ctx.tracker.clone(),
        ctx.cancel.clone(),
    );
    Ok(Arc::new(match own {
        Some(s) => backend.with_max_warm(s.max_warm_agents),
        None => backend,
    }))
}

/// Arguments that start an ACP agent in a mode that skips asking (Gemini CLI's
/// `--yolo`/`--approval-mode`, the CLIs' skip-permission flags).
const SKIPS_ASKING: &[&str] = &[
    "-y",
    "--yolo",
    "--approval-mode",
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--permission-mode",
    "--dangerously-bypass-approvals-and-sandbox",
    "--full-auto",
];

/// Room → its worker; the inner lock also keeps a room's turns one at a time.
type Workers = Mutex<HashMap<RoomKey, Arc<Slot>>>;

#[derive(Default)]
struct Slot {
    worker: tokio::sync::Mutex<Option<Worker>>,
    /// The worker's pid and when its last turn ended, readable while a turn runs.
    seen: Mutex<Option<(u32, tokio::time::Instant)>>,
}

impl Slot {
    fn seen(&self) -> std::sync::MutexGuard<'_, Option<(u32, tokio::time::Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct AcpBackend {
    command: String,
    args: Vec<String>,
    working_directory: PathBuf,
    env: Vec<(String, String)>,
    sandbox: Option<Sandbox>,
    /// What the CLI behind the command writes of its own (see `agent::state`).
    layout: StateLayout,
    settings: Arc<Settings>,
    workers: Workers,
    /// How many rooms may keep a process at once; the least recently used idle one is
    /// stopped to make room (`agent::warm`).
    max_warm: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl AcpBackend {
    /// `sandbox: None` runs the agent unconfined (tests of the protocol only).
    pub fn new(
        config: &AgentConfig,
        sandbox: Option<Sandbox>,
        gate: Arc<dyn ToolGate>,
        idle_timeout: Duration,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> AcpBackend {
        let cwd = super::confine::real_path(&config.working_directory);
        AcpBackend {
            command: config.command.clone(),
            args: config.args.clone(),
            working_directory: config.working_directory.clone(),
            env: config.env.clone(),
            sandbox,
            layout: state::layout_of_command(&config.command),
            settings: Arc::new(Settings {
                agent: config.name.clone(),
                cwd,
                timeout: config.timeout,
                idle_timeout,
                system_prompt: config
                    .system_prompt
                    .clone()
                    .filter(|s| !s.trim().is_empty()),
                gate,
            }),
            workers: Mutex::new(HashMap::new()),
            max_warm: usize::MAX,
            tracker,
            shutdown,
        }
    }

    /// At most `max` rooms keep a process at once (`max_warm_agents`).
    pub fn with_max_warm(mut self, max: usize) -> AcpBackend {
        self.max_warm = max.max(1);
        self
    }

    /// Stops the least recently used idle worker of another room when `max_warm` rooms
    /// have one; a busy worker (its slot locked by a turn) is never stopped. When all are
    /// busy the new one is started anyway: an ACP agent has no one-process-per-turn mode.
    fn make_room(&self, for_room: &RoomKey) {
        let mut live: Vec<(tokio::time::Instant, RoomKey, Arc<Slot>)> = {
            let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            workers
                .iter()
                .filter(|(k, _)| *k != for_room)
                .filter_map(|(k, s)| {
                    let used = s.seen().map(|(_, used)| used)?;
                    // Locked: a turn runs on it. Otherwise it may have stopped when idle.
                    let alive = s
                        .worker
                        .try_lock()
                        .map_or(true, |w| w.as_ref().is_some_and(Worker::is_alive));
                    alive.then(|| (used, k.clone(), s.clone()))
                })
                .collect()
        };
        if live.len() < self.max_warm {
            return;
        }
        live.sort_by_key(|(used, _, _)| *used);
        let mut excess = live.len() + 1 - self.max_warm;
        for (_, room, slot) in live {
            let Ok(mut held) = slot.worker.try_lock() else {
                continue;
            };
            if held.take().is_some() {
                // Dropping the worker closes its queue: the turn loop ends and the process
                // is stopped; the room's next turn loads its session in a new one.
                *slot.seen() = None;
                tracing::info!(agent = %self.settings.agent, %room, "warm process budget full; stopping the least recently used idle agent");
                excess -= 1;
                if excess == 0 {
                    return;
                }
            }
        }
    }

    /// The agent process for one room: the agent's `env` (never the hook secret's variable),
    /// the state dirs of the CLI behind the command writable (`agent::state`), and for the
    /// Claude adapter `IS_SANDBOX=1` when it runs as root (without it the adapter's CLI exits
    /// at `session/new`).
    fn spec(&self) -> Result<ProcessSpec, AgentError> {
        let (env_remove, mut env) = claude::child_env(&self.env);
        let sandbox = match state::run_sandbox(
            self.sandbox.as_ref(),
            &self.layout,
            &self.working_directory,
            &self.env,
        )? {
            Some((sandbox, extra)) => {
                env.extend(extra);
                Some(sandbox)
            }
            None => None,
        };
        let uid = match sandbox.as_ref().and_then(|s| s.user.as_ref()) {
            Some(user) => user.uid,
            None => nix::unistd::geteuid().as_raw(),
        };
        // OpenCode runs the tools its permissions `allow` (by default: all of them) without
        // asking; `ask` for every tool makes each call a `session/request_permission`
        // (verified, opencode-ai 1.18.33). Set last, so it beats the agent's `env`.
        if self.layout == state::OPENCODE {
            env.push(("OPENCODE_PERMISSION".into(), r#"{"*":"ask"}"#.into()));
        }
        let is_claude = self.layout == state::CLAUDE;
        if is_claude && uid == 0 && !self.env.iter().any(|(k, _)| k == "IS_SANDBOX") {
            env.push(("IS_SANDBOX".into(), "1".into()));
        }
        if let Some(arg) = self.args.iter().find(|a| {
            let flag = a.split('=').next().unwrap_or(a);
            SKIPS_ASKING.contains(&flag)
        }) {
            return Err(AgentError::Setup(format!(
                "argument '{arg}' would let the agent run tools without asking the gateway"
            )));
        }
        Ok(ProcessSpec {
            program: self.command.clone(),
            args: self.args.clone(),
            cwd: self.working_directory.clone(),
            env_remove,
            env,
            stdin: Vec::new(),
            sandbox,
        })
    }

    fn slot(&self, room: &RoomKey) -> Arc<Slot> {
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = workers.get(room) {
            return slot.clone();
        }
        // Only when the map grows (not on every turn): slots of rooms whose worker stopped,
        // and that no turn holds, go, so the map is as large as the rooms with a live agent.
        workers.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .worker
                    .try_lock()
                    .is_ok_and(|w| w.as_ref().is_some_and(Worker::is_alive))
        });
        workers.entry(room.clone()).or_default().clone()
    }
}

#[async_trait]
impl AgentBackend for AcpBackend {
    async fn run_turn(
        &self,
        turn: TurnRequest,
        ctx: TurnContext,
    ) -> Result<TurnOutcome, AgentError> {
        super::pipe::refuse_model_override(&turn, "an ACP agent")?;
        let slot = self.slot(&turn.room);
        let mut held = slot.worker.lock().await;
        if !held.as_ref().is_some_and(Worker::is_alive) {
            *slot.seen() = None;
            let spec = self.spec()?;
            self.make_room(&turn.room);
            let worker = Worker::spawn(
                &spec,
                self.settings.clone(),
                &self.tracker,
                self.shutdown.child_token(),
            )?;
            *slot.seen() = Some((worker.pid, tokio::time::Instant::now()));
            *held = Some(worker);
        }
        let Some(worker) = held.as_ref() else {
            return Err(AgentError::Setup("no worker".into()));
        };
        let mut exit = worker.exit.clone();
        let (reply, answer) = oneshot::channel();
        let room = turn.room.clone();
        if worker.tx.send(Command { turn, ctx, reply }).await.is_err() {
            return Err(crashed(&mut exit).await);
        }
        let result = match answer.await {
            // The process ended: how it ended is the worker's to tell.
            Ok(Err(AgentError::Crashed { .. })) | Err(_) => Err(crashed(&mut exit).await),
            Ok(result) => result,
        };
        if let Err(e) = &result {
            tracing::info!(agent = %self.settings.agent, %room, pid = worker.pid, error = %e, "acp turn failed");
        }
        *slot.seen() = worker
            .is_alive()
            .then(|| (worker.pid, tokio::time::Instant::now()));
        result
    }

    fn working_directory(&self) -> &PathBuf {
        &self.working_directory
    }

    fn process_info(&self, room: &RoomKey) -> Option<ProcessInfo> {
        let slot = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)?
            .clone();
        let (pid, _) = (*slot.seen())?;
        // The worker stops itself when idle past `idle_timeout`: only a live process counts.
        let rss_bytes = super::process::rss_of(pid);
        rss_bytes.map(|rss| ProcessInfo {
            pid,
            rss_bytes: Some(rss),
        })
    }

    async fn retire(&self, room: &RoomKey) {
        let slot = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)
            .cloned();
        let Some(slot) = slot else {
            return;
        };
        // Held until the process is gone, so no turn of the room starts another meanwhile.
        let mut held = slot.worker.lock().await;
        let Some(worker) = held.take() else {
            return;
        };
        *slot.seen() = None;
        let mut exit = worker.exit.clone();
        // Dropping the worker closes its queue: the turn loop ends and the process is
        // stopped (see `Worker::spawn`), which the exit watch reports.
        drop(worker);
        let _ = exit.wait_for(Option::is_some).await;
        tracing::debug!(agent = %self.settings.agent, %room, "acp agent process retired");
    }
}

/// The crash as the process's end describes it (waiting briefly for the worker to record it).
async fn crashed(
    exit: &mut tokio::sync::watch::Receiver<Option<super::process::ExitInfo>>,
) -> AgentError {
    let ended = tokio::time::timeout(Duration::from_secs(5), exit.wait_for(Option::is_some)).await;
    match ended
        .ok()
        .and_then(|r| r.ok())
        .and_then(|info| info.clone())
    {
        Some(info) => AgentError::Crashed {
            status: info.status,
            stderr_tail: info.stderr_tail,
        },
        None => AgentError::Crashed {
            status: "the agent process stopped".into(),
            stderr_tail: String::new(),
        },
    }
}
