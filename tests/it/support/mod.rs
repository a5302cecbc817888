//! Shared test harness: the real gateway binary started as a daemon with a temp runtime dir, a
//! web chat client that waits on Server-Sent Events (no sleeps), and where to find the real
//! agent CLIs.
#![allow(dead_code)]

mod fake_agent;
pub mod fake_onebot;
pub mod fake_rocketchat;
pub mod fake_llm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

/// The real Claude Code CLI (`ACG_CLAUDE_BIN` overrides where it is).
pub fn claude_bin() -> Option<PathBuf> {
    let path = std::env::var_os("ACG_CLAUDE_BIN").map(PathBuf::from);
    dep_bin(path, "claude", "the Claude Code CLI")
}

/// A CLI that `scripts/install-test-deps.sh` installs into `.deps/node` (or at `explicit`).
/// Under `CI=true` a missing one fails the test; elsewhere the test is skipped with a loud
/// notice.
pub fn dep_bin(explicit: Option<PathBuf>, bin: &str, what: &str) -> Option<PathBuf> {
    let path = explicit.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".deps/node/node_modules/.bin")
            .join(bin)
    });
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what} is missing at {} (run scripts/install-test-deps.sh)",
            path.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {what} not found at {}; run scripts/install-test-deps.sh ***\n",
        path.display()
    );
    None
}

pub fn gateway_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent-chat-gateway")
}

/// The stand-in agent CLI (see `fake_agent.rs`).
pub fn fake_agent_bin() -> &'static str {
    fake_agent::path()
}

/// A free 127.0.0.1 port for a server the test starts later (a gateway's `listen`).
///
/// Why not bind port 0 and release it: the kernel hands the same ephemeral ports to every
/// later bind(0) and outgoing connection (fake servers, hook servers, the agent CLI's own
/// requests), so between our release and the daemon's bind another test could take it — CI
/// saw exactly that as "Address already in use". Ports are picked below the ephemeral range
/// instead, where no bind(0) or connect lands, starting at a per-process offset and never
/// handed out twice by one process; each is probed before it is returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = ephemeral_range();
    // Prefer the ports below the ephemeral range; fall back to those above it.
    let (start, span) = if low > 11_024 {
        (10_000, low - 10_000)
    } else {
        (high + 1, 65_535 - high)
    };
    let offset = std::process::id() * 7_919 % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left for the tests");
        let port = (start + (offset + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Linux's ephemeral port range (the kernel default if it cannot be read).
fn ephemeral_range() -> (u32, u32) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(low), Some(high)) if low <= high && high <= 65_535 => (low, high),
        _ => (32_768, 60_999),
    }
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

/// A web chat user talking to the gateway over its JSON API and SSE.
pub struct WebClient {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

/// One message as the web chat API returns it.
#[derive(Clone, Debug)]
pub struct WebMessage {
    pub id: String,
    pub from: String,
    pub text: String,
    pub done: bool,
}

impl WebClient {
    pub fn new(port: u16, token: &str) -> WebClient {
        WebClient {
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The same user with no pooled connections (after a daemon restart, the old ones are
    /// dead and the first request on one of them could fail).
    pub fn fresh(&self) -> WebClient {
        WebClient {
            base: self.base.clone(),
            token: self.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn post(&self, room: &str, text: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/rooms/{room}/messages", self.base))
            .bearer_auth(&self.token)
            .json(&json!({ "text": text }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn messages(&self, room: &str) -> Vec<WebMessage> {
        let v: Value = self
            .http
            .get(format!("{}/api/rooms/{room}/messages", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| WebMessage {
                id: m["id"].as_str().unwrap().to_string(),
                from: m["from"].as_str().unwrap().to_string(),
                text: m["text"].as_str().unwrap().to_string(),
                done: m["done"].as_bool().unwrap(),
            })
            .collect()
    }

    /// Opens the room's event stream (before posting, so nothing is missed).
    pub async fn events(&self, room: &str) -> EventStream {
        let r = self
            .http
            .get(format!("{}/api/rooms/{room}/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        EventStream {
            inner: Box::pin(r.bytes_stream()),
            buf: String::new(),
        }
    }

    /// Posts `text` and waits for the turn it starts to end; returns the bot's messages that
    /// came after it, in order.
    pub async fn ask(&self, room: &str, text: &str) -> Vec<WebMessage> {
        let mut events = self.events(room).await;
        let (status, body) = self.post(room, text).await;
        assert_eq!(status, 202, "{body}");
        let my_id = body["id"].as_str().unwrap().to_string();
        events.turn_end().await;
        self.bot_messages_after(room, &my_id).await
    }

    pub async fn bot_messages_after(&self, room: &str, id: &str) -> Vec<WebMessage> {
        let all = self.messages(room).await;
        let start = all.iter().position(|m| m.id == id).map_or(0, |i| i + 1);
        all[start..]
            .iter()
            .filter(|m| m.from == "bot")
            .cloned()
            .collect()
    }
}

pub struct EventStream {
    inner:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl EventStream {
    /// The next `(event, data)`.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
            let chunk = self.inner.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for a turn to start and end (typing on, then off). The stream opens with the
    /// current typing state, which does not count.
    pub async fn turn_end(&mut self) {
        let mut started = false;
        self.until(Duration::from_secs(90), |e, d| {
            if e == "typing" && d["typing"] == true {
                started = true;
            }
            started && e == "typing" && d["typing"] == false
        })
        .await;
    }

    /// Reads events until `stop` holds for one; panics after `timeout`.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&str, &Value) -> bool,
    ) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        let result = tokio::time::timeout(timeout, async {
            while let Some((e, d)) = self.next().await {
                let done = stop(&e, &d);
                seen.push((e, d));
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(result, Ok(true)),
            "event not seen within {timeout:?}; saw {seen:?}"
        );
        seen
    }
}

/// A real Claude Code agent named `assistant`, pointed at a fresh fake model API with an
/// isolated HOME: returns the fake, the `default_agent:` + `agents:` YAML for a test config
/// (`extra` is appended to the agent's keys, 4-space indented; `{work}` is left for
/// [`Gateway::prepare`]), and the HOME to keep alive. `None` when the CLI is missing.
pub async fn claude_agent(
    script: Value,
    extra: &str,
) -> Option<(fake_llm::FakeLlm, String, tempfile::TempDir)> {
    let claude = claude_bin()?;
    let llm = fake_llm::FakeLlm::start(script).await;
    let home = tempfile::tempdir().unwrap();
    let yaml = format!(
        "default_agent: assistant\nagents:\n  assistant:\n    type: claude\n    command: \"{}\"\n    working_directory: \"{{work}}\"\n    timeout: 120\n    env: {}\n{extra}\n",
        claude.display(),
        claude_env_yaml(&llm, home.path()),
    );
    Some((llm, yaml, home))
}

/// Environment for a Claude Code child: the fake model API, no network side traffic, and an
/// isolated HOME, rendered as a YAML flow map for an agent's `env:`.
pub fn claude_env_yaml(llm: &fake_llm::FakeLlm, home: &Path) -> String {
    let mut pairs: Vec<String> = llm
        .claude_env()
        .into_iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    pairs.push(format!("HOME: \"{}\"", home.display()));
    format!("{{{}}}", pairs.join(", "))
}
