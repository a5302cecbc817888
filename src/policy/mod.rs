//! Tool policy: a pure, synchronous decision about one tool call —
//! (role, tool, input, cwd, rules) → Allow / Ask / Deny with a reason.
//!
//! Owns: rule compilation and matching, parameter extraction per tool, bash analysis.
//! Must not import: anything async or doing I/O beyond resolving existing paths.

use regex::{Regex, RegexBuilder};

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
                .map_err(|e| format!("{what} regex '{src}' is invalid: {e}"))
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
