//! Path normalisation for file-tool parameters and bash redirect targets.
//!
//! Owns: turning a path as the agent wrote it into the absolute path the kernel would open, so a
//! rule like `Read(/project/.*)` cannot be passed with `/project/../etc/passwd` or with a symlink
//! that points out of the project. The only I/O in `policy` lives here: `readlink` on the
//! components of the path that exist.

use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Symlink hops followed before giving up (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// The absolute, normalised form of `path`: relative paths are joined to `cwd`, `.` and `..` are
/// resolved, and symlinks are followed on every component that exists (also a dangling final
/// symlink, since writing through it creates its target). Components below the first one that
/// does not exist are resolved lexically: they cannot be symlinks yet.
///
/// `None` when the path is empty, or relative while `cwd` is not absolute: there is no honest
/// answer then, and callers treat that as "cannot be checked".
pub fn normalize(path: &str, cwd: &Path) -> Option<PathBuf> {
    Some(resolve(&absolute(path, cwd)?))
}

/// `path` made absolute against `cwd`; `None` when empty, or relative without an absolute cwd.
fn absolute(path: &str, cwd: &Path) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() {
        None
    } else if p.is_absolute() {
        Some(p.to_path_buf())
    } else if cwd.is_absolute() {
        Some(cwd.join(p))
    } else {
        None
    }
}

/// `path` joined to `cwd` with `.` and `..` resolved on the text alone, as bash's `cd` does
/// by default (`cd link/..` goes back to where it started, wherever `link` points).
pub fn lexical(path: &str, cwd: &Path) -> Option<PathBuf> {
    let joined = absolute(path, cwd)?;
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Lexical-plus-symlink resolution of an absolute path (see [`normalize`]).
pub fn resolve(absolute: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    // Components still to visit, last one first; symlink targets are spliced in here.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, absolute);
    let mut hops = 0;
    // Once a component is missing, nothing below it can be a symlink; `..` may climb back into
    // existing directories, so it turns checking back on.
    let mut probing = true;
    while let Some(component) = pending.pop() {
        if component == ".." {
            out.pop();
            probing = true;
            continue;
        }
        let next = out.join(&component);
        if in_process_dir(&next) {
            // `/proc/self` is the *caller's* process, and `/proc/self/cwd` its directory: they
            // mean the agent's when the agent opens them, never the daemon's. Kept lexical;
            // the guard refuses what lies below (see `is_process_internal`).
            out = next;
            continue;
        }
        if probing && hops < MAX_SYMLINK_HOPS {
            match fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = fs::read_link(&next) {
                        hops += 1;
                        if target.is_absolute() {
                            out = PathBuf::from("/");
                        }
                        push_components(&mut pending, &target);
                        continue;
                    }
                }
                Ok(_) => {}
                Err(_) => probing = false,
            }
        }
        out = next;
    }
    out
}

/// Pushes the components of `path` onto `pending` so that the first component is popped first.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// `/proc/self`, `/proc/thread-self` or `/proc/<pid>`.
fn is_process_dir(path: &Path) -> bool {
    let mut parts = path.components();
    let (Some(Component::RootDir), Some(Component::Normal(proc)), Some(Component::Normal(who))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let who = who.to_string_lossy();
    proc == "proc"
        && parts.next().is_none()
        && (who == "self" || who == "thread-self" || who.chars().all(|c| c.is_ascii_digit()))
}

/// `path` is a process directory (see [`is_process_dir`]) or below one.
fn in_process_dir(path: &Path) -> bool {
    path.starts_with("/proc") && is_process_dir(&path.components().take(3).collect::<PathBuf>())
}

/// Files of a process that say nothing secret. Everything else below `/proc/<pid>` (its
/// environment with the hook secret, memory, open files, `cwd`/`root` links into any
/// directory) is treated as protected.
const PROCESS_PUBLIC: &[&str] = &[
    "stat",
    "statm",
    "status",
    "comm",
    "cmdline",
    "limits",
    "cgroup",
    "io",
    "oom_score",
    "sched",
    "schedstat",
    "wchan",
    "loginuid",
    "sessionid",
    "mountinfo",
    "mounts",
    "net",
];

/// A path inside `/proc/<pid|self|thread-self>/` that is not one of [`PROCESS_PUBLIC`].
pub fn is_process_internal(path: &Path) -> bool {
    let mut prefix = PathBuf::new();
    let mut parts = path.components();
    for _ in 0..3 {
        match parts.next() {
            Some(c) => prefix.push(c),
            None => return false,
        }
    }
    if !is_process_dir(&prefix) {
        return false;
    }
    match parts.next() {
        Some(Component::Normal(name)) => !PROCESS_PUBLIC.contains(&&*name.to_string_lossy()),
        _ => false,
    }
}

/// `path` is `dir` or inside it (component-wise, so `/a/bc` is not inside `/a/b`).
pub fn is_within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_cases_from_the_conformance_table() {
        let cases = [
            ("/project/../../../etc/passwd", "", Some("/etc/passwd")),
            (
                "../../etc/passwd",
                "/home/user/project",
                Some("/home/etc/passwd"),
            ),
            ("/src/main.py", "/project", Some("/src/main.py")),
            ("src/main.py", "/project", Some("/project/src/main.py")),
            ("/project/sub/../config.py", "", Some("/project/config.py")),
            ("./a/./b", "/project", Some("/project/a/b")),
            // No honest answer: empty path, or relative path without an absolute cwd.
            ("", "", None),
            ("", "/project", None),
            ("src/main.py", "", None),
            ("src/main.py", "relative/cwd", None),
        ];
        for (path, cwd, expect) in cases {
            let got = normalize(path, Path::new(cwd));
            assert_eq!(
                got.as_deref(),
                expect.map(Path::new),
                "normalize({path:?}, {cwd:?})"
            );
        }
    }

    #[test]
    fn symlinks_are_followed_in_existing_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let project = root.join("project");
        let secret = root.join("secret");
        fs::create_dir_all(&project).unwrap();
        fs::create_dir_all(&secret).unwrap();
        std::os::unix::fs::symlink(&secret, project.join("link")).unwrap();
        std::os::unix::fs::symlink("../secret/new.txt", project.join("dangling")).unwrap();

        let via_link = normalize("link/key.pem", &project).unwrap();
        assert_eq!(via_link, secret.join("key.pem"));
        // `link/..` is the parent of the link's target, as the kernel sees it.
        let dotdot = normalize("link/../x", &project).unwrap();
        assert_eq!(dotdot, root.join("x"));
        let dangling = normalize("dangling", &project).unwrap();
        assert_eq!(dangling, secret.join("new.txt"));
        let missing = normalize("nope/../link/a", &project).unwrap();
        assert_eq!(missing, secret.join("a"));
    }

    #[test]
    fn proc_self_is_the_agent_not_the_daemon() {
        // Not resolved through the daemon's own `/proc/self/cwd` link.
        let got = normalize("/proc/self/cwd/../x", Path::new("/")).unwrap();
        assert_eq!(got, Path::new("/proc/self/x"));
        let got = normalize("/proc/self/cwd/secret", Path::new("/")).unwrap();
        assert!(is_process_internal(&got), "{got:?}");
        for private in [
            "/proc/self/environ",
            "/proc/1/environ",
            "/proc/thread-self/fd/3",
        ] {
            assert!(is_process_internal(Path::new(private)), "{private}");
        }
        for public in ["/proc/self/status", "/proc/cpuinfo", "/proc/self", "/proc"] {
            assert!(!is_process_internal(Path::new(public)), "{public}");
        }
    }

    #[test]
    fn symlink_loops_terminate() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(root.join("b"), root.join("a")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("b")).unwrap();
        let got = normalize("a/x", &root).unwrap();
        assert!(got.starts_with(&root), "{got:?}");
    }
}
