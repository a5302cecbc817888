//! Where each agent CLI keeps its own state, and the confinement that lets it write there and
//! nowhere else.
//!
//! Owns: [`StateLayout`] (per CLI: the variable that relocates its state, the dirs it writes
//! under `$HOME`), the layouts of the CLIs the gateway knows, and [`run_sandbox`]: a run's
//! [`Sandbox`] (the base confinement plus the working directory and the CLI's state) with the
//! environment that goes with it (`TMPDIR`, the `run_as` user's identity, a relocation
//! variable).
//! Knows nothing about: any CLI's argv or output.
//!
//! Landlock can only grant whole trees, so `$HOME` is writable only when it holds nothing
//! protected (the gateway's runtime dir is `~/.agent-chat-gateway` by default, so usually it
//! does); otherwise only the CLI's own state dirs are granted. Those are created first (0700,
//! owned by the `run_as` user): Landlock needs an inode to grant.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::confine::{real_path, RunAs, Sandbox};
use super::AgentError;

/// Environment variables as (name, value) pairs, in the order they are set.
pub type Env = Vec<(String, String)>;

/// What one agent CLI writes of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// For messages.
    pub cli: &'static str,
    /// A variable that moves all of the CLI's state into one dir, and that dir's default
    /// under `$HOME`. Set by the gateway when `$HOME` holds something protected.
    pub relocate: Option<(&'static str, &'static str)>,
    /// Dirs under `$HOME` the CLI writes, granted when `$HOME` itself cannot be.
    pub dirs: &'static [&'static str],
    /// Where the CLI finds a model credential, for `doctor`: variables, then files under
    /// `$HOME` (or the relocated state dir, for paths starting with it).
    pub credential_vars: &'static [&'static str],
    pub credential_files: &'static [&'static str],
}

/// Claude Code 2.1.197 writes `~/.claude/…` and rewrites `~/.claude.json` by creating
/// `~/.claude.json.tmp.<pid>.<rand>` plus a `~/.claude.json.lock` directory in `$HOME` and
/// renaming (strace): so `CLAUDE_CONFIG_DIR=~/.claude` moves the whole state (`.claude.json`
/// included) into `~/.claude`, which can be granted alone. The Claude ACP adapter runs the
/// same CLI.
pub const CLAUDE: StateLayout = StateLayout {
    cli: "Claude Code",
    relocate: Some(("CLAUDE_CONFIG_DIR", ".claude")),
    dirs: &[],
    credential_vars: &[
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ],
    credential_files: &[".claude/.credentials.json"],
};

/// Codex keeps everything (config, auth, `sessions/YYYY/MM/DD/rollout-*.jsonl`) in
/// `$CODEX_HOME`, by default `~/.codex`.
pub const CODEX: StateLayout = StateLayout {
    cli: "Codex",
    relocate: Some(("CODEX_HOME", ".codex")),
    dirs: &[],
    credential_vars: &["OPENAI_API_KEY", "CODEX_API_KEY"],
    credential_files: &[".codex/auth.json", ".codex/config.toml"],
};

/// Gemini CLI: settings and chats (`~/.gemini/tmp/<hash>/chats/`) in `~/.gemini`.
pub const GEMINI: StateLayout = StateLayout {
    cli: "Gemini CLI",
    relocate: None,
    dirs: &[".gemini"],
    credential_vars: &[
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GENAI_USE_VERTEXAI",
    ],
    credential_files: &[".gemini/oauth_creds.json"],
};

/// OpenCode follows the XDG layout: its SQLite database in `~/.local/share/opencode`, config,
/// cache and state in their own XDG dirs.
pub const OPENCODE: StateLayout = StateLayout {
    cli: "OpenCode",
    relocate: None,
    dirs: &[
        ".local/share/opencode",
        ".local/state/opencode",
        ".config/opencode",
        ".cache/opencode",
    ],
    credential_vars: &[
        "OPENCODE_CONFIG_CONTENT",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
    ],
    credential_files: &[
        ".local/share/opencode/auth.json",
        ".config/opencode/opencode.json",
    ],
};

/// A CLI the gateway knows nothing about: `$HOME` when it can be granted, else nothing.
pub const UNKNOWN: StateLayout = StateLayout {
    cli: "the agent",
    relocate: None,
    dirs: &[],
    credential_vars: &[],
    credential_files: &[],
};

/// The layout of the CLI an ACP `command` starts, by its file name (`claude-agent-acp`,
/// `opencode acp`, `gemini --acp`, `codex-acp`).
pub fn layout_of_command(command: &str) -> StateLayout {
    let name = Path::new(command)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        n if n.starts_with("claude") => CLAUDE,
        n if n.starts_with("codex") => CODEX,
        n if n.starts_with("gemini") => GEMINI,
        n if n.starts_with("opencode") => OPENCODE,
        _ => UNKNOWN,
    }
}

/// What `doctor` can tell of the CLI's model credential without using it: the variable or
/// file that provides one (the agent's `env` first, then the daemon's environment), or what
/// to set. A file only says the CLI was logged in or configured, not that the login works.
pub fn credentials(layout: &StateLayout, agent_env: &[(String, String)]) -> Result<String, String> {
    let set = |var: &str| {
        agent_env.iter().any(|(k, v)| k == var && !v.is_empty())
            || std::env::var_os(var).is_some_and(|v| !v.is_empty())
    };
    if let Some(var) = layout.credential_vars.iter().find(|v| set(v)) {
        return Ok(format!("{var} is set"));
    }
    let home = home_of(agent_env, None);
    let relocated = layout.relocate.and_then(|(var, default)| {
        agent_env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| (default, PathBuf::from(v)))
    });
    for file in layout.credential_files {
        let path = match (&relocated, &home) {
            (Some((default, dir)), _) if file.starts_with(default) => dir.join(
                Path::new(file)
                    .strip_prefix(default)
                    .unwrap_or(Path::new(file)),
            ),
            (_, Some(home)) => home.join(file),
            _ => continue,
        };
        if path.is_file() {
            return Ok(format!("{} exists", path.display()));
        }
    }
    if layout.credential_vars.is_empty() {
        return Ok("not checked for this agent".to_string());
    }
    Err(format!(
        "no credential found for {}: set {} in the agent's env or log the CLI in",
        layout.cli,
        layout.credential_vars.join(" or ")
    ))
}

/// The `HOME` the CLI runs with: the agent's `env`, else the `run_as` user's, else ours.
pub fn home_of(env: &[(String, String)], sandbox: Option<&Sandbox>) -> Option<PathBuf> {
    if let Some((_, h)) = env.iter().rev().find(|(k, _)| k == "HOME") {
        return Some(PathBuf::from(h));
    }
    if let Some(user) = sandbox.and_then(|s| s.user.as_ref()) {
        return Some(user.home.clone());
    }
    std::env::var_os("HOME").map(PathBuf::from)
}

/// A run's sandbox for a process of the CLI laid out as `layout`, and the environment it
/// needs, with the working directory writable. `None` when `base` is (the agent is not
/// confined).
pub fn run_sandbox(
    base: Option<&Sandbox>,
    layout: &StateLayout,
    working_directory: &Path,
    agent_env: &[(String, String)],
) -> Result<Option<(Sandbox, Env)>, AgentError> {
    run_sandbox_with(base, layout, working_directory, agent_env, true)
}

/// [`run_sandbox`], with the working directory writable only when `work_writable`. A
/// read-only working directory inside `$HOME` keeps `$HOME` from being granted whole (Landlock
/// can only add access, never take a subtree back): only the CLI's own dirs are.
pub fn run_sandbox_with(
    base: Option<&Sandbox>,
    layout: &StateLayout,
    working_directory: &Path,
    agent_env: &[(String, String)],
    work_writable: bool,
) -> Result<Option<(Sandbox, Env)>, AgentError> {
    let Some(base) = base else {
        return Ok(None);
    };
    let mut sandbox = base.clone();
    let mut env = Vec::new();
    if work_writable {
        sandbox.writable.push(working_directory.to_path_buf());
    }
    if let Some(tmp) = &sandbox.private_tmp {
        env.push(("TMPDIR".to_string(), tmp.display().to_string()));
    }
    if let Some(user) = &sandbox.user {
        env.push(("USER".to_string(), user.name.clone()));
        env.push(("LOGNAME".to_string(), user.name.clone()));
        if !agent_env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".to_string(), user.home.display().to_string()));
        }
    }
    let configured = layout.relocate.and_then(|(var, _)| {
        agent_env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| PathBuf::from(v))
    });
    let home = home_of(agent_env, Some(base));
    let mut state_dirs = Vec::new();
    match (configured, &home) {
        (Some(dir), _) => state_dirs.push(dir),
        (None, Some(home)) => {
            let real = real_path(home);
            let holds_protected = base
                .protected
                .iter()
                .any(|p| real_path(p).starts_with(&real));
            let holds_read_only_work =
                !work_writable && real_path(working_directory).starts_with(&real);
            if !holds_protected && !holds_read_only_work {
                sandbox.writable.push(home.clone());
            } else {
                if let Some((var, default)) = layout.relocate {
                    let dir = home.join(default);
                    env.push((var.to_string(), dir.display().to_string()));
                    state_dirs.push(dir);
                }
                state_dirs.extend(layout.dirs.iter().map(|d| home.join(d)));
            }
        }
        (None, None) => {}
    }
    for dir in state_dirs {
        ensure_state_dir(&dir, home.as_deref(), sandbox.user.as_ref())?;
        sandbox.writable.push(dir);
    }
    Ok(Some((sandbox, env)))
}

/// Creates a CLI state dir (0700, owned by the `run_as` user) so Landlock has an inode to
/// grant before the CLI first runs. Dirs between `$HOME` and it are created the same way,
/// but a missing `$HOME` never is (`nobody`'s is `/nonexistent`): that is the admin's call.
fn ensure_state_dir(
    dir: &Path,
    home: Option<&Path>,
    user: Option<&RunAs>,
) -> Result<(), AgentError> {
    if dir.is_dir() {
        return Ok(());
    }
    let root = match home {
        Some(h) if dir.starts_with(h) => h,
        _ => dir.parent().unwrap_or(dir),
    };
    if !root.is_dir() {
        return Err(AgentError::Setup(format!(
            "cannot create the CLI state dir {}: {} does not exist",
            dir.display(),
            root.display()
        )));
    }
    let setup =
        |e: std::io::Error| AgentError::Setup(format!("could not create {}: {e}", dir.display()));
    // Each missing level, top down, so every one gets the mode and the owner.
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| *p != root && !p.is_dir())
        .collect();
    missing.reverse();
    for level in missing {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(level)
            .or_else(|e| if level.is_dir() { Ok(()) } else { Err(e) })
            .map_err(setup)?;
        if let Some(u) = user {
            std::os::unix::fs::chown(level, Some(u.uid), Some(u.gid)).map_err(setup)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfinementMode;

    fn base(protected: Vec<PathBuf>) -> Sandbox {
        Sandbox {
            mode: ConfinementMode::BestEffort,
            protected,
            writable: Vec::new(),
            private_tmp: None,
            readable_files: Vec::new(),
            user: None,
        }
    }

    fn env_of(home: &Path) -> Env {
        vec![("HOME".to_string(), home.display().to_string())]
    }

    #[test]
    fn a_home_holding_nothing_protected_is_granted_whole() {
        let home = tempfile::tempdir().unwrap();
        let work = home.path().join("work");
        let elsewhere = tempfile::tempdir().unwrap();
        let b = base(vec![elsewhere.path().to_path_buf()]);
        let (sb, env) = run_sandbox(Some(&b), &OPENCODE, &work, &env_of(home.path()))
            .unwrap()
            .unwrap();
        assert_eq!(sb.writable, vec![work, home.path().to_path_buf()]);
        assert!(env.is_empty(), "{env:?}");
        assert!(!home.path().join(".local").exists());
    }

    #[test]
    fn a_read_only_working_directory_inside_home_keeps_home_from_being_granted_whole() {
        let home = tempfile::tempdir().unwrap();
        let work = home.path().join("work");
        fs::create_dir(&work).unwrap();
        let b = base(Vec::new());
        let (sb, _) = run_sandbox_with(Some(&b), &OPENCODE, &work, &env_of(home.path()), false)
            .unwrap()
            .unwrap();
        assert!(!sb.writable.contains(&work), "{:?}", sb.writable);
        assert!(!sb.writable.contains(&home.path().to_path_buf()));
        assert_eq!(
            sb.writable,
            OPENCODE
                .dirs
                .iter()
                .map(|d| home.path().join(d))
                .collect::<Vec<_>>()
        );
        // A read-only working directory elsewhere leaves the whole home writable.
        let elsewhere = tempfile::tempdir().unwrap();
        let (sb, _) = run_sandbox_with(
            Some(&b),
            &OPENCODE,
            elsewhere.path(),
            &env_of(home.path()),
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(sb.writable, vec![home.path().to_path_buf()]);
    }

    #[test]
    fn a_protected_home_grants_only_the_clis_own_dirs_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let runtime = home.path().join(".agent-chat-gateway");
        fs::create_dir(&runtime).unwrap();
        let b = base(vec![runtime]);
        let work = home.path().join("work");
        let (sb, env) = run_sandbox(Some(&b), &OPENCODE, &work, &env_of(home.path()))
            .unwrap()
            .unwrap();
        assert!(!sb.writable.contains(&home.path().to_path_buf()));
        for d in OPENCODE.dirs {
            let dir = home.path().join(d);
            assert!(sb.writable.contains(&dir), "{d}");
            assert_eq!(
                fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let between = home.path().join(".local");
        assert_eq!(
            fs::metadata(between).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(env.is_empty());

        // Claude and Codex are relocated into one dir instead.
        let (sb, env) = run_sandbox(Some(&b), &CLAUDE, &work, &env_of(home.path()))
            .unwrap()
            .unwrap();
        let dir = home.path().join(".claude");
        assert!(sb.writable.contains(&dir));
        assert!(env.contains(&("CLAUDE_CONFIG_DIR".to_string(), dir.display().to_string())));
    }

    #[test]
    fn a_configured_state_dir_is_used_and_a_missing_home_is_never_created() {
        let home = tempfile::tempdir().unwrap();
        let codex_home = home.path().join("codex-state");
        let mut env = env_of(home.path());
        env.push(("CODEX_HOME".into(), codex_home.display().to_string()));
        let b = base(Vec::new());
        let (sb, extra) = run_sandbox(Some(&b), &CODEX, Path::new("/w"), &env)
            .unwrap()
            .unwrap();
        assert_eq!(sb.writable, vec![PathBuf::from("/w"), codex_home.clone()]);
        assert!(codex_home.is_dir());
        assert!(extra.is_empty());

        let missing = home.path().join("nonexistent");
        let runtime = missing.join(".agent-chat-gateway");
        let b = base(vec![runtime]);
        let err = run_sandbox(Some(&b), &GEMINI, Path::new("/w"), &env_of(&missing)).unwrap_err();
        assert!(matches!(err, AgentError::Setup(_)), "{err}");
        assert!(!missing.exists());
    }

    #[test]
    fn credentials_are_found_in_the_agents_env_or_the_clis_files() {
        let home = tempfile::tempdir().unwrap();
        let mut env = env_of(home.path());
        env.push(("GEMINI_API_KEY".into(), "k".into()));
        assert_eq!(credentials(&GEMINI, &env).unwrap(), "GEMINI_API_KEY is set");
        let codex_home = home.path().join("state");
        fs::create_dir(&codex_home).unwrap();
        let mut env = env_of(home.path());
        env.push(("CODEX_HOME".into(), codex_home.display().to_string()));
        if std::env::var_os("OPENAI_API_KEY").is_none()
            && std::env::var_os("CODEX_API_KEY").is_none()
        {
            let err = credentials(&CODEX, &env).unwrap_err();
            assert!(err.contains("OPENAI_API_KEY"), "{err}");
        }
        fs::write(codex_home.join("auth.json"), "{}").unwrap();
        let found = credentials(&CODEX, &env).unwrap();
        assert!(found.ends_with("state/auth.json exists"), "{found}");
    }

    #[test]
    fn acp_commands_are_known_by_their_file_name() {
        assert_eq!(layout_of_command("/x/.bin/claude-agent-acp"), CLAUDE);
        assert_eq!(layout_of_command("opencode"), OPENCODE);
        assert_eq!(layout_of_command("/usr/bin/gemini"), GEMINI);
        assert_eq!(layout_of_command("codex-acp"), CODEX);
        assert_eq!(layout_of_command("my-agent"), UNKNOWN);
    }
}
