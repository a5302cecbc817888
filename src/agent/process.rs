//! The agent subprocess guard: one child process per turn, in its own process group, that
//! never outlives its owner — and [`run`], the NDJSON run loop every pipe-style agent (one
//! process per turn, one JSON object per stdout line) reuses.
//!
//! Owns: spawning (new process group, piped stdio, prompt written to stdin then closed),
//! reading stdout line by line with a bounded line size, keeping a bounded tail of stderr
//! for error messages, and killing the whole group (SIGTERM, short grace, SIGKILL) on
//! timeout, cancellation or drop — always reaping the child; driving one run to its end
//! (deadline, cancellation, events sent without blocking past either, exit info).
//! Knows nothing about: any particular agent CLI or its output format (an agent maps lines
//! through its [`LineProtocol`]).
//!
//! Every agent process is started here, so OS confinement lives here too: the spec's
//! [`Sandbox`] is turned into a Landlock ruleset (and a `run_as` user into ids) before fork,
//! and the child only enters it in `pre_exec` (see `confine`).
//!
//! The process group is not enough on its own: Claude Code 2.1.197 runs each Bash tool
//! command in a new session (`setsid`), so a group signal misses a hung `sleep 300` the
//! agent started. Kills therefore also signal every descendant found in `/proc` (checked by
//! start time, so a reused pid is never hit) and the groups those descendants lead. A
//! process that double-forked away before the kill (parent = init) is out of reach, and so
//! is one that outlives a normal exit of the CLI in a session of its own (2.1.197 stops its
//! own `run_in_background` shells when it exits; verified).

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use tokio::time::Instant;

use super::confine::{Prepared, Sandbox};
use super::{AgentError, TurnContext};
use crate::model::{AgentEvent, TurnOutcome};

/// Longest stdout line kept. Claude Code prints whole tool results on one line; big ones
/// broke a 1 MiB reader in practice, so the limit is generous. Longer lines are skipped.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How much of the end of stderr is kept for error messages.
pub const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How long the group gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// After the child exits, how long to wait for the stderr reader to see end-of-file.
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// How a run ended, for the agent's [`LineProtocol::finish`].
#[derive(Debug, Clone)]
pub struct ExitInfo {
    pub success: bool,
    /// `exit code 1`, `killed by signal 9`, ….
    pub status: String,
    pub stderr_tail: String,
}

/// An agent's mapping of its stdout lines: events while the run goes, an outcome at the end.
pub trait LineProtocol: Send {
    /// Consumes one stdout line; returns the events it carries (often none). A line it does
    /// not understand is logged and skipped, never an error of its own.
    fn feed(&mut self, line: &str) -> Vec<AgentEvent>;
    /// The turn's outcome once stdout closed and the process exited. Every run ends here
    /// (unless it timed out or was cancelled), so an agent whose CLI ends without a final
    /// line still produces exactly one outcome.
    fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError>;
}

/// One run of a pipe-style agent.
pub struct Run<'a> {
    /// The agent's name, for logs.
    pub agent: &'a str,
    pub spec: &'a ProcessSpec,
    /// The whole run, from spawn to exit.
    pub timeout: Duration,
}

/// Spawns `run.spec` (confined by its sandbox, like every agent process), feeds every stdout
/// line to `protocol` and sends the events on, and ends the turn: the outcome from
/// [`LineProtocol::finish`], or [`AgentError::Timeout`] / [`AgentError::Cancelled`] with the
/// process tree killed. `on_output` runs before each line is handled (Claude removes its
/// secret's settings file at the first one).
pub async fn run<P: LineProtocol>(
    run: Run<'_>,
    ctx: &TurnContext,
    protocol: P,
    mut on_output: impl FnMut() + Send,
) -> Result<TurnOutcome, AgentError> {
    let mut child = AgentProcess::spawn(run.spec).map_err(|source| AgentError::Spawn {
        command: run.spec.program.clone(),
        source,
    })?;
    tracing::debug!(agent = %run.agent, pid = child.pid(), "agent process started");
    let deadline = Instant::now() + run.timeout;
    let result = drive(&run, &mut child, ctx, protocol, deadline, &mut on_output).await;
    if let Err(AgentError::Timeout(_) | AgentError::Cancelled) = &result {
        child.kill(KILL_GRACE).await;
    }
    result
}

/// Reads the run to its end. On timeout or cancellation returns at once; the caller kills.
async fn drive<P: LineProtocol>(
    run: &Run<'_>,
    child: &mut AgentProcess,
    ctx: &TurnContext,
    mut protocol: P,
    deadline: Instant,
    on_output: &mut (impl FnMut() + Send),
) -> Result<TurnOutcome, AgentError> {
    let timeout = run.timeout;
    loop {
        let line = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Err(AgentError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(AgentError::Timeout(timeout)),
            line = child.next_line() => line,
        };
        on_output();
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(agent = %run.agent, error = %e, "reading agent output failed");
                break;
            }
        };
        for event in protocol.feed(&line) {
            emit(ctx, event, deadline, timeout).await?;
        }
    }
    let status = tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => return Err(AgentError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => return Err(AgentError::Timeout(timeout)),
        status = child.wait() => status,
    };
    let exit = match status {
        Ok(s) => ExitInfo {
            success: s.success(),
            status: describe_status(&s),
            stderr_tail: child.stderr_tail(),
        },
        Err(e) => ExitInfo {
            success: false,
            status: format!("wait failed: {e}"),
            stderr_tail: child.stderr_tail(),
        },
    };
    if child.skipped_lines() > 0 {
        tracing::warn!(agent = %run.agent, skipped = child.skipped_lines(), "the agent printed over-long lines that were skipped");
    }
    protocol.finish(&exit)
}

/// Sends an event without ever blocking past the turn's deadline or its cancellation. A
/// closed receiver is not an error: the turn still produces its outcome.
async fn emit(
    ctx: &TurnContext,
    event: AgentEvent,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), AgentError> {
    tokio::select! {
        biased;
        _ = ctx.cancel.cancelled() => Err(AgentError::Cancelled),
        _ = tokio::time::sleep_until(deadline) => Err(AgentError::Timeout(timeout)),
        sent = ctx.events.send(event) => {
            if sent.is_err() {
                tracing::debug!("agent event receiver is gone; dropping event");
            }
            Ok(())
        }
    }
}

/// `exit code 1`, `killed by signal 9`, ….
pub fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Variables removed from the inherited environment.
    pub env_remove: Vec<String>,
    /// Variables set on top of the inherited environment (after removals).
    pub env: Vec<(String, String)>,
    /// Written to the child's stdin, which is then closed.
    pub stdin: Vec<u8>,
    /// OS confinement; `None` only where a caller deliberately runs a trusted helper.
    pub sandbox: Option<Sandbox>,
}

/// A running child process. Dropping it kills the whole process group and reaps the child.
pub struct AgentProcess {
    /// `None` once the child has been reaped.
    child: Option<Child>,
    pid: u32,
    /// `None` once handed out by [`AgentProcess::spawn_interactive`].
    stdout: Option<LineReader<ChildStdout>>,
    stderr: Arc<Mutex<TailBuffer>>,
    stderr_task: Option<JoinHandle<()>>,
    /// Writes `spec.stdin` and closes the pipe (`None` for an interactive child).
    stdin_task: Option<JoinHandle<()>>,
}

/// The pipes of an interactive child: requests go to `stdin`, answers come from `stdout`.
pub struct Pipes {
    pub stdin: ChildStdin,
    pub stdout: LineReader<ChildStdout>,
}

impl AgentProcess {
    /// Starts the child in a new process group (its pid is the group id); `spec.stdin` is
    /// written to it and the pipe closed.
    pub fn spawn(spec: &ProcessSpec) -> io::Result<AgentProcess> {
        Self::start(spec, false).map(|(process, _)| process)
    }

    /// Like [`spawn`](Self::spawn), for an agent that talks over its stdio for as long as it
    /// lives (ACP): `spec.stdin` is ignored and both pipes are handed to the caller. The
    /// process guard (group kill on drop, stderr tail) is the same.
    pub fn spawn_interactive(spec: &ProcessSpec) -> io::Result<(AgentProcess, Pipes)> {
        let (process, pipes) = Self::start(spec, true)?;
        pipes
            .map(|pipes| (process, pipes))
            .ok_or_else(|| io::Error::other("child stdio was not piped"))
    }

    fn start(spec: &ProcessSpec, interactive: bool) -> io::Result<(AgentProcess, Option<Pipes>)> {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own group: a signal to the group reaches the CLI and every tool it started.
            .process_group(0)
            // Belt and braces for paths that lose the guard without running Drop.
            .kill_on_drop(true);
        for name in &spec.env_remove {
            cmd.env_remove(name);
        }
        // The daemon's own `PWD` would be inherited, and some CLIs trust it over the real
        // working directory (opencode-ai 1.18.33 ran its shell tool in the daemon's cwd).
        cmd.env("PWD", &spec.cwd);
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let prepared: Option<Prepared> = match &spec.sandbox {
            Some(sandbox) => Some(sandbox.prepare().map_err(io::Error::other)?),
            None => None,
        };
        if let Some(prepared) = prepared {
            // The closure owns the ruleset fd, so it stays open until the child has entered
            // it; it is closed when `cmd` is dropped.
            // SAFETY: the closure runs in the forked child before exec and only makes raw
            // syscalls (setgroups/setgid/setuid, prctl, landlock_restrict_self) on values
            // prepared before the fork: no allocation, no locks.
            unsafe {
                cmd.pre_exec(move || prepared.enter());
            }
        }
        // Set after the sandbox's pre_exec: a change of user ids clears the parent-death
        // signal (prctl(2)), so it must come after `setuid`.
        let parent = std::process::id();
        // SAFETY: only async-signal-safe syscalls (prctl, getppid, _exit) on plain values.
        unsafe {
            cmd.pre_exec(move || die_with_parent(parent));
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited before its pid was known"))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("child stdio was not piped"));
        };

        let tail = Arc::new(Mutex::new(TailBuffer::new(STDERR_TAIL_BYTES)));
        let stderr_task = tokio::spawn(collect_tail(stderr, tail.clone()));
        let stdout = LineReader::new(stdout, MAX_LINE_BYTES);
        let mut process = AgentProcess {
            child: Some(child),
            pid,
            stdout: None,
            stderr: tail,
            stderr_task: Some(stderr_task),
            stdin_task: None,
        };
        if interactive {
            return Ok((process, Some(Pipes { stdin, stdout })));
        }
        // Written from a task so a child that does not read its input while printing
        // cannot deadlock against our stdout reader.
        let input = spec.stdin.clone();
        process.stdin_task = Some(tokio::spawn(async move {
            if let Err(e) = stdin.write_all(&input).await {
                tracing::debug!(error = %e, "agent stdin closed before the prompt was written");
            }
            // Dropping `stdin` closes the pipe: the CLI reads until end-of-file.
        }));
        process.stdout = Some(stdout);
        Ok((process, None))
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the child is still running (reaps it, without blocking, if it has exited:
    /// a warm agent killed between turns is noticed before the next turn is written to it).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                signal_group(self.pid, Signal::SIGKILL);
                false
            }
            None => false,
        }
    }

    /// The next stdout line without its line ending, or `None` at end-of-file. Over-long
    /// lines are skipped with a warning. Cancel-safe: usable as a `select!` branch.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        match self.stdout.as_mut() {
            Some(stdout) => stdout.next_line().await,
            None => Ok(None),
        }
    }

    /// How many over-long stdout lines were skipped so far.
    pub fn skipped_lines(&self) -> usize {
        self.stdout.as_ref().map_or(0, |s| s.skipped)
    }

    /// Waits for the child to exit, then kills whatever else is left in its group (tools it
    /// started in the background) and collects the rest of stderr. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("child already reaped"));
        };
        let status = child.wait().await?;
        self.child = None;
        // The pid cannot be reused while any member of the group is alive, so signalling
        // the group right after reaping the leader only reaches its stragglers.
        signal_group(self.pid, Signal::SIGKILL);
        self.drain_stderr().await;
        Ok(status)
    }

    /// Waits up to `grace` for the child and the rest of its group to exit on their own
    /// (their input was closed), then kills whatever is left. Unlike [`Self::wait`], a
    /// straggler gets the rest of the grace: the CLI under an adapter (the Claude ACP adapter
    /// ends its CLI's input and exits at once) may still be writing the session's transcript,
    /// and killing it then loses the last turn (seen: the next `session/load` missed it).
    pub async fn wait_for_group(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("child already reaped"));
        };
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.kill(KILL_GRACE).await;
                return Err(io::Error::other(format!(
                    "did not exit within {} s of its input closing",
                    grace.as_secs_f32()
                )));
            }
        };
        self.child = None;
        // The group outlives its reaped leader while a member lives: its members are found
        // by the group id even after they were moved to init. Each exit is awaited on a
        // pidfd (readable once the process is gone), not polled.
        let exits: Vec<_> = group_members(self.pid)
            .into_iter()
            .filter_map(|p| pid_exit(p.pid))
            .collect();
        let all_gone = futures_util::future::join_all(exits.iter().map(|fd| fd.readable()));
        if tokio::time::timeout_at(deadline, all_gone).await.is_err() {
            tracing::debug!(
                pid = self.pid,
                "agent's process group still running; killing it"
            );
        }
        signal_group(self.pid, Signal::SIGKILL);
        self.drain_stderr().await;
        Ok(status)
    }

    /// Stops the whole tree: SIGTERM to the group and every descendant, up to `grace` to
    /// exit, then SIGKILL; reaps the child.
    pub async fn kill(&mut self, grace: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // Taken while the leader is alive: once it dies, its children move to init.
        let mut tree = descendants(self.pid);
        signal_group(self.pid, Signal::SIGTERM);
        signal_tree(&tree, Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::debug!(pid = self.pid, "agent ignored SIGTERM; sending SIGKILL");
            // Anything started during the grace period.
            for p in descendants(self.pid) {
                if !tree.contains(&p) {
                    tree.push(p);
                }
            }
        }
        signal_group(self.pid, Signal::SIGKILL);
        signal_tree(&tree, Signal::SIGKILL);
        if let Err(e) = child.wait().await {
            tracing::warn!(pid = self.pid, error = %e, "could not reap agent process");
        }
        self.child = None;
        self.drain_stderr().await;
    }

    /// The last few KiB of stderr, lossily decoded and trimmed.
    pub fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        tail.text()
    }

    async fn drain_stderr(&mut self) {
        if let Some(task) = self.stderr_task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STDERR_DRAIN, task).await.is_err() {
                // Something outside the group still holds the pipe; keep what we have.
                abort.abort();
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(task) = &self.stdin_task {
            task.abort();
        }
        if let Some(task) = self.stderr_task.take() {
            task.abort();
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        // No grace period is possible here: Drop cannot wait.
        let tree = descendants(self.pid);
        signal_group(self.pid, Signal::SIGKILL);
        signal_tree(&tree, Signal::SIGKILL);
        match child.try_wait() {
            Ok(Some(_)) => {}
            _ => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        let _ = child.wait().await;
                    });
                }
                // Outside a runtime, tokio's orphan queue reaps the dropped child.
                Err(_) => drop(child),
            },
        }
    }
}

/// In the forked child: SIGKILL when the daemon dies (a `kill -9` of the daemon must not leave
/// agents running, warm ones least of all). The signal follows the forking *thread*; agents
/// are spawned from the runtime's worker threads, which live as long as the daemon. A parent
/// that died before the call is caught by comparing `getppid`. Descendants of the agent (tool
/// shells in sessions of their own) are not covered; the start-up sweep
/// ([`sweep_leftovers`]) finds them by their marker.
fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: documented prctl/getppid/_exit calls with constant or plain arguments.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// The environment variable every agent process of one gateway carries
/// (`<name>=<hash of the runtime dir>`): it is inherited by everything the agent starts,
/// so a later daemon on the same runtime dir can find what a crashed one left behind.
pub const AGENT_MARKER_ENV: &str = "ACG_AGENT_OF";

/// The marker value for the gateway whose runtime dir is `runtime`: a short stable hash of
/// its absolute path (the path itself would tell every tool where the gateway keeps its state).
pub fn agent_marker(runtime: &std::path::Path) -> String {
    let path = std::fs::canonicalize(runtime).unwrap_or_else(|_| runtime.to_path_buf());
    // FNV-1a, 64 bit: stable across builds and Rust versions (unlike `DefaultHasher`).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Kills every process that carries `AGENT_MARKER_ENV=<marker>`: agents, and the tools they
/// started, of an earlier daemon on the same runtime dir that died without stopping them.
/// Run at start-up before any agent of this daemon exists. Returns how many were killed.
/// Processes whose environment cannot be read (another user's, without privileges) are out
/// of reach; the parent-death signal has already stopped the agents themselves.
pub fn sweep_leftovers(marker: &str) -> usize {
    let needle = format!("{AGENT_MARKER_ENV}={marker}");
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if pid == own {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            match nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => killed += 1,
                Err(Errno::ESRCH) => {}
                Err(e) => {
                    tracing::warn!(pid, error = %e, "could not kill a leftover agent process")
                }
            }
        }
    }
    killed
}

fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, %signal, error = %e, "could not signal agent process group"),
    }
}

/// A process identified by pid and start time (clock ticks since boot), so that a pid
/// reused by an unrelated process is never signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcId {
    pid: i32,
    start: u64,
}

/// Resident memory (`VmRSS`, in bytes) of process `pid` and its descendants; `None` when it
/// is gone.
pub fn rss_of(pid: u32) -> Option<u64> {
    let leader = vm_rss(i32::try_from(pid).ok()?)?;
    Some(
        leader
            + descendants(pid)
                .iter()
                .filter_map(|p| vm_rss(p.pid))
                .sum::<u64>(),
    )
}

/// `VmRSS` of a live process, in bytes.
fn vm_rss(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `(ppid, pgrp, starttime)` of a live process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(i32, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` may contain spaces and parentheses: the fields start after the last `)`.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // fields[0] is field 3 of proc(5) (state); ppid is 4, pgrp 5, starttime 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// The live members of process group `pgid`.
fn group_members(pgid: u32) -> Vec<ProcId> {
    let (Ok(pgid), Ok(entries)) = (i32::try_from(pgid), std::fs::read_dir("/proc")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (_, pgrp, start) = proc_stat(pid)?;
            (pgrp == pgid).then_some(ProcId { pid, start })
        })
        .collect()
}

/// A pidfd of `pid`, readable once the process has exited; `None` when it is gone already
/// (or the kernel has no pidfds: the caller then does not wait for it).
fn pid_exit(pid: i32) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; nothing is
    // borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which alone closes it, on drop.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()
}

/// Every live descendant of `root`, parents before children. Linux only; empty elsewhere.
fn descendants(root: u32) -> Vec<ProcId> {
    let Ok(root) = i32::try_from(root) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let procs: Vec<(ProcId, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (ppid, _, start) = proc_stat(pid)?;
            Some((ProcId { pid, start }, ppid))
        })
        .collect();
    let mut out: Vec<ProcId> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (p, ppid) in &procs {
            if *ppid == parent && !out.contains(p) {
                out.push(*p);
                frontier.push(p.pid);
            }
        }
    }
    out
}

/// Signals each process of `tree` that is still the same process, and the group it leads
/// when it leads one (a tool shell in its own session, with its children).
fn signal_tree(tree: &[ProcId], signal: Signal) {
    for p in tree {
        let Some((_, pgrp, start)) = proc_stat(p.pid) else {
            continue;
        };
        if start != p.start {
            continue;
        }
        let result = if pgrp == p.pid {
            killpg(Pid::from_raw(p.pid), signal)
        } else {
            nix::sys::signal::kill(Pid::from_raw(p.pid), signal)
        };
        match result {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => {
                tracing::debug!(pid = p.pid, %signal, error = %e, "could not signal agent descendant")
            }
        }
    }
}

async fn collect_tail(mut stderr: impl AsyncRead + Unpin, tail: Arc<Mutex<TailBuffer>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&buf[..n]),
            Err(e) => {
                tracing::debug!(error = %e, "agent stderr read failed");
                return;
            }
        }
    }
}

/// Keeps the last `cap` bytes written to it.
#[derive(Debug)]
pub struct TailBuffer {
    cap: usize,
    bytes: VecDeque<u8>,
    dropped: bool,
}

impl TailBuffer {
    pub fn new(cap: usize) -> Self {
        TailBuffer {
            cap,
            // Grows only as stderr arrives: most runs print nothing there, and a thousand
            // concurrent runs must not each hold `cap` bytes up front.
            bytes: VecDeque::new(),
            dropped: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            self.dropped = true;
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.cap);
        if overflow > 0 {
            self.dropped = true;
            self.bytes.drain(..overflow);
        }
        self.bytes.extend(data);
    }

    /// The kept bytes as text; prefixed with `…` when older output was dropped.
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.bytes.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if self.dropped {
            format!("…{text}")
        } else {
            text.to_string()
        }
    }
}

/// Splits a byte stream into lines of at most `max` bytes; longer lines are skipped whole.
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
    line: Vec<u8>,
    /// Inside an over-long line: drop bytes until its end.
    discarding: bool,
    skipped: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            // Small: a thousand rooms may each have a run in flight. Long lines still work,
            // they are assembled in `line` across reads.
            inner: BufReader::with_capacity(4 * 1024, inner),
            max,
            line: Vec::new(),
            discarding: false,
            skipped: 0,
        }
    }

    /// Cancel-safe: state changes only after `fill_buf` returns, and `fill_buf` keeps its
    /// data buffered until consumed.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.discarding {
                    self.end_skipped_line();
                }
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let fits = self.line.len() + i <= self.max;
                    if !self.discarding && fits {
                        self.line.extend_from_slice(&available[..i]);
                    }
                    Pin::new(&mut self.inner).consume(i + 1);
                    if self.discarding || !fits {
                        self.end_skipped_line();
                        continue;
                    }
                    return Ok(Some(self.take_line()));
                }
                None => {
                    let n = available.len();
                    if !self.discarding {
                        if self.line.len() + n > self.max {
                            self.discarding = true;
                            self.line = Vec::new();
                        } else {
                            self.line.extend_from_slice(available);
                        }
                    }
                    Pin::new(&mut self.inner).consume(n);
                }
            }
        }
    }

    fn end_skipped_line(&mut self) {
        self.discarding = false;
        self.line = Vec::new();
        self.skipped += 1;
        tracing::warn!(
            limit = self.max,
            "skipped an agent output line longer than the limit"
        );
    }

    fn take_line(&mut self) -> String {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        match String::from_utf8(line) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> (Vec<String>, usize) {
        let mut r = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        (out, r.skipped)
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_final_unterminated_one() {
        let (got, skipped) = lines(b"a\r\nbb\n\nccc", 10).await;
        assert_eq!(got, vec!["a", "bb", "", "ccc"]);
        assert_eq!(skipped, 0);
    }

    #[tokio::test]
    async fn skips_over_long_lines_and_carries_on() {
        let long = "x".repeat(100);
        let input = format!("first\n{long}\nafter\n{long}");
        let (got, skipped) = lines(input.as_bytes(), 10).await;
        assert_eq!(got, vec!["first", "after"]);
        assert_eq!(skipped, 2);
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_kept() {
        let (got, _) = lines(b"0123456789\n01234567890\nok\n", 10).await;
        assert_eq!(got, vec!["0123456789", "ok"]);
    }

    #[tokio::test]
    async fn over_long_line_across_many_reads_is_skipped() {
        // A reader that hands out 3 bytes at a time exercises the "no newline yet" path.
        let (client, mut server) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            server
                .write_all(b"abcdefghijklmnop\nshort\n")
                .await
                .unwrap();
        });
        let mut r = LineReader::new(client, 8);
        assert_eq!(r.next_line().await.unwrap().as_deref(), Some("short"));
        assert_eq!(r.next_line().await.unwrap(), None);
        assert_eq!(r.skipped, 1);
        writer.await.unwrap();
    }

    #[test]
    fn tail_keeps_only_the_end() {
        let mut t = TailBuffer::new(5);
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        t.push(b"defg");
        assert_eq!(t.text(), "…cdefg");
        t.push(b"0123456789");
        assert_eq!(t.text(), "…56789");
    }

    fn spec(script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            stdin: b"hello from stdin\n".to_vec(),
            ..Default::default()
        }
    }

    fn alive(pid: u32) -> bool {
        // Signal 0 checks existence; a zombie still counts, so callers reap first.
        nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[tokio::test]
    async fn reads_stdin_stdout_and_stderr_tail() {
        let mut p = AgentProcess::spawn(&spec("cat; echo oops >&2; exit 3")).unwrap();
        assert_eq!(
            p.next_line().await.unwrap().as_deref(),
            Some("hello from stdin")
        );
        assert_eq!(p.next_line().await.unwrap(), None);
        let status = p.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stderr_tail(), "oops");
    }

    /// Reads the pid of a background grandchild the script prints first.
    async fn grandchild_pid(p: &mut AgentProcess) -> u32 {
        p.next_line()
            .await
            .unwrap()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A second handle on the child's stdout pipe. Every member of the group holds the
    /// write end, so end-of-file on it proves they are all dead — no polling needed.
    fn stdout_witness(p: &AgentProcess) -> tokio::net::unix::pipe::Receiver {
        use std::os::fd::AsFd;
        let fd = p
            .stdout
            .as_ref()
            .unwrap()
            .inner
            .get_ref()
            .as_fd()
            .try_clone_to_owned()
            .unwrap();
        tokio::net::unix::pipe::Receiver::from_owned_fd(fd).unwrap()
    }

    /// End-of-file means every holder of the write end closed it. `sleep` never closes its
    /// stdout itself, so for it that happens only inside the kernel's exit path: the process
    /// is dead or irrevocably dying (it may still show in /proc for a moment).
    async fn assert_all_writers_gone(mut witness: tokio::net::unix::pipe::Receiver) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), witness.read_to_end(&mut rest))
            .await
            .expect("group members still hold stdout")
            .unwrap();
    }

    #[tokio::test]
    async fn kill_stops_the_whole_group_even_when_sigterm_is_ignored() {
        let script = "trap '' TERM; sleep 1000 & echo $!; wait";
        let mut p = AgentProcess::spawn(&spec(script)).unwrap();
        let grandchild = grandchild_pid(&mut p).await;
        let witness = stdout_witness(&p);
        let pid = p.pid();
        assert!(alive(grandchild));
        p.kill(Duration::from_millis(200)).await;
        assert!(!alive(pid), "leader reaped");
        assert_all_writers_gone(witness).await;
    }

    #[tokio::test]
    async fn drop_kills_the_group() {
        let mut p = AgentProcess::spawn(&spec("sleep 1000 & echo $!; wait")).unwrap();
        grandchild_pid(&mut p).await;
        let witness = stdout_witness(&p);
        drop(p);
        assert_all_writers_gone(witness).await;
    }

    #[tokio::test]
    async fn the_start_up_sweep_kills_what_carries_the_marker_only() {
        // A tool left in a session of its own (out of the group), as a crashed daemon's
        // agent would leave it; and an unmarked process beside it.
        let marker = format!("test-{}", uuid::Uuid::new_v4().simple());
        let mut marked = spec("setsid sh -c 'echo $$; exec sleep 1000' & wait");
        marked.env = vec![(AGENT_MARKER_ENV.into(), marker.clone())];
        let mut p = AgentProcess::spawn(&marked).unwrap();
        let escaped = grandchild_pid(&mut p).await;
        let mut other = AgentProcess::spawn(&spec("echo $$; exec sleep 1000")).unwrap();
        let bystander = grandchild_pid(&mut other).await;
        let witness = stdout_witness(&p);
        assert_eq!(sweep_leftovers(&marker), 2, "the shell and its tool");
        assert_all_writers_gone(witness).await;
        assert!(!alive(escaped) || proc_stat(escaped as i32).is_none());
        assert!(alive(bystander), "an unmarked process was killed");
        other.kill(Duration::from_millis(200)).await;
        assert_eq!(sweep_leftovers(&marker), 0);
        let m = agent_marker(std::path::Path::new("/tmp"));
        assert_eq!(
            (m.len(), m.clone()),
            (16, agent_marker(std::path::Path::new("/tmp")))
        );
    }

    #[tokio::test]
    async fn wait_sweeps_background_stragglers() {
        // The leader exits at once, leaving a background member of its group behind.
        let mut p = AgentProcess::spawn(&spec("sleep 1000 & echo $!")).unwrap();
        grandchild_pid(&mut p).await;
        let witness = stdout_witness(&p);
        p.wait().await.unwrap();
        assert_all_writers_gone(witness).await;
    }

    #[tokio::test]
    async fn kill_reaches_descendants_in_their_own_session() {
        // `setsid` leaves our process group, as Claude Code's Bash tool does; the pid is
        // printed from inside the new session, so the check below cannot race the setsid.
        let script = "setsid sh -c 'echo $$; exec sleep 1000' & wait";
        let mut p = AgentProcess::spawn(&spec(script)).unwrap();
        let escaped = grandchild_pid(&mut p).await;
        let witness = stdout_witness(&p);
        assert_ne!(
            proc_stat(escaped as i32).map(|(_, pgrp, _)| pgrp),
            Some(p.pid() as i32),
            "the grandchild left the group"
        );
        p.kill(Duration::from_millis(200)).await;
        assert_all_writers_gone(witness).await;
    }

    #[tokio::test]
    async fn drop_reaches_descendants_in_their_own_session() {
        let script = "setsid sh -c 'echo $$; exec sleep 1000' & wait";
        let mut p = AgentProcess::spawn(&spec(script)).unwrap();
        grandchild_pid(&mut p).await;
        let witness = stdout_witness(&p);
        drop(p);
        assert_all_writers_gone(witness).await;
    }

    #[test]
    fn descendants_are_found_and_pid_reuse_is_guarded() {
        use std::io::BufRead;
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 1000 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once `$!` is printed the fork has happened: the sleep is listed in /proc.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let tree = descendants(child.id());
        assert_eq!(
            tree.iter().map(|p| p.pid.to_string()).collect::<Vec<_>>(),
            vec![line.trim()]
        );
        assert_eq!(tree.len(), 1, "{tree:?}");
        // A stale start time names another process: it must not be signalled.
        let stale = [ProcId {
            pid: tree[0].pid,
            start: tree[0].start + 1,
        }];
        signal_tree(&stale, Signal::SIGKILL);
        assert!(
            proc_stat(tree[0].pid).is_some(),
            "stale id was not signalled"
        );
        signal_tree(&tree, Signal::SIGKILL);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn spawn_failure_is_an_error() {
        let mut s = spec("true");
        s.program = "/nonexistent/agent-binary".into();
        assert!(AgentProcess::spawn(&s).is_err());
    }

    /// The smallest agent: every line is a text event, the outcome counts them.
    struct Echo {
        lines: usize,
    }

    impl LineProtocol for Echo {
        fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
            self.lines += 1;
            vec![AgentEvent::Text {
                text: line.to_string(),
            }]
        }

        fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
            if !exit.success {
                return Err(AgentError::Crashed {
                    status: exit.status.clone(),
                    stderr_tail: exit.stderr_tail.clone(),
                });
            }
            Ok(TurnOutcome {
                text: format!("{} lines", self.lines),
                ..TurnOutcome::default()
            })
        }
    }

    fn sh(script: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            stdin: b"prompt".to_vec(),
            ..ProcessSpec::default()
        }
    }

    async fn run_sh(
        script: &str,
        timeout: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) -> (Result<TurnOutcome, AgentError>, Vec<AgentEvent>, usize) {
        let spec = sh(script);
        let (events, mut rx) = tokio::sync::mpsc::channel(1);
        let ctx = TurnContext {
            events,
            cancel,
            gate: None,
        };
        // The turn owns the context, so the event channel closes when the run ends.
        let turn = async move {
            let mut outputs = 0;
            let run = Run {
                agent: "test",
                spec: &spec,
                timeout,
            };
            let result = super::run(run, &ctx, Echo { lines: 0 }, || outputs += 1).await;
            (result, outputs)
        };
        let collect = async {
            let mut got = Vec::new();
            while let Some(e) = rx.recv().await {
                got.push(e);
            }
            got
        };
        let ((result, outputs), got) = tokio::join!(turn, collect);
        (result, got, outputs)
    }

    #[tokio::test]
    async fn the_run_loop_streams_lines_and_ends_with_the_protocols_outcome() {
        let (result, events, outputs) = run_sh(
            "read p; echo \"got $p\"; echo two",
            Duration::from_secs(10),
            Default::default(),
        )
        .await;
        assert_eq!(result.unwrap().text, "2 lines");
        assert_eq!(
            events,
            vec![
                AgentEvent::Text {
                    text: "got prompt".into()
                },
                AgentEvent::Text { text: "two".into() }
            ]
        );
        // Once per line and once for the end of output.
        assert_eq!(outputs, 3);
    }

    #[tokio::test]
    async fn a_failed_exit_reaches_the_protocol_with_its_stderr() {
        let (result, _, _) = run_sh(
            "echo oops >&2; exit 3",
            Duration::from_secs(10),
            Default::default(),
        )
        .await;
        match result {
            Err(AgentError::Crashed {
                status,
                stderr_tail,
            }) => {
                assert_eq!(status, "exit code 3");
                assert_eq!(stderr_tail, "oops");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hung_agent_times_out_and_a_cancelled_one_stops() {
        let started = std::time::Instant::now();
        let (result, _, _) = run_sh(
            "echo started; exec sleep 300",
            Duration::from_millis(300),
            Default::default(),
        )
        .await;
        assert!(matches!(result, Err(AgentError::Timeout(_))), "{result:?}");
        let cancel = tokio_util::sync::CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let (result, _, _) = run_sh("exec sleep 300", Duration::from_secs(60), cancel).await;
        assert!(matches!(result, Err(AgentError::Cancelled)), "{result:?}");
        // Both runs were killed, not waited out.
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
