//! The real OpenCode, Codex and Gemini CLIs, headless, against `fake_llm` in an isolated HOME
//! (`support::agent_homes`): the contract for the backends of those CLIs. Each test scripts a
//! shell call (`{"shell": …}`), checks the command really ran in the work dir, that the
//! CLI's JSON output carries the final text, that the tool result went back to the model,
//! and that a second prompt on the same session carries the first exchange. Also: `opencode
//! acp` and `gemini --acp` answer an ACP `initialize`.
//!
//! Every CLI runs with `env_clear()`, `PATH` and the `agent_homes` environment only, in its
//! own process group, killed at the end. Facts found on the way are in each test's doc.
//!
//! ACP `initialize` (protocolVersion 1, fs/terminal off), seen on this machine:
//! - `opencode acp` (1.5–1.9 s): `agentInfo {name: "OpenCode", version: "1.18.33"}`,
//!   `loadSession: true`, `sessionCapabilities {close, fork, list, resume}`, prompt
//!   `image`/`embeddedContext`, MCP `http`/`sse`, one auth method `opencode-login`.
//! - `gemini --acp` (about 1.5 s): `agentInfo {name: "gemini-cli", title: "Gemini CLI",
//!   version: "0.61.0"}`, `loadSession: true`, no `sessionCapabilities`, prompt
//!   `image`/`audio`/`embeddedContext`, MCP `http`/`sse`, auth methods `oauth-personal`,
//!   `gemini-api-key`, `vertex-ai`, `gateway`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::fake_llm::{bash_scenario, FakeLlm, LoggedRequest};
use crate::support::{agent_homes, deps};

/// A headless run per prompt: generous for a loaded 2-core machine (one prompt with one
/// tool call takes 0.3 s to 4 s).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// What one CLI run printed.
struct Run {
    /// The stdout lines that are JSON (the CLIs' event streams).
    events: Vec<Value>,
    stderr: String,
    status: std::process::ExitStatus,
}

/// Runs `bin args` in `work` with only `PATH` and `env`, stdin from /dev/null, in its own
/// process group (killed afterwards, so no grandchild outlives the test).
async fn run(bin: &Path, args: &[&str], env: &[(String, String)], work: &Path) -> Run {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the CLI");
    let pgid = child.id().expect("child pid") as i32;
    let out = tokio::time::timeout(RUN_LIMIT, async {
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let (r1, r2) = tokio::join!(
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut o),
            tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut e)
        );
        r1.and(r2).expect("read the CLI's output");
        let status = child.wait().await.expect("wait for the CLI");
        (o, e, status)
    })
    .await;
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let (stdout, stderr, status) = out
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in {RUN_LIMIT:?}", bin.display()));
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    eprintln!(
        "{} {args:?}: {status} in {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        bin.display(),
        started.elapsed()
    );
    Run {
        events: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stderr,
        status,
    }
}

/// The scenario every CLI follows: the first prompt runs a shell command that writes a file
/// and prints a marker, the second call answers with the final text, the resumed prompt
/// gets the third turn.
fn script(marker: &str) -> Value {
    let mut scenario = bash_scenario(
        marker,
        "I'll create the file.",
        "echo tool-said-hello | tee out.txt",
        "Done: out.txt now contains hello.",
    );
    scenario["turns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"text": "Second prompt answered (resumed)."}));
    json!({"scenarios": [scenario], "default_text": "OK (default)"})
}

/// Asserts the first exchange: the file exists, the tool's output reached the model, the
/// shell tool the CLI offers was the one called. Returns the model calls of the prompt.
fn assert_first_exchange(llm: &FakeLlm, work: &Path, shell_tool: &str) -> Vec<LoggedRequest> {
    assert_eq!(
        std::fs::read_to_string(work.join("out.txt")).unwrap_or_default(),
        "tool-said-hello\n",
        "the scripted shell command did not run in the work dir"
    );
    let calls = llm.message_requests();
    assert!(
        calls
            .iter()
            .any(|r| r.tool_names().iter().any(|t| t == shell_tool)),
        "no request offered {shell_tool}"
    );
    assert!(
        calls
            .iter()
            .any(|r| r.turn() == 1 && r.last_text().contains("tool-said-hello")),
        "the tool result never went back to the model: {:#?}",
        calls.iter().map(|r| r.message_texts()).collect::<Vec<_>>()
    );
    calls
}

/// Asserts that the resumed prompt's request carries the first exchange.
fn assert_resumed(llm: &FakeLlm, marker: &str, second: &str) {
    let last = llm.message_requests().pop().expect("a model call");
    let texts = last.message_texts();
    let joined = texts.join("\n");
    for needle in [marker, "tool-said-hello", "Done: out.txt", second] {
        assert!(
            joined.contains(needle),
            "resumed request lacks {needle:?}: {texts:#?}"
        );
    }
    assert_eq!(last.turn(), 2, "resume should continue the script");
}

/// OpenCode 1.18.33, `opencode run --format json "<prompt>"`; resume `--session <id>`.
/// Every event line has a top-level `sessionID`; there is no final result line (the run
/// ends at exit, the last `step_finish` has `reason: "stop"`). Besides the agent's calls
/// (tools `bash`, `edit`, `read`, …), each new session makes a title call with no tools.
/// Wall time on 2 cores: 3.7–5.2 s per prompt (the slowest of the three); exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_runs_a_shell_call_and_resumes_the_session() {
    let Some(bin) = deps::opencode() else { return };
    let marker = "AC-OPENCODE do it";
    let llm = FakeLlm::start(script(marker)).await;
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = agent_homes::opencode_env(&llm.url(), home.path());
    let first = run(
        &bin,
        &["run", "--format", "json", marker],
        &env,
        work.path(),
    )
    .await;
    assert!(first.status.success(), "{}", first.stderr);
    assert_first_exchange(&llm, work.path(), "bash");
    let texts: Vec<&str> = first
        .events
        .iter()
        .filter(|e| e["type"] == "text")
        .filter_map(|e| e["part"]["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"Done: out.txt now contains hello."),
        "{texts:?}"
    );
    let session = first.events[0]["sessionID"]
        .as_str()
        .expect("sessionID")
        .to_string();

    let second = "AC-OPENCODE and now?";
    let again = run(
        &bin,
        &["run", "--format", "json", "--session", &session, second],
        &env,
        work.path(),
    )
    .await;
    assert!(again.status.success(), "{}", again.stderr);
    assert_resumed(&llm, marker, second);
    assert!(again
        .events
        .iter()
        .any(|e| e["part"]["text"] == "Second prompt answered (resumed)."));
}

/// Codex 0.169.0, `codex exec --json --skip-git-repo-check "<prompt>" </dev/null`; resume
/// `codex exec resume <thread_id> --json --skip-git-repo-check "<prompt>"`. Wall time
/// 0.3–0.8 s per prompt; exit 0. stdout starts with an `item.completed` of type `error`
/// ("Model metadata for `fake-model` not found"), harmless. CODEX_HOME must not be under
/// the temp dir (see below), else the sandboxed command fails although codex exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_runs_a_shell_call_and_resumes_the_thread() {
    let Some(bin) = deps::codex() else { return };
    let marker = "AC-CODEX do it";
    let llm = FakeLlm::start(script(marker)).await;
    // Not under /tmp: codex refuses to create its helper aliases (`codex-linux-sandbox`,
    // the sandbox's entry point) under the temp dir, and then every sandboxed command fails
    // with "bwrap: execvp codex-linux-sandbox: No such file or directory".
    let home = tempfile::tempdir_in(deps::root().join("target")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let env = agent_homes::codex_env(&llm.url(), home.path());
    let first = run(
        &bin,
        &["exec", "--json", "--skip-git-repo-check", marker],
        &env,
        work.path(),
    )
    .await;
    assert!(first.status.success(), "{}", first.stderr);
    assert_first_exchange(&llm, work.path(), "exec_command");
    let messages: Vec<&str> = first
        .events
        .iter()
        .filter(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
        .filter_map(|e| e["item"]["text"].as_str())
        .collect();
    assert!(
        messages.contains(&"Done: out.txt now contains hello."),
        "{messages:?}"
    );
    assert!(first.events.iter().any(|e| e["type"] == "turn.completed"));
    let thread = first
        .events
        .iter()
        .find(|e| e["type"] == "thread.started")
        .and_then(|e| e["thread_id"].as_str())
        .expect("thread.started")
        .to_string();

    let second = "AC-CODEX and now?";
    let again = run(
        &bin,
        &[
            "exec",
            "resume",
            &thread,
            "--json",
            "--skip-git-repo-check",
            second,
        ],
        &env,
        work.path(),
    )
    .await;
    assert!(again.status.success(), "{}", again.stderr);
    assert_resumed(&llm, marker, second);
    assert!(again
        .events
        .iter()
        .any(|e| e["item"]["text"] == "Second prompt answered (resumed)."));
}

/// Gemini CLI 0.61.0, `gemini -p "<prompt>" -m gemini-2.5-flash --approval-mode yolo
/// --output-format stream-json </dev/null` (without yolo, headless mode drops the shell and
/// write tools; without `-m`, `auto` adds a routing call). Resume: `--resume <session_id>`
/// (the `init` event's `session_id`) works headless in 0.61.0: the resumed request carries
/// the whole first exchange and continues the script. Wall time about 2 s per prompt; exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_runs_a_shell_call_and_resumes_the_session() {
    let Some(bin) = deps::gemini() else { return };
    let marker = "AC-GEMINI do it";
    let llm = FakeLlm::start(script(marker)).await;
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = agent_homes::gemini_env(&llm.url(), home.path());
    let args = |prompt: &'static str| {
        vec![
            "-p",
            prompt,
            "-m",
            "gemini-2.5-flash",
            "--approval-mode",
            "yolo",
            "--output-format",
            "stream-json",
        ]
    };
    let first = run(&bin, &args("AC-GEMINI do it"), &env, work.path()).await;
    assert!(first.status.success(), "{}", first.stderr);
    assert_first_exchange(&llm, work.path(), "run_shell_command");
    let said: String = first
        .events
        .iter()
        .filter(|e| e["type"] == "message" && e["role"] == "assistant")
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert!(
        said.contains("Done: out.txt now contains hello."),
        "{said:?}"
    );
    assert_eq!(
        first.events.last().map(|e| e["type"].clone()),
        Some(json!("result"))
    );
    let session = first.events[0]["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();

    let second = "AC-GEMINI and now?";
    let mut resume = args("AC-GEMINI and now?");
    resume.extend(["--resume", &session]);
    let again = run(&bin, &resume, &env, work.path()).await;
    assert!(again.status.success(), "{}", again.stderr);
    assert_resumed(&llm, marker, second);
}

/// Sends an ACP `initialize` to `bin args` and returns the reply's `result`.
async fn acp_initialize(bin: &Path, args: &[&str], env: &[(String, String)], work: &Path) -> Value {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(work)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the ACP agent");
    let pgid = child.id().expect("child pid") as i32;
    let mut stdin = child.stdin.take().unwrap();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": 1,
        "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false}}});
    stdin
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let reply = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read the agent's stdout") {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["id"] == 1 {
                    return v;
                }
            }
        }
        panic!("the agent closed stdout without answering initialize");
    })
    .await;
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let reply = reply.expect("no initialize reply within 60 s");
    eprintln!(
        "{} {args:?} initialize in {:?}: {reply}",
        bin.display(),
        started.elapsed()
    );
    reply["result"].clone()
}

/// `opencode acp` answers `initialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencode_acp_answers_initialize() {
    let Some(bin) = deps::opencode() else { return };
    let llm = FakeLlm::start(json!([])).await;
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = agent_homes::opencode_env(&llm.url(), home.path());
    let result = acp_initialize(&bin, &["acp"], &env, work.path()).await;
    assert_eq!(result["protocolVersion"], 1, "{result}");
    assert!(result["agentCapabilities"].is_object(), "{result}");
}

/// `gemini --acp` answers `initialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemini_acp_answers_initialize() {
    let Some(bin) = deps::gemini() else { return };
    let llm = FakeLlm::start(json!([])).await;
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env = agent_homes::gemini_env(&llm.url(), home.path());
    let result = acp_initialize(&bin, &["--acp"], &env, work.path()).await;
    assert_eq!(result["protocolVersion"], 1, "{result}");
    assert!(result["agentCapabilities"].is_object(), "{result}");
}
