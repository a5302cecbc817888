//! Isolated homes for the non-Claude agent CLIs (OpenCode, Codex, Gemini CLI) pointed at the
//! fake model server: for each CLI, one function writes the CLI's config into a given HOME
//! and returns the environment the CLI needs, as [`FakeLlm::claude_env`] does for Claude.
//! [`env_yaml`] turns that environment into a YAML flow map for daemon configs.
//!
//! The environment is complete: a CLI started with `env_clear()`, `PATH` (for `node`) and
//! these variables runs offline against the fake. Every state directory the CLI would use
//! (XDG dirs, `CODEX_HOME`, `~/.gemini`) lies under the given HOME, so parallel tests and
//! the developer's own configuration never meet. No config allows every tool: where a
//! setting changes what the CLI may run, its comment says why it is needed.
//!
//! [`FakeLlm::claude_env`]: super::fake_llm::FakeLlm::claude_env

use std::path::Path;

use serde_json::json;

fn pairs(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("config path has a parent"))
        .expect("create config dir");
    std::fs::write(path, content).expect("write config");
}

/// OpenCode (`opencode run`, `opencode acp`) on the fake's OpenAI Chat Completions API:
/// `$HOME/.config/opencode/opencode.json` declares provider `fake` through the bundled
/// `@ai-sdk/openai-compatible` package, with `baseURL` `<url>/v1` and model `fake/fake-model`
/// for both the agent and the title call (`small_model`, else OpenCode picks a provider's
/// small model it cannot reach). `autoupdate: false` and `share: "disabled"` keep it off the
/// network. The permission defaults are kept: OpenCode runs `bash` without asking.
///
/// Env: the XDG dirs under HOME (OpenCode keeps its SQLite state in `XDG_DATA_HOME`),
/// `OPENCODE_DISABLE_AUTOUPDATE=1` and `OPENCODE_DISABLE_MODELS_FETCH=1` (no models.dev
/// download at start).
pub fn opencode_env(llm_url: &str, home: &Path) -> Vec<(String, String)> {
    let config = json!({
        "$schema": "https://opencode.ai/config.json",
        "provider": {"fake": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Fake LLM",
            "options": {"baseURL": format!("{llm_url}/v1"), "apiKey": "test"},
            "models": {"fake-model": {"name": "Fake model", "tool_call": true}},
        }},
        "model": "fake/fake-model",
        "small_model": "fake/fake-model",
        "autoupdate": false,
        "share": "disabled",
    });
    write(
        &home.join(".config/opencode/opencode.json"),
        &serde_json::to_string_pretty(&config).unwrap(),
    );
    let dir = |sub: &str| home.join(sub).display().to_string();
    pairs(&[
        ("HOME", dir("")),
        ("XDG_CONFIG_HOME", dir(".config")),
        ("XDG_DATA_HOME", dir(".local/share")),
        ("XDG_STATE_HOME", dir(".local/state")),
        ("XDG_CACHE_HOME", dir(".cache")),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1".into()),
        ("OPENCODE_DISABLE_MODELS_FETCH", "1".into()),
    ])
}

/// Codex (`codex exec`) on the fake's OpenAI Responses API: `$CODEX_HOME/config.toml`
/// (`CODEX_HOME` = `$HOME/.codex`) makes provider `fake` (`wire_api = "responses"`, the only
/// wire API custom providers speak, key from `FAKE_API_KEY`) and model `fake-model` the
/// default. `approval_policy = "never"`: `exec` has no channel to ask anyone, so a call that
/// needed approval would fail; `sandbox_mode = "workspace-write"` keeps the commands it runs
/// confined to the work dir. `check_for_update_on_startup = false` keeps it off the network.
pub fn codex_env(llm_url: &str, home: &Path) -> Vec<(String, String)> {
    let codex_home = home.join(".codex");
    write(
        &codex_home.join("config.toml"),
        &format!(
            r#"model = "fake-model"
model_provider = "fake"
approval_policy = "never"
sandbox_mode = "workspace-write"
check_for_update_on_startup = false

[model_providers.fake]
name = "Fake LLM"
base_url = "{llm_url}/v1"
env_key = "FAKE_API_KEY"
wire_api = "responses"
"#
        ),
    );
    // Codex refuses to create its sandbox helper (`codex-linux-sandbox`) when CODEX_HOME is
    // under the temp dir (`$TMPDIR`, else /tmp), and then every sandboxed command fails
    // while codex exits 0. A checkout under /tmp has its test homes there too, so the temp
    // dir is moved into HOME. (In the daemon, `TMPDIR` is the agent's private tmp.)
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create the CLI's temp dir");
    pairs(&[
        ("HOME", home.display().to_string()),
        ("CODEX_HOME", codex_home.display().to_string()),
        ("FAKE_API_KEY", "test".into()),
        ("TMPDIR", tmp.display().to_string()),
    ])
}

/// Gemini CLI (`gemini -p`, `gemini --acp`) on the fake's Gemini API:
/// `$HOME/.gemini/settings.json` selects API-key auth (else exit 41, "Invalid auth method
/// selected") and turns off auto-update, usage statistics and telemetry.
///
/// Env: `GOOGLE_GEMINI_BASE_URL` (the fake, no `/v1beta`: the SDK adds it), `GEMINI_API_KEY`,
/// and `GEMINI_CLI_TRUST_WORKSPACE=true`, without which headless runs exit 55 "not running
/// in a trusted directory" (the temp work dirs are never trusted otherwise).
pub fn gemini_env(llm_url: &str, home: &Path) -> Vec<(String, String)> {
    let settings = json!({
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {"enableAutoUpdate": false},
        "privacy": {"usageStatisticsEnabled": false},
        "telemetry": {"enabled": false},
    });
    write(
        &home.join(".gemini/settings.json"),
        &serde_json::to_string_pretty(&settings).unwrap(),
    );
    pairs(&[
        ("HOME", home.display().to_string()),
        ("GOOGLE_GEMINI_BASE_URL", llm_url.to_string()),
        ("GEMINI_API_KEY", "test".into()),
        ("GEMINI_CLI_TRUST_WORKSPACE", "true".into()),
    ])
}

/// `env` as a YAML flow map (`{K: "V", …}`) for an agent's `env:` in a daemon config.
pub fn env_yaml(env: &[(String, String)]) -> String {
    let pairs: Vec<String> = env.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
    format!("{{{}}}", pairs.join(", "))
}
