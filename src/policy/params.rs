//! Parameter extraction per tool: the strings that rules' parameter regexes are matched against.
//!
//! Owns: the tool-name → parameter mapping and the canonical JSON serialization for tools
//! without a dedicated mapping.
//!
//! | tool (case-insensitive) | parameters |
//! |---|---|
//! | Bash | every command and redirect target of `command` (see `bash`) |
//! | Read, Write, Edit, MultiEdit | normalised absolute `file_path` |
//! | NotebookEdit | normalised absolute `notebook_path` |
//! | WebFetch | `url` |
//! | Skill | `skill` |
//! | anything else (Grep, Glob, Task, `mcp__*` …) | canonical JSON of the whole input |
//!
//! Canonical JSON is what Python's `json.dumps(value, ensure_ascii=False)` prints, so rules
//! written for the Python gateway keep working: keys in input order, `", "` between items,
//! `": "` after keys, non-ASCII characters as they are, `"`, `\` and control characters escaped
//! (`\n`, `\t`, … and `\u00XX`). Known difference: floats use Rust's shortest form (`1e100`
//! where Python prints `1e+100`).
//!
//! A missing, empty or wrong-typed field is a problem, not an empty parameter: it can never
//! be allowed for a guest.

use std::path::Path;

use serde_json::Value;

use super::{bash, paths};
use super::{Param, ParamKind};

/// Parameters of one tool call, and why they cannot be trusted (if so).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extraction {
    pub params: Vec<Param>,
    pub problems: Vec<String>,
}

/// Extracts the parameters of `tool` called with `input` in `cwd`.
pub fn extract(tool: &str, input: &Value, cwd: &Path) -> Extraction {
    let lower = tool.to_ascii_lowercase();
    match lower.as_str() {
        "bash" => match string_field(input, "command") {
            Ok(command) => {
                let analysis = bash::analyse(command, cwd);
                Extraction {
                    params: analysis.params,
                    problems: analysis.problems,
                }
            }
            Err(problem) => Extraction::problem(problem),
        },
        "read" | "write" | "edit" | "multiedit" => file_path(input, "file_path", cwd),
        "notebookedit" => file_path(input, "notebook_path", cwd),
        "webfetch" => plain_field(input, "url"),
        "skill" => plain_field(input, "skill"),
        _ => Extraction {
            params: vec![Param {
                text: canonical_json(input),
                kind: ParamKind::Other,
            }],
            problems: Vec::new(),
        },
    }
}

impl Extraction {
    fn problem(problem: String) -> Extraction {
        Extraction {
            params: Vec::new(),
            problems: vec![problem],
        }
    }
}

fn string_field<'v>(input: &'v Value, field: &str) -> Result<&'v str, String> {
    match input.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("`{field}` is empty")),
        Some(other) => Err(format!(
            "`{field}` is not a string (got {})",
            canonical_json(other)
        )),
        None => Err(format!("`{field}` is missing")),
    }
}

fn plain_field(input: &Value, field: &str) -> Extraction {
    match string_field(input, field) {
        Ok(value) => Extraction {
            params: vec![Param {
                text: value.to_string(),
                kind: ParamKind::Other,
            }],
            problems: Vec::new(),
        },
        Err(problem) => Extraction::problem(problem),
    }
}

fn file_path(input: &Value, field: &str, cwd: &Path) -> Extraction {
    let raw = match string_field(input, field) {
        Ok(raw) => raw,
        Err(problem) => return Extraction::problem(problem),
    };
    match paths::normalize(raw, cwd) {
        Some(path) => Extraction {
            params: vec![Param {
                text: path.display().to_string(),
                kind: ParamKind::Path(path),
            }],
            problems: Vec::new(),
        },
        None => Extraction::problem(format!(
            "`{field}` {raw:?} is relative and there is no working directory"
        )),
    }
}

/// `json.dumps(value, ensure_ascii=False)` (see the module comment).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_matches_python_json_dumps() {
        // Expected strings printed by Python 3: json.dumps(v, ensure_ascii=False).
        let cases = [
            (json!({"key": "value"}), r#"{"key": "value"}"#),
            (
                json!({"b": 1, "a": [1, 2, {"x": null}], "c": true}),
                r#"{"b": 1, "a": [1, 2, {"x": null}], "c": true}"#,
            ),
            (json!({"t": "héllo 你好"}), r#"{"t": "héllo 你好"}"#),
            (
                json!({"s": "a\"b\\c\nd\te\u{1}/"}),
                r#"{"s": "a\"b\\c\nd\te\u0001/"}"#,
            ),
            (json!([]), "[]"),
            (json!({}), "{}"),
            (json!(1.5), "1.5"),
        ];
        for (value, expect) in cases {
            assert_eq!(canonical_json(&value), expect);
        }
    }

    #[test]
    fn field_problems_are_reported() {
        let cwd = Path::new("/project");
        let cases = [
            ("Read", json!({})),
            ("Read", json!({"file_path": 7})),
            ("Read", json!({"file_path": ""})),
            ("Bash", json!({"command": ["ls"]})),
            ("WebFetch", json!({"uri": "https://x"})),
            ("Skill", json!(null)),
        ];
        for (tool, input) in cases {
            let e = extract(tool, &input, cwd);
            assert!(
                e.params.is_empty() && !e.problems.is_empty(),
                "{tool} {input}"
            );
        }
    }
}
