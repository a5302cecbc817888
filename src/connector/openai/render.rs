//! What an API request says to the agent: its messages (Chat Completions) or input items
//! (Responses) rendered into the text of one turn, and the answer-format instruction of a
//! `response_format` / `text.format`.
//!
//! A fresh session gets the whole context (instructions, the conversation so far, the new
//! user message); a resumed one only what came after the last assistant message, because
//! the agent's session already holds the rest.

use std::fmt::Write as _;

use serde_json::Value;

use super::schema;
use super::wire::{ChatMessage, Content, InputItem, ResponsesInput};

/// The answer format a caller asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    Text,
    JsonObject,
    JsonSchema(Value),
}

impl Format {
    /// The schema as JSON text, for an agent CLI that takes one (`--json-schema`).
    pub fn schema_text(&self) -> Option<String> {
        match self {
            Format::JsonSchema(schema) => Some(schema.to_string()),
            _ => None,
        }
    }
}

/// Text of a message's content; only text parts are understood.
fn content_text(content: &Option<Content>) -> Result<String, String> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = Vec::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text" | "input_text" | "output_text", Some(t)) => out.push(t.as_str()),
                    (kind, _) => {
                        return Err(format!(
                            "content parts of type '{kind}' are not supported (text only)"
                        ))
                    }
                }
            }
            Ok(out.join("\n"))
        }
    }
}

/// One turn's text from a Chat Completions `messages` array. `resume`: the session exists,
/// so only the messages after the last assistant message are sent.
pub fn chat(messages: &[ChatMessage], resume: bool) -> Result<String, String> {
    let mut items = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::Instructions,
            "user" => Role::User,
            "assistant" if m.tool_calls.is_some() => {
                return Err(format!(
                    "messages[{i}]: assistant tool calls are not supported (the agent runs its own tools)"
                ))
            }
            "assistant" => Role::Assistant,
            "tool" | "function" => {
                return Err(format!(
                    "messages[{i}]: tool results are not supported (the agent runs its own tools)"
                ))
            }
            other => return Err(format!("messages[{i}]: unknown role '{other}'")),
        };
        let text = content_text(&m.content).map_err(|e| format!("messages[{i}]: {e}"))?;
        items.push((role, text));
    }
    render(items, None, resume)
}

/// One turn's text from a Responses request's `instructions` and `input`.
pub fn responses(instructions: Option<&str>, input: &ResponsesInput) -> Result<String, String> {
    let items = match input {
        ResponsesInput::Text(s) => vec![(Role::User, s.clone())],
        ResponsesInput::Items(list) => list
            .iter()
            .enumerate()
            .map(|(i, item)| input_item(item).map_err(|e| format!("input[{i}]: {e}")))
            .collect::<Result<_, _>>()?,
    };
    // Input after a previous response is all new: nothing of it is in the session yet.
    render(items, instructions, false)
}

fn input_item(item: &InputItem) -> Result<(Role, String), String> {
    match item.kind.as_deref() {
        None | Some("message") => {}
        Some(other) => {
            return Err(format!(
                "items of type '{other}' are not supported (messages only; the agent runs its own tools)"
            ))
        }
    }
    let role = match item.role.as_deref() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system" | "developer") => Role::Instructions,
        Some(other) => return Err(format!("unknown role '{other}'")),
        None => return Err("a message needs a role".into()),
    };
    Ok((role, content_text(&item.content)?))
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Instructions,
    User,
    Assistant,
}

fn render(
    items: Vec<(Role, String)>,
    instructions: Option<&str>,
    resume: bool,
) -> Result<String, String> {
    let last_assistant = items.iter().rposition(|(r, _)| *r == Role::Assistant);
    let tail_start = last_assistant.map_or(0, |i| i + 1);
    let (earlier, tail) = items.split_at(tail_start);
    let latest: Vec<&str> = tail
        .iter()
        .filter(|(r, _)| *r == Role::User)
        .map(|(_, t)| t.as_str())
        .collect();
    if latest.is_empty() {
        return Err("the last message must be the user's (nothing to answer)".into());
    }
    let mut out = String::new();
    let mut system: Vec<&str> = instructions.into_iter().collect();
    system.extend(
        items
            .iter()
            .filter(|(r, _)| *r == Role::Instructions)
            .map(|(_, t)| t.as_str()),
    );
    if !resume {
        if !system.is_empty() {
            let _ = write!(
                out,
                "[Instructions from the API caller]\n{}\n\n",
                system.join("\n\n")
            );
        }
        let history: Vec<&(Role, String)> = earlier
            .iter()
            .filter(|(r, _)| *r != Role::Instructions)
            .collect();
        if !history.is_empty() {
            out.push_str("[Conversation so far]\n");
            for (role, text) in history {
                let who = if *role == Role::User {
                    "user"
                } else {
                    "assistant"
                };
                let _ = writeln!(out, "{who}: {text}");
            }
            out.push_str("[End of conversation so far]\n\n");
        }
    }
    out.push_str(&latest.join("\n\n"));
    Ok(out)
}

/// The `response_format` of a chat request (`{type: text | json_object | json_schema}`).
pub fn chat_format(value: Option<&Value>) -> Result<Format, String> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let schema = v
                .pointer("/json_schema/schema")
                .ok_or("response_format.json_schema.schema is missing")?;
            schema::check_supported(schema)
                .map_err(|e| format!("response_format.json_schema.schema: {e}"))?;
            Ok(Format::JsonSchema(schema.clone()))
        }
        _ => Err("response_format.type must be text, json_object or json_schema".into()),
    }
}

/// The `text.format` of a Responses request (`{type: text | json_object | json_schema,
/// schema}`).
pub fn responses_format(value: Option<&Value>) -> Result<Format, String> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(Format::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Format::Text),
        Some("json_object") => Ok(Format::JsonObject),
        Some("json_schema") => {
            let schema = v.get("schema").ok_or("text.format.schema is missing")?;
            schema::check_supported(schema).map_err(|e| format!("text.format.schema: {e}"))?;
            Ok(Format::JsonSchema(schema.clone()))
        }
        _ => Err("text.format.type must be text, json_object or json_schema".into()),
    }
}

/// What the turn's text gets appended for a JSON answer.
pub fn format_instruction(format: &Format) -> Option<String> {
    match format {
        Format::Text => None,
        Format::JsonObject => Some(
            "\n\n[Answer format: reply with one JSON object and nothing else — no prose, no code fences.]"
                .into(),
        ),
        Format::JsonSchema(schema) => Some(format!(
            "\n\n[Answer format: reply with one JSON value and nothing else — no prose, no code fences — that conforms to this JSON Schema:]\n{schema}"
        )),
    }
}

/// Checks an answer against the format; the JSON text to return (a single fenced block is
/// unwrapped, since models add fences despite being asked not to).
pub fn conform(answer: &str, format: &Format) -> Result<String, String> {
    if *format == Format::Text {
        return Ok(answer.to_string());
    }
    let trimmed = unfence(answer.trim());
    let value: Value = serde_json::from_str(trimmed)
        .map_err(|e| format!("the agent's answer is not JSON ({e})"))?;
    match format {
        Format::JsonObject if !value.is_object() => {
            Err("the agent's answer is JSON but not an object".into())
        }
        Format::JsonSchema(schema) => schema::validate(&value, schema)
            .map(|()| trimmed.to_string())
            .map_err(|e| format!("the agent's answer does not match the schema: {e}")),
        _ => Ok(trimmed.to_string()),
    }
}

fn unfence(s: &str) -> &str {
    let Some(rest) = s.strip_prefix("```") else {
        return s;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return s;
    };
    // Drop the info string (`json`) on the opening line.
    body.split_once('\n').map_or(body, |(_, b)| b).trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(v: Value) -> Vec<ChatMessage> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_fresh_session_gets_instructions_history_and_the_latest_message() {
        let m = messages(json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}
        ]));
        assert_eq!(
            chat(&m, false).unwrap(),
            "[Instructions from the API caller]\nBe brief.\n\n[Conversation so far]\nuser: Hi\nassistant: Hello\n[End of conversation so far]\n\nWhat is 2+2?"
        );
        assert_eq!(chat(&m, true).unwrap(), "What is 2+2?");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let tool = messages(json!([{"role": "tool", "content": "x"}]));
        assert!(chat(&tool, false).unwrap_err().contains("tool results"));
        let image =
            messages(json!([{"role": "user", "content": [{"type": "image_url", "text": null}]}]));
        assert!(chat(&image, false).unwrap_err().contains("image_url"));
        let last = messages(
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        );
        assert!(chat(&last, false).unwrap_err().contains("last message"));
    }

    #[test]
    fn json_answers_are_checked_and_unfenced() {
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let f = Format::JsonSchema(schema);
        assert_eq!(
            conform("```json\n{\"n\": 4}\n```", &f).unwrap(),
            "{\"n\": 4}"
        );
        assert!(conform("{\"n\": \"four\"}", &f).unwrap_err().contains("/n"));
        assert!(conform("four", &f).unwrap_err().contains("not JSON"));
        assert!(conform("[1]", &Format::JsonObject).is_err());
    }
}
