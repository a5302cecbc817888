//! Claude Code backend: one `claude -p` process per turn.
//!
//! Owns: argv (session, permission and prompt flags), the child environment, the per-run
//! hook settings file, what the CLI must be able to write under confinement (its state under
//! `$HOME`), the resume rules, and its registry entry ([`AGENT_TYPE`]). The stream-json wire
//! types live in `wire.rs`, their conversion into `model` events in `stream.rs`, the
//! PreToolUse endpoint that turns hook calls into [`ToolGate`] questions in `hook.rs`; the
//! generic run loop (spawn, read lines, deadline, cancel, exit) is `agent::process::run`.
//! Must not import: `connector`, `approval` (the broker is only a [`ToolGate`] here).
//!
//! Resume rule: a first turn chooses its session id up front (`--session-id <uuid>`) and
//! every later turn resumes exactly that id. The id the CLI prints is never stored: some
//! versions print a fresh per-invocation id on resume that has no transcript, and resuming
//! that fails with "No conversation found" (anthropics/claude-code #58760, #8069).
//!
//! The hook secret is written literally into the hook's `headers` in a per-run settings file
//! (0600, in the gateway's protected scratch dir). Under confinement only that run's Landlock
//! domain may read that one file, and the file is deleted as soon as the CLI prints its first
//! line — it has read its settings by then, and no tool can have run yet. The secret is never
//! in the CLI's environment, which every Bash tool inherits and `/proc/<pid>/environ` shows.
//! (A pipe, `--settings /dev/fd/N`, was tried first: 2.1.197 resolves the path and refuses
//! `pipe:[…]` as "Settings file not found".) What is left: the CLI's own memory, which its
//! tools (same user, same Landlock domain) could read through `/proc/<cli>/mem`.

pub mod hook;
mod stream;
mod wire;

pub use stream::StreamParser;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use tokio::time::Instant;

use super::confine::Sandbox;
use super::gate::GateTicket;
use super::process::{self, ProcessSpec};
use super::registry::{self, AgentType, BuildContext};
use super::state::{self, Env};
use super::{AgentBackend, AgentError, TurnContext};
use crate::config::{AgentConfig, Gating};
use crate::model::{Role, TurnOutcome, TurnRequest};
use crate::policy::{Rule, RuleSet};

/// Claude Code in the [agent registry](super::registry): no keys beyond the common ones.
pub const AGENT_TYPE: AgentType = AgentType {
    name: "claude",
    default_command: "claude",
    keys: &[],
    parse: registry::no_own_keys,
    schema: crate::config::schema::no_own_keys,
    gating: Gating::Optional,
    credentials: |c| state::credentials(&state::CLAUDE, &c.env),
    version: registry::version_flag,
    tested: "2.1.197 (@anthropic-ai/claude-code)",
    build,
};

/// A gated agent gets its own PreToolUse endpoint (127.0.0.1, a random port) in front of the
/// gate, stopped with the daemon's services.
fn build(ctx: BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>> {
    let mut backend = ClaudeBackend::new(ctx.config, ctx.scratch).with_sandbox(ctx.sandbox);
    if let Some(gate) = ctx.gate {
        let (listener, addr) = hook::bind().context("cannot bind the hook server")?;
        ctx.tracker.spawn(hook::serve(
            listener,
            gate,
            ctx.tracker.clone(),
            ctx.cancel.clone(),
        ));
        tracing::info!(agent = %ctx.config.name, %addr, "hook server listening");
        backend = backend.with_hook_url(format!("http://{addr}/hook"));
    }
    Ok(Arc::new(backend))
}

/// Environment variable an older gateway filled the hook header from. Never set now, and
/// removed from the inherited environment so it cannot leak from the daemon's own. The
/// policy's guard knows the same name (it denies tool calls that read it).
pub const HOOK_SECRET_ENV: &str = crate::policy::HOOK_SECRET_VAR;

/// Set inside a running Claude Code session; a child that inherits it believes it is nested.
const NESTED_SESSION_ENV: &str = "CLAUDECODE";

/// The tool through which `--json-schema` collects a structured answer (2.1.197: the run
/// ends after the call, the JSON in the result's `structured_output`).
const STRUCTURED_OUTPUT: &str = "StructuredOutput";

/// Flags that would take permission decisions away from the gateway.
const FORBIDDEN_ARGS: &[&str] = &[
    "--dangerously-skip-permissions",
    "--allow-dangerously-skip-permissions",
    "--permission-mode",
    "--permission-prompt-tool",
    "--allowedTools",
    "--allowed-tools",
    "--settings",
    "--session-id",
    "--resume",
    "-r",
    "--continue",
    "-c",
];

/// Built-in tool names, for writing allow-list entries the way the CLI spells them
/// (policy rules match case-insensitively; `--allowedTools` does not).
pub(crate) const KNOWN_TOOLS: &[&str] = &[
    "Agent",
    "Bash",
    "BashOutput",
    "Edit",
    "ExitPlanMode",
    "Glob",
    "Grep",
    "KillShell",
    "LS",
    "MultiEdit",
    "NotebookEdit",
    "NotebookRead",
    "Read",
    "SlashCommand",
    "Task",
    "TodoWrite",
    "WebFetch",
    "WebSearch",
    "Write",
];

pub struct ClaudeBackend {
    name: String,
    command: String,
    args: Vec<String>,
    working_directory: PathBuf,
    timeout: Duration,
    env: Vec<(String, String)>,
    system_prompt: Option<String>,
    owner_tools: Vec<String>,
    guest_tools: Vec<String>,
    /// Private per-agent directory for the per-run settings files.
    scratch_dir: PathBuf,
    /// The OS confinement every run gets, before the CLI's own writable state is added.
    sandbox: Option<Sandbox>,
    /// `http://127.0.0.1:<port>/hook`: where the PreToolUse hook of a gated run posts.
    hook_url: Option<String>,
}

impl ClaudeBackend {
    pub fn new(config: &AgentConfig, scratch_dir: PathBuf) -> ClaudeBackend {
        ClaudeBackend {
            name: config.name.clone(),
            command: config.command.clone(),
            args: config.args.clone(),
            working_directory: config.working_directory.clone(),
            timeout: config.timeout,
            env: config.env.clone(),
            system_prompt: config
                .system_prompt
                .clone()
                .filter(|s| !s.trim().is_empty()),
            owner_tools: allowed_tools(&config.owner_rules),
            guest_tools: allowed_tools(&config.guest_rules),
            scratch_dir,
            sandbox: None,
            hook_url: None,
        }
    }

    /// Where the PreToolUse hook of a gated run posts (the endpoint of [`hook::serve`]).
    /// A turn with a gate ticket but no hook URL is refused: its calls could not be asked.
    pub fn with_hook_url(mut self, url: String) -> ClaudeBackend {
        self.hook_url = Some(url);
        self
    }

    /// Confines every run: `base` carries the protected paths, the private tmp and the user;
    /// each run adds the working directory and the CLI's state under `$HOME`.
    pub fn with_sandbox(mut self, base: Sandbox) -> ClaudeBackend {
        self.sandbox = Some(base);
        self
    }

    fn run_sandbox(&self) -> Result<Option<(Sandbox, Env)>, AgentError> {
        state::run_sandbox(
            self.sandbox.as_ref(),
            &state::CLAUDE,
            &self.working_directory,
            &self.env,
        )
    }

    /// The argv after the program name, for one turn. `model`: the turn's model override
    /// (after the configured `args`, so it wins over a `--model` there). `schema`: the JSON
    /// Schema of a structured answer (`--json-schema`), which the CLI collects through its
    /// `StructuredOutput` tool — a tool without effects, so it is always let through.
    fn argv(
        &self,
        session: &SessionArg<'_>,
        role: Role,
        settings: Option<&Path>,
        model: Option<&str>,
        schema: Option<&str>,
    ) -> Vec<String> {
        let mut argv: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose"]
            .map(String::from)
            .to_vec();
        argv.extend(self.args.iter().cloned());
        if let Some(m) = model {
            argv.extend(["--model".into(), m.to_string()]);
        }
        if let Some(s) = schema {
            argv.extend(["--json-schema".into(), s.to_string()]);
        }
        match session {
            SessionArg::Create(id) => argv.extend(["--session-id".into(), (*id).to_string()]),
            SessionArg::Resume(id) => argv.extend(["--resume".into(), (*id).to_string()]),
        }
        // dontAsk makes every tool that nothing explicitly allowed a denial: a hook that is
        // down, slow or confused denies instead of letting tools run unguarded.
        argv.extend(["--permission-mode".into(), "dontAsk".into()]);
        if let Some(prompt) = &self.system_prompt {
            argv.extend(["--append-system-prompt".into(), prompt.clone()]);
        }
        match settings {
            Some(file) => {
                argv.extend(["--settings".into(), file.display().to_string()]);
                // The hook skips it (its matcher), so dontAsk needs it allowed.
                if schema.is_some() {
                    argv.extend(["--allowedTools".into(), STRUCTURED_OUTPUT.into()]);
                }
            }
            None => {
                let mut tools = match role {
                    Role::Owner => self.owner_tools.clone(),
                    Role::Guest => self.guest_tools.clone(),
                };
                if schema.is_some() {
                    tools.push(STRUCTURED_OUTPUT.into());
                }
                let tools = &tools;
                // dontAsk alone still lets read-only tools (Read of a file in the working
                // directory) run for everyone; offering only the listed tools makes the
                // allow-list the whole story. Unknown names in `--tools` are ignored and
                // `Task` is the CLI's alias of `Agent` (verified, 2.1.197); `""` = no tools.
                argv.extend(["--tools".into(), tool_names(tools).join(",")]);
                // Last, because the option is variadic: it takes every following word.
                if !tools.is_empty() {
                    argv.push("--allowedTools".into());
                    argv.extend(tools.iter().cloned());
                }
            }
        }
        argv
    }

    fn child_env(&self) -> (Vec<String>, Env) {
        child_env(&self.env)
    }

    fn check_args(&self) -> Result<(), AgentError> {
        for arg in &self.args {
            let flag = arg.split('=').next().unwrap_or(arg);
            if FORBIDDEN_ARGS.contains(&flag) {
                return Err(AgentError::Setup(format!(
                    "agent '{}': argument '{flag}' is managed by the gateway and may not be set in args",
                    self.name
                )));
            }
        }
        Ok(())
    }

    async fn run(
        &self,
        turn: &TurnRequest,
        ctx: &TurnContext,
        session: &str,
        resume: bool,
    ) -> Result<TurnOutcome, AgentError> {
        let mut settings = match (&ctx.gate, &self.hook_url) {
            (Some(ticket), Some(url)) => Some(SettingsFile::write(
                &self.scratch_dir,
                url,
                ticket,
                self.sandbox.as_ref().and_then(|s| s.user.as_ref()),
                turn.output_schema.is_some(),
            )?),
            // Fail closed: running without the hook would leave the calls to the allow-list.
            (Some(_), None) => {
                return Err(AgentError::Setup(format!(
                    "agent '{}': its tool calls must be asked, but it has no hook endpoint",
                    self.name
                )))
            }
            (None, _) => None,
        };
        let settings_path = settings.as_ref().map(|s| s.path.clone());
        let session_arg = if resume {
            SessionArg::Resume(session)
        } else {
            SessionArg::Create(session)
        };
        let (env_remove, mut env) = self.child_env();
        let sandbox = match self.run_sandbox()? {
            Some((mut sandbox, extra)) => {
                env.extend(extra);
                sandbox.readable_files.extend(settings_path.clone());
                Some(sandbox)
            }
            None => None,
        };
        let spec = ProcessSpec {
            program: self.command.clone(),
            args: self.argv(
                &session_arg,
                turn.role,
                settings_path.as_deref(),
                turn.model.as_deref(),
                turn.output_schema.as_deref(),
            ),
            cwd: self.working_directory.clone(),
            env_remove,
            env,
            stdin: turn.prompt.as_bytes().to_vec(),
            sandbox,
        };
        let started = Instant::now();
        let run = process::Run {
            agent: &self.name,
            spec: &spec,
            timeout: self.timeout,
        };
        // Any output means the CLI is past loading its settings, and no tool has run yet
        // (that needs a model answer first): the secret's file goes now (see module doc).
        let result = process::run(run, ctx, StreamParser::new(session), || {
            drop(settings.take())
        })
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(out) => {
                tracing::info!(agent = %self.name, room = %turn.room, session, resume, elapsed_ms,
                denied = out.denied_tools.len(), "claude turn finished")
            }
            Err(e) => {
                tracing::info!(agent = %self.name, room = %turn.room, session, resume, elapsed_ms,
                error = %e, "claude turn failed")
            }
        }
        // A run that printed nothing still has its file: removed here, after the process.
        drop(settings);
        result
    }
}

enum SessionArg<'a> {
    Create(&'a str),
    Resume(&'a str),
}

#[async_trait]
impl AgentBackend for ClaudeBackend {
    async fn run_turn(
        &self,
        turn: TurnRequest,
        ctx: TurnContext,
    ) -> Result<TurnOutcome, AgentError> {
        self.check_args()?;
        match turn.session.clone() {
            Some(id) => self.run(&turn, &ctx, &id, true).await,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                self.run(&turn, &ctx, &id, false).await
            }
        }
    }

    fn working_directory(&self) -> &PathBuf {
        &self.working_directory
    }
}

/// A 0600 settings file in the private scratch dir, removed on drop. It holds the hook URL
/// and the run's secret as a literal header value (see the module doc for why that is safer
/// than an environment variable).
struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    /// `owner`: a `run_as` user, who must be able to read the file (the daemon makes
    /// `scratch_dir` traversable for it; see `daemon::agent_sandbox`).
    fn write(
        dir: &Path,
        url: &str,
        ticket: &GateTicket,
        owner: Option<&super::confine::RunAs>,
        structured_output: bool,
    ) -> Result<SettingsFile, AgentError> {
        let setup = |what: &str, path: &Path, e: std::io::Error| {
            AgentError::Setup(format!("{what} {}: {e}", path.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| setup("could not create", dir, e))?;
        let settings = wire::Settings {
            hooks: wire::Hooks {
                pre_tool_use: vec![wire::HookMatcher {
                    // Every tool, including read-only ones, MCP tools and sub-agent calls;
                    // with a structured answer, all but `StructuredOutput` (it only hands
                    // the answer to the CLI, and is allowed by `--allowedTools`).
                    matcher: if structured_output {
                        format!("^(?!{STRUCTURED_OUTPUT}$).*")
                    } else {
                        ".*".into()
                    },
                    hooks: vec![wire::HttpHook {
                        kind: "http",
                        url: url.to_string(),
                        timeout: ticket.timeout.as_secs().max(1),
                        headers: BTreeMap::from([(
                            hook::SECRET_HEADER.to_string(),
                            ticket.secret.clone(),
                        )]),
                    }],
                }],
            },
        };
        let body = serde_json::to_vec_pretty(&settings)
            .map_err(|e| AgentError::Setup(format!("could not encode hook settings: {e}")))?;
        let path = dir.join(format!("hook-settings-{}.json", uuid::Uuid::new_v4()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| setup("could not create", &path, e))?;
        let guard = SettingsFile { path };
        if let Some(u) = owner {
            std::os::unix::fs::chown(&guard.path, Some(u.uid), Some(u.gid))
                .map_err(|e| setup("could not hand over", &guard.path, e))?;
        }
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(|e| setup("could not write", &guard.path, e))?;
        Ok(guard)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove hook settings file");
        }
    }
}

/// The variables removed from a Claude process's inherited environment and those set on
/// top: the agent's `env`, never the hook secret (see the module doc), even if `env` names it.
pub(crate) fn child_env(agent_env: &[(String, String)]) -> (Vec<String>, Env) {
    let remove = vec![NESTED_SESSION_ENV.to_string(), HOOK_SECRET_ENV.to_string()];
    let env: Env = agent_env
        .iter()
        .filter(|(k, _)| k != HOOK_SECRET_ENV)
        .cloned()
        .collect();
    (remove, env)
}

/// Maps allow-list rules to `--allowedTools` entries, keeping only those the CLI's syntax
/// can express exactly or more narrowly. Everything else is left out (fail closed): under
/// `dontAsk` an unlisted tool is denied.
pub fn allowed_tools(rules: &RuleSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for rule in &rules.rules {
        match map_rule(rule) {
            Some(entry) => {
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
            None => {
                tracing::debug!(rule = %rule.text, "allow-list rule has no exact --allowedTools form; not passed")
            }
        }
    }
    out
}

/// The tool names of `--allowedTools` entries (`Bash(git *)` → `Bash`), without repeats.
fn tool_names(entries: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let name = entry.split('(').next().unwrap_or(entry).to_string();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn map_rule(rule: &Rule) -> Option<String> {
    let tool = plain_tool_name(rule_source(rule.tool.as_str())?)?;
    let Some(params) = &rule.params else {
        return Some(tool);
    };
    if tool != "Bash" {
        return None;
    }
    let prefix = literal(rule_source(params.as_str())?.strip_suffix(".*")?)?;
    if prefix.is_empty() {
        return Some("Bash".into());
    }
    // Verified with CLI 2.1.197 under dontAsk: `Bash(p*)` allows exactly the commands that
    // start with `p` (`Bash(touch allowed*)` runs `touch allowed.txt`), and the CLI still
    // denies compound commands (`;`, `&&`, `$(…)`) whose other parts are not listed. The
    // legacy `Bash(p:*)` form is a word prefix (it refuses `touch allowed.txt`), so it is
    // not used. Characters with a meaning inside the pattern are refused.
    if prefix.contains(['(', ')', '*', '\n']) || prefix.ends_with(':') {
        return None;
    }
    Some(format!("Bash({prefix}*)"))
}

/// The rule's source regex, without the `^(?:…)$` that `Rule::new` wraps it in.
fn rule_source(compiled: &str) -> Option<&str> {
    compiled.strip_prefix("^(?:")?.strip_suffix(")$")
}

/// A tool-name regex that is just a name (`Bash`, `mcp__srv__tool`), in the CLI's spelling.
fn plain_tool_name(src: &str) -> Option<String> {
    if src.is_empty() || !src.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(
        KNOWN_TOOLS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(src))
            .map_or_else(|| src.to_string(), |k| (*k).to_string()),
    )
}

/// The literal text a regex fragment matches, if it has no operators (escaped punctuation
/// such as `\.` is allowed).
fn literal(src: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = src.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() || e == ' ' => out.push(e),
                _ => return None,
            },
            '.' | '^' | '$' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' => {
                return None
            }
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[(&str, Option<&str>)]) -> RuleSet {
        RuleSet::new(
            list.iter()
                .map(|(t, p)| Rule::new(t, *p).unwrap())
                .collect(),
        )
    }

    #[test]
    fn maps_only_rules_with_a_faithful_cli_form() {
        let set = rules(&[
            ("Read", None),
            ("grep", None),
            ("mcp__srv__tool", None),
            ("Bash", Some("git status.*")),
            ("Bash", Some(r"ls \-la.*")),
            ("Bash", Some("echo hello .*")),
            ("Bash", Some(r"a\*b.*")),
            ("Bash", Some("foo:.*")),
            ("Bash", Some(".*")),
            ("Read|Write", None),
            ("Web.*", None),
            ("Bash", Some("rm -rf /tmp/x")),
            ("Bash", Some("git (status|log).*")),
            ("Bash", Some(r"cat \d.*")),
            ("Write", Some("/tmp/.*")),
            ("Read", None),
        ]);
        assert_eq!(
            allowed_tools(&set),
            vec![
                "Read",
                "Grep",
                "mcp__srv__tool",
                "Bash(git status*)",
                "Bash(ls -la*)",
                "Bash(echo hello *)",
                "Bash",
            ]
        );
    }

    fn config(dir: &Path) -> AgentConfig {
        AgentConfig {
            name: "a".into(),
            kind: "claude".into(),
            settings: Default::default(),
            command: "claude".into(),
            args: vec!["--model".into(), "m".into()],
            working_directory: dir.to_path_buf(),
            timeout: Duration::from_secs(5),
            permissions: crate::config::PermissionsConfig {
                enabled: false,
                timeout: Duration::from_secs(1),
                skip_owner_approval: false,
            },
            owner_rules: rules(&[("Bash", Some("echo .*")), ("Read", None)]),
            guest_rules: rules(&[("Read", None)]),
            env: vec![
                ("X".into(), "1".into()),
                (HOOK_SECRET_ENV.into(), "leak".into()),
            ],
            system_prompt: Some("be nice".into()),
            sandbox: Default::default(),
        }
    }

    #[test]
    fn argv_for_first_turn_and_resume() {
        let dir = std::env::temp_dir();
        let b = ClaudeBackend::new(&config(&dir), dir.clone());
        let first = b.argv(&SessionArg::Create("id1"), Role::Guest, None, None, None);
        assert_eq!(
            first.join(" "),
            "-p --output-format stream-json --verbose --model m --session-id id1 \
             --permission-mode dontAsk --append-system-prompt be nice --tools Read --allowedTools Read"
        );
        let again = b.argv(
            &SessionArg::Resume("id1"),
            Role::Owner,
            None,
            Some("sonnet"),
            None,
        );
        // A turn's model override follows the configured `--model m`, which it overrides.
        assert!(again
            .join(" ")
            .contains("--model m --model sonnet --resume id1 --permission-mode dontAsk"));
        assert!(again.ends_with(&[
            "--tools".into(),
            "Bash,Read".into(),
            "--allowedTools".into(),
            "Bash(echo *)".into(),
            "Read".into()
        ]));
        let hooked = b.argv(
            &SessionArg::Resume("id1"),
            Role::Owner,
            Some(Path::new("/s.json")),
            None,
            None,
        );
        assert!(hooked.ends_with(&["--settings".into(), "/s.json".into()]));
        assert!(!hooked.contains(&"--allowedTools".to_string()));
        assert!(!hooked.contains(&"--tools".to_string()));
        assert!(!hooked.iter().any(|a| a.contains("dangerously")));

        // Nothing listed: no tools at all, not even read-only ones.
        let mut c = config(&dir);
        c.guest_rules = RuleSet::default();
        let b = ClaudeBackend::new(&c, dir.clone());
        let bare = b.argv(&SessionArg::Create("id2"), Role::Guest, None, None, None);
        assert!(bare.ends_with(&["--tools".into(), String::new()]));
        assert!(!bare.contains(&"--allowedTools".to_string()));
    }

    #[test]
    fn a_structured_answer_lets_only_the_structured_output_tool_through() {
        let dir = std::env::temp_dir();
        let b = ClaudeBackend::new(&config(&dir), dir.clone());
        let schema = r#"{"type":"object"}"#;
        let plain = b.argv(
            &SessionArg::Create("id1"),
            Role::Guest,
            None,
            None,
            Some(schema),
        );
        assert!(plain
            .join(" ")
            .contains(r#"--json-schema {"type":"object"}"#));
        assert!(plain.ends_with(&[
            "--tools".into(),
            "Read,StructuredOutput".into(),
            "--allowedTools".into(),
            "Read".into(),
            "StructuredOutput".into()
        ]));
        let hooked = b.argv(
            &SessionArg::Create("id1"),
            Role::Guest,
            Some(Path::new("/s.json")),
            None,
            Some(schema),
        );
        assert!(hooked.ends_with(&[
            "--settings".into(),
            "/s.json".into(),
            "--allowedTools".into(),
            "StructuredOutput".into()
        ]));
        let ticket = GateTicket {
            secret: "s3cret".into(),
            timeout: Duration::from_secs(10),
        };
        let scratch = tempfile::tempdir().unwrap();
        let file = SettingsFile::write(
            scratch.path(),
            "http://127.0.0.1:9/hook",
            &ticket,
            None,
            true,
        )
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&file.path).unwrap()).unwrap();
        let matcher = v["hooks"]["PreToolUse"][0]["matcher"].as_str().unwrap();
        assert_eq!(matcher, "^(?!StructuredOutput$).*");
    }

    #[test]
    fn the_secret_is_never_in_the_cli_environment() {
        let dir = std::env::temp_dir();
        let b = ClaudeBackend::new(&config(&dir), dir.clone());
        let (remove, env) = b.child_env();
        assert!(remove.contains(&"CLAUDECODE".to_string()));
        // Removed even when the daemon's own environment has it, and dropped from `env`.
        assert!(remove.contains(&HOOK_SECRET_ENV.to_string()));
        assert_eq!(env, vec![("X".to_string(), "1".to_string())]);
    }

    #[test]
    fn settings_file_is_private_carries_the_secret_literally_and_is_removed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("scratch");
        let ticket = GateTicket {
            secret: "s3cret".into(),
            timeout: Duration::from_secs(310),
        };
        let file =
            SettingsFile::write(&dir, "http://127.0.0.1:9/hook", &ticket, None, false).unwrap();
        let meta = fs::metadata(&file.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let text = fs::read_to_string(&file.path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let h = &v["hooks"]["PreToolUse"][0];
        assert_eq!(h["matcher"], ".*");
        assert_eq!(h["hooks"][0]["type"], "http");
        assert_eq!(h["hooks"][0]["url"], "http://127.0.0.1:9/hook");
        assert_eq!(h["hooks"][0]["timeout"], 310);
        assert_eq!(h["hooks"][0]["headers"]["X-ACG-Secret"], "s3cret");
        // No environment interpolation at all: the CLI's environment holds no secret.
        assert!(h["hooks"][0].get("allowedEnvVars").is_none(), "{text}");
        let path = file.path.clone();
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn forbidden_args_are_refused() {
        let dir = std::env::temp_dir();
        let mut c = config(&dir);
        c.args = vec!["--dangerously-skip-permissions".into()];
        let b = ClaudeBackend::new(&c, dir.clone());
        assert!(matches!(b.check_args(), Err(AgentError::Setup(_))));
        c.args = vec!["--permission-mode=bypassPermissions".into()];
        let b = ClaudeBackend::new(&c, dir.clone());
        assert!(matches!(b.check_args(), Err(AgentError::Setup(_))));
    }
}
