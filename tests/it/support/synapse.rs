//! A real Synapse homeserver for the Matrix tests: started from the venv that
//! `scripts/install-test-deps.sh` puts in `.deps/synapse-venv`, with a generated config
//! (SQLite, a fixed test signing key, 127.0.0.1 on a free port, rate limits raised so turns
//! are not slowed by them), users registered through the shared-secret admin API, and
//! killed on drop. Also a Matrix user for tests ([`MatrixUser`], long-polling `/sync` —
//! no sleeps) and a TCP [`Cut`] between the gateway and the server, so a test can take the
//! gateway's connection away while users keep talking.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::{deps, ports};

const SHARED_SECRET: &str = "acg-test-registration-secret";
/// Synapse is ready in about 3 s here; a loaded CI machine may take many times that.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A running Synapse on `127.0.0.1:port`, server name `localhost`.
pub struct Synapse {
    dir: tempfile::TempDir,
    python: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// A registered user: its full id and an access token.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: String,
    pub token: String,
}

impl Synapse {
    /// Starts a fresh homeserver. `None` when the venv is missing outside CI
    /// ([`deps::synapse_python`]).
    pub async fn start() -> Option<Synapse> {
        Synapse::start_with_message_rate(1000.0, 1000).await
    }

    /// [`Synapse::start`] with Synapse's own message rate limit (`rc_message`): beyond
    /// `burst` messages, `per_second`, a sender gets `429 M_LIMIT_EXCEEDED`.
    pub async fn start_with_message_rate(per_second: f64, burst: u32) -> Option<Synapse> {
        let python = deps::synapse_python()?;
        let dir = tempfile::tempdir().unwrap();
        let port = ports::free_port();
        let d = dir.path().display();
        // The signing key of a test server that federates with nobody: any fixed seed does.
        std::fs::write(
            dir.path().join("signing.key"),
            "ed25519 a_test AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
        )
        .unwrap();
        let config = format!(
            r#"server_name: "localhost"
pid_file: "{d}/homeserver.pid"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{d}/homeserver.db"
media_store_path: "{d}/media"
registration_shared_secret: "{SHARED_SECRET}"
report_stats: false
signing_key_path: "{d}/signing.key"
trusted_key_servers: []
suppress_key_server_warning: true
enable_metrics: false
presence:
  enabled: false
rc_message: {{per_second: {per_second}, burst_count: {burst}}}
rc_joins: {{local: {{per_second: 1000, burst_count: 1000}}}}
rc_invites: {{per_room: {{per_second: 1000, burst_count: 1000}}, per_user: {{per_second: 1000, burst_count: 1000}}}}
rc_login: {{address: {{per_second: 1000, burst_count: 1000}}, account: {{per_second: 1000, burst_count: 1000}}}}
"#
        );
        std::fs::write(dir.path().join("homeserver.yaml"), config).unwrap();
        let mut s = Synapse {
            dir,
            python,
            port,
            child: None,
        };
        s.spawn().await;
        Some(s)
    }

    /// Runs the server on its config and data (again after [`Synapse::stop`]); returns once
    /// it says it listens.
    async fn spawn(&mut self) {
        let mut child = Command::new(&self.python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.dir.path().join("homeserver.yaml"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        self.child = Some(child);
        let log_path = self.dir.path().join("synapse.log");
        // Read its log on a thread (it keeps writing; a full pipe would block it), and say
        // when the listener is up.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).unwrap();
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.contains("Synapse now listening on TCP port") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        let started = tokio::time::timeout(START_TIMEOUT, ready_rx).await;
        if !matches!(started, Ok(Ok(()))) {
            let log = self.log();
            panic!("Synapse did not start within {START_TIMEOUT:?}:\n{log}");
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("synapse.log")).unwrap_or_default()
    }

    /// Registers `localpart` through the shared-secret admin API
    /// (`/_synapse/admin/v1/register`: a nonce, then an HMAC-SHA1 over nonce, user,
    /// password and admin flag).
    pub async fn register(&self, localpart: &str) -> Account {
        let http = reqwest::Client::new();
        let url = format!("{}/_synapse/admin/v1/register", self.url());
        let nonce: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let nonce = nonce["nonce"].as_str().unwrap().to_string();
        let password = format!("pw-{localpart}");
        let mac = self.hmac_sha1(&format!("{nonce}\0{localpart}\0{password}\0notadmin"));
        let body = json!({"nonce": nonce, "username": localpart, "password": password,
                          "admin": false, "mac": mac});
        let resp = http.post(&url).json(&body).send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "register {localpart}: {status} {v}");
        Account {
            user_id: v["user_id"].as_str().unwrap().to_string(),
            token: v["access_token"].as_str().unwrap().to_string(),
        }
    }

    /// The venv's Python computes the MAC (the tests carry no HMAC crate); the message goes
    /// through stdin since it holds NUL bytes.
    fn hmac_sha1(&self, message: &str) -> String {
        let mut child = Command::new(&self.python)
            .args([
                "-c",
                "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha1).hexdigest())",
                SHARED_SECRET,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay from a 127.0.0.1 port to Synapse that can be cut: [`Cut::cut`] drops every
/// relayed connection and refuses new ones until [`Cut::restore`]. Stops with the test's
/// runtime (its tasks are aborted on drop).
pub struct Cut {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cut {
    pub async fn start(target_port: u16) -> Cut {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (up, conns) = (up.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) =
                            TcpStream::connect(("127.0.0.1", target_port)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c| !c.is_finished());
                    conns.push(task.abort_handle());
                }
            }
        });
        Cut {
            port,
            up,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

/// A Matrix user driven by a test: sends messages and follows its rooms through `/sync`.
pub struct MatrixUser {
    http: reqwest::Client,
    base: String,
    pub account: Account,
    since: Option<String>,
    /// Timeline events per room, in order.
    pub events: HashMap<String, Vec<Value>>,
    /// The users typing now, per room (the last `m.typing` seen).
    pub typing: HashMap<String, Vec<String>>,
}

impl MatrixUser {
    pub fn new(synapse: &Synapse, account: Account) -> MatrixUser {
        MatrixUser {
            http: reqwest::Client::new(),
            base: synapse.url(),
            account,
            since: None,
            events: HashMap::new(),
            typing: HashMap::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.account.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// Creates a public room with the alias `#alias:localhost`; its id.
    pub async fn create_room(&self, alias: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"preset": "public_chat", "room_alias_name": alias, "name": alias})),
            )
            .await;
        v["room_id"].as_str().unwrap().to_string()
    }

    /// A private room with only `invite` invited (2 members once they join: a DM).
    pub async fn create_dm(&self, invite: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"preset": "trusted_private_chat", "invite": [invite], "is_direct": true})),
            )
            .await;
        v["room_id"].as_str().unwrap().to_string()
    }

    pub async fn invite(&self, room: &str, user: &str) {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(room));
        self.call(reqwest::Method::POST, &path, Some(json!({"user_id": user})))
            .await;
    }

    /// Uploads `data` to the media repository; its `mxc://` URI.
    pub async fn upload(&self, name: &str, mime: &str, data: Vec<u8>) -> String {
        let resp = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.base))
            .query(&[("filename", name)])
            .header("content-type", mime)
            .bearer_auth(&self.account.token)
            .body(data)
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        v["content_uri"].as_str().unwrap().to_string()
    }

    /// The bytes of the media `mxc://server/id` (authenticated media API).
    pub async fn download(&self, mxc: &str) -> Vec<u8> {
        let path = mxc.strip_prefix("mxc://").unwrap();
        let resp = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.base
            ))
            .bearer_auth(&self.account.token)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "download {mxc}: {}",
            resp.status()
        );
        resp.bytes().await.unwrap().to_vec()
    }

    pub async fn join(&self, room: &str) {
        let path = format!("/_matrix/client/v3/join/{}", enc(room));
        self.call(reqwest::Method::POST, &path, Some(json!({})))
            .await;
    }

    /// Sends `content` as an `m.room.message`; its event id.
    pub async fn send(&self, room: &str, content: Value) -> String {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
            enc(room)
        );
        let v = self.call(reqwest::Method::PUT, &path, Some(content)).await;
        v["event_id"].as_str().unwrap().to_string()
    }

    /// A text message; with `mention`, it starts with that user's id and names it in
    /// `m.mentions`, as clients send a mention pill.
    pub async fn say(&self, room: &str, text: &str, mention: Option<&str>) -> String {
        let content = match mention {
            Some(user) => json!({"msgtype": "m.text", "body": format!("{user} {text}"),
                                 "m.mentions": {"user_ids": [user]}}),
            None => json!({"msgtype": "m.text", "body": text, "m.mentions": {}}),
        };
        self.send(room, content).await
    }

    /// One long-poll `/sync` (up to `timeout_ms`), adding what it brings to `events` and
    /// `typing`.
    pub async fn sync_once(&mut self, timeout_ms: u64) {
        let mut q = vec![("timeout", timeout_ms.to_string())];
        if let Some(s) = &self.since {
            q.push(("since", s.clone()));
        }
        let resp = self
            .http
            .get(format!("{}/_matrix/client/v3/sync", self.base))
            .query(&q)
            .bearer_auth(&self.account.token)
            .timeout(Duration::from_secs(40))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        self.since = v["next_batch"].as_str().map(str::to_string);
        if let Some(rooms) = v["rooms"]["join"].as_object() {
            for (id, room) in rooms {
                let list = self.events.entry(id.clone()).or_default();
                list.extend(
                    room["timeline"]["events"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                for e in room["ephemeral"]["events"].as_array().into_iter().flatten() {
                    if e["type"] == "m.typing" {
                        let ids = e["content"]["user_ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect();
                        self.typing.insert(id.clone(), ids);
                    }
                }
            }
        }
    }

    /// Syncs until `done` holds, failing after `within`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&MatrixUser) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}; events: {:#?}",
                self.events
            );
            self.sync_once(10_000).await;
        }
    }

    /// `user`'s messages in `room` as clients show them: edits (`m.replace`) applied to the
    /// message they replace, oldest first; each with its event (thread relation, …).
    pub fn messages_of(&self, room: &str, user: &str) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = Vec::new();
        for e in self.events.get(room).into_iter().flatten() {
            if e["type"] != "m.room.message" || e["sender"] != user {
                continue;
            }
            let c = &e["content"];
            if c["m.relates_to"]["rel_type"] == "m.replace" {
                let target = &c["m.relates_to"]["event_id"];
                if let Some(m) = out.iter_mut().find(|(_, ev)| &ev["event_id"] == target) {
                    m.0 = c["m.new_content"]["body"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                }
                continue;
            }
            out.push((c["body"].as_str().unwrap_or("").to_string(), e.clone()));
        }
        out
    }

    /// Whether `user` joined `room` (as far as this user has seen).
    pub fn saw_join(&self, room: &str, user: &str) -> bool {
        self.events.get(room).into_iter().flatten().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == user
                && e["content"]["membership"] == "join"
        })
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
