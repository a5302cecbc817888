//! Codex backend (`type: codex`): one `codex exec --json` process per turn, resumed with
//! `codex exec resume <thread_id>`.
//!
//! Owns: its registry entry ([`AGENT_TYPE`]), the argv (sandbox and approval overrides, the
//! prompt on stdin), the arguments it refuses; the `--json` event stream is `stream.rs`. The
//! shared part (environment, confinement, run loop) is `agent::pipe`.
//! Must not import: `connector`, `approval`.
//!
//! `codex exec` never asks anyone: `approval_policy="never"`, and a sandbox decides. Under
//! the gateway's Landlock confinement that is the gateway's (Codex's own bubblewrap sandbox
//! cannot start inside Landlock, so Codex runs with `danger-full-access` there): the working
//! directory is writable only for a role granted `Write`/`Edit`, the gateway's files never.
//! Unconfined, Codex's own sandbox: `workspace-write` only when the role's rules grant both
//! `Bash` and `Write`/`Edit` without conditions, else `read-only` (commands still run and
//! read). Network access in Codex's sandbox follows an unconditional `WebFetch`. The settings are `-c` overrides, which beat `config.toml` and profiles; `exec
//! resume` refuses `-s` (openai/codex #40149), `-c` works for both.

mod stream;

use std::sync::Arc;

use super::pipe::{Cli, CliTurn, PipeBackend};
use super::registry::{self, AgentType, BuildContext};
use super::state::{self, StateLayout};
use super::AgentBackend;
use crate::config::Gating;

pub use stream::CodexStream;

/// Codex in the [agent registry](super::registry): no keys beyond the common ones.
pub const AGENT_TYPE: AgentType = AgentType {
    name: "codex",
    default_command: "codex",
    keys: &[],
    parse: registry::no_own_keys,
    schema: crate::config::schema::no_own_keys,
    gating: Gating::Unavailable {
        advice: "`codex exec` has no approval hook, so the gateway runs it in Codex's own sandbox \
                 (read-only, or workspace-write for a role whose rules allow Bash and Write without \
                 conditions). For per-call approvals use `type: acp` with `command: codex-acp`",
    },
    credentials: |c| state::credentials(&state::CODEX, &c.env),
    version: registry::version_flag,
    tested: "0.169.0 (@openai/codex)",
    build,
};

fn build(ctx: BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>> {
    Ok(Arc::new(PipeBackend::new(
        Codex,
        ctx.config,
        Some(ctx.sandbox),
    )))
}

/// `codex exec`.
pub struct Codex;

impl Cli for Codex {
    type Protocol = CodexStream;
    const NAME: &'static str = "codex";
    const LAYOUT: StateLayout = state::CODEX;
    const MANAGED_ARGS: &'static [&'static str] = &[
        "exec",
        "resume",
        "--last",
        "--json",
        "--experimental-json",
        "-s",
        "--sandbox",
        "-a",
        "--ask-for-approval",
        "--full-auto",
        "--dangerously-bypass-approvals-and-sandbox",
        "--yolo",
        "--add-dir",
        "-C",
        "--cd",
        "-p",
        "--profile",
    ];

    fn argv(&self, args: &[String], turn: &CliTurn<'_>) -> Vec<String> {
        let mut argv: Vec<String> = vec!["exec".into()];
        if let Some(id) = turn.session {
            argv.extend(["resume".into(), id.to_string()]);
        }
        argv.extend(["--json".into(), "--skip-git-repo-check".into()]);
        let g = turn.grants;
        let mode = if turn.confined {
            // Codex's sandbox cannot start inside Landlock (bubblewrap: "setting up uid
            // map: Permission denied", 0.169.0); the gateway's confinement is the sandbox.
            "danger-full-access"
        } else if g.shell && g.write {
            "workspace-write"
        } else {
            "read-only"
        };
        for setting in [
            "approval_policy=\"never\"".to_string(),
            format!("sandbox_mode=\"{mode}\""),
            format!("sandbox_workspace_write.network_access={}", g.web),
        ] {
            argv.extend(["-c".into(), setting]);
        }
        argv.extend(args.iter().cloned());
        // `-`: the prompt is read from stdin, so it is neither in `ps` nor bound by ARG_MAX.
        argv.push("-".into());
        argv
    }

    fn stdin(&self, turn: &CliTurn<'_>) -> Vec<u8> {
        turn.prompt.as_bytes().to_vec()
    }

    /// `-c key=value` overrides of what the gateway sets.
    fn refuse_arg(&self, arg: &str) -> Option<String> {
        let (flag, value) = arg.split_once('=')?;
        if flag != "-c" && flag != "--config" {
            return None;
        }
        let key = value.trim_start();
        ["approval_policy", "sandbox", "profile"]
            .iter()
            .any(|k| key.starts_with(k))
            .then(|| format!("the override '{key}' is managed by the gateway"))
    }

    fn protocol(&self, resumed: Option<&str>) -> CodexStream {
        CodexStream::new(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pipe::Grants;

    fn turn(session: Option<&str>, grants: Grants) -> CliTurn<'_> {
        CliTurn {
            session,
            prompt: "hi",
            grants,
            confined: false,
        }
    }

    #[test]
    fn argv_is_read_only_unless_shell_and_write_are_granted() {
        let a = Codex.argv(&["-m".into(), "o4".into()], &turn(None, Grants::default()));
        assert_eq!(
            a.join(" "),
            "exec --json --skip-git-repo-check -c approval_policy=\"never\" \
             -c sandbox_mode=\"read-only\" -c sandbox_workspace_write.network_access=false -m o4 -"
        );
        let owner = Grants {
            shell: true,
            write: true,
            ..Grants::default()
        };
        let a = Codex.argv(&[], &turn(Some("t-1"), owner));
        assert!(a.join(" ").starts_with("exec resume t-1 --json"), "{a:?}");
        assert!(a.contains(&"sandbox_mode=\"workspace-write\"".to_string()));
        let shell_only = Grants {
            shell: true,
            ..Grants::default()
        };
        let a = Codex.argv(&[], &turn(None, shell_only));
        assert!(a.contains(&"sandbox_mode=\"read-only\"".to_string()));
        assert!(!a.iter().any(|x| x.contains("danger")));
        // Inside the gateway's Landlock domain the gateway's confinement is the sandbox.
        let confined = CliTurn {
            confined: true,
            ..turn(None, Grants::default())
        };
        assert!(Codex
            .argv(&[], &confined)
            .contains(&"sandbox_mode=\"danger-full-access\"".to_string()));
    }

    #[test]
    fn overrides_of_the_sandbox_are_refused() {
        assert!(Codex
            .refuse_arg("-c=sandbox_mode=\"danger-full-access\"")
            .is_some());
        assert!(Codex
            .refuse_arg("--config=approval_policy=on-request")
            .is_some());
        assert!(Codex.refuse_arg("-c=model=\"o4\"").is_none());
        assert!(Codex.refuse_arg("--model=o4").is_none());
    }
}
