//! The daemon's Prometheus metrics: what happened (turns and their latency, agent errors by
//! kind, tool decisions and approvals by outcome) counted where it happens, and what is
//! (connectors up, rooms, queue depths, pending approvals, warm agents, memory) read when
//! `/metrics` is scraped (`admin.rs`). One registry per process, so instrumenting a module
//! needs no plumbing; label values are bounded by the config (agent names) or by fixed
//! vocabularies (outcomes, kinds), never by room or user ids.

use std::sync::{Mutex, OnceLock};

use nix::libc;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Turn latency buckets: 50 ms to ~7 min, doubling (a warm reply is tens of ms, a long
/// agent run minutes).
fn turn_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.05, 2.0, 14)
}

struct Metrics {
    registry: Registry,
    turns: Family<Labels, Counter>,
    turn_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    agent_errors: Family<Labels, Counter>,
    tool_decisions: Family<Labels, Counter>,
    approvals: Family<Labels, Counter>,
    connector_up: Family<Labels, Gauge>,
    rooms: Gauge,
    busy_rooms: Gauge,
    queued: Gauge,
    pending_approvals: Gauge,
    warm_agents: Gauge,
    resident_bytes: Gauge,
    /// Scrapes set the gauges and encode: one at a time, so none sees another's half.
    scrape: Mutex<()>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("acg");
        let turns = Family::<Labels, Counter>::default();
        registry.register(
            "turns",
            "Agent turns ended, by agent and outcome (ok or the error kind)",
            turns.clone(),
        );
        let turn_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            || Histogram::new(turn_buckets()),
        );
        registry.register(
            "turn_duration_seconds",
            "Time from a turn's start to its end, by agent",
            turn_seconds.clone(),
        );
        let agent_errors = Family::<Labels, Counter>::default();
        registry.register(
            "agent_errors",
            "Failed turns by agent and error kind",
            agent_errors.clone(),
        );
        let tool_decisions = Family::<Labels, Counter>::default();
        registry.register(
            "tool_decisions",
            "Tool calls decided by the gateway, by decision and who decided (policy, owner, timeout, unbound)",
            tool_decisions.clone(),
        );
        let approvals = Family::<Labels, Counter>::default();
        registry.register(
            "approvals",
            "Owner approval prompts by outcome (approved, denied, timeout)",
            approvals.clone(),
        );
        let connector_up = Family::<Labels, Gauge>::default();
        registry.register(
            "connector_up",
            "1 when the connector is connected to its platform",
            connector_up.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let rooms = gauge(&mut registry, "rooms", "Rooms with a worker");
        let busy_rooms = gauge(&mut registry, "busy_rooms", "Rooms running a turn");
        let queued = gauge(
            &mut registry,
            "queued_messages",
            "Messages waiting in room queues",
        );
        let pending_approvals = gauge(
            &mut registry,
            "pending_approvals",
            "Tool calls waiting for an owner",
        );
        let warm_agents = gauge(
            &mut registry,
            "warm_agents",
            "Agent processes kept between turns",
        );
        let resident_bytes = gauge(
            &mut registry,
            "resident_memory_bytes",
            "Resident memory of the daemon and its warm agent processes",
        );
        Metrics {
            registry,
            turns,
            turn_seconds,
            agent_errors,
            tool_decisions,
            approvals,
            connector_up,
            rooms,
            busy_rooms,
            queued,
            pending_approvals,
            warm_agents,
            resident_bytes,
            scrape: Mutex::new(()),
        }
    })
}

/// A turn ended: `error` is the error kind (`AgentError::kind`), `None` for an answer.
pub fn turn_ended(agent: &str, error: Option<&'static str>, seconds: f64) {
    let m = metrics();
    let agent_label = || vec![("agent", agent.to_string())];
    let mut labels = agent_label();
    labels.push(("outcome", error.unwrap_or("ok").to_string()));
    m.turns.get_or_create(&labels).inc();
    m.turn_seconds
        .get_or_create(&agent_label())
        .observe(seconds);
    // A cancelled turn (stop, shutdown) is no fault of the agent's.
    if let Some(kind) = error.filter(|k| *k != "cancelled") {
        let mut labels = agent_label();
        labels.push(("kind", kind.to_string()));
        m.agent_errors.get_or_create(&labels).inc();
    }
}

/// A tool call was decided (`decision` allow/deny, by `policy`, `owner`, `timeout` or
/// `unbound`); `count` > 1 for a summary of suppressed records.
pub fn tool_decided(decision: &str, by: &'static str, count: u64) {
    let m = metrics();
    let labels = vec![("decision", decision.to_string()), ("by", by.to_string())];
    m.tool_decisions.get_or_create(&labels).inc_by(count);
    let outcome = match (by, decision) {
        ("timeout", _) => "timeout",
        ("owner", "allow") => "approved",
        ("owner", _) => "denied",
        _ => return,
    };
    m.approvals
        .get_or_create(&vec![("outcome", outcome.to_string())])
        .inc();
}

/// What the daemon is, at a scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `(connector, connected)`.
    pub connectors: Vec<(String, bool)>,
    pub rooms: usize,
    pub busy_rooms: usize,
    pub queued: usize,
    pub pending_approvals: usize,
    pub warm_agents: usize,
    /// The daemon's own RSS plus its warm agents'.
    pub resident_bytes: u64,
}

/// The Prometheus text (format 0.0.4) of every metric, gauges set from `now`.
pub fn render(now: &Snapshot) -> String {
    let m = metrics();
    let _one_at_a_time = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    m.connector_up.clear();
    for (name, up) in &now.connectors {
        m.connector_up
            .get_or_create(&vec![("connector", name.clone())])
            .set(i64::from(*up));
    }
    let set = |g: &Gauge, v: usize| g.set(i64::try_from(v).unwrap_or(i64::MAX));
    set(&m.rooms, now.rooms);
    set(&m.busy_rooms, now.busy_rooms);
    set(&m.queued, now.queued);
    set(&m.pending_approvals, now.pending_approvals);
    set(&m.warm_agents, now.warm_agents);
    m.resident_bytes
        .set(i64::try_from(now.resident_bytes).unwrap_or(i64::MAX));
    let mut text = String::new();
    if let Err(e) = prometheus_text::encode(&mut text, &m.registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Resident memory of process `pid` in bytes (`/proc/<pid>/statm`), `None` where there is
/// no such file.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_come_out_as_prometheus_text() {
        turn_ended("unit-agent", None, 0.2);
        turn_ended("unit-agent", Some("timeout"), 3.0);
        tool_decided("allow", "owner", 1);
        let text = render(&Snapshot {
            connectors: vec![("local".into(), true), ("rc".into(), false)],
            queued: 3,
            ..Snapshot::default()
        });
        for line in [
            "# TYPE acg_turns_total counter",
            r#"acg_turns_total{agent="unit-agent",outcome="ok"} 1"#,
            r#"acg_turns_total{agent="unit-agent",outcome="timeout"} 1"#,
            r#"acg_agent_errors_total{agent="unit-agent",kind="timeout"} 1"#,
            r#"acg_turn_duration_seconds_count{agent="unit-agent"} 2"#,
            r#"acg_connector_up{connector="local"} 1"#,
            r#"acg_connector_up{connector="rc"} 0"#,
            "acg_queued_messages 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // The registry is the process's: other tests count approvals too.
        let approved = text
            .lines()
            .find_map(|l| l.strip_prefix(r#"acg_approvals_total{outcome="approved"} "#))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(approved.is_some_and(|n| n >= 1), "{text}");
        assert!(resident_bytes(std::process::id()).is_some_and(|b| b > 0));
    }
}
