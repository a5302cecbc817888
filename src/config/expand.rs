//! `${VAR}` expansion in configuration string values, so secrets stay out of the file.
//! `$${` is a literal `${`. An unset variable is reported with the key path that used it.

use serde_yaml::Value;

/// Expands every string in `value` in place; returns `(key path, variable)` for unset ones.
pub fn expand_env(value: &mut Value) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    walk(
        value,
        String::new(),
        &mut |s| std::env::var(s).ok(),
        &mut missing,
    );
    missing
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
    missing: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(s) if s.contains('$') => {
            let (expanded, unset) = expand_str(s, lookup);
            *s = expanded;
            missing.extend(unset.into_iter().map(|var| (path.clone(), var)));
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, missing);
            }
        }
        Value::Mapping(map) => {
            for (k, item) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                walk(item, child, lookup, missing);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, path, lookup, missing),
        _ => {}
    }
}

/// Expands `${NAME}` occurrences; returns the text and the names that were unset.
pub fn expand_str(
    s: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> (String, Vec<String>) {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(lit) = after.strip_prefix("${") {
            out.push_str("${");
            rest = lit;
            continue;
        }
        if let Some(body) = after.strip_prefix('{') {
            if let Some(end) = body.find('}') {
                let name = &body[..end];
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if valid {
                    match lookup(name) {
                        Some(val) => out.push_str(&val),
                        None => unset.push(name.to_string()),
                    }
                    rest = &body[end + 1..];
                    continue;
                }
            }
        }
        out.push('$');
        rest = after;
    }
    out.push_str(rest);
    (out, unset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &str) -> (String, Vec<String>) {
        expand_str(s, &mut |n| (n == "SET").then(|| "value".to_string()))
    }

    #[test]
    fn expands_set_and_reports_unset() {
        assert_eq!(run("a ${SET} b"), ("a value b".into(), vec![]));
        assert_eq!(run("${NOPE}"), ("".into(), vec!["NOPE".into()]));
        assert_eq!(run("$${SET} $5 ${"), ("${SET} $5 ${".into(), vec![]));
    }

    #[test]
    fn reports_key_path() {
        let mut v: Value =
            serde_yaml::from_str("a:\n  - {b: \"${ACG_TEST_SURELY_UNSET_1}\"}\n").unwrap();
        let missing = expand_env(&mut v);
        assert_eq!(
            missing,
            vec![("a[0].b".to_string(), "ACG_TEST_SURELY_UNSET_1".to_string())]
        );
    }
}
