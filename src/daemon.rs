//! The daemon: runtime dir, pid file (held with flock), double fork with a start-up pipe,
//! logging, signals, and the wiring of every task under cancellation tokens and trackers.
//!
//! Shutdown is two-phase: first stop taking messages and let running turns finish (up to
//! `shutdown_grace`), then cancel what is left (agents are killed, pending approvals denied),
//! then stop the services (connectors, agents' own endpoints such as Claude's hook server,
//! the control server) and flush state.
//!
//! Agents are built through `agent::registry` (no agent is named here); the approval broker
//! is handed to each permission-enabled agent as its `ToolGate`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::agent::confine::{self, ConfinementMode, Enforcement, RunAs, Sandbox};
use crate::agent::gate::ToolGate;
use crate::agent::registry::{self, BuildContext};
use crate::agent::AgentBackend;
use crate::approval::{audit::AuditLog, Approvals};
use crate::config::{AgentConfig, Config};
use crate::connector::{self, ConnectorContext, Connectors, EventSink};
use crate::control;
use crate::dispatch::{Dispatcher, DispatcherParts};
use crate::state::StateStore;

pub const PID_FILE: &str = "gateway.pid";
pub const LOG_FILE: &str = "gateway.log";
/// How long tasks left on the runtime after shutdown get to finish before they are dropped.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// `$ACG_HOME`, else `~/.agent-chat-gateway`.
pub fn runtime_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("ACG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".agent-chat-gateway")
}

/// `--config`, else `$ACG_CONFIG`, else `<runtime dir>/config.yaml`.
pub fn config_path(flag: Option<&Path>, runtime: &Path) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("ACG_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    runtime.join("config.yaml")
}

/// Creates the runtime dir (mode 0700: it holds tokens, state and the control socket).
pub fn ensure_runtime_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    Ok(())
}

/// The pid file, locked for the daemon's whole life. A second instance fails to lock it.
pub struct PidLock {
    _lock: Flock<File>,
}

pub fn lock_pid_file(dir: &Path) -> anyhow::Result<PidLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(PID_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!("the gateway is already running (pid {})", pid.trim());
        }
    };
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;
    lock.sync_all()?;
    Ok(PidLock { _lock: lock })
}

/// The pid of a running daemon, if its pid file is locked.
pub fn running_pid(dir: &Path) -> Option<i32> {
    let path = dir.join(PID_FILE);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_unlocked) => None,
        Err((_, _)) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
    }
}

/// Blocks until the pid file's lock is released (the daemon exited), up to `timeout`.
pub fn wait_for_exit(dir: &Path, timeout: Duration) -> bool {
    let path = dir.join(PID_FILE);
    let Ok(file) = File::open(&path) else {
        return true;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Flock::lock(file, FlockArg::LockShared).is_ok());
    });
    rx.recv_timeout(timeout).unwrap_or(false)
}

/// How the foreground process reports start-up to the `start` command waiting on the pipe.
pub enum StartupReport {
    /// Print to stdout (foreground mode).
    Terminal,
    /// Write to the pipe the parent reads.
    Pipe(File),
    /// In-process: the notes, or the reason of failure.
    Notify(tokio::sync::oneshot::Sender<Result<Vec<String>, String>>),
}

impl StartupReport {
    fn success(self, notes: &[String]) {
        match self {
            StartupReport::Terminal => {
                for n in notes {
                    println!("{n}");
                }
            }
            StartupReport::Pipe(mut f) => {
                for n in notes {
                    let _ = writeln!(f, "note: {n}");
                }
                let _ = writeln!(f, "ok");
            }
            StartupReport::Notify(tx) => {
                let _ = tx.send(Ok(notes.to_vec()));
            }
        }
    }

    fn failure(self, err: &anyhow::Error) {
        match self {
            StartupReport::Pipe(mut f) => {
                let _ = writeln!(f, "error: {err:#}");
            }
            StartupReport::Notify(tx) => {
                let _ = tx.send(Err(format!("{err:#}")));
            }
            StartupReport::Terminal => {}
        }
    }
}

/// `start` without `--foreground`: fork twice (no tokio runtime exists yet), let the
/// grandchild run the daemon, and wait on a pipe for its verdict. Returns the lines to print
/// on success, or the real reason of failure.
pub fn start_background(config: Config, runtime: PathBuf) -> anyhow::Result<Vec<String>> {
    // Close-on-exec: an agent spawned before the verdict is written (a replayed message, a
    // warm process) must not inherit the write end, or `start` would wait until it exits.
    let (read_fd, write_fd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the start-up pipe")?;
    match fork::fork().map_err(|e| anyhow::anyhow!("fork failed: {e}"))? {
        fork::Fork::Parent(child) => {
            drop(write_fd);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
            let mut report = String::new();
            File::from(read_fd)
                .read_to_string(&mut report)
                .context("cannot read the start-up pipe")?;
            let mut notes = Vec::new();
            for line in report.lines() {
                if let Some(n) = line.strip_prefix("note: ") {
                    notes.push(n.to_string());
                } else if let Some(e) = line.strip_prefix("error: ") {
                    bail!("{e}");
                } else if line == "ok" {
                    return Ok(notes);
                }
            }
            bail!(
                "the gateway exited during start-up; see {}",
                runtime.join(LOG_FILE).display()
            )
        }
        fork::Fork::Child => {
            drop(read_fd);
            let _ = nix::unistd::setsid();
            match fork::fork() {
                Ok(fork::Fork::Parent(_)) => std::process::exit(0),
                Ok(fork::Fork::Child) => {
                    // Hold no directory busy (paths are absolute by now).
                    let _ = std::env::set_current_dir("/");
                    detach_stdio();
                    let pipe = File::from(write_fd);
                    let code = match run_process(config, runtime, false, StartupReport::Pipe(pipe))
                    {
                        Ok(()) => 0,
                        Err(_) => 1,
                    };
                    std::process::exit(code);
                }
                Err(_) => std::process::exit(1),
            }
        }
    }
}

fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..=2 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

/// Sets up logging and a tokio runtime, runs the daemon until a signal or `stop`.
pub fn run_process(
    config: Config,
    runtime: PathBuf,
    foreground: bool,
    report: StartupReport,
) -> anyhow::Result<()> {
    // Before any thread starts: the variable leaves the environment agents inherit.
    crate::service::take_notify_socket();
    ensure_runtime_dir(&runtime)?;
    let pid = lock_pid_file(&runtime)?;
    let log_guard = init_logging(&runtime, foreground, &config.log)?;
    // Success is passed on at once; a failure only once the pid lock is released below, so a
    // `status` right after a refused `start` never finds a dying daemon holding the lock.
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<Vec<String>, String>>();
    let forward = std::thread::spawn(move || match rx.blocking_recv() {
        Ok(Ok(notes)) => {
            report.success(&notes);
            None
        }
        Ok(Err(why)) => Some((report, why)),
        Err(_) => Some((
            report,
            "the daemon stopped before it finished starting".to_string(),
        )),
    });
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            let outcome = rt.block_on(async {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone())?;
                let notify = StartupReport::Notify(tx);
                run(config, runtime.clone(), shutdown, notify, Connectors::new()).await
            });
            // Tasks still parked on the runtime hold sockets and ports; release them now.
            rt.shutdown_timeout(RUNTIME_SHUTDOWN);
            outcome
        });
    if let Err(e) = &outcome {
        error!("{e:#}");
    }
    // `stop` returns as soon as the pid lock is free, so everything the process holds goes
    // first: the log writer's last lines are flushed, then the lock is released.
    drop(log_guard);
    drop(pid);
    if let Ok(Some((report, why))) = forward.join() {
        report.failure(&anyhow::anyhow!(why));
    }
    outcome
}

fn init_logging(
    runtime: &Path,
    foreground: bool,
    log: &crate::config::LogConfig,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if foreground {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        return Ok(None);
    }
    let path = runtime.join(LOG_FILE);
    let appender = crate::logfile::RotatingFile::open(&path, log.max_bytes, log.keep)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(appender);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(writer)
        .try_init();
    Ok(Some(guard))
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// The daemon itself, usable in-process (benchmarks, embedding): wires everything, reports
/// start-up, runs until `shutdown` fires, then stops in two phases. `embedded` supplies the
/// connectors of `type: embedded` sections by name.
pub async fn run(
    config: Config,
    runtime: PathBuf,
    shutdown: CancellationToken,
    report: StartupReport,
    embedded: Connectors,
) -> anyhow::Result<()> {
    // Not dumpable: `/proc/<daemon>/environ` and `mem` become readable by root only, so an
    // agent of the same user cannot read the secrets given to the config through `${VAR}`.
    // Agents are unaffected (execve resets the flag).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make the daemon non-dumpable");
    }
    let services = CancellationToken::new();
    let service_tasks = TaskTracker::new();
    let room_tasks = TaskTracker::new();
    let drain = CancellationToken::new();
    let kill = CancellationToken::new();

    let started = start(
        &config,
        &runtime,
        embedded,
        Tokens {
            services: &services,
            drain: &drain,
            kill: &kill,
            shutdown: &shutdown,
        },
        &service_tasks,
        &room_tasks,
    )
    .await;
    let started = match started {
        Ok(s) => s,
        Err(e) => {
            services.cancel();
            service_tasks.close();
            service_tasks.wait().await;
            report.failure(&e);
            return Err(e);
        }
    };
    info!(pid = std::process::id(), runtime = %runtime.display(), "gateway started");
    report.success(&started.notes);
    crate::service::notify("READY=1");

    shutdown.cancelled().await;
    crate::service::notify("STOPPING=1");
    info!("stopping: no new messages; waiting for running turns");
    drain.cancel();
    // Nobody will answer a prompt now: pending approvals are denied at once (and later hook
    // calls find no live turn), so running turns can finish instead of waiting out the grace.
    if let Some(a) = &started.approvals {
        a.shutdown();
    }
    room_tasks.close();
    if tokio::time::timeout(config.shutdown_grace, room_tasks.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "turns still running after the grace period; stopping them");
    }
    kill.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), room_tasks.wait()).await;
    services.cancel();
    service_tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), service_tasks.wait()).await;
    if let Err(e) = started.store.flush() {
        error!(error = %e, "final state write failed");
    }
    let _ = std::fs::remove_file(runtime.join(control::SOCKET_NAME));
    for dir in &started.temporary {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            warn!(dir = %dir.display(), error = %e, "could not remove an agent's temporary dir");
        }
    }
    info!("gateway stopped");
    Ok(())
}

/// The confinement shared by every run of one agent: the runtime dir and the config file are
/// protected, the agent's `writable_paths` and a private tmp are writable, and a `run_as`
/// user is resolved (refused unless the daemon is root). Checked here, at start, so a config
/// that cannot be confined fails before any message is taken. Also returns the agent's
/// scratch dir for per-run settings files, and the dirs to remove when the daemon stops.
pub fn agent_sandbox(
    cfg: &AgentConfig,
    config_file: &Path,
    runtime: &Path,
) -> anyhow::Result<(Sandbox, PathBuf, Vec<PathBuf>)> {
    let user = match &cfg.sandbox.run_as {
        Some(name) => Some(RunAs::resolve(name)?),
        None => None,
    };
    let mut scratch = runtime.join("agents").join(&cfg.name);
    let mut temporary = Vec::new();
    ensure_runtime_dir(&scratch)?;
    let private_tmp = match &user {
        // The runtime dir is 0700: another user cannot even traverse it, so its tmp lives in
        // the system tmp, under a fresh random name (mkdtemp: never a pre-made path), and is
        // handed to that user.
        Some(u) => {
            use std::os::unix::fs::PermissionsExt;
            let dir = mkdtemp_in(&format!("acg-{}-XXXXXX", cfg.name))?;
            std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid))
                .with_context(|| format!("cannot hand {} to {}", dir.display(), u.name))?;
            // Settings files must be readable by that user too: a root-owned 0711 dir lets it
            // open a file whose random name it is told, but list nothing; each file is 0600,
            // its own, and granted by Landlock to its run alone.
            temporary.push(dir.clone());
            scratch = mkdtemp_in(&format!("acg-{}-settings-XXXXXX", cfg.name))?;
            temporary.push(scratch.clone());
            std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("cannot set the mode of {}", scratch.display()))?;
            dir
        }
        None => {
            let dir = scratch.join("tmp");
            ensure_runtime_dir(&dir)?;
            dir
        }
    };
    let sandbox = Sandbox {
        mode: cfg.sandbox.confinement,
        protected: vec![runtime.to_path_buf(), config_file.to_path_buf()],
        writable: cfg.sandbox.writable_paths.clone(),
        private_tmp: Some(private_tmp),
        readable_files: Vec::new(),
        user,
    };
    if sandbox.mode != ConfinementMode::Off {
        let mut check = sandbox.clone();
        check.writable.push(cfg.working_directory.clone());
        check.plan()?;
        if sandbox.mode == ConfinementMode::Required && confine::abi() < 1 {
            bail!(confine::ConfineError::Unavailable(
                "Landlock is missing or disabled".into()
            ));
        }
    }
    Ok((sandbox, scratch, temporary))
}

/// A fresh directory under the system tmp (mode 0700, a random name nobody could pre-make).
fn mkdtemp_in(template: &str) -> anyhow::Result<PathBuf> {
    let template = std::env::temp_dir().join(template);
    nix::unistd::mkdtemp(&template)
        .with_context(|| format!("cannot create a directory like {}", template.display()))
}

/// One start-up line per agent saying what the OS actually enforces; a loud `warn!` when
/// nothing is.
fn log_confinement(cfg: &AgentConfig, sandbox: &Sandbox) {
    let abi = confine::abi();
    let run_as = sandbox
        .user
        .as_ref()
        .map(|u| u.name.as_str())
        .unwrap_or("(the gateway's user)");
    match (sandbox.mode, Enforcement::for_abi(abi)) {
        (ConfinementMode::Off, _) => warn!(
            agent = %cfg.name, run_as,
            "confinement is off: the agent can read the gateway's tokens and state; only the tool policy stands in its way"
        ),
        (_, Enforcement::NotEnforced) => warn!(
            agent = %cfg.name, abi, run_as,
            "Landlock is unavailable on this kernel: the agent runs UNCONFINED (confinement: best_effort); set `confinement: required` to refuse this"
        ),
        (mode, enforcement) => info!(
            agent = %cfg.name, abi, mode = mode.as_str(), run_as,
            "agent confinement (Landlock): {}", enforcement.describe()
        ),
    }
}

struct Started {
    notes: Vec<String>,
    store: StateStore,
    approvals: Option<Arc<Approvals>>,
    /// `run_as` agents' private tmp and settings dirs under the system tmp.
    temporary: Vec<PathBuf>,
}

struct Tokens<'a> {
    services: &'a CancellationToken,
    drain: &'a CancellationToken,
    kill: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

async fn start(
    config: &Config,
    runtime: &Path,
    mut embedded: Connectors,
    tokens: Tokens<'_>,
    service_tasks: &TaskTracker,
    room_tasks: &TaskTracker,
) -> anyhow::Result<Started> {
    let Tokens {
        services,
        drain,
        kill,
        shutdown,
    } = tokens;
    ensure_runtime_dir(runtime)?;
    // What a daemon killed with -9 left behind: its agents died with it (parent-death
    // signal), but tools they started in sessions of their own may not have.
    let marker = crate::agent::process::agent_marker(runtime);
    let swept = crate::agent::process::sweep_leftovers(&marker);
    if swept > 0 {
        warn!(
            killed = swept,
            "stopped agent processes left over by an earlier gateway on this runtime dir"
        );
    }
    let control_listener = control::server::bind(&runtime.join(control::SOCKET_NAME)).await?;
    let admin_listener = match &config.admin {
        Some(admin) => Some(crate::admin::bind(admin.listen).await?),
        None => None,
    };

    let names: Vec<Arc<str>> = config
        .connectors
        .iter()
        .map(|c| Arc::from(c.name.as_str()))
        .collect();
    let (store, warnings) = StateStore::open(runtime, &names);
    for w in warnings {
        warn!("{w}");
    }

    let mut connectors: Connectors = HashMap::new();
    let mut notes = Vec::new();
    for w in &config.warnings {
        warn!("config: {w}");
        notes.push(format!("warning: {w}"));
    }
    for (name, cfg) in names.iter().zip(&config.connectors) {
        let c = match embedded.remove(name) {
            Some(c) => c,
            None => {
                connector::build(cfg, runtime).with_context(|| format!("connector '{name}'"))?
            }
        };
        c.prepare()
            .await
            .with_context(|| format!("connector '{name}'"))?;
        notes.extend(c.startup_notes());
        connectors.insert(name.clone(), c);
    }
    let connectors = Arc::new(connectors);

    let approvals = if config.agents.values().any(|a| a.permissions.enabled) {
        let config_file = std::fs::canonicalize(&config.path).unwrap_or(config.path.clone());
        Some(Approvals::new(
            runtime.to_path_buf(),
            &[config_file],
            AuditLog::open(&runtime.join("audit.jsonl")),
            service_tasks.clone(),
        ))
    } else {
        None
    };

    let mut agents: HashMap<String, Arc<dyn AgentBackend>> = HashMap::new();
    let mut temporary = Vec::new();
    for (name, cfg) in &config.agents {
        // Every agent process (and what it starts) carries the marker the sweep looks for.
        let mut cfg = cfg.clone();
        cfg.env.push((
            crate::agent::process::AGENT_MARKER_ENV.to_string(),
            marker.clone(),
        ));
        let cfg = &cfg;
        let (sandbox, scratch, dirs) =
            agent_sandbox(cfg, &config.path, runtime).with_context(|| format!("agent '{name}'"))?;
        temporary.extend(dirs);
        log_confinement(cfg, &sandbox);
        let agent_type = registry::AGENTS
            .find(&cfg.kind)
            .with_context(|| format!("agent '{name}': unknown type '{}'", cfg.kind))?;
        let gate = match &approvals {
            Some(a) if cfg.permissions.enabled => Some(a.clone() as Arc<dyn ToolGate>),
            _ => None,
        };
        let backend = (agent_type.build)(BuildContext {
            config: cfg,
            sandbox,
            scratch,
            gate,
            tracker: service_tasks,
            cancel: services,
        })
        .with_context(|| format!("agent '{name}'"))?;
        agents.insert(name.clone(), backend);
    }

    service_tasks.spawn(store.clone().run_writer(services.clone()));

    let (events_tx, events_rx) = mpsc::channel(1024);
    for (name, c) in connectors.iter() {
        let watched = config
            .watchers
            .iter()
            .filter(|w| *w.connector == **name)
            .map(|w| w.room.clone())
            .collect();
        let ctx = ConnectorContext {
            events: EventSink::new(name.clone(), events_tx.clone()),
            cancel: services.clone(),
            watched,
            attachments_dir: runtime.join("attachments").join(&**name),
            store: store.connector_store(name.clone()),
        };
        let c = c.clone();
        let name = name.clone();
        let shutdown = shutdown.clone();
        service_tasks.spawn(async move {
            if let Err(e) = c.run(ctx).await {
                error!(connector = %name, "connector stopped: {e:#}; stopping the gateway");
                shutdown.cancel();
            }
        });
    }
    drop(events_tx);

    let (control_tx, control_rx) = mpsc::channel(64);
    if let Some(listener) = admin_listener {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "admin endpoint listening (/healthz, /readyz, /metrics)");
            notes.push(format!("admin endpoint: http://{addr}/metrics"));
        }
        service_tasks.spawn(crate::admin::serve(
            listener,
            control_tx.clone(),
            services.clone(),
        ));
    }
    service_tasks.spawn(control::server::serve(
        control_listener,
        control_tx,
        shutdown.clone(),
        service_tasks.clone(),
        services.clone(),
    ));

    let dispatcher = Dispatcher::new(DispatcherParts {
        config: Arc::new(config.clone()),
        connectors,
        agents,
        approvals: approvals.clone(),
        store: store.clone(),
        tracker: room_tasks.clone(),
        drain: drain.clone(),
        kill: kill.clone(),
    });
    room_tasks.spawn(dispatcher.run(events_rx, control_rx));
    Ok(Started {
        temporary,
        notes,
        store,
        approvals,
    })
}
