//! What an ACP tool call means in the gateway's one allow-list language, and which of the
//! agent's permission options answers a decision.
//!
//! Owns: the mapping of an ACP `ToolCall` (kind, title, `rawInput`, locations, the Claude
//! adapter's `_meta.claudeCode.toolName`) onto a neutral [`ToolCall`] named like the rules
//! (`Bash {command}`, `Read {file_path}`, `Edit`/`Write {file_path}`, `WebFetch {url}`,
//! `Grep {pattern, path}`), and the choice of option by its `kind`.
//! Knows nothing about: the policy (the gate decides), the connection.
//!
//! Fail closed: a call whose shape is not understood keeps its raw name and input, so that no
//! rule written for `Bash` or `Read` can match it by accident; the policy then treats it as
//! the unknown tool it is.

use std::path::Path;

use agent_client_protocol::v1::schema::{
    PermissionOption, PermissionOptionId, PermissionOptionKind, ToolCall as AcpToolCall, ToolKind,
};
use serde_json::{json, Map, Value};

use crate::model::ToolCall;

/// The neutral call an ACP tool call stands for. `cwd` is the session's working directory.
pub fn neutral_call(call: &AcpToolCall, cwd: &Path) -> ToolCall {
    let raw = call.raw_input.clone().unwrap_or(Value::Null);
    // The Claude adapter names the CLI's own tool and passes its input unchanged: the rules
    // were written for exactly those names.
    if let Some(name) = claude_tool_name(call) {
        return ToolCall {
            tool: name,
            input: raw,
            cwd: cwd.to_path_buf(),
        };
    }
    let mapped = match call.kind {
        ToolKind::Execute => command_of(&raw).map(|c| ("Bash", json!({ "command": c }))),
        ToolKind::Read => path_of(call, &raw).map(|p| ("Read", json!({ "file_path": p }))),
        ToolKind::Edit => path_of(call, &raw).map(|p| {
            let mut input = json!({ "file_path": p });
            if let Some(content) = raw.get("content").or_else(|| raw.get("new_string")) {
                input["content"] = content.clone();
            }
            ("Write", input)
        }),
        ToolKind::Fetch => string_field(&raw, &["url"]).map(|u| ("WebFetch", json!({ "url": u }))),
        ToolKind::Search => string_field(&raw, &["pattern", "query"]).map(|pattern| {
            let mut input = json!({ "pattern": pattern });
            if let Some(p) = string_field(&raw, &["path", "dir_path", "directory"]) {
                input["path"] = Value::String(p);
            }
            ("Grep", input)
        }),
        _ => None,
    };
    match mapped {
        Some((tool, input)) => ToolCall {
            tool: tool.to_string(),
            input,
            cwd: cwd.to_path_buf(),
        },
        None => ToolCall {
            tool: raw_name(call),
            input: unmapped_input(call, raw),
            cwd: cwd.to_path_buf(),
        },
    }
}

/// The input an unmapped call is decided on and shown with: its `rawInput`, or when the
/// agent sent none (Gemini CLI 0.61.0 sends only a title for its shell calls), the title, so
/// the owner asked about it sees what the agent says it will do. The title is display text:
/// it is never mapped onto a rule's tool (see the module doc).
fn unmapped_input(call: &AcpToolCall, raw: Value) -> Value {
    let empty = match &raw {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if empty && !call.title.trim().is_empty() {
        return json!({ "title": call.title });
    }
    raw
}

/// `_meta.claudeCode.toolName` of the Claude adapter, when it is a plain tool name.
fn claude_tool_name(call: &AcpToolCall) -> Option<String> {
    let name = call
        .meta
        .as_ref()?
        .get("claudeCode")?
        .get("toolName")?
        .as_str()?;
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plain.then(|| name.to_string())
}

/// The name an unmapped call is decided on: the agent's tool name if it gave one, else its
/// kind, prefixed so that it can never equal a built-in tool name.
fn raw_name(call: &AcpToolCall) -> String {
    let base = call
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| kind_word(&call.kind).to_string());
    format!("acp:{base}")
}

fn kind_word(kind: &ToolKind) -> &'static str {
    match kind {
        ToolKind::Read => "read",
        ToolKind::Edit => "edit",
        ToolKind::Delete => "delete",
        ToolKind::Move => "move",
        ToolKind::Search => "search",
        ToolKind::Execute => "execute",
        ToolKind::Think => "think",
        ToolKind::Fetch => "fetch",
        ToolKind::SwitchMode => "switch_mode",
        _ => "other",
    }
}

/// The shell command of an execute call: `command` or `cmd`, as a string or an argv.
fn command_of(raw: &Value) -> Option<String> {
    for key in ["command", "cmd"] {
        match raw.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => return Some(s.clone()),
            Some(Value::Array(words)) if !words.is_empty() => {
                let words: Option<Vec<&str>> = words.iter().map(Value::as_str).collect();
                return words.map(|w| {
                    w.iter()
                        .map(|w| shell_quote(w))
                        .collect::<Vec<_>>()
                        .join(" ")
                });
            }
            _ => {}
        }
    }
    None
}

/// Quotes one argv word for the bash parser, so that the policy sees exactly the words the
/// agent will run.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The one file a read or edit call is about: an input field, else its only location.
fn path_of(call: &AcpToolCall, raw: &Value) -> Option<String> {
    if let Some(p) = string_field(raw, &["file_path", "filePath", "path", "absolute_path"]) {
        return Some(p);
    }
    match call.locations.as_slice() {
        [only] => Some(only.path.display().to_string()),
        _ => None,
    }
}

fn string_field(raw: &Value, keys: &[&str]) -> Option<String> {
    let map: &Map<String, Value> = raw.as_object()?;
    keys.iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The option that answers a decision. Allowing picks `allow_once` only: an `allow_always`
/// would let the agent run later calls without asking, taking them away from the gate. No
/// such option means the call is refused. Refusing prefers `reject_once`. Options are picked
/// by kind, never by position or name. `None`: answer `cancelled`.
pub fn choose(options: &[PermissionOption], allow: bool) -> Option<PermissionOptionId> {
    let wanted: &[PermissionOptionKind] = if allow {
        &[PermissionOptionKind::AllowOnce]
    } else {
        &[
            PermissionOptionKind::RejectOnce,
            PermissionOptionKind::RejectAlways,
        ]
    };
    let found = wanted.iter().find_map(|kind| {
        options
            .iter()
            .find(|o| o.kind == *kind)
            .map(|o| o.option_id.clone())
    });
    match found {
        Some(id) => Some(id),
        // Allowed, but the agent offers no one-off allow: refuse rather than widen.
        None if allow => choose(options, false),
        None => None,
    }
}

/// `_meta` for `session/new` and `session/load` of the Claude adapter: an `ask` rule for
/// every built-in tool (so read-only ones such as `Read` and `Grep` are asked about too, and
/// an `allow` rule in the project's settings cannot skip the gate: ask wins over allow), and
/// the agent's system prompt appended to Claude Code's own.
pub fn claude_session_meta(system_prompt: Option<&str>) -> Map<String, Value> {
    let ask: Vec<Value> = crate::agent::claude::KNOWN_TOOLS
        .iter()
        .map(|t| Value::String((*t).to_string()))
        .collect();
    let mut meta = Map::new();
    meta.insert(
        "claudeCode".into(),
        json!({ "options": { "settings": { "permissions": { "ask": ask } } } }),
    );
    if let Some(prompt) = system_prompt {
        meta.insert("systemPrompt".into(), json!({ "append": prompt }));
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client_protocol::v1::schema::ToolCallLocation;

    fn call(kind: ToolKind, raw: Value) -> AcpToolCall {
        AcpToolCall::new("t1", "title").kind(kind).raw_input(raw)
    }

    #[test]
    fn the_claude_adapter_keeps_its_tool_names() {
        let mut meta = Map::new();
        meta.insert("claudeCode".into(), json!({"toolName": "Bash"}));
        let c = call(
            ToolKind::Execute,
            json!({"command": "ls", "description": "x"}),
        )
        .meta(meta);
        let n = neutral_call(&c, Path::new("/w"));
        assert_eq!(n.tool, "Bash");
        assert_eq!(n.input["command"], "ls");
    }

    #[test]
    fn kinds_map_onto_the_rule_names() {
        let cwd = Path::new("/w");
        let n = neutral_call(
            &call(ToolKind::Execute, json!({"command": "cargo test"})),
            cwd,
        );
        assert_eq!(
            (n.tool.as_str(), n.input.clone()),
            ("Bash", json!({"command": "cargo test"}))
        );
        let n = neutral_call(
            &call(ToolKind::Execute, json!({"cmd": ["rm", "-rf", "a b"]})),
            cwd,
        );
        assert_eq!(n.input["command"], "rm -rf 'a b'");
        let n = neutral_call(&call(ToolKind::Read, json!({"filePath": "/w/a.rs"})), cwd);
        assert_eq!(
            (n.tool.as_str(), n.input.clone()),
            ("Read", json!({"file_path": "/w/a.rs"}))
        );
        let c = call(ToolKind::Edit, json!({})).locations(vec![ToolCallLocation::new("/etc/x")]);
        assert_eq!(neutral_call(&c, cwd).input, json!({"file_path": "/etc/x"}));
        let n = neutral_call(&call(ToolKind::Fetch, json!({"url": "https://x"})), cwd);
        assert_eq!(n.tool, "WebFetch");
    }

    #[test]
    fn what_is_not_understood_keeps_a_name_no_rule_was_written_for() {
        let cwd = Path::new("/w");
        // An execute call without a command string.
        let n = neutral_call(&call(ToolKind::Execute, json!({"script": "ls"})), cwd);
        assert_eq!(n.tool, "acp:execute");
        assert_eq!(n.input, json!({"script": "ls"}));
        // Gemini CLI's shell call: no input, a title. Never a Bash call, whatever the title.
        let c = AcpToolCall::new("run_shell_command__1", "touch a.txt").kind(ToolKind::Execute);
        let n = neutral_call(&c, cwd);
        assert_eq!(
            (n.tool.as_str(), n.input),
            ("acp:execute", json!({"title": "touch a.txt"}))
        );
        // A tool name that tries to pass for a built-in one is prefixed too.
        let c = call(ToolKind::Other, json!({})).name("Bash".to_string());
        assert_eq!(neutral_call(&c, cwd).tool, "acp:Bash");
        // The adapter's name must be a plain word.
        let mut meta = Map::new();
        meta.insert("claudeCode".into(), json!({"toolName": "Bash(ls)"}));
        let c = call(ToolKind::Other, json!({})).meta(meta);
        assert_eq!(neutral_call(&c, cwd).tool, "acp:other");
    }

    fn opt(id: &str, kind: PermissionOptionKind) -> PermissionOption {
        PermissionOption::new(id.to_string(), id.to_string(), kind)
    }

    #[test]
    fn options_are_chosen_by_kind_and_never_allow_always() {
        let all = [
            opt("always", PermissionOptionKind::AllowAlways),
            opt("once", PermissionOptionKind::AllowOnce),
            opt("no", PermissionOptionKind::RejectOnce),
        ];
        assert_eq!(choose(&all, true).unwrap().to_string(), "once");
        assert_eq!(choose(&all, false).unwrap().to_string(), "no");
        let only_always = [
            opt("always", PermissionOptionKind::AllowAlways),
            opt("never", PermissionOptionKind::RejectAlways),
        ];
        assert_eq!(choose(&only_always, true).unwrap().to_string(), "never");
        assert!(choose(&[opt("always", PermissionOptionKind::AllowAlways)], true).is_none());
    }
}
