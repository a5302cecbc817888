//! The real gateway binary started as a daemon (`start`, so the double fork is exercised)
//! with a temp runtime dir, and the config pieces tests build it from: a real Claude Code
//! agent on the fake model API, the fake agent CLI, a web chat connector.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::fake_llm::FakeLlm;
use super::webclient::WebClient;
use super::{deps, fake_agent, ports};

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent-chat-gateway")
}

/// A daemonized gateway with its own runtime dir, stopped on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub config: PathBuf,
    pub work: PathBuf,
    /// Lines `start` printed (login URLs).
    pub notes: String,
    running: bool,
}

impl Gateway {
    /// Writes `config_yaml` (with `{work}` replaced by a fresh working directory) and prepares
    /// a runtime dir, without starting.
    pub fn prepare(config_yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runtime");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            config_yaml.replace("{work}", work.to_str().unwrap()),
        )
        .unwrap();
        Gateway {
            dir,
            runtime,
            config,
            work,
            notes: String::new(),
            running: false,
        }
    }

    /// Prepares and starts; panics with the CLI's output if the start fails.
    pub fn start(config_yaml: &str) -> Gateway {
        let mut g = Gateway::prepare(config_yaml);
        g.start_again();
        g
    }

    pub fn start_again(&mut self) {
        let out = self.cli(&["start"]);
        assert!(
            out.status.success(),
            "start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.notes = String::from_utf8_lossy(&out.stdout).into_owned();
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let out = self.cli(&["stop"]);
            assert!(out.status.success(), "stop failed: {out:?}");
            self.running = false;
        }
    }

    /// Runs the gateway CLI against this instance.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("ACG_HOME", &self.runtime)
            .env_remove("ACG_CONFIG")
            .output()
            .unwrap()
    }

    /// Runs the CLI and returns (exit code, stdout, stderr).
    pub fn cli_text(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cli(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The login token printed for `user` by `start`.
    pub fn token_for(&self, user: &str) -> String {
        let line = self
            .notes
            .lines()
            .find(|l| l.contains(&format!(" {user}:")))
            .unwrap_or_else(|| panic!("no login line for {user} in {:?}", self.notes));
        line.split("token=").nth(1).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.runtime.join("gateway.log")).unwrap_or_default()
    }

    /// The audit log's records, oldest first.
    pub fn audit(&self) -> Vec<Value> {
        super::read_jsonl(&self.runtime.join("audit.jsonl"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.running {
            let out = self.cli(&["stop"]);
            if !out.status.success() {
                if let Ok(pid) = std::fs::read_to_string(self.runtime.join("gateway.pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
    }
}

/// A real Claude Code agent named `assistant`, pointed at a fresh fake model API with an
/// isolated HOME.
pub struct ClaudeAgent {
    pub llm: FakeLlm,
    /// `default_agent:` + `agents:` YAML for a test config (`{work}` is left for
    /// [`Gateway::prepare`]).
    pub yaml: String,
    /// The CLI's HOME, kept as long as the agent.
    pub home: tempfile::TempDir,
}

/// A [`ClaudeAgent`] following `script`; `extra` is appended to the agent's keys, 4-space
/// indented. `None` when the CLI is missing (see [`deps::claude`]).
pub async fn claude_agent(script: Value, extra: &str) -> Option<ClaudeAgent> {
    let claude = deps::claude()?;
    let llm = FakeLlm::start(script).await;
    let home = tempfile::tempdir().unwrap();
    let yaml = format!(
        "default_agent: assistant\nagents:\n  assistant:\n    type: claude\n    command: \"{}\"\n    working_directory: \"{{work}}\"\n    timeout: 120\n    env: {}\n{extra}\n",
        claude.display(),
        claude_env_yaml(&llm, home.path()),
    );
    Some(ClaudeAgent { llm, yaml, home })
}

/// The fake agent CLI as the only agent, `fake`. `timeout` is its turn timeout in seconds:
/// short only where a test waits for it to fire, since a loaded machine can make an ordinary
/// turn slow.
pub fn fake_agent_yaml(timeout: u32) -> String {
    format!(
        "agents:\n  fake: {{type: claude, command: \"{}\", working_directory: \"{{work}}\", timeout: {timeout}, warm: false}}\n",
        fake_agent::path()
    )
}

/// A config with one web chat connector `local` on `port` (owners alice, guests bob), the
/// watcher `all` on every room for the default agent of `agents`, and `extra` top-level keys.
pub fn webchat_config(port: u16, agents: &str, extra: &str) -> String {
    webchat_config_with(port, agents, ALL_ROOMS, extra)
}

/// The watchers of [`webchat_config`]: every room, on the default agent.
pub const ALL_ROOMS: &str = "watchers:\n  - {name: all, connector: local, room: \"*\"}";

/// [`webchat_config`] with its own `watchers:` section (rooms bound to different agents).
pub fn webchat_config_with(port: u16, agents: &str, watchers: &str, extra: &str) -> String {
    format!(
        r#"
connectors:
  - {{name: local, type: webchat, listen: "127.0.0.1:{port}", allowed_users: {{owners: [alice], guests: [bob]}}}}
{agents}
{watchers}
{extra}
"#
    )
}

/// A started daemon on [`webchat_config`], with its two web chat users.
pub struct WebchatGateway {
    pub gateway: Gateway,
    /// An owner.
    pub alice: WebClient,
    /// A guest.
    pub bob: WebClient,
}

impl WebchatGateway {
    pub fn start(agents: &str, extra: &str) -> WebchatGateway {
        WebchatGateway::start_with_watchers(agents, ALL_ROOMS, extra)
    }

    /// With its own `watchers:` section, as for [`webchat_config_with`].
    pub fn start_with_watchers(agents: &str, watchers: &str, extra: &str) -> WebchatGateway {
        let port = ports::free_port();
        let gateway = Gateway::start(&webchat_config_with(port, agents, watchers, extra));
        let alice = WebClient::new(port, &gateway.token_for("alice"));
        let bob = WebClient::new(port, &gateway.token_for("bob"));
        WebchatGateway {
            gateway,
            alice,
            bob,
        }
    }
}

/// A started daemon on [`webchat_config`] whose only agent is a [`ClaudeAgent`].
pub struct ClaudeWebchat {
    pub gateway: Gateway,
    pub llm: FakeLlm,
    /// An owner.
    pub alice: WebClient,
    /// A guest.
    pub bob: WebClient,
    _home: tempfile::TempDir,
}

impl ClaudeWebchat {
    /// `extra_agent` as for [`claude_agent`], `extra` as for [`webchat_config`]. `None` when
    /// the CLI is missing.
    pub async fn start(script: Value, extra_agent: &str, extra: &str) -> Option<ClaudeWebchat> {
        let agent = claude_agent(script, extra_agent).await?;
        let web = WebchatGateway::start(&agent.yaml, extra);
        Some(ClaudeWebchat {
            gateway: web.gateway,
            llm: agent.llm,
            alice: web.alice,
            bob: web.bob,
            _home: agent.home,
        })
    }
}

/// Environment for a Claude Code child: the fake model API, no network side traffic, and an
/// isolated HOME, rendered as a YAML flow map for an agent's `env:`.
pub fn claude_env_yaml(llm: &FakeLlm, home: &Path) -> String {
    let mut env = llm.claude_env();
    env.push(("HOME".into(), home.display().to_string()));
    super::agent_homes::env_yaml(&env)
}
