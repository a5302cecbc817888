//! Running under systemd: the unit `service install` writes (`Type=notify`, the daemon in the
//! foreground logging to the journal, restarted on failure), `service uninstall`, and the
//! `READY=1` / `STOPPING=1` notifications the daemon sends when systemd started it.
//! Knows nothing about: what the daemon runs (it only starts `agent-chat-gateway start`).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};

/// The unit's file name, in the user's or the system's unit directory.
pub const UNIT_NAME: &str = "agent-chat-gateway.service";

/// What the unit runs.
#[derive(Clone, Debug)]
pub struct UnitSpec {
    /// The gateway binary (absolute).
    pub exe: PathBuf,
    /// The configuration file (absolute).
    pub config: PathBuf,
    /// The runtime dir (`ACG_HOME`), so the service and the admin's commands agree.
    pub runtime: PathBuf,
    /// `PATH` for the daemon: the agents' CLIs (node, claude, …) are found where the
    /// installing user finds them, not on systemd's minimal default.
    pub path: OsString,
    /// `User=` of a system unit (a user unit runs as its user).
    pub user: Option<String>,
    /// How long systemd waits for `stop` before killing (the config's grace, and some).
    pub stop_timeout: Duration,
}

/// Where the unit goes: `$XDG_CONFIG_HOME/systemd/user` (or `~/.config/systemd/user`) for a
/// user unit, `/etc/systemd/system` for a system one.
pub fn unit_path(user: bool) -> anyhow::Result<PathBuf> {
    if !user {
        return Ok(PathBuf::from("/etc/systemd/system").join(UNIT_NAME));
    }
    let config_home = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(config_home.join("systemd/user").join(UNIT_NAME))
}

/// The unit file's text.
pub fn unit_text(spec: &UnitSpec, user: bool) -> String {
    let mut unit = String::new();
    let exe = quote(&spec.exe.to_string_lossy());
    let config = quote(&spec.config.to_string_lossy());
    let _ = writeln!(
        unit,
        "# Written by `agent-chat-gateway service install`; `service uninstall` removes it.\n\
         # Re-running install (or install.sh) rewrites it with the current paths."
    );
    let _ = writeln!(
        unit,
        "[Unit]\n\
         Description=agent-chat-gateway: team chat rooms to coding agents\n\
         After=network-online.target\n\
         Wants=network-online.target\n"
    );
    let _ = writeln!(unit, "[Service]");
    let _ = writeln!(unit, "Type=notify\nNotifyAccess=main");
    let _ = writeln!(unit, "ExecStart={exe} --config {config} start --foreground");
    let _ = writeln!(
        unit,
        "Environment={}",
        quote(&format!("ACG_HOME={}", spec.runtime.display()))
    );
    let _ = writeln!(
        unit,
        "Environment={}",
        quote(&format!("PATH={}", spec.path.to_string_lossy()))
    );
    if let (false, Some(name)) = (user, &spec.user) {
        let _ = writeln!(unit, "User={name}");
    }
    let _ = writeln!(
        unit,
        "Restart=on-failure\n\
         RestartSec=5\n\
         TimeoutStopSec={}\n\
         # SIGTERM to the daemon alone: it stops its agents itself, within the grace.\n\
         KillMode=mixed\n\
         UMask=0077\n\
         LimitNOFILE=65536",
        spec.stop_timeout.as_secs()
    );
    let _ = writeln!(
        unit,
        "# Hardening that leaves agents working. Not set on purpose: NoNewPrivileges (and the\n\
         # options that imply it), since the control socket tells confined agents from admins\n\
         # by that flag and each agent process sets it for its own Landlock sandbox."
    );
    if !user {
        let _ = writeln!(unit, "ProtectSystem=full");
    }
    let _ = writeln!(
        unit,
        "\n[Install]\nWantedBy={}",
        if user {
            "default.target"
        } else {
            "multi-user.target"
        }
    );
    unit
}

/// Quotes one word for a unit file: double quotes, with `\`, `"` escaped and `%` doubled
/// (systemd's specifier character).
fn quote(word: &str) -> String {
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// Writes the unit and, when `start`, enables and starts it. Returns what to tell the user.
pub fn install(spec: &UnitSpec, user: bool, start: bool) -> anyhow::Result<Vec<String>> {
    let path = unit_path(user)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, unit_text(spec, user))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut lines = vec![format!("wrote {}", path.display())];
    if !start {
        lines.push(format!(
            "start it with: systemctl{} enable --now {UNIT_NAME}",
            if user { " --user" } else { "" }
        ));
        return Ok(lines);
    }
    systemctl(user, &["daemon-reload"])?;
    // A running daemon started by hand holds the pid lock: the service could not start.
    systemctl(user, &["enable", UNIT_NAME])?;
    systemctl(user, &["restart", UNIT_NAME])?;
    lines.push(format!("enabled and started {UNIT_NAME}"));
    if user {
        lines
            .push("to keep it running after you log out: loginctl enable-linger $USER".to_string());
    }
    Ok(lines)
}

/// Stops and disables the unit and removes its file.
pub fn uninstall(user: bool) -> anyhow::Result<Vec<String>> {
    let path = unit_path(user)?;
    if !path.exists() {
        return Ok(vec![format!("no unit at {}", path.display())]);
    }
    let mut lines = Vec::new();
    if let Err(e) = systemctl(user, &["disable", "--now", UNIT_NAME]) {
        lines.push(format!("note: {e:#}"));
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    lines.push(format!("removed {}", path.display()));
    if let Err(e) = systemctl(user, &["daemon-reload"]) {
        lines.push(format!("note: {e:#}"));
    }
    Ok(lines)
}

fn systemctl(user: bool, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("systemctl");
    if user {
        cmd.arg("--user");
    }
    let out = cmd
        .args(args)
        .output()
        .context("cannot run systemctl (is this a systemd host?)")?;
    if !out.status.success() {
        bail!(
            "systemctl{} {} failed: {}",
            if user { " --user" } else { "" },
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The notification socket systemd gave this process, taken out of the environment so the
/// agents the daemon starts do not inherit it. Call before any thread starts.
pub fn take_notify_socket() {
    let socket = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty());
    if socket.is_some() {
        std::env::remove_var("NOTIFY_SOCKET");
    }
    let _ = NOTIFY_SOCKET.set(socket);
}

static NOTIFY_SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Tells systemd `state` (`READY=1`, `STOPPING=1`) when it started the daemon; a no-op
/// otherwise. A failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(Some(socket)) = NOTIFY_SOCKET.get() else {
        return;
    };
    if let Err(e) = send_notification(Path::new(socket), state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

fn send_notification(socket: &Path, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_os_str().as_bytes();
    match bytes.strip_prefix(b"@") {
        // An abstract socket (`@name`).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_and_specifiers_escaped() {
        assert_eq!(quote(r#"/a b/c%d"e\"#), r#""/a b/c%%d\"e\\""#);
    }

    #[test]
    fn a_notification_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send_notification(&path, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
