//! Pipe agents: CLIs driven through their own headless mode (`codex exec --json`,
//! `gemini -p … --output-format stream-json`, `opencode run --format json`), one process per
//! turn, one JSON event per stdout line, on the generic run loop of `agent::process`.
//!
//! Owns: [`PipeBackend`] (what every such agent shares: the common config keys, refused
//! arguments, the child's environment and confinement, the system prompt, session resume,
//! logging), the [`Cli`] trait each CLI's folder implements (argv, extra environment, its
//! line protocol), [`Grants`] (what of a role's allow-list such a CLI can enforce), and the
//! mapping of a CLI's error text onto [`AgentError`].
//!
//! These modes have no per-call approval hook, so the gateway cannot ask about each call
//! (`config::Gating::Unavailable`: `permissions` cannot be enabled, and validation says so).
//! What it does instead, fail closed: a role's rules are reduced to whole tools granted
//! without conditions ([`Grants`]; a rule with `params` grants nothing, since no CLI can
//! match our regexes), each CLI is started in the most restrictive mode that still grants
//! them, and the OS confinement (Landlock, `run_as`) bounds whatever runs: for a role not
//! granted `Write`/`Edit` it also leaves the working directory read-only.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::confine::Sandbox;
use super::process::{self, LineProtocol, ProcessSpec};
use super::state::{self, Env, StateLayout};
use super::{api_error, AgentBackend, AgentError, TurnContext};
use crate::config::{AgentConfig, ConfinementMode};
use crate::model::{Role, TurnOutcome, TurnRequest, Usage};
use crate::policy::RuleSet;

/// What a role's allow-list grants, as far as a CLI without a per-call hook can enforce it:
/// whole tools, each granted only by a rule without `params`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// `Read` (and the CLI's other read-only file tools: list, glob, grep).
    pub read: bool,
    /// `Write` or `Edit`.
    pub write: bool,
    /// `Bash`.
    pub shell: bool,
    /// `WebFetch`.
    pub web: bool,
}

impl Grants {
    pub fn of(rules: &RuleSet) -> Grants {
        let granted = |tool: &str| {
            rules
                .rules
                .iter()
                .any(|r| r.params.is_none() && r.matches_tool(tool))
        };
        Grants {
            read: granted("Read"),
            write: granted("Write") || granted("Edit"),
            shell: granted("Bash"),
            web: granted("WebFetch"),
        }
    }

    /// The rules' tool names granted, in a fixed order.
    pub fn tools(&self) -> Vec<&'static str> {
        [
            (self.read, "Read"),
            (self.write, "Write"),
            (self.shell, "Bash"),
            (self.web, "WebFetch"),
        ]
        .into_iter()
        .filter_map(|(granted, tool)| granted.then_some(tool))
        .collect()
    }

    /// The grants in words, for `policy check`.
    pub fn describe(&self) -> String {
        match self.tools() {
            tools if tools.is_empty() => {
                "no tool (only what the CLI allows in its most restrictive mode)".to_string()
            }
            tools => tools.join(", "),
        }
    }
}

/// One turn as a CLI sees it.
pub struct CliTurn<'a> {
    /// The session to resume; `None` starts one.
    pub session: Option<&'a str>,
    /// The whole prompt (on a first turn, the gateway's system prompt comes first).
    pub prompt: &'a str,
    pub grants: Grants,
    /// Whether the process runs inside the gateway's Landlock domain. A CLI's own sandbox
    /// may not start there (Codex's bubblewrap cannot write `/proc/self/uid_map`); the
    /// gateway's is then the one that holds, and it leaves the working directory read-only
    /// for a role not granted `Write`/`Edit`.
    pub confined: bool,
}

/// One CLI's headless mode.
pub trait Cli: Send + Sync + 'static {
    type Protocol: LineProtocol;
    /// The CLI's name in logs (`codex`).
    const NAME: &'static str;
    /// What it writes of its own (granted under confinement).
    const LAYOUT: StateLayout;
    /// Flags (as written, before any `=`) the gateway manages: an agent's `args` may not
    /// hold them.
    const MANAGED_ARGS: &'static [&'static str];

    /// The argv after the program name: the gateway's flags, then `args` (the agent's own,
    /// already checked), then the prompt where the CLI takes it.
    fn argv(&self, args: &[String], turn: &CliTurn<'_>) -> Vec<String>;
    /// Written to stdin (then closed); empty by default.
    fn stdin(&self, _turn: &CliTurn<'_>) -> Vec<u8> {
        Vec::new()
    }
    /// Variables set for this turn on top of the agent's `env` (they win).
    fn env(&self, _turn: &CliTurn<'_>) -> Env {
        Vec::new()
    }
    /// A refused argument the generic check cannot see (a `-c key=value` override), or
    /// `None`.
    fn refuse_arg(&self, _arg: &str) -> Option<String> {
        None
    }
    /// The parser of one turn's output.
    fn protocol(&self, resumed: Option<&str>) -> Self::Protocol;
}

/// A pipe agent: the shared part. `C` is the CLI.
pub struct PipeBackend<C: Cli> {
    cli: C,
    name: String,
    command: String,
    args: Vec<String>,
    working_directory: PathBuf,
    timeout: Duration,
    env: Env,
    system_prompt: Option<String>,
    owner: Grants,
    guest: Grants,
    sandbox: Option<Sandbox>,
}

impl<C: Cli> PipeBackend<C> {
    pub fn new(cli: C, config: &AgentConfig, sandbox: Option<Sandbox>) -> PipeBackend<C> {
        PipeBackend {
            cli,
            name: config.name.clone(),
            command: config.command.clone(),
            args: config.args.clone(),
            working_directory: config.working_directory.clone(),
            timeout: config.timeout,
            env: config.env.clone(),
            system_prompt: config
                .system_prompt
                .clone()
                .filter(|s| !s.trim().is_empty()),
            owner: Grants::of(&config.owner_rules),
            guest: Grants::of(&config.guest_rules),
            sandbox,
        }
    }

    fn check_args(&self) -> Result<(), AgentError> {
        for (i, arg) in self.args.iter().enumerate() {
            let flag = arg.split('=').next().unwrap_or(arg);
            let why = if C::MANAGED_ARGS.contains(&flag) {
                Some(format!("argument '{flag}' is managed by the gateway"))
            } else {
                let value = if arg.starts_with('-') && !arg.contains('=') {
                    self.args.get(i + 1).map(String::as_str)
                } else {
                    None
                };
                self.cli
                    .refuse_arg(arg)
                    .or_else(|| value.and_then(|v| self.cli.refuse_arg(&format!("{flag}={v}"))))
            };
            if let Some(why) = why {
                return Err(AgentError::Setup(format!(
                    "agent '{}': {why} and may not be set in args",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// The first turn's prompt carries the system prompt: these CLIs have no flag that
    /// appends to their own (and a later turn has it in the session's history).
    fn prompt(&self, turn: &TurnRequest) -> String {
        match (&self.system_prompt, &turn.session) {
            (Some(system), None) => format!(
                "<gateway-instructions>\n{system}\n</gateway-instructions>\n\n{}",
                turn.prompt
            ),
            _ => turn.prompt.clone(),
        }
    }

    /// Whether runs are confined by Landlock (not switched off, and the kernel has it).
    fn confined(&self) -> bool {
        self.sandbox
            .as_ref()
            .is_some_and(|s| s.mode != ConfinementMode::Off)
            && super::confine::abi() > 0
    }

    fn spec(&self, turn: &CliTurn<'_>) -> Result<ProcessSpec, AgentError> {
        let env_remove = vec![crate::policy::HOOK_SECRET_VAR.to_string()];
        let mut env: Env = self
            .env
            .iter()
            .filter(|(k, _)| k != crate::policy::HOOK_SECRET_VAR)
            .cloned()
            .collect();
        // The working directory is writable only for a role whose rules grant `Write`.
        let sandbox = match state::run_sandbox_with(
            self.sandbox.as_ref(),
            &C::LAYOUT,
            &self.working_directory,
            &self.env,
            turn.grants.write,
        )? {
            Some((sandbox, extra)) => {
                env.extend(extra);
                Some(sandbox)
            }
            None => None,
        };
        env.extend(self.cli.env(turn));
        Ok(ProcessSpec {
            program: self.command.clone(),
            args: self.cli.argv(&self.args, turn),
            cwd: self.working_directory.clone(),
            env_remove,
            env,
            stdin: self.cli.stdin(turn),
            sandbox,
        })
    }
}

#[async_trait]
impl<C: Cli> AgentBackend for PipeBackend<C> {
    async fn run_turn(
        &self,
        turn: TurnRequest,
        ctx: TurnContext,
    ) -> Result<TurnOutcome, AgentError> {
        self.check_args()?;
        refuse_model_override(&turn, C::NAME)?;
        // Fail closed: a turn whose calls must be asked cannot run on a CLI that never asks
        // (config refuses `permissions` for these types; this is the second lock).
        if ctx.gate.is_some() {
            return Err(AgentError::Setup(format!(
                "agent '{}': its tool calls must be asked, but `{}` has no approval hook",
                self.name,
                C::NAME
            )));
        }
        let prompt = self.prompt(&turn);
        let cli_turn = CliTurn {
            session: turn.session.as_deref(),
            prompt: &prompt,
            grants: match turn.role {
                Role::Owner => self.owner,
                Role::Guest => self.guest,
            },
            confined: self.confined(),
        };
        let spec = self.spec(&cli_turn)?;
        let started = Instant::now();
        let run = process::Run {
            agent: &self.name,
            spec: &spec,
            timeout: self.timeout,
        };
        let result = process::run(run, &ctx, self.cli.protocol(cli_turn.session), || {}).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let resume = cli_turn.session.is_some();
        match &result {
            Ok(out) => tracing::info!(agent = %self.name, cli = C::NAME, room = %turn.room,
                session = out.session_id.as_deref().unwrap_or("-"), resume, elapsed_ms,
                "turn finished"),
            Err(e) => tracing::info!(agent = %self.name, cli = C::NAME, room = %turn.room,
                resume, elapsed_ms, error = %e, "turn failed"),
        }
        result
    }

    fn working_directory(&self) -> &PathBuf {
        &self.working_directory
    }
}

/// A per-turn model override is applied only by backends that map it onto their CLI (Claude
/// Code's `--model`); elsewhere the turn is refused rather than run on another model than
/// the caller asked for.
pub fn refuse_model_override(turn: &TurnRequest, cli: &str) -> Result<(), AgentError> {
    match &turn.model {
        Some(m) => Err(AgentError::Setup(format!(
            "{cli} cannot switch models per request (asked for '{m}')"
        ))),
        None => Ok(()),
    }
}

/// What a CLI's stream parser knows when its process has exited.
pub struct Ending<'a> {
    pub cli: &'a str,
    /// The CLI's own signal of a finished turn (a final success event, or a clean exit).
    pub succeeded: bool,
    pub session: Option<String>,
    pub resumed: bool,
    pub answer: Option<String>,
    pub usage: Option<Usage>,
    /// The last error the CLI reported.
    pub failure: Option<String>,
    /// Lower-case phrases of the CLI's "no such session" error, looked for in that error
    /// and the stderr tail of a resumed turn.
    pub lost_session: &'a [&'a str],
}

/// The turn's outcome from its [`Ending`]: the answer of a finished turn (which must have
/// named its session), a lost session, else [`unfinished`].
pub fn conclude(end: Ending<'_>, exit: &process::ExitInfo) -> Result<TurnOutcome, AgentError> {
    if end.succeeded {
        let Some(session_id) = end.session else {
            return Err(AgentError::Protocol(format!(
                "{} finished a turn without naming its session",
                end.cli
            )));
        };
        return Ok(TurnOutcome {
            session_id: Some(session_id),
            text: end.answer.unwrap_or_default(),
            usage: end.usage,
            denied_tools: Vec::new(),
        });
    }
    if end.resumed {
        let said = format!(
            "{} {}",
            end.failure.as_deref().unwrap_or_default(),
            exit.stderr_tail
        )
        .to_ascii_lowercase();
        if end.lost_session.iter().any(|p| said.contains(p)) {
            return Err(AgentError::SessionNotFound(end.session.unwrap_or_default()));
        }
    }
    unfinished(exit, end.failure.as_deref(), end.cli)
}

/// The end of a turn for a CLI whose output had no final success event: an error line it
/// printed, else the exit status, else (exit 0 and no answer) garbage.
pub fn unfinished(
    exit: &process::ExitInfo,
    error: Option<&str>,
    cli: &str,
) -> Result<TurnOutcome, AgentError> {
    if let Some(message) = error {
        return Err(api_error(message));
    }
    if !exit.success {
        return Err(AgentError::Crashed {
            status: exit.status.clone(),
            stderr_tail: exit.stderr_tail.clone(),
        });
    }
    Err(AgentError::Protocol(format!(
        "{cli} exited without finishing its turn"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;

    fn rules(list: &[(&str, Option<&str>)]) -> RuleSet {
        RuleSet::new(
            list.iter()
                .map(|(t, p)| Rule::new(t, *p).unwrap())
                .collect(),
        )
    }

    #[test]
    fn only_unconditional_rules_grant_a_tool() {
        assert_eq!(Grants::of(&RuleSet::default()), Grants::default());
        let g = Grants::of(&rules(&[("Read", None), ("Bash", Some("git status"))]));
        assert_eq!(
            g,
            Grants {
                read: true,
                ..Grants::default()
            }
        );
        let g = Grants::of(&rules(&[("Bash|Edit", None), ("WebFetch", None)]));
        assert!(g.shell && g.write && g.web && !g.read);
        // A regex that matches everything grants everything.
        let g = Grants::of(&rules(&[(".*", None)]));
        assert!(g.shell && g.write && g.web && g.read);
    }
}
