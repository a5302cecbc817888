//! The control socket as a client sees it: one JSON line in, one out; bad requests get a clear
//! `ok:false` answer and the daemon keeps serving; a stale socket file from a crashed daemon
//! is replaced at start; the socket is private to its user.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use crate::support::daemon::{fake_agent_yaml, webchat_config, Gateway};
use crate::support::ports::free_port;

fn config() -> String {
    webchat_config(free_port(), &fake_agent_yaml(120), "")
}

fn ask(g: &Gateway, line: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(g.runtime.join("control.sock")).unwrap();
    // The server answers an oversized request without reading all of it, so writing the
    // rest may fail with a broken pipe; the answer is still there to read.
    let _ = s.write_all(line);
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn bad_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let g = Gateway::start(&config());
    let mode = std::fs::metadata(g.runtime.join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let v = ask(&g, b"{not json\n");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().starts_with("bad request: "),
        "{v}"
    );

    let v = ask(&g, b"{\"cmd\":\"explode\"}\n");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `explode`"),
        "{v}"
    );

    let mut huge = vec![b'x'; 2 * 1024 * 1024];
    huge.push(b'\n');
    let v = ask(&g, &huge);
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "request too large (limit 1048576 bytes)"})
    );

    let v = ask(&g, b"{\"cmd\":\"pause\",\"watcher\":\"ghost\"}\n");
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "unknown watcher 'ghost' (known: all)"})
    );

    let v = ask(&g, b"{\"cmd\":\"list\"}\n");
    assert_eq!(v["ok"], true);
    assert_eq!(v["watchers"][0]["watcher"], "all");

    let v = ask(&g, b"{\"cmd\":\"send\",\"room\":\"lobby\"}\n");
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "nothing to send: give a text or --attach"})
    );
}

#[test]
fn a_stale_socket_file_is_replaced_at_start() {
    let mut g = Gateway::prepare(&config());
    std::fs::create_dir_all(&g.runtime).unwrap();
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(g.runtime.join("control.sock")).unwrap());
    g.start_again();
    let v = ask(&g, b"{\"cmd\":\"status\"}\n");
    assert_eq!(v["ok"], true, "{v}");
}

/// What a peer with `no_new_privs` (every confined agent and its children) gets back.
fn ask_as_confined(g: &Gateway, line: &str) -> serde_json::Value {
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(sys.argv[2].encode()+b'\\n')\n\
                  print(s.makefile().readline(),end='')";
    let out = std::process::Command::new("setpriv")
        .args(["--no-new-privs", "python3", "-c", script])
        .arg(g.runtime.join("control.sock"))
        .arg(line)
        .output()
        .expect("setpriv (util-linux) and python3 run");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_confined_agent_process_may_only_send() {
    let g = Gateway::start(&config());
    for line in [
        r#"{"cmd":"stop"}"#,
        r#"{"cmd":"approve","id":"a3k9"}"#,
        r#"{"cmd":"pause","watcher":"all"}"#,
        r#"{"cmd":"list"}"#,
    ] {
        let v = ask_as_confined(&g, line);
        assert_eq!(v["ok"], false, "{line}: {v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("confined agent process"),
            "{line}: {v}"
        );
    }
    // `send` passes the gate (and is then judged like any other send).
    let v = ask_as_confined(&g, r#"{"cmd":"send","room":"lobby"}"#);
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "nothing to send: give a text or --attach"})
    );
    // The daemon did not stop, and an admin still gets every request.
    let v = ask(&g, b"{\"cmd\":\"status\"}\n");
    assert_eq!(v["ok"], true, "{v}");
}
