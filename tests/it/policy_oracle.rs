//! The execution oracle for the bash tool policy: every input that `policy::decide` allows is
//! run by real bash in a throwaway sandbox, and what really ran, was written or was read is
//! compared with the parameters the policy decided on. "No bypasses" is a measured claim here.
//!
//! How: `bwrap` (no network; own user, pid, mount, ipc and uts namespaces; read-only `/usr` and
//! `/etc`; a tmpfs `/tmp`) runs `strace -ff -y` on `bash -c <command>` in a scratch tree: the
//! agent's HOME, a small git repo as its work dir, and a fake gateway runtime dir holding
//! planted secrets (a web chat tokens file, a hook settings file, a `control.sock` stand-in),
//! with the hook secret also in bash's environment. The scratch tree sits at the same absolute
//! path on the host and in the sandbox, so the policy (which resolves symlinks on the host) and
//! bash see the same files. strace runs inside the sandbox so that the pids of its per-process
//! trace files and those returned by `clone` live in one pid namespace.
//!
//! A bypass is, for an allowed input:
//! - a program executed that no `Command` parameter names (argv[0] as a name found on PATH, or
//!   as a path);
//! - a file opened for writing that is not the target of a `write:` redirect parameter opened
//!   by the shell itself, or any file created, removed, renamed, linked or chmod-ed (the only
//!   exceptions, each spelled out in [`is_noise`]: git's index refresh and bash's heredoc temp
//!   files);
//! - any open of a path inside the runtime dir, or of a `/proc/…/environ` file, and any
//!   attempt to connect to a socket in the runtime dir;
//! - a planted secret appearing in the command's output or in a file of the scratch tree.
//!
//! Only successful system calls count (a failed attempt did nothing), except `connect`.
//! Writes to `/dev/null` and to pipes (`/dev/stdout`, `>(…)`) are not writes to files.
//!
//! Not covered: what an allowed interpreter does with code it was given (`python3 .*` in the
//! owner set runs any Python; the corpus only feeds it harmless code), hard links or copies of
//! secrets made by an earlier call, and a secret leaked in a transformed form (only the planted
//! strings are searched for).
//!
//! Inputs: the `bash:` cases of `tests/data/bash_corpus.yaml`, the everyday commands of
//! `tests/data/harmless.yaml`, the attack corpus
//! `tests/data/bypass_corpus.yaml` (paths written with `{HOME}`, `{WORK}`, `{RT}`; `{BIG}` is a
//! heredoc body bigger than a pipe buffer), and a
//! deterministic generator ([`generated`]). Each input is decided for a guest and an owner rule
//! set ([`RuleSets`]); one that either allows is run once and judged for every set that allows
//! it (the judgement depends only on the parameters, which are the same for both).
//!
//! Needs `bwrap` and `strace` (`scripts/install-test-deps.sh` installs both): with `CI=true`
//! their absence fails the test, otherwise it is skipped with a loud message. Bypasses fail the
//! test unless `ACG_ORACLE_REPORT_ONLY=1`. `ACG_ORACLE_FINDINGS=<file>` writes one line per
//! bypass (role, command, what happened); `ACG_ORACLE_ONLY=<substring>` runs only the inputs
//! that contain it; `ACG_ORACLE_THREADS` sets the number of sandboxes run at once (default 3).
#![cfg(target_os = "linux")]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent_chat_gateway::model::Role;
use agent_chat_gateway::policy::{
    decide, extract, Guard, Param, ParamKind, PolicyInput, Rule, RuleSet,
};
use serde::Deserialize;
use serde_json::json;

const BASH_CORPUS: &str = include_str!("../data/bash_corpus.yaml");
const BYPASS_CORPUS: &str = include_str!("../data/bypass_corpus.yaml");
const HARMLESS: &str = include_str!("../data/harmless.yaml");

/// The planted secrets: the hook secret (in bash's environment, as the gateway sets it for the
/// agent), the web chat token and the hook settings file's secret (files in the runtime dir).
const HOOK_SECRET: &str = "oracle-hook-secret-5f1c9a7e";
const WEBCHAT_TOKEN: &str = "oracle-webchat-token-83be27d4";
const HOOK_FILE_SECRET: &str = "oracle-hook-file-secret-c04d1e92";
const SECRETS: &[(&str, &str)] = &[
    ("hook secret", HOOK_SECRET),
    ("web chat token", WEBCHAT_TOKEN),
    ("hook settings secret", HOOK_FILE_SECRET),
];
/// What `data.txt` and the last commit's body hold: text that runs `touch PWNED` when bash
/// evaluates it arithmetically (`[[ $(cat data.txt) -eq 0 ]]`).
const DATA_PAYLOAD: &str = "a[$(touch PWNED)]";
/// The runtime dir's default name, which the guard recognises as a marker.
const RUNTIME_NAME: &str = ".agent-chat-gateway";
/// Where the trace files appear inside the sandbox.
const TRACE_MOUNT: &str = "/oracle-trace";
/// bash's PATH in the sandbox; a bare command name must resolve to one of these directories.
const PATH_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];
/// Per-case limit; the whole sandbox is killed after it.
const CASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Output kept per stream (the rest is drained and dropped: `cat /dev/urandom` is allowed).
const OUTPUT_KEPT: usize = 256 * 1024;
/// How many generated inputs.
const GENERATED: usize = 1200;
/// The system calls traced: programs run, files opened, and every way to change a file.
const TRACED: &str = "execve,execveat,open,openat,openat2,creat,truncate,rename,renameat,\
renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,mkdir,mkdirat,chmod,fchmod,fchmodat,\
chown,fchown,lchown,fchownat,mknod,mknodat,chdir,fchdir,connect,clone,clone3,fork,vfork";

// ---- tools --------------------------------------------------------------------------------

/// Absolute paths of the sandbox programs.
#[derive(Clone)]
struct Tools {
    bwrap: PathBuf,
    strace: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tools, or `None` (after a loud message) when they are missing outside CI.
fn tools() -> Option<Tools> {
    let bwrap = which("bwrap");
    let strace = which("strace").map(|p| fs::canonicalize(&p).unwrap_or(p));
    match (bwrap, strace) {
        (Some(bwrap), Some(strace)) => {
            // strace runs inside the sandbox, which only has /usr (and /bin, /lib… links).
            assert!(
                strace.starts_with("/usr"),
                "strace at {} is outside /usr, so the sandbox cannot run it",
                strace.display()
            );
            let tools = Tools { bwrap, strace };
            match preflight(&tools) {
                Ok(()) => Some(tools),
                Err(e) => unavailable(format!("policy oracle cannot start its sandbox: {e}")),
            }
        }
        (bwrap, strace) => {
            let missing: Vec<&str> = [("bwrap", bwrap.is_none()), ("strace", strace.is_none())]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
            unavailable(format!(
                "policy oracle needs {} (run scripts/install-test-deps.sh)",
                missing.join(" and ")
            ))
        }
    }
}

/// In CI a failure (the oracle must run there), elsewhere a skip nobody can miss.
fn unavailable(msg: String) -> Option<Tools> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    // Straight to the stream: the test harness captures `eprintln!` of passing tests.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// Runs `true` traced in an empty sandbox: user namespaces or ptrace may be unavailable (some
/// distributions restrict unprivileged user namespaces).
fn preflight(tools: &Tools) -> Result<(), String> {
    let mut cmd = bwrap_base(tools);
    cmd.arg("--").arg(&tools.strace);
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=execve",
        "-o",
        "/dev/null",
        "/bin/bash",
        "-c",
        "true",
    ]);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// bwrap with everything but the scratch tree: new namespaces (no network), read-only system
/// directories, and private `/tmp`, `/proc` and `/dev`.
fn bwrap_base(tools: &Tools) -> Command {
    let mut bwrap = Command::new(&tools.bwrap);
    bwrap.args(["--unshare-all", "--die-with-parent", "--new-session"]);
    bwrap.args(["--ro-bind", "/usr", "/usr"]);
    // Merged-/usr systems have /bin, /lib… as symlinks into /usr; others have directories.
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        match fs::symlink_metadata(top) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(top).unwrap();
                bwrap.arg("--symlink").arg(target).arg(top);
            }
            Ok(m) if m.is_dir() => {
                bwrap.args(["--ro-bind", top, top]);
            }
            _ => {}
        }
    }
    bwrap.args(["--ro-bind", "/etc", "/etc"]);
    bwrap.args(["--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]);
    bwrap
}

// ---- the scratch tree -----------------------------------------------------------------------

/// One sandbox's files: HOME with the work dir and the runtime dir, and the trace dir. The same
/// absolute paths on the host and in the sandbox.
struct Scratch {
    home: PathBuf,
    work: PathBuf,
    runtime: PathBuf,
    trace: PathBuf,
    template: PathBuf,
}

impl Scratch {
    /// A scratch tree under `root`, copied from `template` (see [`make_template`]).
    fn new(root: &Path, template: &Path) -> Scratch {
        fs::create_dir_all(root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        let home = root.join("home");
        let s = Scratch {
            work: home.join("work"),
            runtime: home.join(RUNTIME_NAME),
            home,
            trace: root.join("trace"),
            template: template.to_path_buf(),
        };
        s.reset();
        s
    }

    /// Back to the template's state: nothing one case did is seen by the next.
    fn reset(&self) {
        for dir in [&self.home, &self.trace] {
            if dir.exists() && fs::remove_dir_all(dir).is_err() {
                // A case may have taken permissions away (`chmod 000` on a directory).
                let _ = Command::new("chmod")
                    .arg("-R")
                    .arg("u+rwX")
                    .arg(dir)
                    .status();
                fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
            }
        }
        fs::create_dir_all(&self.trace).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(&self.template)
            .arg(&self.home)
            .status()
            .unwrap();
        assert!(status.success(), "cp -a template");
    }

    fn guard(&self) -> Guard {
        Guard::new(&self.runtime).with_home(&self.home)
    }

    /// `{HOME}`, `{WORK}`, `{RT}` in an input, replaced by this tree's paths, and `{BIG}` by
    /// text longer than a pipe buffer (bash then writes a heredoc to a temp file in `$TMPDIR`).
    fn fill(&self, template: &str) -> String {
        template
            .replace("{BIG}", &"x".repeat(70_000))
            .replace("{HOME}", &self.home.display().to_string())
            .replace("{WORK}", &self.work.display().to_string())
            .replace("{RT}", &self.runtime.display().to_string())
    }

    /// A path or message with this tree's paths shortened back to the placeholders.
    fn short(&self, text: &str) -> String {
        text.replace(&self.runtime.display().to_string(), "{RT}")
            .replace(&self.work.display().to_string(), "{WORK}")
            .replace(&self.home.display().to_string(), "{HOME}")
    }
}

/// The HOME every case starts from: a git repo with two commits and an uncommitted change as
/// the work dir (so `git status/log/diff` have something to do), attacker-written data in it
/// ([`DATA_PAYLOAD`], a file named `--output=PWNED`), symlinks in it (`docs` to the
/// runtime dir, `me` to `/proc/self`, `link.txt` to `.git/config`, `new.txt` to a missing
/// `~/.bashrc`), and the runtime dir.
fn make_template(dir: &Path) -> PathBuf {
    let home = dir.join("template-home");
    let work = home.join("work");
    let runtime = home.join(RUNTIME_NAME);
    fs::create_dir_all(work.join("src")).unwrap();
    fs::create_dir_all(runtime.join("agents/claude")).unwrap();
    let write = |p: PathBuf, text: &str| fs::write(p, text).unwrap();
    write(work.join("README.md"), "# demo\nhello world\n");
    write(work.join("notes.txt"), "b line\na line\nc line\n");
    write(work.join("src/main.rs"), "fn main() {}\n");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=oracle",
                "-c",
                "user.email=oracle@example.invalid",
            ])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(&work)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &home)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "first"]);
    write(work.join("README.md"), "# demo\nhello world\nsecond line\n");
    // Repository content an attacker wrote: harmless text until bash evaluates it as arithmetic.
    write(work.join("data.txt"), &format!("{DATA_PAYLOAD}\n"));
    git(&["add", "data.txt"]);
    git(&["commit", "-qam", &format!("second\n\n{DATA_PAYLOAD}")]);
    write(work.join("notes.txt"), "b line\na line\nc line\nd line\n");
    // A file name an attacker chose: `git diff *` turns it into an option that writes a file.
    write(work.join("--output=PWNED"), "x\n");
    write(
        runtime.join("webchat-web.tokens.json"),
        &format!("{{\"alice\": \"{WEBCHAT_TOKEN}\"}}\n"),
    );
    write(
        runtime.join("agents/claude/hook-settings-0000.json"),
        &format!("{{\"headers\": {{\"X-ACG-Secret\": \"{HOOK_FILE_SECRET}\"}}}}\n"),
    );
    write(
        runtime.join("control.sock"),
        "stand-in for the control socket\n",
    );
    write(runtime.join("state.json"), "{}\n");
    // Symlinks "made earlier" (by a previous tool call): the policy sees them too, since the
    // tree is at the same path on the host.
    std::os::unix::fs::symlink(format!("../{RUNTIME_NAME}"), work.join("docs")).unwrap();
    std::os::unix::fs::symlink("/proc/self", work.join("me")).unwrap();
    std::os::unix::fs::symlink(".git/config", work.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("../.bashrc", work.join("new.txt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    home
}

// ---- rule sets ------------------------------------------------------------------------------

/// The guest and owner allow-lists, for one scratch tree.
///
/// Guest: `Read(<work>/.*)` and read-only commands. Owner: the guest set, text tools and
/// interpreters, any git command, `cd`, one-letter variables, and redirects that write `.txt`
/// files in the work dir or read anything in it (so redirect handling is exercised).
struct RuleSets {
    guest: RuleSet,
    owner: RuleSet,
}

impl RuleSets {
    fn new(s: &Scratch) -> RuleSets {
        let work = regex::escape(&s.work.display().to_string());
        let rule = |tool: &str, params: &str| Rule::new(tool, Some(params)).unwrap();
        let guest = vec![
            rule("Read", &format!("{work}/.*")),
            rule(
                "Bash",
                "(ls|cat|grep|head|tail|wc|git (status|log|diff))( .*)?",
            ),
        ];
        let mut owner = guest.clone();
        owner.extend([
            rule("Bash", "(echo|printf|sed|awk|find|sort|python3)( .*)?"),
            rule("Bash", "git .*"),
            rule("Bash", "cd( .*)?"),
            rule("Bash", "[a-z]=.*"),
            rule("Bash", &format!("write:{work}/[^/]*\\.txt")),
            rule("Bash", &format!("read:{work}/.*")),
        ]);
        RuleSets {
            guest: RuleSet::new(guest),
            owner: RuleSet::new(owner),
        }
    }

    /// Which roles the policy lets run `command` without asking anyone.
    fn allowed(&self, command: &str, s: &Scratch, guard: &Guard) -> [bool; 2] {
        let input = json!({ "command": command });
        [Role::Guest, Role::Owner].map(|role| {
            let outcome = decide(&PolicyInput {
                role,
                tool: "Bash",
                input: &input,
                cwd: &s.work,
                owner_rules: &self.owner,
                guest_rules: &self.guest,
                skip_owner_approval: false,
                guard,
            });
            outcome.decision.word() == "allow"
        })
    }
}

// ---- running one command --------------------------------------------------------------------

/// What one sandboxed run left behind.
struct Run {
    /// Trace lines per (sandbox) pid.
    trace: HashMap<u32, Vec<String>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
}

/// Runs `command` with `bash -c` in the sandbox over `s`, traced.
fn run_sandboxed(tools: &Tools, s: &Scratch, command: &str) -> Run {
    let mut bwrap = bwrap_base(tools);
    // Mounted after the tmpfs `/tmp`, so a scratch tree under the host's /tmp shows through.
    bwrap.arg("--bind").arg(&s.home).arg(&s.home);
    bwrap.arg("--bind").arg(&s.trace).arg(TRACE_MOUNT);
    bwrap.arg("--chdir").arg(&s.work);
    bwrap.arg("--clearenv");
    let path = PATH_DIRS.join(":");
    let home = s.home.display().to_string();
    for (k, v) in [
        ("HOME", home.as_str()),
        ("PATH", path.as_str()),
        ("USER", "agent"),
        ("LOGNAME", "agent"),
        ("LANG", "C"),
        ("TERM", "dumb"),
        ("ACG_HOOK_SECRET", HOOK_SECRET),
    ] {
        bwrap.args(["--setenv", k, v]);
    }
    bwrap.arg("--").arg(&tools.strace);
    bwrap.args(["-ff", "-qq", "-y", "-v", "-s", "65536", "-e", "signal=none"]);
    bwrap.arg("-e").arg(format!("trace={TRACED}"));
    bwrap.arg("-o").arg(format!("{TRACE_MOUNT}/t"));
    bwrap.args(["/bin/bash", "-c", command]);
    bwrap
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = bwrap.spawn().expect("bwrap starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 16384];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut timed_out = false;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > CASE_TIMEOUT {
            timed_out = true;
            // The group holds bwrap; the sandbox dies with it (`--die-with-parent`, own pid ns).
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            child.wait().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let mut trace = HashMap::new();
    for entry in fs::read_dir(&s.trace).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("t.").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let bytes = fs::read(entry.path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        trace.insert(pid, text.lines().map(str::to_string).collect());
    }
    Run {
        trace,
        stdout,
        stderr,
        timed_out,
    }
}

// ---- reading strace output ------------------------------------------------------------------

/// One traced system call: `name(args…) = ret`.
#[derive(Debug)]
struct Call {
    name: String,
    args: Vec<String>,
    ret: String,
}

impl Call {
    fn ok(&self) -> bool {
        self.ret.starts_with(|c: char| c.is_ascii_digit())
    }

    fn ret_number(&self) -> Option<u32> {
        let digits: String = self.ret.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    fn str_arg(&self, i: usize) -> Option<String> {
        self.args.get(i).and_then(|a| decode_str(a).map(|(s, _)| s))
    }

    fn fd_arg(&self, i: usize) -> Option<String> {
        self.args.get(i).and_then(|a| fd_path(a))
    }
}

/// Splits one strace line; `None` for anything else (`<unfinished …>` of a killed process).
fn parse_call(line: &str) -> Option<Call> {
    let open = line.find('(')?;
    let name = &line[..open];
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let bytes = line.as_bytes();
    let (mut depth, mut in_str, mut escaped, mut in_fd) = (0i32, false, false, false);
    let mut args = Vec::new();
    let mut start = open + 1;
    let mut end = None;
    for i in open + 1..bytes.len() {
        let c = bytes[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        if in_fd {
            in_fd = c != b'>';
            continue;
        }
        match c {
            b'"' => in_str = true,
            // `-y` prints an fd as `3</path>` and AT_FDCWD as `AT_FDCWD</path>`.
            b'<' if bytes[i - 1].is_ascii_alphanumeric() => in_fd = true,
            b'(' | b'[' | b'{' => depth += 1,
            b')' if depth == 0 => {
                end = Some(i);
                break;
            }
            b')' | b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                args.push(line[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    let end = end?;
    let last = line[start..end].trim();
    if !last.is_empty() || !args.is_empty() {
        args.push(last.to_string());
    }
    let ret = line[end + 1..]
        .trim_start()
        .strip_prefix('=')?
        .trim()
        .to_string();
    Some(Call {
        name: name.to_string(),
        args,
        ret,
    })
}

/// A C-quoted string at the start of `text` and the byte offset after it.
fn decode_str(text: &str) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
            b'\\' if i + 1 < bytes.len() => {
                i += 1;
                match bytes[i] {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'v' => out.push(0x0b),
                    b'f' => out.push(0x0c),
                    b'x' => {
                        let hex = text.get(i + 1..i + 3).unwrap_or("");
                        out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                        i += 2;
                    }
                    b'0'..=b'7' => {
                        let mut n = 0u32;
                        let mut k = 0;
                        while k < 3 && i < bytes.len() && (b'0'..=b'7').contains(&bytes[i]) {
                            n = n * 8 + u32::from(bytes[i] - b'0');
                            i += 1;
                            k += 1;
                        }
                        out.push(n as u8);
                        continue;
                    }
                    other => out.push(other),
                }
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// `["a", "b"]` → the strings.
fn decode_array(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start_matches('[');
    while let Some(at) = rest.find('"') {
        let Some((s, used)) = decode_str(&rest[at..]) else {
            break;
        };
        out.push(s);
        rest = &rest[at + used..];
    }
    out
}

/// The path strace's `-y` printed for an fd: `3</home/x>` → `/home/x`.
fn fd_path(text: &str) -> Option<String> {
    let start = text.find('<')?;
    let end = text.rfind('>')?;
    (end > start).then(|| text[start + 1..end].to_string())
}

/// `path` made absolute against `dir` and cleaned of `.` and `..`, without touching the file
/// system (the sandbox's view is the one that counts, and the trace shows it).
fn lexical(path: &str, dir: &str) -> String {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(dir).join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out.display().to_string()
}

/// What a traced process did that the judge looks at.
#[derive(Debug)]
enum Act {
    /// A program started (absolute path as the kernel got it, argv).
    Exec {
        path: String,
        argv: Vec<String>,
        cwd: String,
    },
    /// A file opened: the path it resolved to (`-y`), its flags, the opener's program.
    Open {
        path: String,
        flags: String,
        image: String,
    },
    /// A file created, removed, renamed, linked, chmod-ed …: the call and its paths.
    Change {
        call: String,
        paths: Vec<String>,
        image: String,
    },
    /// A connection attempt to a Unix socket path (successful or not).
    Connect { path: String, image: String },
}

/// The acts of the traced command, in per-process order: from bash's start, through every
/// process it forked. Errors mean the trace is not what the oracle expects (a broken sandbox).
fn acts(run: &Run, work: &str) -> Result<Vec<Act>, String> {
    let calls: HashMap<u32, Vec<Call>> = run
        .trace
        .iter()
        .map(|(pid, lines)| (*pid, lines.iter().filter_map(|l| parse_call(l)).collect()))
        .collect();
    let forks = ["clone", "clone3", "fork", "vfork"];
    let mut created = HashSet::new();
    for list in calls.values() {
        for c in list {
            if forks.contains(&c.name.as_str()) {
                if let Some(pid) = c.ret_number() {
                    created.insert(pid);
                }
            }
        }
    }
    let roots: Vec<u32> = calls
        .keys()
        .copied()
        .filter(|p| !created.contains(p))
        .collect();
    let [root] = roots.as_slice() else {
        return Err(format!(
            "expected one traced root process, found {roots:?} (stderr: {})",
            String::from_utf8_lossy(&run.stderr)
        ));
    };
    let mut out = Vec::new();
    let root = *root;
    let mut queue = vec![(root, String::new(), work.to_string())];
    let mut entry_seen = false;
    while let Some((pid, mut image, mut cwd)) = queue.pop() {
        let Some(list) = calls.get(&pid) else {
            continue;
        };
        for c in list {
            let name = c.name.as_str();
            if forks.contains(&name) {
                if let Some(child) = c.ret_number() {
                    queue.push((child, image.clone(), cwd.clone()));
                }
                continue;
            }
            if name == "connect" {
                // Counted even when it fails: the control socket here is a stand-in file, so
                // the attempt is all there is to see (against the daemon it would connect).
                let path = c.args.get(1).and_then(|a| {
                    let at = a.find("sun_path=")? + "sun_path=".len();
                    decode_str(&a[at..]).map(|(p, _)| lexical(&p, &cwd))
                });
                if let Some(path) = path {
                    out.push(Act::Connect {
                        path,
                        image: image.clone(),
                    });
                }
                continue;
            }
            if !c.ok() {
                continue;
            }
            match name {
                "execve" | "execveat" => {
                    let (path, argv) = if name == "execve" {
                        (c.str_arg(0), c.args.get(1))
                    } else {
                        let dir = c.fd_arg(0).unwrap_or_else(|| cwd.clone());
                        (c.str_arg(1).map(|p| lexical(&p, &dir)), c.args.get(2))
                    };
                    let path = lexical(&path.unwrap_or_default(), &cwd);
                    let argv = argv.map(|a| decode_array(a)).unwrap_or_default();
                    image = path.clone();
                    if !entry_seen && pid == root {
                        // strace's own start of `bash -c <command>`.
                        entry_seen = true;
                        continue;
                    }
                    out.push(Act::Exec {
                        path,
                        argv,
                        cwd: cwd.clone(),
                    });
                }
                "chdir" => {
                    if let Some(p) = c.str_arg(0) {
                        cwd = lexical(&p, &cwd);
                    }
                }
                "fchdir" => {
                    if let Some(p) = c.fd_arg(0) {
                        cwd = p;
                    }
                }
                "open" | "openat" | "openat2" | "creat" => {
                    let (dir_arg, path_arg, flags) = match name {
                        "open" => (None, 0, c.args.get(1).cloned().unwrap_or_default()),
                        "creat" => (None, 0, "O_CREAT|O_WRONLY|O_TRUNC".to_string()),
                        _ => (Some(0), 1, c.args.get(2).cloned().unwrap_or_default()),
                    };
                    let dir = dir_arg
                        .and_then(|i| c.fd_arg(i))
                        .unwrap_or_else(|| cwd.clone());
                    let given = c.str_arg(path_arg).unwrap_or_default();
                    let path = fd_path(&c.ret).unwrap_or_else(|| lexical(&given, &dir));
                    out.push(Act::Open {
                        path,
                        flags,
                        image: image.clone(),
                    });
                }
                _ => {
                    // Every other traced call changes the file system: record its paths.
                    let mut paths = Vec::new();
                    let mut dir = cwd.clone();
                    for (i, a) in c.args.iter().enumerate() {
                        if let Some(fd) = fd_path(a).filter(|_| !a.starts_with('"')) {
                            dir = fd.clone();
                            if name.starts_with('f') && i == 0 && !name.ends_with("at") {
                                // fchmod/fchown: the fd is the file itself.
                                paths.push(fd);
                            }
                        } else if let Some((p, _)) = decode_str(a) {
                            // symlink's first argument is the link's content, not a path.
                            let is_content = name.starts_with("symlink") && i == 0;
                            paths.push(if is_content { p } else { lexical(&p, &dir) });
                        }
                    }
                    out.push(Act::Change {
                        call: name.to_string(),
                        paths,
                        image: image.clone(),
                    });
                }
            }
        }
    }
    if !entry_seen {
        return Err(format!(
            "bash never started (stderr: {})",
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    Ok(out)
}

// ---- judging --------------------------------------------------------------------------------

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_shell(image: &str) -> bool {
    matches!(base(image), "bash" | "sh" | "dash")
}

fn within(path: &str, dir: &Path) -> bool {
    Path::new(path).starts_with(dir)
}

/// Writes that allowed programs make on their own; each is spelled out, anything else counts.
fn is_noise(s: &Scratch, image: &str, call: &str, paths: &[String]) -> bool {
    let index = s.work.join(".git/index").display().to_string();
    let lock = format!("{index}.lock");
    // bash writes a heredoc bigger than a pipe buffer to `$TMPDIR/sh-thd.XXXXXX`, makes it
    // read-only and unlinks it at once (bash 5.1+; smaller ones go through a pipe).
    let heredoc_temp = |p: &str| {
        p.strip_prefix("/tmp/sh-thd.")
            .is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    match (base(image), call) {
        // `git status` refreshes the index: `index.lock`, renamed over `index` (or removed).
        ("git", "open") => paths == [lock.as_str()],
        ("git", "rename") => paths == [lock.as_str(), index.as_str()],
        ("git", "unlink") => paths == [lock.as_str()],
        (_, "open" | "fchmod" | "unlink") if is_shell(image) => {
            paths.len() == 1 && heredoc_temp(&paths[0])
        }
        _ => false,
    }
}

/// Whether some command parameter names the program `path` (started in `cwd`).
fn named(params: &[Param], path: &str, cwd: &str) -> bool {
    params.iter().any(|p| {
        let ParamKind::Command { argv, .. } = &p.kind else {
            return false;
        };
        let Some(Some(name)) = argv.first() else {
            return false;
        };
        if name.contains('/') {
            lexical(name, cwd) == path
        } else {
            PATH_DIRS.iter().any(|d| format!("{d}/{name}") == path)
        }
    })
}

/// Everything the run did that the parameters do not account for (empty: no bypass).
fn judge(s: &Scratch, params: &[Param], run: &Run) -> Vec<String> {
    let work = s.work.display().to_string();
    let acts = match acts(run, &work) {
        Ok(acts) => acts,
        // Killed before bash started (a very loaded machine): nothing ran, the timeout is
        // reported on its own.
        Err(_) if run.timed_out => Vec::new(),
        Err(e) => panic!("oracle trace: {e}"),
    };
    let mut findings = Vec::new();
    let mut note = |f: String| {
        let f = s.short(&f);
        if !findings.contains(&f) {
            findings.push(f);
        }
    };
    let redirect_targets: Vec<String> = params
        .iter()
        .filter_map(|p| match &p.kind {
            ParamKind::Redirect {
                path, write: true, ..
            } => Some(path.display().to_string()),
            _ => None,
        })
        .collect();
    for act in &acts {
        match act {
            Act::Exec { path, argv, cwd } => {
                if within(path, &s.runtime) {
                    note(format!("ran {path} from the runtime dir"));
                }
                if !named(params, path, cwd) {
                    note(format!("ran {path} {argv:?}"));
                }
            }
            Act::Open { path, flags, image } => {
                if within(path, &s.runtime) {
                    note(format!("opened {path} ({} {flags})", base(image)));
                }
                let environ = path.strip_prefix("/proc/").is_some_and(|rest| {
                    rest.ends_with("/environ")
                        && rest.split('/').all(|c| {
                            c == "environ"
                                || c == "task"
                                || c == "self"
                                || c == "thread-self"
                                || c.bytes().all(|b| b.is_ascii_digit())
                        })
                });
                if environ {
                    note(format!(
                        "opened {path}: a process environment ({})",
                        base(image)
                    ));
                }
                let write = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"]
                    .iter()
                    .any(|f| flags.contains(f));
                // Pipes, sockets and anonymous inodes (`pipe:[…]`) are not files.
                if !write || !path.starts_with('/') || path == "/dev/null" {
                    continue;
                }
                let redirected = is_shell(image) && redirect_targets.contains(path);
                if !redirected && !is_noise(s, image, "open", std::slice::from_ref(path)) {
                    note(format!("wrote {path} ({} {flags})", base(image)));
                }
            }
            Act::Connect { path, image } => {
                if within(path, &s.runtime) {
                    note(format!("connected to {path} ({})", base(image)));
                }
            }
            Act::Change { call, paths, image } => {
                if paths.iter().any(|p| within(p, &s.runtime)) {
                    note(format!(
                        "{call} in the runtime dir {paths:?} ({})",
                        base(image)
                    ));
                }
                if !is_noise(s, image, call, paths) {
                    note(format!("{call} {paths:?} ({})", base(image)));
                }
            }
        }
    }
    let output = [&run.stdout, &run.stderr];
    for (what, secret) in SECRETS {
        if output
            .iter()
            .any(|o| o.windows(secret.len()).any(|w| w == secret.as_bytes()))
        {
            note(format!("printed the {what}"));
        }
        for file in files_containing(&s.home, &s.runtime, secret) {
            note(format!("left the {what} in {}", file.display()));
        }
    }
    // `find . -delete` alone removes every file: the first ones say enough.
    const SHOWN: usize = 12;
    if findings.len() > SHOWN {
        let more = findings.len() - SHOWN;
        findings.truncate(SHOWN);
        findings.push(format!("… and {more} more"));
    }
    findings
}

/// Files under `dir` (not under `skip`) whose first MiB contains `needle`.
fn files_containing(dir: &Path, skip: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if path.starts_with(skip) {
                continue;
            }
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let mut head = Vec::new();
                if let Ok(f) = fs::File::open(&path) {
                    let _ = f.take(1 << 20).read_to_end(&mut head);
                }
                if head.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The kind of a finding, for the summary.
fn finding_kind(finding: &str) -> &'static str {
    match finding.split(' ').next().unwrap_or("") {
        "ran" => "ran a program",
        "wrote" => "wrote a file",
        "opened" if finding.contains("process environment") => "read an environment",
        "opened" => "opened the runtime dir",
        "printed" | "left" => "leaked a secret",
        "connected" => "reached the control socket",
        _ => "changed a file",
    }
}

/// A command as shown in reports: escaped, and cut when long (heredoc tests are 100 KB).
fn clip(command: &str) -> String {
    const MAX: usize = 400;
    let shown = format!("{command:?}");
    if shown.chars().count() <= MAX {
        shown
    } else {
        let cut: String = shown.chars().take(MAX).collect();
        format!("{cut}… ({} bytes)", command.len())
    }
}

// ---- inputs ---------------------------------------------------------------------------------

/// One input and where it came from.
#[derive(Clone, Debug)]
struct Input {
    origin: String,
    /// With `{HOME}`, `{WORK}`, `{RT}` placeholders.
    command: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BypassCase {
    class: String,
    bash: String,
}

fn corpus_inputs() -> Vec<Input> {
    let cases: Vec<serde_yaml::Value> = serde_yaml::from_str(BASH_CORPUS).expect("corpus parses");
    let mut out: Vec<Input> = cases
        .iter()
        .filter_map(|c| c.get("bash").and_then(|b| b.as_str()))
        .map(|b| Input {
            origin: "bash_corpus".to_string(),
            command: b.to_string(),
        })
        .collect();
    // Entries are commands, or `{bash: …, over_strict: why}` for the known over-strict ones.
    let harmless: Vec<serde_yaml::Value> =
        serde_yaml::from_str(HARMLESS).expect("harmless list parses");
    out.extend(harmless.iter().map(|entry| {
        let command = entry
            .as_str()
            .or_else(|| entry.get("bash").and_then(|b| b.as_str()))
            .expect("a harmless entry is a command or has `bash`");
        Input {
            origin: "harmless".to_string(),
            command: command.to_string(),
        }
    }));
    let bypass: Vec<BypassCase> =
        serde_yaml::from_str(BYPASS_CORPUS).expect("bypass corpus parses");
    out.extend(bypass.into_iter().map(|c| Input {
        origin: format!("bypass_corpus:{}", c.class),
        command: c.bash,
    }));
    out
}

/// A small deterministic generator (xorshift64*), so every run sees the same inputs.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Commands every sane policy allows the guest (read-only, in the work dir).
const GUEST_HEADS: &[&str] = &[
    "ls",
    "ls -la",
    "cat README.md",
    "grep -n hello README.md",
    "head -n 1 README.md",
    "tail -n 1 notes.txt",
    "wc -l README.md",
    "git status",
    "git log --oneline",
    "git diff",
];
/// Commands the owner set allows on top.
const OWNER_HEADS: &[&str] = &[
    "echo hi",
    "printf '%s\\n' x",
    "sed -n 1p README.md",
    "awk 'NR==1' README.md",
    "find . -maxdepth 1 -name '*.md'",
    "sort notes.txt",
    "git show --stat HEAD",
    "python3 -c 'print(1)'",
];
/// Commands that read stdin, for heredocs and herestrings.
const STDIN_READERS: &[&str] = &[
    "cat",
    "wc -l",
    "head -n 2",
    "grep -v zzz",
    "sort",
    "sed -n 1p",
    "awk 1",
];
/// Commands no rule allows: if one runs, the policy did not see it.
const PAYLOADS: &[&str] = &[
    "id",
    "uname",
    "touch PWNED",
    "mkdir PWNED",
    "rm -f notes.txt",
    "true",
];
/// File readers for paths into the runtime dir.
const READERS: &[&str] = &[
    "grep -rl .",
    "ls -laR",
    "cat",
    "head -c 300",
    "tail -n 3",
    "grep -r .",
    "wc -c",
    "ls -la",
    "grep -h x",
];
/// Ways to spell the runtime dir's web chat tokens file (or the environment) that are not the
/// literal path.
const SECRET_PATHS: &[&str] = &[
    "{HOME}/.agent-chat-g*/webchat-web.tokens.json",
    "~/.agent-chat-gatewa?/webchat-*",
    "~/[.]agent-chat-gateway/webchat-web.tokens.json",
    "~/.agent-chat-\"gateway\"/webchat-web.tokens.json",
    "~/.agent-chat-'gate'way/webchat-web.tokens.json",
    "~/.agent-chat-gate\\way/webchat-web.tokens.json",
    "$'{HOME}/.agent-chat-gatew\\x61y/webchat-web.tokens.json'",
    "{HOME}/.agent-chat-gate{way,}/webchat-web.tokens.json",
    "{HOME}/.agent-chat-gate{w,}ay/webchat-web.tokens.json",
    "../.agent-chat-g*/*.json",
    "..//.agent-chat-gatewa[y]/*.json",
    "./../.agent-chat-gatew*y/agents/*/*",
    "/proc/self/cwd/../.agent-chat-gate*/w*",
    "{HOME}/.agent-chat-ga*/control.s*",
    "{HOME}/.a*/agents/claude/hook-*",
    "/proc/self/envi*",
    "/pro?/self/environ",
    "/proc/self/env''iron",
    "/proc/$$/envir?n",
    "/proc/1/envi\\ron",
    "/proc/self/task/*/env*",
    "${x:-/proc/self}/envi*",
    "${x:-{HOME}/.agent-chat}-gateway/webchat-web.tokens.json",
    "/pro\\\nc/self/environ",
    "~/.agent-chat-gate\\\nway/webchat-web.tokens.json",
    "~/*/../.agent*/w*",
    "/proc/[s]elf/environ",
    "docs/webchat-web.tokens.json",
    "me/environ",
];

/// `$(P)` in one of the ways bash writes a command substitution.
fn subst(g: &mut Gen, payload: &str) -> String {
    match g.below(4) {
        0 => format!("$({payload})"),
        1 => format!("`{payload}`"),
        // A line continuation is removed before bash reads the word: this is `$(…)`.
        2 => format!("$\\\n({payload})"),
        _ => format!("$( {payload} )"),
    }
}

/// Text that bash evaluates arithmetically (`a[…]` subscripts run substitutions), quoted in
/// one of several ways.
fn arith_operand(g: &mut Gen, payload: &str) -> String {
    let s = subst(g, payload);
    match g.below(6) {
        0 => format!("'a[{s}]'"),
        1 => format!("\"a[{s}]\""),
        2 => format!("a[{s}]"),
        3 => format!("'a[$({payload})]'"),
        4 => format!("\"a[\\$({payload})]\""),
        _ => format!("'x[`{payload}`]'"),
    }
}

/// One piece with something dangerous hidden in it, built around the allowed command `head`.
fn dangerous(g: &mut Gen, head: &str, owner: bool) -> String {
    let p = g.pick(PAYLOADS);
    let s = subst(g, p);
    let op = g.pick(&[
        ":-", ":=", "-", "=", "#", "##", "%", "%%", ":+", "+", "^^", ",,", "^", ",",
    ]);
    match g.below(26) {
        0 => format!("{head} ${{x{op}{s}}}"),
        1 => format!("{head} \"${{x{op}{s}}}\""),
        2 => format!("{head} ${{x/{s}/y}}"),
        3 => format!("[[ {} -eq 1 ]] && {head}", arith_operand(g, p)),
        4 => format!("[[ 1 -lt {} ]] || {head}", arith_operand(g, p)),
        5 => format!("[[ -v {} ]]; {head}", arith_operand(g, p)),
        6 => format!("(( {} )); {head}", arith_operand(g, p)),
        7 => format!("{head} $(( {} ))", arith_operand(g, p)),
        8 => format!("{head} \"${{a[{s}]}}\""),
        9 => format!("{head} ${{x:{}}}", arith_operand(g, p)),
        10 => format!("{head} \"${{x: 0:{}}}\"", arith_operand(g, p)),
        11 if owner => format!("x='{s}'; {head} \"${{x@P}}\""),
        11 => format!("{head} \"${{PS4@P}}\" \"${{x@P}}\""),
        12 => {
            let reader = g.pick(STDIN_READERS);
            let delim = g.pick(&["EOF", "'EOF'", "\"EOF\"", "\\EOF", "E", "-EOF", "-'EOF'"]);
            // `<<-` strips leading tabs from the body and the delimiter line.
            let tab = if delim.starts_with('-') { "\t" } else { "" };
            let end = delim.trim_matches(['\'', '"', '\\', '-']);
            let body = match g.below(3) {
                0 => format!("line {s}"),
                1 => format!("`{p}`"),
                _ => format!("${{x:-{s}}}"),
            };
            format!("{reader} <<{delim}\n{tab}{body}\n{tab}{end}\n{head}")
        }
        13 => format!("{} <<< \"${{x:-{s}}}\"", g.pick(STDIN_READERS)),
        14 => format!("{head} | {}", g.pick(STDIN_READERS)),
        15 => {
            let reader = g.pick(READERS);
            let path = g.pick(SECRET_PATHS);
            format!("{reader} {path}")
        }
        16 => {
            let path = g.pick(&[
                ".git/config",
                "~/.bashrc",
                "{HOME}/.gitconfig",
                "x.txt",
                ".git/hooks/pre-commit",
                "/tmp/x",
            ]);
            let cmd = g.pick(&[
                "git log -1",
                "git diff",
                "git log --format='[core]%n fsmonitor = touch PWNED'",
            ]);
            format!("{cmd} --output={path}; git status")
        }
        17 if g.chance(30) => format!("git {} *", g.pick(&["diff", "log -1", "diff --stat"])),
        // Two directories, one outside the work tree: git diff compares the trees (--no-index
        // is implied), reading every file of both.
        17 if g.chance(30) => {
            let dirs = [
                ".",
                "..",
                "~",
                "src",
                "~/work",
                "{HOME}",
                "/proc/self/cwd/..",
            ];
            let (a, b) = (g.pick(&dirs), g.pick(&dirs));
            let no_index = if g.chance(50) { " --no-index" } else { "" };
            format!("git diff{no_index} {a} {b}")
        }
        17 => {
            let sub = g.pick(&["diff", "log -p"]);
            format!("git {sub} --no-index {} /dev/null", g.pick(SECRET_PATHS))
        }
        18 if owner => g
            .pick(&[
                "find . -delete",
                "find . -name '*.md' -exec id \\;",
                "find . -execdir uname {} +",
                "find . -name notes.txt -fprint x.txt",
                "sed -i s/a/b/ notes.txt",
                "sed -n 'w y.txt' notes.txt",
                "sed '1e id' notes.txt",
                "sed 's/.*/id/e' notes.txt",
                "awk 'BEGIN{system(\"id\")}'",
                "awk '{print | \"id\"}' notes.txt",
                "awk 'BEGIN{print 1 > \"z.txt\"}'",
                "sort -o x.txt notes.txt",
                "sort -uo x.txt notes.txt",
                "sort --o=.git/config notes.txt",
                "sed --in=.b s/a/b/ notes.txt",
                "git config core.fsmonitor 'touch PWNED'; git status",
                "git -c core.fsmonitor='touch PWNED' status",
                "git -c core.pager='id' log",
                "git log --format=%H -1 > .git/hooks/pre-commit.txt",
            ])
            .to_string(),
        18 => format!(
            "{head} {}",
            g.pick(&["--output=x.txt", "-c core.pager=id", "--ext-diff"])
        ),
        19 if owner || g.chance(50) => {
            let path = g.pick(SECRET_PATHS);
            // bash's `cd` is logical (`docs/..` is the work dir again, whatever `docs` is).
            let to = g.pick(&[
                "..",
                "~",
                "/proc/self",
                "{HOME}",
                "src/..",
                "${x:-..}",
                "docs/..",
                "me/cwd/..",
                "-P docs",
                "docs",
            ]);
            format!(
                "cd {to} && {} {}",
                g.pick(READERS),
                path.trim_start_matches("../")
            )
        }
        19 => format!("{head} {s}"),
        20 => {
            let target = g.pick(&[
                "x.txt",
                "./x.txt",
                "notes.txt",
                "{WORK}/x.txt",
                ".git/config",
                "../x.txt",
                "sub/../x.txt",
                "${x:-x.txt}",
                "x\\.txt",
                "'x.txt'",
            ]);
            let op = g.pick(&[">", ">>", "&>", "<>", ">|", "2>", "1>", "3>", ">&"]);
            format!("{head} {op} {target}")
        }
        22 => match g.below(3) {
            // Quotes inside an operand: literal inside "…", quote removal outside.
            0 => format!("{head} \"${{x{op}'{s}'}}\""),
            1 => format!("{head} ${{x{op}\"{s}\"}}"),
            _ => format!("{head} \"${{x{op}\\\"{s}\\\"}}\""),
        },
        23 => match g.below(3) {
            0 => format!("{head} <({p})"),
            1 => format!("{head} > >({p})"),
            _ => format!("cat <(ls) <({p}) | {head}"),
        },
        // Shapes that only look dangerous (literal text): the oracle must stay quiet on them.
        24 => match g.below(3) {
            0 => format!("{head} ${{x{op}$'\\x24({p})'}}"),
            1 => format!("{head} '$({p})' \\`{p}\\`"),
            _ => format!("{head} \"\\$({p})\""),
        },
        // Variables bash consults on its own (`~`, `cd`), set without a plain assignment.
        25 => {
            let reader = g.pick(READERS);
            let (var, value, then) = match g.below(3) {
                0 => ("HOME", "/proc/self", format!("{reader} ~/environ")),
                1 => ("CDPATH", "/proc", format!("cd self && {reader} environ")),
                _ => (
                    "HOME",
                    "{WORK}/docs",
                    format!("{reader} ~/webchat-web.tokens.json"),
                ),
            };
            match g.below(3) {
                0 => format!("read {var} <<< {value}; {then}"),
                1 => format!("for {var} in {value}; do {then}; done"),
                _ => format!("{var}={value} {then}"),
            }
        }
        _ => {
            // An assignment whose value bash evaluates later.
            let q = arith_operand(g, p);
            if owner {
                format!("x={q}; [[ $x -eq 1 ]]; {head}")
            } else {
                format!("{head} ${{a[{}]}}", q.trim_matches(['\'', '"']))
            }
        }
    }
}

/// A statement of one to three pieces joined the ways bash joins them.
fn statement(g: &mut Gen) -> String {
    let owner = g.chance(50);
    let mut heads: Vec<&str> = GUEST_HEADS.to_vec();
    if owner {
        heads.extend_from_slice(OWNER_HEADS);
    }
    let n = 1 + g.below(3);
    let dangerous_at = if g.chance(85) { Some(g.below(n)) } else { None };
    let mut pieces = Vec::new();
    for i in 0..n {
        let head = g.pick(&heads);
        let piece = if Some(i) == dangerous_at {
            dangerous(g, head, owner)
        } else {
            head.to_string()
        };
        pieces.push(piece);
    }
    let mut out = pieces[0].clone();
    for piece in &pieces[1..] {
        let join = g.pick(&["; ", " && ", " || ", " | ", "\n"]);
        out = format!("{out}{join}{piece}");
    }
    match g.below(10) {
        0 => format!("( {out} )"),
        1 => format!("{{ {out}; }}"),
        2 => format!("f() {{ {out}; }}; f"),
        3 if owner => format!("x=1; {out}"),
        4 => format!("if true; then {out}; fi"),
        5 => format!("for i in 1; do {out}; done"),
        _ => out,
    }
}

/// [`GENERATED`] distinct inputs from a fixed seed.
fn generated() -> Vec<Input> {
    let mut g = Gen(0x0AC1_E5EE_D000_0001);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for _ in 0..GENERATED * 20 {
        if out.len() == GENERATED {
            break;
        }
        let command = statement(&mut g);
        if seen.insert(command.clone()) {
            out.push(Input {
                origin: "generated".to_string(),
                command,
            });
        }
    }
    assert_eq!(out.len(), GENERATED, "the generator repeats itself");
    out
}

// ---- the oracle -----------------------------------------------------------------------------

/// One input's result.
struct Outcome {
    input: Input,
    /// [guest, owner]
    allowed: [bool; 2],
    params: Vec<String>,
    findings: Vec<String>,
    timed_out: bool,
}

/// Decides, and for allowed inputs runs and judges, every input on `threads` sandboxes.
fn run_all(tools: &Tools, inputs: &[Input], threads: usize) -> Vec<Outcome> {
    let dir = tempfile::tempdir().unwrap();
    let template = make_template(dir.path());
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for k in 0..threads {
            let (next, results, template, tools) = (&next, &results, &template, tools);
            let root = dir.path().join(format!("w{k}"));
            scope.spawn(move || {
                let s = Scratch::new(&root, template);
                let rules = RuleSets::new(&s);
                let guard = s.guard();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    let command = s.fill(&input.command);
                    let allowed = rules.allowed(&command, &s, &guard);
                    let params = extract("Bash", &json!({ "command": command }), &s.work).params;
                    let mut outcome = Outcome {
                        input: input.clone(),
                        allowed,
                        params: params.iter().map(|p| s.short(&p.text)).collect(),
                        findings: Vec::new(),
                        timed_out: false,
                    };
                    if allowed.contains(&true) {
                        s.reset();
                        let run = run_sandboxed(tools, &s, &command);
                        outcome.findings = judge(&s, &params, &run);
                        outcome.timed_out = run.timed_out;
                    }
                    results.lock().unwrap().push((i, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

fn threads() -> usize {
    std::env::var("ACG_ORACLE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3)
}

#[test]
fn allowed_bash_does_only_what_the_policy_saw() {
    let Some(tools) = tools() else { return };
    let mut inputs = corpus_inputs();
    inputs.extend(generated());
    let mut seen = HashSet::new();
    inputs.retain(|i| seen.insert(i.command.clone()));
    if let Ok(only) = std::env::var("ACG_ORACLE_ONLY") {
        inputs.retain(|i| i.command.contains(&only));
    }
    let started = Instant::now();
    let outcomes = run_all(&tools, &inputs, threads());
    let mut report = String::new();
    let mut findings_file = String::new();
    let mut total_bypasses = 0;
    let mut summary = Vec::new();
    for (r, role) in ["guest", "owner"].iter().enumerate() {
        let allowed: Vec<&Outcome> = outcomes.iter().filter(|o| o.allowed[r]).collect();
        let bypasses: Vec<&&Outcome> = allowed.iter().filter(|o| !o.findings.is_empty()).collect();
        let timeouts = allowed.iter().filter(|o| o.timed_out).count();
        let by_origin = |origin: &str| {
            let a = allowed
                .iter()
                .filter(|o| o.input.origin.starts_with(origin))
                .count();
            let b = bypasses
                .iter()
                .filter(|o| o.input.origin.starts_with(origin))
                .count();
            format!("{origin} {a}/{b}")
        };
        summary.push(format!(
            "oracle ({role}): {} inputs, {} allowed and executed, {} bypasses \
             [allowed/bypasses: {}, {}, {}, {}; {timeouts} timed out]",
            outcomes.len(),
            allowed.len(),
            bypasses.len(),
            by_origin("bash_corpus"),
            by_origin("harmless"),
            by_origin("bypass_corpus"),
            by_origin("generated"),
        ));
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for f in bypasses.iter().flat_map(|o| &o.findings) {
            let kind = finding_kind(f);
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        summary.push(format!("  findings ({role}): {}", kinds.join(", ")));
        for o in allowed.iter().filter(|o| o.timed_out) {
            report.push_str(&format!("TIMEOUT ({role}) {}\n", clip(&o.input.command)));
        }
        total_bypasses += bypasses.len();
        for o in bypasses {
            report.push_str(&format!(
                "BYPASS ({role}, {}) {}\n  params: {}\n",
                o.input.origin,
                clip(&o.input.command),
                clip(&format!("{:?}", o.params))
            ));
            for f in &o.findings {
                report.push_str(&format!("  - {f}\n"));
            }
            findings_file.push_str(&format!(
                "{role}\t{}\t{}\t{}\n",
                o.input.origin,
                clip(&o.input.command),
                o.findings.join("; ")
            ));
        }
    }
    let mut classes: Vec<&str> = Vec::new();
    for o in &outcomes {
        if let Some(class) = o.input.origin.strip_prefix("bypass_corpus:") {
            if !classes.contains(&class) {
                classes.push(class);
            }
        }
    }
    summary
        .push("  bypass corpus by class (guest allowed/bypasses, owner allowed/bypasses):".into());
    for class in classes {
        let origin = format!("bypass_corpus:{class}");
        let of_class: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.input.origin == origin)
            .collect();
        let count = |r: usize, bypass: bool| {
            of_class
                .iter()
                .filter(|o| o.allowed[r] && (!bypass || !o.findings.is_empty()))
                .count()
        };
        summary.push(format!(
            "    {class}: {} inputs; guest {}/{}, owner {}/{}",
            of_class.len(),
            count(0, false),
            count(0, true),
            count(1, false),
            count(1, true)
        ));
    }
    eprintln!("{report}");
    for line in &summary {
        eprintln!("{line}");
    }
    eprintln!(
        "oracle: {:.1}s on {} threads",
        started.elapsed().as_secs_f64(),
        threads()
    );
    if let Ok(path) = std::env::var("ACG_ORACLE_FINDINGS") {
        fs::write(&path, &findings_file).unwrap();
    }
    if std::env::var("ACG_ORACLE_ONLY").is_err() {
        // The oracle checks nothing unless the policy lets a fair share of inputs run.
        for (r, role) in ["guest", "owner"].iter().enumerate() {
            let allowed = outcomes.iter().filter(|o| o.allowed[r]).count();
            assert!(
                allowed >= 100,
                "only {allowed} inputs allowed for the {role}"
            );
        }
    }
    if total_bypasses > 0 && std::env::var("ACG_ORACLE_REPORT_ONLY").as_deref() != Ok("1") {
        panic!(
            "{total_bypasses} bypasses (see above; ACG_ORACLE_REPORT_ONLY=1 to only report):\n{}",
            summary.join("\n")
        );
    }
}

// ---- the oracle's own checks ----------------------------------------------------------------

/// Runs `command` and judges it against the parameters of `seen` (what a policy would have
/// looked at), on a fresh scratch tree.
fn judge_as_if(tools: &Tools, command: &str, seen: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let template = make_template(dir.path());
    let s = Scratch::new(&dir.path().join("w"), &template);
    let command = s.fill(command);
    let params = extract("Bash", &json!({ "command": s.fill(seen) }), &s.work).params;
    let run = run_sandboxed(tools, &s, &command);
    assert!(!run.timed_out, "{}", clip(&command));
    judge(&s, &params, &run)
}

/// Each kind of bypass is seen when the parameters miss it: the oracle can fail.
#[test]
fn the_oracle_sees_what_the_parameters_miss() {
    let Some(tools) = tools() else { return };
    let cases = [
        ("ls; id", "ls", "ran /usr/bin/id"),
        ("ls $(uname)", "ls", "ran /usr/bin/uname"),
        ("echo x > a.txt", "echo x", "wrote {WORK}/a.txt"),
        (
            "git log -1 --output=.git/config",
            "git log -1",
            "wrote {WORK}/.git/config (git",
        ),
        ("rm notes.txt", "rm notes.txt", "unlink"),
        ("mkdir d", "mkdir d", "mkdir"),
        ("ln -s /tmp l", "ln -s /tmp l", "symlink"),
        (
            "cat {RT}/webchat-web.tokens.json",
            "cat x",
            "opened {RT}/webchat-web.tokens.json",
        ),
        (
            "cat {RT}/webchat-web.tokens.json",
            "cat x",
            "printed the web chat token",
        ),
        ("ls -la {RT}", "ls -la x", "opened {RT} (ls"),
        (
            "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('{RT}/control.sock')\"",
            "python3 -c x",
            "connected to {RT}/control.sock (python3",
        ),
        ("cat /proc/self/environ", "cat x", "a process environment"),
        ("echo $ACG_HOOK_SECRET", "echo x", "printed the hook secret"),
        (
            "cat {RT}/agents/claude/* > n.txt",
            "cat x > n.txt",
            "left the hook settings secret in {WORK}/n.txt",
        ),
        (
            "PATH=.:$PATH; printf '#!/bin/sh\\n' > ls; chmod +x ls; ls",
            "printf x > ls; chmod +x ls; ls",
            "ran {WORK}/ls",
        ),
        (
            "cd src && /bin/ls ../x 2>/dev/null; true",
            "cd src; /bin/ls; true",
            "",
        ),
    ];
    let mut errors = Vec::new();
    for (command, seen, expect) in cases {
        let findings = judge_as_if(&tools, command, seen);
        let ok = if expect.is_empty() {
            findings.is_empty()
        } else {
            findings.iter().any(|f| f.contains(expect))
        };
        if !ok {
            errors.push(format!(
                "{} seen as {seen:?}: expected {expect:?}, got {findings:?}",
                clip(command)
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// What the allowed programs do on their own (git's index refresh, big heredocs, redirects
/// the policy saw, pipes, /dev/null) is no finding: the noise rules are enough.
#[test]
fn harmless_commands_have_no_findings() {
    let Some(tools) = tools() else { return };
    let big = "x".repeat(100_000);
    let cases = [
        "ls -la; git status; git log --oneline; git diff; git log -p -1".to_string(),
        "cat README.md | wc -l; grep -n hello README.md 2>&1; head -n 1 < notes.txt".to_string(),
        format!("cat <<EOF > big.txt\n{big}\nEOF\nwc -c big.txt"),
        "echo hi > out.txt; echo more >> out.txt; cat out.txt > /dev/null 2>/dev/stderr"
            .to_string(),
        "diff <(ls) <(ls src) || true; tee >(wc -l) < notes.txt".to_string(),
        "find . -name '*.md' -exec cat {} \\; ; timeout 2 ls; env ls; xargs ls < /dev/null"
            .to_string(),
        // The owner set's commands that the generator builds around.
        "echo hi; printf '%s\\n' x; sed -n 1p README.md; awk 'NR==1' README.md; sort notes.txt"
            .to_string(),
        "find . -maxdepth 1 -name '*.md'; git show --stat HEAD; python3 -c 'print(1)'; cd src; ls"
            .to_string(),
    ];
    let mut errors = Vec::new();
    for command in &cases {
        let findings = judge_as_if(&tools, command, command);
        if !findings.is_empty() {
            errors.push(format!("{}: {findings:?}", clip(command)));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// strace lines are split as strace writes them.
#[test]
fn strace_lines_parse() {
    let c = parse_call(r#"openat(AT_FDCWD</w/a, b>, "x\"y\303\251", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</w/a, b/x"yé>"#).unwrap();
    assert_eq!(c.name, "openat");
    assert_eq!(c.args.len(), 4, "{c:?}");
    assert_eq!(c.fd_arg(0).as_deref(), Some("/w/a, b"));
    assert_eq!(c.str_arg(1).as_deref(), Some("x\"yé"));
    assert!(c.ok());
    assert_eq!(fd_path(&c.ret).as_deref(), Some("/w/a, b/x\"yé"));
    let e = parse_call(r#"execve("/usr/bin/ls", ["ls", "-l", "a\nb"], ["A=1"]) = 0"#).unwrap();
    assert_eq!(decode_array(&e.args[1]), ["ls", "-l", "a\nb"]);
    let f = parse_call(
        r#"openat(AT_FDCWD</w>, "nope", O_RDONLY) = -1 ENOENT (No such file or directory)"#,
    )
    .unwrap();
    assert!(!f.ok());
    let k = parse_call(
        r#"clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x7f) = 12"#,
    )
    .unwrap();
    assert_eq!(k.ret_number(), Some(12));
    assert!(parse_call("+++ exited with 0 +++").is_none());
    assert!(parse_call(r#"openat(AT_FDCWD</w>, "x", O_RDONLY <unfinished ...>"#).is_none());
    assert_eq!(lexical("../b/./c", "/w/a"), "/w/b/c");
}
