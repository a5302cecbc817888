//! Self-protection: tool calls that reach the gateway's own control plane are denied whatever
//! the allow-lists say (even `Bash(.*)`), because the agent runs as the same Unix user as the
//! daemon (unless `run_as` is set) and could otherwise stop it, approve its own requests or
//! read its secrets. OS confinement (`agent::confine`) enforces the same boundary underneath;
//! this check makes the refusal early, explained, and independent of the kernel.
//!
//! Owns: the [`Guard`] value (built once per turn by the caller) and its check over the
//! parameters that [`super::decide`] extracted, giving a [`Verdict`]. Denied:
//! - running `agent-chat-gateway` (any path, also behind `env`, `exec`, `command`, `sudo`,
//!   `xargs`, `find -exec`, `bash -c`, `eval` …, and any parameter that names it as a word),
//!   except `agent-chat-gateway send <own room> …` as a plain command, with `--connector`, if
//!   given, naming the turn's own connector;
//! - a path that *resolves* into the runtime dir or an extra protected path: file-tool paths,
//!   redirect targets, tool `path` fields, and every word of a command that could be a path
//!   (the word, `--opt=VALUE`, `key=VALUE`, `-fVALUE`), resolved where the command runs (the
//!   analyser follows `cd`), `~` as the agent's home, symlinks followed; `/proc/self`,
//!   `/proc/thread-self` and `/proc/<pid>` mean the agent's processes and everything below
//!   them but a few harmless files (`status`, `cmdline` …) is protected (`environ` holds the
//!   hook secret); any call made while the agent's cwd is inside a protected dir;
//! - a glob or brace pattern, or a run-time value, whose static prefix could expand into a
//!   protected path (`~/.agent-chat-*/x`, `/proc/self/envi*`, `${x:-/proc/self/env}iron`);
//! - a command that walks directories (`grep -r`, `find`, `rg`, `tar`, `du` …) pointed at, or
//!   run in, a directory above a protected path, `/proc` or `/`;
//! - as a second net on the text: any parameter mentioning the runtime dir (as given,
//!   canonical, `~/…`/`$HOME/…` forms, its name when it is the default
//!   `.agent-chat-gateway`), the control socket's file name, `ACG_HOME` or `ACG_HOOK_SECRET`;
//!   `env`/`printenv` with nothing to run, `set` without arguments, `export`/`declare`/
//!   `typeset` listing variables, BSD-style `ps e`, `/proc/…/environ`, `${!…}`.
//!
//! Uncheckable (owners asked, guests denied): any other word only known at run time given to
//! a command that may open files (it could hold `..`), and a relative path where the working
//! directory is unknown.
//!
//! Naming the gateway is fine in the input of tools that run nothing (WebSearch, Grep, …); the
//! runtime-dir and secret checks apply to every tool.
//!
//! Read (only Read) may open files under directories declared readable (the attachments the
//! gateway downloads for the agent live in the runtime dir).
//!
//! Residual risks (why confinement and `run_as` matter): an interpreter can build names at run
//! time (`python3 -c "open('/home/a/.agent-chat-'+'gateway/x')"`), and a hard link made
//! earlier is not recognised. False positives, on the safe side: a directory named
//! `agent-chat-gateway` referred to by that name (`cd ~/src/agent-chat-gateway`), a bash
//! argument that mentions the name as a word (`git commit -m "fix agent-chat-gateway send"`),
//! files named `control.sock`.

use std::path::{Path, PathBuf};

use super::args::{long, short};
use super::bash::basename;
use super::paths;
use super::{Arg, Param, ParamKind};

/// The gateway's executable name.
pub const GATEWAY_BIN: &str = "agent-chat-gateway";
/// The environment variable that carries the per-run hook secret.
pub const HOOK_SECRET_VAR: &str = "ACG_HOOK_SECRET";
/// The control socket's file name inside the runtime dir.
pub const CONTROL_SOCKET: &str = "control.sock";

const REASON: &str = "blocked: touches the gateway's control plane";

/// Variables whose mention in something that runs is a denial: the secret itself, and the
/// variable that points at the runtime dir.
const SECRET_NAMES: &[&str] = &[HOOK_SECRET_VAR, "ACG_HOME"];

/// Tools that cannot run anything, so naming the gateway in their input is harmless (a web
/// search for it, a todo about it). `Task` qualifies because a sub-agent's own tool calls go
/// through the hook again.
const NO_EXEC_TOOLS: &[&str] = &[
    "websearch",
    "webfetch",
    "todowrite",
    "grep",
    "glob",
    "task",
    "toolsearch",
    "exitplanmode",
];

/// Self-protection settings for one turn. [`Guard::none`] disables every check (tests,
/// `policy check` without a runtime dir).
#[derive(Clone, Debug, Default)]
pub struct Guard {
    inner: Option<Inner>,
}

#[derive(Clone, Debug)]
struct Inner {
    /// Directories no tool may touch (runtime dir as given and canonical, extra paths).
    protected: Vec<PathBuf>,
    /// Strings whose mention in any parameter of any tool is a denial (paths, socket name).
    markers: Vec<String>,
    /// Directories inside `protected` that Read may open.
    readable: Vec<PathBuf>,
    own_room: Option<String>,
    own_connector: Option<String>,
    /// The agent's home, for `~` in paths.
    home: Option<PathBuf>,
}

/// What the guard makes of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Reaches the gateway's own files or control plane: denied for everyone.
    Deny(String),
    /// A path that could reach them is only known at run time: cannot be checked (owners are
    /// asked, guests denied), like an analysis problem.
    Uncheckable(String),
}

/// Commands that never open their operands as files, so an operand only known at run time
/// cannot reach a protected file through them.
const NO_FILE_OPERANDS: &[&str] = &[
    "echo", "printf", "true", "false", ":", "exit", "return", "shift", "sleep", "seq", "expr",
    "basename", "dirname", "test", "[", "cd", "export", "declare", "local", "readonly", "typeset",
    "unset", "for",
];

impl Guard {
    /// No self-protection at all.
    pub fn none() -> Guard {
        Guard { inner: None }
    }

    /// Protects `runtime_dir` (state files, audit log, tokens, control socket, hook settings).
    pub fn new(runtime_dir: impl Into<PathBuf>) -> Guard {
        let runtime_dir = runtime_dir.into();
        let mut inner = Inner {
            protected: Vec::new(),
            markers: vec![CONTROL_SOCKET.to_string()],
            readable: Vec::new(),
            own_room: None,
            own_connector: None,
            home: None,
        };
        if let Some(name) = runtime_dir.file_name().and_then(|n| n.to_str()) {
            // Only a distinctive name is a safe marker (`~/.agent-chat-gateway`, not `/srv/x`).
            if name.contains(GATEWAY_BIN) {
                inner.markers.push(name.to_string());
            }
        }
        inner.add_protected(&runtime_dir);
        Guard { inner: Some(inner) }
    }

    /// Also recognises the runtime dir written relative to `home` (`~/…`, `$HOME/…`).
    pub fn with_home(mut self, home: &Path) -> Guard {
        if let Some(inner) = &mut self.inner {
            inner.home = home.is_absolute().then(|| home.to_path_buf());
            let mut forms = Vec::new();
            for dir in &inner.protected {
                if let Ok(rel) = dir.strip_prefix(home) {
                    let rel = rel.display();
                    forms.push(format!("~/{rel}"));
                    forms.push(format!("$HOME/{rel}"));
                    forms.push(format!("${{HOME}}/{rel}"));
                }
            }
            for form in forms {
                inner.add_marker(form);
            }
        }
        self
    }

    /// Protects one more path (a hook settings file kept outside the runtime dir, …).
    pub fn with_protected(mut self, path: impl Into<PathBuf>) -> Guard {
        if let Some(inner) = &mut self.inner {
            inner.add_protected(&path.into());
        }
        self
    }

    /// Lets Read open files under `dir` even though it is inside the runtime dir.
    pub fn with_readable(mut self, dir: impl Into<PathBuf>) -> Guard {
        if let Some(inner) = &mut self.inner {
            let dir = dir.into();
            inner.readable.push(paths::resolve(&dir));
            inner.readable.push(dir);
        }
        self
    }

    /// The room (and connector) of the turn: `agent-chat-gateway send` may target only it.
    pub fn with_own_room(mut self, connector: Option<&str>, room: &str) -> Guard {
        if let Some(inner) = &mut self.inner {
            inner.own_connector = connector.map(str::to_string);
            inner.own_room = Some(room.to_string());
        }
        self
    }

    pub fn is_none(&self) -> bool {
        self.inner.is_none()
    }

    /// What the guard makes of a call: `None` when it has no objection. `tool` is lower-case.
    pub(crate) fn check(
        &self,
        tool: &str,
        params: &[Param],
        input: &serde_json::Value,
        cwd: &Path,
    ) -> Option<Verdict> {
        let inner = self.inner.as_ref()?;
        if cwd.is_absolute() && inner.is_protected(&paths::resolve(cwd)) {
            return Some(Verdict::Deny(format!(
                "{REASON} (working directory {})",
                cwd.display()
            )));
        }
        let mut uncheckable = None;
        for param in params {
            if let Some(why) = inner.check_param(tool, param) {
                return Some(Verdict::Deny(format!("{REASON} ({why})")));
            }
            if let ParamKind::Command { argv, args, cwds } = &param.kind {
                match inner.check_args(argv, args, cwds) {
                    Some(Verdict::Deny(why)) => {
                        return Some(Verdict::Deny(format!("{REASON} ({why})")))
                    }
                    Some(v) if uncheckable.is_none() => uncheckable = Some(v),
                    _ => {}
                }
            }
        }
        if tool != "bash" {
            if let Some(why) = inner.check_path_fields(input, cwd) {
                return Some(Verdict::Deny(format!("{REASON} ({why})")));
            }
        }
        uncheckable
    }
}

impl Inner {
    fn add_marker(&mut self, marker: String) {
        if !marker.is_empty() && !self.markers.contains(&marker) {
            self.markers.push(marker);
        }
    }

    /// Only absolute paths mean anything here (the daemon resolves its runtime dir first).
    fn add_protected(&mut self, path: &Path) {
        if !path.is_absolute() {
            return;
        }
        let resolved = paths::resolve(path);
        for p in [path.to_path_buf(), resolved] {
            if p.is_absolute() && p != Path::new("/") && !self.protected.contains(&p) {
                self.add_marker(p.display().to_string());
                self.protected.push(p);
            }
        }
    }

    fn is_protected(&self, path: &Path) -> bool {
        self.protected.iter().any(|d| paths::is_within(path, d)) || paths::is_process_internal(path)
    }

    /// Every word of a command that could name a path, resolved where the command runs
    /// (`cwds`) with `~` as the agent's home: a protected one is denied; a pattern or a
    /// run-time value that could expand into a protected directory is denied too; any other
    /// run-time value cannot be checked (it could hold `..`), unless the command never opens
    /// its operands.
    fn check_args(
        &self,
        argv: &[Option<String>],
        args: &[Arg],
        cwds: &[PathBuf],
    ) -> Option<Verdict> {
        let name = argv.first().cloned().flatten().unwrap_or_default();
        let name = basename(&name);
        let no_file = NO_FILE_OPERANDS.contains(&name);
        let walks = walks_directories(name, argv);
        if walks && follows_links(name, argv) {
            return Some(Verdict::Uncheckable(format!(
                "`{name}` follows symbolic links while it walks directories"
            )));
        }
        if walks && DEFAULTS_TO_CWD.contains(&name) {
            // `grep -r x`, `find`, `rg x` walk the working directory when given none.
            if let Some(dir) = cwds.iter().find(|c| self.holds_protected(c)) {
                return Some(Verdict::Deny(format!(
                    "`{name}` may walk the working directory {}, which holds protected paths",
                    dir.display()
                )));
            }
        }
        let mut verdict = None;
        for (i, arg) in args.iter().enumerate() {
            // A command name without `/` is looked up in PATH, not opened here.
            if i == 0 && matches!(arg, Arg::Static(v) if !v.contains('/')) {
                continue;
            }
            let walker = walks.then_some(name);
            match self.check_arg(arg, cwds, no_file, walker) {
                Some(Verdict::Deny(why)) => return Some(Verdict::Deny(why)),
                Some(v) if verdict.is_none() => verdict = Some(v),
                _ => {}
            }
        }
        verdict
    }

    /// `dir` is above a protected path: `/`, `/proc`, a process directory, or an ancestor of
    /// the runtime dir.
    fn holds_protected(&self, dir: &Path) -> bool {
        dir == Path::new("/")
            || dir == Path::new("/proc")
            || (paths::is_process_internal(&dir.join("environ"))
                && !paths::is_process_internal(dir))
            || self
                .protected
                .iter()
                .any(|d| d != dir && d.starts_with(dir))
    }

    /// `walker`: the command may descend into a directory operand, so a static one above a
    /// protected path (`grep -r x ..` from a project beside the runtime dir, `find /`, also
    /// through a `for` variable) is denied too.
    fn check_arg(
        &self,
        arg: &Arg,
        cwds: &[PathBuf],
        no_file: bool,
        walker: Option<&str>,
    ) -> Option<Verdict> {
        match arg {
            Arg::OneOf(each) => {
                let mut verdict = None;
                for a in each {
                    match self.check_arg(a, cwds, no_file, walker) {
                        Some(Verdict::Deny(why)) => return Some(Verdict::Deny(why)),
                        Some(v) if verdict.is_none() => verdict = Some(v),
                        _ => {}
                    }
                }
                verdict
            }
            Arg::Static(value) => {
                for candidate in path_candidates(value) {
                    match self.resolve_all(candidate, cwds) {
                        Some(paths) => {
                            if let Some(p) = paths.iter().find(|p| self.is_protected(p)) {
                                return Some(Verdict::Deny(format!(
                                    "path {} is protected",
                                    p.display()
                                )));
                            }
                            if let Some(name) = walker {
                                if let Some(p) = paths.iter().find(|p| self.holds_protected(p)) {
                                    return Some(Verdict::Deny(format!(
                                        "`{name}` may walk {}, which holds protected paths",
                                        p.display()
                                    )));
                                }
                            }
                        }
                        None if no_file => {}
                        None => {
                            return Some(Verdict::Uncheckable(format!(
                                "`{candidate}` is relative to a directory only known at run time"
                            )))
                        }
                    }
                }
                None
            }
            Arg::Pattern(prefix) | Arg::Dynamic(prefix) => {
                let dynamic = matches!(arg, Arg::Dynamic(_));
                if dynamic && no_file {
                    return None;
                }
                let candidates = path_candidates(prefix);
                let candidates = if candidates.is_empty() {
                    vec![""]
                } else {
                    candidates
                };
                for candidate in candidates {
                    let (dir, rest) = match candidate.rfind('/') {
                        Some(at) => (&candidate[..=at], &candidate[at + 1..]),
                        None => ("", candidate),
                    };
                    let dirs = if dir.is_empty() {
                        (!cwds.is_empty()).then(|| cwds.to_vec())
                    } else {
                        self.resolve_all(dir, cwds)
                    };
                    let Some(dirs) = dirs else {
                        return Some(Verdict::Uncheckable(format!(
                            "`{candidate}…` is relative to a directory only known at run time"
                        )));
                    };
                    if let Some(d) = dirs.iter().find(|d| self.could_reach(d, rest, !dynamic)) {
                        return Some(Verdict::Deny(format!(
                            "`{candidate}…` could expand into a protected path under {}",
                            d.display()
                        )));
                    }
                }
                dynamic.then(|| {
                    Verdict::Uncheckable(format!(
                        "`{prefix}…` is only known at run time and could name a protected path"
                    ))
                })
            }
        }
    }

    /// `value` as an absolute path for each possible working directory; `None` when it is
    /// relative and the directory is unknown, or starts with `~` and the home is unknown.
    fn resolve_all(&self, value: &str, cwds: &[PathBuf]) -> Option<Vec<PathBuf>> {
        let expanded;
        let value = if value == "~" || value.starts_with("~/") {
            let home = self.home.as_ref()?;
            expanded = format!("{}{}", home.display(), &value[1..]);
            expanded.as_str()
        } else if value.starts_with('~') {
            return None;
        } else {
            value
        };
        if value.is_empty() {
            return Some(Vec::new());
        }
        if Path::new(value).is_absolute() {
            return Some(vec![paths::resolve(Path::new(value))]);
        }
        if cwds.is_empty() {
            return None;
        }
        Some(
            cwds.iter()
                .filter_map(|c| paths::normalize(value, c))
                .collect(),
        )
    }

    /// A pattern whose literal part ends with `dir/rest` could match a protected path: `dir`
    /// is protected or holds one whose next component starts with `rest`. `dots_literal`: a
    /// glob (unlike a run-time value) never matches a leading `.` that it does not spell.
    fn could_reach(&self, dir: &Path, rest: &str, dots_literal: bool) -> bool {
        if self.is_protected(dir) || dir.starts_with("/proc") {
            return true;
        }
        // `/pro?/self/environ`: the process files are protected too.
        if dir == Path::new("/") && "proc".starts_with(rest) {
            return true;
        }
        self.protected.iter().any(|p| {
            let Ok(below) = p.strip_prefix(dir) else {
                return false;
            };
            let Some(next) = below.components().next() else {
                return false;
            };
            let next = next.as_os_str().to_string_lossy();
            next.starts_with(rest)
                && !(dots_literal && next.starts_with('.') && !rest.starts_with('.'))
        })
    }

    fn is_readable(&self, path: &Path) -> bool {
        self.readable.iter().any(|d| paths::is_within(path, d))
    }

    fn check_param(&self, tool: &str, param: &Param) -> Option<String> {
        let text = param.text.as_str();
        match &param.kind {
            ParamKind::Path(path) if tool == "read" && self.is_readable(path) => {
                // The readable dir may sit inside the runtime dir: the path check stands alone.
                return None;
            }
            ParamKind::Path(path) | ParamKind::Redirect { path, .. } if self.is_protected(path) => {
                return Some(format!("path {} is protected", path.display()));
            }
            _ => {}
        }
        if let Some(marker) = self.markers.iter().find(|m| text.contains(m.as_str())) {
            return Some(format!("mentions `{marker}`"));
        }
        if NO_EXEC_TOOLS.contains(&tool) {
            // Variable names in a search pattern or a todo cannot expand to anything.
            return None;
        }
        if let Some(name) = SECRET_NAMES.iter().find(|n| text.contains(*n)) {
            return Some(format!("mentions `{name}`"));
        }
        if text.contains("/proc") && text.contains("environ") {
            return Some("reads a process environment".to_string());
        }
        if text.contains("${!") {
            return Some("indirect expansion can read the hook secret".to_string());
        }
        let send_ok = match &param.kind {
            ParamKind::Command { argv, .. } => {
                if let Some(why) = env_dump(argv) {
                    return Some(why);
                }
                let own_send = self.is_own_send(argv);
                let runs_gateway = argv
                    .first()
                    .and_then(|a| a.as_deref())
                    .is_some_and(|a| basename(a) == GATEWAY_BIN);
                if runs_gateway && !own_send {
                    return Some(format!("runs `{GATEWAY_BIN}`"));
                }
                own_send
            }
            _ => false,
        };
        if !send_ok && !NO_EXEC_TOOLS.contains(&tool) && names_gateway(text) {
            return Some(format!("runs or names `{GATEWAY_BIN}`"));
        }
        None
    }

    /// `agent-chat-gateway send <own room> [text|-] [--attach FILE] [--connector NAME]`.
    fn is_own_send(&self, argv: &[Option<String>]) -> bool {
        let Some(own_room) = &self.own_room else {
            return false;
        };
        let is_gateway = argv
            .first()
            .and_then(|a| a.as_deref())
            .is_some_and(|a| basename(a) == GATEWAY_BIN);
        if !is_gateway || argv.get(1).and_then(|a| a.as_deref()) != Some("send") {
            return false;
        }
        let mut room: Option<&str> = None;
        let mut positionals = 0;
        let mut i = 2;
        while i < argv.len() {
            let arg = argv[i].as_deref();
            match arg {
                Some("--connector") | Some("--attach") => {
                    let value = argv.get(i + 1).and_then(|a| a.as_deref());
                    if arg == Some("--connector") && !self.own_connector_is(value) {
                        return false;
                    }
                    if value.is_none() && arg == Some("--connector") {
                        return false;
                    }
                    i += 2;
                    continue;
                }
                Some(a) if a.starts_with("--connector=") => {
                    if !self.own_connector_is(Some(&a["--connector=".len()..])) {
                        return false;
                    }
                }
                Some(a) if a.starts_with("--attach=") => {}
                Some(a) if a.starts_with('-') && a != "-" => return false,
                _ => {
                    if positionals == 0 {
                        match arg {
                            Some(r) => room = Some(r),
                            None => return false,
                        }
                    }
                    positionals += 1;
                }
            }
            i += 1;
        }
        room == Some(own_room.as_str())
    }

    fn own_connector_is(&self, given: Option<&str>) -> bool {
        match (given, &self.own_connector) {
            (Some(given), Some(own)) => given == own,
            _ => false,
        }
    }

    /// `path`-like string fields of a non-bash tool's input (Grep, Glob, LS, MCP tools …).
    fn check_path_fields(&self, input: &serde_json::Value, cwd: &Path) -> Option<String> {
        let object = input.as_object()?;
        for (key, value) in object {
            let key = key.to_ascii_lowercase();
            let pathish =
                key.ends_with("path") || matches!(key.as_str(), "cwd" | "dir" | "directory");
            let Some(value) = value.as_str().filter(|_| pathish) else {
                continue;
            };
            if let Some(path) = paths::normalize(value, cwd) {
                if self.is_protected(&path) && !(key == "file_path" && self.is_readable(&path)) {
                    return Some(format!("path {} is protected", path.display()));
                }
            }
        }
        None
    }
}

/// Commands that open a directory operand without descending into it (or do not open it at
/// all). Any other command might walk it: `grep -r`, `find`, `rg`, `tar`, `cp -r`, `du` …
const NON_RECURSIVE: &[&str] = &[
    "cat", "head", "tail", "wc", "file", "stat", "echo", "printf", "test", "[", "cd", "basename",
    "dirname", "realpath", "readlink", "mkdir", "touch", "pwd", "true", "false", ":", "for",
    "sleep", "export", "declare", "local", "readonly", "typeset", "unset", "read", "set",
];

/// Walkers that walk the working directory when given no directory.
const DEFAULTS_TO_CWD: &[&str] = &[
    "find", "grep", "egrep", "fgrep", "rg", "ag", "ack", "fd", "fdfind", "du", "tree", "ls",
];

/// `name` run with `argv` may descend into a directory operand.
fn walks_directories(name: &str, argv: &[Option<String>]) -> bool {
    if NON_RECURSIVE.contains(&name) {
        return false;
    }
    let flags = || argv[1..].iter().flatten().filter(|a| a.starts_with('-'));
    match name {
        // `git diff` compares two directory trees when a path lies outside the work tree
        // (`--no-index` is implied), and `git grep --no-index` searches one.
        "git" => {
            let sub = argv[1..]
                .iter()
                .flatten()
                .find(|a| !a.starts_with('-'))
                .map(String::as_str);
            matches!(sub, Some("diff" | "grep")) || argv[1..].iter().any(|a| a.is_none())
        }
        "ls" => flags().any(|a| long(a, "recursive") || short(a, &['R'])),
        "grep" | "egrep" | "fgrep" => {
            flags().any(|a| {
                long(a, "recursive")
                    || long(a, "dereference-recursive")
                    || long(a, "directories")
                    || short(a, &['r', 'R', 'd'])
            }) || argv[1..].iter().any(|a| a.is_none())
        }
        _ => true,
    }
}

/// A walker told to follow symbolic links (`find -L`, `grep -R`, `rg -L`, `cp -L` …): a link
/// anywhere below can lead into a protected directory, which no path check sees.
fn follows_links(name: &str, argv: &[Option<String>]) -> bool {
    let flags = || argv[1..].iter().flatten().filter(|a| a.starts_with('-'));
    match name {
        "find" => flags().any(|a| matches!(a.as_str(), "-L" | "-follow" | "-H")),
        "grep" | "egrep" | "fgrep" => {
            flags().any(|a| long(a, "dereference-recursive") || short(a, &['R']))
        }
        "rg" | "fd" | "fdfind" | "ag" => flags().any(|a| long(a, "follow") || short(a, &['L'])),
        "tree" => flags().any(|a| short(a, &['l'])),
        "ls" | "du" | "cp" | "rsync" | "chmod" | "chown" => flags().any(|a| {
            long(a, "dereference")
                || long(a, "copy-links")
                || long(a, "dereference-args")
                || short(a, &['L'])
        }),
        "tar" => flags().any(|a| long(a, "dereference") || short(a, &['h'])),
        _ => false,
    }
}

/// The parts of a word that may be a path: the word, the value of `--opt=VALUE` or
/// `key=VALUE` (`dd if=…`), and the value glued to a short option (`-f/path`).
fn path_candidates(word: &str) -> Vec<&str> {
    if word.contains("://") {
        // A URL names no local path.
        return Vec::new();
    }
    if let Some(option) = word.strip_prefix('-') {
        if let Some((_, value)) = word.split_once('=') {
            return vec![value];
        }
        if !option.starts_with('-') && option.len() > 1 && option[1..].contains('/') {
            return vec![&option[1..]];
        }
        return Vec::new();
    }
    match word.split_once('=') {
        Some((_, value)) => vec![word, value],
        None => vec![word],
    }
}

/// Commands that print the environment (and with it the hook secret).
fn env_dump(argv: &[Option<String>]) -> Option<String> {
    let name = basename(argv.first()?.as_deref()?);
    let args: Vec<&str> = argv[1..]
        .iter()
        .map(|a| a.as_deref().unwrap_or("$"))
        .collect();
    let is_flag = |a: &&str| a.starts_with('-') || a.starts_with('+');
    let dumps = match name {
        "printenv" => true,
        // `env` with nothing left to run prints the environment (wrapped commands are
        // checked as their own parameters).
        "env" => args.iter().all(|a| is_flag(a) || a.contains('=')),
        "set" => args.is_empty(),
        // BSD-style `ps e…` prints each process's environment.
        "ps" => args.iter().any(|a| {
            !a.starts_with('-') && a.chars().all(|c| c.is_ascii_alphabetic()) && a.contains('e')
        }),
        "export" | "declare" | "typeset" | "local" | "readonly" => {
            args.iter().all(is_flag) || args.iter().any(|a| is_flag(a) && a.contains('p'))
        }
        _ => false,
    };
    dumps.then(|| format!("`{name}` can print the hook secret"))
}

/// `agent-chat-gateway` appears as a word: not part of a longer name (`agent-chat-gateway-src`,
/// `agent-chat-gateway.service`) and not a directory on a longer path (`…/agent-chat-gateway/x`).
fn names_gateway(text: &str) -> bool {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    text.match_indices(GATEWAY_BIN).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + GATEWAY_BIN.len()..].chars().next();
        !before.is_some_and(is_name_char) && !after.is_some_and(|c| is_name_char(c) || c == '/')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_word_detection() {
        let cases = [
            ("agent-chat-gateway stop", true),
            ("/usr/local/bin/agent-chat-gateway status", true),
            ("echo 'agent-chat-gateway stop' | sh", true),
            ("python3 -c \"run(['agent-chat-gateway','stop'])\"", true),
            ("cd ~/src/agent-chat-gateway", true),
            ("cat agent-chat-gateway/README.md", false),
            ("systemctl status agent-chat-gateway.service", false),
            ("ls my-agent-chat-gateway-fork", false),
        ];
        for (text, expect) in cases {
            assert_eq!(names_gateway(text), expect, "{text}");
        }
    }
}
