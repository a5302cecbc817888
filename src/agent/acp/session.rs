//! One ACP agent process serving one room: the connection, its session, and the turns run on
//! it one after another.
//!
//! Owns: the worker task (process guard + connection), `initialize` (once per process, with a
//! handshake deadline), choosing the session for a turn (`session/new`, or `session/load`
//! of the room's stored id after a restart or crash, with the replayed history skipped),
//! `session/prompt` and the updates until its response, `session/cancel` on stop or timeout
//! (and the kill when the agent does not honour it), `session/request_permission` → the
//! [`ToolGate`], the file callbacks (after the same gate question), and refusing modes in
//! which the agent would stop asking.
//! Knows nothing about: chat platforms, the policy, the approval broker behind the gate.
//!
//! Fail closed: a permission request the gate did not allow is rejected; one that arrives
//! while the turn is being stopped, or that cannot be bound to the turn, gets `cancelled`;
//! any request the gateway does not implement gets "method not found".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::util::MatchDispatch;
use agent_client_protocol::v1::schema::{
    CancelNotification, ClientCapabilities, ContentBlock, FileSystemCapabilities, Implementation,
    InitializeRequest, InitializeResponse, LoadSessionRequest, NewSessionRequest,
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, SessionModeState, SessionNotification,
    SessionUpdate, SetSessionModeRequest, StopReason, ToolCall as AcpToolCall, ToolCallStatus,
    WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ActiveSession, ConnectionTo, SessionMessage};
use agent_client_protocol::{Agent, Client, Lines, Responder};
use futures_util::FutureExt as _;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{host, tools};
use crate::agent::gate::{allows, GateTicket, ToolGate};
use crate::agent::process::{AgentProcess, ExitInfo, Pipes, ProcessSpec, KILL_GRACE};
use crate::agent::{AgentError, TurnContext};
use crate::model::{AgentEvent, Decision, ToolCall, TurnOutcome, TurnRequest, Usage};

/// How long a fresh process has to answer `initialize`. Most CLIs never answer it without
/// their ACP flag; this turns that into a clear error instead of a hung turn.
const HANDSHAKE: Duration = Duration::from_secs(60);

/// How long an agent has to end a turn after `session/cancel` before it is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How long a process whose connection ended (its input closed) gets to exit by itself,
/// with everything it started, before it is killed: the Claude adapter's CLI writes the
/// last turn to the session's transcript as it exits, and a `session/load` without it
/// continues an older conversation.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Modes in which an agent runs calls without asking (Claude adapter, Gemini CLI).
const UNASKING_MODES: &[&str] = &[
    "bypassPermissions",
    "acceptEdits",
    "auto",
    "yolo",
    "autoEdit",
];

/// What every turn of one agent needs, shared by its workers.
pub struct Settings {
    pub agent: String,
    /// The working directory as a real path (callbacks are confined to it).
    pub cwd: PathBuf,
    pub timeout: Duration,
    /// An idle process is stopped after this long; the next turn loads the session again.
    pub idle_timeout: Duration,
    pub system_prompt: Option<String>,
    pub gate: Arc<dyn ToolGate>,
}

/// One turn handed to a worker.
pub struct Command {
    pub turn: TurnRequest,
    pub ctx: TurnContext,
    pub reply: oneshot::Sender<Result<TurnOutcome, AgentError>>,
}

/// A live worker: where turns go, and how its process ended once it has.
pub struct Worker {
    pub tx: mpsc::Sender<Command>,
    pub exit: watch::Receiver<Option<ExitInfo>>,
    pub pid: u32,
}

impl Worker {
    /// Starts the agent process and its connection under `tracker`; the worker stops when it
    /// has been idle for [`Settings::idle_timeout`], when its agent misbehaves, or at
    /// `shutdown` — killing the process tree each time.
    pub fn spawn(
        spec: &ProcessSpec,
        settings: Arc<Settings>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Worker, AgentError> {
        let (mut process, pipes) =
            AgentProcess::spawn_interactive(spec).map_err(|source| AgentError::Spawn {
                command: spec.program.clone(),
                source,
            })?;
        let pid = process.pid();
        let (tx, rx) = mpsc::channel(1);
        let (exit_tx, exit) = watch::channel(None);
        let agent = settings.agent.clone();
        tracing::debug!(%agent, pid, "acp agent process started");
        tracker.spawn(async move {
            let status = tokio::select! {
                ended = connect(pipes, settings, rx) => {
                    if let Err(e) = ended {
                        tracing::warn!(%agent, pid, error = %e, "acp connection ended");
                    }
                    None
                }
                status = process.wait() => Some(status),
                _ = shutdown.cancelled() => None,
            };
            let status = match status {
                Some(status) => status,
                // A connection that ended on its own usually means the process is exiting:
                // its own status says more than "stopped".
                None => process.wait_for_group(EXIT_GRACE).await,
            };
            let info = match status {
                Ok(s) => ExitInfo {
                    success: s.success(),
                    status: crate::agent::process::describe_status(&s),
                    stderr_tail: process.stderr_tail(),
                },
                Err(e) => ExitInfo {
                    success: false,
                    status: e.to_string(),
                    stderr_tail: process.stderr_tail(),
                },
            };
            tracing::debug!(%agent, pid, status = %info.status, "acp agent process ended");
            let _ = exit_tx.send(Some(info));
        });
        Ok(Worker { tx, exit, pid })
    }

    /// Whether it can take another turn.
    pub fn is_alive(&self) -> bool {
        !self.tx.is_closed() && self.exit.borrow().is_none()
    }
}

/// The process's pipes as the SDK's line transport: one JSON message per line each way.
fn line_transport(
    stdin: tokio::process::ChildStdin,
    stdout: crate::agent::process::LineReader<tokio::process::ChildStdout>,
) -> (
    impl futures_util::Sink<String, Error = std::io::Error> + Send + 'static,
    impl futures_util::Stream<Item = std::io::Result<String>> + Send + 'static,
) {
    let outgoing = futures_util::sink::unfold(stdin, |mut stdin, line: String| async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok::<_, std::io::Error>(stdin)
    });
    // The process guard's bounded line reader: an over-long line is skipped, not buffered.
    let incoming = futures_util::stream::unfold(Some(stdout), |reader| async move {
        let mut reader = reader?;
        match reader.next_line().await {
            Ok(Some(line)) => Some((Ok(line), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    (outgoing, incoming)
}

/// Runs the JSON-RPC connection over the process's pipes until the turn loop ends.
async fn connect(
    pipes: Pipes,
    settings: Arc<Settings>,
    rx: mpsc::Receiver<Command>,
) -> Result<(), agent_client_protocol::Error> {
    let Pipes { stdin, stdout } = pipes;
    let (outgoing, incoming) = line_transport(stdin, stdout);
    Client
        .v1()
        .name("agent-chat-gateway")
        .connect_with(Lines::new(outgoing, incoming), async move |cx| {
            TurnLoop::new(cx, settings).run(rx).await;
            Ok(())
        })
        .await
}

/// `doctor`'s check: starts the agent (unconfined, with its `env`), performs the `initialize`
/// handshake and reports the `agentInfo` it answers with. Runs its own small runtime: the
/// caller is synchronous.
pub fn probe(config: &crate::config::AgentConfig) -> Result<String, String> {
    let (env_remove, env) = crate::agent::claude::child_env(&config.env);
    let spec = ProcessSpec {
        program: config.command.clone(),
        args: config.args.clone(),
        cwd: config.working_directory.clone(),
        env_remove,
        env,
        stdin: Vec::new(),
        sandbox: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let (mut process, pipes) = AgentProcess::spawn_interactive(&spec)
            .map_err(|e| format!("cannot run `{}`: {e}", spec.program))?;
        let Pipes { stdin, stdout } = pipes;
        let (outgoing, incoming) = line_transport(stdin, stdout);
        let handshake = Client.v1().name("agent-chat-gateway doctor").connect_with(
            Lines::new(outgoing, incoming),
            async move |cx| {
                cx.send_request(InitializeRequest::new(ProtocolVersion::V1))
                    .block_task()
                    .await
            },
        );
        let answer = tokio::time::timeout(HANDSHAKE, handshake).await;
        process.kill(KILL_GRACE).await;
        match answer {
            Ok(Ok(init)) => Ok(match init.agent_info {
                Some(info) => format!("{} {} (ACP)", info.name, info.version),
                None => "an ACP agent that does not name itself".to_string(),
            }),
            Ok(Err(e)) => Err(format!("`initialize` failed: {}", describe(&e))),
            Err(_) => Err(format!(
                "no answer to `initialize` within {} s: is it an ACP agent (e.g. `opencode acp`)?",
                HANDSHAKE.as_secs()
            )),
        }
    })
}

/// The session a worker holds.
struct Current {
    id: String,
    session: ActiveSession<'static, Agent>,
}

/// Whether a worker may take the next turn after this one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Continue,
    /// The agent cannot be trusted with another turn (ignored a cancel, left the asking
    /// modes, broke the protocol): the process is killed.
    Stop,
}

struct TurnLoop {
    cx: ConnectionTo<Agent>,
    settings: Arc<Settings>,
    init: Option<InitializeResponse>,
    current: Option<Current>,
}

impl TurnLoop {
    fn new(cx: ConnectionTo<Agent>, settings: Arc<Settings>) -> TurnLoop {
        TurnLoop {
            cx,
            settings,
            init: None,
            current: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let command = match tokio::time::timeout(self.settings.idle_timeout, rx.recv()).await {
                Ok(Some(command)) => command,
                // The backend is gone, or nothing came for a while: the process goes.
                Ok(None) | Err(_) => return,
            };
            let Command { turn, ctx, reply } = command;
            let (result, after) = self.turn(&turn, &ctx).await;
            let _ = reply.send(result);
            if after == After::Stop {
                return;
            }
        }
    }

    async fn turn(
        &mut self,
        turn: &TurnRequest,
        ctx: &TurnContext,
    ) -> (Result<TurnOutcome, AgentError>, After) {
        let deadline = Instant::now() + self.settings.timeout;
        if let Err(e) = self.initialize().await {
            return (Err(e), After::Stop);
        }
        let session_started = match self.choose_session(turn, deadline).await {
            Ok(started) => started,
            Err((e, after)) => return (Err(e), after),
        };
        if let Some(id) = &session_started {
            let _ = ctx
                .events
                .send(AgentEvent::SessionStarted {
                    session_id: id.clone(),
                })
                .await;
        }
        let Some(current) = self.current.as_mut() else {
            return (Err(AgentError::Protocol("no session".into())), After::Stop);
        };
        let stale = discard_queued(&mut current.session);
        if stale > 0 {
            tracing::debug!(
                stale,
                "discarded updates that came after the last prompt's answer"
            );
        }
        if let Err(e) = current.session.send_prompt(&turn.prompt) {
            return (
                Err(AgentError::Protocol(format!(
                    "could not send the prompt: {e}"
                ))),
                After::Stop,
            );
        }
        let mut prompt = PromptRun {
            settings: &self.settings,
            cx: &self.cx,
            session_id: current.id.clone(),
            ctx,
            ticket: ctx.gate.as_ref(),
            deadline,
            reply: Reply::default(),
            stopping: None,
            after: After::Continue,
        };
        let result = prompt.run(&mut current.session).await;
        let after = prompt.after;
        if after == After::Stop {
            self.current = None;
        }
        (result, after)
    }

    async fn initialize(&mut self) -> Result<(), AgentError> {
        if self.init.is_some() {
            return Ok(());
        }
        // Only the callbacks implemented in `host` are offered; no terminals.
        let caps = ClientCapabilities::new().fs(FileSystemCapabilities::new()
            .read_text_file(true)
            .write_text_file(true));
        let request = InitializeRequest::new(ProtocolVersion::V1)
            .client_capabilities(caps)
            .client_info(Implementation::new(
                "agent-chat-gateway",
                env!("CARGO_PKG_VERSION"),
            ));
        let answer = tokio::time::timeout(HANDSHAKE, self.cx.send_request(request).block_task());
        match answer.await {
            Ok(Ok(init)) => {
                tracing::info!(agent = %self.settings.agent,
                    acp_agent = ?init.agent_info.as_ref().map(|i| format!("{} {}", i.name, i.version)),
                    load_session = init.agent_capabilities.load_session, "acp agent initialized");
                self.init = Some(init);
                Ok(())
            }
            Ok(Err(e)) => Err(AgentError::Protocol(format!("initialize failed: {e}"))),
            Err(_) => Err(AgentError::Protocol(format!(
                "the agent did not answer `initialize` within {} s (is the command an ACP agent, e.g. `opencode acp`?)",
                HANDSHAKE.as_secs()
            ))),
        }
    }

    fn is_claude_adapter(&self) -> bool {
        self.init
            .as_ref()
            .and_then(|i| i.agent_info.as_ref())
            .is_some_and(|i| i.name.contains("claude"))
    }

    fn session_meta(&self) -> Option<Map<String, Value>> {
        self.is_claude_adapter()
            .then(|| tools::claude_session_meta(self.settings.system_prompt.as_deref()))
    }

    /// Makes `self.current` the session the turn continues: the one held, the room's stored
    /// id loaded, or a new one (whose id is returned).
    async fn choose_session(
        &mut self,
        turn: &TurnRequest,
        deadline: Instant,
    ) -> Result<Option<String>, (AgentError, After)> {
        let timed_out = || (AgentError::Timeout(self.settings.timeout), After::Stop);
        match &turn.session {
            Some(id) if self.current.as_ref().is_some_and(|c| c.id == *id) => Ok(None),
            Some(id) => {
                self.current = None;
                let can_load = self
                    .init
                    .as_ref()
                    .is_some_and(|i| i.agent_capabilities.load_session);
                if !can_load {
                    tracing::warn!(agent = %self.settings.agent, session = %id, "the agent cannot load sessions");
                    return Err((AgentError::SessionNotFound(id.clone()), After::Continue));
                }
                let mut request = LoadSessionRequest::new(id.clone(), self.settings.cwd.clone());
                request.meta = self.session_meta();
                let load = self
                    .cx
                    .load_session_from(request)
                    .block_task()
                    .start_session();
                let setup = match tokio::time::timeout_at(deadline, load).await {
                    Ok(Ok(setup)) => setup,
                    Ok(Err(e)) => {
                        tracing::warn!(agent = %self.settings.agent, session = %id, error = %e, "session/load failed");
                        return Err((AgentError::SessionNotFound(id.clone()), After::Continue));
                    }
                    Err(_) => return Err(timed_out()),
                };
                let mut session = setup.session;
                let skipped = discard_queued(&mut session);
                self.ensure_asking(id, setup.response.modes.as_ref(), deadline)
                    .await?;
                let late = self
                    .replay_barrier(id, setup.response.modes.as_ref(), deadline, &mut session)
                    .await;
                tracing::debug!(skipped, late, "skipped the replayed session history");
                self.current = Some(Current {
                    id: id.clone(),
                    session,
                });
                Ok(None)
            }
            None => {
                self.current = None;
                let mut request = NewSessionRequest::new(self.settings.cwd.clone());
                request.meta = self.session_meta();
                let start = self
                    .cx
                    .build_session_from(request)
                    .block_task()
                    .start_session();
                let setup = match tokio::time::timeout_at(deadline, start).await {
                    Ok(Ok(setup)) => setup,
                    Ok(Err(e)) => {
                        return Err((
                            AgentError::Protocol(format!("session/new failed: {}", describe(&e))),
                            After::Continue,
                        ))
                    }
                    Err(_) => return Err(timed_out()),
                };
                let id = setup.response.session_id.to_string();
                self.ensure_asking(&id, setup.response.modes.as_ref(), deadline)
                    .await?;
                self.current = Some(Current {
                    id: id.clone(),
                    session: setup.session,
                });
                Ok(Some(id))
            }
        }
    }

    /// A session that starts in a mode that does not ask (a project's settings can choose
    /// one) is switched to `default`; one that cannot be switched is not used.
    async fn ensure_asking(
        &self,
        id: &str,
        modes: Option<&SessionModeState>,
        deadline: Instant,
    ) -> Result<(), (AgentError, After)> {
        let Some(modes) = modes else {
            return Ok(());
        };
        let current = modes.current_mode_id.to_string();
        if !UNASKING_MODES.contains(&current.as_str()) {
            return Ok(());
        }
        let refused = |why: String| {
            (
                AgentError::Setup(format!(
                    "agent '{}': the session runs in mode '{current}', which does not ask about tool calls ({why})",
                    self.settings.agent
                )),
                After::Stop,
            )
        };
        if !modes
            .available_modes
            .iter()
            .any(|m| m.id.to_string() == "default")
        {
            return Err(refused("no `default` mode to switch to".into()));
        }
        let switch = self
            .cx
            .send_request(SetSessionModeRequest::new(id.to_string(), "default"))
            .block_task();
        match tokio::time::timeout_at(deadline, switch).await {
            Ok(Ok(_)) => {
                tracing::info!(agent = %self.settings.agent, session = id, from = %current, "switched the session to the default mode");
                Ok(())
            }
            Ok(Err(e)) => Err(refused(format!("switching failed: {e}"))),
            Err(_) => Err(refused("switching timed out".into())),
        }
    }
}

/// Takes everything the session's channel holds now, answering any request in it (with
/// "method not found"); how many. After `session/load`'s answer that is the replay: the
/// protocol has the agent stream the history before it answers, and the SDK routes each
/// message into the session's channel in order, before the answer is delivered. Before a
/// prompt it is what came after the previous prompt's answer, which belongs to no turn.
fn discard_queued(session: &mut ActiveSession<'static, Agent>) -> usize {
    let mut discarded = 0;
    while let Some(message) = session.read_update().now_or_never() {
        let Ok(message) = message else { break };
        discarded += 1;
        if let SessionMessage::Message(dispatch) = message {
            if let Err(e) = MatchDispatch::new(dispatch.into_raw()).otherwise_ignore() {
                tracing::debug!(error = %e, "could not answer a request during replay");
            }
        }
    }
    discarded
}

impl TurnLoop {
    /// Gemini CLI (0.61.0) answers `session/load` after its first replayed update and
    /// writes the rest behind the answer, before it reads its next request. So a request
    /// sent now is answered after the whole replay: `session/set_mode` to the mode the
    /// session is in (no change), whose answer, error or not, marks where the replay ends.
    /// Whatever arrived before it is discarded (how many). An agent without modes has
    /// nothing to ask here; the protocol's order (history before the answer) then holds.
    async fn replay_barrier(
        &self,
        id: &str,
        modes: Option<&SessionModeState>,
        deadline: Instant,
        session: &mut ActiveSession<'static, Agent>,
    ) -> usize {
        let Some(modes) = modes else {
            return 0;
        };
        let mut mode = modes.current_mode_id.to_string();
        if UNASKING_MODES.contains(&mode.as_str()) {
            mode = "default".into(); // `ensure_asking` switched it
        }
        let barrier = self
            .cx
            .send_request(SetSessionModeRequest::new(id.to_string(), mode))
            .block_task();
        if tokio::time::timeout_at(deadline, barrier).await.is_err() {
            tracing::warn!(agent = %self.settings.agent, "no answer to session/set_mode after session/load");
        }
        discard_queued(session)
    }
}

/// What the agent sent, sorted.
enum Incoming {
    Update(SessionNotification),
    Permission(
        RequestPermissionRequest,
        Responder<RequestPermissionResponse>,
    ),
    Read(ReadTextFileRequest, Responder<ReadTextFileResponse>),
    Write(WriteTextFileRequest, Responder<WriteTextFileResponse>),
    /// Already answered ("method not found") or ignored.
    Other,
}

async fn sort(message: agent_client_protocol::v1::Dispatch) -> Incoming {
    let mut sorted = None;
    let matched = MatchDispatch::new(message.into_raw())
        .if_notification(async |n: SessionNotification| {
            sorted = Some(Incoming::Update(n));
            Ok(())
        })
        .await;
    let matched = matched
        .if_request(async |r: RequestPermissionRequest, responder| {
            sorted = Some(Incoming::Permission(r, responder));
            Ok(())
        })
        .await;
    let matched = matched
        .if_request(async |r: ReadTextFileRequest, responder| {
            sorted = Some(Incoming::Read(r, responder));
            Ok(())
        })
        .await;
    let matched = matched
        .if_request(async |r: WriteTextFileRequest, responder| {
            sorted = Some(Incoming::Write(r, responder));
            Ok(())
        })
        .await;
    if let Err(e) = matched.otherwise_ignore() {
        tracing::debug!(error = %e, "an agent message could not be handled");
    }
    sorted.unwrap_or(Incoming::Other)
}

/// One `session/prompt` from send to response.
struct PromptRun<'a> {
    settings: &'a Settings,
    cx: &'a ConnectionTo<Agent>,
    session_id: String,
    ctx: &'a TurnContext,
    ticket: Option<&'a GateTicket>,
    deadline: Instant,
    reply: Reply,
    /// Set once `session/cancel` was sent: why, and until when the agent may still answer.
    stopping: Option<(AgentError, Instant)>,
    after: After,
}

impl PromptRun<'_> {
    async fn run(
        &mut self,
        session: &mut ActiveSession<'static, Agent>,
    ) -> Result<TurnOutcome, AgentError> {
        loop {
            let message = match &self.stopping {
                Some((_, grace)) => {
                    match tokio::time::timeout_at(*grace, session.read_update()).await {
                        Ok(message) => message,
                        Err(_) => {
                            tracing::warn!(agent = %self.settings.agent, "the agent did not end the turn after session/cancel; killing it");
                            self.after = After::Stop;
                            return Err(self.take_stop_reason());
                        }
                    }
                }
                None => tokio::select! {
                    biased;
                    _ = self.ctx.cancel.cancelled() => {
                        self.stop(AgentError::Cancelled);
                        continue;
                    }
                    _ = tokio::time::sleep_until(self.deadline) => {
                        self.stop(AgentError::Timeout(self.settings.timeout));
                        continue;
                    }
                    message = session.read_update() => message,
                },
            };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    self.after = After::Stop;
                    return Err(AgentError::Crashed {
                        status: "the agent's connection closed".into(),
                        stderr_tail: describe(&e),
                    });
                }
            };
            match message {
                SessionMessage::PromptResponse(Ok(response)) => {
                    if self.stopping.is_some() {
                        return Err(self.take_stop_reason());
                    }
                    if response.stop_reason == StopReason::Cancelled {
                        return Err(AgentError::Cancelled);
                    }
                    return Ok(self.finish(response).await);
                }
                SessionMessage::PromptResponse(Err(e)) => {
                    if self.stopping.is_some() {
                        return Err(self.take_stop_reason());
                    }
                    // The SDK fails the pending prompt when the agent's output ends: a crash.
                    if agent_client_protocol::is_incoming_transport_closed(&e) {
                        self.after = After::Stop;
                        return Err(AgentError::Crashed {
                            status: "the agent's output ended".into(),
                            stderr_tail: String::new(),
                        });
                    }
                    // The prompt's error carries the model API's refusal in the agent's words.
                    return Err(crate::agent::api_error(&describe(&e)));
                }
                SessionMessage::Message(dispatch) => self.on_message(dispatch).await,
                // Kinds a later SDK may add: nothing this turn waits for.
                _ => {}
            }
        }
    }

    /// Asks the agent to end the turn (it answers the prompt with `cancelled`).
    fn stop(&mut self, why: AgentError) {
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(agent = %self.settings.agent, reason = %why, "cancelling the acp turn");
        if let Err(e) = self
            .cx
            .send_notification(CancelNotification::new(self.session_id.clone()))
        {
            tracing::warn!(error = %e, "could not send session/cancel");
        }
        self.stopping = Some((why, Instant::now() + CANCEL_GRACE));
    }

    fn take_stop_reason(&mut self) -> AgentError {
        match self.stopping.take() {
            Some((why, _)) => why,
            None => AgentError::Cancelled,
        }
    }

    async fn on_message(&mut self, message: agent_client_protocol::v1::Dispatch) {
        match sort(message).await {
            Incoming::Update(n) => self.on_update(n).await,
            Incoming::Permission(request, responder) => {
                self.on_permission(request, responder).await
            }
            Incoming::Read(request, responder) => {
                let result = self.read_file(&request).await;
                answer(responder, result.map(ReadTextFileResponse::new));
            }
            Incoming::Write(request, responder) => {
                let result = self.write_file(&request).await;
                answer(responder, result.map(|()| WriteTextFileResponse::new()));
            }
            Incoming::Other => {}
        }
    }

    async fn on_update(&mut self, n: SessionNotification) {
        if n.session_id.to_string() != self.session_id {
            return;
        }
        if let SessionUpdate::CurrentModeUpdate(m) = &n.update {
            let mode = m.current_mode_id.to_string();
            if UNASKING_MODES.contains(&mode.as_str()) {
                tracing::warn!(agent = %self.settings.agent, %mode, "the agent left the asking modes; stopping it");
                self.after = After::Stop;
                self.stop(AgentError::Setup(format!(
                    "agent '{}' switched to mode '{mode}', which does not ask about tool calls",
                    self.settings.agent
                )));
                return;
            }
        }
        for event in self.reply.on_update(n.update) {
            self.emit(event).await;
        }
    }

    async fn emit(&self, event: AgentEvent) {
        tokio::select! {
            biased;
            _ = self.ctx.cancel.cancelled() => {}
            _ = tokio::time::sleep_until(self.deadline) => {}
            _ = self.ctx.events.send(event) => {}
        }
    }

    async fn on_permission(
        &mut self,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) {
        let cancelled = RequestPermissionResponse::new(RequestPermissionOutcome::Cancelled);
        if request.session_id.to_string() != self.session_id || self.stopping.is_some() {
            answer(responder, Ok(cancelled));
            return;
        }
        let call = self
            .reply
            .call_for(request.tool_call.clone(), &self.settings.cwd);
        let name = call.tool.clone();
        let Some(decision) = self.ask(call).await else {
            // Stopped (or out of time) while the owner was being asked: the loop sends
            // session/cancel next, and the spec wants pending requests answered cancelled.
            answer(responder, Ok(cancelled));
            return;
        };
        let allowed = allows(&decision);
        if !allowed {
            self.reply.denied.push(name.clone());
        }
        tracing::info!(agent = %self.settings.agent, tool = %name, decision = decision.word(), "acp permission answered");
        let outcome = match tools::choose(&request.options, allowed) {
            Some(id) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(id)),
            None => RequestPermissionOutcome::Cancelled,
        };
        answer(responder, Ok(RequestPermissionResponse::new(outcome)));
    }

    /// The gate's decision; `None` when the turn is stopped or runs out of time first.
    /// Without a ticket the call cannot be bound to a turn: denied.
    async fn ask(&self, call: ToolCall) -> Option<Decision> {
        let Some(ticket) = self.ticket else {
            return Some(Decision::Deny {
                reason: "the turn has no gate ticket".into(),
            });
        };
        tokio::select! {
            biased;
            _ = self.ctx.cancel.cancelled() => None,
            _ = tokio::time::sleep_until(self.deadline) => None,
            decision = self.settings.gate.decide(Some(&ticket.secret), call) => Some(decision),
        }
    }

    /// `fs/read_text_file`: inside the working directory, and what the gate allows as `Read`.
    async fn read_file(&mut self, r: &ReadTextFileRequest) -> Result<String, String> {
        self.check_session(&r.session_id.to_string())?;
        let path = host::confine(&self.settings.cwd, &r.path, false).map_err(|e| e.to_string())?;
        let call = ToolCall {
            tool: "Read".into(),
            input: json!({ "file_path": path.display().to_string() }),
            cwd: self.settings.cwd.clone(),
        };
        self.gate_callback(call).await?;
        let (line, limit) = (r.line, r.limit);
        tokio::task::spawn_blocking(move || host::read(&path, line, limit))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// `fs/write_text_file`: inside the working directory, and what the gate allows as `Write`.
    async fn write_file(&mut self, r: &WriteTextFileRequest) -> Result<(), String> {
        self.check_session(&r.session_id.to_string())?;
        let path = host::confine(&self.settings.cwd, &r.path, true).map_err(|e| e.to_string())?;
        let call = ToolCall {
            tool: "Write".into(),
            input: json!({ "file_path": path.display().to_string(), "content": r.content }),
            cwd: self.settings.cwd.clone(),
        };
        self.gate_callback(call).await?;
        let content = r.content.clone();
        tokio::task::spawn_blocking(move || host::write(&path, &content))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    fn check_session(&self, id: &str) -> Result<(), String> {
        if self.stopping.is_some() {
            return Err("the turn is being stopped".into());
        }
        if id != self.session_id {
            return Err(format!("unknown session {id}"));
        }
        Ok(())
    }

    async fn gate_callback(&mut self, call: ToolCall) -> Result<(), String> {
        let name = call.tool.clone();
        match self.ask(call).await {
            Some(d) if allows(&d) => Ok(()),
            Some(d) => {
                self.reply.denied.push(name);
                Err(format!("denied by the gateway: {}", d.reason()))
            }
            None => Err("the turn is being stopped".into()),
        }
    }

    async fn finish(
        &mut self,
        response: agent_client_protocol::v1::schema::PromptResponse,
    ) -> TurnOutcome {
        for event in self.reply.flush() {
            self.emit(event).await;
        }
        let mut usage = self.reply.usage.take();
        if let Some(u) = response.usage {
            let mine = usage.get_or_insert_with(Usage::default);
            mine.input_tokens = u.input_tokens;
            mine.output_tokens = u.output_tokens;
            mine.cache_read_tokens = u.cached_read_tokens.unwrap_or(0);
            mine.cache_write_tokens = u.cached_write_tokens.unwrap_or(0);
        }
        if let Some(u) = &usage {
            self.emit(AgentEvent::Usage(u.clone())).await;
        }
        if response.stop_reason != StopReason::EndTurn {
            tracing::info!(agent = %self.settings.agent, stop_reason = ?response.stop_reason, "acp turn ended early");
        }
        TurnOutcome {
            session_id: Some(self.session_id.clone()),
            text: self.reply.answer(),
            usage,
            denied_tools: std::mem::take(&mut self.reply.denied),
        }
    }
}

/// Answers an agent's request, logging a failure to (it only fails once the connection is gone).
fn answer<T: agent_client_protocol::JsonRpcResponse>(
    responder: Responder<T>,
    result: Result<T, String>,
) {
    let sent = match result {
        Ok(value) => responder.respond(value),
        Err(message) => responder.respond_with_error(
            agent_client_protocol::Error::invalid_request().data(json!(message)),
        ),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "could not answer the agent");
    }
}

/// An SDK error as one line: message plus data.
fn describe(e: &agent_client_protocol::Error) -> String {
    match &e.data {
        Some(data) => format!("{} ({data})", e.message),
        None => e.message.clone(),
    }
}

/// The reply as the updates build it: text per agent message, thoughts, tool calls by id,
/// usage, and the tools refused.
#[derive(Default)]
struct Reply {
    /// Finished agent messages, in order.
    messages: Vec<String>,
    message_id: Option<String>,
    text: String,
    thought: String,
    tools: HashMap<String, AcpToolCall>,
    usage: Option<Usage>,
    denied: Vec<String>,
}

impl Reply {
    fn on_update(&mut self, update: SessionUpdate) -> Vec<AgentEvent> {
        let mut events = Vec::new();
        match update {
            SessionUpdate::AgentMessageChunk(chunk) => {
                let ContentBlock::Text(t) = chunk.content else {
                    return events;
                };
                let id = chunk.message_id.map(|m| m.to_string());
                if id != self.message_id {
                    events.extend(self.flush());
                    self.message_id = id;
                }
                events.extend(self.flush_thought());
                self.text.push_str(&t.text);
            }
            SessionUpdate::AgentThoughtChunk(chunk) => {
                if let ContentBlock::Text(t) = chunk.content {
                    self.thought.push_str(&t.text);
                }
            }
            SessionUpdate::ToolCall(call) => {
                events.extend(self.flush());
                let id = call.tool_call_id.to_string();
                events.push(AgentEvent::ToolStart {
                    id: id.clone(),
                    name: call.name.clone().unwrap_or_else(|| call.title.clone()),
                    input: call
                        .raw_input
                        .as_ref()
                        .map(Value::to_string)
                        .unwrap_or_default(),
                });
                if let Some(ev) = result_event(&id, &call.status) {
                    events.push(ev);
                }
                self.tools.insert(id, call);
            }
            SessionUpdate::ToolCallUpdate(update) => {
                let id = update.tool_call_id.to_string();
                let status = update.fields.status;
                match self.tools.get_mut(&id) {
                    Some(call) => call.update(update.fields),
                    None => {
                        if let Ok(call) = AcpToolCall::try_from(update) {
                            self.tools.insert(id.clone(), call);
                        }
                    }
                }
                if let Some(ev) = status.as_ref().and_then(|s| result_event(&id, s)) {
                    events.push(ev);
                }
            }
            SessionUpdate::UsageUpdate(u) => {
                let usage = self.usage.get_or_insert_with(Usage::default);
                usage.context_window = Some(u.size);
                if let Some(cost) = u.cost.filter(|c| c.currency.eq_ignore_ascii_case("USD")) {
                    usage.cost_usd = Some(cost.amount);
                }
            }
            _ => {}
        }
        events
    }

    /// The neutral call a permission request is about: the tool call as the updates built it,
    /// with the request's own fields (its input is what will run) applied last.
    fn call_for(
        &self,
        asked: agent_client_protocol::v1::schema::ToolCallUpdate,
        cwd: &std::path::Path,
    ) -> ToolCall {
        let id = asked.tool_call_id.to_string();
        let meta = asked.meta.clone();
        let mut call = match self.tools.get(&id) {
            Some(known) => {
                let mut known = known.clone();
                known.update(asked.fields);
                known
            }
            None => AcpToolCall::try_from(asked.clone()).unwrap_or_else(|_| {
                let mut c = AcpToolCall::new(asked.tool_call_id.clone(), "");
                c.update(asked.fields);
                c
            }),
        };
        if meta.is_some() {
            call.meta = meta;
        }
        tools::neutral_call(&call, cwd)
    }

    fn flush_thought(&mut self) -> Option<AgentEvent> {
        let thought = std::mem::take(&mut self.thought);
        (!thought.trim().is_empty()).then_some(AgentEvent::Thinking { text: thought })
    }

    /// Ends the message being streamed, if any.
    fn flush(&mut self) -> Vec<AgentEvent> {
        let mut events: Vec<AgentEvent> = self.flush_thought().into_iter().collect();
        let text = std::mem::take(&mut self.text);
        if !text.trim().is_empty() {
            events.push(AgentEvent::Text { text: text.clone() });
            self.messages.push(text);
        }
        events
    }

    /// The answer to post: the last message (the one after the last tool call), like the
    /// `result` of Claude's stream.
    fn answer(&self) -> String {
        self.messages.last().cloned().unwrap_or_default()
    }
}

fn result_event(id: &str, status: &ToolCallStatus) -> Option<AgentEvent> {
    match status {
        ToolCallStatus::Completed => Some(AgentEvent::ToolResult {
            id: id.to_string(),
            is_error: false,
        }),
        ToolCallStatus::Failed => Some(AgentEvent::ToolResult {
            id: id.to_string(),
            is_error: true,
        }),
        _ => None,
    }
}
