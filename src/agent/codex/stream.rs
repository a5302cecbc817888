//! `codex exec --json` output (0.169.0, verified offline; see `tests/it/agent_clis.rs`) as
//! gateway events.
//!
//! Owns: the event lines (`thread.started`, `turn.started`, `item.started`/`item.completed`
//! of `agent_message`, `reasoning`, `command_execution`, `file_change`, `mcp_tool_call`,
//! `web_search`, `error`; `turn.completed` with usage; `turn.failed`, `error`) and the end
//! of a turn: `turn.completed` is success, anything else is decided at exit.
//!
//! `item.completed` of type `error` is not fatal: Codex reports notices that way ("Model
//! metadata for `x` not found. Defaulting to fallback metadata"). Codex reports no cost, and
//! its `input_tokens` include the cached ones.

use std::collections::HashSet;

use serde_json::Value;

use crate::agent::pipe;
use crate::agent::process::{ExitInfo, LineProtocol};
use crate::agent::AgentError;
use crate::model::{AgentEvent, TurnOutcome, Usage};

pub struct CodexStream {
    /// The thread: the resumed one, then what `thread.started` says.
    session: Option<String>,
    resumed: bool,
    answer: Option<String>,
    usage: Option<Usage>,
    completed: bool,
    failure: Option<String>,
    /// Tool items already announced (an `item.completed` without `item.started` gets both).
    started: HashSet<String>,
}

impl CodexStream {
    pub fn new(resumed: Option<&str>) -> CodexStream {
        CodexStream {
            session: resumed.map(str::to_string),
            resumed: resumed.is_some(),
            answer: None,
            usage: None,
            completed: false,
            failure: None,
            started: HashSet::new(),
        }
    }

    fn tool_start(&mut self, item: &Value) -> Option<AgentEvent> {
        let id = item["id"].as_str()?.to_string();
        let (name, input) = match item["type"].as_str()? {
            "command_execution" => ("Bash".to_string(), text(&item["command"])),
            "file_change" => ("Edit".to_string(), changed_paths(item)),
            "mcp_tool_call" => (
                format!(
                    "mcp__{}__{}",
                    text(&item["server"]),
                    text(&item["tool"]).replace(' ', "_")
                ),
                item["arguments"].to_string(),
            ),
            "web_search" => ("WebSearch".to_string(), text(&item["query"])),
            _ => return None,
        };
        if !self.started.insert(id.clone()) {
            return None;
        }
        Some(AgentEvent::ToolStart { id, name, input })
    }

    fn item_completed(&mut self, item: &Value) -> Vec<AgentEvent> {
        let kind = item["type"].as_str().unwrap_or_default();
        match kind {
            "agent_message" | "assistant_message" => {
                let t = text(&item["text"]);
                if t.trim().is_empty() {
                    return Vec::new();
                }
                self.answer = Some(t.clone());
                vec![AgentEvent::Text { text: t }]
            }
            "reasoning" => {
                let t = text(&item["text"]);
                if t.is_empty() {
                    Vec::new()
                } else {
                    vec![AgentEvent::Thinking { text: t }]
                }
            }
            "command_execution" | "file_change" | "mcp_tool_call" | "web_search" => {
                let mut events: Vec<AgentEvent> = self.tool_start(item).into_iter().collect();
                let status = item["status"].as_str().unwrap_or_default();
                let exit_code = item["exit_code"].as_i64();
                events.push(AgentEvent::ToolResult {
                    id: text(&item["id"]),
                    is_error: status == "failed"
                        || status == "declined"
                        || exit_code.is_some_and(|c| c != 0),
                });
                events
            }
            "error" => {
                tracing::debug!(message = %text(&item["message"]), "codex notice");
                Vec::new()
            }
            other => {
                tracing::debug!(kind = other, "codex item not shown");
                Vec::new()
            }
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn changed_paths(item: &Value) -> String {
    item["changes"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["path"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

impl LineProtocol for CodexStream {
    fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(line = %line.chars().take(200).collect::<String>(), "codex printed a non-JSON line");
            return Vec::new();
        };
        match v["type"].as_str().unwrap_or_default() {
            "thread.started" => {
                let Some(id) = v["thread_id"].as_str().filter(|s| !s.is_empty()) else {
                    return Vec::new();
                };
                self.session = Some(id.to_string());
                vec![AgentEvent::SessionStarted {
                    session_id: id.to_string(),
                }]
            }
            "item.started" => self.tool_start(&v["item"]).into_iter().collect(),
            "item.completed" => self.item_completed(&v["item"]),
            "turn.completed" => {
                self.completed = true;
                let u = &v["usage"];
                let n = |k: &str| u[k].as_u64().unwrap_or(0);
                let usage = Usage {
                    input_tokens: n("input_tokens").saturating_sub(n("cached_input_tokens")),
                    output_tokens: n("output_tokens"),
                    cache_read_tokens: n("cached_input_tokens"),
                    cache_write_tokens: n("cache_write_input_tokens"),
                    cost_usd: None,
                    context_window: None,
                };
                self.usage = Some(usage.clone());
                vec![AgentEvent::Usage(usage)]
            }
            "turn.failed" => {
                self.failure = Some(
                    v["error"]["message"]
                        .as_str()
                        .unwrap_or("the turn failed")
                        .to_string(),
                );
                Vec::new()
            }
            "error" => {
                // Also sent for retries that may still succeed: decided at the end.
                self.failure = Some(text(&v["message"]));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
        pipe::conclude(
            pipe::Ending {
                cli: "codex",
                succeeded: self.completed && (self.failure.is_none() || exit.success),
                session: self.session,
                resumed: self.resumed,
                answer: self.answer,
                usage: self.usage,
                failure: self.failure,
                lost_session: &[
                    "no saved session",
                    "session not found",
                    "thread not found",
                    "no rollout found",
                ],
            },
            exit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real 0.169.0 run (other-agents.md §2): one command, two messages.
    const RUN: &str = r#"{"type":"thread.started","thread_id":"01a1fd50-1885-79b1-b765-78562a6a1c40"}
{"type":"item.completed","item":{"id":"item_0","type":"error","message":"Model metadata for `fake-model` not found. Defaulting to fallback metadata"}}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"I'll create the file."}}
{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hello > out.txt'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"/bin/bash -lc 'echo hello > out.txt'","aggregated_output":"","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_3","type":"agent_message","text":"Done: out.txt now contains hello."}}
{"type":"turn.completed","usage":{"input_tokens":200,"cached_input_tokens":50,"cache_write_input_tokens":0,"output_tokens":40,"reasoning_output_tokens":0}}"#;

    fn exit(success: bool, stderr: &str) -> ExitInfo {
        ExitInfo {
            success,
            status: if success {
                "exit code 0"
            } else {
                "exit code 1"
            }
            .into(),
            stderr_tail: stderr.into(),
        }
    }

    fn feed_all(s: &mut CodexStream, text: &str) -> Vec<AgentEvent> {
        text.lines().flat_map(|l| s.feed(l)).collect()
    }

    #[test]
    fn a_run_becomes_events_and_its_last_message_the_answer() {
        let mut s = CodexStream::new(None);
        let events = feed_all(&mut s, RUN);
        assert_eq!(
            events[0],
            AgentEvent::SessionStarted {
                session_id: "01a1fd50-1885-79b1-b765-78562a6a1c40".into()
            }
        );
        assert!(events.contains(&AgentEvent::ToolStart {
            id: "item_2".into(),
            name: "Bash".into(),
            input: "/bin/bash -lc 'echo hello > out.txt'".into()
        }));
        assert!(events.contains(&AgentEvent::ToolResult {
            id: "item_2".into(),
            is_error: false
        }));
        // The notice item is not an error of the turn.
        let out = s.finish(&exit(true, "")).unwrap();
        assert_eq!(out.text, "Done: out.txt now contains hello.");
        assert_eq!(
            out.session_id.as_deref(),
            Some("01a1fd50-1885-79b1-b765-78562a6a1c40")
        );
        let u = out.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.output_tokens),
            (150, 50, 40)
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let mut s = CodexStream::new(None);
        feed_all(
            &mut s,
            r#"{"type":"thread.started","thread_id":"t"}
{"type":"error","message":"unexpected status 401 Unauthorized: invalid api key"}
{"type":"turn.failed","error":{"message":"unexpected status 401 Unauthorized: invalid api key"}}"#,
        );
        let e = s.finish(&exit(false, "")).unwrap_err();
        assert!(e.user_message("r").contains("not logged in"), "{e}");

        let mut s = CodexStream::new(None);
        s.feed(r#"{"type":"thread.started","thread_id":"t"}"#);
        let e = s
            .finish(&exit(false, "thread 'main' panicked"))
            .unwrap_err();
        assert!(matches!(e, AgentError::Crashed { .. }), "{e}");

        let s = CodexStream::new(None);
        let e = s.finish(&exit(true, "")).unwrap_err();
        assert!(matches!(e, AgentError::Protocol(_)), "{e}");

        let s = CodexStream::new(Some("gone"));
        let e = s
            .finish(&exit(false, "Error: no rollout found for thread id gone"))
            .unwrap_err();
        assert!(matches!(e, AgentError::SessionNotFound(_)), "{e}");
    }

    #[test]
    fn a_retry_error_followed_by_success_is_a_success() {
        let mut s = CodexStream::new(Some("t"));
        feed_all(
            &mut s,
            r#"{"type":"error","message":"Reconnecting... 1/5"}
{"type":"item.completed","item":{"id":"i","type":"agent_message","text":"ok"}}
{"type":"turn.completed","usage":{}}"#,
        );
        let out = s.finish(&exit(true, "")).unwrap();
        assert_eq!(
            (out.text.as_str(), out.session_id.as_deref()),
            ("ok", Some("t"))
        );
    }
}
