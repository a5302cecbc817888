//! `opencode run --format json` output (1.18.33, verified offline) as gateway events.
//!
//! Owns: the event lines (`step_start`, `text`, `reasoning`, `tool_use` with the tool's final
//! state, `step_finish` with tokens and cost, `error`), each carrying the `sessionID`, and
//! the end of a turn. There is no final line: the turn ends when the process exits, so an
//! exit 0 without an `error` line is success.

use serde_json::Value;

use crate::agent::pipe;
use crate::agent::process::{ExitInfo, LineProtocol};
use crate::agent::AgentError;
use crate::model::{AgentEvent, TurnOutcome, Usage};

pub struct OpencodeStream {
    session: Option<String>,
    resumed: bool,
    announced: bool,
    answer: Option<String>,
    /// Summed over the turn's steps.
    usage: Option<Usage>,
    failure: Option<String>,
}

/// The rules' name for an OpenCode tool (what the room is shown), or OpenCode's own.
fn rule_name(tool: &str) -> &str {
    match tool {
        "bash" => "Bash",
        "edit" | "patch" => "Edit",
        "write" => "Write",
        "read" => "Read",
        "glob" => "Glob",
        "grep" => "Grep",
        "list" => "LS",
        "webfetch" => "WebFetch",
        "websearch" => "WebSearch",
        "task" => "Task",
        "todowrite" => "TodoWrite",
        other => other,
    }
}

impl OpencodeStream {
    pub fn new(resumed: Option<&str>) -> OpencodeStream {
        OpencodeStream {
            session: resumed.map(str::to_string),
            resumed: resumed.is_some(),
            announced: false,
            answer: None,
            usage: None,
            failure: None,
        }
    }

    fn add_usage(&mut self, part: &Value) -> Option<AgentEvent> {
        let t = &part["tokens"];
        if !t.is_object() {
            return None;
        }
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let u = self.usage.get_or_insert_with(Usage::default);
        u.input_tokens += n(&t["input"]);
        u.output_tokens += n(&t["output"]) + n(&t["reasoning"]);
        u.cache_read_tokens += n(&t["cache"]["read"]);
        u.cache_write_tokens += n(&t["cache"]["write"]);
        if let Some(cost) = part["cost"].as_f64() {
            u.cost_usd = Some(u.cost_usd.unwrap_or(0.0) + cost);
        }
        Some(AgentEvent::Usage(u.clone()))
    }
}

impl LineProtocol for OpencodeStream {
    fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(line = %line.chars().take(200).collect::<String>(), "opencode printed a non-JSON line");
            return Vec::new();
        };
        let mut events = Vec::new();
        if let Some(id) = v["sessionID"].as_str().filter(|s| !s.is_empty()) {
            if !self.announced {
                self.announced = true;
                self.session = Some(id.to_string());
                events.push(AgentEvent::SessionStarted {
                    session_id: id.to_string(),
                });
            }
        }
        let part = &v["part"];
        match v["type"].as_str().unwrap_or_default() {
            "text" => {
                let text = part["text"].as_str().unwrap_or_default();
                if !text.trim().is_empty() {
                    self.answer = Some(text.to_string());
                    events.push(AgentEvent::Text { text: text.into() });
                }
            }
            "reasoning" => {
                let text = part["text"].as_str().unwrap_or_default();
                if !text.is_empty() {
                    events.push(AgentEvent::Thinking { text: text.into() });
                }
            }
            "tool_use" => {
                let id = part["callID"].as_str().unwrap_or_default().to_string();
                let state = &part["state"];
                let input = &state["input"];
                let shown = input["command"]
                    .as_str()
                    .or_else(|| input["filePath"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| input.to_string());
                events.push(AgentEvent::ToolStart {
                    id: id.clone(),
                    name: rule_name(part["tool"].as_str().unwrap_or_default()).to_string(),
                    input: shown,
                });
                if state["status"] == "completed" || state["status"] == "error" {
                    events.push(AgentEvent::ToolResult {
                        id,
                        is_error: state["status"] == "error",
                    });
                }
            }
            "step_finish" => events.extend(self.add_usage(part)),
            "error" => {
                let e = &v["error"];
                let message = e["data"]["message"]
                    .as_str()
                    .or_else(|| e["message"].as_str())
                    .or_else(|| v["message"].as_str())
                    .or_else(|| e["name"].as_str())
                    .unwrap_or("the turn failed");
                // The HTTP status sits beside the message; `agent::api_error` reads it from the text.
                self.failure = Some(match e["data"]["statusCode"].as_u64() {
                    Some(status) => format!("status {status}: {message}"),
                    None => message.to_string(),
                });
            }
            _ => {}
        }
        events
    }

    fn finish(self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
        pipe::conclude(
            pipe::Ending {
                cli: "opencode",
                succeeded: exit.success && self.failure.is_none(),
                session: self.session,
                resumed: self.resumed,
                answer: self.answer,
                usage: self.usage,
                failure: self.failure,
                lost_session: &["session not found"],
            },
            exit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real 1.18.33 run (other-agents.md §1), abridged.
    const RUN: &str = r#"{"type":"step_start","timestamp":1,"sessionID":"ses_e02b","part":{"id":"prt_1","type":"step-start"}}
{"type":"text","timestamp":2,"sessionID":"ses_e02b","part":{"id":"prt_2","type":"text","text":"I'll create the file."}}
{"type":"tool_use","timestamp":3,"sessionID":"ses_e02b","part":{"type":"tool","tool":"bash","callID":"call_1","state":{"status":"completed","input":{"command":"echo hello > out.txt","description":"Write hello"},"output":"(no output)","metadata":{"exit":0}},"id":"prt_3"}}
{"type":"step_finish","timestamp":4,"sessionID":"ses_e02b","part":{"reason":"tool-calls","type":"step-finish","tokens":{"total":120,"input":100,"output":20,"reasoning":0,"cache":{"write":0,"read":0}},"cost":0}}
{"type":"step_start","timestamp":5,"sessionID":"ses_e02b","part":{"type":"step-start"}}
{"type":"text","timestamp":6,"sessionID":"ses_e02b","part":{"type":"text","text":"Done: out.txt now contains hello."}}
{"type":"step_finish","timestamp":7,"sessionID":"ses_e02b","part":{"reason":"stop","type":"step-finish","tokens":{"total":130,"input":110,"output":20,"reasoning":0,"cache":{"write":0,"read":5}},"cost":0.25}}"#;

    fn exit(success: bool) -> ExitInfo {
        ExitInfo {
            success,
            status: if success {
                "exit code 0"
            } else {
                "exit code 1"
            }
            .into(),
            stderr_tail: String::new(),
        }
    }

    #[test]
    fn a_run_becomes_events_and_usage_is_summed_over_steps() {
        let mut s = OpencodeStream::new(None);
        let events: Vec<AgentEvent> = RUN.lines().flat_map(|l| s.feed(l)).collect();
        assert_eq!(
            events[0],
            AgentEvent::SessionStarted {
                session_id: "ses_e02b".into()
            }
        );
        assert!(events.contains(&AgentEvent::ToolStart {
            id: "call_1".into(),
            name: "Bash".into(),
            input: "echo hello > out.txt".into()
        }));
        assert!(events.contains(&AgentEvent::ToolResult {
            id: "call_1".into(),
            is_error: false
        }));
        let out = s.finish(&exit(true)).unwrap();
        assert_eq!(out.text, "Done: out.txt now contains hello.");
        let u = out.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_tokens),
            (210, 40, 5)
        );
        assert_eq!(u.cost_usd, Some(0.25));
    }

    #[test]
    fn an_error_line_fails_the_turn_even_at_exit_0() {
        let mut s = OpencodeStream::new(None);
        s.feed(r#"{"type":"error","sessionID":"ses_1","error":{"name":"APIError","data":{"message":"refused","statusCode":401}}}"#);
        let e = s.finish(&exit(true)).unwrap_err();
        assert!(e.user_message("r").contains("not logged in"), "{e}");
        let mut s = OpencodeStream::new(None);
        s.feed(r#"{"type":"error","sessionID":"ses_1","error":{"name":"APIError","data":{"message":"bad request","statusCode":400}}}"#);
        let e = s.finish(&exit(true)).unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::Api {
                    status: Some(400),
                    ..
                }
            ),
            "{e}"
        );
        let s = OpencodeStream::new(Some("ses_gone"));
        let e = s
            .finish(&ExitInfo {
                success: false,
                status: "exit code 1".into(),
                stderr_tail: "Error: Session not found: ses_gone".into(),
            })
            .unwrap_err();
        assert!(matches!(e, AgentError::SessionNotFound(_)), "{e}");
    }
}
