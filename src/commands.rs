//! Room commands: what people type in a room to steer its conversation (`!help`, `!stop`,
//! `!new`, `!status`, `!model`, `!agent`, `!sessions`, `!resume`, `!budget`).
//!
//! Owns: recognising a command in a message's text (the configured prefix, and `/` where the
//! platform delivers it), its arguments, and who may use it. The dispatcher parses every
//! message here with the sender's role from configuration, so text never grants a role; the
//! room worker carries the command out (`room::RoomControl::Command`).
//! Must not import: anything async, platforms, agents.

use crate::config::CommandsConfig;
use crate::model::Role;

/// One command, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    /// Interrupt the running turn now (its agent is killed, the session kept); `all` also
    /// drops the messages waiting in the queue.
    Stop {
        all: bool,
    },
    /// Start a fresh session with the next message.
    New,
    Status,
    /// Use this model in the room from now on; `None` goes back to the agent's default.
    Model(Option<String>),
    /// Switch the room to another configured agent (a fresh session).
    Agent(String),
    /// List the room's past sessions.
    Sessions,
    /// Continue one of the room's past sessions, or any session id of the agent's CLI (one
    /// started in a terminal).
    Resume(String),
    /// The budget figures of the room and of its users who spent this month.
    Budget,
    /// Let guests past the budgets until the end of the UTC day (`true`), or end that now.
    BudgetOverride(bool),
}

/// What the dispatcher does with a message that looks like a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Command),
    /// A command this sender may not use, or one given wrongly: answered with this text.
    Refused(String),
}

/// The commands, in the order `help` lists them.
const NAMES: &[&str] = &[
    "help", "status", "stop", "new", "model", "agent", "sessions", "resume", "budget",
];

/// The longest model, agent or session name taken from a command.
const MAX_ARG_LEN: usize = 200;

/// `Some` when `text` is one of the gateway's commands (`<prefix>name args`, or `/name args`
/// when `slash` is on); anything else, including an unknown word after the prefix, is an
/// ordinary message for the agent.
pub fn parse(text: &str, config: &CommandsConfig, role: Role) -> Option<Parsed> {
    let text = text.trim();
    let rest = text
        .strip_prefix(config.prefix.as_str())
        .or_else(|| text.strip_prefix('/').filter(|_| config.slash))?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_ascii_lowercase();
    if !NAMES.contains(&name.as_str()) || rest.starts_with(char::is_whitespace) {
        return None;
    }
    let args: Vec<&str> = words.collect();
    let p = &config.prefix;
    if role < owner_only(&name) {
        return Some(Parsed::Refused(format!(
            "🔒 `{p}{name}` is for owners. Guests may use `{p}help` and `{p}status`."
        )));
    }
    let one_arg = |what: &str| -> Result<String, String> {
        match args.as_slice() {
            // Never a leading `-`: the name becomes an argument of the agent's CLI, where
            // `--resume --some-flag` would read as a flag.
            [arg]
                if arg.len() <= MAX_ARG_LEN
                    && !arg.starts_with('-')
                    && arg.chars().all(is_name_char) =>
            {
                Ok(arg.to_string())
            }
            _ => Err(format!(
                "⚠️ Usage: `{p}{name} <{what}>` (letters, digits, `.`, `-`, `_`, `:`, `/`, `@` only)."
            )),
        }
    };
    let no_args = |command: Command| -> Result<Command, String> {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(format!("⚠️ `{p}{name}` takes no arguments."))
        }
    };
    let command = match name.as_str() {
        "help" => no_args(Command::Help),
        "status" => no_args(Command::Status),
        "new" => no_args(Command::New),
        "sessions" => no_args(Command::Sessions),
        "stop" => match args.as_slice() {
            [] => Ok(Command::Stop { all: false }),
            ["all"] => Ok(Command::Stop { all: true }),
            _ => Err(format!("⚠️ Usage: `{p}stop` or `{p}stop all`.")),
        },
        "model" => match args.as_slice() {
            ["default"] => Ok(Command::Model(None)),
            _ => one_arg("model").map(|m| Command::Model(Some(m))),
        },
        "agent" => one_arg("agent").map(Command::Agent),
        "resume" => one_arg("session id").map(Command::Resume),
        "budget" => match args.as_slice() {
            [] => Ok(Command::Budget),
            ["override"] => Ok(Command::BudgetOverride(true)),
            ["override", "off"] => Ok(Command::BudgetOverride(false)),
            _ => Err(format!(
                "⚠️ Usage: `{p}budget`, `{p}budget override` or `{p}budget override off`."
            )),
        },
        _ => unreachable!("every name in NAMES is matched"),
    };
    Some(match command {
        Ok(c) => Parsed::Run(c),
        Err(usage) => Parsed::Refused(usage),
    })
}

/// The lowest role that may use a command: guests may look (`help`, `status`), only owners
/// may change what the room does.
fn owner_only(name: &str) -> Role {
    match name {
        "help" | "status" => Role::Guest,
        _ => Role::Owner,
    }
}

/// Characters a model, agent or session name may hold: they end up in an agent's argv.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-:/@".contains(c)
}

/// The answer to `help`, for this sender's role.
pub fn help(config: &CommandsConfig, role: Role) -> String {
    let p = &config.prefix;
    let mut out = format!("Commands (type them as a message, e.g. `{p}status`):\n");
    out.push_str(&format!("`{p}help` — this list\n"));
    out.push_str(&format!(
        "`{p}status` — agent, model, session, usage, queue, budget\n"
    ));
    if role == Role::Owner {
        for line in [
            format!("`{p}stop` — interrupt the running turn (the session is kept; `{p}stop all` also drops queued messages)"),
            format!("`{p}new` — start a fresh session"),
            format!("`{p}model <name>` — use this model in this room (`{p}model default` to go back)"),
            format!("`{p}agent <name>` — switch this room to another agent"),
            format!("`{p}sessions` — this room's past sessions"),
            format!("`{p}resume <id>` — continue a past session, or one started in a terminal"),
            format!("`{p}budget` — budget figures of this room and its users (`{p}budget override`: guests may go past the budgets until the end of the UTC day; `{p}budget override off` ends that)"),
        ] {
            out.push_str(&line);
            out.push('\n');
        }
    } else {
        out.push_str("(the other commands are for owners)\n");
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, role: Role) -> Option<Parsed> {
        parse(text, &CommandsConfig::default(), role)
    }

    #[test]
    fn commands_are_recognised_with_either_prefix() {
        assert_eq!(
            check("!stop", Role::Owner),
            Some(Parsed::Run(Command::Stop { all: false }))
        );
        assert_eq!(
            check("  /STOP all ", Role::Owner),
            Some(Parsed::Run(Command::Stop { all: true }))
        );
        assert_eq!(
            check("!model claude-opus-4-1", Role::Owner),
            Some(Parsed::Run(Command::Model(Some("claude-opus-4-1".into()))))
        );
        assert_eq!(
            check("!model default", Role::Owner),
            Some(Parsed::Run(Command::Model(None)))
        );
        assert_eq!(
            check("!resume 0b6f-aa", Role::Owner),
            Some(Parsed::Run(Command::Resume("0b6f-aa".into())))
        );
        assert_eq!(
            check("!budget", Role::Owner),
            Some(Parsed::Run(Command::Budget))
        );
        assert_eq!(
            check("!budget override", Role::Owner),
            Some(Parsed::Run(Command::BudgetOverride(true)))
        );
        assert_eq!(
            check("!budget override off", Role::Owner),
            Some(Parsed::Run(Command::BudgetOverride(false)))
        );
    }

    #[test]
    fn other_text_is_an_ordinary_message() {
        for text in [
            "stop",
            "!important: read this",
            "! stop",
            "/etc/passwd is readable?",
            "",
            "!",
        ] {
            assert_eq!(check(text, Role::Owner), None, "{text:?}");
        }
        let no_slash = CommandsConfig {
            prefix: "%".into(),
            slash: false,
        };
        assert_eq!(parse("/stop", &no_slash, Role::Owner), None);
        assert_eq!(parse("!stop", &no_slash, Role::Owner), None);
        assert_eq!(
            parse("%new", &no_slash, Role::Owner),
            Some(Parsed::Run(Command::New))
        );
    }

    #[test]
    fn guests_may_only_look() {
        assert_eq!(
            check("!status", Role::Guest),
            Some(Parsed::Run(Command::Status))
        );
        assert_eq!(
            check("!help", Role::Guest),
            Some(Parsed::Run(Command::Help))
        );
        for text in [
            "!stop",
            "!new",
            "!model x",
            "!agent x",
            "!sessions",
            "!resume x",
            "!budget",
            "!budget override",
        ] {
            let name = text[1..].split(' ').next().unwrap();
            assert_eq!(
                check(text, Role::Guest),
                Some(Parsed::Refused(format!(
                    "🔒 `!{name}` is for owners. Guests may use `!help` and `!status`."
                ))),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_arguments_get_the_usage() {
        assert_eq!(
            check("!stop now", Role::Owner),
            Some(Parsed::Refused("⚠️ Usage: `!stop` or `!stop all`.".into()))
        );
        assert_eq!(
            check("!new session", Role::Owner),
            Some(Parsed::Refused("⚠️ `!new` takes no arguments.".into()))
        );
        assert_eq!(
            check("!budget on", Role::Owner),
            Some(Parsed::Refused(
                "⚠️ Usage: `!budget`, `!budget override` or `!budget override off`.".into()
            ))
        );
        for text in [
            "!model",
            "!model a b",
            "!resume $(id)",
            "!agent ../x;y",
            "!resume --dangerously-skip-permissions",
            "!model -x",
        ] {
            assert!(
                matches!(check(text, Role::Owner), Some(Parsed::Refused(u)) if u.starts_with("⚠️ Usage: `!")),
                "{text}"
            );
        }
    }
}
