//! The admin endpoint (`admin: {listen: …}`) of the real daemon: `/healthz`, `/readyz` (not
//! ready until every connector is connected: here a OneBot connector waits for its bot),
//! and `/metrics`, scraped after a turn and read by the reference Prometheus text parser
//! (`support/parse_metrics.py`, the Python `prometheus_client`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon::{fake_agent_yaml, Gateway};
use crate::support::deps;
use crate::support::fake_onebot::{Auth, FakeBot, SELF, TOKEN};
use crate::support::ports::free_port;
use crate::support::webclient::WebClient;

async fn get(port: u16, path: &str) -> (u16, String, String) {
    let resp = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, resp.text().await.unwrap())
}

/// The samples of a Prometheus text exposition, as the reference parser reads them.
fn parse(text: &str, python: &std::path::Path) -> Vec<Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/support/parse_metrics.py"
    );
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused it: {out:?}\n{text}"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sample<'a>(samples: &'a [Value], name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .map(|s| &s["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_are_served_and_metrics_parse_as_prometheus_text() {
    let Some(python) = deps::prometheus_python() else {
        return;
    };
    let (web, admin, qq) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
connectors:
  - {{name: local, type: webchat, listen: "127.0.0.1:{web}", allowed_users: {{owners: [alice], guests: [bob]}}}}
  - {{name: qq, type: onebot, listen: "127.0.0.1:{qq}", access_token: "{TOKEN}", allowed_users: {{owners: ["id:1"]}}}}
default_agent: fake
{agents}
watchers:
  - {{name: all, connector: local, room: "*"}}
admin: {{listen: "127.0.0.1:{admin}"}}
"#,
        agents = fake_agent_yaml(30),
    );
    let gateway = Gateway::start(&config);
    assert!(
        gateway
            .notes
            .contains(&format!("http://127.0.0.1:{admin}/metrics")),
        "{}",
        gateway.notes
    );

    assert_eq!(get(admin, "/healthz").await.0, 200);
    let (status, _, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: qq"), "{body}");

    // The bot connects: ready once the connector reports it.
    let bot = FakeBot::connect(
        &format!("ws://127.0.0.1:{qq}/onebot/v11/ws"),
        SELF,
        Auth::Bearer(TOKEN.into()),
    )
    .await
    .unwrap();
    bot.lifecycle_connect();
    let ready = async {
        loop {
            let (status, _, body) = get(admin, "/readyz").await;
            if status == 200 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let body = tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("ready after the bot connected");
    assert_eq!(body, "ready\n");

    // A turn, then a scrape.
    let alice = WebClient::new(web, &gateway.token_for("alice"));
    let replies = alice.ask("r1", "hello").await;
    assert!(!replies.is_empty());
    let (status, kind, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    let samples = parse(&text, &python);
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing in\n{text}"))
    };
    assert_eq!(
        value("acg_turns_total", &[("agent", "fake"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        value("acg_turn_duration_seconds_count", &[("agent", "fake")]),
        1.0
    );
    assert!(value("acg_turn_duration_seconds_sum", &[("agent", "fake")]) > 0.0);
    assert_eq!(value("acg_connector_up", &[("connector", "local")]), 1.0);
    assert_eq!(value("acg_connector_up", &[("connector", "qq")]), 1.0);
    assert_eq!(value("acg_rooms", &[]), 1.0);
    assert_eq!(value("acg_queued_messages", &[]), 0.0);
    assert!(value("acg_resident_memory_bytes", &[]) > 1e6);

    assert_eq!(get(admin, "/nowhere").await.0, 404);
    let post = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);
    drop(bot);
}
