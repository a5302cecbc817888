//! Built-in argument rules: options of common programs that write files or run commands,
//! and writes to files that make *later* commands run something (git config and hooks,
//! shell rc files, ssh and cargo config, the agent's own settings). They apply whatever the
//! allow-lists say, because an allow-list entry like `git (status|log|diff)( .*)?` or
//! `sed .*` is written for reading, and these turn it into a write or an exec: a guest is
//! denied, an owner is asked.
//!
//! Owns: the rule table ([`RULES`], shown by `docs/ARCHITECTURE.md`) and [`check`] over the
//! parameters of one call. Knows nothing about roles or allow-lists (see `super::decide`).
//!
//! Each rule looks at a command's words as the analyser knows them ([`Arg`]): a word only
//! known at run time, given to a program with such options, could be one of them, so it
//! triggers the rule too ("cannot check the arguments").

use std::path::{Component, Path};

use super::bash::basename;
use super::{Arg, Param, ParamKind};

/// The rules by name, with what they stop (for docs and `policy check`).
pub const RULES: &[(&str, &str)] = &[
    (
        "git-config",
        "git -c/--config-env/--exec-path/--git-dir/--work-tree, and `git config` that sets: \
         config can name programs git runs (core.fsmonitor, core.pager, diff drivers …)",
    ),
    (
        "git-exec",
        "git options that run or write: --output, --ext-diff, --upload-pack/-u, --receive-pack, \
         --exec/-x, grep -O/--open-files-in-pager, difftool --extcmd, and filter-branch, \
         submodule foreach, bisect run",
    ),
    (
        "cargo-config",
        "cargo --config and -Z (a `runner` or `rustc-wrapper` runs anything)",
    ),
    (
        "find-exec",
        "find -exec/-execdir/-ok/-okdir/-delete/-fprint*/-fls",
    ),
    (
        "sed-write",
        "sed -i/--in-place/-f, and scripts with e, w, W, r, R or s///e, s///w",
    ),
    (
        "awk-exec",
        "awk/gawk/mawk programs with system(), pipes, getline, output redirects, ENVIRON, \
         @load/@include, and -f/-i/-l",
    ),
    (
        "exec-option",
        "tar --to-command/--use-compress-program/-I/--checkpoint-action/--info-script, \
         rsync -e/--rsh/--rsync-path, ssh/scp -o ProxyCommand/LocalCommand, sort -o/--output/\
         --compress-program, zip -T/--unzip-command",
    ),
    (
        "names-from-input",
        "options that read the names of files to open from a file or stdin: wc/du/sort \
         --files0-from, tar -T/--files-from, rsync --files-from, cpio",
    ),
    (
        "sensitive-write",
        "writing (redirect, file tool, or a writing command's operand) to .git/config, \
         .git/hooks/, ~/.gitconfig, ~/.config/git/, ~/.ssh/, shell rc files, .cargo/config*, \
         .claude/settings*.json, ~/.claude.json, .mcp.json, .envrc, .npmrc",
    ),
];

/// One rule that a call trips.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    /// The parameter it was found in.
    pub param: String,
    pub why: String,
}

/// File tools that write their `file_path` (lower-case).
const WRITING_TOOLS: &[&str] = &["write", "edit", "multiedit", "notebookedit"];

/// Commands that only read their operands: naming a sensitive file is fine.
const READ_ONLY: &[&str] = &[
    "cat",
    "less",
    "more",
    "head",
    "tail",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "wc",
    "ls",
    "stat",
    "file",
    "diff",
    "cmp",
    "md5sum",
    "sha1sum",
    "sha256sum",
    "sha512sum",
    "test",
    "[",
    "echo",
    "git",
    "find",
    "sed",
    "awk",
    "tree",
    "du",
    "realpath",
    "readlink",
    "basename",
    "dirname",
];

/// Every rule `params` (of tool `tool`, lower-case) trip, in order.
pub fn check(tool: &str, params: &[Param]) -> Vec<Finding> {
    let mut out = Vec::new();
    for param in params {
        match &param.kind {
            ParamKind::Redirect { path, write: true } => {
                if let Some(what) = sensitive(path) {
                    out.push(finding("sensitive-write", param, format!("writes {what}")));
                }
            }
            ParamKind::Path(path) if WRITING_TOOLS.contains(&tool) => {
                if let Some(what) = sensitive(path) {
                    out.push(finding("sensitive-write", param, format!("writes {what}")));
                }
            }
            ParamKind::Command { args, cwds, .. } => command(param, args, cwds, &mut out),
            _ => {}
        }
    }
    out
}

fn finding(rule: &'static str, param: &Param, why: String) -> Finding {
    Finding {
        rule,
        param: param.text.clone(),
        why,
    }
}

/// `w` is the long option `--name` or an abbreviation of it (GNU getopt and git accept any
/// unambiguous prefix: `--outp=x` is `--output=x`), with or without `=VALUE`.
pub(crate) fn long(w: &str, name: &str) -> bool {
    let Some(given) = w.strip_prefix("--") else {
        return false;
    };
    let given = given.split('=').next().unwrap_or(given);
    !given.is_empty() && name.starts_with(given)
}

/// `w` is a cluster of short options (`-uo`) that holds one of `letters`.
pub(crate) fn short(w: &str, letters: &[char]) -> bool {
    w.len() > 1 && w.starts_with('-') && !w.starts_with("--") && w[1..].contains(letters)
}

/// A word as far as it is known: `Some` for a static value.
fn known(arg: &Arg) -> Option<&str> {
    match arg {
        Arg::Static(v) => Some(v),
        _ => None,
    }
}

fn command(param: &Param, args: &[Arg], cwds: &[std::path::PathBuf], out: &mut Vec<Finding>) {
    let Some(name) = args.first().and_then(known) else {
        return;
    };
    let name = basename(name);
    let rest = &args[1..];
    let mut hit = |rule: &'static str, why: String| out.push(finding(rule, param, why));
    let rule = match name {
        "git" => Some(git(rest)),
        "cargo" => Some(options(rest, "cargo-config", |w| {
            (long(w, "config") || w.starts_with("-Z"))
                .then(|| format!("`{w}` can make cargo run any program"))
        })),
        "find" => Some(options(rest, "find-exec", |w| {
            matches!(
                w,
                "-exec"
                    | "-execdir"
                    | "-ok"
                    | "-okdir"
                    | "-delete"
                    | "-fprint"
                    | "-fprint0"
                    | "-fprintf"
                    | "-fls"
            )
            .then(|| format!("`{w}` runs a command or writes"))
        })),
        "sed" | "gsed" => Some(sed(rest)),
        "awk" | "gawk" | "mawk" | "nawk" => Some(awk(rest)),
        "tar" | "rsync" | "ssh" | "scp" | "sort" | "zip" => Some(exec_options(name, rest)),
        _ => None,
    };
    let rule = match rule {
        Some(Some(found)) => Some(Some(found)),
        _ => Some(names_from_input(name, rest)),
    };
    if let Some(Some((rule, why))) = rule {
        hit(rule, why);
    }
    if !READ_ONLY.contains(&name) {
        for arg in rest {
            if let Some(what) = sensitive_operand(arg, cwds) {
                hit("sensitive-write", format!("`{name}` may write {what}"));
                break;
            }
        }
    }
}

/// The first word that `bad` objects to; a word only known at run time objects too.
fn options(
    args: &[Arg],
    rule: &'static str,
    bad: impl Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    for arg in args {
        match known(arg) {
            Some(w) => {
                if let Some(why) = bad(w) {
                    return Some((rule, why));
                }
            }
            None => return Some((rule, "an argument is only known at run time".to_string())),
        }
    }
    None
}

fn git(args: &[Arg]) -> Option<(&'static str, String)> {
    // Global options come before the subcommand.
    let mut i = 0;
    let mut sub = None;
    while i < args.len() {
        let Some(w) = known(&args[i]) else {
            return Some(("git-config", "an argument is only known at run time".into()));
        };
        if w == "-c"
            || long(w, "config-env")
            || long(w, "exec-path")
            || long(w, "git-dir")
            || long(w, "work-tree")
            || (w.starts_with("-c") && w.len() > 2 && !w.starts_with("--"))
        {
            return Some((
                "git-config",
                format!("`git {w}` can make git run any program"),
            ));
        }
        if !w.starts_with('-') {
            sub = Some(w);
            i += 1;
            break;
        }
        // `-C dir` and `--namespace x` take a value.
        i += if matches!(w, "-C" | "--namespace" | "--super-prefix") {
            2
        } else {
            1
        };
    }
    let sub = sub?;
    let rest = &args[i.min(args.len())..];
    let words: Vec<Option<&str>> = rest.iter().map(known).collect();
    let any = |f: &dyn Fn(&str) -> bool| words.iter().any(|w| w.is_some_and(f));
    match sub {
        "config" => {
            let read_only = |w: &str| {
                matches!(
                    w,
                    "--get"
                        | "--get-all"
                        | "--get-regexp"
                        | "--list"
                        | "-l"
                        | "--show-origin"
                        | "--show-scope"
                        | "--name-only"
                        | "get"
                        | "list"
                )
            };
            if !any(&read_only) || words.iter().any(|w| w.is_none()) {
                return Some(("git-config", "`git config` can set what git runs".into()));
            }
            return None;
        }
        "filter-branch" => return Some(("git-exec", "`git filter-branch` runs scripts".into())),
        "submodule" if any(&|w| w == "foreach") => {
            return Some(("git-exec", "`git submodule foreach` runs a command".into()))
        }
        "bisect" if any(&|w| w == "run") => {
            return Some(("git-exec", "`git bisect run` runs a command".into()))
        }
        _ => {}
    }
    if words.iter().any(|w| w.is_none()) {
        return Some(("git-exec", "an argument is only known at run time".into()));
    }
    let fetches = matches!(sub, "fetch" | "pull" | "clone" | "ls-remote" | "archive");
    for w in words.iter().flatten() {
        let exec = long(w, "output")
            || long(w, "ext-diff")
            || long(w, "upload-pack")
            || long(w, "receive-pack")
            || long(w, "exec")
            || long(w, "open-files-in-pager")
            || long(w, "extcmd")
            || long(w, "remote")
            || (fetches && (*w == "-u" || w.starts_with("-u")))
            || (sub == "rebase" && (*w == "-x" || w.starts_with("-x")))
            || (sub == "grep" && w.starts_with("-O"))
            || (sub == "difftool" && (*w == "-x" || w.starts_with("-x")));
        if exec {
            return Some((
                "git-exec",
                format!("`git {sub} {w}` runs a command or writes"),
            ));
        }
    }
    None
}

fn sed(args: &[Arg]) -> Option<(&'static str, String)> {
    let mut script_given = false;
    let mut i = 0;
    while i < args.len() {
        let Some(w) = known(&args[i]) else {
            return Some(("sed-write", "an argument is only known at run time".into()));
        };
        if long(w, "in-place") || short(w, &['i']) {
            return Some(("sed-write", format!("`sed {w}` rewrites files")));
        }
        if long(w, "file") || short(w, &['f']) {
            return Some(("sed-write", "`sed -f` runs a script file".into()));
        }
        let script = if (short(w, &['e']) && w.ends_with('e'))
            || (long(w, "expression") && !w.contains('='))
        {
            i += 1;
            match args.get(i) {
                Some(a) => match known(a) {
                    Some(s) => Some(s),
                    None => {
                        return Some(("sed-write", "a script is only known at run time".into()))
                    }
                },
                None => None,
            }
        } else if long(w, "expression") {
            w.split_once('=').map(|(_, s)| s)
        } else if short(w, &['e']) {
            // `-es/a/b/`: the script is glued to the option.
            w.split_once('e').map(|(_, s)| s)
        } else if !w.starts_with('-') && !script_given {
            Some(w)
        } else {
            None
        };
        if let Some(script) = script {
            script_given = true;
            if let Some(why) = sed_script(script) {
                return Some(("sed-write", why));
            }
        }
        i += 1;
    }
    None
}

/// A sed script's commands that run a program, write or read a file (GNU sed).
fn sed_script(script: &str) -> Option<String> {
    let danger = |c: char| {
        Some(format!(
            "the sed command `{c}` runs a program or opens a file"
        ))
    };
    let chars: Vec<char> = script.chars().collect();
    let mut i = 0;
    let at_command = |i: &mut usize| {
        // Skip blanks, addresses (`1`, `$`, `/re/`, `\cREc`, `~`, `,`, `!`).
        while *i < chars.len() {
            let c = chars[*i];
            if c.is_ascii_digit() || matches!(c, ' ' | '\t' | '$' | ',' | '~' | '!' | '+') {
                *i += 1;
            } else if c == '/' || c == '\\' {
                let delim = if c == '\\' {
                    *i += 1;
                    chars.get(*i).copied().unwrap_or('/')
                } else {
                    '/'
                };
                *i += 1;
                while *i < chars.len() && chars[*i] != delim {
                    if chars[*i] == '\\' {
                        *i += 1;
                    }
                    *i += 1;
                }
                *i += 1;
                // `I`/`M` address flags.
                while *i < chars.len() && matches!(chars[*i], 'I' | 'M') {
                    *i += 1;
                }
            } else {
                break;
            }
        }
    };
    while i < chars.len() {
        at_command(&mut i);
        let Some(&c) = chars.get(i) else { break };
        i += 1;
        match c {
            ';' | '\n' | '{' | '}' => {}
            'p' | 'P' | 'd' | 'D' | 'q' | 'Q' | 'n' | 'N' | 'g' | 'G' | 'h' | 'H' | 'x' | 'l'
            | '=' | 'z' | 'F' => {
                // `q5`/`Q5`/`l 70`: an optional number.
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == ' ') {
                    i += 1;
                }
            }
            // Text and comments run to the end of the line.
            '#' | 'a' | 'i' | 'c' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            // Labels end at `;` in GNU sed.
            ':' | 'b' | 't' | 'T' => {
                while i < chars.len() && !matches!(chars[i], '\n' | ';') {
                    i += 1;
                }
            }
            's' | 'y' => {
                let Some(&delim) = chars.get(i) else {
                    return danger(c);
                };
                if delim == '\n' || delim == '\\' {
                    return danger(c);
                }
                i += 1;
                for _ in 0..2 {
                    while i < chars.len() && chars[i] != delim {
                        if chars[i] == '\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    i += 1;
                }
                if c == 's' {
                    while i < chars.len() && !matches!(chars[i], ';' | '\n' | '}') {
                        match chars[i] {
                            'g' | 'p' | 'i' | 'I' | 'm' | 'M' | ' ' => {}
                            d if d.is_ascii_digit() => {}
                            'e' | 'w' => {
                                return Some(format!(
                                    "the sed flag `s///{}` runs or writes",
                                    chars[i]
                                ))
                            }
                            other => return Some(format!("the sed flag `{other}` is not known")),
                        }
                        i += 1;
                    }
                }
            }
            other => return danger(other),
        }
    }
    None
}

fn awk(args: &[Arg]) -> Option<(&'static str, String)> {
    let mut i = 0;
    while i < args.len() {
        let Some(w) = known(&args[i]) else {
            return Some(("awk-exec", "an argument is only known at run time".into()));
        };
        if ["-f", "-i", "-l", "-E"].iter().any(|o| w.starts_with(o))
            || long(w, "file")
            || long(w, "include")
            || long(w, "load")
            || long(w, "exec")
        {
            return Some(("awk-exec", format!("`awk {w}` loads code from a file")));
        }
        if matches!(w, "-v" | "-F") {
            i += 2;
            continue;
        }
        if w == "-e" || long(w, "source") {
            if let Some(program) = args.get(i + 1).and_then(known) {
                if let Some(why) = awk_program(program) {
                    return Some(("awk-exec", why));
                }
            }
            i += 2;
            continue;
        }
        if w.starts_with('-') {
            i += 1;
            continue;
        }
        // The first operand is the program; the rest are files or assignments.
        return awk_program(w).map(|why| ("awk-exec", why));
    }
    None
}

fn awk_program(program: &str) -> Option<String> {
    for word in [
        "system", "getline", "ENVIRON", "PROCINFO", "@load", "@include",
    ] {
        if program.contains(word) {
            return Some(format!("the awk program uses `{word}`"));
        }
    }
    let bytes = program.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| bytes[p]);
        let next = bytes.get(i + 1).copied();
        if *b == b'|' && prev != Some(b'|') && next != Some(b'|') {
            return Some("the awk program pipes to or from a command".to_string());
        }
    }
    // `print … > "file"` / `printf … >> f`; a comparison like `$3 > 100` outside print is fine.
    for statement in program.split([';', '{', '}', '\n']) {
        let s = statement.trim_start();
        if (s.starts_with("print") || s.contains(" print")) && s.contains('>') {
            return Some("the awk program writes to a file".to_string());
        }
    }
    None
}

fn exec_options(name: &str, args: &[Arg]) -> Option<(&'static str, String)> {
    let bad = |w: &str| -> bool {
        match name {
            "tar" => {
                long(w, "to-command")
                    || long(w, "use-compress-program")
                    || long(w, "checkpoint-action")
                    || long(w, "info-script")
                    || long(w, "new-volume-script")
                    || long(w, "rsh-command")
                    || w == "-I"
                    || w == "-F"
                    || (w.starts_with('-') && !w.starts_with("--") && w.contains(['I', 'F']))
            }
            "rsync" => short(w, &['e']) || long(w, "rsh") || long(w, "rsync-path"),
            "ssh" | "scp" => {
                let lower = w.to_ascii_lowercase();
                lower.contains("proxycommand")
                    || lower.contains("localcommand")
                    || lower.contains("permitlocalcommand")
                    || (name == "scp" && w == "-S")
            }
            "sort" => short(w, &['o']) || long(w, "output") || long(w, "compress-program"),
            "zip" => short(w, &['T']) || long(w, "unzip-command"),
            _ => false,
        }
    };
    for arg in args {
        match known(arg) {
            Some(w) if bad(w) => {
                return Some((
                    "exec-option",
                    format!("`{name} {w}` runs a command or writes"),
                ))
            }
            Some(_) => {}
            None => {
                return Some((
                    "exec-option",
                    format!("an argument of `{name}` is only known at run time"),
                ))
            }
        }
    }
    None
}

/// Options that take the list of files to open from a file or stdin: the names are in no
/// parameter, so the guard never sees them.
fn names_from_input(name: &str, args: &[Arg]) -> Option<(&'static str, String)> {
    let bad = |w: &str| match name {
        "wc" | "du" | "sort" => long(w, "files0-from"),
        "tar" => w == "-T" || long(w, "files-from") || short(w, &['T']),
        "rsync" => long(w, "files-from") || long(w, "include-from") || long(w, "exclude-from"),
        "cpio" => true,
        _ => false,
    };
    args.iter().filter_map(known).find(|w| bad(w)).map(|w| {
        (
            "names-from-input",
            format!("`{name} {w}` opens files named in its input"),
        )
    })
}

/// A file whose content decides what later commands run (see the `sensitive-write` rule).
fn sensitive(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let shown = || format!("`{}`", path.display());
    for (i, part) in parts.iter().enumerate() {
        let below: Vec<&str> = parts[i + 1..].iter().map(String::as_str).collect();
        let hit = match part.as_str() {
            ".git" => {
                below
                    .first()
                    .is_some_and(|b| *b == "hooks" || *b == "config")
                    || below.last().is_some_and(|l| *l == "config")
            }
            ".ssh" => true,
            ".cargo" => below.first().is_some_and(|b| b.starts_with("config")),
            ".claude" => below.first().is_some_and(|b| b.starts_with("settings")),
            ".config" => below.first().is_some_and(|b| *b == "git"),
            _ => false,
        };
        if hit {
            return Some(shown());
        }
    }
    let name = parts.last()?;
    let rc = [
        ".gitconfig",
        ".bashrc",
        ".bash_profile",
        ".bash_login",
        ".bash_logout",
        ".profile",
        ".zshrc",
        ".zprofile",
        ".zshenv",
        ".zlogin",
        ".inputrc",
        ".claude.json",
        ".mcp.json",
        ".envrc",
        ".npmrc",
        ".pypirc",
        ".netrc",
    ];
    rc.contains(&name.as_str()).then(shown)
}

/// An operand of a writing command that names (or as a pattern could name) a sensitive file.
fn sensitive_operand(arg: &Arg, cwds: &[std::path::PathBuf]) -> Option<String> {
    match arg {
        Arg::Static(v) => {
            let v = v.split_once('=').map(|(_, r)| r).unwrap_or(v);
            if v.starts_with('-') || v.is_empty() {
                return None;
            }
            let p = Path::new(v);
            if p.is_absolute() || cwds.is_empty() {
                return sensitive(p);
            }
            cwds.iter().find_map(|c| sensitive(&c.join(p)))
        }
        // `.git/hoo*`, `~/.bash*`: a literal prefix that is one of them, or could become one.
        Arg::Pattern(prefix) => {
            let lower = prefix.as_str();
            let name = lower.rsplit('/').next().unwrap_or(lower);
            let risky = [
                ".git", ".ssh", ".cargo", ".claude", ".config", ".bash", ".zsh", ".profile",
            ];
            (sensitive(Path::new(lower)).is_some()
                || lower.contains("/.git/")
                || lower.starts_with(".git/")
                || (name.starts_with('.')
                    && risky
                        .iter()
                        .any(|r| r.starts_with(name) || name.starts_with(r))))
            .then(|| format!("what `{prefix}…` expands to"))
        }
        Arg::OneOf(each) => each.iter().find_map(|a| sensitive_operand(a, cwds)),
        Arg::Dynamic(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sed_scripts() {
        for ok in [
            "s/a/b/g",
            "1,5p",
            "/x/d",
            "s|a|b|2",
            "y/abc/xyz/",
            "$!N;P;D",
            "1i hello",
        ] {
            assert_eq!(sed_script(ok), None, "{ok}");
        }
        for bad in [
            "s/a/b/e",
            "s/a/b/w out",
            "1e id",
            "w out",
            "r /etc/passwd",
            "R x",
            "1,3W f",
            "s/x/y/;e id",
        ] {
            assert!(sed_script(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn awk_programs() {
        for ok in [
            "{print $1}",
            "$3 > 100 {print}",
            "NR==1",
            "{ s += $2 } END { print s }",
        ] {
            assert_eq!(awk_program(ok), None, "{ok}");
        }
        for bad in [
            "BEGIN{system(\"id\")}",
            "{print | \"sh\"}",
            "{print > \"/tmp/x\"}",
            "BEGIN{while((\"id\"|getline l)>0) print l}",
            "BEGIN{print ENVIRON[\"ACG_HOOK_SECRET\"]}",
        ] {
            assert!(awk_program(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn sensitive_files() {
        for p in [
            "/w/.git/config",
            "/w/.git/hooks/pre-commit",
            "/home/a/.gitconfig",
            "/home/a/.ssh/authorized_keys",
            "/home/a/.bashrc",
            "/w/.cargo/config.toml",
            "/w/.claude/settings.json",
            "/home/a/.config/git/config",
            "/w/.git/modules/sub/config",
        ] {
            assert!(sensitive(Path::new(p)).is_some(), "{p}");
        }
        for p in [
            "/w/src/main.rs",
            "/w/.gitignore",
            "/w/.git/HEAD",
            "/w/config",
        ] {
            assert!(sensitive(Path::new(p)).is_none(), "{p}");
        }
    }
}
