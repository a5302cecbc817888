//! The audit log: one JSON line per tool-call decision in `<runtime>/audit.jsonl` (time, room,
//! role, tool, parameters with secrets redacted, decision, who approved, latency).

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use regex::Regex;
use serde_json::json;

use super::hook::ToolCall;
use super::TurnBinding;
use crate::model::Decision;

pub struct AuditLog {
    file: Option<Mutex<std::fs::File>>,
}

pub struct AuditRecord(serde_json::Value);

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
            },
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the audit log");
                AuditLog { file: None }
            }
        }
    }

    pub fn disabled() -> Self {
        AuditLog { file: None }
    }

    pub fn append(&self, record: &AuditRecord) {
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
    pub fn decided(
        binding: &TurnBinding,
        call: &ToolCall,
        params: &[String],
        decision: &Decision,
        by: Option<&str>,
        latency: Duration,
    ) -> Self {
        AuditRecord(json!({
            "ts": crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "room": binding.room.to_string(),
            "thread": binding.target.thread,
            "sender": binding.target.mention.as_ref().map(|s| s.username.clone()),
            "role": binding.role.as_str(),
            "agent": binding.agent.name,
            "tool": call.tool_name,
            "parameters": params.iter().map(|p| redact(p)).collect::<Vec<_>>(),
            "decision": decision.word(),
            "reason": decision.reason(),
            "by": by,
            "latency_ms": latency.as_millis() as u64,
        }))
    }

    pub fn unbound(call: &ToolCall, decision: &Decision) -> Self {
        AuditRecord(json!({
            "ts": crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "room": null,
            "tool": call.tool_name,
            "parameters": [redact(&call.tool_input.to_string())],
            "decision": decision.word(),
            "reason": decision.reason(),
            "by": null,
        }))
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
    use super::redact;

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
}
