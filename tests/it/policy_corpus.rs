//! The policy corpus (`tests/data/bash_corpus.yaml`): tool calls with their expected parameters
//! and decisions, checked by one `check` helper; plus property tests of the bash analyser.

use std::path::Path;

use agent_chat_gateway::model::Role;
use agent_chat_gateway::policy::{
    analyse_bash, decide, extract, Guard, PolicyInput, Rule, RuleSet,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde::Deserialize;
use serde_json::{json, Value};

const CORPUS: &str = include_str!("../data/bash_corpus.yaml");
const HARMLESS: &str = include_str!("../data/harmless.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    row: Option<u32>,
    bash: Option<String>,
    tool: Option<String>,
    input: Option<Value>,
    cwd: Option<String>,
    params: Option<Vec<String>>,
    #[serde(default)]
    contains: Vec<String>,
    count_at_least: Option<usize>,
    #[serde(default)]
    problem: bool,
    #[serde(default)]
    rules: Vec<String>,
    guest: Option<String>,
    owner: Option<String>,
    #[serde(default)]
    skip: bool,
    #[serde(default)]
    guard: bool,
}

impl Case {
    fn label(&self) -> String {
        let call = match &self.bash {
            Some(b) => format!("Bash {b:?}"),
            None => format!("{} {}", self.tool.as_deref().unwrap_or("?"), self.input()),
        };
        match self.row {
            Some(row) => format!("row {row}: {call}"),
            None => call,
        }
    }

    fn tool(&self) -> &str {
        if self.bash.is_some() {
            "Bash"
        } else {
            self.tool.as_deref().expect("a case needs `bash` or `tool`")
        }
    }

    fn input(&self) -> Value {
        match &self.bash {
            Some(b) => json!({ "command": b }),
            None => self.input.clone().unwrap_or(Value::Null),
        }
    }
}

/// `Tool` or `Tool(params regex)`: everything up to the first `(` is the tool.
fn rule(spec: &str) -> Rule {
    match spec.split_once('(') {
        Some((tool, rest)) => {
            let params = rest.strip_suffix(')').expect("rule ends with `)`");
            Rule::new(tool, Some(params)).unwrap()
        }
        None => Rule::new(spec, None).unwrap(),
    }
}

fn test_guard() -> Guard {
    Guard::new("/home/agent/.agent-chat-gateway")
        .with_home(Path::new("/home/agent"))
        .with_readable("/home/agent/.agent-chat-gateway/attachments")
        .with_own_room(Some("rc"), "GENERAL")
}

/// Checks one case; returns every mismatch so a run lists all failing cases at once.
fn check(case: &Case) -> Vec<String> {
    let mut errors = Vec::new();
    let label = case.label();
    let tool = case.tool();
    let input = case.input();
    let cwd = case.cwd.clone().unwrap_or_else(|| "/project".to_string());
    let cwd = Path::new(&cwd);

    let extraction = extract(tool, &input, cwd);
    let texts: Vec<&str> = extraction.params.iter().map(|p| p.text.as_str()).collect();
    if let Some(expect) = &case.params {
        if texts != *expect {
            errors.push(format!("{label}: params {texts:?}, expected {expect:?}"));
        }
    }
    for needle in &case.contains {
        if !texts.iter().any(|t| t.contains(needle.as_str())) {
            errors.push(format!(
                "{label}: no parameter contains {needle:?} in {texts:?}"
            ));
        }
    }
    if let Some(n) = case.count_at_least {
        if texts.len() < n {
            errors.push(format!("{label}: {} params, expected ≥ {n}", texts.len()));
        }
    }
    if case.problem == extraction.problems.is_empty() {
        errors.push(format!(
            "{label}: problems {:?}, expected {}",
            extraction.problems,
            if case.problem { "some" } else { "none" }
        ));
    }

    let rules = RuleSet::new(case.rules.iter().map(|s| rule(s)).collect());
    let guard = if case.guard {
        test_guard()
    } else {
        Guard::none()
    };
    for (role, expect) in [(Role::Guest, &case.guest), (Role::Owner, &case.owner)] {
        let Some(expect) = expect else { continue };
        let outcome = decide(&PolicyInput {
            role,
            tool,
            input: &input,
            cwd,
            owner_rules: &rules,
            guest_rules: &rules,
            skip_owner_approval: case.skip,
            guard: &guard,
        });
        if outcome.decision.word() != expect {
            errors.push(format!(
                "{label}: {role} got {:?}, expected {expect}",
                outcome.decision
            ));
        }
        if outcome.parameters != texts {
            errors.push(format!(
                "{label}: decide() saw other parameters than extract()"
            ));
        }
    }
    errors
}

#[test]
fn corpus() {
    let cases: Vec<Case> = serde_yaml::from_str(CORPUS).expect("corpus parses");
    let bash_cases = cases.iter().filter(|c| c.bash.is_some()).count();
    assert!(bash_cases >= 150, "only {bash_cases} bash cases");
    let errors: Vec<String> = cases.iter().flat_map(check).collect();
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// Over-strictness, counted: every harmless command of `data/harmless.yaml` must be allowed
/// for a guest whose allow-list names the programs (with the guard on, in a real work dir
/// under a home that holds the runtime dir).
#[test]
fn harmless_commands_are_allowed() {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Harmless {
        Allowed(String),
        Known { bash: String, over_strict: String },
    }
    let list: Vec<Harmless> = serde_yaml::from_str(HARMLESS).expect("harmless list parses");
    let programs = "ls|cat|grep|head|tail|wc|git (status|log|diff|show|branch)|echo|printf|\
                    sort|uniq|cut|tr|find|sed|awk|cargo (build|test|check)|python3|mkdir|touch|\
                    cp|mv|diff|pwd|du|tree|rg|jq|xargs|time|timeout";
    let rules = RuleSet::new(vec![
        rule(&format!("Bash(({programs})( .*)?)")),
        rule("Read(/home/agent/work/.*)"),
        rule("Write(/home/agent/work/.*)"),
    ]);
    let guard = Guard::new("/home/agent/.agent-chat-gateway").with_home(Path::new("/home/agent"));
    let mut refused = Vec::new();
    let mut known = Vec::new();
    for entry in &list {
        let (command, expected) = match entry {
            Harmless::Allowed(c) => (c, None),
            Harmless::Known { bash, over_strict } => (bash, Some(over_strict)),
        };
        let input = json!({ "command": command });
        let outcome = decide(&PolicyInput {
            role: Role::Guest,
            tool: "Bash",
            input: &input,
            cwd: Path::new("/home/agent/work"),
            owner_rules: &rules,
            guest_rules: &rules,
            skip_owner_approval: false,
            guard: &guard,
        });
        match (outcome.decision.word(), expected) {
            ("allow", None) => {}
            (_, None) => refused.push(format!("{command:?}: {}", outcome.decision.reason())),
            ("allow", Some(_)) => refused.push(format!(
                "{command:?} is allowed now: take it off the known over-strict list"
            )),
            (_, Some(why)) => known.push(format!("{command:?} ({why})")),
        }
    }
    println!(
        "over-strict: {} of {} harmless commands refused: {}",
        known.len() + refused.len(),
        list.len(),
        known.join("; ")
    );
    assert!(list.len() >= 60, "only {} harmless commands", list.len());
    assert!(refused.is_empty(), "over-strict:\n{}", refused.join("\n"));
}

#[test]
fn every_conformance_row_with_a_policy_meaning_is_covered() {
    let cases: Vec<Case> = serde_yaml::from_str(CORPUS).expect("corpus parses");
    // 35 (OpenCode patterns), 46 and 49–51 (broker and HTTP) are not policy questions.
    let rows = (1..=48).filter(|r| ![35, 46].contains(r));
    for row in rows {
        assert!(
            cases.iter().any(|c| c.row == Some(row)),
            "conformance row {row} is missing from the corpus"
        );
    }
}

/// Strings that look like shell: operators, quotes, substitutions, heredocs and words.
fn shellish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("ls".to_string()),
        Just("echo".to_string()),
        Just("bash -c ".to_string()),
        Just("eval ".to_string()),
        Just("sudo ".to_string()),
        Just("find . -exec ".to_string()),
        Just("<<EOF\nx $(id)\nEOF\n".to_string()),
        Just("<<'E'\n".to_string()),
        Just("$(".to_string()),
        Just(")".to_string()),
        Just("`".to_string()),
        Just("<(".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("${!x}".to_string()),
        Just("$X".to_string()),
        Just(" > ".to_string()),
        Just(" 2>&1 ".to_string()),
        Just(" <<< ".to_string()),
        Just(" && ".to_string()),
        Just(" | ".to_string()),
        Just("; ".to_string()),
        Just("\n".to_string()),
        Just("\\".to_string()),
        Just("{ ".to_string()),
        Just(" }".to_string()),
        Just("if ".to_string()),
        Just(" then ".to_string()),
        Just(" fi".to_string()),
        Just("((".to_string()),
        Just("é中".to_string()),
        "[a-z/.=*?-]{1,6}",
    ];
    prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
}

proptest! {
    // Regressions stay beside this file (`policy_corpus.proptest-regressions`): the default
    // would put them in `tests/proptest-regressions/`, since this is a module of `tests/it/`.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::with_cases(512)
    })]

    #[test]
    fn analyser_never_panics_on_any_string(s in any::<String>()) {
        let _ = analyse_bash(&s, Path::new("/project"));
    }

    #[test]
    fn analyser_is_deterministic(s in shellish()) {
        let a = analyse_bash(&s, Path::new("/project"));
        let b = analyse_bash(&s, Path::new("/project"));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn a_refused_script_is_never_allowed(s in shellish()) {
        let analysis = analyse_bash(&s, Path::new("/project"));
        let all = RuleSet::new(vec![rule(".*(.*)")]);
        let input = json!({ "command": s });
        for role in [Role::Guest, Role::Owner] {
            let outcome = decide(&PolicyInput {
                role,
                tool: "Bash",
                input: &input,
                cwd: Path::new("/project"),
                owner_rules: &all,
                guest_rules: &all,
                skip_owner_approval: true,
                guard: &Guard::none(),
            });
            if !analysis.problems.is_empty() {
                prop_assert_ne!(outcome.decision.word(), "allow");
            }
        }
    }
}

/// tree-sitter-bash's scanner once handed any code point to C `isdigit` after a `{`, which
/// read far outside its table and crashed the process: the analyser must survive every
/// character in that position, whatever the command around it.
#[test]
fn every_character_after_a_brace_is_analysed_without_crashing() {
    let highest = char::MAX as u32;
    let samples = (0x80..0x800)
        .chain((0x800..=highest).step_by(0x3FF))
        .chain([0xFFFF, 0x10000, highest]);
    for code in samples.filter_map(char::from_u32) {
        for script in [
            format!("echo {{{code}"),
            format!("echo a{{{code}..2}}"),
            format!("{{{code}"),
        ] {
            let analysis = analyse_bash(&script, Path::new("/project"));
            assert!(!analysis.params.is_empty(), "{script:?}");
        }
    }
    // Non-ASCII text is still read from the real source.
    let analysis = analyse_bash("echo é中 > ./日本.txt", Path::new("/project"));
    let texts: Vec<&str> = analysis.params.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(
        texts,
        ["echo é中", "write:/project/日本.txt"],
        "{analysis:?}"
    );
    assert!(analysis.problems.is_empty(), "{analysis:?}");
}
