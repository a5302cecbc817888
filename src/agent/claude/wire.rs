//! Claude Code `--output-format stream-json` lines as serde types (CLI 2.1.197).
//!
//! Owns: the shapes of the NDJSON lines, of the hook settings file and of the PreToolUse body
//! the hook posts, nothing else.
//! Every field the gateway does not strictly need is optional, and unknown line types,
//! subtypes and content blocks decode to catch-all variants: the CLI adds fields often,
//! and a new one must never break a turn. Conversion into `model` types lives in
//! `stream.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One stdout line.
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Line {
    #[serde(rename = "system")]
    System(SystemLine),
    #[serde(rename = "assistant")]
    Assistant(MessageLine),
    #[serde(rename = "user")]
    User(MessageLine),
    #[serde(rename = "result")]
    Result(ResultLine),
    #[serde(rename = "rate_limit_event")]
    RateLimit(RateLimitLine),
    /// `stream_event`, `control_request`, and whatever later versions add.
    #[serde(other)]
    Other,
}

/// `system` lines: `init` (session start), `api_retry`, `status`, hook events, ….
#[derive(Debug, Deserialize)]
pub struct SystemLine {
    #[serde(default)]
    pub subtype: String,
    #[serde(default)]
    pub session_id: Option<String>,
    // api_retry
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Fractional milliseconds (`604.56`).
    #[serde(default)]
    pub retry_delay_ms: Option<f64>,
    #[serde(default)]
    pub error_status: Option<u16>,
    /// A short code such as `overloaded`; kept raw because its shape is undocumented.
    #[serde(default)]
    pub error: Option<Value>,
}

/// `assistant` and `user` lines: one content block of one API message each.
#[derive(Debug, Deserialize)]
pub struct MessageLine {
    pub message: Message,
    /// Non-null when the line belongs to a sub-agent (Task/Agent tool).
    #[serde(default)]
    pub parent_tool_use_id: Option<String>,
    /// Set on synthetic error messages (`"unknown"`, `"rate_limit"`).
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub is_api_error_message: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub model: Option<String>,
    /// A list of blocks; a plain string on replayed user prompts.
    #[serde(default)]
    pub content: Value,
}

/// Content blocks the gateway understands; see [`parse_blocks`].
#[derive(Debug, Deserialize)]
#[serde(tag = "type")]
pub enum Block {
    #[serde(rename = "text")]
    Text { text: String },
    #[serde(rename = "thinking")]
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(rename = "tool_use")]
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(rename = "tool_result")]
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        is_error: Option<bool>,
    },
    #[serde(other)]
    Other,
}

/// Decodes a message's content block by block, so one odd block does not hide the rest.
pub fn parse_blocks(content: &Value) -> Vec<Block> {
    match content {
        Value::String(text) => vec![Block::Text { text: text.clone() }],
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match Block::deserialize(item) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::debug!(error = %e, "skipping an unreadable content block");
                    None
                }
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The last line of a run.
#[derive(Debug, Deserialize)]
pub struct ResultLine {
    #[serde(default)]
    pub subtype: String,
    /// The real error flag: API errors end with `subtype: "success"` and `is_error: true`.
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub api_error_status: Option<u16>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub total_cost_usd: Option<f64>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default, rename = "modelUsage")]
    pub model_usage: BTreeMap<String, ModelUsage>,
    #[serde(default)]
    pub permission_denials: Vec<PermissionDenial>,
    /// Present on `error_during_execution` (e.g. "No conversation found …").
    #[serde(default)]
    pub errors: Vec<Value>,
    /// The answer of a `--json-schema` run, as the model gave it to `StructuredOutput`.
    #[serde(default)]
    pub structured_output: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
}

#[derive(Debug, Deserialize)]
pub struct ModelUsage {
    #[serde(default, rename = "contextWindow")]
    pub context_window: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct PermissionDenial {
    #[serde(default)]
    pub tool_name: String,
}

/// `rate_limit_event` (subscription auth only).
#[derive(Debug, Deserialize)]
pub struct RateLimitLine {
    pub rate_limit_info: RateLimitInfo,
}

#[derive(Debug, Deserialize)]
pub struct RateLimitInfo {
    #[serde(default)]
    pub status: String,
    /// Epoch seconds; a float in some captures.
    #[serde(default, rename = "resetsAt")]
    pub resets_at: Option<f64>,
    #[serde(default, rename = "rateLimitType")]
    pub rate_limit_type: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Settings file for `--settings` (the http PreToolUse hook)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct Settings {
    pub hooks: Hooks,
}

#[derive(Debug, Serialize)]
pub struct Hooks {
    #[serde(rename = "PreToolUse")]
    pub pre_tool_use: Vec<HookMatcher>,
}

#[derive(Debug, Serialize)]
pub struct HookMatcher {
    pub matcher: String,
    pub hooks: Vec<HttpHook>,
}

#[derive(Debug, Serialize)]
pub struct HttpHook {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub url: String,
    /// Seconds.
    pub timeout: u64,
    /// Literal values, the run's secret included: the settings file is readable only by its
    /// run's Landlock domain and deleted once the CLI has loaded it, so the secret need not
    /// (and must not) live in the CLI's environment, which its tools inherit. No
    /// `allowedEnvVars`: the CLI then substitutes no `$VAR` at all.
    pub headers: BTreeMap<String, String>,
}

/// The fields of a PreToolUse hook body the gateway uses (converted into `model::ToolCall` by
/// `hook.rs`). Claude Code also sends `session_id`, `transcript_path`, `hook_event_name`, …
#[derive(Debug, Deserialize)]
pub struct PreToolUseCall {
    pub tool_name: String,
    #[serde(default)]
    pub tool_input: Value,
    #[serde(default)]
    pub cwd: String,
}
