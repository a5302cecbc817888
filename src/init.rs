//! `agent-chat-gateway init`: a first config from a few answers (asked on a terminal, or
//! taken from flags), written commented and private, then checked the way the daemon would
//! use it: parsed and validated, and each connector prepared (ports bound, credentials
//! tried against the server) before anything is started.
//! Knows nothing about: platform or agent internals beyond the keys it writes.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// The platforms `init` sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Platform {
    Webchat,
    Rocketchat,
    Onebot,
}

/// The agent types `init` sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentKind {
    Claude,
    Codex,
    Gemini,
    Opencode,
}

impl AgentKind {
    fn type_name(self) -> &'static str {
        match self {
            AgentKind::Claude => "claude",
            AgentKind::Codex => "codex",
            AgentKind::Gemini => "gemini",
            AgentKind::Opencode => "opencode",
        }
    }
}

/// The answers (flags; whatever is missing is asked on a terminal, else defaulted).
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The chat platform.
    #[arg(long, value_enum)]
    pub platform: Option<Platform>,
    /// Owners (usernames; `id:<x>` for a platform user id; QQ numbers on OneBot). Repeatable.
    #[arg(long = "owner")]
    pub owners: Vec<String>,
    /// The agent CLI.
    #[arg(long, value_enum)]
    pub agent: Option<AgentKind>,
    /// The agent's executable (default: found on PATH).
    #[arg(long)]
    pub agent_command: Option<String>,
    /// Where the agent works (created if missing; default ~/acg-work).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Web chat: listen address.
    #[arg(long, default_value = "127.0.0.1:8790")]
    pub listen: String,
    /// Rocket.Chat: server URL.
    #[arg(long)]
    pub server: Option<String>,
    /// Rocket.Chat: the bot's username.
    #[arg(long)]
    pub bot_user: Option<String>,
    /// Rocket.Chat: the environment variable holding the bot's password (the config refers
    /// to it as `${VAR}`; the value is read now only to check the login).
    #[arg(long, default_value = "ROCKETCHAT_PASSWORD")]
    pub password_env: String,
    /// OneBot: where the OneBot implementation (NapCat, …) connects to.
    #[arg(long, default_value = "127.0.0.1:6700")]
    pub onebot_listen: String,
    /// OneBot: the environment variable holding the access token.
    #[arg(long, default_value = "ONEBOT_TOKEN")]
    pub token_env: String,
    /// Never ask, even on a terminal.
    #[arg(long)]
    pub yes: bool,
    /// Replace an existing config.
    #[arg(long)]
    pub force: bool,
    /// Write the config without preparing the connectors.
    #[arg(long)]
    pub no_check: bool,
}

/// Writes the config to `path` and checks it; returns what to tell the user.
pub fn run(args: InitArgs, path: &Path, runtime: &Path) -> anyhow::Result<Vec<String>> {
    if path.exists() && !args.force {
        bail!(
            "{} exists; `init --force` replaces it (or edit it: every key is in config.example.yaml)",
            path.display()
        );
    }
    let mut ask = Asker::new(!args.yes && std::io::stdin().is_terminal());
    let answers = Answers::gather(args, &mut ask)?;
    let text = answers.render();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::create_dir_all(&answers.work_dir)
        .with_context(|| format!("cannot create {}", answers.work_dir.display()))?;
    write_private(path, &text)?;
    let mut lines = vec![format!("wrote {}", path.display())];
    let config = crate::config::load(path, crate::TYPES)
        .map_err(|e| anyhow::anyhow!("the written config does not validate: {e}"))?;
    lines.push("config is valid".to_string());
    if !answers.no_check {
        for c in &config.connectors {
            lines.push(check_connector(c, runtime)?);
        }
    }
    lines.push(format!(
        "start it with: agent-chat-gateway --config {} start",
        path.display()
    ));
    Ok(lines)
}

/// Prepares one connector as the daemon would (binds its port, logs in), then lets go.
fn check_connector(c: &crate::config::ConnectorConfig, runtime: &Path) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")?;
    rt.block_on(async {
        let connector = crate::connector::build(c, runtime)
            .with_context(|| format!("connector '{}'", c.name))?;
        match tokio::time::timeout(Duration::from_secs(20), connector.prepare()).await {
            Ok(Ok(())) => Ok(format!("connector '{}': ready", c.name)),
            Ok(Err(e)) => bail!("connector '{}': {e}", c.name),
            Err(_) => bail!("connector '{}': no answer within 20 s", c.name),
        }
    })
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Asks on the terminal, or answers with the default.
struct Asker {
    interactive: bool,
}

impl Asker {
    fn new(interactive: bool) -> Asker {
        Asker { interactive }
    }

    fn ask(&mut self, question: &str, default: &str) -> anyhow::Result<String> {
        if !self.interactive {
            return Ok(default.to_string());
        }
        eprint!("{question} [{default}]: ");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.trim();
        Ok(if line.is_empty() { default } else { line }.to_string())
    }
}

struct Answers {
    platform: Platform,
    owners: Vec<String>,
    agent: AgentKind,
    command: String,
    work_dir: PathBuf,
    listen: String,
    server: String,
    bot_user: String,
    password_env: String,
    onebot_listen: String,
    token_env: String,
    no_check: bool,
}

impl Answers {
    fn gather(args: InitArgs, ask: &mut Asker) -> anyhow::Result<Answers> {
        let platform = match args.platform {
            Some(p) => p,
            None => match ask
                .ask("Chat platform (webchat, rocketchat, onebot)", "webchat")?
                .as_str()
            {
                "webchat" => Platform::Webchat,
                "rocketchat" => Platform::Rocketchat,
                "onebot" => Platform::Onebot,
                other => bail!("unknown platform '{other}'"),
            },
        };
        let mut owners = args.owners;
        if owners.is_empty() {
            let default = match platform {
                Platform::Onebot => String::new(),
                _ => std::env::var("USER").unwrap_or_default(),
            };
            let answer = ask.ask("Owners (comma-separated)", &default)?;
            owners = answer
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if owners.is_empty() {
            bail!(
                "at least one owner is needed (--owner NAME): only owners can approve tool calls"
            );
        }
        let agent = match args.agent {
            Some(a) => a,
            None => match ask
                .ask("Agent (claude, codex, gemini, opencode)", "claude")?
                .as_str()
            {
                "claude" => AgentKind::Claude,
                "codex" => AgentKind::Codex,
                "gemini" => AgentKind::Gemini,
                "opencode" => AgentKind::Opencode,
                other => bail!("unknown agent '{other}'"),
            },
        };
        let command = match args.agent_command {
            Some(c) => c,
            None => {
                let found = find_on_path(agent.type_name())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| agent.type_name().to_string());
                ask.ask("Agent executable", &found)?
            }
        };
        let work_dir = match args.work_dir {
            Some(d) => d,
            None => {
                let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
                PathBuf::from(ask.ask("Working directory", &format!("{home}/acg-work"))?)
            }
        };
        let work_dir = if work_dir.is_absolute() {
            work_dir
        } else {
            std::env::current_dir()?.join(work_dir)
        };
        let (server, bot_user) = if platform == Platform::Rocketchat {
            let server = match args.server {
                Some(s) => s,
                None => ask.ask("Rocket.Chat server URL", "https://chat.example.com")?,
            };
            let bot = match args.bot_user {
                Some(b) => b,
                None => ask.ask("The bot's Rocket.Chat username", "agent-bot")?,
            };
            (server, bot)
        } else {
            (String::new(), String::new())
        };
        Ok(Answers {
            platform,
            owners,
            agent,
            command,
            work_dir,
            listen: args.listen,
            server,
            bot_user,
            password_env: args.password_env,
            onebot_listen: args.onebot_listen,
            token_env: args.token_env,
            no_check: args.no_check,
        })
    }

    fn render(&self) -> String {
        let owners = self
            .owners
            .iter()
            .map(|o| yaml_string(o))
            .collect::<Vec<_>>()
            .join(", ");
        let connector = match self.platform {
            Platform::Webchat => format!(
                "  - name: chat\n    type: webchat\n    listen: {}             # the web chat (and its API) on this address\n    allowed_users: {{owners: [{owners}], guests: []}}\n",
                yaml_string(&self.listen)
            ),
            Platform::Rocketchat => format!(
                "  - name: chat\n    type: rocketchat\n    server: {}\n    username: {}\n    password: \"${{{}}}\"   # read from the gateway's environment\n    allowed_users: {{owners: [{owners}], guests: []}}   # usernames; id:<user id> for ids\n    require_mention: true                  # in channels, only @mentions reach the agent\n",
                yaml_string(&self.server),
                yaml_string(&self.bot_user),
                self.password_env
            ),
            Platform::Onebot => format!(
                "  - name: chat\n    type: onebot\n    listen: {}     # reverse WebSocket: NapCat (or another OneBot V11) connects here\n    access_token: \"${{{}}}\"\n    allowed_users: {{owners: [{owners}], guests: []}}   # QQ numbers\n    require_mention: true\n",
                yaml_string(&self.onebot_listen),
                self.token_env
            ),
        };
        let gated = self.agent == AgentKind::Claude;
        let permissions = if gated {
            "    # Tool calls not on the lists below wait for an owner's `approve <id>` in the chat.\n    permissions: {enabled: true, timeout: 300}\n"
        } else {
            "    # This CLI's headless mode has no per-call hook: the rules below are granted to it\n    # as a whole (for approvals per call use `type: acp`; see the README).\n"
        };
        format!(
            "# agent-chat-gateway config, written by `agent-chat-gateway init`.\n\
             # Every key is documented in config.example.yaml; check edits with\n\
             # `agent-chat-gateway config validate`.\n\
             connectors:\n{connector}\n\
             default_agent: assistant\n\
             agents:\n  assistant:\n    type: {kind}\n    command: {command}\n    working_directory: {work}\n    timeout: 600\n{permissions}\
             \x20   owner_allowed_tools:\n      - {{tool: \"Read|Glob|Grep|LS\"}}\n      - {{tool: Bash, params: \"(ls|pwd|cat|head|tail|wc|git (status|log|diff|show))( .*)?\"}}\n\
             \x20   guest_allowed_tools: []\n\n\
             watchers:\n  - {{name: all, connector: chat, room: \"*\", agent: assistant}}\n",
            kind = self.agent.type_name(),
            command = yaml_string(&self.command),
            work = yaml_string(&self.work_dir.display().to_string()),
        )
    }
}

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
