//! Gemini CLI backend (`type: gemini`): one `gemini --output-format stream-json` process per
//! turn, resumed with `--resume <session_id>`.
//!
//! Owns: its registry entry ([`AGENT_TYPE`]), the argv (approval mode, prompt, resume), the
//! arguments it refuses, the workspace trust variable; the stream-json events are
//! `stream.rs`. The shared part (environment, confinement, run loop) is `agent::pipe`.
//! Must not import: `connector`, `approval`.
//!
//! Headless Gemini never asks: in its `default` approval mode it drops the tools that would
//! need a confirmation (shell, file writes) from the model's request, `auto_edit` adds the
//! edit tools, `yolo` everything. A role gets `yolo` only when its rules grant both `Bash`
//! and `Write`/`Edit` without conditions, `auto_edit` for `Write`/`Edit` alone, else
//! `default` (read-only tools, bounded by the OS confinement).

mod stream;

use std::sync::Arc;

use super::pipe::{Cli, CliTurn, PipeBackend};
use super::registry::{self, AgentType, BuildContext};
use super::state::{self, Env, StateLayout};
use super::AgentBackend;
use crate::config::Gating;

pub use stream::GeminiStream;

/// Gemini CLI in the [agent registry](super::registry): no keys beyond the common ones.
pub const AGENT_TYPE: AgentType = AgentType {
    name: "gemini",
    default_command: "gemini",
    keys: &[],
    parse: registry::no_own_keys,
    schema: crate::config::schema::no_own_keys,
    gating: Gating::Unavailable {
        advice: "headless `gemini` has no approval hook, so the gateway picks its approval mode \
                 (read-only tools, auto_edit, or yolo for a role whose rules allow Bash and Write \
                 without conditions). For per-call approvals use `type: acp` with \
                 `command: gemini` and `args: [--acp]`",
    },
    credentials: |c| state::credentials(&state::GEMINI, &c.env),
    version: registry::version_flag,
    tested: "0.61.0 (@google/gemini-cli)",
    build,
};

fn build(ctx: BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>> {
    Ok(Arc::new(PipeBackend::new(
        Gemini,
        ctx.config,
        Some(ctx.sandbox),
    )))
}

/// `gemini -p`.
pub struct Gemini;

impl Cli for Gemini {
    type Protocol = GeminiStream;
    const NAME: &'static str = "gemini";
    const LAYOUT: StateLayout = state::GEMINI;
    const MANAGED_ARGS: &'static [&'static str] = &[
        "-p",
        "--prompt",
        "-i",
        "--prompt-interactive",
        "-o",
        "--output-format",
        "--approval-mode",
        "-y",
        "--yolo",
        "--allowed-tools",
        "-r",
        "--resume",
        "--acp",
        "--experimental-acp",
        "--list-sessions",
        "--delete-session",
    ];

    fn argv(&self, args: &[String], turn: &CliTurn<'_>) -> Vec<String> {
        let g = turn.grants;
        let mode = match (g.shell, g.write) {
            (true, true) => "yolo",
            (_, true) => "auto_edit",
            _ => "default",
        };
        let mut argv: Vec<String> = vec![
            "--output-format".into(),
            "stream-json".into(),
            "--approval-mode".into(),
            mode.into(),
        ];
        if let Some(id) = turn.session {
            argv.extend(["--resume".into(), id.to_string()]);
        }
        argv.extend(args.iter().cloned());
        // One word, so a prompt starting with `-` is never read as a flag.
        argv.push(format!("--prompt={}", turn.prompt));
        argv
    }

    /// The admin chose the working directory: it is trusted (else 0.61.0 exits 55).
    fn env(&self, _turn: &CliTurn<'_>) -> Env {
        vec![("GEMINI_CLI_TRUST_WORKSPACE".into(), "true".into())]
    }

    fn protocol(&self, resumed: Option<&str>) -> GeminiStream {
        GeminiStream::new(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pipe::Grants;

    #[test]
    fn the_approval_mode_follows_the_grants() {
        let turn = |grants| CliTurn {
            session: None,
            prompt: "-x hi",
            grants,
            confined: false,
        };
        let a = Gemini.argv(
            &["-m".into(), "gemini-2.5-flash".into()],
            &turn(Grants::default()),
        );
        assert_eq!(
            a.join(" "),
            "--output-format stream-json --approval-mode default -m gemini-2.5-flash --prompt=-x hi"
        );
        let write = Grants {
            write: true,
            ..Grants::default()
        };
        assert!(Gemini
            .argv(&[], &turn(write))
            .contains(&"auto_edit".to_string()));
        let both = Grants {
            write: true,
            shell: true,
            ..Grants::default()
        };
        assert!(Gemini.argv(&[], &turn(both)).contains(&"yolo".to_string()));
        let resumed = CliTurn {
            session: Some("s-1"),
            prompt: "again",
            grants: Grants::default(),
            confined: false,
        };
        assert!(Gemini
            .argv(&[], &resumed)
            .join(" ")
            .contains("--resume s-1 --prompt=again"));
    }
}
