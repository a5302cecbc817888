//! Control protocol: requests are JSON objects tagged by `cmd`; responses are
//! `{"ok":true, …}` or `{"ok":false,"error":"…"}`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    List,
    Status,
    Pause {
        watcher: String,
    },
    Resume {
        watcher: String,
    },
    Reset {
        watcher: String,
    },
    Send {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attach: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connector: Option<String>,
    },
    Approve {
        id: String,
        #[serde(default)]
        always: bool,
    },
    Deny {
        id: String,
    },
    /// Graceful stop, same as SIGTERM.
    Stop,
}

pub fn ok(fields: Value) -> Value {
    let mut v = json!({"ok": true});
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    v
}

pub fn error(message: impl Into<String>) -> Value {
    json!({"ok": false, "error": message.into()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_stable_wire_forms() {
        let r: Request = serde_json::from_str(r#"{"cmd":"pause","watcher":"w"}"#).unwrap();
        assert_eq!(
            r,
            Request::Pause {
                watcher: "w".into()
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"send","room":"lobby","text":"hi"}"#).unwrap();
        assert!(matches!(r, Request::Send { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert_eq!(
            ok(json!({"message": "x"})),
            json!({"ok": true, "message": "x"})
        );
    }
}
