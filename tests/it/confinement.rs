//! OS confinement of agent processes, through the one spawn path every backend uses
//! (`AgentProcess::spawn` with a `Sandbox` in its spec): a confined shell cannot read or write
//! the protected runtime dir, cannot write outside its work dir and private tmp, cannot signal
//! or inspect the gateway, and still works normally where it is allowed to.
//!
//! The acceptance test at the end goes through the real daemon and the real Claude Code CLI:
//! tool calls the allow-list permits (and whose paths are hex-encoded, so no string analysis
//! can see them) still cannot read the web chat token file or write into the runtime dir.
//!
//! These need Landlock (ABI 6 or later for the signal scope). Without it they fail rather than
//! pass vacuously: the machines this project runs its tests on have it.

use std::path::{Path, PathBuf};

use agent_chat_gateway::agent::confine::{self, ConfinementMode, RunAs, Sandbox};
use agent_chat_gateway::agent::process::{AgentProcess, ProcessSpec};
use serde_json::json;

use crate::support::daemon::{claude_agent, gateway_bin, webchat_config, Gateway};
use crate::support::fake_llm::{self, bash_turn, FakeLlm};
use crate::support::ports::free_port;
use crate::support::webclient::WebClient;

struct Layout {
    _dir: tempfile::TempDir,
    runtime: PathBuf,
    token: PathBuf,
    work: PathBuf,
    tmp: PathBuf,
    outside: PathBuf,
}

fn layout() -> Layout {
    assert!(
        confine::abi() >= 6,
        "these tests need Landlock ABI 6+; this kernel reports {}",
        confine::abi()
    );
    let dir = tempfile::tempdir().unwrap();
    let base = confine::real_path(dir.path());
    let runtime = base.join("runtime");
    let work = base.join("work");
    let tmp = runtime.join("agents/a/tmp");
    let outside = base.join("outside");
    for d in [&work, &tmp, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    let token = runtime.join("webchat-tokens.json");
    std::fs::write(&token, "TOKEN-SECRET").unwrap();
    std::fs::write(outside.join("notes.txt"), "readable notes").unwrap();
    Layout {
        _dir: dir,
        runtime,
        token,
        work,
        tmp,
        outside,
    }
}

fn sandbox(l: &Layout) -> Sandbox {
    Sandbox {
        mode: ConfinementMode::Required,
        protected: vec![l.runtime.clone()],
        writable: vec![l.work.clone()],
        private_tmp: Some(l.tmp.clone()),
        readable_files: vec![],
        user: None,
    }
}

/// Runs `script` under `sh -c` in the work dir; returns (exit code, stdout, stderr).
async fn run(l: &Layout, sandbox: Option<Sandbox>, script: &str) -> (i32, String, String) {
    let spec = ProcessSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        cwd: l.work.clone(),
        env: vec![("TMPDIR".into(), l.tmp.display().to_string())],
        sandbox,
        ..Default::default()
    };
    let mut p = AgentProcess::spawn(&spec).expect("spawn");
    let mut out = Vec::new();
    while let Some(line) = p.next_line().await.unwrap() {
        out.push(line);
    }
    let status = p.wait().await.unwrap();
    (status.code().unwrap_or(-1), out.join("\n"), p.stderr_tail())
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[tokio::test]
async fn the_protected_runtime_dir_can_be_neither_read_nor_written() {
    let l = layout();
    // Unconfined, the same commands work: the test proves the denial comes from confinement.
    let (code, out, _) = run(&l, None, &format!("cat {}", q(&l.token))).await;
    assert_eq!((code, out.as_str()), (0, "TOKEN-SECRET"));

    let s = || Some(sandbox(&l));
    let (code, out, err) = run(&l, s(), &format!("cat {}", q(&l.token))).await;
    assert_ne!(code, 0);
    assert!(!out.contains("TOKEN-SECRET"), "{out}");
    assert!(err.contains("Permission denied"), "{err}");

    let (code, _, err) = run(&l, s(), &format!("ls {}", q(&l.runtime))).await;
    assert_ne!(code, 0, "listing the runtime dir");
    assert!(err.contains("Permission denied"), "{err}");

    let planted = l.runtime.join("planted.txt");
    let (code, _, err) = run(&l, s(), &format!("echo x > {}", q(&planted))).await;
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!planted.exists());

    // Nor by renaming a file out of it, nor through a symlink made in the work dir.
    let (code, _, _) = run(
        &l,
        s(),
        &format!(
            "mv {} stolen; ln -s {} link; cat link",
            q(&l.token),
            q(&l.token)
        ),
    )
    .await;
    assert_ne!(code, 0);
    assert!(l.token.exists(), "the token file was moved");
    assert!(!l.work.join("stolen").exists());
}

#[tokio::test]
async fn writes_go_only_to_the_work_dir_the_private_tmp_and_devices() {
    let l = layout();
    let s = || Some(sandbox(&l));
    let script = format!(
        "echo w > in-work.txt && mkdir -p sub/deep && echo t > \"$TMPDIR/t.txt\" \
         && echo n > /dev/null && touch /dev/shm/acg-$$ && rm /dev/shm/acg-$$ \
         && cat {} && cat /etc/hostname > /dev/null && echo done",
        q(&l.outside.join("notes.txt"))
    );
    let (code, out, err) = run(&l, s(), &script).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("readable notes") && out.ends_with("done"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(l.work.join("in-work.txt")).unwrap(),
        "w\n"
    );
    assert!(l.tmp.join("t.txt").exists());

    // Readable is not writable: the rest of the system is read-only.
    let target = l.outside.join("written.txt");
    let (code, _, err) = run(&l, s(), &format!("echo x > {}", q(&target))).await;
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(!target.exists());
    let (code, _, _) = run(&l, s(), "touch /tmp/acg-confinement-escape-$$").await;
    assert_ne!(code, 0, "the shared /tmp is not writable");
    let (code, _, _) = run(&l, s(), &format!("rm {}", q(&l.outside.join("notes.txt")))).await;
    assert_ne!(code, 0);
    assert!(l.outside.join("notes.txt").exists());
}

#[tokio::test]
async fn the_gateway_cannot_be_signalled_or_inspected() {
    let l = layout();
    let me = std::process::id();
    // The test process stands in for the gateway: it is outside the agent's domain.
    let (code, _, _) = run(&l, Some(sandbox(&l)), &format!("kill -0 {me}")).await;
    assert_ne!(code, 0, "a confined agent could signal the gateway");
    // Its memory (ptrace "attach" access) is out of reach; so are its open files through
    // /proc, since Landlock checks the file itself, not the path used to reach it.
    let (code, _, err) = run(&l, Some(sandbox(&l)), &format!("head -c1 /proc/{me}/mem")).await;
    assert_ne!(code, 0, "read the gateway's memory");
    assert!(err.contains("Permission denied"), "{err}");
    let held = std::fs::File::open(&l.token).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    let (code, out, _) = run(&l, Some(sandbox(&l)), &format!("cat /proc/{me}/fd/{fd}")).await;
    assert_ne!(code, 0, "read the token through the gateway's fd: {out}");
    assert!(!out.contains("TOKEN-SECRET"));
    drop(held);
    // Its own children remain its business.
    let (code, out, err) = run(&l, Some(sandbox(&l)), "sleep 5 & kill $! && echo ok").await;
    assert_eq!((code, out.as_str()), (0, "ok"), "{err}");
}

#[tokio::test]
async fn a_granted_file_inside_the_runtime_dir_is_readable_and_nothing_beside_it() {
    let l = layout();
    let settings = l.runtime.join("agents/a/hook-settings-1.json");
    std::fs::write(&settings, "{\"run\":1}").unwrap();
    let other = l.runtime.join("agents/a/hook-settings-2.json");
    std::fs::write(&other, "{\"run\":2}").unwrap();
    let mut s = sandbox(&l);
    s.readable_files = vec![settings.clone()];
    let (code, out, err) = run(&l, Some(s.clone()), &format!("cat {}", q(&settings))).await;
    assert_eq!((code, out.as_str()), (0, "{\"run\":1}"), "{err}");
    let (code, out, _) = run(&l, Some(s.clone()), &format!("cat {}", q(&other))).await;
    assert_ne!(code, 0, "{out}");
    let (code, _, _) = run(&l, Some(s), &format!("echo x >> {}", q(&settings))).await;
    assert_ne!(code, 0, "a granted file is read-only");
}

#[tokio::test]
async fn a_work_dir_holding_the_runtime_dir_is_refused() {
    let l = layout();
    let mut s = sandbox(&l);
    s.writable = vec![l.runtime.parent().unwrap().to_path_buf()];
    let spec = ProcessSpec {
        program: "/bin/true".into(),
        cwd: l.work.clone(),
        sandbox: Some(s),
        ..Default::default()
    };
    let err = AgentProcess::spawn(&spec).err().expect("refused");
    assert!(err.to_string().contains("overlaps"), "{err}");
}

#[tokio::test]
async fn run_as_drops_to_the_user_with_its_groups() {
    let l = layout();
    let user = match RunAs::resolve("nobody") {
        Ok(u) => u,
        Err(e) => {
            // Not root: the refusal must say how to do it instead.
            assert!(!nix::unistd::geteuid().is_root(), "{e}");
            assert!(e.to_string().contains("sudo"), "{e}");
            return;
        }
    };
    // `nobody` must be able to enter the work dir.
    use std::os::unix::fs::PermissionsExt;
    for d in [l.work.as_path(), l.work.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut s = sandbox(&l);
    s.user = Some(user.clone());
    let (code, out, err) = run(&l, Some(s), "id -u; id -g; id -G").await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], user.uid.to_string());
    assert_eq!(lines[1], user.gid.to_string());
    let groups: Vec<u32> = lines[2]
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert!(!groups.contains(&0), "root's groups were kept: {groups:?}");
    assert!(RunAs::resolve("root").is_err(), "run_as root is refused");
}

/// A Python one-liner opening a path the policy cannot read in the command text.
fn py_hidden(path: &Path, body: &str) -> String {
    let hex: String = path
        .display()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("python3 -c \"p=bytes.fromhex('{hex}').decode(); {body}\"")
}

/// Every `tool_result` the CLI sent back to the model, in order: (is_error, text).
fn tool_results(llm: &FakeLlm) -> Vec<(bool, String)> {
    let last = llm.message_requests().pop().expect("a model call");
    last.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            (
                b["is_error"].as_bool().unwrap_or(false),
                fake_llm::text_of(&b["content"]),
            )
        })
        .collect()
}

/// `home_holds_runtime`: the agent's HOME contains the gateway's runtime dir and config (the
/// default layout, `~/.agent-chat-gateway`), so HOME cannot be writable and the CLI's state
/// moves into `~/.claude` (`CLAUDE_CONFIG_DIR`).
async fn allowed_calls_cannot_reach_the_runtime_dir(home_holds_runtime: bool) {
    assert!(confine::abi() >= 1, "Landlock is needed for this test");
    let rules = r#"    permissions: {enabled: true, timeout: 60}
    owner_allowed_tools: [{tool: Bash, params: "python3 .*"}]
    confinement: required"#;
    let script = json!({"scenarios": [], "default_text": "OK"});
    let Some(mut agent) = claude_agent(script, rules).await else {
        return;
    };
    if home_holds_runtime {
        // The gateway's temp dir holds runtime/, config.yaml and work/: make it the HOME.
        let start = agent.yaml.find("HOME: \"").unwrap();
        let end = start + agent.yaml[start..].find("\"}").unwrap();
        agent.yaml.replace_range(start..end, "HOME: \"{work}/..");
    }
    let port = free_port();
    let gateway = Gateway::start(&webchat_config(port, &agent.yaml, ""));
    let alice = WebClient::new(port, &gateway.token_for("alice"));
    let llm = agent.llm;
    let token_file = gateway.runtime.join("webchat-local.tokens.json");
    assert!(
        token_file.exists(),
        "the web chat token file is where the test expects it"
    );
    let planted = gateway.runtime.join("planted-by-agent.txt");
    let call = |cmd: String| bash_turn("Running.", &cmd);
    llm.set_script(json!({"scenarios": [{"match": "CONFINE", "turns": [
        call(py_hidden(&token_file, "print('LEAKED', open(p).read())")),
        call(py_hidden(&planted, "open(p, 'w').write('x'); print('PLANTED')")),
        call("python3 -c \"open('work-ok.txt', 'w').write('fine'); print('WORK', open('work-ok.txt').read())\"".into()),
        {"text": "after"}
    ]}], "default_text": "OK"}));

    let replies = alice.ask("r1", "CONFINE go").await;
    assert_eq!(
        replies.last().unwrap().text.lines().last(),
        Some("after"),
        "{replies:?}"
    );
    let results = tool_results(&llm);
    assert_eq!(results.len(), 3, "{results:?}");
    let (read_err, read) = &results[0];
    assert!(
        *read_err && read.contains("PermissionError"),
        "token read: {read}"
    );
    assert!(!read.contains("LEAKED"), "{read}");
    let (write_err, write) = &results[1];
    assert!(
        *write_err && write.contains("PermissionError"),
        "runtime write: {write}"
    );
    assert!(!planted.exists(), "the agent wrote into the runtime dir");
    let (work_err, work) = &results[2];
    assert!(!*work_err && work.contains("WORK fine"), "work dir: {work}");
    assert!(gateway.work.join("work-ok.txt").exists());
    // The calls really were allowed: the policy said yes, the kernel said no.
    let decisions = gateway.audit();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(
        decisions.iter().all(|d| d["decision"] == "allow"),
        "{decisions:?}"
    );
    // Start-up said what is enforced.
    assert!(
        gateway.log().contains("agent confinement (Landlock)"),
        "{}",
        gateway.log()
    );
    if home_holds_runtime {
        assert!(
            gateway.dir.path().join(".claude").is_dir(),
            "the CLI state went to ~/.claude"
        );
        assert!(!gateway.dir.path().join(".claude.json").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cli_allowed_calls_cannot_read_the_token_file_or_write_the_runtime_dir() {
    allowed_calls_cannot_reach_the_runtime_dir(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cli_confined_with_the_runtime_dir_inside_its_home() {
    allowed_calls_cannot_reach_the_runtime_dir(true).await;
}

#[test]
fn doctor_reports_the_abi_the_grants_and_what_cannot_be_confined() {
    let dir = tempfile::tempdir().unwrap();
    let base = confine::real_path(dir.path());
    std::fs::create_dir_all(base.join("work")).unwrap();
    let config = base.join("config.yaml");
    std::fs::write(
        &config,
        r#"
connectors:
  - {name: local, type: webchat, listen: "127.0.0.1:0", allowed_users: {owners: [me]}}
agents:
  assistant: {type: claude, command: /bin/true, working_directory: ./work, confinement: required}
  sloppy: {type: claude, command: /bin/true, working_directory: ., writable_paths: [./missing]}
default_agent: assistant
watchers:
  - {name: all, connector: local, room: "*", agent: assistant}
"#,
    )
    .unwrap();
    let runtime = base.join("runtime");
    let out = std::process::Command::new(gateway_bin())
        .args(["doctor", "--config"])
        .arg(&config)
        .env("ACG_HOME", &runtime)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let abi = confine::abi();
    assert!(
        text.contains(&format!(
            "ok   agent 'assistant': confinement required — Landlock ABI {abi}: "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "agent 'assistant': denied: {}, {} (read and write)",
            runtime.display(),
            config.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "agent 'assistant': writable: {}",
            base.join("work").display()
        )),
        "{text}"
    );
    assert!(text.contains("agent 'assistant': run_as not set"), "{text}");
    // A working directory holding the runtime dir and the config cannot be confined.
    assert!(
        text.contains("FAIL agent 'sloppy': cannot confine the agent: writable path"),
        "{text}"
    );
    assert!(text.contains("missing does not exist"), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// `run_as` end to end, as root: the CLI and its tools run as `nobody`, the hook (whose
/// settings file that user must be able to read) still decides, and the runtime dir stays shut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cli_run_as_runs_the_agent_as_that_user() {
    use std::os::unix::fs::PermissionsExt;
    let Ok(nobody) = RunAs::resolve("nobody") else {
        // Only root may switch users; the refusal itself is tested above.
        assert!(!nix::unistd::geteuid().is_root());
        return;
    };
    let rules = r#"    permissions: {enabled: true, timeout: 60}
    owner_allowed_tools: [{tool: Bash, params: "python3 .*"}]
    run_as: nobody"#;
    let script = json!({"scenarios": [], "default_text": "OK"});
    let Some(agent) = claude_agent(script, rules).await else {
        return;
    };
    let (llm, home) = (agent.llm, agent.home);
    let port = free_port();
    let mut gateway = Gateway::prepare(&webchat_config(port, &agent.yaml, ""));
    // What an admin does for a separate agent user: it owns its HOME and work dir, and can
    // traverse (not list) the folder above them.
    std::os::unix::fs::chown(home.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    std::os::unix::fs::chown(&gateway.work, Some(nobody.uid), Some(nobody.gid)).unwrap();
    std::fs::set_permissions(gateway.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    gateway.start_again();
    let alice = WebClient::new(port, &gateway.token_for("alice"));
    let token_file = gateway.runtime.join("webchat-local.tokens.json");
    let call = |cmd: String| bash_turn("Running.", &cmd);
    llm.set_script(json!({"scenarios": [{"match": "RUN-AS", "turns": [
        call("python3 -c \"import os; open('mine.txt', 'w').write('x'); print('UID', os.getuid(), os.getgroups(), 'TMP', os.environ['TMPDIR'])\"".into()),
        call(py_hidden(&token_file, "print('LEAKED', open(p).read())")),
        {"text": "after"}
    ]}], "default_text": "OK"}));

    let replies = alice.ask("r1", "RUN-AS go").await;
    assert_eq!(
        replies.last().unwrap().text.lines().last(),
        Some("after"),
        "{replies:?}"
    );
    let results = tool_results(&llm);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(
        !results[0].0 && results[0].1.contains(&format!("UID {}", nobody.uid)),
        "{results:?}"
    );
    assert!(
        !results[0].1.contains("[0"),
        "root's groups kept: {results:?}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(gateway.work.join("mine.txt"))
            .unwrap()
            .uid(),
        nobody.uid
    );
    assert!(
        results[1].0 && !results[1].1.contains("LEAKED"),
        "{results:?}"
    );
    let audit = gateway.audit();
    assert_eq!(audit.len(), 2, "the hook decided both calls: {audit:?}");
    // Its private tmp is outside the runtime dir (it could not traverse it), its own, and
    // removed when the daemon stops.
    let tmp = PathBuf::from(results[0].1.split("TMP ").nth(1).unwrap().trim());
    assert!(!tmp.starts_with(&gateway.runtime), "{}", tmp.display());
    assert_eq!(std::fs::metadata(&tmp).unwrap().uid(), nobody.uid);
    gateway.stop();
    assert!(!tmp.exists(), "{} is left behind", tmp.display());
}
