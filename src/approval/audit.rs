//! The audit log: one JSON line per tool-call decision in `<runtime>/audit.jsonl` (time, room,
//! role, tool, parameters with secrets redacted, decision, who approved, latency).
//!
//! Calls that cannot be bound to a live turn (no secret, a wrong one) come from outside the
//! gateway's agents, so what they may write is bounded: their tool name and input are cut to a
//! few hundred bytes (the record says how much was cut), and at most
//! [`UNBOUND_PER_WINDOW`] of them are written per [`UNBOUND_WINDOW`]; the rest are counted and
//! written as one `"event": "unbound_suppressed"` record when the window is over (with the
//! next record of any kind, or when the log is closed). An attacker cannot fill the disk
//! through the log.

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use regex::Regex;
use serde_json::json;

use super::TurnBinding;
use crate::model::{Decision, ToolCall};

/// Unbound calls written in full-ish (cut) per window; beyond it they are only counted.
pub const UNBOUND_PER_WINDOW: u32 = 20;
pub const UNBOUND_WINDOW: Duration = Duration::from_secs(60);
/// Bytes of an unbound call's tool input (and tool name) that are kept.
pub const UNBOUND_INPUT_BYTES: usize = 256;
const UNBOUND_TOOL_BYTES: usize = 64;

pub struct AuditLog {
    file: Option<Mutex<std::fs::File>>,
    unbound: Mutex<UnboundWindow>,
}

pub struct AuditRecord(serde_json::Value);

/// Who decided a bound call. The audit record's `by` names the owner (or `timeout`,
/// `always`); the metrics count by this kind, so an owner whose username happens to be
/// "timeout" is still counted as an owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecidedBy {
    /// The rules alone (or the gateway refusing to ask: stopping, undeliverable).
    Policy,
    /// An owner's `approve`/`deny`, by username.
    Owner(String),
    /// An earlier `approve <id> always` in this session.
    Always,
    /// Nobody answered in time.
    Timeout,
}

impl DecidedBy {
    /// The record's `by`.
    fn recorded(&self) -> Option<&str> {
        match self {
            DecidedBy::Policy => None,
            DecidedBy::Owner(name) => Some(name),
            DecidedBy::Always => Some("always"),
            DecidedBy::Timeout => Some("timeout"),
        }
    }

    /// The metrics' `by` label.
    fn label(&self) -> &'static str {
        match self {
            DecidedBy::Policy => "policy",
            DecidedBy::Owner(_) => "owner",
            DecidedBy::Always => "always",
            DecidedBy::Timeout => "timeout",
        }
    }
}

/// The rate limit of unbound records. Time is tokio's, so tests can pause it.
#[derive(Default)]
struct UnboundWindow {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl UnboundWindow {
    /// Whether an unbound record arriving at `now` may be written.
    fn admit(&mut self, now: Instant) -> bool {
        let started = *self.started.get_or_insert(now);
        if now.duration_since(started) >= UNBOUND_WINDOW {
            self.started = Some(now);
            self.written = 0;
        }
        if self.written < UNBOUND_PER_WINDOW {
            self.written += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// The summary of what was suppressed, once its window is over (or `closing`).
    fn take_summary(&mut self, now: Instant, closing: bool) -> Option<AuditRecord> {
        let over = self
            .started
            .is_some_and(|s| now.duration_since(s) >= UNBOUND_WINDOW);
        if self.suppressed == 0 || !(over || closing) {
            return None;
        }
        let count = std::mem::take(&mut self.suppressed);
        Some(AuditRecord(json!({
            "ts": crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "event": "unbound_suppressed",
            "decision": "deny",
            "count": count,
            "reason": format!(
                "{count} more unauthenticated hook requests suppressed (at most {UNBOUND_PER_WINDOW} are recorded per {} s)",
                UNBOUND_WINDOW.as_secs()
            ),
        })))
    }
}

impl AuditLog {
    /// Opens (appending, mode 0600) the log; on failure decisions are still made and logged
    /// through tracing.
    pub fn open(path: &Path) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path);
        match file {
            Ok(f) => AuditLog {
                file: Some(Mutex::new(f)),
                unbound: Mutex::default(),
            },
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the audit log");
                AuditLog::disabled()
            }
        }
    }

    pub fn disabled() -> Self {
        AuditLog {
            file: None,
            unbound: Mutex::default(),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, UnboundWindow> {
        self.unbound.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a decision about a bound call, made `by` (and a due summary of suppressed
    /// unbound ones).
    pub fn append(&self, record: &AuditRecord, by: &DecidedBy) {
        let summary = self.window().take_summary(Instant::now(), false);
        if let Some(summary) = summary {
            self.write(&summary);
        }
        crate::metrics::tool_decided(record.decision(), by.label(), 1);
        self.write(record);
    }

    /// Appends the record of an unbound call unless the rate limit suppresses it; true when
    /// it was written (callers log the call only then, for the same reason).
    pub fn append_unbound(&self, record: &AuditRecord) -> bool {
        let now = Instant::now();
        let (summary, admitted) = {
            let mut window = self.window();
            (window.take_summary(now, false), window.admit(now))
        };
        if let Some(summary) = summary {
            self.write(&summary);
        }
        // Counted whether or not the rate limit lets the record be written.
        crate::metrics::tool_decided(record.decision(), "unbound", 1);
        if admitted {
            self.write(record);
        }
        admitted
    }

    fn write(&self, record: &AuditRecord) {
        tracing::info!(target: "audit", "{}", record.0);
        if let Some(file) = &self.file {
            let mut line = record.0.to_string();
            line.push('\n');
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!(error = %e, "audit log write failed");
            }
        }
    }
}

impl AuditRecord {
    fn decision(&self) -> &str {
        self.0["decision"].as_str().unwrap_or("deny")
    }

    pub fn decided(
        binding: &TurnBinding,
        call: &ToolCall,
        params: &[String],
        decision: &Decision,
        by: &DecidedBy,
        latency: Duration,
    ) -> Self {
        AuditRecord(json!({
            "ts": crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "room": binding.room.to_string(),
            "thread": binding.target.thread,
            "sender": binding.target.mention.as_ref().map(|s| s.username.clone()),
            "role": binding.role.as_str(),
            "agent": binding.agent.name,
            "tool": call.tool,
            "parameters": params.iter().map(|p| redact(p)).collect::<Vec<_>>(),
            "decision": decision.word(),
            "reason": decision.reason(),
            "by": by.recorded(),
            "latency_ms": latency.as_millis() as u64,
        }))
    }

    /// A call no live turn made. Its size is the caller's choice, so the tool name and input
    /// are cut to a few hundred bytes (redaction runs first, so a cut cannot leave half a
    /// secret unrecognised).
    pub fn unbound(call: &ToolCall, secret: UnboundSecret, decision: &Decision) -> Self {
        let input = redact(&call.input.to_string());
        AuditRecord(json!({
            "ts": crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "room": null,
            "secret": secret.word(),
            "tool": crate::text::truncate_bytes(&call.tool, UNBOUND_TOOL_BYTES),
            "parameters": [crate::text::truncate_bytes(&input, UNBOUND_INPUT_BYTES)],
            "input_bytes": input.len(),
            "decision": decision.word(),
            "reason": decision.reason(),
            "by": null,
        }))
    }
}

/// Why a call was unbound.
#[derive(Clone, Copy, Debug)]
pub enum UnboundSecret {
    Missing,
    Unknown,
}

impl UnboundSecret {
    fn word(self) -> &'static str {
        match self {
            UnboundSecret::Missing => "missing",
            UnboundSecret::Unknown => "unknown",
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let summary = self.window().take_summary(Instant::now(), true);
        if let Some(summary) = summary {
            self.write(&summary);
        }
    }
}

/// Masks values that look like credentials: `token=…`, `password: …`, `Bearer …`, API keys.
pub fn redact(s: &str) -> String {
    static PATTERNS: OnceLock<Vec<Regex>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        [
            r#"(?i)((?:api[_-]?key|token|secret|password|passwd|auth)[A-Za-z_]*\s*[=:]\s*["']?(?:bearer\s+|basic\s+)?)[^\s"'&]+"#,
            r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+",
            r"(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]+",
        ]
        .iter()
        .map(|p| Regex::new(p).expect("static regex"))
        .collect()
    });
    let mut out = s.to_string();
    for re in patterns {
        out = re.replace_all(&out, "${1}[REDACTED]").into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("curl -H 'Authorization: Bearer abc.def'"),
            "curl -H 'Authorization: Bearer [REDACTED]'"
        );
        assert_eq!(
            redact("export API_KEY=xyz123 && ls"),
            "export API_KEY=[REDACTED] && ls"
        );
        assert_eq!(
            redact("mysql --password=hunter2 db"),
            "mysql --password=[REDACTED] db"
        );
        assert_eq!(redact("git log"), "git log");
    }

    fn unbound_call(input_len: usize) -> ToolCall {
        ToolCall {
            tool: "Bash".repeat(100),
            input: json!({ "command": "x".repeat(input_len) }),
            cwd: "/".into(),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn an_unbound_record_is_cut_and_says_how_much() {
        let deny = Decision::Deny {
            reason: "blocked".into(),
        };
        let record = AuditRecord::unbound(&unbound_call(1_000_000), UnboundSecret::Unknown, &deny);
        let line = record.0.to_string();
        assert!(line.len() < 1024, "{} bytes: {line}", line.len());
        let kept = record.0["parameters"][0].as_str().unwrap();
        let total = r#"{"command":""#.len() + 1_000_000 + 2;
        assert!(kept.starts_with(r#"{"command":"xxx"#), "{kept}");
        assert!(
            kept.ends_with(&format!("… [{} more bytes]", total - UNBOUND_INPUT_BYTES)),
            "{kept}"
        );
        assert_eq!(record.0["input_bytes"], total);
        assert_eq!(record.0["secret"], "unknown");
        assert!(record.0["tool"].as_str().unwrap().len() < 100);
        // A small input is kept whole.
        let small = AuditRecord::unbound(&unbound_call(3), UnboundSecret::Missing, &deny);
        assert_eq!(small.0["parameters"][0], r#"{"command":"xxx"}"#);
    }

    #[tokio::test(start_paused = true)]
    async fn unbound_records_are_rate_limited_with_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path);
        let deny = Decision::Deny {
            reason: "blocked".into(),
        };
        let record = AuditRecord::unbound(&unbound_call(10), UnboundSecret::Missing, &deny);
        let written = (0..1000).filter(|_| log.append_unbound(&record)).count();
        assert_eq!(written, UNBOUND_PER_WINDOW as usize);
        assert_eq!(lines(&path).len(), UNBOUND_PER_WINDOW as usize);
        // Within the window nothing more is written, not even the summary.
        tokio::time::advance(UNBOUND_WINDOW / 2).await;
        assert!(!log.append_unbound(&record));
        assert_eq!(lines(&path).len(), UNBOUND_PER_WINDOW as usize);
        // The next window starts with the summary of the previous one.
        tokio::time::advance(UNBOUND_WINDOW).await;
        assert!(log.append_unbound(&record));
        let all = lines(&path);
        assert_eq!(all.len(), UNBOUND_PER_WINDOW as usize + 2);
        let summary = &all[UNBOUND_PER_WINDOW as usize];
        assert_eq!(summary["event"], "unbound_suppressed");
        assert_eq!(summary["count"], 981);
        assert_eq!(
            summary["reason"],
            "981 more unauthenticated hook requests suppressed (at most 20 are recorded per 60 s)"
        );
        // Suppressed ones left when the log closes are summarised too.
        for _ in 0..UNBOUND_PER_WINDOW + 5 {
            log.append_unbound(&record);
        }
        drop(log);
        let all = lines(&path);
        assert_eq!(all.last().unwrap()["count"], 6);
        assert!(
            all.iter().map(|v| v.to_string().len()).sum::<usize>() < 64 * 1024,
            "the log stays small"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bound_record_after_the_window_brings_the_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path);
        let deny = Decision::Deny {
            reason: "blocked".into(),
        };
        let record = AuditRecord::unbound(&unbound_call(10), UnboundSecret::Missing, &deny);
        for _ in 0..UNBOUND_PER_WINDOW + 3 {
            log.append_unbound(&record);
        }
        tokio::time::advance(UNBOUND_WINDOW).await;
        log.append(
            &AuditRecord(json!({"decision": "allow"})),
            &DecidedBy::Policy,
        );
        let all = lines(&path);
        assert_eq!(all[all.len() - 2]["count"], 3);
        assert_eq!(all[all.len() - 1]["decision"], "allow");
    }

    #[test]
    fn an_owner_named_like_a_source_is_counted_as_an_owner() {
        let by = DecidedBy::Owner("timeout".into());
        assert_eq!(by.recorded(), Some("timeout"));
        assert_eq!(by.label(), "owner");
        assert_eq!(DecidedBy::Timeout.label(), "timeout");
        assert_eq!(DecidedBy::Policy.recorded(), None);
    }
}
