//! Decision tables: (role, rules, tool, input) → decision word, plus the report format.

use super::*;
use serde_json::{json, Value};

/// `Tool` or `Tool(params)`, as rules are shown.
fn rules(specs: &[&str]) -> RuleSet {
    RuleSet::new(
        specs
            .iter()
            .map(|s| match s.split_once('(') {
                Some((tool, rest)) => Rule::new(tool, Some(rest.strip_suffix(')').unwrap())),
                None => Rule::new(s, None),
            })
            .collect::<Result<_, _>>()
            .unwrap(),
    )
}

struct Case {
    role: Role,
    rules: &'static [&'static str],
    skip: bool,
    tool: &'static str,
    input: Value,
    expect: &'static str,
}

fn run(case: &Case, guard: &Guard) -> PolicyOutcome {
    let set = rules(case.rules);
    decide(&PolicyInput {
        role: case.role,
        tool: case.tool,
        input: &case.input,
        cwd: Path::new("/project"),
        owner_rules: &set,
        guest_rules: &set,
        skip_owner_approval: case.skip,
        guard,
    })
}

fn case(
    role: Role,
    rules: &'static [&'static str],
    tool: &'static str,
    input: Value,
    expect: &'static str,
) -> Case {
    Case {
        role,
        rules,
        skip: false,
        tool,
        input,
        expect,
    }
}

use Role::{Guest, Owner};

#[test]
fn decisions_without_guard() {
    let bash = |c: &str| json!({ "command": c });
    let read = |p: &str| json!({ "file_path": p });
    let cases = vec![
        // Conformance rows 36–42 and the verified extras.
        case(Guest, &["Bash(ls.*)"], "Bash", bash("ls -la"), "allow"),
        case(
            Guest,
            &["Bash(ls.*)", "Bash(echo.*)"],
            "Bash",
            bash("ls -la && rm -rf /"),
            "deny",
        ),
        case(
            Guest,
            &["Bash(ls.*)", "Bash(echo.*)"],
            "Bash",
            bash("ls -la; echo hello"),
            "allow",
        ),
        case(Guest, &[], "Bash", bash("ls"), "deny"),
        case(Guest, &["Read"], "Bash", bash("ls"), "deny"),
        case(Guest, &[".*(.*)"], "Bash", bash("rm -rf /"), "allow"),
        case(Guest, &["bash(ls)"], "BASH", bash("ls"), "allow"),
        case(
            Owner,
            &["Bash(git (log|diff).*)"],
            "Bash",
            bash("git log -1"),
            "allow",
        ),
        case(
            Owner,
            &["Bash(git (log|diff).*)"],
            "Bash",
            bash("git log && rm -rf /"),
            "ask",
        ),
        case(Guest, &["Read"], "Read", read("/etc/passwd"), "allow"),
        case(Guest, &["Bash(git.*)"], "Bash", bash("git log"), "allow"),
        case(Owner, &[], "Bash", bash("ls"), "ask"),
        // Rows 9–16: tool names full-match and case-insensitive.
        case(Guest, &["read"], "READ", read("/any/path"), "allow"),
        case(Guest, &["Rea"], "Read", read("/any/path"), "deny"),
        case(
            Guest,
            &["mcp__rocketchat__.*"],
            "mcp__rocketchat__send_message",
            json!({"text": "hi"}),
            "allow",
        ),
        case(
            Guest,
            &["mcp__rocketchat__.*"],
            "mcp__slack__send_message",
            json!({"text": "hi"}),
            "deny",
        ),
        case(Guest, &["Bash(ls)"], "Bash", bash("ls -la"), "deny"),
        case(
            Guest,
            &["Read(/project/.*)"],
            "Read",
            read("/project/../../../etc/passwd"),
            "deny",
        ),
        case(
            Guest,
            &["Write(/project/.*)"],
            "Write",
            read("/project/../../../etc/shadow"),
            "deny",
        ),
        case(
            Guest,
            &["Read(/project/.*)"],
            "Read",
            read("src/main.py"),
            "allow",
        ),
        case(
            Guest,
            &["Skill(daily-briefing)"],
            "Skill",
            json!({"skill": "daily-briefing"}),
            "allow",
        ),
        case(
            Guest,
            &["Skill(daily-briefing)"],
            "Skill",
            json!({"skill": "some-other-skill"}),
            "deny",
        ),
        case(
            Guest,
            &["WebFetch(https://example\\.com/.*)"],
            "WebFetch",
            json!({"url": "https://example.com/a"}),
            "allow",
        ),
        // Problems are never an allow.
        case(Guest, &["Read"], "Read", json!({}), "deny"),
        case(Owner, &["Read"], "Read", json!({}), "ask"),
        case(Guest, &["Bash(.*)"], "Bash", bash("$CMD"), "deny"),
        case(Owner, &["Bash(.*)"], "Bash", bash("echo 'oops"), "ask"),
        case(Guest, &["Bash(.*)"], "Bash", json!({"command": 1}), "deny"),
        // ToolSearch is harmless (row 48).
        case(Guest, &[], "ToolSearch", json!({"query": "x"}), "allow"),
        case(Owner, &[], "ToolSearch", json!({"query": "x"}), "allow"),
        // Closed gaps: substitutions, redirects and wrapped commands need their own rules.
        case(
            Guest,
            &["Bash(echo .*)"],
            "Bash",
            bash("echo $(rm -rf /)"),
            "deny",
        ),
        case(
            Guest,
            &["Bash(echo .*)"],
            "Bash",
            bash("echo x > /etc/passwd"),
            "deny",
        ),
        case(
            Guest,
            &["Bash(echo .*)", "Bash(write:/project/.*)"],
            "Bash",
            bash("echo x > out.txt"),
            "allow",
        ),
        case(
            Guest,
            &["Bash(find .*)"],
            "Bash",
            bash("find . -exec rm {} \\;"),
            "deny",
        ),
        case(
            Guest,
            &["Bash(bash -c .*)"],
            "Bash",
            bash("bash -c 'rm -rf /'"),
            "deny",
        ),
    ];
    for c in &cases {
        let out = run(c, &Guard::none());
        assert_eq!(
            out.decision.word(),
            c.expect,
            "{} {:?} {} {} → {:?}",
            c.role,
            c.rules,
            c.tool,
            c.input,
            out.decision
        );
    }
}

#[test]
fn skip_owner_approval_applies_to_owners_only() {
    let input = json!({"command": "rm -rf build"});
    for (role, expect) in [(Owner, "allow"), (Guest, "deny")] {
        let c = Case {
            role,
            rules: &["Bash(ls)"],
            skip: true,
            tool: "Bash",
            input: input.clone(),
            expect,
        };
        assert_eq!(run(&c, &Guard::none()).decision.word(), expect, "{role}");
    }
    // An unsupported construct still needs a human.
    let c = Case {
        role: Owner,
        rules: &[],
        skip: true,
        tool: "Bash",
        input: json!({"command": "$CMD"}),
        expect: "ask",
    };
    assert_eq!(run(&c, &Guard::none()).decision.word(), "ask");
}

fn test_guard() -> Guard {
    Guard::new("/home/agent/.agent-chat-gateway")
        .with_home(Path::new("/home/agent"))
        .with_readable("/home/agent/.agent-chat-gateway/attachments")
        .with_own_room(Some("rc"), "GENERAL")
}

#[test]
fn guard_denies_the_control_plane_whatever_the_rules() {
    let bash = |c: &str| json!({ "command": c });
    let denied = vec![
        ("Bash", bash("agent-chat-gateway stop")),
        (
            "Bash",
            bash("/usr/local/bin/agent-chat-gateway approve a3k9"),
        ),
        ("Bash", bash("env agent-chat-gateway list")),
        ("Bash", bash("sudo -u me agent-chat-gateway list")),
        ("Bash", bash("bash -c 'agent-chat-gate\"way\" stop'")),
        ("Bash", bash("agent-chat-gateway send OTHER hi")),
        (
            "Bash",
            bash("agent-chat-gateway send GENERAL hi --connector qq"),
        ),
        ("Bash", bash("agent-chat-gateway send $ROOM hi")),
        ("Bash", bash("cat ~/.agent-chat-gateway/audit.jsonl")),
        ("Bash", bash("socat - UNIX-CONNECT:/tmp/x/control.sock")),
        ("Bash", bash("echo $ACG_HOOK_SECRET")),
        ("Bash", bash("env")),
        ("Bash", bash("printenv HOME")),
        ("Bash", bash("set")),
        ("Bash", bash("export -p")),
        ("Bash", bash("cat /proc/self/environ")),
        (
            "Bash",
            bash("echo x > $HOME/.agent-chat-gateway/state.rc.json"),
        ),
        (
            "Read",
            json!({"file_path": "/home/agent/.agent-chat-gateway/audit.jsonl"}),
        ),
        (
            "Read",
            json!({"file_path": "/home/agent/project/../.agent-chat-gateway/gateway.pid"}),
        ),
        (
            "Grep",
            json!({"pattern": "token", "path": "/home/agent/.agent-chat-gateway"}),
        ),
        (
            "Glob",
            json!({"pattern": "*", "path": "../.agent-chat-gateway"}),
        ),
        (
            "mcp__x__y",
            json!({"file": "/home/agent/.agent-chat-gateway/tokens.json"}),
        ),
    ];
    let guard = test_guard();
    let all = rules(&[".*", ".*(.*)"]);
    for (tool, input) in denied {
        for role in [Guest, Owner] {
            let out = decide(&PolicyInput {
                role,
                tool,
                input: &input,
                cwd: Path::new("/home/agent/project"),
                owner_rules: &all,
                guest_rules: &all,
                skip_owner_approval: true,
                guard: &guard,
            });
            assert_eq!(
                out.decision.word(),
                "deny",
                "{tool} {input} {role}: {:?}",
                out.decision
            );
            assert!(
                out.decision
                    .reason()
                    .starts_with("blocked: touches the gateway's control plane"),
                "{tool} {input}: {:?}",
                out.decision
            );
        }
    }
}

#[test]
fn guard_lets_ordinary_work_through() {
    let bash = |c: &str| json!({ "command": c });
    let allowed = vec![
        ("Bash", bash("agent-chat-gateway send GENERAL 'build done'")),
        (
            "Bash",
            bash("agent-chat-gateway send GENERAL - --connector rc"),
        ),
        (
            "Bash",
            bash("agent-chat-gateway send --attach report.pdf GENERAL"),
        ),
        ("Bash", bash("env FOO=1 cargo test")),
        ("Bash", bash("set -euo pipefail; ls")),
        ("Bash", bash("export PATH=$PATH:/opt/bin")),
        ("Bash", bash("cat agent-chat-gateway/README.md")),
        (
            "Read",
            json!({"file_path": "/home/agent/.agent-chat-gateway/attachments/cat.png"}),
        ),
        (
            "Read",
            json!({"file_path": "/home/agent/project/src/main.rs"}),
        ),
    ];
    let guard = test_guard();
    let all = rules(&[".*", ".*(.*)"]);
    for (tool, input) in allowed {
        let out = decide(&PolicyInput {
            role: Guest,
            tool,
            input: &input,
            cwd: Path::new("/home/agent/project"),
            owner_rules: &all,
            guest_rules: &all,
            skip_owner_approval: false,
            guard: &guard,
        });
        assert_eq!(
            out.decision.word(),
            "allow",
            "{tool} {input}: {:?}",
            out.decision
        );
    }
}

#[test]
fn guard_denies_any_call_from_inside_the_runtime_dir() {
    let guard = test_guard();
    let all = rules(&[".*"]);
    let out = decide(&PolicyInput {
        role: Owner,
        tool: "Bash",
        input: &json!({"command": "cat audit.jsonl"}),
        cwd: Path::new("/home/agent/.agent-chat-gateway"),
        owner_rules: &all,
        guest_rules: &all,
        skip_owner_approval: true,
        guard: &guard,
    });
    assert_eq!(out.decision.word(), "deny");
}

#[test]
fn reasons_name_the_rules_and_the_unmatched_commands() {
    let set = rules(&["Bash(git log.*)", "Bash(head.*)"]);
    let decide_owner = |command: &str| {
        decide(&PolicyInput {
            role: Owner,
            tool: "Bash",
            input: &json!({ "command": command }),
            cwd: Path::new("/project"),
            owner_rules: &set,
            guest_rules: &set,
            skip_owner_approval: false,
            guard: &Guard::none(),
        })
        .decision
    };
    assert_eq!(
        decide_owner("git log --oneline | head -20"),
        Decision::Allow {
            reason: "matches the owner allow-list: Bash(git log.*), Bash(head.*)".to_string()
        }
    );
    assert_eq!(
        decide_owner("git log; a; b; c; d"),
        Decision::Ask {
            reason: "not in the owner allow-list: `a`, `b`, `c`, and 1 more".to_string()
        }
    );
}

#[test]
fn render_check_plain_and_json() {
    let outcome = PolicyOutcome {
        decision: Decision::Ask {
            reason: "not in the owner allow-list: `rm -rf /`".to_string(),
        },
        parameters: vec!["echo hi".to_string(), "python3 <<EOF\nx\nEOF".to_string()],
        unmatched: vec!["python3 <<EOF\nx\nEOF".to_string()],
    };
    assert_eq!(
        render_check(&outcome, false),
        "ask: not in the owner allow-list: `rm -rf /`\n  echo hi\n  python3 <<EOF\\nx\\nEOF\n"
    );
    let json: Value = serde_json::from_str(&render_check(&outcome, true)).unwrap();
    assert_eq!(
        json,
        json!({
            "decision": "ask",
            "reason": "not in the owner allow-list: `rm -rf /`",
            "parameters": ["echo hi", "python3 <<EOF\nx\nEOF"],
        })
    );
}
