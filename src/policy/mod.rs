//! Tool policy: a pure, synchronous decision about one tool call —
//! (role, tool, input, cwd, rules, guard) → Allow / Ask / Deny with a reason.
//!
//! Owns: rule compilation and matching ([`Rule`], [`RuleSet`]), parameter extraction per tool
//! (`params`), bash analysis (`bash`), path normalisation (`paths`), self-protection (`guard`),
//! the decision ([`decide`]) and its report for `policy check` ([`render_check`]).
//! Must not import: anything async or doing I/O beyond resolving existing paths.
//!
//! Decision order: the [`Guard`] first (a control-plane call is denied whatever the rules say),
//! then `ToolSearch` (always allowed: it only searches tool definitions), then problems (a
//! parse error, an unsupported construct, a missing field: Ask for owners, Deny for guests,
//! never Allow), then the rules of the role: every parameter must match some rule whose tool
//! regex matches the tool (different rules may cover different parameters). Guests get Allow
//! or Deny (no prompt); owners get Allow, or Ask (Allow with `skip_owner_approval`).

mod args;
mod bash;
mod guard;
mod params;
mod paths;

use std::path::{Path, PathBuf};

use regex::{Regex, RegexBuilder};

use crate::model::{Decision, Role};

pub use args::{Finding, RULES as ARGUMENT_RULES};
pub use bash::{analyse as analyse_bash, Analysis, MAX_NODE_DEPTH, MAX_SHELL_DEPTH};
pub use guard::{Guard, CONTROL_SOCKET, GATEWAY_BIN, HOOK_SECRET_VAR};
pub use params::{canonical_json, extract, Extraction};
pub use paths::normalize as normalize_path;

/// One allow-list entry: a tool-name regex and an optional parameter regex, both full-match
/// and case-insensitive (parameters also match across newlines).
#[derive(Clone, Debug)]
pub struct Rule {
    pub tool: Regex,
    pub params: Option<Regex>,
    /// The rule as written, for reasons and `policy check` output.
    pub text: String,
}

impl Rule {
    pub fn new(tool: &str, params: Option<&str>) -> Result<Rule, String> {
        let compile = |what: &str, src: &str, dotall: bool| {
            RegexBuilder::new(&format!("^(?:{src})$"))
                .case_insensitive(true)
                .dot_matches_new_line(dotall)
                .build()
                .map_err(|e| {
                    // regex errors are multi-line drawings; the last line says what is wrong.
                    let e = e.to_string();
                    let why = e
                        .lines()
                        .last()
                        .unwrap_or("invalid")
                        .trim_start_matches("error: ");
                    format!("{what} regex '{src}' is invalid: {why}")
                })
        };
        let text = match params {
            Some(p) => format!("{tool}({p})"),
            None => tool.to_string(),
        };
        Ok(Rule {
            tool: compile("tool", tool, false)?,
            params: params.map(|p| compile("params", p, true)).transpose()?,
            text,
        })
    }

    pub fn matches_tool(&self, tool: &str) -> bool {
        self.tool.is_match(tool)
    }

    pub fn matches(&self, tool: &str, param: &str) -> bool {
        self.matches_tool(tool) && self.params.as_ref().is_none_or(|p| p.is_match(param))
    }
}

/// The rules of one role of one agent.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        RuleSet { rules }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One string a rule's parameter regex is matched against, with what it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub text: String,
    pub kind: ParamKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A simple command; each word's value after quote removal, `None` where only the running
    /// shell knows it (expansions, substitutions). `args` says the same per word with what is
    /// known of the rest (a pattern's or expansion's static prefix), and `cwds` the directories
    /// the command may run in (empty when a `cd` made it unknowable).
    Command {
        argv: Vec<Option<String>>,
        args: Vec<Arg>,
        cwds: Vec<PathBuf>,
    },
    /// A bash redirect target (`write:<path>` / `read:<path>`), normalised.
    Redirect { path: PathBuf, write: bool },
    /// A file tool's path, normalised.
    Path(PathBuf),
    /// A URL, skill name, canonical JSON, bare assignment, …
    Other,
}

/// What static analysis knows about one word of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Its value after expansion and quote removal (a leading `~` is left for the guard).
    Static(String),
    /// An unquoted glob or brace pattern: the text before its first special character.
    Pattern(String),
    /// Only the running shell knows it: the static text before its first expansion.
    Dynamic(String),
    /// One of these (a `for` loop variable over static words and patterns).
    OneOf(Vec<Arg>),
}

/// Everything one decision needs.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// Lowest role among the senders of the turn.
    pub role: Role,
    pub tool: &'a str,
    pub input: &'a serde_json::Value,
    /// The agent's working directory for this call (empty when unknown).
    pub cwd: &'a Path,
    pub owner_rules: &'a RuleSet,
    pub guest_rules: &'a RuleSet,
    pub skip_owner_approval: bool,
    pub guard: &'a Guard,
}

/// The decision and the parameters it was made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub decision: Decision,
    pub parameters: Vec<String>,
    /// The parameters no rule of the role matched, in order (empty when the decision was made
    /// before the rules: guard, always-allowed tool, problems). An approval prompt shows these
    /// first: they are what the owner is really asked about.
    pub unmatched: Vec<String>,
}

/// Tools that are allowed for everyone: they read nothing but the agent's own tool list.
const ALWAYS_ALLOWED: &[&str] = &["toolsearch"];

/// Decides one tool call (see the module comment for the order of checks).
pub fn decide(input: &PolicyInput) -> PolicyOutcome {
    let tool_lower = input.tool.to_ascii_lowercase();
    let extraction = params::extract(input.tool, input.input, input.cwd);
    let parameters: Vec<String> = extraction.params.iter().map(|p| p.text.clone()).collect();
    let mut unmatched = Vec::new();
    let decision = decide_on(input, &tool_lower, &extraction, &mut unmatched);
    PolicyOutcome {
        decision,
        parameters,
        unmatched,
    }
}

fn decide_on(
    input: &PolicyInput,
    tool_lower: &str,
    extraction: &Extraction,
    unmatched_out: &mut Vec<String>,
) -> Decision {
    let mut problems = extraction.problems.clone();
    match input
        .guard
        .check(tool_lower, &extraction.params, input.input, input.cwd)
    {
        Some(guard::Verdict::Deny(reason)) => return Decision::Deny { reason },
        Some(guard::Verdict::Uncheckable(why)) => problems.push(why),
        None => {}
    }
    if ALWAYS_ALLOWED.contains(&tool_lower) {
        return Decision::Allow {
            reason: format!("{} is always allowed", input.tool),
        };
    }
    let role = input.role;
    if !problems.is_empty() {
        let problems = problems.join("; ");
        return match role {
            Role::Guest => Decision::Deny {
                reason: format!("guest: cannot check this call: {problems}"),
            },
            Role::Owner => Decision::Ask {
                reason: format!("cannot check this call automatically: {problems}"),
            },
        };
    }
    let findings = args::check(tool_lower, &extraction.params);
    if !findings.is_empty() {
        unmatched_out.extend(findings.iter().map(|f| f.param.clone()));
        let why: Vec<String> = findings
            .iter()
            .map(|f| format!("built-in rule {}: {}", f.rule, f.why))
            .collect();
        let why = why.join("; ");
        return match role {
            Role::Guest => Decision::Deny {
                reason: format!("guest: needs an owner: {why}"),
            },
            Role::Owner if input.skip_owner_approval => Decision::Allow {
                reason: format!("owner approval skipped ({why})"),
            },
            Role::Owner => Decision::Ask { reason: why },
        };
    }
    let rules = match role {
        Role::Guest => input.guest_rules,
        Role::Owner => input.owner_rules,
    };
    let tool_rules: Vec<&Rule> = rules
        .rules
        .iter()
        .filter(|r| r.matches_tool(input.tool))
        .collect();
    let mut used: Vec<&str> = Vec::new();
    let mut unmatched: Vec<&str> = Vec::new();
    for param in &extraction.params {
        if needs_no_rule(param) {
            continue;
        }
        let alternative = matching_text(param);
        let found = tool_rules
            .iter()
            .find(|r| {
                r.matches(input.tool, &param.text)
                    || alternative
                        .as_deref()
                        .is_some_and(|alt| r.matches(input.tool, alt))
            })
            .copied()
            .or_else(|| redirect_rule(rules, param));
        match found {
            Some(rule) => {
                if !used.contains(&rule.text.as_str()) {
                    used.push(&rule.text);
                }
            }
            None => unmatched.push(&param.text),
        }
    }
    unmatched_out.extend(unmatched.iter().map(|p| p.to_string()));
    if unmatched.is_empty() && !tool_rules.is_empty() {
        return Decision::Allow {
            reason: format!("matches the {role} allow-list: {}", used.join(", ")),
        };
    }
    let why = if tool_rules.is_empty() {
        format!("tool '{}' is not in the {role} allow-list", input.tool)
    } else {
        // A long script can leave hundreds unmatched; the reason stays one readable line.
        const SHOWN: usize = 3;
        let mut shown: Vec<String> = unmatched
            .iter()
            .take(SHOWN)
            .map(|p| format!("`{}`", short(p)))
            .collect();
        if unmatched.len() > SHOWN {
            shown.push(format!("and {} more", unmatched.len() - SHOWN));
        }
        format!("not in the {role} allow-list: {}", shown.join(", "))
    };
    match role {
        Role::Guest => Decision::Deny {
            reason: format!("guest: {why}"),
        },
        Role::Owner if input.skip_owner_approval => Decision::Allow {
            reason: format!("owner approval skipped ({why})"),
        },
        Role::Owner => Decision::Ask { reason: why },
    }
}

/// `cd DIR` only moves the shell: what then runs there is checked on its own (the guard and
/// the redirect targets follow the directory).
/// So do `test`, `read` into plain names (it only sets variables, which the analysis follows) and
/// `set` with option flags only (`set -euo pipefail`).
fn needs_no_rule(param: &Param) -> bool {
    let ParamKind::Command { argv, .. } = &param.kind else {
        return false;
    };
    // `for` only names the words bash expands (checked by the guard), whatever they are.
    if argv.first().is_some_and(|w| w.as_deref() == Some("for")) && param.text.starts_with("for ") {
        return true;
    }
    let Some(words) = argv
        .iter()
        .map(|w| w.as_deref())
        .collect::<Option<Vec<&str>>>()
    else {
        return false;
    };
    // An env prefix (`CDPATH=/proc cd self`) steers the command: it needs a rule.
    if !words.first().is_some_and(|w| param.text.starts_with(w)) {
        return false;
    }
    let plain_name = |w: &str| {
        w.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match words.as_slice() {
        ["cd"] | ["cd", _] => true,
        ["true" | "false" | ":"] => true,
        // Like `[ … ]`, which is not a parameter at all: it only looks at files.
        ["test" | "[", ..] => true,
        ["read", rest @ ..] => rest
            .iter()
            .all(|w| matches!(*w, "-r" | "-s" | "-e") || plain_name(w)),
        ["set", first, rest @ ..] => {
            let flag =
                |w: &&str| (w.starts_with('-') || w.starts_with('+')) && w.len() > 1 && *w != "--";
            flag(first) && rest.iter().all(|w| flag(w) || plain_name(w))
        }
        _ => false,
    }
}

/// Global options of git that change nothing it does (`git --no-pager log`): the command
/// without them is matched too, so a rule written as `git log.*` covers it.
const GIT_QUIET_GLOBALS: &[&str] = &[
    "--no-pager",
    "-P",
    "--no-optional-locks",
    "--literal-pathspecs",
    "--no-replace-objects",
    "--no-advice",
];

fn matching_text(param: &Param) -> Option<String> {
    let ParamKind::Command { argv, .. } = &param.kind else {
        return None;
    };
    let words: Vec<&str> = argv.iter().map(|w| w.as_deref()).collect::<Option<_>>()?;
    let (first, rest) = words.split_first()?;
    if *first != "git" || !rest.first().is_some_and(|w| GIT_QUIET_GLOBALS.contains(w)) {
        return None;
    }
    let kept: Vec<&str> = rest
        .iter()
        .copied()
        .skip_while(|w| GIT_QUIET_GLOBALS.contains(w))
        .collect();
    let text = param.text.strip_prefix("git")?;
    // Only when the text is the plain words (no quoting to preserve).
    (text.split_whitespace().collect::<Vec<_>>() == rest).then(|| format!("git {}", kept.join(" ")))
}

/// A `read:` redirect is what the role's `Read` rules allow, a `write:` one what its `Write`
/// rules allow: `wc -l < f` needs no more than reading `f`.
fn redirect_rule<'r>(rules: &'r RuleSet, param: &Param) -> Option<&'r Rule> {
    let ParamKind::Redirect { path, write } = &param.kind else {
        return None;
    };
    let tool = if *write { "Write" } else { "Read" };
    let path = path.to_string_lossy();
    rules.rules.iter().find(|r| r.matches(tool, &path))
}

/// A parameter shortened for a one-line reason.
fn short(param: &str) -> String {
    const MAX: usize = 120;
    let one_line = param.replace('\n', "\\n");
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// The report of `agent-chat-gateway policy check`.
///
/// Plain: `<allow|ask|deny>: <reason>`, then one parameter per line, indented by two spaces,
/// with newlines inside a parameter written as `\n`. JSON:
/// `{"decision":"allow","reason":"…","parameters":[…]}`.
pub fn render_check(outcome: &PolicyOutcome, json: bool) -> String {
    if json {
        return serde_json::json!({
            "decision": outcome.decision.word(),
            "reason": outcome.decision.reason(),
            "parameters": outcome.parameters,
        })
        .to_string();
    }
    let mut out = format!(
        "{}: {}\n",
        outcome.decision.word(),
        outcome.decision.reason()
    );
    for p in &outcome.parameters {
        out.push_str("  ");
        out.push_str(&p.replace('\n', "\\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
