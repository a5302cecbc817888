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
