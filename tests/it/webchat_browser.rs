//! The web chat page in a real headless Chromium, driven over the Chrome DevTools protocol:
//! a user types and sends a message, the connector delivers it, a streamed bot reply shows up
//! as it grows, and the approval buttons post `approve <id>`.
//!
//! Needs `/usr/bin/chromium` (or `$ACG_CHROMIUM`); `scripts/install-chromium.sh` installs it.
//! Without it the test fails under `CI=true` and prints a loud skip notice otherwise.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agent_chat_gateway::connector::webchat::{WebchatConfig, WebchatConnector};
use agent_chat_gateway::connector::{Acceptance, Connector};
use agent_chat_gateway::model::ReplyTarget;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::deps;
use crate::support::dispatcher::ConnectorRun;
use crate::support::within;

const NAME: &str = "local";

/// A headless Chromium in its own process group; the whole group is killed on drop.
struct Chromium {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // The browser forks renderers and a zygote into its process group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }
}

impl Chromium {
    /// Asks the browser to quit, so it reaps its own helpers, and waits for it; the drop
    /// guard kills whatever is left.
    async fn close(mut self, mut cdp: Cdp) {
        cdp.session = None;
        cdp.next_id += 1;
        let close = json!({ "id": cdp.next_id, "method": "Browser.close" });
        if cdp.ws.send(Message::text(close.to_string())).await.is_ok() {
            let exited = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
            assert!(exited.is_ok(), "chromium did not quit on Browser.close");
        }
    }

    /// Starts the browser and returns it with its DevTools WebSocket address.
    async fn launch(binary: &PathBuf) -> (Chromium, String) {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                "--window-size=1200,820",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        // Chromium announces the DevTools endpoint on stderr once DevToolsActivePort is
        // written; waiting for that line avoids polling for the file.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let announced = within("chromium's DevTools announcement", async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited before announcing DevTools");
        })
        .await;
        // Keep draining stderr so the browser never blocks on a full pipe; ends with it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        // The announcement can come before DevToolsActivePort is written; once the endpoint
        // has answered a command, the browser has finished starting its DevTools server.
        let mut probe = Cdp::connect(&announced).await;
        probe.call("Browser.getVersion", json!({})).await;
        drop(probe);
        let active = std::fs::read_to_string(profile.path().join("DevToolsActivePort"))
            .expect("DevToolsActivePort");
        let mut parts = active.lines();
        let port: u16 = parts.next().unwrap().trim().parse().unwrap();
        let path = parts.next().unwrap().trim();
        let url = format!("ws://127.0.0.1:{port}{path}");
        assert_eq!(url, announced, "DevToolsActivePort and stderr disagree");
        (
            Chromium {
                child,
                _profile: profile,
            },
            url,
        )
    }
}

/// A tiny Chrome DevTools protocol client over one browser connection, talking to one page
/// through a flattened session.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    /// Events read while waiting for a command's answer.
    events: VecDeque<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = within("DevTools connection", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        Cdp {
            ws,
            next_id: 0,
            session: None,
            events: VecDeque::new(),
        }
    }

    async fn read(&mut self) -> Value {
        loop {
            let msg = within("a DevTools message", self.ws.next())
                .await
                .expect("DevTools connection closed")
                .unwrap();
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            request["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let msg = self.read().await;
            if msg["id"] == json!(id) {
                if let Some(error) = msg.get("error") {
                    panic!("{method} failed: {error}");
                }
                return msg["result"].clone();
            }
            if msg.get("method").is_some() {
                self.events.push_back(msg);
            }
        }
    }

    async fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i).unwrap();
        }
        loop {
            let msg = self.read().await;
            if msg["method"] == method {
                return msg;
            }
        }
    }

    /// Evaluates an expression in the page (promises awaited) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("page script failed: {exception}\n{expression}");
        }
        result["result"]["value"].clone()
    }

    /// Resolves once `condition` (a JS expression) is truthy, re-checking on every DOM change
    /// instead of polling; returns its value.
    async fn wait_for(&mut self, what: &str, condition: &str) -> Value {
        let script = format!(
            "new Promise((resolve) => {{
               const check = () => {{
                 let v = null;
                 try {{ v = ({condition}); }} catch (_) {{ v = null; }}
                 if (v) {{ observer.disconnect(); resolve(v); }}
               }};
               const observer = new MutationObserver(check);
               observer.observe(document, {{ subtree: true, childList: true,
                 characterData: true, attributes: true }});
               check();
             }})"
        );
        within(what, self.eval(&script)).await
    }

    /// A real mouse click at the centre of the element `selector` selects.
    async fn click(&mut self, selector: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({}).getBoundingClientRect();
                           return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
                json!(selector)
            ))
            .await;
        let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// The connector serving on 127.0.0.1 with a stand-in dispatcher that queues everything.
/// The web chat connector run in process for the page, with alice as its one user.
async fn start_webchat(dir: &std::path::Path) -> ConnectorRun<WebchatConnector> {
    let config = WebchatConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens: BTreeMap::new(),
        users: vec!["alice".into()],
        history_limit: 100,
        persist_history: true,
        require_mention: false,
    };
    let connector = Arc::new(WebchatConnector::new(NAME, &config, dir).unwrap());
    connector.prepare().await.unwrap();
    ConnectorRun::start(connector, NAME, &["lobby"], dir, dir.join("attachments"))
}

fn text_of(selector: &str) -> String {
    format!(
        "[...document.querySelectorAll({})].map((e) => e.textContent)",
        json!(selector)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_sends_streams_and_answers_approvals() {
    let Some(binary) = deps::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_webchat(dir.path()).await;
    let (alice, token) = gw.connector.tokens()[0].clone();
    assert_eq!(alice, "alice");
    let base = format!("http://{}", gw.connector.local_addr());

    // Signed in, connected to the room's event stream, token gone from the address bar.
    let (browser, mut cdp) = open_page(&binary, &base, &token).await;
    let address = cdp.eval("location.href").await;
    assert_eq!(address, json!(format!("{base}/#lobby")));
    let kept = cdp
        .eval("sessionStorage.getItem('acg-webchat-token')")
        .await;
    assert_eq!(kept, json!(token));

    // Type a message and press Enter.
    type_and_enter(&mut cdp, "input", "@bot please run the tests").await;
    let m = gw.message().await;
    assert_eq!(m.sender.id, "alice");
    assert_eq!(m.room.id, "lobby");
    assert_eq!(m.text, "please run the tests");
    assert!(m.addressed);
    cdp.wait_for(
        "the user's message in the room",
        "[...document.querySelectorAll('.msg.mine .body')]\
           .some((e) => e.textContent === '@bot please run the tests')",
    )
    .await;
    assert_eq!(
        cdp.eval("document.getElementById('input').value").await,
        json!("")
    );

    // The bot's reply streams in: typing, a post, edits, then the end of the turn.
    let lobby = ReplyTarget::room("lobby");
    let c = gw.connector.clone();
    c.typing(&lobby, true).await.unwrap();
    cdp.wait_for(
        "the typing indicator",
        "!document.getElementById('typing').classList.contains('off')",
    )
    .await;
    let reply = c.post(&lobby, "Running").await.unwrap();
    c.edit(&lobby, &reply, "Running the tests…").await.unwrap();
    let streaming = cdp
        .wait_for(
            "the streamed text",
            "(() => { const e = document.querySelector('.msg.bot.streaming .body');
                      return e && e.textContent === 'Running the tests…' && e.textContent; })()",
        )
        .await;
    assert_eq!(streaming, json!("Running the tests…"));
    cdp.screenshot("webchat-streaming.png").await;
    c.edit(
        &lobby,
        &reply,
        "All 42 tests passed.\n```\ntest result: ok. 42 passed\n```",
    )
    .await
    .unwrap();
    c.typing(&lobby, false).await.unwrap();
    cdp.wait_for(
        "the finished reply",
        "document.querySelectorAll('.msg.bot.streaming').length === 0 \
         && document.getElementById('typing').classList.contains('off') \
         && [...document.querySelectorAll('.msg.bot[data-done=\"true\"] pre')]\
              .some((e) => e.textContent === 'test result: ok. 42 passed')",
    )
    .await;

    // An approval prompt gets buttons; clicking one posts `approve <id>` as the user.
    c.post(
        &lobby,
        "🔐 Permission required [a3k9] Bash: `cargo publish --dry-run`\n\
         Reply `approve a3k9` or `deny a3k9`.",
    )
    .await
    .unwrap();
    cdp.wait_for(
        "the approval buttons",
        "document.querySelector('.msg.approval button.approve[data-id=\"a3k9\"]') \
         && document.querySelector('.msg.approval button.deny[data-id=\"a3k9\"]')",
    )
    .await;
    cdp.click(".msg.approval button.approve[data-id=\"a3k9\"]")
        .await;
    let approval = gw.message().await;
    assert_eq!(approval.text, "approve a3k9");
    assert_eq!(approval.sender.id, "alice");
    cdp.wait_for(
        "the approval to be marked as sent",
        "document.querySelector('.msg.approval .answered')",
    )
    .await;
    let bodies = cdp.eval(&text_of(".msg .body")).await;
    assert_eq!(
        bodies.as_array().unwrap().last().unwrap(),
        &json!("approve a3k9")
    );
    let shot = cdp.screenshot("webchat-lobby.png").await;
    eprintln!("screenshot: {}", shot.display());
    cdp.call(
        "Emulation.setEmulatedMedia",
        json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
    )
    .await;
    cdp.screenshot("webchat-lobby-dark.png").await;
    cdp.call("Emulation.setEmulatedMedia", json!({ "features": [] }))
        .await;

    // A picture the bot sends shows in place (the screenshot just taken serves as one).
    c.upload(&lobby, &shot, Some("here is the screenshot"))
        .await
        .unwrap();
    cdp.wait_for("the picture", "document.querySelector('.msg .file img')")
        .await;
    // Loading is not a DOM change: wait on the element's own load/error events.
    let size = within(
        "the picture to load",
        cdp.eval(
            "new Promise((resolve) => {
               const i = document.querySelector('.msg .file img');
               const done = () => resolve(i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : 'broken');
               if (i.complete) done();
               else { i.addEventListener('load', done); i.addEventListener('error', done); }
             })",
        ),
    )
    .await;
    assert_eq!(size, json!([1200, 820]));

    // A user sends a file with the 📎 button; the text in the box goes with it.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("build.log");
    std::fs::write(&log, "error[E0425]: cannot find value `x`\n").unwrap();
    cdp.eval("document.getElementById('input').focus()").await;
    cdp.call("Input.insertText", json!({ "text": "why does this fail?" }))
        .await;
    let input = cdp
        .call(
            "Runtime.evaluate",
            json!({ "expression": "document.getElementById('file')" }),
        )
        .await;
    cdp.call(
        "DOM.setFileInputFiles",
        json!({ "files": [log.display().to_string()], "objectId": input["result"]["objectId"] }),
    )
    .await;
    let sent = gw.message().await;
    assert_eq!(sent.text, "why does this fail?");
    assert_eq!(sent.attachments.len(), 1);
    assert_eq!(sent.attachments[0].name, "build.log");
    assert_eq!(
        std::fs::read_to_string(&sent.attachments[0].path).unwrap(),
        "error[E0425]: cannot find value `x`\n"
    );
    cdp.wait_for(
        "the user's file in the room",
        "[...document.querySelectorAll('.msg.mine .file a')].some((a) => a.textContent.startsWith('📎 build.log'))",
    )
    .await;

    // Whatever a message says is shown as text, never run as HTML.
    c.post(
        &lobby,
        "<img src=x onerror=\"window.pwned=1\"><b>not bold</b>",
    )
    .await
    .unwrap();
    cdp.wait_for(
        "the markup-looking message",
        "[...document.querySelectorAll('.msg .body')]\
           .some((e) => e.textContent.startsWith('<img src=x'))",
    )
    .await;
    let injected = cdp
        .eval(
            "[document.querySelectorAll('.msg .body img, .msg .body b').length, typeof window.pwned]",
        )
        .await;
    assert_eq!(injected, json!([0, "undefined"]));

    // A message the dispatcher refuses: the reason is shown and the text goes back in the box.
    gw.answer_next(Acceptance::Rejected(
        "the room's queue is full (5 waiting)".into(),
    ));
    cdp.eval("document.getElementById('input').focus()").await;
    cdp.call("Input.insertText", json!({ "text": "one more thing" }))
        .await;
    cdp.click("#send").await;
    assert_eq!(gw.message().await.text, "one more thing");
    let status = cdp
        .wait_for(
            "the refusal to be shown",
            "(() => { const s = document.getElementById('status');
                      return s.classList.contains('error') && s.textContent; })()",
        )
        .await;
    assert_eq!(
        status,
        json!("Not sent: the room's queue is full (5 waiting)")
    );
    assert_eq!(
        cdp.eval("document.getElementById('input').value").await,
        json!("one more thing")
    );

    cdp.screenshot("webchat-files-and-errors.png").await;

    // Joining another room by name switches the view and the address.
    cdp.eval("document.getElementById('join-name').value = 'dev'")
        .await;
    cdp.click("#join button").await;
    cdp.wait_for(
        "the dev room",
        "location.hash === '#dev' \
         && document.getElementById('room-title').textContent.startsWith('# dev') \
         && document.getElementById('conn').classList.contains('live')",
    )
    .await;
    c.post(&ReplyTarget::room("lobby"), "elsewhere")
        .await
        .unwrap();
    c.post(&ReplyTarget::room("dev"), "welcome to dev")
        .await
        .unwrap();
    cdp.wait_for(
        "the dev room's message",
        "[...document.querySelectorAll('.msg .body')].some((e) => e.textContent === 'welcome to dev')",
    )
    .await;
    let shown = cdp.eval(&text_of(".msg .body")).await;
    assert_eq!(
        shown,
        json!(["welcome to dev"]),
        "only the dev room is shown"
    );

    // A phone-sized window keeps the rooms and the join form reachable.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 780, "deviceScaleFactor": 1, "mobile": true }),
    )
    .await;
    let reachable = cdp
        .eval(
            "['#rooms button', '#join button', '#send'].map((s) => {
               const r = document.querySelector(s).getBoundingClientRect();
               return r.width > 0 && r.height > 0 && r.right <= innerWidth && r.bottom <= innerHeight;
             })",
        )
        .await;
    assert_eq!(reachable, json!([true, true, true]));
    let fits = cdp
        .eval("[innerWidth, document.documentElement.scrollWidth]")
        .await;
    assert_eq!(
        fits,
        json!([390, 390]),
        "nothing may widen the page beyond the screen"
    );
    cdp.screenshot("webchat-narrow.png").await;

    browser.close(cdp).await;
    gw.stop().await;
}

/// A browser on the page of `base` signed in with `token`, in room `lobby`, connected.
async fn open_page(binary: &PathBuf, base: &str, token: &str) -> (Chromium, Cdp) {
    let (browser, ws_url) = Chromium::launch(binary).await;
    let mut cdp = Cdp::connect(&ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({ "url": "about:blank" }))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1200, "height": 820, "deviceScaleFactor": 1, "mobile": false }),
    )
    .await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call(
        "Page.navigate",
        json!({ "url": format!("{base}/?token={token}#lobby") }),
    )
    .await;
    cdp.wait_event("Page.loadEventFired").await;
    wait_live(&mut cdp).await;
    (browser, cdp)
}

async fn wait_live(cdp: &mut Cdp) {
    cdp.wait_for(
        "the page to sign in and connect",
        "document.getElementById('who').textContent.includes('alice') \
         && document.getElementById('conn').classList.contains('live')",
    )
    .await;
}

/// Types `text` into the element `id` and presses Enter.
async fn type_and_enter(cdp: &mut Cdp, id: &str, text: &str) {
    cdp.eval(&format!("document.getElementById({}).focus()", json!(id)))
        .await;
    cdp.call("Input.insertText", json!({ "text": text })).await;
    for kind in ["keyDown", "keyUp"] {
        cdp.call(
            "Input.dispatchKeyEvent",
            json!({ "type": kind, "key": "Enter", "code": "Enter",
                    "windowsVirtualKeyCode": 13, "text": "\r" }),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_replies_in_a_thread_and_shows_the_answer_there() {
    let Some(binary) = deps::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_webchat(dir.path()).await;
    let (_, token) = gw.connector.tokens()[0].clone();
    let base = format!("http://{}", gw.connector.local_addr());
    let (browser, mut cdp) = open_page(&binary, &base, &token).await;

    type_and_enter(&mut cdp, "input", "@bot why is CI red?").await;
    let root = gw.message().await;
    assert_eq!(root.thread, None);
    let root_sel = format!("#messages .msg[data-id=\"{}\"]", root.id);
    cdp.wait_for(
        "the top-level message with its thread button",
        &format!(
            "document.querySelector({}) && document.querySelector({}).textContent === 'Reply in thread'",
            json!(root_sel),
            json!(format!("{root_sel} .reply-thread"))
        ),
    )
    .await;

    // "Reply in thread" opens the panel on the root; its composer posts into the thread.
    cdp.click(&format!("{root_sel} .reply-thread")).await;
    cdp.wait_for(
        "the thread panel with its root",
        &format!(
            "!document.getElementById('thread').hidden \
             && document.querySelector('#thread-messages .msg.root[data-id=\"{}\"]')",
            root.id
        ),
    )
    .await;
    type_and_enter(&mut cdp, "thread-input", "@bot look at the cache").await;
    let reply = gw.message().await;
    assert_eq!(reply.thread.as_deref(), Some(root.id.as_str()));
    assert_eq!(reply.text, "look at the cache");
    assert_eq!(reply.sender.id, "alice");

    // The bot answers in the thread, as the gateway would (ReplyTarget.thread): its typing
    // and its answer show in the panel, not in the timeline.
    let to = reply.reply_target();
    let c = gw.connector.clone();
    c.typing(&to, true).await.unwrap();
    cdp.wait_for(
        "the thread's typing indicator",
        "!document.getElementById('thread-typing').classList.contains('off') \
         && document.getElementById('typing').classList.contains('off')",
    )
    .await;
    let answer = c.post(&to, "The cache is").await.unwrap();
    c.edit(&to, &answer, "The cache is stale: clear it.")
        .await
        .unwrap();
    c.typing(&to, false).await.unwrap();
    cdp.wait_for(
        "the bot's answer in the thread",
        "[...document.querySelectorAll('#thread-messages .msg.bot[data-done=\"true\"] .body')]\
           .some((e) => e.textContent === 'The cache is stale: clear it.') \
         && document.getElementById('thread-typing').classList.contains('off')",
    )
    .await;
    let in_thread = cdp.eval(&text_of("#thread-messages .msg .body")).await;
    assert_eq!(
        in_thread,
        json!([
            "@bot why is CI red?",
            "@bot look at the cache",
            "The cache is stale: clear it."
        ])
    );
    let timeline = cdp.eval(&text_of("#messages .msg .body")).await;
    assert_eq!(
        timeline,
        json!(["@bot why is CI red?"]),
        "replies stay in their thread"
    );
    assert_eq!(
        cdp.eval(&format!(
            "document.querySelector({}).textContent",
            json!(format!("{root_sel} .reply-thread"))
        ))
        .await,
        json!("💬 2 replies")
    );
    cdp.screenshot("webchat-thread.png").await;

    // After a reload the thread comes back from the room's history.
    cdp.call("Page.reload", json!({})).await;
    cdp.wait_event("Page.loadEventFired").await;
    wait_live(&mut cdp).await;
    cdp.wait_for(
        "the reply count after the reload",
        &format!(
            "(() => {{ const b = document.querySelector({});
                       return b && b.textContent === '💬 2 replies'; }})()",
            json!(format!("{root_sel} .reply-thread"))
        ),
    )
    .await;
    cdp.click(&format!("{root_sel} .reply-thread")).await;
    cdp.wait_for(
        "the thread from the history",
        "[...document.querySelectorAll('#thread-messages .msg.bot .body')]\
           .some((e) => e.textContent === 'The cache is stale: clear it.')",
    )
    .await;
    // On a phone the open thread takes the whole width, its composer in reach.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 780, "deviceScaleFactor": 1, "mobile": true }),
    )
    .await;
    let narrow = cdp
        .eval(
            "(() => {
               const r = document.getElementById('thread-send').getBoundingClientRect();
               return [r.width > 0 && r.right <= innerWidth && r.bottom <= innerHeight,
                       document.getElementById('composer').getBoundingClientRect().width,
                       document.documentElement.scrollWidth];
             })()",
        )
        .await;
    assert_eq!(
        narrow,
        json!([true, 0, 390]),
        "the thread alone, within the screen"
    );
    cdp.screenshot("webchat-thread-narrow.png").await;
    cdp.click("#thread-close").await;
    cdp.wait_for(
        "the panel to close",
        "document.getElementById('thread').hidden && !document.querySelector('#thread-messages .msg')",
    )
    .await;

    browser.close(cdp).await;
    gw.stop().await;
}
