//! Agent latency benchmark: the real Claude Code CLI against the project's fake model API,
//! cold (one `claude -p` process per turn) against warm (one process per room, kept between
//! turns; `agent/claude/warm.rs`), through the gateway's own Claude backend.
//!
//! `cargo bench --bench agent_latency [-- --rooms N --messages M --cold-messages K]`
//!
//! Defaults: 10 rooms; each sends 3 messages cold, then, warm, one message that starts its
//! process followed by 10 measured ones. Rooms run concurrently, each waiting for its answer
//! before the next message. Per turn it measures the time to the first text event and to the
//! outcome. Prints one JSON object: per mode p50/p99 of both, turns/s (measured turns over the
//! wall time of the phase), CPU time of the agent processes per turn, and for warm the RSS of
//! each warm process (with its descendants) after the run.
//!
//! The CLI is `.deps/node/node_modules/.bin/claude` (`scripts/install-test-deps.sh`) or
//! `$ACG_CLAUDE_BIN`.

#[allow(dead_code)]
#[path = "../tests/it/support/fake_llm.rs"]
mod fake_llm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_chat_gateway::agent::claude::warm::{Pool, Relay};
use agent_chat_gateway::agent::claude::ClaudeBackend;
use agent_chat_gateway::agent::warm::Budget;
use agent_chat_gateway::agent::{AgentBackend, TurnContext};
use agent_chat_gateway::config::{AgentConfig, PermissionsConfig};
use agent_chat_gateway::model::{AgentEvent, Role, RoomKey, TurnRequest};
use agent_chat_gateway::policy::RuleSet;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Args {
    rooms: usize,
    messages: usize,
    cold_messages: usize,
}

fn args() -> Args {
    let mut a = Args {
        rooms: 10,
        messages: 10,
        cold_messages: 3,
    };
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        argv.iter()
            .position(|x| x == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    a.rooms = value("--rooms").unwrap_or(a.rooms).max(1);
    a.messages = value("--messages").unwrap_or(a.messages).max(1);
    a.cold_messages = value("--cold-messages").unwrap_or(a.cold_messages).max(1);
    a
}

fn claude_bin() -> PathBuf {
    std::env::var_os("ACG_CLAUDE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/node/node_modules/.bin/claude")
        })
}

fn agent_config(command: &Path, work: &Path, env: Vec<(String, String)>) -> AgentConfig {
    AgentConfig {
        name: "bench".into(),
        kind: "claude".into(),
        settings: Default::default(),
        command: command.display().to_string(),
        args: Vec::new(),
        working_directory: work.to_path_buf(),
        timeout: Duration::from_secs(300),
        permissions: PermissionsConfig {
            enabled: false,
            timeout: Duration::from_secs(30),
            skip_owner_approval: false,
        },
        owner_rules: RuleSet::default(),
        guest_rules: RuleSet::default(),
        env,
        system_prompt: None,
        sandbox: Default::default(),
    }
}

/// One turn's figures.
#[derive(Clone, Copy)]
struct Sample {
    first_text: Duration,
    done: Duration,
}

/// Runs one turn; returns its figures and the session to resume.
async fn turn(
    agent: &dyn AgentBackend,
    room: &RoomKey,
    session: Option<String>,
    n: usize,
) -> (Sample, Option<String>) {
    let (tx, mut rx) = mpsc::channel(64);
    let ctx = TurnContext {
        events: tx,
        cancel: CancellationToken::new(),
        gate: None,
    };
    let request = TurnRequest {
        room: room.clone(),
        session: session.clone(),
        prompt: format!("message {n} from {room}"),
        role: Role::Owner,
        model: None,
        output_schema: None,
    };
    let started = Instant::now();
    let run = agent.run_turn(request, ctx);
    tokio::pin!(run);
    let mut first_text = None;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            Some(event) = rx.recv() => {
                if matches!(event, AgentEvent::Text { .. }) && first_text.is_none() {
                    first_text = Some(started.elapsed());
                }
            }
        }
    };
    let done = started.elapsed();
    let outcome = outcome.unwrap_or_else(|e| panic!("turn failed in {room}: {e}"));
    assert_eq!(outcome.text, "OK", "unexpected answer");
    (
        Sample {
            first_text: first_text.unwrap_or(done),
            done,
        },
        outcome.session_id.or(session),
    )
}

/// Every room runs `messages` turns one after another; rooms run at once. Returns the
/// samples and the phase's wall time.
async fn phase(
    agent: Arc<dyn AgentBackend>,
    rooms: &[RoomKey],
    sessions: &mut [Option<String>],
    messages: usize,
) -> (Vec<Sample>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (room, session) in rooms.iter().zip(sessions.iter()) {
        let (agent, room, mut session) = (agent.clone(), room.clone(), session.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for n in 0..messages {
                let (s, next) = turn(&*agent, &room, session, n).await;
                samples.push(s);
                session = next;
            }
            (samples, session)
        }));
    }
    let mut all = Vec::new();
    for (task, slot) in tasks.into_iter().zip(sessions.iter_mut()) {
        let (samples, session) = task.await.expect("room task");
        all.extend(samples);
        *slot = session;
    }
    (all, started.elapsed())
}

fn percentile_ms(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

fn stats(samples: &[Sample], wall: Duration, cpu: Duration) -> serde_json::Value {
    let first: Vec<Duration> = samples.iter().map(|s| s.first_text).collect();
    let done: Vec<Duration> = samples.iter().map(|s| s.done).collect();
    json!({
        "turns": samples.len(),
        "first_text_ms": {"p50": percentile_ms(first.clone(), 0.5), "p99": percentile_ms(first, 0.99)},
        "done_ms": {"p50": percentile_ms(done.clone(), 0.5), "p99": percentile_ms(done, 0.99)},
        "turns_per_s": samples.len() as f64 / wall.as_secs_f64(),
        "agent_cpu_ms_per_turn": cpu.as_secs_f64() * 1000.0 / samples.len() as f64,
    })
}

/// CPU time of the reaped children of this process (the cold turns' CLIs and their children).
fn children_cpu() -> Duration {
    let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(r.user_time()) + t(r.system_time())
}

/// CPU time (user + system) of a live process and its live descendants, from `/proc`.
fn process_tree_cpu(pid: u32) -> Duration {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let stat = |pid: u32| -> Option<(u32, u64)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
        Some((
            f.get(1)?.parse().ok()?,
            f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        ))
    };
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| stat(p).map(|(ppid, t)| (p, ppid, t)))
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            all.iter()
                .filter(|(_, pp, _)| *pp == parent)
                .map(|(p, _, _)| *p),
        );
        i += 1;
    }
    let ticks: u64 = all
        .iter()
        .filter(|(p, _, _)| tree.contains(p))
        .map(|(_, _, t)| *t)
        .sum();
    Duration::from_millis(ticks * 1000 / tick)
}

fn main() {
    let a = args();
    let claude = claude_bin();
    if !claude.exists() {
        eprintln!(
            "the Claude Code CLI is missing at {} (scripts/install-test-deps.sh)",
            claude.display()
        );
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let llm = fake_llm::FakeLlm::start(json!({"scenarios": [], "default_text": "OK"})).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (home, work, scratch) = (dir.path().join("home"), dir.path().join("work"), dir.path().join("scratch"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let mut env = llm.claude_env();
        env.push(("HOME".into(), home.display().to_string()));
        let cfg = agent_config(&claude, &work, env);
        let rooms: Vec<RoomKey> = (0..a.rooms).map(|i| RoomKey::new("bench", format!("room{i}"))).collect();

        // Cold: one process per turn.
        let cold: Arc<dyn AgentBackend> = Arc::new(ClaudeBackend::new(&cfg, scratch.clone()));
        let mut sessions = vec![None; a.rooms];
        let cpu0 = children_cpu();
        let (cold_samples, cold_wall) = phase(cold, &rooms, &mut sessions, a.cold_messages).await;
        let cold_cpu = children_cpu().saturating_sub(cpu0);

        // Warm: the first message of each room starts its process (not measured as warm).
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let budget = Budget { max: a.rooms, idle_timeout: Duration::from_secs(3600) };
        let pool = Pool::new(budget, Arc::new(Relay::default()), tracker.clone(), cancel.clone());
        let warm: Arc<dyn AgentBackend> =
            Arc::new(ClaudeBackend::new(&cfg, scratch.clone()).with_warm(pool.clone()));
        let mut sessions = vec![None; a.rooms];
        let (start_samples, _) = phase(warm.clone(), &rooms, &mut sessions, 1).await;
        let pids: Vec<u32> = rooms.iter().filter_map(|r| pool.process_info(r)).map(|p| p.pid).collect();
        let cpu_before: Duration = pids.iter().map(|p| process_tree_cpu(*p)).sum();
        let (warm_samples, warm_wall) = phase(warm.clone(), &rooms, &mut sessions, a.messages).await;
        let cpu_after: Duration = pids.iter().map(|p| process_tree_cpu(*p)).sum();
        let rss: Vec<u64> = rooms
            .iter()
            .filter_map(|r| pool.process_info(r))
            .filter_map(|p| p.rss_bytes)
            .collect();
        let same = rooms.iter().filter_map(|r| pool.process_info(r)).map(|p| p.pid).collect::<Vec<_>>() == pids;

        let cold_stats = stats(&cold_samples, cold_wall, cold_cpu);
        let warm_stats = stats(&warm_samples, warm_wall, cpu_after.saturating_sub(cpu_before));
        let ratio = cold_stats["first_text_ms"]["p50"].as_f64().unwrap()
            / warm_stats["first_text_ms"]["p50"].as_f64().unwrap();
        let mut rss_sorted = rss.clone();
        rss_sorted.sort_unstable();
        let report = json!({
            "bench": "agent_latency",
            "cli": claude.display().to_string(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "rooms": a.rooms,
            "cold": cold_stats,
            "warm_start": stats(&start_samples, Duration::from_secs(1), Duration::ZERO)["first_text_ms"],
            "warm": warm_stats,
            "cold_over_warm_first_text_p50": ratio,
            "warm_processes_kept": same,
            "warm_rss_bytes": {
                "per_process": rss,
                "p50": rss_sorted.get(rss_sorted.len() / 2),
                "max": rss_sorted.last(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    });
}
