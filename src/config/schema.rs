//! `config schema`: the configuration file as a JSON Schema (draft 2020-12), for editors
//! (YAML language servers read it through a `# yaml-language-server: $schema=` line).
//!
//! Owns: the document's shape — the top-level keys, and the `connectors` items and `agents`
//! values chosen by their `type:` (an `if`/`then` per type, so an editor reports the keys of
//! the type written, not of every type). Each section's own schema is derived from the raw
//! serde type that parses it (`schemars`), so the schema cannot drift from what `load`
//! accepts: the raw types carry `deny_unknown_fields`, which becomes
//! `additionalProperties: false`, and their doc comments become descriptions.
//! Values are checked for shape only; what `validate` checks across sections (names that
//! exist, owners not also guests, paths) stays the loader's.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::controls::{RawBudgets, RawCommands, RawRateLimit};
use super::{RawAdmin, RawAgent, RawLog, RawRule, RawWatcher, Types, TOP_LEVEL_KEYS};

/// A section's schema: a connector type's whole list item, or the keys an agent type owns
/// besides [`COMMON_AGENT_KEYS`](super::COMMON_AGENT_KEYS).
pub type SectionSchema = fn() -> Value;

/// The schema of one raw type, with every subschema inlined (the document stays one
/// self-contained object, and sections can be merged as plain JSON).
pub fn of<T: JsonSchema>() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = Value::from(generator.subschema_for::<T>());
    if let Some(object) = schema.as_object_mut() {
        // Set once on the document, not on every section.
        object.remove("$schema");
    }
    schema
}

/// A connector section: the schema of its raw type, with `type` fixed to `type_name`.
pub fn connector_section<T: JsonSchema>(type_name: &str) -> Value {
    let mut schema = of::<T>();
    schema["properties"]["type"] = json!({ "const": type_name });
    schema
}

/// For an agent type that has no keys of its own.
pub fn no_own_keys() -> Value {
    json!({ "type": "object", "properties": {} })
}

/// The whole document for the types a program knows.
pub fn document(types: Types<'_>) -> Value {
    let connector_types = types.connectors.type_names();
    let connectors: Vec<(&str, Value)> = connector_types
        .iter()
        .filter_map(|name| Some((*name, (types.connectors.schema(name)?)())))
        .collect();
    let agent_types = types.agents.type_names();
    let agents: Vec<(&str, Value)> = agent_types
        .iter()
        .filter_map(|name| Some((*name, agent_section(types.agents.section(name)?.schema))))
        .collect();

    let mut properties = Map::new();
    for key in TOP_LEVEL_KEYS {
        let schema = match *key {
            "connectors" => json!({
                "description": "The chat platforms the gateway connects to.",
                "type": "array",
                "minItems": 1,
                "items": by_type(&connectors, &["name", "type"]),
            }),
            "default_agent" => json!({
                "description": "The agent of watchers that name none (a key of `agents`).",
                "type": "string",
            }),
            "agents" => json!({
                "description": "Agent name → agent section.",
                "type": "object",
                "minProperties": 1,
                "additionalProperties": by_type(&agents, &["type", "working_directory"]),
            }),
            "watchers" => json!({
                "description": "Which rooms of which connector are answered by which agent.",
                "type": "array",
                "minItems": 1,
                "items": of::<RawWatcher>(),
            }),
            "max_queue_depth" => count("Messages a room may hold waiting (default 100)."),
            "shutdown_grace" => json!({
                "description": "Seconds running turns get to finish at shutdown (default 30).",
                "type": "integer",
                "minimum": 0,
            }),
            "max_concurrent_turns" => count("Turns running at once across all rooms (default 16)."),
            "room_idle_eviction" => {
                count("Seconds an idle room's worker is kept before it is released (default 600).")
            }
            "tool_presets" => json!({
                "description": "Preset name → tool rules, usable by name in allow-lists.",
                "type": "object",
                "additionalProperties": { "type": "array", "items": of::<RawRule>() },
            }),
            "schedules" => json!({
                "description": "Prompts posted into a watcher's room on a cron schedule.",
                "type": "array",
                "items": of::<super::schedules::RawSchedule>(),
            }),
            "admin" => of::<RawAdmin>(),
            "log" => of::<RawLog>(),
            "commands" => of::<RawCommands>(),
            "budgets" => of::<RawBudgets>(),
            "rate_limit" => of::<RawRateLimit>(),
            "merge_window_ms" => json!({
                "description": "Milliseconds an idle room's first message waits for more, answered as one turn (default 0, at most 60000).",
                "type": "integer",
                "minimum": 0,
                "maximum": 60000,
            }),
            // A key `load` accepts and this match forgot shows up here (and in the tests),
            // never as a silently open schema.
            other => unreachable!("top-level key '{other}' has no schema"),
        };
        properties.insert((*key).to_string(), schema);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/agent-chat-gateway/agent-chat-gateway/config.schema.json",
        "title": "agent-chat-gateway configuration",
        "type": "object",
        "required": ["connectors", "agents", "watchers"],
        "additionalProperties": false,
        "properties": properties,
    })
}

/// A positive integer setting.
fn count(description: &str) -> Value {
    json!({ "description": description, "type": "integer", "minimum": 1 })
}

/// An object whose `type` picks one of `schemas`: the type must be one of them, and the
/// section then must match that type's schema.
fn by_type(schemas: &[(&str, Value)], required: &[&str]) -> Value {
    let names: Vec<&str> = schemas.iter().map(|(n, _)| *n).collect();
    let cases: Vec<Value> = schemas
        .iter()
        .map(|(name, schema)| {
            json!({
                "if": { "properties": { "type": { "const": name } }, "required": ["type"] },
                "then": schema,
            })
        })
        .collect();
    json!({
        "type": "object",
        "required": required,
        "properties": { "type": { "enum": names } },
        "allOf": cases,
    })
}

/// An agent section: the common keys, the type's own keys, and nothing else.
fn agent_section(own: SectionSchema) -> Value {
    let mut section = of::<RawAgent>();
    if let (Some(props), Value::Object(own)) = (section["properties"].as_object_mut(), own()) {
        if let Some(Value::Object(own_props)) = own.get("properties") {
            props.extend(own_props.clone());
        }
    }
    section["additionalProperties"] = Value::Bool(false);
    section
}

#[cfg(test)]
mod tests {
    use super::super::COMMON_AGENT_KEYS;
    use super::*;
    use std::collections::BTreeSet;

    fn keys(schema: &Value) -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn common_agent_keys_match_the_raw_agent() {
        let expected: BTreeSet<String> = COMMON_AGENT_KEYS.iter().map(|k| k.to_string()).collect();
        assert_eq!(keys(&of::<RawAgent>()), expected);
    }

    /// The program's own types: every top-level key has a schema (a forgotten one panics),
    /// each agent type's section holds exactly the keys `load` accepts for it, and each
    /// connector type's section is closed, with its `type` fixed.
    #[test]
    fn the_document_covers_every_key_the_loader_accepts() {
        let doc = document(crate::TYPES);
        let top: BTreeSet<String> = TOP_LEVEL_KEYS.iter().map(|k| k.to_string()).collect();
        assert_eq!(keys(&doc), top);
        let agent_cases = doc["properties"]["agents"]["additionalProperties"]["allOf"]
            .as_array()
            .unwrap();
        assert_eq!(agent_cases.len(), crate::TYPES.agents.type_names().len());
        for case in agent_cases {
            let name = case["if"]["properties"]["type"]["const"].as_str().unwrap();
            let section = crate::TYPES.agents.section(name).unwrap();
            let expected: BTreeSet<String> = COMMON_AGENT_KEYS
                .iter()
                .chain(section.keys)
                .map(|k| k.to_string())
                .collect();
            assert_eq!(keys(&case["then"]), expected, "agent type {name}");
            assert_eq!(case["then"]["additionalProperties"], Value::Bool(false));
        }
        let connector_cases = doc["properties"]["connectors"]["items"]["allOf"]
            .as_array()
            .unwrap();
        assert_eq!(
            connector_cases.len(),
            crate::TYPES.connectors.type_names().len()
        );
        for case in connector_cases {
            let name = case["if"]["properties"]["type"]["const"].as_str().unwrap();
            let then = &case["then"];
            assert_eq!(then["properties"]["type"]["const"], name);
            assert_eq!(then["additionalProperties"], Value::Bool(false), "{name}");
            for key in ["name", "allowed_users"] {
                assert!(keys(then).contains(key), "{name} lacks {key}");
            }
        }
    }

    #[test]
    fn sections_are_closed_and_self_contained() {
        let schema = of::<RawWatcher>();
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
        assert!(schema.get("$schema").is_none());
        assert!(!schema.to_string().contains("\"$ref\""), "{schema}");
    }
}
