//! Pipeline benchmark: the whole gateway in-process (`daemon::run`: dispatcher, room workers,
//! persisted queues, the Claude backend spawning a real child process per turn) with many
//! rooms, driven through an embedded connector. Each room sends its next message when the
//! previous reply arrived.
//!
//! `cargo bench --bench pipeline [-- --agent-command PATH] [--rooms N --turns-per-room K]`
//!
//! Without `--agent-command` it runs two fake agents: `acg-fake-agent` (a small Rust program,
//! `examples/acg-fake-agent/`, built here on first use)
//! and `benches/nolibc_agent.c`, compiled here with `cc` into a static program without a C
//! library. On virtual machines glibc's start-up `cpuid` probing traps to the hypervisor and
//! costs about a millisecond of CPU per exec; the second agent shows the gateway's throughput
//! without that.
//!
//! Prints one JSON object per configuration (1, 100 and 1000 rooms by default):
//! turn latency p50/p99 (message in → reply delivered), the agent process's own time (the same
//! executable spawned alone with the same prompt, measured before the run), the gateway overhead
//! (latency − agent time, at p50 and p99), turns/s and the peak RSS of the gateway process
//! (agent children are separate processes and not included). Each configuration runs in a
//! fresh child process so peak RSS is its own.

#[path = "../tests/it/support/fake_agent.rs"]
mod fake_agent;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agent_chat_gateway::config::{
    AgentConfig, Config, ConfinementMode, ConnectorConfig, ConnectorKind, PermissionsConfig,
    SandboxConfig, UserRoles, WatcherConfig,
};
use agent_chat_gateway::connector::{
    Capabilities, Connector, ConnectorContext, ConnectorError, ConnectorEvent, Connectors,
    EventSink, RunError,
};
use agent_chat_gateway::daemon::{self, StartupReport};
use agent_chat_gateway::model::{
    InboundMessage, PostedMessage, ReplyTarget, RoomKind, RoomRef, Sender,
};
use agent_chat_gateway::policy::RuleSet;
use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records when a reply for a room arrives.
struct BenchConnector {
    sink: OnceLock<EventSink>,
    ready: tokio::sync::Notify,
    replies: mpsc::UnboundedSender<(String, Instant)>,
}

#[async_trait]
impl Connector for BenchConnector {
    fn name(&self) -> &str {
        "bench"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            threads: false,
            max_message_len: 1_000_000,
            edit: false,
            edit_interval: Duration::ZERO,
        }
    }

    async fn run(self: Arc<Self>, ctx: ConnectorContext) -> Result<(), RunError> {
        let _ = self.sink.set(ctx.events.clone());
        self.ready.notify_one();
        ctx.cancel.cancelled().await;
        Ok(())
    }

    async fn post(&self, to: &ReplyTarget, _text: &str) -> Result<PostedMessage, ConnectorError> {
        let _ = self.replies.send((to.room.clone(), Instant::now()));
        Ok(PostedMessage { id: String::new() })
    }

    async fn resolve_room(&self, spec: &str) -> Result<RoomRef, ConnectorError> {
        Ok(room(spec))
    }
}

fn room(id: &str) -> RoomRef {
    RoomRef {
        id: id.to_string(),
        name: id.to_string(),
        kind: RoomKind::Group,
    }
}

fn message(room_id: &str, n: usize) -> InboundMessage {
    InboundMessage {
        connector: "bench".into(),
        room: room(room_id),
        id: format!("{room_id}-{n}"),
        thread: None,
        sender: Sender {
            id: "u".into(),
            username: "u".into(),
            display_name: "u".into(),
        },
        text: format!("benchmark message {n}"),
        addressed: true,
        attachments: vec![],
        notes: vec![],
        conversation: None,
        ts: std::time::SystemTime::now(),
    }
}

fn config(agent: &Path, work: &Path) -> Config {
    let mut agents = BTreeMap::new();
    agents.insert(
        "fake".to_string(),
        AgentConfig {
            name: "fake".into(),
            kind: "claude".into(),
            settings: Default::default(),
            command: agent.display().to_string(),
            args: vec![],
            working_directory: work.to_path_buf(),
            timeout: Duration::from_secs(120),
            permissions: PermissionsConfig {
                enabled: false,
                timeout: Duration::from_secs(60),
                skip_owner_approval: false,
            },
            owner_rules: RuleSet::default(),
            guest_rules: RuleSet::default(),
            env: vec![],
            system_prompt: None,
            // The bench's config path lies inside the work dir, which confinement refuses.
            sandbox: SandboxConfig {
                confinement: ConfinementMode::Off,
                ..Default::default()
            },
        },
    );
    Config {
        path: work.join("bench.yaml"),
        connectors: vec![ConnectorConfig {
            name: "bench".into(),
            users: UserRoles {
                owners: HashSet::from(["u".to_string()]),
                guests: HashSet::new(),
                unknown: None,
            },
            require_mention: false,
            kind: ConnectorKind::Embedded,
        }],
        agents,
        warnings: Vec::new(),
        admin: None,
        log: Default::default(),
        commands: Default::default(),
        budgets: Default::default(),
        merge_window: Default::default(),
        rate_limit: None,
        default_agent: "fake".into(),
        watchers: vec![WatcherConfig {
            name: "all".into(),
            connector: "bench".into(),
            room: "*".into(),
            agent: "fake".into(),
            session_scope: Default::default(),
        }],
        schedules: Vec::new(),
        max_queue_depth: 10,
        max_concurrent_turns: agent_chat_gateway::config::DEFAULT_MAX_CONCURRENT_TURNS,
        room_idle_eviction: Duration::from_secs(600),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The agent executable's own time for one turn: spawned alone, prompt on stdin, until exit.
async fn agent_alone(agent: &Path, work: &Path, runs: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(agent)
            .args(["-p", "--output-format", "stream-json", "--verbose"])
            .current_dir(work)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent starts");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                format!("[Chat r | from: u | role: owner] benchmark message {i}\n").as_bytes(),
            )
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "agent failed: {out:?}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

/// User + system CPU time in milliseconds (of this process, or of its reaped children).
fn cpu_ms(who: nix::sys::resource::UsageWho) -> f64 {
    let u = nix::sys::resource::getrusage(who).expect("getrusage");
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1000.0 + t.tv_usec() as f64 / 1000.0;
    ms(u.user_time()) + ms(u.system_time())
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run_one(agent: PathBuf, rooms: usize, turns_per_room: usize) -> serde_json::Value {
    let agent_name = agent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let agent_times = agent_alone(&agent, &work, 200).await;

    let (replies_tx, mut replies) = mpsc::unbounded_channel();
    let connector = Arc::new(BenchConnector {
        sink: OnceLock::new(),
        ready: tokio::sync::Notify::new(),
        replies: replies_tx,
    });
    let mut embedded: Connectors = HashMap::new();
    embedded.insert("bench".into(), connector.clone());
    let shutdown = CancellationToken::new();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(daemon::run(
        config(&agent, &work),
        dir.path().join("runtime"),
        shutdown.clone(),
        StartupReport::Notify(started_tx),
        embedded,
    ));
    started_rx.await.unwrap().expect("gateway starts");
    connector.ready.notified().await;
    let sink = connector.sink.get().unwrap().clone();
    let cpu_before = cpu_ms(nix::sys::resource::UsageWho::RUSAGE_SELF);
    let agents_before = cpu_ms(nix::sys::resource::UsageWho::RUSAGE_CHILDREN);

    let names: Vec<String> = (0..rooms).map(|i| format!("room-{i}")).collect();
    let mut sent: HashMap<String, (Instant, usize)> = HashMap::new();
    let started = Instant::now();
    for name in &names {
        sent.insert(name.clone(), (Instant::now(), 1));
        let event = ConnectorEvent::Message {
            message: message(name, 1),
            accepted: None,
        };
        assert!(sink.send(event).await);
    }
    let total = rooms * turns_per_room;
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        let (room_id, at) = replies.recv().await.expect("replies keep coming");
        let (since, n) = sent[&room_id];
        latencies.push(at.duration_since(since).as_secs_f64() * 1000.0);
        if n < turns_per_room {
            sent.insert(room_id.clone(), (Instant::now(), n + 1));
            let event = ConnectorEvent::Message {
                message: message(&room_id, n + 1),
                accepted: None,
            };
            assert!(sink.send(event).await);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let gateway_cpu = cpu_ms(nix::sys::resource::UsageWho::RUSAGE_SELF) - cpu_before;
    let agents_cpu = cpu_ms(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) - agents_before;
    shutdown.cancel();
    daemon.await.unwrap().unwrap();

    latencies.sort_by(f64::total_cmp);
    let (l50, l99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (a50, a99) = (
        percentile(&agent_times, 0.5),
        percentile(&agent_times, 0.99),
    );
    serde_json::json!({
        "agent": agent_name,
        "rooms": rooms,
        "turns": total,
        "turns_per_sec": (total as f64 / elapsed).round(),
        "latency_ms": {"p50": l50, "p99": l99},
        "agent_alone_ms": {"p50": a50, "p99": a99},
        "overhead_ms": {"p50": (l50 - a50).max(0.0), "p99": (l99 - a99).max(0.0)},
        "peak_rss_mb": peak_rss_mb(),
        // CPU time per turn of the gateway process itself and of the agent processes it
        // ran; with both on the same cores, turns/s is bounded by their sum.
        "gateway_cpu_ms_per_turn": gateway_cpu / total as f64,
        "agent_cpu_ms_per_turn": agents_cpu / total as f64,
        "gateway_bound_turns_per_sec_2_cores": (2000.0 / (gateway_cpu / total as f64)).round(),
    })
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Compiles `benches/nolibc_agent.c` (x86-64 Linux only); `None` where that is not possible.
fn nolibc_agent(dir: &Path) -> Option<PathBuf> {
    if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return None;
    }
    let out = dir.join("nolibc-agent");
    let status = std::process::Command::new("cc")
        .args([
            "-O2",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-builtin",
        ])
        .args(["-fno-stack-protector", "-o"])
        .arg(&out)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/nolibc_agent.c"
        ))
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        _ => {
            eprintln!("note: could not build benches/nolibc_agent.c with cc; skipping that agent");
            None
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let given = arg(&args, "--agent-command").map(PathBuf::from);
    let agent = given
        .clone()
        .unwrap_or_else(|| PathBuf::from(fake_agent::path()));
    if let Some(rooms) = arg(&args, "--rooms") {
        let rooms: usize = rooms.parse().expect("--rooms N");
        let turns: usize = arg(&args, "--turns-per-room")
            .map(|t| t.parse().expect("--turns-per-room K"))
            .unwrap_or(5);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(run_one(agent, rooms, turns));
        println!("{result}");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let mut agents = vec![agent];
    if given.is_none() {
        agents.extend(nolibc_agent(scratch.path()));
    }
    // One child process per configuration, so each peak RSS is its own.
    let exe = std::env::current_exe().unwrap();
    for agent in &agents {
        for (rooms, turns) in [(1, 1000), (100, 20), (1000, 5)] {
            let out = std::process::Command::new(&exe)
                .args(["--rooms", &rooms.to_string()])
                .args(["--turns-per-room", &turns.to_string()])
                .arg("--agent-command")
                .arg(agent)
                .stderr(Stdio::inherit())
                .output()
                .expect("bench child runs");
            assert!(out.status.success(), "bench child failed");
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}
