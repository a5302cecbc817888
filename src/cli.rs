//! Command-line interface: clap definitions and one function per subcommand. Commands that
//! talk to a running daemon go through the control socket; `start` forks before any async
//! runtime exists.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config;
use crate::control::{self, client, proto::Request};
use crate::daemon;
use crate::model::Role;
use crate::policy;

#[derive(Debug, Parser)]
#[command(
    name = "agent-chat-gateway",
    version,
    about = "Bridge chat rooms to CLI coding agents"
)]
pub struct Cli {
    /// Configuration file (default: $ACG_CONFIG, else <runtime dir>/config.yaml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway (as a daemon unless --foreground).
    Start {
        /// Stay in the foreground and log to stderr.
        #[arg(long)]
        foreground: bool,
    },
    /// Stop the running gateway (running turns may finish first).
    Stop,
    /// Stop, then start again.
    Restart,
    /// Show whether the gateway runs (exit code 3 when it does not).
    Status,
    /// List watchers and their rooms, sessions and states.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Pause a watcher: messages are kept and answered after `resume`.
    Pause { watcher: String },
    /// Resume a paused watcher.
    Resume { watcher: String },
    /// Start fresh agent sessions for a watcher's rooms.
    Reset { watcher: String },
    /// Post a message (or a file) to a room: `#channel`, `@user`, a group or a room id.
    Send {
        room: String,
        /// The text, or `-` to read it from stdin.
        text: Option<String>,
        /// Upload this file (the text, if any, is its caption).
        #[arg(long, value_name = "FILE")]
        attach: Option<PathBuf>,
        /// Which connector, when several are configured.
        #[arg(long)]
        connector: Option<String>,
    },
    /// Approve a pending tool call.
    Approve {
        id: String,
        /// Remember this exact call for the rest of the room's session.
        #[arg(long)]
        always: bool,
    },
    /// Deny a pending tool call.
    Deny { id: String },
    /// Check the set-up: configuration, agent executables, runtime dir, the running daemon.
    Doctor,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Tool policy commands.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Tokens and cost of past turns, from the usage ledger (works while the gateway is down).
    Usage {
        /// Only turns since: a duration (7d, 12h, 30m) or a date (2026-12-01, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Sum by room, user, agent or day.
        #[arg(long, value_enum, default_value = "room")]
        by: crate::ledger::By,
        #[arg(long)]
        json: bool,
    },
    /// Write a first configuration (asks on a terminal, or takes flags) and check it.
    Init(crate::init::InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Run the gateway as a systemd service.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the systemd unit (for this configuration) and enable and start it.
    Install {
        /// A user unit (~/.config/systemd/user) instead of a system one (/etc/systemd/system).
        #[arg(long)]
        user: bool,
        /// Only write the unit.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and disable the unit and remove it.
    Uninstall {
        #[arg(long)]
        user: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration and report every problem at once.
    Validate,
    /// Print the configuration file's JSON Schema (for editors: save it and point the YAML
    /// language server at it with `# yaml-language-server: $schema=<file>`).
    Schema,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show what the gateway would decide for one tool call.
    Check(PolicyCheck),
}

#[derive(Debug, Args)]
pub struct PolicyCheck {
    /// Agent whose allow-lists apply.
    #[arg(long)]
    pub agent: String,
    /// owner or guest.
    #[arg(long)]
    pub role: Role,
    /// Tool name as the agent reports it (Bash, Read, WebFetch, mcp__x__y, …).
    #[arg(long)]
    pub tool: String,
    /// Tool input as JSON, e.g. '{"command":"git log"}'.
    #[arg(long)]
    pub input: String,
    /// Working directory for relative paths (default: the agent's working_directory).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Room the turn belongs to (for `agent-chat-gateway send` self-protection checks).
    #[arg(long)]
    pub room: Option<String>,
    #[arg(long)]
    pub json: bool,
}

impl clap::ValueEnum for Role {
    fn value_variants<'a>() -> &'a [Self] {
        &[Role::Owner, Role::Guest]
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // Absolute paths: the daemon changes to `/` after forking.
    let runtime = std::path::absolute(daemon::runtime_dir()).context("bad runtime dir")?;
    let config_file = std::path::absolute(daemon::config_path(cli.config.as_deref(), &runtime))
        .context("bad config path")?;
    match cli.command {
        Command::Start { foreground } => start(&config_file, &runtime, foreground),
        Command::Stop => stop(&runtime, stop_wait(&config_file)).map(|_| 0),
        Command::Restart => {
            stop(&runtime, stop_wait(&config_file))?;
            start(&config_file, &runtime, false)
        }
        Command::Status => status(&runtime),
        Command::List { json } => list(&runtime, json),
        Command::Pause { watcher } => simple(&runtime, Request::Pause { watcher }),
        Command::Resume { watcher } => simple(&runtime, Request::Resume { watcher }),
        Command::Reset { watcher } => simple(&runtime, Request::Reset { watcher }),
        Command::Send {
            room,
            text,
            attach,
            connector,
        } => {
            let text = match text.as_deref() {
                Some("-") => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .context("cannot read stdin")?;
                    Some(s)
                }
                _ => text,
            };
            if text.as_deref().is_none_or(|t| t.trim().is_empty()) && attach.is_none() {
                bail!("nothing to send: give a text, '-' for stdin, or --attach FILE");
            }
            let attach = attach
                .map(|p| {
                    std::path::absolute(&p).with_context(|| format!("bad path {}", p.display()))
                })
                .transpose()?;
            simple(
                &runtime,
                Request::Send {
                    room,
                    text,
                    attach,
                    connector,
                },
            )
        }
        Command::Approve { id, always } => simple(&runtime, Request::Approve { id, always }),
        Command::Deny { id } => simple(&runtime, Request::Deny { id }),
        Command::Config {
            command: ConfigCommand::Validate,
        } => validate(&config_file),
        Command::Config {
            command: ConfigCommand::Schema,
        } => {
            let schema = crate::config::schema::document(crate::TYPES);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(0)
        }
        Command::Doctor => doctor(&config_file, &runtime),
        Command::Policy {
            command: PolicyCommand::Check(check),
        } => policy_check(&config_file, &runtime, check),
        Command::Service { command } => service(&config_file, &runtime, command),
        Command::Usage { since, by, json } => usage(&runtime, since.as_deref(), by, json),
        Command::Init(args) => {
            for line in crate::init::run(args, &config_file, &runtime)? {
                println!("{line}");
            }
            Ok(0)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(
                shell,
                &mut cmd,
                "agent-chat-gateway",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
    }
}

fn service(config_file: &Path, runtime: &Path, command: ServiceCommand) -> anyhow::Result<i32> {
    let lines = match command {
        ServiceCommand::Install { user, no_start } => {
            // A unit on a broken config would only restart and fail.
            let config = load_config(config_file)?;
            let exe = std::env::current_exe().context("cannot tell where this binary is")?;
            let spec = crate::service::UnitSpec {
                exe: std::fs::canonicalize(&exe).unwrap_or(exe),
                config: config_file.to_path_buf(),
                runtime: runtime.to_path_buf(),
                path: std::env::var_os("PATH")
                    .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
                user: (!user).then(service_user).flatten(),
                stop_timeout: (config.shutdown_grace + Duration::from_secs(30)),
            };
            if let (Some(name), Ok(meta)) = (&spec.user, std::fs::metadata(runtime)) {
                use std::os::unix::fs::MetadataExt;
                let owner = nix::unistd::User::from_name(name).ok().flatten();
                if owner.is_some_and(|u| u.uid.as_raw() != meta.uid()) {
                    bail!(
                        "the runtime dir {} is not {name}'s, who the service would run as: \
                         set ACG_HOME (and --config) to {name}'s (with sudo: sudo -E, or run \
                         `service install --user` as {name})",
                        runtime.display()
                    );
                }
            }
            crate::service::install(&spec, user, !no_start)?
        }
        ServiceCommand::Uninstall { user } => crate::service::uninstall(user)?,
    };
    for line in lines {
        println!("{line}");
    }
    Ok(0)
}

fn usage(
    runtime: &Path,
    since: Option<&str>,
    by: crate::ledger::By,
    json: bool,
) -> anyhow::Result<i32> {
    use crate::ledger;
    let now = std::time::SystemTime::now();
    let since = match since {
        Some(s) => ledger::parse_since(s, now).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        None => 0,
    };
    let (entries, bad) = ledger::read(runtime, since)
        .with_context(|| format!("cannot read {}", runtime.join(ledger::FILE).display()))?;
    let groups = ledger::totals(&entries, by);
    if json {
        println!(
            "{}",
            serde_json::json!({"since": since, "by": format!("{by:?}").to_lowercase(), "groups": groups, "unreadable_lines": bad})
        );
    } else {
        println!("usage since {}:", ledger::describe_since(since, now));
        print!("{}", ledger::render(&groups, by));
        if bad > 0 {
            println!("({bad} unreadable line(s) in the ledger skipped)");
        }
    }
    Ok(0)
}

/// Who a system unit runs as: the user behind `sudo`, else the current one.
fn service_user() -> Option<String> {
    if let Some(name) = std::env::var("SUDO_USER").ok().filter(|n| !n.is_empty()) {
        return Some(name);
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn load_config(path: &Path) -> anyhow::Result<config::Config> {
    read_config(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The configuration file, with the connector types this program was built with.
fn read_config(path: &Path) -> Result<config::Config, config::ConfigError> {
    config::load(path, crate::TYPES)
}

fn validate(path: &Path) -> anyhow::Result<i32> {
    match read_config(path) {
        Ok(c) => {
            println!(
                "{} is valid: {} connector(s), {} agent(s), {} watcher(s)",
                path.display(),
                c.connectors.len(),
                c.agents.len(),
                c.watchers.len()
            );
            for w in &c.warnings {
                println!("warning: {w}");
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(1)
        }
    }
}

/// Prints one line per check (`ok`, `warn` or `FAIL`); exit 1 if any check failed.
fn doctor(config_file: &Path, runtime: &Path) -> anyhow::Result<i32> {
    use std::os::unix::fs::PermissionsExt;
    let mut failed = false;
    let mut report = |level: &str, what: String| {
        failed |= level == "FAIL";
        println!("{level:<4} {what}");
    };
    let config = match read_config(config_file) {
        Ok(c) => {
            report("ok", format!("config {} is valid", config_file.display()));
            for w in &c.warnings {
                report("warn", format!("config: {w}"));
            }
            Some(c)
        }
        Err(e) => {
            report("FAIL", format!("{e}"));
            None
        }
    };
    for agent in config.iter().flat_map(|c| c.agents.values()) {
        let Some(agent_type) = crate::agent::registry::AGENTS.find(&agent.kind) else {
            continue;
        };
        match (agent_type.version)(agent) {
            Ok(version) => report(
                "ok",
                format!(
                    "agent '{}' ({}): {} answers {version} (tests pin {})",
                    agent.name, agent.kind, agent.command, agent_type.tested
                ),
            ),
            Err(e) => report(
                "FAIL",
                format!("agent '{}' ({}): {e}", agent.name, agent.kind),
            ),
        }
        match (agent_type.credentials)(agent) {
            Ok(found) => report(
                "ok",
                format!("agent '{}': credentials: {found}", agent.name),
            ),
            Err(missing) => report("warn", format!("agent '{}': {missing}", agent.name)),
        }
        // Pipe agents cannot enable permissions; the config warning already says so.
        let gated = agent_type.gating == crate::config::Gating::Optional;
        if gated && !agent.permissions.enabled {
            report(
                "warn",
                format!(
                    "agent '{}': permissions are off: tools are limited to the allow-lists, with no approvals",
                    agent.name
                ),
            );
        }
        for (level, line) in confinement_checks(agent, config_file, runtime) {
            report(level, line);
        }
    }
    match std::fs::metadata(runtime) {
        Ok(m) if m.permissions().mode() & 0o077 == 0 => {
            report("ok", format!("runtime dir {} is private", runtime.display()))
        }
        Ok(m) => report(
            "FAIL",
            format!(
                "runtime dir {} has mode {:o}; it holds tokens and the control socket: chmod 700 it",
                runtime.display(),
                m.permissions().mode() & 0o777
            ),
        ),
        Err(_) => report(
            "ok",
            format!("runtime dir {} will be created on start", runtime.display()),
        ),
    }
    match daemon::running_pid(runtime) {
        Some(pid) => match ask(runtime, &Request::Status) {
            Ok(v) if v["ok"] == Value::Bool(true) => {
                report("ok", format!("gateway running (pid {pid}) and answering"))
            }
            _ => report(
                "FAIL",
                format!(
                    "gateway pid {pid} holds the pid file but its control socket does not answer"
                ),
            ),
        },
        None => report("ok", "gateway not running".to_string()),
    }
    Ok(if failed { 1 } else { 0 })
}

/// What the OS will enforce on one agent's processes: the kernel's Landlock ABI and how much
/// of the ruleset it enforces, what is granted and denied, and the `run_as` status. Creates
/// nothing (the daemon makes the private tmp when it starts).
fn confinement_checks(
    agent: &config::AgentConfig,
    config_file: &Path,
    runtime: &Path,
) -> Vec<(&'static str, String)> {
    use crate::agent::confine::{self, ConfinementMode, Enforcement, RunAs, Sandbox};
    let name = &agent.name;
    let mut out = Vec::new();
    let abi = confine::abi();
    let enforcement = Enforcement::for_abi(abi);
    let mode = agent.sandbox.confinement;
    let level = match (mode, &enforcement) {
        (ConfinementMode::Off, _) => "warn",
        (ConfinementMode::Required, Enforcement::NotEnforced) => "FAIL",
        (_, Enforcement::NotEnforced) => "warn",
        _ => "ok",
    };
    let status = match mode {
        ConfinementMode::Off => {
            "off: the agent can read the gateway's tokens and state".to_string()
        }
        _ => format!("Landlock ABI {abi}: {}", enforcement.describe()),
    };
    out.push((
        level,
        format!("agent '{name}': confinement {} — {status}", mode.as_str()),
    ));
    let user = match &agent.sandbox.run_as {
        None => {
            out.push((
                "ok",
                format!("agent '{name}': run_as not set: runs as the gateway's user"),
            ));
            None
        }
        Some(u) => match RunAs::resolve(u) {
            Ok(user) => {
                out.push((
                    "ok",
                    format!(
                        "agent '{name}': runs as '{}' (uid {}, gid {}, home {})",
                        user.name,
                        user.uid,
                        user.gid,
                        user.home.display()
                    ),
                ));
                Some(user)
            }
            Err(e) => {
                out.push(("FAIL", format!("agent '{name}': {e}")));
                None
            }
        },
    };
    if mode == ConfinementMode::Off {
        return out;
    }
    for p in agent.sandbox.writable_paths.iter().filter(|p| !p.exists()) {
        out.push((
            "warn",
            format!(
                "agent '{name}': writable path {} does not exist; it is not granted until it does",
                p.display()
            ),
        ));
    }
    let mut writable = agent.sandbox.writable_paths.clone();
    writable.push(agent.working_directory.clone());
    let sandbox = Sandbox {
        mode,
        protected: vec![runtime.to_path_buf(), config_file.to_path_buf()],
        writable,
        private_tmp: None,
        readable_files: Vec::new(),
        user,
    };
    match sandbox.plan() {
        Ok(plan) => {
            let list = |paths: &[PathBuf]| {
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push((
                "ok",
                format!(
                    "agent '{name}': denied: {} (read and write); readable: the rest of the system ({} trees)",
                    list(&plan.protected),
                    plan.read.len()
                ),
            ));
            out.push((
                "ok",
                format!(
                    "agent '{name}': writable: {}, its private tmp, its CLI state under $HOME, and devices ({})",
                    list(&plan.writable),
                    list(&plan.devices)
                ),
            ));
        }
        Err(e) => out.push(("FAIL", format!("agent '{name}': {e}"))),
    }
    out
}

fn start(config_file: &Path, runtime: &Path, foreground: bool) -> anyhow::Result<i32> {
    let config = load_config(config_file)?;
    if let Some(pid) = daemon::running_pid(runtime) {
        bail!("the gateway is already running (pid {pid})");
    }
    if foreground {
        daemon::run_process(
            config,
            runtime.to_path_buf(),
            true,
            daemon::StartupReport::Terminal,
        )?;
        return Ok(0);
    }
    let notes = daemon::start_background(config, runtime.to_path_buf())?;
    let pid = daemon::running_pid(runtime)
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "Gateway started (pid {pid}); log: {}",
        runtime.join(daemon::LOG_FILE).display()
    );
    for n in notes {
        println!("{n}");
    }
    Ok(0)
}

/// How long `stop` waits: the configured grace for running turns plus the final clean-up (at
/// least two minutes, also when the config cannot be read).
fn stop_wait(config_file: &Path) -> Duration {
    let grace = read_config(config_file)
        .map(|c| c.shutdown_grace)
        .unwrap_or(Duration::from_secs(90));
    (grace + Duration::from_secs(30)).max(Duration::from_secs(120))
}

fn stop(runtime: &Path, wait: Duration) -> anyhow::Result<()> {
    let Some(pid) = daemon::running_pid(runtime) else {
        println!("The gateway is not running.");
        return Ok(());
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .with_context(|| format!("cannot signal pid {pid}"))?;
    if daemon::wait_for_exit(runtime, wait) {
        println!("Gateway stopped (pid {pid}).");
        Ok(())
    } else {
        bail!(
            "the gateway (pid {pid}) did not stop within {} s",
            wait.as_secs()
        );
    }
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}

fn ask(runtime: &Path, req: &Request) -> anyhow::Result<Value> {
    let socket = runtime.join(control::SOCKET_NAME);
    let timeout = match req {
        Request::Reset { .. } | Request::Send { .. } => Duration::from_secs(300),
        _ => Duration::from_secs(60),
    };
    Ok(block_on(client::request(&socket, req, timeout))??)
}

/// Requests whose answer is a message: print it, exit 1 on `ok: false`.
fn simple(runtime: &Path, req: Request) -> anyhow::Result<i32> {
    let v = ask(runtime, &req)?;
    if v["ok"] == Value::Bool(true) {
        if let Some(m) = v["message"].as_str() {
            println!("{m}");
        }
        Ok(0)
    } else {
        eprintln!("error: {}", v["error"].as_str().unwrap_or("unknown error"));
        Ok(1)
    }
}

fn status(runtime: &Path) -> anyhow::Result<i32> {
    match ask(runtime, &Request::Status) {
        Ok(v) if v["ok"] == Value::Bool(true) => {
            println!("Gateway is running (pid {}).", v["pid"]);
            if let Some(cs) = v["connectors"].as_array() {
                for c in cs {
                    println!(
                        "  {}: {} ({})",
                        c["name"].as_str().unwrap_or("?"),
                        if c["connected"] == Value::Bool(true) {
                            "connected"
                        } else {
                            "not connected"
                        },
                        c["detail"].as_str().unwrap_or("")
                    );
                }
            }
            println!(
                "  rooms: {}, pending approvals: {}",
                v["rooms"], v["pending_approvals"]
            );
            Ok(0)
        }
        Ok(v) => {
            eprintln!("error: {}", v["error"].as_str().unwrap_or("unknown error"));
            Ok(1)
        }
        Err(_) => {
            match daemon::running_pid(runtime) {
                Some(pid) => println!("Gateway process {pid} holds the pid file but does not answer on its control socket."),
                None => println!("Gateway is not running."),
            }
            Ok(3)
        }
    }
}

fn list(runtime: &Path, json: bool) -> anyhow::Result<i32> {
    let v = ask(runtime, &Request::List)?;
    if v["ok"] != Value::Bool(true) {
        eprintln!("error: {}", v["error"].as_str().unwrap_or("unknown error"));
        return Ok(1);
    }
    let rows = v["watchers"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    if rows.is_empty() {
        println!("No watchers.");
    }
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "{}: ({}) {} [{}] session={} [{}]{}",
            s("watcher"),
            s("connector"),
            s("room"),
            s("agent"),
            s("session_id"),
            s("state"),
            if r["busy"] == Value::Bool(true) {
                format!(" busy, {} queued", r["queued"])
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

fn policy_check(config_file: &Path, runtime: &Path, check: PolicyCheck) -> anyhow::Result<i32> {
    let config = load_config(config_file)?;
    let Some(agent) = config.agents.get(&check.agent) else {
        let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
        bail!(
            "no agent named '{}' (known: {})",
            check.agent,
            known.join(", ")
        );
    };
    let input: Value = serde_json::from_str(&check.input)
        .with_context(|| format!("--input is not valid JSON: {}", check.input))?;
    let cwd = check
        .cwd
        .clone()
        .unwrap_or_else(|| agent.working_directory.clone());
    let mut guard = crate::approval::self_protection(runtime).with_protected(
        std::fs::canonicalize(config_file).unwrap_or_else(|_| config_file.to_path_buf()),
    );
    if let Some(room) = &check.room {
        guard = guard.with_own_room(None, room);
    }
    let outcome = policy::decide(&policy::PolicyInput {
        role: check.role,
        tool: &check.tool,
        input: &input,
        cwd: &cwd,
        owner_rules: &agent.owner_rules,
        guest_rules: &agent.guest_rules,
        skip_owner_approval: agent.permissions.skip_owner_approval,
        guard: &guard,
    });
    let mut report = policy::render_check(&outcome, check.json);
    // A CLI without an approval hook never brings its calls to the gateway: what the rules
    // grant it as a whole is the answer that holds, so say that beside the per-call one.
    let unhooked = crate::agent::registry::AGENTS
        .find(&agent.kind)
        .is_some_and(|t| matches!(t.gating, crate::config::Gating::Unavailable { .. }));
    if unhooked {
        let rules = match check.role {
            Role::Owner => &agent.owner_rules,
            Role::Guest => &agent.guest_rules,
        };
        let grants = crate::agent::pipe::Grants::of(rules);
        if check.json {
            let mut v: Value = serde_json::from_str(&report)?;
            v["per_call"] = Value::Bool(false);
            v["cli_grants"] = serde_json::json!(grants.tools());
            report = v.to_string();
        } else {
            report.push_str(&format!(
                "note: agent '{}' (type {}) does not ask the gateway about each call; the {} role's rules grant the CLI: {}\n",
                check.agent,
                agent.kind,
                check.role,
                grants.describe(),
            ));
        }
    }
    print!("{report}");
    if !report.ends_with('\n') {
        println!();
    }
    Ok(0)
}
