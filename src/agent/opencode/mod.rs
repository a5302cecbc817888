//! OpenCode backend (`type: opencode`): one `opencode run --format json` process per turn,
//! resumed with `--session <id>`.
//!
//! Owns: its registry entry ([`AGENT_TYPE`]), the argv, the arguments it refuses, the
//! permission set it runs with (`OPENCODE_PERMISSION`); the JSON events are `stream.rs`. The
//! shared part (environment, confinement, run loop) is `agent::pipe`.
//! Must not import: `connector`, `approval`.
//!
//! `opencode run` has no approval hook, but it enforces a permission per tool. The gateway
//! sets them from the role's [`Grants`](super::pipe::Grants): `"*": "deny"`, then `allow` for
//! exactly the granted tools (`read`/`glob`/`grep`/`list` for `Read`, `edit` for
//! `Write`/`Edit`, `bash` for `Bash`, `webfetch`/`websearch` for `WebFetch`), and never
//! `ask` (what `ask` does without a user is not defined). `OPENCODE_PERMISSION` is merged
//! over the config files, so a project's `opencode.json` cannot widen it.

mod stream;

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::pipe::{Cli, CliTurn, Grants, PipeBackend};
use super::registry::{self, AgentType, BuildContext};
use super::state::{self, Env, StateLayout};
use super::AgentBackend;
use crate::config::Gating;

pub use stream::OpencodeStream;

/// OpenCode in the [agent registry](super::registry): no keys beyond the common ones.
pub const AGENT_TYPE: AgentType = AgentType {
    name: "opencode",
    default_command: "opencode",
    keys: &[],
    parse: registry::no_own_keys,
    schema: crate::config::schema::no_own_keys,
    gating: Gating::Unavailable {
        advice: "`opencode run` has no approval hook, so the gateway allows exactly the tools a \
                 role's rules grant without conditions and denies the rest (a rule with params \
                 grants nothing). For per-call approvals use `type: acp` with \
                 `command: opencode` and `args: [acp]`",
    },
    credentials: |c| state::credentials(&state::OPENCODE, &c.env),
    version: registry::version_flag,
    tested: "1.18.33 (opencode-ai)",
    build,
};

fn build(ctx: BuildContext<'_>) -> anyhow::Result<Arc<dyn AgentBackend>> {
    Ok(Arc::new(PipeBackend::new(
        Opencode,
        ctx.config,
        Some(ctx.sandbox),
    )))
}

/// `opencode run`.
pub struct Opencode;

/// OpenCode's permission set for `grants`.
pub fn permission(grants: Grants) -> Value {
    let decide = |granted: bool| json!(if granted { "allow" } else { "deny" });
    let mut p = Map::new();
    p.insert("*".into(), json!("deny"));
    for tool in ["read", "glob", "grep", "list"] {
        p.insert(tool.into(), decide(grants.read));
    }
    p.insert("edit".into(), decide(grants.write));
    p.insert("bash".into(), decide(grants.shell));
    p.insert("webfetch".into(), decide(grants.web));
    p.insert("websearch".into(), decide(grants.web));
    // Outside the working directory: the confinement decides what is reachable, OpenCode
    // would otherwise `ask`.
    p.insert("external_directory".into(), json!("deny"));
    Value::Object(p)
}

impl Cli for Opencode {
    type Protocol = OpencodeStream;
    const NAME: &'static str = "opencode";
    const LAYOUT: StateLayout = state::OPENCODE;
    const MANAGED_ARGS: &'static [&'static str] = &[
        "run",
        "acp",
        "serve",
        "--format",
        "-s",
        "--session",
        "-c",
        "--continue",
        "--share",
        "--attach",
        "--dangerously-skip-permissions",
    ];

    fn argv(&self, args: &[String], turn: &CliTurn<'_>) -> Vec<String> {
        let mut argv: Vec<String> = vec!["run".into(), "--format".into(), "json".into()];
        if let Some(id) = turn.session {
            argv.extend(["--session".into(), id.to_string()]);
        }
        argv.extend(args.iter().cloned());
        // After `--`, so a prompt starting with `-` is never read as a flag.
        argv.extend(["--".into(), turn.prompt.to_string()]);
        argv
    }

    fn env(&self, turn: &CliTurn<'_>) -> Env {
        vec![
            (
                "OPENCODE_PERMISSION".into(),
                permission(turn.grants).to_string(),
            ),
            ("OPENCODE_DISABLE_AUTOUPDATE".into(), "1".into()),
            ("OPENCODE_DISABLE_SHARE".into(), "1".into()),
        ]
    }

    fn protocol(&self, resumed: Option<&str>) -> OpencodeStream {
        OpencodeStream::new(resumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_granted_denies_every_tool_and_grants_open_only_theirs() {
        let none = permission(Grants::default());
        for (tool, decision) in none.as_object().unwrap() {
            assert_eq!(decision, "deny", "{tool}");
        }
        let p = permission(Grants {
            shell: true,
            read: true,
            ..Grants::default()
        });
        assert_eq!(p["bash"], "allow");
        assert_eq!(p["read"], "allow");
        assert_eq!(p["grep"], "allow");
        assert_eq!(p["edit"], "deny");
        assert_eq!(p["*"], "deny");
        assert!(!p.to_string().contains("ask"));
    }

    #[test]
    fn argv_puts_the_prompt_after_the_options() {
        let turn = CliTurn {
            session: Some("ses_1"),
            prompt: "--help me",
            grants: Grants::default(),
            confined: false,
        };
        let a = Opencode.argv(&["-m".into(), "fake/fake-model".into()], &turn);
        assert_eq!(
            a.join(" "),
            "run --format json --session ses_1 -m fake/fake-model -- --help me"
        );
        let env = Opencode.env(&turn);
        assert!(env.iter().any(|(k, _)| k == "OPENCODE_PERMISSION"));
    }
}
