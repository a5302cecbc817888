//! Configuration: YAML file → raw serde values → a validated [`Config`].
//!
//! Owns: loading, `${VAR}` expansion, path resolution, validation that reports every problem
//! at once (each with its key path, and its line where the YAML parser knows it), and the
//! validated types the rest of the daemon is built from.
//! Must not import: runtime modules (`room`, `dispatch`, `daemon`) nor `connector`: no
//! platform is named here. Each connector type's section lives beside its connector
//! (`connector/<name>/config.rs`); the caller passes the list of types ([`ConnectorTypes`],
//! `connector::registry::PLATFORMS`) and those sections report through [`Validator`].
//! Agents likewise: this module parses only the keys every agent has ([`COMMON_AGENT_KEYS`]);
//! the caller passes the agent types ([`AgentTypes`], `agent::registry::AGENTS`), each saying
//! what else its sections may hold and validating it. No agent is named here.
//! Both lists arrive together as [`Types`] (the program's own are `crate::TYPES`).

mod controls;
mod expand;
mod file_size;
mod schedules;
pub mod schema;

pub use controls::{Budgets, CommandsConfig, Limit, PeriodLimits, RateLimit};
pub use file_size::{MaxFileSize, RawMaxFileSize, DEFAULT_MAX_FILE_SIZE_MB};
pub use schedules::{ScheduleConfig, ScheduleZone};

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::model::{Role, Sender};
use crate::policy::{Rule, RuleSet};

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path such as `connectors[0].listen` (empty for the file as a whole).
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.line) {
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
            (false, Some(l)) => write!(f, "{} (line {l}): {}", self.path, self.message),
            (false, None) => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} has {} problem{}:",
            self.file.display(),
            self.issues.len(),
            if self.issues.len() == 1 { "" } else { "s" }
        )?;
        for issue in &self.issues {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while validating; sections report into it and carry on.
pub struct Validator {
    issues: Vec<ConfigIssue>,
    warnings: Vec<ConfigIssue>,
    base_dir: PathBuf,
    source: String,
}

impl Validator {
    fn new(base_dir: PathBuf, source: String) -> Self {
        Validator {
            issues: Vec::new(),
            warnings: Vec::new(),
            base_dir,
            source,
        }
    }

    /// Records a problem at a key path.
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = locate_line(&self.source, &path);
        self.issues.push(ConfigIssue {
            path,
            line,
            message: message.into(),
        });
    }

    /// Records something valid that the admin should know (printed by `config validate`,
    /// `doctor` and at start).
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        let line = locate_line(&self.source, &path);
        self.warnings.push(ConfigIssue {
            path,
            line,
            message: message.into(),
        });
    }

    /// A server's base URL at `path`: present, `http://` or `https://`, returned without a
    /// trailing `/`. `example` completes "missing: the … URL, like …".
    pub fn base_url(&mut self, path: &str, value: Option<&str>, example: &str) -> Option<String> {
        match value.map(str::trim) {
            None | Some("") => {
                self.error(path, format!("missing: {example}"));
                None
            }
            Some(s) if !(s.starts_with("http://") || s.starts_with("https://")) => {
                self.error(path, format!("'{s}' must start with http:// or https://"));
                None
            }
            Some(s) => Some(s.trim_end_matches('/').to_string()),
        }
    }

    /// Records a key that the section at `path` does not know, the way serde words it.
    pub fn unknown_key(&mut self, path: &str, key: &str, expected: &[&str]) {
        let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
        let line = locate_line(&self.source, &format!("{path}.{key}"))
            .or_else(|| locate_line(&self.source, path));
        self.issues.push(ConfigIssue {
            path: path.to_string(),
            line,
            message: format!(
                "unknown field `{key}`, expected one of {}",
                expected.join(", ")
            ),
        });
    }

    /// Deserializes one section, recording (not returning) a failure.
    pub fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_yaml::from_value::<T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let message = clean_serde_message(&e.to_string());
                // Point at the offending key itself when serde names it.
                let line = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split('`').next())
                    .and_then(|key| locate_line(&self.source, &format!("{path}.{key}")))
                    .or_else(|| locate_line(&self.source, path));
                self.issues.push(ConfigIssue {
                    path: path.to_string(),
                    line,
                    message,
                });
                None
            }
        }
    }

    /// Resolves a path from the file against the config file's folder; `~/` is the home dir.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        if let Some(rest) = p.strip_prefix("~/") {
            if let Some(home) = std::env::var_os("HOME") {
                return PathBuf::from(home).join(rest);
            }
        }
        let path = Path::new(p);
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        };
        // Lexical clean-up only (`./`, `a/../b`): symlinks are left to the OS.
        let mut clean = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    clean.pop();
                }
                other => clean.push(other),
            }
        }
        clean
    }
}

/// serde_yaml reports "unknown field `x`, expected one of …"; keep it, drop position noise
/// that refers to the re-serialized value rather than the file.
fn clean_serde_message(msg: &str) -> String {
    msg.split(" at line ").next().unwrap_or(msg).to_string()
}

/// Best effort: the line of the last key of `path` in the YAML source, searching in order for
/// each key of the path. Good enough to point a human at the right spot.
fn locate_line(source: &str, path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let mut from_line = 0usize;
    let lines: Vec<&str> = source.lines().collect();
    let mut found = None;
    for seg in path.split('.') {
        let (key, index) = match seg.find('[') {
            Some(i) => (
                &seg[..i],
                seg[i + 1..].trim_end_matches(']').parse::<usize>().ok(),
            ),
            None => (seg, None),
        };
        let pos = lines[from_line..].iter().position(|l| {
            let t = l
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('{');
            t.starts_with(&format!("{key}:"))
                || t.contains(&format!(" {key}:"))
                || t.contains(&format!("{{{key}:"))
        })?;
        from_line += pos;
        found = Some(from_line + 1);
        if let Some(n) = index {
            // Walk to the n-th block-list item under the key (flow lists stay on the key line).
            let indent = |l: &str| l.len() - l.trim_start().len();
            let key_indent = indent(lines[from_line]);
            let mut seen = 0;
            let mut j = from_line + 1;
            while j < lines.len() {
                let l = lines[j];
                if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
                    if indent(l) < key_indent
                        || (indent(l) == key_indent && !l.trim_start().starts_with("- "))
                    {
                        break;
                    }
                    if l.trim_start().starts_with("- ") {
                        if seen == n {
                            from_line = j;
                            found = Some(j + 1);
                            break;
                        }
                        seen += 1;
                    }
                }
                j += 1;
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub connectors: Vec<ConnectorConfig>,
    pub agents: BTreeMap<String, AgentConfig>,
    pub default_agent: String,
    pub watchers: Vec<WatcherConfig>,
    /// Prompts posted into watchers' rooms on a cron schedule.
    pub schedules: Vec<ScheduleConfig>,
    /// Messages a room may hold while a turn runs; beyond it senders get a busy notice.
    pub max_queue_depth: usize,
    /// How long SIGTERM waits for running turns before stopping them.
    pub shutdown_grace: Duration,
    /// Agent processes running at once across all rooms; further turns wait their turn.
    pub max_concurrent_turns: usize,
    /// A room worker with nothing to do for this long is released (memory stays bounded
    /// with `room: "*"`); the session id stays in the state file.
    pub room_idle_eviction: Duration,
    /// The admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`), when configured.
    pub admin: Option<AdminConfig>,
    /// How the daemon's log file rotates.
    pub log: LogConfig,
    /// Messages arriving within this long of the first one (while no turn runs) are answered
    /// in one turn; zero starts a turn at once.
    pub merge_window: Duration,
    /// How room commands (`!stop`, `!status`, …) are recognised.
    pub commands: CommandsConfig,
    /// Spending limits per user and per room.
    pub budgets: Budgets,
    /// Messages per user and window, applied by the dispatcher on every connector.
    pub rate_limit: Option<RateLimit>,
    /// What is valid but worth knowing (an agent whose calls are not asked one by one).
    pub warnings: Vec<ConfigIssue>,
}

/// `log:` — `gateway.log` is rotated past `max_size_mb`, keeping `keep` old files.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub max_bytes: u64,
    pub keep: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: 64 << 20,
            keep: 5,
        }
    }
}

/// `log:` — rotation of `gateway.log`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawLog {
    /// Size in MiB at which the log is rotated (default 10).
    max_size_mb: Option<u64>,
    /// Rotated files kept (default 5).
    keep: Option<usize>,
}

fn validate_log(section: Value, v: &mut Validator) -> LogConfig {
    let default = LogConfig::default();
    let Some(raw) = v.parse::<RawLog>("log", section) else {
        return default;
    };
    let max_bytes = match raw.max_size_mb {
        Some(0) => {
            v.error("log.max_size_mb", "must be at least 1");
            default.max_bytes
        }
        Some(mb) => mb << 20,
        None => default.max_bytes,
    };
    LogConfig {
        max_bytes,
        keep: raw.keep.unwrap_or(default.keep),
    }
}

/// `admin:` — where the admin HTTP endpoint listens.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: std::net::SocketAddr,
}

/// `admin:` — the admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`); off when absent.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Address with a port, e.g. `127.0.0.1:9464`.
    listen: String,
}

fn validate_admin(section: Value, v: &mut Validator) -> Option<AdminConfig> {
    let raw: RawAdmin = v.parse("admin", section)?;
    let listen: std::net::SocketAddr = match raw.listen.parse() {
        Ok(a) => a,
        Err(_) => {
            v.error(
                "admin.listen",
                format!(
                    "'{}' is not an address with a port (e.g. 127.0.0.1:9464)",
                    raw.listen
                ),
            );
            return None;
        }
    };
    if !listen.ip().is_loopback() {
        v.warn(
            "admin.listen",
            format!("{listen} is reachable from other hosts: the endpoint takes no credentials (its metrics name agents and connectors)"),
        );
    }
    Some(AdminConfig { listen })
}

impl Config {
    pub fn connector(&self, name: &str) -> Option<&ConnectorConfig> {
        self.connectors.iter().find(|c| c.name == name)
    }
}

/// Who is an owner or a guest of a connector. An entry `id:<x>` matches the platform's user
/// id; any other entry matches the username. The two are never compared across: on
/// some platforms anyone can choose a username that looks like someone else's user id.
#[derive(Clone, Debug, Default)]
pub struct UserRoles {
    pub owners: HashSet<String>,
    pub guests: HashSet<String>,
    /// Role for senders on neither list; `None` ignores them.
    pub unknown: Option<Role>,
}

impl UserRoles {
    pub fn role_of(&self, sender: &Sender) -> Option<Role> {
        let is = |set: &HashSet<String>| {
            (!sender.username.starts_with("id:") && set.contains(&sender.username))
                || set.contains(&format!("id:{}", sender.id))
        };
        if is(&self.owners) {
            Some(Role::Owner)
        } else if is(&self.guests) {
            Some(Role::Guest)
        } else {
            self.unknown
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnectorConfig {
    pub name: String,
    pub users: UserRoles,
    /// Channels and groups need an @mention (DMs never do).
    pub require_mention: bool,
    pub kind: ConnectorKind,
}

#[derive(Clone, Debug)]
pub enum ConnectorKind {
    /// A section from the file, validated by its platform (see [`ConnectorTypes`]).
    Platform(PlatformSettings),
    /// A connector supplied in-process by the program running the gateway (benchmarks,
    /// embedding). Never produced from a file.
    Embedded,
}

impl ConnectorKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ConnectorKind::Platform(s) => s.type_name,
            ConnectorKind::Embedded => "embedded",
        }
    }

    /// The platform's own validated settings, when they are of type `T`.
    pub fn settings<T: Any>(&self) -> Option<&T> {
        match self {
            ConnectorKind::Platform(s) => s.get(),
            ConnectorKind::Embedded => None,
        }
    }
}

/// One platform's validated section, carried opaquely: only the platform that made it reads
/// it (by downcasting to its own config type), so `config` needs to know no platform.
#[derive(Clone, Debug)]
pub struct PlatformSettings {
    type_name: &'static str,
    value: Arc<dyn PlatformConfig>,
}

impl PlatformSettings {
    pub fn new<T: PlatformConfig>(type_name: &'static str, value: T) -> Self {
        PlatformSettings {
            type_name,
            value: Arc::new(value),
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    pub fn get<T: Any>(&self) -> Option<&T> {
        // `*`: the `Arc` itself is a `PlatformConfig` too (blanket impl); ask what it holds.
        (*self.value).as_any().downcast_ref()
    }
}

/// A platform's validated config type. Implemented for every fitting type.
pub trait PlatformConfig: Any + fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> PlatformConfig for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Validates one connector section (the whole list item, `name` and `type` included).
pub type SectionParser =
    fn(path: &str, section: Value, v: &mut Validator) -> Option<ConnectorConfig>;

/// The connector types a program knows. `config` is handed this list instead of importing
/// it, so that platforms may build on `config` without a cycle.
pub trait ConnectorTypes {
    /// Every `type:` value, in the order error messages list them.
    fn type_names(&self) -> Vec<&'static str>;
    /// The parser of one `type:`, if it is known.
    fn parser(&self, type_name: &str) -> Option<SectionParser>;
    /// The JSON Schema of one `type:`'s sections (`config schema`), if it is known.
    fn schema(&self, type_name: &str) -> Option<schema::SectionSchema>;
}

/// Validates the keys of an agent section that only its type knows (a mapping holding just
/// those keys), reporting problems under `path`. `None` when a problem was reported.
pub type AgentSectionParser =
    fn(path: &str, own: Value, v: &mut Validator) -> Option<AgentSettings>;

/// What configuration needs to know of one agent type.
#[derive(Clone, Copy)]
pub struct AgentSection {
    /// The `type` of its sections.
    pub name: &'static str,
    /// The program run when a section names no `command`.
    pub default_command: &'static str,
    /// Keys its sections may hold besides [`COMMON_AGENT_KEYS`].
    pub keys: &'static [&'static str],
    pub parse: AgentSectionParser,
    /// The JSON Schema of those keys (`config schema`).
    pub schema: schema::SectionSchema,
    /// Whether the gateway can decide its tool calls one by one.
    pub gating: Gating,
}

/// Whether an agent type's tool calls can be decided one by one by the gateway (the allow-
/// lists, then an owner's `approve`/`deny`), which `permissions.enabled` turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Either way: with `permissions` every call is asked, without them the allow-lists are
    /// handed to the CLI (Claude Code's `--allowedTools`).
    Optional,
    /// Always (it asks over its own protocol, ACP's `session/request_permission`): a section
    /// must enable `permissions`.
    Required,
    /// Never: the CLI's headless mode has no approval hook. A section may not enable
    /// `permissions`, and validation warns that calls are not asked one by one. `advice`
    /// says in plain words what the gateway enforces instead and how to get approvals.
    Unavailable { advice: &'static str },
}

/// The agent types a program knows, handed to `config` like [`ConnectorTypes`] so that agents
/// may build on `config` without a cycle.
pub trait AgentTypes {
    /// Every `type`, in the order error messages list them.
    fn type_names(&self) -> Vec<&'static str>;
    fn section(&self, type_name: &str) -> Option<AgentSection>;
}

/// The connector and agent types a configuration may name.
#[derive(Clone, Copy)]
pub struct Types<'a> {
    pub connectors: &'a (dyn ConnectorTypes + Sync),
    pub agents: &'a (dyn AgentTypes + Sync),
}

/// What an agent type's own section parser made of the keys only that type knows (see
/// [`AgentTypes`]). Opaque here: only that agent's `build` reads it back.
#[derive(Clone, Default)]
pub struct AgentSettings(Option<Arc<dyn Any + Send + Sync>>);

impl AgentSettings {
    pub fn new<T: Any + Send + Sync>(settings: T) -> AgentSettings {
        AgentSettings(Some(Arc::new(settings)))
    }

    /// The settings as the agent type stored them; `None` if it stored none or another type.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref().and_then(|s| s.downcast_ref())
    }
}

impl fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AgentSettings(..)"
        } else {
            "AgentSettings(none)"
        })
    }
}

#[derive(Clone, Debug)]
pub struct PermissionsConfig {
    /// Tool calls go through the gateway's hook and approval broker.
    pub enabled: bool,
    /// How long an approval prompt waits for an owner.
    pub timeout: Duration,
    /// Owners' calls are allowed without a prompt (guests still follow their list).
    pub skip_owner_approval: bool,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub name: String,
    /// The `type` key: the name of one of the [`AgentTypes`] the file was loaded with.
    pub kind: String,
    /// The keys only this agent type knows, as its section parser validated them.
    pub settings: AgentSettings,
    pub command: String,
    /// Extra arguments for every run (e.g. `--model`).
    pub args: Vec<String>,
    pub working_directory: PathBuf,
    pub timeout: Duration,
    pub permissions: PermissionsConfig,
    pub owner_rules: RuleSet,
    pub guest_rules: RuleSet,
    /// Extra environment for the agent process (after `${VAR}` expansion).
    pub env: Vec<(String, String)>,
    /// Appended to the agent's system prompt (identity, house rules).
    pub system_prompt: Option<String>,
    /// What the operating system enforces on the agent's processes.
    pub sandbox: SandboxConfig,
}

/// How hard the gateway insists on OS confinement (Landlock) of an agent's processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConfinementMode {
    /// Refuse to start the agent when the kernel cannot confine it.
    Required,
    /// Confine when the kernel can; otherwise run unconfined and say so loudly.
    #[default]
    BestEffort,
    /// Never confine (the tool policy is then the only guard).
    Off,
}

impl ConfinementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfinementMode::Required => "required",
            ConfinementMode::BestEffort => "best_effort",
            ConfinementMode::Off => "off",
        }
    }
}

/// The per-agent OS-level settings: `confinement`, `run_as`, `writable_paths`.
#[derive(Clone, Debug, Default)]
pub struct SandboxConfig {
    pub confinement: ConfinementMode,
    /// Unix user the agent runs as (the daemon must run as root to switch).
    pub run_as: Option<String>,
    /// Extra trees the agent may write besides its working directory, its own state and its
    /// private tmp (a cache, a second checkout).
    pub writable_paths: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct WatcherConfig {
    pub name: String,
    pub connector: String,
    /// Room spec: `*`, `#channel`, group name, `@user`, or a room id.
    pub room: String,
    pub agent: String,
    pub session_scope: SessionScope,
}

/// What one agent session (and one queue) covers in a watcher's rooms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionScope {
    /// The whole room shares one session.
    #[default]
    Room,
    /// Each thread has its own session and queue; a top-level message in a group room
    /// starts a thread of its own. On platforms without threads, the room.
    Thread,
}

// ---------------------------------------------------------------------------------------------
// Raw sections (mirror the file)
// ---------------------------------------------------------------------------------------------

const TOP_LEVEL_KEYS: &[&str] = &[
    "connectors",
    "default_agent",
    "agents",
    "watchers",
    "max_queue_depth",
    "shutdown_grace",
    "max_concurrent_turns",
    "room_idle_eviction",
    "tool_presets",
    "admin",
    "log",
    "schedules",
    "commands",
    "budgets",
    "merge_window_ms",
    "rate_limit",
];

/// The longest `merge_window_ms`.
const MAX_MERGE_WINDOW_MS: u64 = 60_000;

/// A Claude Code process holds a few hundred MB; sixteen at once suits a shared box.
pub const DEFAULT_MAX_CONCURRENT_TURNS: usize = 16;

/// Owners and guests as written in a connector section.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAllowedUsers {
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub guests: Vec<String>,
    /// `ignore` (default) or `guest`: what to do with senders on neither list.
    #[serde(default)]
    pub unknown: Option<String>,
}

impl RawAllowedUsers {
    pub fn validate(&self, path: &str, v: &mut Validator) -> UserRoles {
        let unknown = match self.unknown.as_deref() {
            None | Some("ignore") => None,
            Some("guest") => Some(Role::Guest),
            Some(other) => {
                v.error(
                    format!("{path}.unknown"),
                    format!("'{other}' is not valid: use 'ignore' or 'guest' (unknown senders never become owners)"),
                );
                None
            }
        };
        for o in &self.owners {
            if self.guests.contains(o) {
                v.error(
                    format!("{path}.guests"),
                    format!("'{o}' is listed as both owner and guest"),
                );
            }
        }
        UserRoles {
            owners: self.owners.iter().cloned().collect(),
            guests: self.guests.iter().cloned().collect(),
            unknown,
        }
    }
}

/// `permissions:` — every tool call decided by the gateway (allow-lists, then an owner).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "default_permission_timeout")]
    timeout: u64,
    #[serde(default)]
    skip_owner_approval: bool,
}

fn default_permission_timeout() -> u64 {
    300
}

/// A tool rule as written: a preset name or `{tool, params}`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum RawRule {
    Preset(String),
    Rule {
        tool: String,
        #[serde(default)]
        params: Option<String>,
    },
}

/// The keys every agent section may hold, in the order they are listed in messages; any
/// other key belongs to the agent type (its registry entry's `keys`) or is an error.
pub const COMMON_AGENT_KEYS: &[&str] = &[
    "type",
    "command",
    "args",
    "working_directory",
    "timeout",
    "permissions",
    "owner_allowed_tools",
    "guest_allowed_tools",
    "env",
    "system_prompt",
    "confinement",
    "run_as",
    "writable_paths",
];

/// The common keys of an agent section ([`COMMON_AGENT_KEYS`]).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    /// The agent type (`claude`, `acp`, `codex`, `gemini`, `opencode`).
    #[serde(rename = "type")]
    kind: String,
    /// The program to run (default: the type's own, found on PATH).
    #[serde(default)]
    command: Option<String>,
    /// Extra arguments; the ones the gateway manages are refused.
    #[serde(default)]
    args: Vec<String>,
    /// Where the agent works (relative to this file).
    working_directory: String,
    /// Seconds one turn may take (default 600).
    #[serde(default = "default_agent_timeout")]
    timeout: u64,
    #[serde(default)]
    permissions: Option<RawPermissions>,
    /// Tools owners may use: preset names or `{tool, params}` rules.
    #[serde(default)]
    owner_allowed_tools: Vec<RawRule>,
    /// Tools guests may use: preset names or `{tool, params}` rules.
    #[serde(default)]
    guest_allowed_tools: Vec<RawRule>,
    /// Environment of the agent's process.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Appended to the agent's system prompt.
    #[serde(default)]
    system_prompt: Option<String>,
    /// OS confinement (Landlock): `best_effort` (default), `required` or `off`.
    #[serde(default)]
    confinement: Option<String>,
    /// Unix user the agent runs as (the daemon must run as root).
    #[serde(default)]
    run_as: Option<String>,
    /// Trees the agent may write besides its working directory.
    #[serde(default)]
    writable_paths: Vec<String>,
}

fn default_agent_timeout() -> u64 {
    600
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawWatcher {
    name: String,
    /// A connector's `name`.
    connector: String,
    /// `*`, `#channel`, a group, `@user` or a room id, as the platform names rooms.
    room: String,
    /// A key of `agents` (default: `default_agent`).
    #[serde(default)]
    agent: Option<String>,
    /// `room` (default): one session per room; `thread`: one per thread.
    #[serde(default)]
    session_scope: SessionScope,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Reads and validates a configuration file; `types` are the connector and agent types it may
/// use (`crate::TYPES`).
pub fn load(path: &Path, types: Types<'_>) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        issues: vec![ConfigIssue {
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(path, &source, types)
}

/// Validates configuration text as if it were the file at `path`.
pub fn parse(path: &Path, source: &str, types: Types<'_>) -> Result<Config, ConfigError> {
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let base_dir = std::fs::canonicalize(&base_dir).unwrap_or(base_dir);
    let mut v = Validator::new(base_dir, source.to_string());
    let config = validate_source(path, source, types, &mut v);
    match config {
        Some(mut c) if v.issues.is_empty() => {
            c.warnings = v.warnings;
            Ok(c)
        }
        _ => Err(ConfigError {
            file: path.to_path_buf(),
            issues: v.issues,
        }),
    }
}

fn validate_source(
    path: &Path,
    source: &str,
    types: Types<'_>,
    v: &mut Validator,
) -> Option<Config> {
    let mut root: Value = match serde_yaml::from_str(source) {
        Ok(Value::Null) => {
            v.error("", "the file is empty");
            return None;
        }
        Ok(value) => value,
        Err(e) => {
            v.issues.push(ConfigIssue {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                message: format!("not valid YAML: {}", clean_serde_message(&e.to_string())),
            });
            return None;
        }
    };
    for (key_path, var) in expand::expand_env(&mut root) {
        v.error(key_path, format!("environment variable {var} is not set"));
    }
    let Value::Mapping(map) = root else {
        v.error("", "the top level must be a mapping of keys");
        return None;
    };
    let mut sections: BTreeMap<String, Value> = BTreeMap::new();
    for (k, val) in map {
        let key = k.as_str().unwrap_or_default().to_string();
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            v.error(
                key.clone(),
                format!(
                    "unknown key (expected one of: {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            );
            continue;
        }
        sections.insert(key, val);
    }

    let presets = validate_presets(sections.remove("tool_presets"), v);
    let declared_connectors = declared_names(sections.get("connectors"));
    let connectors = validate_connectors(sections.remove("connectors"), types.connectors, v);
    let declared_agents: Vec<String> = match sections.get("agents") {
        Some(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let agents = validate_agents(sections.remove("agents"), &presets, types.agents, v);
    let default_agent = match sections.remove("default_agent") {
        Some(Value::String(s)) => {
            if !declared_agents.contains(&s) {
                v.error(
                    "default_agent",
                    format!("no agent named '{s}' under agents"),
                );
            }
            s
        }
        Some(_) => {
            v.error("default_agent", "must be an agent name");
            String::new()
        }
        None if declared_agents.len() == 1 => declared_agents[0].clone(),
        None => String::new(),
    };
    let watchers = validate_watchers(
        sections.remove("watchers"),
        &declared_connectors,
        &declared_agents,
        &default_agent,
        v,
    );
    let schedules = sections
        .remove("schedules")
        .map(|section| schedules::validate(section, &watchers, &connectors, v))
        .unwrap_or_default();
    let max_queue_depth = match sections.remove("max_queue_depth") {
        None => 100,
        Some(val) => match v.parse::<usize>("max_queue_depth", val) {
            Some(0) => {
                v.error(
                    "max_queue_depth",
                    "must be at least 1 (queues are always bounded)",
                );
                100
            }
            Some(n) => n,
            None => 100,
        },
    };
    let shutdown_grace = match sections.remove("shutdown_grace") {
        None => Duration::from_secs(30),
        Some(val) => Duration::from_secs(v.parse::<u64>("shutdown_grace", val).unwrap_or(30)),
    };
    let max_concurrent_turns = match sections.remove("max_concurrent_turns") {
        None => DEFAULT_MAX_CONCURRENT_TURNS,
        Some(val) => match v.parse::<usize>("max_concurrent_turns", val) {
            Some(0) => {
                v.error("max_concurrent_turns", "must be at least 1");
                DEFAULT_MAX_CONCURRENT_TURNS
            }
            Some(n) => n,
            None => DEFAULT_MAX_CONCURRENT_TURNS,
        },
    };
    let room_idle_eviction = match sections.remove("room_idle_eviction") {
        None => Duration::from_secs(600),
        Some(val) => match v.parse::<u64>("room_idle_eviction", val) {
            Some(0) => {
                v.error("room_idle_eviction", "must be at least 1 second");
                Duration::from_secs(600)
            }
            Some(n) => Duration::from_secs(n),
            None => Duration::from_secs(600),
        },
    };
    let admin = sections
        .remove("admin")
        .and_then(|section| validate_admin(section, v));
    let log = sections
        .remove("log")
        .map(|section| validate_log(section, v))
        .unwrap_or_default();
    let merge_window = match sections.remove("merge_window_ms") {
        None => Duration::ZERO,
        Some(val) => match v.parse::<u64>("merge_window_ms", val) {
            Some(ms) if ms > MAX_MERGE_WINDOW_MS => {
                v.error(
                    "merge_window_ms",
                    format!("at most {MAX_MERGE_WINDOW_MS} (a longer wait only delays answers)"),
                );
                Duration::ZERO
            }
            Some(ms) => Duration::from_millis(ms),
            None => Duration::ZERO,
        },
    };
    let rate_limit = sections
        .remove("rate_limit")
        .and_then(|section| controls::validate_rate_limit(section, v));
    let commands = sections
        .remove("commands")
        .map(|section| controls::validate_commands(section, v))
        .unwrap_or_default();
    let budgets = sections
        .remove("budgets")
        .map(|section| controls::validate_budgets(section, v))
        .unwrap_or_default();
    Some(Config {
        admin,
        log,
        commands,
        budgets,
        merge_window,
        rate_limit,
        warnings: Vec::new(),
        max_concurrent_turns,
        room_idle_eviction,
        path: path.to_path_buf(),
        connectors,
        agents,
        default_agent,
        watchers,
        schedules,
        max_queue_depth,
        shutdown_grace,
    })
}

fn validate_presets(section: Option<Value>, v: &mut Validator) -> BTreeMap<String, Vec<Rule>> {
    let mut presets = BTreeMap::new();
    let Some(section) = section else {
        return presets;
    };
    let Some(raw) = v.parse::<BTreeMap<String, Vec<RawRule>>>("tool_presets", section) else {
        return presets;
    };
    for (name, rules) in raw {
        let path = format!("tool_presets.{name}");
        let compiled = compile_rules(&path, &rules, &BTreeMap::new(), v);
        presets.insert(name, compiled);
    }
    presets
}

fn compile_rules(
    path: &str,
    rules: &[RawRule],
    presets: &BTreeMap<String, Vec<Rule>>,
    v: &mut Validator,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let item = format!("{path}[{i}]");
        match rule {
            RawRule::Preset(name) => match presets.get(name) {
                Some(p) => out.extend(p.iter().cloned()),
                None => v.error(item, format!("no tool preset named '{name}'")),
            },
            RawRule::Rule { tool, params } => match Rule::new(tool, params.as_deref()) {
                Ok(r) => out.push(r),
                Err(e) => v.error(item, e),
            },
        }
    }
    out
}

fn validate_connectors(
    section: Option<Value>,
    types: &dyn ConnectorTypes,
    v: &mut Validator,
) -> Vec<ConnectorConfig> {
    let mut out: Vec<ConnectorConfig> = Vec::new();
    let items = match section {
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            v.error("connectors", "must be a list");
            return out;
        }
        None => {
            v.error("connectors", "at least one connector is required");
            return out;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("connectors[{i}]");
        let kind = item.get("type").and_then(Value::as_str).map(str::to_string);
        let expected = || or_list(&types.type_names());
        let parsed = match kind.as_deref() {
            Some(name) => match types.parser(name) {
                Some(parse) => parse(&path, item, v),
                None => {
                    v.error(
                        format!("{path}.type"),
                        format!("unknown connector type '{name}' (expected {})", expected()),
                    );
                    None
                }
            },
            None => {
                v.error(format!("{path}.type"), format!("missing ({})", expected()));
                None
            }
        };
        if let Some(c) = parsed {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                v.error(format!("{path}.name"), "must be non-empty and use only letters, digits, '-' and '_' (it names a state file)");
            } else if out.iter().any(|o| o.name == c.name) {
                v.error(
                    format!("{path}.name"),
                    format!("duplicate connector name '{}'", c.name),
                );
            }
            out.push(c);
        }
    }
    out
}

/// `types`: the agent types a section may name.
fn validate_agents(
    section: Option<Value>,
    presets: &BTreeMap<String, Vec<Rule>>,
    types: &dyn AgentTypes,
    v: &mut Validator,
) -> BTreeMap<String, AgentConfig> {
    let mut out = BTreeMap::new();
    let items = match section {
        Some(Value::Mapping(m)) => m,
        Some(_) => {
            v.error("agents", "must be a mapping of agent name to agent");
            return out;
        }
        None => {
            v.error("agents", "at least one agent is required");
            return out;
        }
    };
    for (k, item) in items {
        let name = k.as_str().unwrap_or_default().to_string();
        let path = format!("agents.{name}");
        // The common keys go to `RawAgent`; the rest belong to the agent type.
        let (common, own) = match item {
            Value::Mapping(map) => {
                let (common, own): (serde_yaml::Mapping, serde_yaml::Mapping) = map
                    .into_iter()
                    .partition(|(k, _)| k.as_str().is_some_and(|k| COMMON_AGENT_KEYS.contains(&k)));
                (Value::Mapping(common), own)
            }
            other => (other, serde_yaml::Mapping::new()),
        };
        let Some(raw) = v.parse::<RawAgent>(&path, common) else {
            continue;
        };
        let Some(agent_type) = types.section(&raw.kind) else {
            let names = types.type_names();
            v.error(
                format!("{path}.type"),
                format!(
                    "unknown agent type '{}' (supported: {})",
                    raw.kind,
                    names.join(", ")
                ),
            );
            continue;
        };
        let mut foreign = false;
        for key in own.keys() {
            let key = key.as_str().unwrap_or_default();
            if !agent_type.keys.contains(&key) {
                let expected: Vec<&str> = COMMON_AGENT_KEYS
                    .iter()
                    .chain(agent_type.keys)
                    .copied()
                    .collect();
                v.unknown_key(&path, key, &expected);
                foreign = true;
            }
        }
        // The common keys are still checked when the type's own ones are wrong: every
        // problem of a section is reported at once.
        let settings = if foreign {
            None
        } else {
            (agent_type.parse)(&path, Value::Mapping(own), v)
        };
        let working_directory = v.resolve_path(&raw.working_directory);
        if !working_directory.is_dir() {
            v.error(
                format!("{path}.working_directory"),
                format!(
                    "{} does not exist or is not a directory",
                    working_directory.display()
                ),
            );
        }
        let permissions = match raw.permissions {
            Some(p) => PermissionsConfig {
                enabled: p.enabled,
                timeout: Duration::from_secs(p.timeout),
                skip_owner_approval: p.skip_owner_approval,
            },
            None => PermissionsConfig {
                enabled: false,
                timeout: Duration::from_secs(default_permission_timeout()),
                skip_owner_approval: false,
            },
        };
        match agent_type.gating {
            Gating::Required if !permissions.enabled => v.error(
                format!("{path}.permissions"),
                format!(
                    "type '{}' asks the gateway about every tool call: set `permissions: {{enabled: true}}`",
                    raw.kind
                ),
            ),
            Gating::Unavailable { advice } if permissions.enabled => v.error(
                format!("{path}.permissions"),
                format!(
                    "type '{}' cannot ask the gateway about each tool call, so `permissions` cannot be enabled: {advice}",
                    raw.kind
                ),
            ),
            Gating::Unavailable { advice } => v.warn(
                path.clone(),
                format!(
                    "tool calls of a `type: {}` agent are not checked one by one and never wait for an owner's approval: {advice}",
                    raw.kind
                ),
            ),
            _ => {}
        }
        if raw.timeout == 0 {
            v.error(format!("{path}.timeout"), "must be at least 1 second");
        }
        if permissions.enabled && raw.timeout <= permissions.timeout.as_secs() {
            v.error(
                format!("{path}.timeout"),
                format!(
                    "must be longer than permissions.timeout ({} s), or a turn waiting for approval is cut off",
                    permissions.timeout.as_secs()
                ),
            );
        }
        let owner_rules = compile_rules(
            &format!("{path}.owner_allowed_tools"),
            &raw.owner_allowed_tools,
            presets,
            v,
        );
        let guest_rules = compile_rules(
            &format!("{path}.guest_allowed_tools"),
            &raw.guest_allowed_tools,
            presets,
            v,
        );
        let command = raw
            .command
            .unwrap_or_else(|| agent_type.default_command.to_string());
        if command.trim().is_empty() {
            v.error(format!("{path}.command"), "must not be empty");
        }
        let sandbox = validate_sandbox(&path, &raw.confinement, raw.run_as, &raw.writable_paths, v);
        let Some(settings) = settings else {
            continue;
        };
        out.insert(
            name.clone(),
            AgentConfig {
                name,
                kind: raw.kind,
                settings,
                command,
                args: raw.args,
                working_directory,
                timeout: Duration::from_secs(raw.timeout),
                permissions,
                owner_rules: RuleSet::new(owner_rules),
                guest_rules: RuleSet::new(guest_rules),
                env: raw.env.into_iter().collect(),
                system_prompt: raw.system_prompt,
                sandbox,
            },
        );
    }
    out
}

fn validate_sandbox(
    path: &str,
    confinement: &Option<String>,
    run_as: Option<String>,
    writable_paths: &[String],
    v: &mut Validator,
) -> SandboxConfig {
    let confinement = match confinement.as_deref() {
        None | Some("best_effort") => ConfinementMode::BestEffort,
        Some("required") => ConfinementMode::Required,
        Some("off") => ConfinementMode::Off,
        Some(other) => {
            v.error(
                format!("{path}.confinement"),
                format!("'{other}' is not valid: use 'required', 'best_effort' or 'off'"),
            );
            ConfinementMode::Required
        }
    };
    let run_as = run_as.filter(|u| {
        // A user name, never a path or a uid: the lookup must name exactly one account.
        let ok = !u.is_empty()
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            v.error(
                format!("{path}.run_as"),
                format!("'{u}' is not a user name"),
            );
        }
        ok
    });
    let writable_paths = writable_paths
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let resolved = v.resolve_path(p);
            if resolved == Path::new("/") {
                v.error(
                    format!("{path}.writable_paths[{i}]"),
                    "'/' would make the whole system writable",
                );
                return None;
            }
            Some(resolved)
        })
        .collect();
    SandboxConfig {
        confinement,
        run_as,
        writable_paths,
    }
}

/// `a, b or c`, as error messages list choices.
fn or_list(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The `name`s of a list section, including entries that fail to validate, so references to
/// them are not reported twice.
fn declared_names(section: Option<&Value>) -> Vec<String> {
    match section {
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| i.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn validate_watchers(
    section: Option<Value>,
    connectors: &[String],
    agents: &[String],
    default_agent: &str,
    v: &mut Validator,
) -> Vec<WatcherConfig> {
    let mut out: Vec<WatcherConfig> = Vec::new();
    let items = match section {
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            v.error("watchers", "must be a list");
            return out;
        }
        None => {
            v.error("watchers", "at least one watcher is required");
            return out;
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("watchers[{i}]");
        let Some(raw) = v.parse::<RawWatcher>(&path, item) else {
            continue;
        };
        if out.iter().any(|w| w.name == raw.name) {
            v.error(
                format!("{path}.name"),
                format!("duplicate watcher name '{}'", raw.name),
            );
        }
        if !connectors.contains(&raw.connector) {
            v.error(
                format!("{path}.connector"),
                format!("no connector named '{}'", raw.connector),
            );
        }
        if raw.room.trim().is_empty() {
            v.error(
                format!("{path}.room"),
                "must not be empty (use \"*\" for every room)",
            );
        }
        if out
            .iter()
            .any(|w| w.connector == raw.connector && w.room == raw.room)
        {
            v.error(
                format!("{path}.room"),
                format!(
                    "room '{}' of connector '{}' is already watched",
                    raw.room, raw.connector
                ),
            );
        }
        let agent = raw.agent.unwrap_or_else(|| default_agent.to_string());
        if agent.is_empty() {
            v.error(
                format!("{path}.agent"),
                "missing, and there is no default_agent",
            );
        } else if !agents.contains(&agent) {
            v.error(format!("{path}.agent"), format!("no agent named '{agent}'"));
        }
        out.push(WatcherConfig {
            name: raw.name,
            connector: raw.connector,
            room: raw.room,
            agent,
            session_scope: raw.session_scope,
        });
    }
    out
}

/// Shared by connector sections: parses a section and reports it under `path`.
pub fn parse_section<T: DeserializeOwned>(
    path: &str,
    value: Value,
    v: &mut Validator,
) -> Option<T> {
    v.parse(path, value)
}

#[cfg(test)]
mod tests;
