//! A documented subset of JSON Schema, enough for the schemas OpenAI's structured outputs
//! accept: `type` (one or a list), `properties`, `required`, `additionalProperties` (bool or
//! schema), `items`, `enum`, `const`, `anyOf`, `allOf`, `oneOf`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum`, `minLength`, `maxLength`, `pattern` (Rust regex
//! syntax), `minItems`, `maxItems`; annotations (`title`, `description`, `default`,
//! `examples`, `format`, `$schema`, `$id`, `$comment`, `strict`) are ignored.
//!
//! A schema using anything else (`$ref`, `$defs`, `if`/`then`, …) is refused when the request
//! arrives, so no answer is ever passed as valid against a keyword nobody checked. (The
//! `jsonschema` crate would cover everything but pulls in a large dependency tree.)

use serde_json::Value;

const CHECKED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "allOf",
    "oneOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
];

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$schema",
    "$id",
    "$comment",
    "strict",
];

/// Refuses a schema using a keyword outside the subset (named with its path).
pub fn check_supported(schema: &Value) -> Result<(), String> {
    check_at(schema, "#")
}

fn check_at(schema: &Value, path: &str) -> Result<(), String> {
    let obj = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        _ => return Err(format!("{path}: a schema must be an object")),
    };
    for (key, value) in obj {
        if ANNOTATIONS.contains(&key.as_str()) {
            continue;
        }
        if !CHECKED.contains(&key.as_str()) {
            return Err(format!(
                "{path}: the keyword '{key}' is not supported by the gateway's schema check"
            ));
        }
        match key.as_str() {
            "properties" => {
                let props = value
                    .as_object()
                    .ok_or(format!("{path}/properties: must be an object"))?;
                for (name, sub) in props {
                    check_at(sub, &format!("{path}/properties/{name}"))?;
                }
            }
            "items" | "additionalProperties" => check_at(value, &format!("{path}/{key}"))?,
            "anyOf" | "allOf" | "oneOf" => {
                let list = value
                    .as_array()
                    .ok_or(format!("{path}/{key}: must be a list"))?;
                for (i, sub) in list.iter().enumerate() {
                    check_at(sub, &format!("{path}/{key}/{i}"))?;
                }
            }
            "pattern" => {
                let p = value
                    .as_str()
                    .ok_or(format!("{path}/pattern: must be a string"))?;
                regex::Regex::new(p).map_err(|e| format!("{path}/pattern: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks `value` against a schema that passed [`check_supported`]; the error names the
/// first failing place as a JSON pointer.
pub fn validate(value: &Value, schema: &Value) -> Result<(), String> {
    validate_at(value, schema, "")
}

fn validate_at(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let here = if at.is_empty() { "/" } else { at };
    let obj = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{here}: no value is allowed here")),
        Value::Object(o) => o,
        _ => return Err(format!("{here}: invalid schema")),
    };
    if let Some(t) = obj.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.iter().any(|t| is_type(value, t)) {
            return Err(format!(
                "{here}: expected {}, found {}",
                types.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(options) = obj.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return Err(format!(
                "{here}: {value} is not one of {}",
                Value::from(options.clone())
            ));
        }
    }
    if let Some(c) = obj.get("const") {
        if c != value {
            return Err(format!("{here}: expected {c}"));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |k: &str| obj.get(k).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| n < m)
            || bound("maximum").is_some_and(|m| n > m)
            || bound("exclusiveMinimum").is_some_and(|m| n <= m)
            || bound("exclusiveMaximum").is_some_and(|m| n >= m)
        {
            return Err(format!("{here}: {n} is out of range"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if obj
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
            || obj
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
        {
            return Err(format!(
                "{here}: a string of {len} characters is out of range"
            ));
        }
        if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(p).map_err(|e| format!("{here}: pattern: {e}"))?;
            if !re.is_match(s) {
                return Err(format!("{here}: does not match the pattern {p}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if obj
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
            || obj
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
        {
            return Err(format!("{here}: a list of {len} items is out of range"));
        }
        if let Some(item_schema) = obj.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate_at(item, item_schema, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Some(map) = value.as_object() {
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    return Err(format!("{here}: the property '{name}' is missing"));
                }
            }
        }
        let props = obj.get("properties").and_then(Value::as_object);
        for (name, v) in map {
            let path = format!("{at}/{name}");
            match props.and_then(|p| p.get(name)) {
                Some(sub) => validate_at(v, sub, &path)?,
                None => {
                    if let Some(extra) = obj.get("additionalProperties") {
                        validate_at(v, extra, &path)
                            .map_err(|_| format!("{path}: the property '{name}' is not allowed"))?;
                    }
                }
            }
        }
    }
    if let Some(all) = obj.get("allOf").and_then(Value::as_array) {
        for sub in all {
            validate_at(value, sub, at)?;
        }
    }
    if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|sub| validate_at(value, sub, at).is_ok()) {
            return Err(format!("{here}: matches none of anyOf"));
        }
    }
    if let Some(one) = obj.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|sub| validate_at(value, sub, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{here}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    Ok(())
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, value: Value) -> Result<(), String> {
        check_supported(&schema)?;
        validate(&value, &schema)
    }

    #[test]
    fn the_subset_validates_what_it_names() {
        let s = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
                "n": {"type": ["integer", "null"], "minimum": 0}
            },
            "required": ["name", "n"],
            "additionalProperties": false
        });
        assert!(check(s.clone(), json!({"name": "x", "n": 1, "tags": ["a"]})).is_ok());
        assert!(check(s.clone(), json!({"name": "x", "n": null})).is_ok());
        for (bad, needle) in [
            (json!({"n": 1}), "'name' is missing"),
            (json!({"name": "X", "n": 1}), "/name: does not match"),
            (json!({"name": "x", "n": -1}), "/n: -1 is out of range"),
            (
                json!({"name": "x", "n": 1.5}),
                "/n: expected integer or null",
            ),
            (json!({"name": "x", "n": 1, "tags": ["c"]}), "/tags/0"),
            (
                json!({"name": "x", "n": 1, "extra": 1}),
                "'extra' is not allowed",
            ),
            (json!([]), "expected object, found array"),
        ] {
            let err = check(s.clone(), bad).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn keywords_outside_the_subset_are_refused_up_front() {
        let err =
            check_supported(&json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}))
                .unwrap_err();
        assert!(
            err.contains("#/properties/a") && err.contains("$ref"),
            "{err}"
        );
        assert!(check_supported(&json!({"pattern": "("})).is_err());
        assert!(
            check_supported(&json!({"title": "t", "description": "d", "type": "string"})).is_ok()
        );
    }

    #[test]
    fn any_all_and_one_of_combine() {
        let s = json!({"oneOf": [{"type": "string"}, {"type": "integer"}], "allOf": [{"not_checked_here": 1}]});
        assert!(check_supported(&s).is_err());
        let s = json!({"anyOf": [{"type": "string"}, {"const": 3}]});
        assert!(check(s.clone(), json!("x")).is_ok());
        assert!(check(s.clone(), json!(3)).is_ok());
        assert!(check(s, json!(4)).is_err());
        let one = json!({"oneOf": [{"type": "number"}, {"type": "integer"}]});
        assert!(check(one, json!(2)).unwrap_err().contains("2 of oneOf"));
    }
}
