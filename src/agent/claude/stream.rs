//! Turns Claude Code stream-json lines into [`AgentEvent`]s, and the end of a run (last
//! `result` line, exit status, stderr) into a [`TurnOutcome`] or an [`AgentError`].
//!
//! Owns: the explicit conversion from `wire` types and the error classification rules.
//! Pure and synchronous, so it is tested from recorded NDJSON fixtures.

use serde_json::Value;

use super::wire::{self, Block, Line};
use crate::agent::process::{ExitInfo, LineProtocol};
use crate::agent::AgentError;
use crate::model::{AgentEvent, TurnOutcome, Usage};

/// Marker the CLI prints (stderr and `result.errors`) when `--resume` names an unknown id.
const NO_CONVERSATION: &str = "No conversation found";

/// Accumulates one run's output.
#[derive(Debug)]
pub struct StreamParser {
    /// The id this run created or resumed: the only one ever reported. Some CLI versions
    /// print a fresh per-invocation id on resume that has no transcript; storing that one
    /// breaks the next `--resume`.
    session: String,
    /// Whether `system/init` was seen (the session is then known to be live).
    started: bool,
    /// Main-agent assistant text blocks, in order.
    texts: Vec<String>,
    result: Option<wire::ResultLine>,
    /// A `rate_limit_event` said `rejected`.
    rejected: bool,
    /// Reset time (epoch seconds) of the latest `rate_limit_event` that had one.
    last_reset: Option<u64>,
    /// The limit a `rejected` event named (`five_hour`, `seven_day`).
    rejected_kind: Option<String>,
    /// Lines that decoded as a JSON object with a `type`.
    understood_lines: usize,
    /// Lines that were not JSON at all.
    garbage_lines: usize,
    /// What earlier turns of the same process cost: a warm process's `total_cost_usd` is
    /// cumulative for the process (verified, 2.1.197), so a turn's own cost is the rest.
    cost_before: f64,
}

impl StreamParser {
    pub fn new(session: &str) -> Self {
        StreamParser {
            session: session.to_string(),
            started: false,
            texts: Vec::new(),
            result: None,
            rejected: false,
            last_reset: None,
            rejected_kind: None,
            understood_lines: 0,
            garbage_lines: 0,
            cost_before: 0.0,
        }
    }

    /// A parser for one turn of a warm process whose earlier turns cost `cost_before`.
    pub fn after_cost(session: &str, cost_before: f64) -> Self {
        StreamParser {
            cost_before,
            ..StreamParser::new(session)
        }
    }

    /// Whether the turn's `result` line has been read (a warm process's turn ends there).
    pub fn has_result(&self) -> bool {
        self.result.is_some()
    }

    /// Whether any line of this turn was seen.
    pub fn saw_output(&self) -> bool {
        self.understood_lines + self.garbage_lines > 0
    }

    /// The process's cumulative cost as its last `result` line reported it.
    pub fn process_cost(&self) -> Option<f64> {
        self.result.as_ref().and_then(|r| r.total_cost_usd)
    }

    /// Consumes one stdout line; returns the events it carries (often none).
    pub fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
        let line = line.trim();
        if line.is_empty() {
            return Vec::new();
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) | Err(_) => {
                self.garbage_lines += 1;
                tracing::debug!(line = %preview(line), "skipping a non-JSON agent output line");
                return Vec::new();
            }
        };
        let parsed = match serde_json::from_value::<Line>(value) {
            Ok(l) => l,
            Err(e) => {
                // JSON, but not in a shape we know: counts as output, carries no events.
                self.understood_lines += 1;
                tracing::debug!(error = %e, line = %preview(line), "skipping an unreadable agent output line");
                return Vec::new();
            }
        };
        self.understood_lines += 1;
        match parsed {
            Line::System(s) => self.system(s),
            Line::Assistant(m) => self.assistant(m),
            Line::User(m) => user(m),
            Line::Result(r) => self.result(r),
            Line::RateLimit(r) => self.rate_limit(r.rate_limit_info),
            Line::Other => Vec::new(),
        }
    }

    fn system(&mut self, s: wire::SystemLine) -> Vec<AgentEvent> {
        match s.subtype.as_str() {
            // Only `init` names the session: hook events can come earlier with other ids.
            "init" if !self.started => {
                self.started = true;
                if let Some(printed) = s.session_id.as_deref().filter(|p| *p != self.session) {
                    tracing::warn!(session = %self.session, printed, "claude reported a different session id; keeping ours");
                }
                vec![AgentEvent::SessionStarted {
                    session_id: self.session.clone(),
                }]
            }
            "api_retry" => {
                let error = match (&s.error, s.error_status) {
                    (Some(Value::String(e)), Some(st)) => format!("{e} ({st})"),
                    (Some(Value::String(e)), None) => e.clone(),
                    (_, Some(st)) => format!("HTTP {st}"),
                    (_, None) => "model API error".to_string(),
                };
                vec![AgentEvent::Retrying {
                    attempt: s.attempt.unwrap_or(0),
                    max: s.max_retries.unwrap_or(0),
                    delay_ms: s
                        .retry_delay_ms
                        .map(|d| d.max(0.0).round() as u64)
                        .unwrap_or(0),
                    error,
                }]
            }
            _ => Vec::new(),
        }
    }

    fn assistant(&mut self, m: wire::MessageLine) -> Vec<AgentEvent> {
        let main_agent = m.parent_tool_use_id.is_none();
        // Synthetic messages carry error text ("API Error: 400 …", "You've hit your
        // limit …"): the result line reports the error; never show them as an answer.
        let synthetic = m.message.model.as_deref() == Some("<synthetic>")
            || m.is_api_error_message == Some(true)
            || m.error.as_ref().is_some_and(|e| !e.is_null());
        let mut events = Vec::new();
        for block in wire::parse_blocks(&m.message.content) {
            match block {
                Block::Text { text } if main_agent && !synthetic && !text.is_empty() => {
                    self.texts.push(text.clone());
                    events.push(AgentEvent::Text { text });
                }
                Block::Thinking { thinking }
                    if main_agent && !synthetic && !thinking.is_empty() =>
                {
                    events.push(AgentEvent::Thinking { text: thinking });
                }
                Block::ToolUse { id, name, input } => events.push(AgentEvent::ToolStart {
                    id,
                    name,
                    input: compact_json(&input),
                }),
                _ => {}
            }
        }
        events
    }

    fn result(&mut self, r: wire::ResultLine) -> Vec<AgentEvent> {
        let usage = usage_of(&r, self.cost_before);
        self.result = Some(r);
        usage.map(AgentEvent::Usage).into_iter().collect()
    }

    fn rate_limit(&mut self, info: wire::RateLimitInfo) -> Vec<AgentEvent> {
        let resets_at = info.resets_at.and_then(clamp_epoch_secs);
        self.last_reset = resets_at.or(self.last_reset);
        if info.status == "rejected" {
            self.rejected = true;
            self.rejected_kind = info.rate_limit_type.clone().or(self.rejected_kind.take());
        }
        vec![AgentEvent::RateLimit {
            status: info.status,
            resets_at,
            kind: info.rate_limit_type,
        }]
    }

    /// Decides the turn's fate from everything fed so far and how the process ended.
    pub fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
        let session = self.session.as_str();
        let Some(result) = self.result else {
            if exit.stderr_tail.contains(NO_CONVERSATION) {
                return Err(AgentError::SessionNotFound(session.to_string()));
            }
            if self.rejected {
                return Err(AgentError::RateLimited {
                    resets_at: self.last_reset,
                    kind: self.rejected_kind,
                    usage: true,
                });
            }
            if exit.success && self.understood_lines == 0 {
                let what = if self.garbage_lines == 0 {
                    "no output".to_string()
                } else {
                    format!(
                        "{} line(s) of non-JSON output and no result",
                        self.garbage_lines
                    )
                };
                return Err(AgentError::Protocol(what));
            }
            let status = if exit.success {
                format!("{} without a result", exit.status)
            } else {
                exit.status.clone()
            };
            return Err(AgentError::Crashed {
                status,
                stderr_tail: exit.stderr_tail.clone(),
            });
        };

        if result.is_error {
            let errors = error_texts(&result.errors);
            if errors.contains(NO_CONVERSATION) || exit.stderr_tail.contains(NO_CONVERSATION) {
                return Err(AgentError::SessionNotFound(session.to_string()));
            }
            if result.api_error_status == Some(429) || self.rejected {
                // Only a rejected `rate_limit_event` (subscription auth) says it is the
                // account's usage limit; a bare 429 is the API's request rate.
                return Err(AgentError::RateLimited {
                    resets_at: self.last_reset,
                    kind: self.rejected_kind,
                    usage: self.rejected,
                });
            }
            let message = result
                .result
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    if errors.is_empty() {
                        format!("{} (is_error)", result.subtype)
                    } else {
                        errors
                    }
                });
            return Err(AgentError::Api {
                status: result.api_error_status,
                message,
            });
        }
        if !exit.success {
            // A clean result followed by a failing exit: trust the exit, the run was cut.
            return Err(AgentError::Crashed {
                status: exit.status.clone(),
                stderr_tail: exit.stderr_tail.clone(),
            });
        }

        let usage = usage_of(&result, self.cost_before);
        // A structured answer is the answer, whatever the model said around it.
        let text = if let Some(v) = &result.structured_output {
            v.to_string()
        } else if self.texts.is_empty() {
            result.result.clone().unwrap_or_default()
        } else {
            self.texts.join("\n")
        };
        let mut denied_tools: Vec<String> = Vec::new();
        for d in &result.permission_denials {
            if !d.tool_name.is_empty() && !denied_tools.contains(&d.tool_name) {
                denied_tools.push(d.tool_name.clone());
            }
        }
        Ok(TurnOutcome {
            session_id: Some(session.to_string()),
            text,
            usage,
            denied_tools,
        })
    }
}

impl LineProtocol for StreamParser {
    fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
        StreamParser::feed(self, line)
    }

    fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
        StreamParser::finish(self, exit)
    }
}

fn user(m: wire::MessageLine) -> Vec<AgentEvent> {
    wire::parse_blocks(&m.message.content)
        .into_iter()
        .filter_map(|b| match b {
            Block::ToolResult {
                tool_use_id,
                is_error,
            } => Some(AgentEvent::ToolResult {
                id: tool_use_id,
                is_error: is_error.unwrap_or(false),
            }),
            _ => None,
        })
        .collect()
}

fn usage_of(r: &wire::ResultLine, cost_before: f64) -> Option<Usage> {
    let u = r.usage.as_ref()?;
    Some(Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_tokens: u.cache_read_input_tokens,
        cache_write_tokens: u.cache_creation_input_tokens,
        cost_usd: r.total_cost_usd.map(|c| (c - cost_before).max(0.0)),
        context_window: r
            .model_usage
            .values()
            .filter_map(|m| m.context_window)
            .max(),
    })
}

fn error_texts(errors: &[Value]) -> String {
    errors
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `resetsAt` is documented as epoch seconds; a value that only makes sense as
/// milliseconds is converted, and nonsense (negative, past year 9999) is dropped.
fn clamp_epoch_secs(t: f64) -> Option<u64> {
    const MAX_SECS: f64 = 253_402_300_799.0; // 9999-12-31T23:59:59Z
    if !t.is_finite() || t <= 0.0 {
        return None;
    }
    let secs = if t > MAX_SECS { t / 1000.0 } else { t };
    (secs <= MAX_SECS).then_some(secs as u64)
}

fn compact_json(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// First 200 characters of a line, for debug logs (never whole prompts or tool output).
fn preview(line: &str) -> String {
    let mut s: String = line.chars().take(200).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_exit() -> ExitInfo {
        ExitInfo {
            success: true,
            status: "exit status: 0".into(),
            stderr_tail: String::new(),
        }
    }

    #[test]
    fn a_warm_turn_reports_its_own_cost_not_the_processs() {
        // 2.1.197's `total_cost_usd` is cumulative for a stream-json process.
        let mut p = StreamParser::after_cost("s1", 0.002);
        assert!(!p.saw_output());
        p.feed(r#"{"type":"system","subtype":"init","session_id":"s1"}"#);
        assert!(!p.has_result());
        let events = p.feed(
            r#"{"type":"result","subtype":"success","is_error":false,"result":"OK","total_cost_usd":0.003,"usage":{"input_tokens":100,"output_tokens":20}}"#,
        );
        assert!(p.has_result() && p.saw_output());
        assert_eq!(p.process_cost(), Some(0.003));
        let Some(AgentEvent::Usage(u)) = events.first() else {
            panic!("{events:?}")
        };
        assert!((u.cost_usd.unwrap() - 0.001).abs() < 1e-9, "{u:?}");
        let out = p.finish(&ok_exit()).unwrap();
        assert!((out.usage.unwrap().cost_usd.unwrap() - 0.001).abs() < 1e-9);
    }

    fn fail_exit(stderr: &str) -> ExitInfo {
        ExitInfo {
            success: false,
            status: "exit status: 1".into(),
            stderr_tail: stderr.into(),
        }
    }

    fn run(lines: &[&str], exit: &ExitInfo) -> (Vec<AgentEvent>, Result<TurnOutcome, AgentError>) {
        let mut p = StreamParser::new("sess-1");
        let events = lines.iter().flat_map(|l| p.feed(l)).collect();
        (events, p.finish(exit))
    }

    #[test]
    fn sub_agent_and_synthetic_text_are_not_the_answer() {
        let (events, out) = run(
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"main"}]},"parent_tool_use_id":null}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"sub"}]},"parent_tool_use_id":"toolu_1"}"#,
                r#"{"type":"assistant","message":{"model":"<synthetic>","content":[{"type":"text","text":"API Error"}]}}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"fallback"}"#,
            ],
            &ok_exit(),
        );
        assert_eq!(
            events,
            vec![AgentEvent::Text {
                text: "main".into()
            }]
        );
        assert_eq!(out.unwrap().text, "main");
    }

    #[test]
    fn thinking_tools_and_sub_agent_tools_become_events() {
        let (events, out) = run(
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"thinking","thinking":"hmm","signature":"x"}]},"parent_tool_use_id":null}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Task","input":{"prompt":"look"}}]}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t2","name":"Grep","input":{"pattern":"x"}}]},"parent_tool_use_id":"t1"}"#,
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t2","content":[{"type":"text","text":"found"}]}]},"parent_tool_use_id":"t1"}"#,
                r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":"done","is_error":true}]}}"#,
                r#"{"type":"user","message":{"content":"a replayed prompt"}}"#,
                r#"{"type":"result","is_error":false,"result":"final"}"#,
            ],
            &ok_exit(),
        );
        assert_eq!(
            events,
            vec![
                AgentEvent::Thinking { text: "hmm".into() },
                AgentEvent::ToolStart {
                    id: "t1".into(),
                    name: "Task".into(),
                    input: r#"{"prompt":"look"}"#.into()
                },
                AgentEvent::ToolStart {
                    id: "t2".into(),
                    name: "Grep".into(),
                    input: r#"{"pattern":"x"}"#.into()
                },
                AgentEvent::ToolResult {
                    id: "t2".into(),
                    is_error: false
                },
                AgentEvent::ToolResult {
                    id: "t1".into(),
                    is_error: true
                },
            ]
        );
        assert_eq!(out.unwrap().text, "final");
    }

    #[test]
    fn result_text_is_used_when_no_text_block_came() {
        let (_, out) = run(
            &[r#"{"type":"result","subtype":"success","is_error":false,"result":"fallback"}"#],
            &ok_exit(),
        );
        assert_eq!(out.unwrap().text, "fallback");
    }

    #[test]
    fn a_structured_output_is_the_answer_whatever_was_said_around_it() {
        let (_, out) = run(
            &[
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Here it is."}]},"parent_tool_use_id":null}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"{\"n\":4}","structured_output":{"n":4}}"#,
            ],
            &ok_exit(),
        );
        assert_eq!(out.unwrap().text, r#"{"n":4}"#);
    }

    #[test]
    fn unknown_types_and_garbage_are_skipped() {
        let (events, out) = run(
            &[
                "not json at all",
                "[1,2]",
                r#"{"type":"brand_new_thing","x":1}"#,
                r#"{"type":"system","subtype":"hook_started","session_id":"other"}"#,
                r#"{"type":"system","subtype":"init","session_id":"sess-1"}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"mystery"},{"type":"text","text":"hi"}]}}"#,
                r#"{"type":"result","is_error":false}"#,
            ],
            &ok_exit(),
        );
        assert_eq!(
            events,
            vec![
                AgentEvent::SessionStarted {
                    session_id: "sess-1".into()
                },
                AgentEvent::Text { text: "hi".into() },
            ]
        );
        assert_eq!(out.unwrap().text, "hi");
    }

    #[test]
    fn printed_session_id_never_replaces_ours() {
        let (events, out) = run(
            &[
                r#"{"type":"system","subtype":"init","session_id":"printed-id"}"#,
                r#"{"type":"result","is_error":false,"result":"x","session_id":"printed-id"}"#,
            ],
            &ok_exit(),
        );
        assert_eq!(out.unwrap().session_id.as_deref(), Some("sess-1"));
        assert_eq!(
            events,
            vec![AgentEvent::SessionStarted {
                session_id: "sess-1".into()
            }]
        );
    }

    #[test]
    fn only_garbage_is_a_protocol_error() {
        let (_, out) = run(&["garbage", "more garbage"], &ok_exit());
        assert!(matches!(out, Err(AgentError::Protocol(_))), "{out:?}");
        let (_, out) = run(&[], &ok_exit());
        assert!(matches!(out, Err(AgentError::Protocol(_))), "{out:?}");
    }

    #[test]
    fn no_result_is_a_crash() {
        let (_, out) = run(&["garbage"], &fail_exit("boom"));
        match out {
            Err(AgentError::Crashed { stderr_tail, .. }) => assert_eq!(stderr_tail, "boom"),
            other => panic!("{other:?}"),
        }
        let (_, out) = run(
            &[r#"{"type":"system","subtype":"init","session_id":"sess-1"}"#],
            &ok_exit(),
        );
        assert!(matches!(out, Err(AgentError::Crashed { .. })), "{out:?}");
    }

    #[test]
    fn missing_session_from_stderr_alone() {
        let (_, out) = run(
            &[],
            &fail_exit("No conversation found with session ID: sess-1"),
        );
        assert!(
            matches!(out, Err(AgentError::SessionNotFound(ref s)) if s == "sess-1"),
            "{out:?}"
        );
    }

    #[test]
    fn rate_limit_reset_is_clamped_from_milliseconds() {
        assert_eq!(clamp_epoch_secs(1_783_173_600.0), Some(1_783_173_600));
        assert_eq!(clamp_epoch_secs(1_783_173_600_000.0), Some(1_783_173_600));
        assert_eq!(clamp_epoch_secs(-5.0), None);
        assert_eq!(clamp_epoch_secs(f64::INFINITY), None);
    }

    #[test]
    fn is_error_without_status_is_an_api_error() {
        let (_, out) = run(
            &[
                r#"{"type":"result","subtype":"error_during_execution","is_error":true,"errors":["boom"]}"#,
            ],
            &fail_exit(""),
        );
        match out {
            Err(AgentError::Api {
                status: None,
                message,
            }) => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
    }
}
