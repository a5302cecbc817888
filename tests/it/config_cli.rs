//! The configuration as users meet it: `config validate` on the shipped example and on a bad
//! file (exact messages), and `start` refusing bad set-ups with the real reason.

use crate::support;

use std::process::Command;

use crate::support::daemon::{gateway_bin, Gateway};
use crate::support::ports::free_port;

fn validate(dir: &std::path::Path, file: &str) -> (i32, String, String) {
    let out = Command::new(gateway_bin())
        .args(["config", "validate", "--config"])
        .arg(dir.join(file))
        .env("ACG_WEB_TOKEN", "0123456789abcdef0123")
        .env("ROCKETCHAT_PASSWORD", "secret")
        .env("ONEBOT_TOKEN", "token")
        .env("ACG_API_KEY", "sk-0123456789abcdef")
        .env("ANTHROPIC_API_KEY", "key")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"),
        dir.path().join("config.yaml"),
    )
    .unwrap();
    let (code, out, err) = validate(dir.path(), "config.yaml");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.ends_with("config.yaml is valid: 4 connector(s), 1 agent(s), 5 watcher(s)\n"),
        "{out}"
    );
}

#[test]
fn every_problem_is_reported_at_once_with_key_paths_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        r#"connectors:
  - name: local
    type: webchat
    allowed_users: {owners: [me]}
    colour: blue
agents:
  assistant:
    type: claude
    working_directory: ./missing
    timeout: 100
    permissions: {enabled: true, timeout: 300}
    owner_allowed_tools: [{tool: "Bash(", params: ".*"}]
watchers:
  - {name: w, connector: nope, room: "*", agent: ghost}
max_queue_depth: 0
"#,
    )
    .unwrap();
    let (code, out, err) = validate(dir.path(), "bad.yaml");
    assert_eq!(code, 1, "{out}");
    let base = dir.path().canonicalize().unwrap();
    let expected = format!(
        "{file} has 7 problems:
  - connectors[0] (line 5): unknown field `colour`, expected one of `name`, `type`, `listen`, `tokens`, `allowed_users`, `require_mention`, `history_limit`, `persist_history`
  - agents.assistant.working_directory (line 9): {base}/missing does not exist or is not a directory
  - agents.assistant.timeout (line 10): must be longer than permissions.timeout (300 s), or a turn waiting for approval is cut off
  - agents.assistant.owner_allowed_tools[0] (line 12): tool regex 'Bash(' is invalid: unclosed group
  - watchers[0].connector (line 14): no connector named 'nope'
  - watchers[0].agent (line 14): no agent named 'ghost'
  - max_queue_depth (line 15): must be at least 1 (queues are always bounded)
",
        file = dir.path().join("bad.yaml").display(),
        base = base.display()
    );
    assert_eq!(err, expected);
}

#[test]
fn an_unset_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        r#"connectors:
  - {name: local, type: webchat, tokens: {me: "${ACG_TEST_NEVER_SET}"}, allowed_users: {owners: [me]}}
agents:
  a: {type: claude, working_directory: ./work}
watchers:
  - {name: w, connector: local, room: "*"}
"#,
    )
    .unwrap();
    let (code, _, err) = validate(dir.path(), "c.yaml");
    assert_eq!(code, 1);
    assert!(
        err.contains("  - connectors[0].tokens.me (line 2): environment variable ACG_TEST_NEVER_SET is not set\n"),
        "{err}"
    );
}

const MINIMAL: &str = r#"
connectors:
  - {name: local, type: webchat, listen: "127.0.0.1:PORT", allowed_users: {owners: [me]}}
agents:
  a: {type: claude, command: /bin/false, working_directory: "{work}"}
watchers:
  - {name: w, connector: local, room: "*"}
"#;

#[test]
fn start_refuses_a_second_instance_and_a_busy_port_with_the_real_reason() {
    let port = free_port();
    let mut first = Gateway::start(&MINIMAL.replace("PORT", &port.to_string()));
    let (code, _, err) = first.cli_text(&["start"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: the gateway is already running (pid "),
        "{err}"
    );

    // Another runtime dir, same port: the connector cannot bind and start says why.
    let second = Gateway::prepare(&MINIMAL.replace("PORT", &port.to_string()));
    let (code, out, err) = second.cli_text(&["start"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        format!(
            "error: connector 'local': web chat local: cannot listen on 127.0.0.1:{port}: the address is already in use (another program is listening there; change `listen` in its config section)\n"
        )
    );
    let (code, out, _) = second.cli_text(&["status"]);
    assert_eq!((code, out.as_str()), (3, "Gateway is not running.\n"));
    first.stop();
    let (code, out, _) = first.cli_text(&["status"]);
    assert_eq!((code, out.as_str()), (3, "Gateway is not running.\n"));
}

#[test]
fn a_corrupt_state_file_is_moved_aside_and_the_daemon_still_starts() {
    let port = free_port();
    let mut g = Gateway::prepare(&MINIMAL.replace("PORT", &port.to_string()));
    std::fs::create_dir_all(&g.runtime).unwrap();
    std::fs::write(g.runtime.join("state.local.json"), b"{ not json").unwrap();
    g.start_again();
    let (code, _, _) = g.cli_text(&["status"]);
    assert_eq!(code, 0);
    let moved = std::fs::read_dir(&g.runtime)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.local.json.corrupt-")
        });
    assert!(moved);
    assert!(g.log().contains("is corrupt"), "{}", g.log());
}

#[test]
fn policy_check_prints_the_decision_first_then_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        r#"connectors:
  - {name: local, type: webchat, allowed_users: {owners: [me]}}
agents:
  assistant:
    type: claude
    working_directory: ./work
    owner_allowed_tools: [{tool: Read}, {tool: Bash, params: "git (status|log|diff)( .*)?"}, {tool: Bash, params: "head( .*)?"}]
    guest_allowed_tools: [{tool: Read}]
watchers:
  - {name: w, connector: local, room: "*"}
"#,
    )
    .unwrap();
    let check = |args: &[&str]| {
        let out = Command::new(gateway_bin())
            .args(["policy", "check", "--config"])
            .arg(dir.path().join("c.yaml"))
            .args(["--agent", "assistant"])
            .args(args)
            .env("ACG_HOME", dir.path().join("runtime"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        check(&["--role", "owner", "--tool", "Bash", "--input", r#"{"command":"git log --oneline | head -5"}"#]),
        "allow: matches the owner allow-list: Bash(git (status|log|diff)( .*)?), Bash(head( .*)?)\n  git log --oneline\n  head -5\n"
    );
    assert_eq!(
        check(&[
            "--role",
            "owner",
            "--tool",
            "Bash",
            "--input",
            r#"{"command":"git push origin main"}"#
        ]),
        "ask: not in the owner allow-list: `git push origin main`\n  git push origin main\n"
    );
    assert_eq!(
        check(&["--role", "guest", "--tool", "Bash", "--json", "--input", r#"{"command":"echo $(cat ~/.ssh/id_rsa) > /tmp/x"}"#]),
        "{\"decision\":\"deny\",\"reason\":\"guest: tool 'Bash' is not in the guest allow-list\",\"parameters\":[\"echo $(cat ~/.ssh/id_rsa)\",\"cat ~/.ssh/id_rsa\",\"write:/tmp/x\"]}\n"
    );
    assert_eq!(
        check(&["--role", "owner", "--tool", "Bash", "--input", r#"{"command":"agent-chat-gateway approve a3k9"}"#]),
        "deny: blocked: touches the gateway's control plane (runs `agent-chat-gateway`)\n  agent-chat-gateway approve a3k9\n"
    );
}

#[test]
fn policy_check_on_a_pipe_agent_says_what_its_cli_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        r#"connectors:
  - {name: local, type: webchat, allowed_users: {owners: [me]}}
agents:
  coder:
    type: codex
    command: /bin/true
    working_directory: ./work
    owner_allowed_tools: [{tool: Read}, {tool: Write}, {tool: Bash, params: "git .*"}]
watchers:
  - {name: w, connector: local, room: "*"}
"#,
    )
    .unwrap();
    let check = |args: &[&str]| {
        let out = Command::new(gateway_bin())
            .args(["policy", "check", "--config"])
            .arg(dir.path().join("c.yaml"))
            .args(["--agent", "coder", "--tool", "Bash"])
            .args(["--input", r#"{"command":"git status"}"#])
            .args(args)
            .env("ACG_HOME", dir.path().join("runtime"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The per-call answer, and what holds for a CLI that never asks: a rule with params
    // grants nothing, so Codex gets no shell.
    assert_eq!(
        check(&["--role", "owner"]),
        "allow: matches the owner allow-list: Bash(git .*)\n  git status\nnote: agent 'coder' (type codex) does not ask the gateway about each call; the owner role's rules grant the CLI: Read, Write\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&check(&["--role", "guest", "--json"])).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["per_call"], false);
    assert_eq!(json["cli_grants"], serde_json::json!([]));
}

#[test]
fn service_install_writes_a_user_unit_that_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("my config.yaml");
    std::fs::write(
        &config,
        MINIMAL
            .replace("PORT", &port.to_string())
            .replace("/bin/false", support::fake_agent::path())
            .replace("{work}", &dir.path().display().to_string()),
    )
    .unwrap();
    let xdg = dir.path().join("xdg");
    let run = |args: &[&str]| {
        Command::new(gateway_bin())
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("ACG_HOME", dir.path().join("runtime"))
            .env("XDG_CONFIG_HOME", &xdg)
            .output()
            .unwrap()
    };
    let out = run(&["service", "install", "--user", "--no-start"]);
    assert!(out.status.success(), "{out:?}");
    let unit_path = xdg.join("systemd/user/agent-chat-gateway.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=notify".to_string(),
        format!(
            "ExecStart=\"{}\" --config \"{}\" start --foreground",
            std::fs::canonicalize(gateway_bin()).unwrap().display(),
            config.display()
        ),
        format!(
            "Environment=\"ACG_HOME={}\"",
            dir.path().join("runtime").display()
        ),
        "Restart=on-failure".to_string(),
        "WantedBy=default.target".to_string(),
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing in\n{unit}");
    }
    assert!(!unit.contains("NoNewPrivileges="), "{unit}");

    // systemd's own check of the unit (a user manager's view: its runtime dir is ours).
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (Debian package systemd)"
        );
        eprintln!("SKIPPED: systemd-analyze is missing");
        return;
    };
    let xdg_runtime = dir.path().join("xdg-runtime");
    std::fs::create_dir(&xdg_runtime).unwrap();
    let verify = Command::new(analyze)
        .args(["--user", "verify"])
        .arg(&unit_path)
        .env("XDG_RUNTIME_DIR", &xdg_runtime)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{verify:?}\n{unit}"
    );

    let out = run(&["service", "uninstall", "--user"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!unit_path.exists());
}

#[test]
fn under_systemd_the_daemon_says_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        &config,
        MINIMAL
            .replace("PORT", &free_port().to_string())
            .replace("/bin/false", support::fake_agent::path())
            .replace("{work}", &work.display().to_string()),
    )
    .unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Command::new(gateway_bin())
        .arg("--config")
        .arg(&config)
        .args(["start", "--foreground"])
        .env("ACG_HOME", dir.path().join("runtime"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn init_writes_a_checked_config_that_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runtime/config.yaml");
    let port = free_port();
    let init = |extra: &[&str]| {
        Command::new(gateway_bin())
            .args([
                "init",
                "--platform",
                "webchat",
                "--owner",
                "alice",
                "--owner",
                "id:U1",
            ])
            .args([
                "--agent",
                "claude",
                "--agent-command",
                support::fake_agent::path(),
            ])
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("ACG_HOME", dir.path().join("runtime"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("config is valid"), "{stdout}");
    assert!(stdout.contains("connector 'chat': ready"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# agent-chat-gateway config, written by"),
        "{text}"
    );
    assert!(text.contains(r#"owners: ["alice", "id:U1"]"#), "{text}");
    assert!(dir.path().join("work").is_dir());

    // An existing config is kept unless --force.
    let again = init(&[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );

    // The config starts (the web chat answers).
    let mut g = Gateway::start(&text);
    assert!(g.notes.contains(&port.to_string()) || g.log().contains("web chat listening"));
    g.stop();

    // A port in use is found before anything starts.
    let busy = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = init(&["--force"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connector 'chat'"),
        "{out:?}"
    );
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_tries_the_rocket_chat_login() {
    let rc = crate::support::fake_rocketchat::FakeRocketChat::start().await;
    let dir = tempfile::tempdir().unwrap();
    let init = |password: &str| {
        Command::new(gateway_bin())
            .args(["--config"])
            .arg(dir.path().join("c.yaml"))
            .args([
                "init",
                "--yes",
                "--force",
                "--platform",
                "rocketchat",
                "--owner",
                "alice",
            ])
            .args([
                "--server",
                &rc.url(),
                "--bot-user",
                crate::support::fake_rocketchat::BOT_USER,
            ])
            .args(["--agent", "claude", "--agent-command", "/bin/true"])
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .env("ROCKETCHAT_PASSWORD", password)
            .env("ACG_HOME", dir.path().join("runtime"))
            .output()
            .unwrap()
    };
    let ok = tokio::task::block_in_place(|| init(crate::support::fake_rocketchat::BOT_PASSWORD));
    assert!(ok.status.success(), "{ok:?}");
    let text = std::fs::read_to_string(dir.path().join("c.yaml")).unwrap();
    assert!(
        text.contains(r#"password: "${ROCKETCHAT_PASSWORD}""#),
        "{text}"
    );
    let bad = tokio::task::block_in_place(|| init("wrong"));
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("rejected the bot's credentials"),
        "{bad:?}"
    );
}

#[test]
fn completions_are_printed_for_bash() {
    let out = Command::new(gateway_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("agent-chat-gateway") && script.contains("service"),
        "{script}"
    );
    let check = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn doctor_reports_each_check_and_fails_on_a_missing_agent() {
    let port = free_port();
    let good = MINIMAL
        .replace("PORT", &port.to_string())
        .replace("/bin/false", support::fake_agent::path());
    let g = Gateway::prepare(&good);
    let (code, out, _) = g.cli_text(&["doctor"]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ok   config ") && lines[0].ends_with(" is valid"),
        "{out}"
    );
    assert!(lines[1].starts_with("ok   agent 'a' (claude): "), "{out}");
    assert!(
        lines[2].starts_with("ok   agent 'a': credentials: ")
            || lines[2].starts_with(
                "warn agent 'a': no credential found for Claude Code: set ANTHROPIC_API_KEY"
            ),
        "{out}"
    );
    assert_eq!(
        lines[3],
        "warn agent 'a': permissions are off: tools are limited to the allow-lists, with no approvals"
    );
    assert_eq!(*lines.last().unwrap(), "ok   gateway not running");

    let missing = Gateway::prepare(
        &MINIMAL
            .replace("PORT", &port.to_string())
            .replace("/bin/false", "/nonexistent/agent"),
    );
    let (code, out, _) = missing.cli_text(&["doctor"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "FAIL agent 'a' (claude): cannot run `/nonexistent/agent`: No such file or directory"
        ),
        "{out}"
    );
}

#[test]
fn a_pipe_agent_validates_with_a_warning_and_doctor_checks_its_credential() {
    let port = free_port();
    let config = MINIMAL
        .replace("PORT", &port.to_string())
        .replace("type: claude", "type: codex")
        .replace("/bin/false", support::fake_agent::path());
    let g = Gateway::prepare(&config);
    let (code, out, err) = g.cli_text(&["config", "validate"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("warning: agents.a")
            && out.contains("not checked one by one")
            && out.contains("`type: acp` with `command: codex-acp`"),
        "{out}"
    );
    let (_, out, _) = g.cli_text(&["doctor"]);
    assert!(out.contains("warn config: agents.a"), "{out}");
    assert!(!out.contains("permissions are off"), "{out}");

    // Approvals cannot be switched on for it: an error, not a silent run without them.
    let gated = config.replace("type: codex,", "type: codex, permissions: {enabled: true},");
    assert_ne!(gated, config, "the config has the expected shape");
    let g = Gateway::prepare(&gated);
    let (code, _, err) = g.cli_text(&["config", "validate"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("type 'codex' cannot ask the gateway about each tool call"),
        "{err}"
    );
}

/// Checks JSON documents against a schema with the reference `jsonschema` validator (the
/// schema itself checked against the 2020-12 meta-schema first); prints `ok` or the first
/// error as `<path>: <message>`, one line per document.
const CHECK_SCHEMA: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema)
for name in sys.argv[2:]:
    errors = sorted(validator.iter_errors(json.load(open(name))), key=lambda e: list(e.absolute_path))
    if not errors:
        print("ok")
        continue
    # The deepest error names the key the author got wrong (not the `if`/`then` around it).
    best = max(errors, key=lambda e: len(e.absolute_path))
    while best.context:
        best = max(best.context, key=lambda e: len(e.absolute_path))
    print("/".join(str(p) for p in best.absolute_path) + ": " + best.message)
"#;

/// `config schema` is what the loader accepts: the shipped example and a file using every
/// agent type pass the reference validator (and `config validate`); files the loader refuses
/// for their shape fail it at the key at fault.
#[test]
fn config_schema_accepts_what_the_loader_accepts() {
    let Some(python) = support::deps::jsonschema_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    let out = Command::new(gateway_bin())
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(dir.path().join("schema.json"), &out.stdout).unwrap();

    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"))
            .unwrap();
    let every_agent = r#"
connectors:
  - {name: web, type: webchat, listen: "127.0.0.1:0", allowed_users: {owners: [me]}}
default_agent: claude
agents:
  claude: {type: claude, working_directory: ./work, permissions: {enabled: true, timeout: 60}}
  acp: {type: acp, working_directory: ./work, idle_timeout: 60, permissions: {enabled: true}}
  codex: {type: codex, working_directory: ./work, owner_allowed_tools: [readonly, {tool: Bash, params: "^ls"}]}
  gemini: {type: gemini, working_directory: ./work, confinement: required}
  opencode: {type: opencode, working_directory: ./work, env: {A: b}}
watchers:
  - {name: w, connector: web, room: "*"}
tool_presets:
  readonly: [{tool: Read}, {tool: Grep}]
max_queue_depth: 10
admin: {listen: "127.0.0.1:9464"}
log: {max_size_mb: 5, keep: 2}
"#;
    let wrong = |from: &str, to: &str| {
        assert!(every_agent.contains(from), "{from}");
        every_agent.replacen(from, to, 1)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("example", example, "ok"),
        ("every_agent", every_agent.to_string(), "ok"),
        (
            "unknown_top_key",
            wrong("max_queue_depth: 10", "max_queue_dept: 10"),
            "Additional properties are not allowed ('max_queue_dept' was unexpected)",
        ),
        (
            "other_types_key",
            wrong(
                "type: claude, working_directory",
                "type: claude, idle_timeout: 5, working_directory",
            ),
            "agents/claude: Additional properties are not allowed ('idle_timeout' was unexpected)",
        ),
        (
            "wrong_value_type",
            wrong("listen: \"127.0.0.1:0\"", "listen: 8080"),
            "connectors/0/listen: 8080 is not of type 'string'",
        ),
        (
            "unknown_agent_type",
            wrong("type: gemini", "type: gemeni"),
            "agents/gemini/type: 'gemeni' is not one of",
        ),
        (
            "no_working_directory",
            wrong(
                "opencode: {type: opencode, working_directory: ./work,",
                "opencode: {type: opencode,",
            ),
            "agents/opencode: 'working_directory' is a required property",
        ),
    ];
    let mut files = Vec::new();
    for (name, yaml, _) in &cases {
        std::fs::write(dir.path().join(format!("{name}.yaml")), yaml).unwrap();
        let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, value.to_string()).unwrap();
        files.push(file);
    }
    let out = Command::new(python)
        .arg("-c")
        .arg(CHECK_SCHEMA)
        .arg(dir.path().join("schema.json"))
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let verdicts = String::from_utf8(out.stdout).unwrap();
    let verdicts: Vec<&str> = verdicts.lines().collect();
    assert_eq!(verdicts.len(), cases.len(), "{verdicts:?}");
    for ((name, _, expected), verdict) in cases.iter().zip(&verdicts) {
        assert!(
            verdict.starts_with(expected) || (*expected != "ok" && verdict.contains(expected)),
            "{name}: expected `{expected}`, the validator said `{verdict}`"
        );
        // The loader agrees: what the schema passes loads, what it refuses does not.
        let (code, _, err) = validate(dir.path(), &format!("{name}.yaml"));
        assert_eq!(
            code == 0,
            *expected == "ok",
            "{name}: config validate said {err}"
        );
    }
}
