//! `gemini --output-format stream-json` output (0.61.0, verified offline) as gateway events.
//!
//! Owns: the event lines (`init` with the session id, `message` deltas of the assistant,
//! `tool_use`/`tool_result`, `error`, the final `result` with its stats) and the end of a
//! turn: a `result` of status `success` is success, anything else is decided at exit.
//!
//! Assistant text arrives as deltas; a message is complete when a tool call or the result
//! follows. Gemini reports no cost. Non-JSON lines (warnings) are skipped.

use serde_json::Value;

use crate::agent::pipe;
use crate::agent::process::{ExitInfo, LineProtocol};
use crate::agent::AgentError;
use crate::model::{AgentEvent, TurnOutcome, Usage};

pub struct GeminiStream {
    session: Option<String>,
    resumed: bool,
    /// The assistant message being streamed.
    current: String,
    answer: Option<String>,
    usage: Option<Usage>,
    succeeded: bool,
    failure: Option<String>,
}

/// The rules' name for a Gemini tool (what the room is shown), or Gemini's own.
fn rule_name(tool: &str) -> &str {
    match tool {
        "run_shell_command" => "Bash",
        "write_file" => "Write",
        "replace" => "Edit",
        "read_file" | "read_many_files" => "Read",
        "glob" => "Glob",
        "search_file_content" | "grep" => "Grep",
        "list_directory" => "LS",
        "web_fetch" => "WebFetch",
        "google_web_search" => "WebSearch",
        other => other,
    }
}

impl GeminiStream {
    pub fn new(resumed: Option<&str>) -> GeminiStream {
        GeminiStream {
            session: resumed.map(str::to_string),
            resumed: resumed.is_some(),
            current: String::new(),
            answer: None,
            usage: None,
            succeeded: false,
            failure: None,
        }
    }

    /// The streamed message, as one block, when it has any text.
    fn flush(&mut self) -> Option<AgentEvent> {
        let text = std::mem::take(&mut self.current);
        if text.trim().is_empty() {
            return None;
        }
        self.answer = Some(text.clone());
        Some(AgentEvent::Text { text })
    }
}

impl LineProtocol for GeminiStream {
    fn feed(&mut self, line: &str) -> Vec<AgentEvent> {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            tracing::debug!(line = %line.chars().take(200).collect::<String>(), "gemini printed a non-JSON line");
            return Vec::new();
        };
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        match v["type"].as_str().unwrap_or_default() {
            "init" => {
                let id = s("session_id");
                if id.is_empty() {
                    return Vec::new();
                }
                self.session = Some(id.clone());
                vec![AgentEvent::SessionStarted { session_id: id }]
            }
            "message" if v["role"] == "assistant" => {
                if v["delta"] != true {
                    self.flush();
                }
                self.current
                    .push_str(v["content"].as_str().unwrap_or_default());
                Vec::new()
            }
            "tool_use" => {
                let mut events: Vec<AgentEvent> = self.flush().into_iter().collect();
                let params = &v["parameters"];
                let input = params["command"]
                    .as_str()
                    .or_else(|| params["file_path"].as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| params.to_string());
                events.push(AgentEvent::ToolStart {
                    id: s("tool_id"),
                    name: rule_name(&s("tool_name")).to_string(),
                    input,
                });
                events
            }
            "tool_result" => vec![AgentEvent::ToolResult {
                id: s("tool_id"),
                is_error: v["status"] != "success",
            }],
            "error" => {
                self.failure = Some(s("message"));
                Vec::new()
            }
            "result" => {
                let mut events: Vec<AgentEvent> = self.flush().into_iter().collect();
                if v["status"] == "success" {
                    self.succeeded = true;
                } else {
                    self.failure = Some(
                        v["error"]["message"]
                            .as_str()
                            .unwrap_or("the turn failed")
                            .to_string(),
                    );
                }
                let st = &v["stats"];
                if st.is_object() {
                    let n = |k: &str| st[k].as_u64().unwrap_or(0);
                    let usage = Usage {
                        input_tokens: n("input_tokens").saturating_sub(n("cached")),
                        output_tokens: n("output_tokens"),
                        cache_read_tokens: n("cached"),
                        ..Usage::default()
                    };
                    self.usage = Some(usage.clone());
                    events.push(AgentEvent::Usage(usage));
                }
                events
            }
            _ => Vec::new(),
        }
    }

    fn finish(mut self, exit: &ExitInfo) -> Result<TurnOutcome, AgentError> {
        self.flush();
        pipe::conclude(
            pipe::Ending {
                cli: "gemini",
                succeeded: self.succeeded,
                session: self.session,
                resumed: self.resumed,
                answer: self.answer,
                usage: self.usage,
                failure: self.failure,
                // 0.61.0: `Error resuming session: Invalid session identifier "<id>".`
                lost_session: &["invalid session identifier", "session not found"],
            },
            exit,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real 0.61.0 run (other-agents.md §3).
    const RUN: &str = r#"{"type":"init","timestamp":"2026-01-01T00:00:00Z","session_id":"ccf7f57e-1","model":"gemini-2.5-flash"}
{"type":"message","role":"user","content":"do it"}
{"type":"message","role":"assistant","content":"I'll create ","delta":true}
{"type":"message","role":"assistant","content":"the file.","delta":true}
{"type":"tool_use","tool_name":"run_shell_command","tool_id":"run_1","parameters":{"command":"echo hello > out.txt","description":"write file"}}
{"type":"tool_result","tool_id":"run_1","status":"success","output":""}
{"type":"message","role":"assistant","content":"Done: out.txt now contains hello.","delta":true}
{"type":"result","status":"success","stats":{"total_tokens":240,"input_tokens":200,"output_tokens":40,"cached":20,"input":200,"duration_ms":163,"tool_calls":1}}"#;

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
    fn deltas_become_whole_messages_and_the_last_is_the_answer() {
        let mut s = GeminiStream::new(None);
        let events: Vec<AgentEvent> = RUN.lines().flat_map(|l| s.feed(l)).collect();
        assert_eq!(
            events[..3],
            [
                AgentEvent::SessionStarted {
                    session_id: "ccf7f57e-1".into()
                },
                AgentEvent::Text {
                    text: "I'll create the file.".into()
                },
                AgentEvent::ToolStart {
                    id: "run_1".into(),
                    name: "Bash".into(),
                    input: "echo hello > out.txt".into()
                }
            ]
        );
        let out = s.finish(&exit(true)).unwrap();
        assert_eq!(out.text, "Done: out.txt now contains hello.");
        assert_eq!(out.session_id.as_deref(), Some("ccf7f57e-1"));
        let u = out.usage.unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.output_tokens),
            (180, 20, 40)
        );
    }

    #[test]
    fn an_unknown_session_is_told_apart() {
        let s = GeminiStream::new(Some("gone"));
        let e = s
            .finish(&ExitInfo {
                success: false,
                status: "exit code 1".into(),
                stderr_tail: "Error resuming session: Invalid session identifier \"gone\".".into(),
            })
            .unwrap_err();
        assert!(matches!(e, AgentError::SessionNotFound(_)), "{e}");
    }

    #[test]
    fn an_error_result_is_an_api_error_and_silence_a_crash() {
        let mut s = GeminiStream::new(None);
        s.feed(r#"{"type":"init","session_id":"x"}"#);
        s.feed(r#"{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: 404 model not found]"}}"#);
        let e = s.finish(&exit(false)).unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::Api {
                    status: Some(404),
                    ..
                }
            ),
            "{e}"
        );
        let s = GeminiStream::new(None);
        assert!(matches!(
            s.finish(&exit(false)).unwrap_err(),
            AgentError::Crashed { .. }
        ));
    }
}
