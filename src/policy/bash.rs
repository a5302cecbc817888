//! Bash analysis with tree-sitter-bash: a script → every command it can run, as parameters.
//!
//! Owns: walking the syntax tree and producing one [`Param`] per simple command (wherever it
//! sits: lists, pipelines, subshells, `$(…)`, backticks, `<(…)`/`>(…)`, loops, conditionals,
//! `case`, function bodies, heredoc bodies, `${…}` operands), per redirect target
//! (`write:<path>` / `read:<path>`), per assignment or declaration that needs a rule, and per
//! command run by another one (`sudo …`, `env …`, `timeout …`, `xargs …`, `find -exec … ;`,
//! `coproc …`, `bash -c '…'`, `eval …`, `watch '…'`, `trap '…' SIG`, a shell fed a static
//! heredoc or herestring). A command that runs another yields both, so
//! `find . -exec rm {} \;` needs a rule for `rm {}` too.
//!
//! The walk is closed-world: every node kind, in every position (statement, word, arithmetic,
//! test), is on an explicit list with the way it is handled; anything else is a problem
//! ("cannot check"), so a construct the analyser does not know can never be allowed. Why:
//! bash has many places that *evaluate* text later — arithmetic (`(( ))`, `$(( ))`, array
//! subscripts, substring offsets, `[[ … -eq … ]]`), `${x@P}`, `[[ -v … ]]`, `read`/`printf -v`
//! names — and an open-world walker that skips what it does not know lets a substitution hide
//! there. In those places only numbers and variables whose values this script sets to numbers
//! are accepted; a quoted string, an expansion with an operator or a substitution is refused.
//! Leaf text (words, pattern operands, unquoted heredoc bodies, string content) is scanned for
//! a backtick or `$(` the grammar did not turn into a node.
//!
//! The parameter text of a command is its source text, with its env-prefix assignments
//! (`FOO=x cmd`), arguments as written (substitutions stay in the text *and* are extracted as
//! their own commands) and heredoc (`python3 <<'EOF'\n…\nEOF`) or herestring, but without
//! file redirects, which become their own parameters. Each command also carries what is known
//! of its words ([`Arg`]: static value, pattern prefix, or run-time value with its static
//! prefix; a variable this script assigns one static value is substituted) and the
//! directories it may run in, tracked through `cd` (a failed `cd` leaves the old directory, so
//! both are kept unless `&&` makes the new one certain).
//!
//! Assignments to lower-case names (`x=1; ls`) need no rule: they do not reach the environment
//! of other programs (proxy variables excepted), and every later use of the value is checked
//! where it matters. Upper-case ones (`PATH=…`) and declarations (`export …`) are parameters.
//!
//! Unsupported (reported as problems, so the decision is never Allow):
//! - syntax errors (ERROR or MISSING nodes), nesting deeper than [`MAX_NODE_DEPTH`], and
//!   source text that the grammar skipped (not covered by any node, so invisible to rules);
//!   the one known harmless case, the `-` in `python3 - <<'EOF'`, is put back as an argument;
//! - any node kind or `${…}` operator not on the lists below;
//! - a command name that is not static text: `$CMD`, `${X}y`, `$(which rm)`, `$'rm'`, an
//!   unquoted glob (`/bin/r?`) or brace expansion (`{rm,-rf,/}`);
//! - a redirect target that is not static text (`> $OUT`, `> ~/x`, `> *.log`), or a relative
//!   target where the directory is unknown (after `cd "$x"`, `cd` in a loop or function);
//! - `bash -c`/`eval`/`watch` strings, or heredocs fed to a shell, that contain expansions;
//!   nesting of such strings deeper than [`MAX_SHELL_DEPTH`]; `env -S`;
//! - indirect expansion `${!name}`, `${x@P}`, `let`, `declare -i`/`-n`, a variable name with a
//!   subscript (or only known at run time) given to `read`, `printf -v`, `mapfile`, `unset`,
//!   `test -v` …, and arithmetic on anything but numbers and numeric variables of the script.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tree_sitter::{Node, Parser};

use super::paths;
use super::{Arg, Param, ParamKind};

/// How many `bash -c`/`eval` strings may nest inside each other.
pub const MAX_SHELL_DEPTH: usize = 4;
/// How deep the syntax tree may nest before the script is refused (protects the stack).
pub const MAX_NODE_DEPTH: usize = 100;
/// How many wrappers (`sudo env timeout …`) one command may stack.
const MAX_WRAPPERS: usize = 16;
/// How many possible working directories are tracked before giving up on knowing it.
const MAX_CWDS: usize = 8;

/// Shells whose `-c` string, stdin heredoc or herestring is parsed as bash.
const SHELLS: &[&str] = &["bash", "sh", "dash", "zsh", "ksh", "ash", "mksh"];
/// Commands that change the shell's directory.
const DIR_CHANGERS: &[&str] = &["cd", "pushd", "popd"];
/// Nodes whose children cover all their text except whitespace; anything else between the
/// children is text the grammar skipped, which would otherwise be invisible to the rules.
const STRUCTURAL: &[&str] = &[
    "program",
    "list",
    "pipeline",
    "command",
    "compound_statement",
    "subshell",
    "do_group",
    "if_statement",
    "elif_clause",
    "else_clause",
    "while_statement",
    "for_statement",
    "c_style_for_statement",
    "case_statement",
    "case_item",
    "function_definition",
    "command_substitution",
    "process_substitution",
    "negated_command",
    "declaration_command",
    "unset_command",
    "variable_assignments",
    "file_redirect",
    "herestring_redirect",
    "concatenation",
    "test_command",
    "binary_expression",
    "unary_expression",
    "arithmetic_expansion",
    "subscript",
];
/// Redirect targets that are harmless whatever the rules say.
const HARMLESS_TARGETS: &[&str] = &["/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin"];
/// Anonymous tokens that may follow the subject of a `${…}` expansion.
const EXPANSION_OPERATORS: &[&str] = &[
    ":-", "-", ":=", "=", ":?", "?", ":+", "+", "#", "##", "%", "%%", "/", "//", "/#", "/%", "^",
    "^^", ",", ",,", ":",
];
/// `${x@OP}` transformations that only quote or change case. `@P` is prompt expansion, which
/// runs the command substitutions in the value.
const SAFE_TRANSFORMS: &[&str] = &["Q", "E", "U", "u", "L", "a", "A", "K", "k"];
/// Operators of `[[ ]]` whose operands bash evaluates as arithmetic.
const ARITH_TEST_OPS: &[&str] = &["-eq", "-ne", "-lt", "-le", "-gt", "-ge"];
/// Variables the shell itself keeps numeric.
const NUMERIC_SPECIALS: &[&str] = &[
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "LINENO",
    "BASHPID",
    "PPID",
    "UID",
    "EUID",
    "EPOCHSECONDS",
    "OPTIND",
    "HISTCMD",
];
/// Builtins whose operands are variable names: bash evaluates a subscript in such a name
/// (`read 'a[$(id)]'` runs `id`).
const VARNAME_BUILTINS: &[&str] = &["read", "mapfile", "readarray", "getopts", "unset", "wait"];
/// Builtins that run code in the current shell: any variable may change.
const CURRENT_SHELL_RUNNERS: &[&str] = &["eval", "source", ".", "trap"];

thread_local! {
    // Building a parser allocates; reusing one per thread keeps a decision at a few µs.
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

/// The code point the parser sees for every non-ASCII character.
///
/// Why: tree-sitter-bash's scanner calls C `isdigit` on the lookahead, which indexes a
/// 384-entry table, so a code point far above 255 after a `{` reads out of bounds and can
/// crash the whole gateway (found by the fuzz test in `tests/it/policy_corpus.rs`). Bash itself
/// only gives meaning to ASCII (its blanks and metacharacters are all ASCII; everything else
/// is an ordinary word character), so feeding the grammar one Latin-1 letter in place of each
/// non-ASCII character keeps the parse faithful, and byte offsets (hence all node text, which
/// is read from the real source) are unchanged.
const NON_ASCII_STAND_IN: i32 = 0xE9; // 'é'

/// UTF-8 decoding for the bash parser that reports non-ASCII characters as
/// [`NON_ASCII_STAND_IN`] while consuming their real length.
struct BashBytes;

impl tree_sitter::Decode for BashBytes {
    fn decode(bytes: &[u8]) -> (i32, u32) {
        let Some(&lead) = bytes.first() else {
            return (-1, 0);
        };
        let len = match lead {
            0x00..=0x7F => return (i32::from(lead), 1),
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            // A continuation byte cannot start a character of a `&str`; report a decode
            // error (-1), as tree-sitter's own decoder does, and step over it.
            _ => return (-1, 1),
        };
        if bytes.len() < len {
            // Truncated: tree-sitter retries with a fresh chunk on a short error.
            return (-1, bytes.len() as u32);
        }
        (NON_ASCII_STAND_IN, len as u32)
    }
}

/// What a script does, as far as static analysis can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// Every command and redirect target, in source order, without duplicates.
    pub params: Vec<Param>,
    /// Why the analysis cannot vouch for the script (empty when it can).
    pub problems: Vec<String>,
}

/// Analyses `script` as run in `cwd` (used to resolve relative paths).
pub fn analyse(script: &str, cwd: &Path) -> Analysis {
    let mut analyser = Analyser {
        params: Vec::new(),
        problems: Vec::new(),
        // An empty path stands for "the agent's directory, not told": relative paths then
        // resolve to nothing (no redirect target can be checked, but a word is not refused
        // for it), unlike a directory lost to `cd "$x"`, which makes them uncheckable.
        cwds: Some(vec![if cwd.is_absolute() {
            cwd.to_path_buf()
        } else {
            PathBuf::new()
        }]),
        last_cd: None,
        env_prefix: false,
        normalized: HashMap::new(),
        depth: 0,
        scope: Scope::default(),
    };
    analyser.script(script, 0, 0);
    if analyser.params.is_empty() {
        // Nothing recognisable: the script itself must match a rule.
        analyser.params.push(Param {
            text: script.to_string(),
            kind: ParamKind::Other,
        });
    }
    let mut seen = HashSet::with_capacity(analyser.params.len());
    let mut params: Vec<Param> = Vec::with_capacity(analyser.params.len());
    for p in analyser.params {
        if seen.insert(p.text.clone()) {
            params.push(p);
        }
    }
    Analysis {
        params,
        problems: analyser.problems,
    }
}

struct Analyser {
    params: Vec<Param>,
    problems: Vec<String>,
    /// The directories the next command may run in; `None` once that is unknowable.
    cwds: Option<Vec<PathBuf>>,
    /// Where the last `cd` leads, for the right side of `cd … && …`.
    last_cd: Option<Option<Vec<PathBuf>>>,
    /// The command being recorded has env-prefix assignments (`CDPATH=… cd x`).
    env_prefix: bool,
    /// Depth of the node being walked (nested scripts continue from it).
    depth: usize,
    /// Relative paths already resolved against one directory (loops repeat them).
    normalized: HashMap<(String, PathBuf), Option<PathBuf>>,
    /// Variables of the script being walked.
    scope: Scope,
}

/// What one script (the top level, or a `bash -c`/`eval` string) does to its variables,
/// collected before the walk so a use is judged by every assignment, also later ones in a loop.
#[derive(Default)]
struct Scope {
    vars: HashMap<String, VarInfo>,
    /// Something (`eval`, `source`, `read $name` …) may set any variable.
    taint_all: bool,
    /// Variables evaluated as arithmetic, judged when the script is done.
    arith_refs: Vec<String>,
    /// The script has a `cd` inside a loop or function body, or a function and a `cd`: the
    /// working directory of a command cannot be followed through the text.
    cd_unfollowable: bool,
    has_cd: bool,
    has_function: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum VarInfo {
    /// Assigned exactly this static value (everywhere it is assigned).
    Static(String),
    /// Assigned only by arithmetic.
    Numeric,
    /// A `for` variable over these static words and patterns.
    Words(Vec<Arg>),
    /// Anything else.
    Unknown,
}

impl Scope {
    fn record(&mut self, name: &str, info: VarInfo) {
        let numeric = |i: &VarInfo| match i {
            VarInfo::Numeric => true,
            VarInfo::Static(v) => is_number(v),
            VarInfo::Unknown | VarInfo::Words(_) => false,
        };
        match self.vars.get_mut(name) {
            Some(old) if *old != info && numeric(old) && numeric(&info) => *old = VarInfo::Numeric,
            Some(old) if *old != info => *old = VarInfo::Unknown,
            Some(_) => {}
            None => {
                self.vars.insert(name.to_string(), info);
            }
        }
    }

    /// What a plain `$name` stands for, when the script says.
    fn arg_of(&self, name: &str) -> Option<Arg> {
        if self.taint_all {
            return None;
        }
        match self.vars.get(name)? {
            VarInfo::Static(v) => Some(Arg::Static(v.clone())),
            VarInfo::Words(words) if words.len() == 1 => Some(words[0].clone()),
            VarInfo::Words(words) => Some(Arg::OneOf(words.clone())),
            VarInfo::Numeric | VarInfo::Unknown => None,
        }
    }

    fn is_numeric(&self, name: &str) -> bool {
        if NUMERIC_SPECIALS.contains(&name) {
            return true;
        }
        if self.taint_all {
            return false;
        }
        match self.vars.get(name) {
            Some(VarInfo::Numeric) => true,
            Some(VarInfo::Static(v)) => is_number(v),
            _ => false,
        }
    }
}

/// One word of a command line: its source text and, when it is static, its value after quote
/// removal.
#[derive(Clone, Debug)]
struct Word {
    text: String,
    value: Option<String>,
    /// Unquoted glob or brace characters: the value is a pattern, not the final word.
    pattern: bool,
    /// What the guard and the argument rules see (with script variables substituted).
    arg: Arg,
}

/// What a redirect contributes to its command.
#[derive(Default)]
struct RedirectParts {
    /// Text appended to the command's parameter (heredoc, herestring, stray arguments).
    text: Vec<String>,
    /// Words that tree-sitter put after a redirect target but that are arguments (`echo > f hi`).
    extra_args: Vec<Word>,
    /// A heredoc or herestring: `Some(script)` when static, `None` when it has expansions.
    stdin: Option<Option<String>>,
}

/// Per-parse context: the source the nodes point into and the `bash -c` nesting level.
#[derive(Clone, Copy)]
struct Cx<'s> {
    src: &'s str,
    shell_depth: usize,
}

impl Cx<'_> {
    fn text(&self, node: Node) -> String {
        self.slice(node.start_byte(), node.end_byte())
    }

    /// Source bytes `start..end`; lossy because error recovery may cut inside a character.
    fn slice(&self, start: usize, end: usize) -> String {
        let bytes = self.src.as_bytes();
        let end = end.min(bytes.len());
        let start = start.min(end);
        String::from_utf8_lossy(&bytes[start..end]).into_owned()
    }
}

impl Analyser {
    fn problem(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn push(&mut self, text: String, kind: ParamKind) {
        self.params.push(Param { text, kind });
    }

    /// A problem naming the construct, shortened to one readable line.
    fn unsupported(&mut self, what: &str, node: Node, cx: Cx) {
        let text = cx.text(node);
        let near: String = text.chars().take(60).collect();
        let near = near.replace('\n', "\\n");
        let more = if text.chars().count() > 60 { "…" } else { "" };
        self.problem(format!("{what} is not supported: `{near}{more}`"));
    }

    /// Parses and walks one script (the top level, or a `bash -c`/`eval` string).
    /// `depth` is where the script sits in the enclosing tree: nested strings share one
    /// depth budget, so the recursion stays bounded whatever the mix of nesting.
    fn script(&mut self, src: &str, shell_depth: usize, depth: usize) {
        if shell_depth > MAX_SHELL_DEPTH {
            self.problem(format!(
                "shell strings nested more than {MAX_SHELL_DEPTH} levels deep"
            ));
            return;
        }
        let tree = PARSER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let parser = slot.get_or_insert_with(|| {
                let mut parser = Parser::new();
                parser
                    .set_language(&tree_sitter_bash::LANGUAGE.into())
                    .expect("tree-sitter-bash matches the linked tree-sitter ABI");
                parser
            });
            let bytes = src.as_bytes();
            parser.parse_custom_encoding::<BashBytes, _, _>(
                &mut |offset, _| bytes.get(offset..).unwrap_or_default(),
                None,
                None,
            )
        });
        let Some(tree) = tree else {
            self.problem("the bash parser gave up on this script".to_string());
            return;
        };
        let root = tree.root_node();
        let before = self.problems.len();
        if let Some(at) = continuation_inside_word(src) {
            // bash joins `gate\<newline>way` into one word (also `$\<newline>(id)`), but the
            // grammar may split it: refused rather than guessed.
            let mut from = at.saturating_sub(20);
            while !src.is_char_boundary(from) {
                from -= 1;
            }
            let near: String = src[from..]
                .chars()
                .take(40)
                .collect::<String>()
                .replace('\n', "\\n");
            self.problem(format!(
                "a line continuation inside a word is not supported: `{near}`"
            ));
        }
        let cx = Cx { src, shell_depth };
        let outer = std::mem::take(&mut self.scope);
        prescan(&mut self.scope, root, cx, depth, false);
        if self.scope.cd_unfollowable || (self.scope.has_function && self.scope.has_cd) {
            self.cwds = None;
        }
        self.walk(root, cx, depth);
        let refs = std::mem::take(&mut self.scope.arith_refs);
        for name in refs {
            if !self.scope.is_numeric(&name) {
                self.problem(format!(
                    "`{name}` is evaluated as arithmetic, and its value is not a number this \
                     script sets"
                ));
            }
        }
        self.scope = outer;
        if root.has_error() && self.problems.len() == before {
            self.problem("bash syntax error".to_string());
        }
    }

    /// Checks common to every node; `false` when the node must not be looked into.
    fn enter(&mut self, node: Node, cx: Cx, depth: usize) -> bool {
        self.depth = depth;
        if depth > MAX_NODE_DEPTH {
            self.problem(format!(
                "script nests more than {MAX_NODE_DEPTH} levels deep"
            ));
            return false;
        }
        if node.is_error() {
            let near: String = cx.text(node).chars().take(40).collect();
            self.problem(format!("bash syntax error near `{}`", near.trim()));
            return false;
        }
        if node.is_missing() {
            self.problem(format!("bash syntax error: missing `{}`", node.kind()));
            return false;
        }
        if STRUCTURAL.contains(&node.kind()) {
            if let Some((_, gap)) = uncovered(node, cx).first() {
                self.problem(format!("text the parser skipped: `{gap}`"));
            }
        }
        true
    }

    /// A node in statement position.
    fn walk(&mut self, node: Node, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        match node.kind() {
            "program" | "do_group" | "if_statement" | "elif_clause" | "else_clause"
            | "while_statement" | "negated_command" => self.walk_children(node, cx, depth),
            "list" => self.list(node, &[], cx, depth),
            "pipeline" => {
                // Every part of a pipeline runs in a subshell: a `cd` there changes nothing after.
                let mut cursor = node.walk();
                for child in node.named_children(&mut cursor) {
                    let saved = self.cwds.clone();
                    self.walk(child, cx, depth + 1);
                    self.cwds = saved;
                }
            }
            "subshell" => {
                let saved = self.cwds.clone();
                self.walk_children(node, cx, depth);
                self.cwds = saved;
            }
            "compound_statement" => {
                if node.child(0).is_some_and(|c| c.kind() == "((") {
                    self.arith_children(node, cx, depth);
                } else {
                    self.walk_children(node, cx, depth);
                }
            }
            "comment" => {}
            "command" => self.command(node, &[], false, cx, depth),
            "redirected_statement" => self.redirected_statement(node, cx, depth),
            "variable_assignment" | "variable_assignments" => self.assignments(node, cx, depth),
            "declaration_command" | "unset_command" => self.declaration(node, cx, depth),
            "for_statement"
            | "c_style_for_statement"
            | "case_statement"
            | "case_item"
            | "function_definition"
            | "test_command" => self.compound(node, cx, depth),
            "file_redirect" | "heredoc_redirect" | "herestring_redirect" => {
                let mut parts = RedirectParts::default();
                self.redirect_into(node, cx, depth, &mut parts);
            }
            _ => self.unsupported(&format!("`{}`", node.kind()), node, cx),
        }
    }

    /// Loops, `case`, functions and tests: their parts are words, arithmetic or statements.
    #[inline(never)]
    fn compound(&mut self, node: Node, cx: Cx, depth: usize) {
        match node.kind() {
            "for_statement" => {
                // The word list is expanded by bash itself (a glob opens its directory): it
                // becomes a parameter the guard checks, needing no rule (`for f in *.rs`).
                let mark = self.params.len();
                let mut words = vec![Word {
                    text: "for".to_string(),
                    value: Some("for".to_string()),
                    pattern: false,
                    arg: Arg::Static("for".to_string()),
                }];
                let mut text = String::new();
                let mut cursor = node.walk();
                for (i, child) in node.children(&mut cursor).enumerate() {
                    match node.field_name_for_child(i as u32) {
                        Some("variable") => {
                            let name = cx.text(child);
                            if !is_private_name(&name) {
                                self.problem(format!(
                                    "`for` sets the shell variable `{name}`; only lower-case \
                                     names can be checked"
                                ));
                            }
                            text = format!("for {name} in");
                        }
                        Some("value") => {
                            words.push(self.word(child, cx));
                            text.push(' ');
                            text.push_str(&cx.text(child));
                            self.word_parts(child, cx, depth + 1);
                        }
                        _ if child.is_named() => self.walk(child, cx, depth + 1),
                        _ => {}
                    }
                }
                let argv = words.iter().map(|w| w.value.clone()).collect();
                let args = words.into_iter().map(|w| w.arg).collect();
                let cwds = self.cwds.clone().unwrap_or_default();
                self.params.insert(
                    mark,
                    Param {
                        text,
                        kind: ParamKind::Command { argv, args, cwds },
                    },
                );
            }
            "c_style_for_statement" => {
                let mut cursor = node.walk();
                for (i, child) in node.children(&mut cursor).enumerate() {
                    match node.field_name_for_child(i as u32) {
                        Some("body") => self.walk(child, cx, depth + 1),
                        _ if child.kind() == "do_group" || child.kind() == "compound_statement" => {
                            self.walk(child, cx, depth + 1)
                        }
                        _ if child.is_named() => self.arith(child, cx, depth + 1),
                        _ => {}
                    }
                }
            }
            // Patterns of `case` and the name of a function are words; the rest statements.
            "case_statement" | "case_item" => self.words_then_statements(node, "value", cx, depth),
            "function_definition" => self.words_then_statements(node, "name", cx, depth),
            "test_command" => {
                let double = node.child(0).is_some_and(|c| c.kind() == "[[");
                let mut cursor = node.walk();
                for child in node.named_children(&mut cursor) {
                    self.test_expr(child, double, cx, depth + 1);
                }
            }
            _ => self.unsupported(&format!("`{}`", node.kind()), node, cx),
        }
    }

    /// The children in field `words` are words, every other named child a statement.
    fn words_then_statements(&mut self, node: Node, words: &str, cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            if node.field_name_for_child(i as u32) == Some(words) {
                self.word_parts(child, cx, depth + 1);
            } else if child.is_named() {
                self.walk(child, cx, depth + 1);
            }
        }
    }

    fn walk_children(&mut self, node: Node, cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            if child.is_named() || child.is_missing() {
                self.walk(child, cx, depth + 1);
            }
        }
    }

    /// `a && b`, `a || b`: a `cd` on the left of `&&` is certain on the right. `tail`: the
    /// redirects tree-sitter put after the whole list, which bash gives to its last command.
    fn list(&mut self, node: Node, tail: &[Node], cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        let children: Vec<Node> = node.children(&mut cursor).collect();
        let and = children.iter().any(|c| c.kind() == "&&");
        let named: Vec<Node> = children
            .iter()
            .copied()
            .filter(|c| c.is_named() || c.is_missing())
            .collect();
        let before = self.cwds.clone();
        for (i, child) in named.iter().enumerate() {
            self.last_cd = None;
            self.walk(*child, cx, depth + 1);
            if and && i == 0 && child.kind() == "command" {
                if let Some(after) = self.last_cd.take() {
                    self.cwds = after;
                }
            }
        }
        for r in tail {
            let mut parts = RedirectParts::default();
            self.redirect_into(*r, cx, depth + 1, &mut parts);
        }
        if and && named.first().is_some_and(|c| c.kind() == "command") {
            // The left side may have failed: both the old and the new directory are possible.
            let now = self.cwds.take();
            self.cwds = union(before, now);
        }
    }

    /// A node in word position (command name, argument, value, pattern, operand).
    fn word_parts(&mut self, node: Node, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        match node.kind() {
            "word" | "extglob_pattern" | "regex" | "string_content" | "heredoc_content" => {
                self.leaf(node, cx)
            }
            "raw_string"
            | "ansi_c_string"
            | "variable_name"
            | "special_variable_name"
            | "file_descriptor"
            | "brace_expression"
            | "simple_expansion" => {}
            "number" => self.word_children(node, cx, depth),
            "string" | "translated_string" | "concatenation" | "array" | "command_name" => {
                self.scan_gaps(node, cx);
                self.word_children(node, cx, depth);
            }
            "expansion" => self.expansion(node, cx, depth),
            "command_substitution" | "process_substitution" => {
                // Runs in a subshell: its `cd` changes nothing outside.
                let saved = self.cwds.clone();
                self.walk_children(node, cx, depth);
                self.cwds = saved;
            }
            "arithmetic_expansion" => self.arith_children(node, cx, depth),
            "subscript" => self.subscript(node, false, cx, depth),
            _ => self.unsupported(&format!("`{}` in a word", node.kind()), node, cx),
        }
    }

    fn word_children(&mut self, node: Node, cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            if child.is_named() || child.is_missing() {
                self.word_parts(child, cx, depth + 1);
            }
        }
    }

    /// Leaf text must not hold a substitution the grammar did not make a node of.
    fn leaf(&mut self, node: Node, cx: Cx) {
        let text = cx.text(node);
        if let Some(what) = hidden_expansion(&text) {
            self.unsupported(&format!("{what} the parser did not recognise"), node, cx);
        }
    }

    /// Text between the children of a word-like node (string quotes, operators) is checked like
    /// a leaf.
    fn scan_gaps(&mut self, node: Node, cx: Cx) {
        if node.child_count() == 0 {
            // A heredoc body without any expansion node: all of it is text.
            self.leaf(node, cx);
            return;
        }
        for (_, gap) in uncovered(node, cx) {
            if let Some(what) = hidden_expansion(&gap) {
                self.problem(format!(
                    "{what} the parser did not recognise is not supported: `{gap}`"
                ));
            }
        }
    }

    /// `${…}`: the subject, then an operator from [`EXPANSION_OPERATORS`] and its operands.
    fn expansion(&mut self, node: Node, cx: Cx, depth: usize) {
        let text = cx.text(node);
        if let Some(rest) = text.strip_prefix("${!") {
            // `${!arr[@]}` lists keys and `${!pre*}` names: no value is read. Anything else is
            // indirect (it can read any variable, the hook secret included).
            let listing = ["[@]}", "[*]}", "*}", "@}"]
                .iter()
                .any(|e| rest.ends_with(e));
            let plain = rest
                .trim_end_matches(['}', '@', '*', ']', '['])
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !(listing && plain) {
                self.problem(format!("indirect expansion `{text}` is not supported"));
                return;
            }
        }
        self.scan_gaps(node, cx);
        let mut op: Option<String> = None;
        let mut transform = false;
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            if !child.is_named() && !child.is_missing() {
                let token = child.kind();
                if transform {
                    transform = false;
                    if !SAFE_TRANSFORMS.contains(&token) {
                        self.problem(format!(
                            "the transformation `@{token}` in `{text}` is not supported"
                        ));
                    }
                    continue;
                }
                match token {
                    "${" | "}" => {}
                    "!" | "#" if i == 1 => {}
                    "@" if op.is_none() => {
                        op = Some("@".to_string());
                        transform = true;
                    }
                    t if EXPANSION_OPERATORS.contains(&t) => {
                        if op.is_none() {
                            op = Some(t.to_string());
                            let subject =
                                node.named_child(0).map(|n| cx.text(n)).unwrap_or_default();
                            if matches!(t, ":=" | "=") && !is_private_name(&subject) {
                                self.problem(format!(
                                    "`{text}` sets the shell variable `{subject}`; only \
                                     lower-case names can be checked"
                                ));
                            }
                        }
                    }
                    t => {
                        self.problem(format!("the operator `{t}` in `{text}` is not supported"));
                    }
                }
                continue;
            }
            match op.as_deref() {
                None => match child.kind() {
                    "variable_name" | "special_variable_name" => {}
                    "subscript" => self.subscript(child, false, cx, depth + 1),
                    _ => self.unsupported("this `${…}` subject", child, cx),
                },
                // `${x:offset:length}`: both are arithmetic.
                Some(":") => self.arith(child, cx, depth + 1),
                // Inside `"${x:-'…'}"` single quotes are literal characters, and what they
                // hold is expanded: scanned like any leaf.
                Some(_) if child.kind() == "raw_string" => self.leaf(child, cx),
                Some(_) => self.word_parts(child, cx, depth + 1),
            }
        }
        if transform {
            self.problem(format!("`{text}` is not supported"));
        }
    }

    /// `name[index]`: the index of an indexed array is arithmetic (`@`, `*` are not).
    /// `in_arith`: the element's value is evaluated too.
    fn subscript(&mut self, node: Node, in_arith: bool, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        if in_arith {
            if let Some(name) = node.child_by_field_name("name") {
                self.scope.arith_refs.push(cx.text(name));
            }
        }
        if let Some(index) = node.child_by_field_name("index") {
            let t = cx.text(index);
            if !(t == "@" || t == "*") {
                self.arith(index, cx, depth + 1);
            }
        }
    }

    fn arith_children(&mut self, node: Node, cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        for child in node.named_children(&mut cursor) {
            self.arith(child, cx, depth + 1);
        }
    }

    /// A node bash evaluates as arithmetic. The values of variables are evaluated again, so a
    /// variable must hold a number the script itself sets (see [`Scope::is_numeric`]).
    fn arith(&mut self, node: Node, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        let text = cx.text(node);
        match node.kind() {
            "number" if node.named_child_count() == 0 => {}
            "variable_name" => self.scope.arith_refs.push(text),
            "word" if is_number(&text) => {}
            "word" if is_identifier(&text) => self.scope.arith_refs.push(text),
            "simple_expansion" | "expansion" => match plain_expansion_name(node, cx) {
                Some(name) if matches!(name.as_str(), "#" | "?" | "$" | "!") => {}
                Some(name) if is_identifier(&name) => self.scope.arith_refs.push(name),
                _ => self.unsupported("this expansion in arithmetic", node, cx),
            },
            "binary_expression" => {
                let op = node
                    .child_by_field_name("operator")
                    .map(|o| cx.text(o))
                    .unwrap_or_default();
                let mut cursor = node.walk();
                for (i, child) in node.children(&mut cursor).enumerate() {
                    if !child.is_named() {
                        continue;
                    }
                    let assigned = op == "="
                        && node.field_name_for_child(i as u32) == Some("left")
                        && matches!(child.kind(), "variable_name" | "word")
                        && is_identifier(&cx.text(child));
                    if !assigned {
                        self.arith(child, cx, depth + 1);
                    }
                }
            }
            "unary_expression"
            | "postfix_expression"
            | "ternary_expression"
            | "parenthesized_expression" => self.arith_children(node, cx, depth),
            "variable_assignment" => {
                if let Some(value) = node.child_by_field_name("value") {
                    self.arith(value, cx, depth + 1);
                }
            }
            "subscript" => self.subscript(node, true, cx, depth),
            "comment" => {}
            _ => self.unsupported("this in arithmetic", node, cx),
        }
    }

    /// An operand of `[[ … -eq … ]]`: a number, or a variable holding one.
    fn arith_operand(&mut self, node: Node, cx: Cx, depth: usize) {
        let text = cx.text(node);
        match node.kind() {
            "string" => {
                let mut cursor = node.walk();
                let named: Vec<Node> = node.named_children(&mut cursor).collect();
                match named.as_slice() {
                    [only] if matches!(only.kind(), "simple_expansion" | "expansion") => {
                        self.arith(*only, cx, depth + 1)
                    }
                    [only] if only.kind() == "string_content" && is_number(&cx.text(*only)) => {}
                    _ => self.unsupported("this arithmetic operand", node, cx),
                }
            }
            "raw_string" if is_number(strip_quotes(&text, 1)) => {}
            "number" | "word" | "variable_name" | "simple_expansion" | "expansion" => {
                self.arith(node, cx, depth)
            }
            _ => self.unsupported("this arithmetic operand", node, cx),
        }
    }

    /// Inside `[ … ]` (`double` false) or `[[ … ]]`.
    fn test_expr(&mut self, node: Node, double: bool, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        match node.kind() {
            "binary_expression" => {
                let op = node
                    .child_by_field_name("operator")
                    .map(|o| cx.text(o))
                    .unwrap_or_default();
                let logical = matches!(op.as_str(), "&&" | "||" | "-a" | "-o");
                let arith = double && ARITH_TEST_OPS.contains(&op.as_str());
                let mut cursor = node.walk();
                for (i, child) in node.children(&mut cursor).enumerate() {
                    if !child.is_named() || node.field_name_for_child(i as u32) == Some("operator")
                    {
                        continue;
                    }
                    if arith {
                        self.arith_operand(child, cx, depth + 1);
                    } else if logical {
                        self.test_expr(child, double, cx, depth + 1);
                    } else {
                        self.test_operand(child, double, cx, depth + 1);
                    }
                }
            }
            "unary_expression" => {
                let op = node
                    .child_by_field_name("operator")
                    .map(|o| cx.text(o))
                    .unwrap_or_default();
                let mut cursor = node.walk();
                for (i, child) in node.children(&mut cursor).enumerate() {
                    if !child.is_named() || node.field_name_for_child(i as u32) == Some("operator")
                    {
                        continue;
                    }
                    match op.as_str() {
                        "!" => self.test_expr(child, double, cx, depth + 1),
                        "-v" | "-R" => {
                            let name = static_value(child, cx);
                            if !name.as_deref().is_some_and(is_identifier) {
                                self.problem(format!(
                                    "`{op}` evaluates `{}` as a variable name; only a plain \
                                     name is supported",
                                    cx.text(child)
                                ));
                            }
                        }
                        _ => self.test_operand(child, double, cx, depth + 1),
                    }
                }
            }
            "parenthesized_expression" => {
                let mut cursor = node.walk();
                for child in node.named_children(&mut cursor) {
                    self.test_expr(child, double, cx, depth + 1);
                }
            }
            "test_operator" => {}
            // `[ a < b ]`: `<` is a redirect there.
            "redirected_statement" if !double => self.walk(node, cx, depth),
            _ => self.word_parts(node, cx, depth),
        }
    }

    fn test_operand(&mut self, node: Node, double: bool, cx: Cx, depth: usize) {
        match node.kind() {
            "binary_expression" | "unary_expression" | "parenthesized_expression" => {
                self.test_expr(node, double, cx, depth)
            }
            _ => self.word_parts(node, cx, depth),
        }
    }

    /// Bare assignments (`x=1`, `PATH=…`): lower-case names need no rule (module comment).
    fn assignments(&mut self, node: Node, cx: Cx, depth: usize) {
        let single = [node];
        let mut cursor = node.walk();
        let list: Vec<Node> = if node.kind() == "variable_assignment" {
            single.to_vec()
        } else {
            node.named_children(&mut cursor).collect()
        };
        let needs_rule = list.iter().any(|a| {
            let name = a
                .child_by_field_name("name")
                .map(|n| cx.text(n))
                .unwrap_or_default();
            !is_private_name(&name)
        });
        if needs_rule {
            self.push(cx.text(node), ParamKind::Other);
        }
        for a in list {
            self.assignment_parts(a, cx, depth + 1);
        }
    }

    /// The name (a subscript is arithmetic) and value of one assignment.
    fn assignment_parts(&mut self, node: Node, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        if node.kind() != "variable_assignment" {
            self.word_parts(node, cx, depth);
            return;
        }
        if let Some(name) = node.child_by_field_name("name") {
            if name.kind() == "subscript" {
                self.subscript(name, false, cx, depth + 1);
            }
        }
        if let Some(value) = node.child_by_field_name("value") {
            self.word_parts(value, cx, depth + 1);
        }
    }

    /// `export`/`declare`/`local`/`readonly`/`typeset`/`unset` and their operands.
    fn declaration(&mut self, node: Node, cx: Cx, depth: usize) {
        let mark = self.params.len();
        let argv = declaration_argv(node, cx);
        let keyword = argv.first().cloned().flatten().unwrap_or_default();
        let mut cursor = node.walk();
        for child in node.named_children(&mut cursor) {
            match child.kind() {
                "variable_assignment" => self.assignment_parts(child, cx, depth + 1),
                "variable_name" => {}
                _ => {
                    let value = static_value(child, cx);
                    match value.as_deref() {
                        // `declare -i`: every later assignment is evaluated as arithmetic;
                        // `-n`: a name refers to another variable.
                        Some(flag)
                            if (flag.starts_with('-') || flag.starts_with('+'))
                                && keyword != "unset"
                                && keyword != "export"
                                && flag.contains(['i', 'n']) =>
                        {
                            self.problem(format!("`{keyword} {flag}` is not supported"));
                        }
                        Some(v) if v.contains('[') => self.problem(format!(
                            "`{keyword}` evaluates the subscript in `{}`",
                            cx.text(child)
                        )),
                        None => self.problem(format!(
                            "`{keyword}` operand `{}` is only known at run time",
                            cx.text(child)
                        )),
                        Some(_) => {}
                    }
                    self.word_parts(child, cx, depth + 1);
                }
            }
        }
        let args = argv
            .iter()
            .map(|v| match v {
                Some(v) => Arg::Static(v.clone()),
                None => Arg::Dynamic(String::new()),
            })
            .collect();
        let cwds = self.cwds.clone().unwrap_or_default();
        self.push(cx.text(node), ParamKind::Command { argv, args, cwds });
        self.params[mark..].rotate_right(1);
    }

    fn redirected_statement(&mut self, node: Node, cx: Cx, depth: usize) {
        let body = node.child_by_field_name("body");
        let mut redirects = Vec::new();
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            if Some(child) != body && (child.is_named() || child.is_missing()) {
                redirects.push(child);
            }
        }
        // tree-sitter-bash 0.25 drops a lone `-` before a heredoc (`python3 - <<'EOF'`) from
        // the tree; put it back as an argument. Any other skipped text is refused.
        let mut dash_arg = false;
        for (at, gap) in uncovered(node, cx) {
            let before_heredoc = body.is_some_and(|b| b.kind() == "command" && at >= b.end_byte())
                && redirects
                    .first()
                    .is_some_and(|r| r.kind() == "heredoc_redirect" && at <= r.start_byte());
            if gap == "-" && before_heredoc && !dash_arg {
                dash_arg = true;
            } else {
                self.problem(format!("text the parser skipped: `{gap}`"));
            }
        }
        match body {
            Some(body) if body.kind() == "command" => {
                self.command(body, &redirects, dash_arg, cx, depth)
            }
            Some(body)
                if body.kind() == "list"
                    && redirects.iter().all(|r| r.kind() == "file_redirect") =>
            {
                if self.enter(body, cx, depth + 1) {
                    self.list(body, &redirects, cx, depth + 1);
                }
            }
            _ => {
                if let Some(body) = body {
                    self.walk(body, cx, depth + 1);
                }
                for r in redirects {
                    match r.kind() {
                        "file_redirect" | "heredoc_redirect" | "herestring_redirect" => {
                            let mut parts = RedirectParts::default();
                            self.redirect_into(r, cx, depth + 1, &mut parts);
                        }
                        _ => self.walk(r, cx, depth + 1),
                    }
                }
            }
        }
    }

    /// A simple command with the redirects that tree-sitter put beside it (`outer`).
    fn command(&mut self, node: Node, outer: &[Node], dash_arg: bool, cx: Cx, depth: usize) {
        if !self.enter(node, cx, depth) {
            return;
        }
        let mut c = node.walk();
        self.env_prefix = node
            .children(&mut c)
            .any(|ch| ch.kind() == "variable_assignment");
        // Parameters of nested parts are found first; the command itself is moved before them.
        let mark = self.params.len();
        let mut argv: Vec<Word> = Vec::new();
        let mut name_problem = None;
        let mut parts = RedirectParts::default();
        // The command's own text without its file redirects, which become separate parameters.
        let mut text = String::new();
        let mut last_end = node.start_byte();
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            let field = node.field_name_for_child(i as u32);
            match child.kind() {
                "file_redirect" => {
                    text.push_str(cx.slice(last_end, child.start_byte()).trim_end());
                    last_end = child.end_byte();
                    self.redirect_into(child, cx, depth, &mut parts);
                    continue;
                }
                "herestring_redirect" | "heredoc_redirect" => {
                    // Already part of the command's text: only its commands and stdin matter.
                    let mut inner = RedirectParts::default();
                    self.redirect_into(child, cx, depth, &mut inner);
                    parts.stdin = inner.stdin;
                    parts.extra_args.extend(inner.extra_args);
                    continue;
                }
                _ => {}
            }
            match field {
                Some("name") => {
                    let word = self.word(child, cx);
                    if word.value.is_none() || word.pattern {
                        name_problem = Some(word.text.clone());
                    }
                    argv.push(word);
                    self.word_parts(child, cx, depth + 1);
                }
                Some("argument") => {
                    argv.push(self.word(child, cx));
                    self.word_parts(child, cx, depth + 1);
                }
                _ if child.kind() == "variable_assignment" => {
                    // An env prefix stays in the command's text; only look inside it.
                    self.assignment_parts(child, cx, depth + 1);
                }
                _ if child.is_named() || child.is_missing() => self.walk(child, cx, depth + 1),
                _ => {}
            }
        }
        let rest = cx.slice(last_end, node.end_byte());
        if !text.is_empty() && !rest.trim().is_empty() {
            text.push(' ');
            text.push_str(rest.trim_start());
        } else {
            text.push_str(&rest);
        }
        let mut text = text.trim().to_string();
        if dash_arg {
            parts.extra_args.push(Word {
                text: "-".to_string(),
                value: Some("-".to_string()),
                pattern: false,
                arg: Arg::Static("-".to_string()),
            });
        }
        for r in outer {
            if r.kind() == "file_redirect"
                || r.kind() == "heredoc_redirect"
                || r.kind() == "herestring_redirect"
            {
                self.redirect_into(*r, cx, depth, &mut parts);
            } else {
                self.walk(*r, cx, depth + 1);
            }
        }
        for extra in &parts.extra_args {
            text.push(' ');
            text.push_str(&extra.text);
        }
        for piece in &parts.text {
            text.push(' ');
            text.push_str(piece);
        }
        argv.extend(parts.extra_args);
        if let Some(name) = name_problem {
            self.problem(format!("command name `{name}` is not static text"));
        }
        let before = self.params.len();
        self.argv(text, &argv, parts.stdin, cx, 0);
        let own = self.params.len() - before;
        self.params[mark..].rotate_right(own);
    }

    /// Records a command given as words, then looks inside it for commands it runs.
    fn argv(
        &mut self,
        text: String,
        words: &[Word],
        stdin: Option<Option<String>>,
        cx: Cx,
        wrappers: usize,
    ) {
        let values: Vec<Option<String>> = words.iter().map(|w| w.value.clone()).collect();
        let args: Vec<Arg> = words.iter().map(|w| w.arg.clone()).collect();
        let cwds = self.cwds.clone().unwrap_or_default();
        self.push(
            text,
            ParamKind::Command {
                argv: values,
                args,
                cwds,
            },
        );
        let Some(first) = words.first() else { return };
        let Some(name) = first.value.as_deref() else {
            self.problem(format!("command name `{}` is not static text", first.text));
            return;
        };
        if first.pattern {
            self.problem(format!("command name `{}` is a pattern", first.text));
            return;
        }
        if wrappers > MAX_WRAPPERS {
            self.problem(format!("more than {MAX_WRAPPERS} wrapper commands"));
            return;
        }
        let base = basename(name);
        if DIR_CHANGERS.contains(&base) {
            self.change_dir(base, words);
        }
        self.variable_name_operands(base, words);
        if SHELLS.contains(&base) {
            self.shell(words, stdin, cx);
            return;
        }
        match base {
            "eval" => {
                let script = join_static(&words[1..]);
                let saved = self.cwds.clone();
                self.nested_script("eval", script, cx);
                // eval runs in this shell: a `cd` in it moves everything after.
                if self.cwds != saved || script_may_cd(&words[1..]) {
                    self.cwds = None;
                }
            }
            // `trap 'cmd' SIGNAL…` runs its first argument later, as a script.
            "trap" => {
                let start = skip_options(words, 1, &[]);
                let handler = words.get(start).filter(|_| words.len() > start + 1);
                if let Some(handler) = handler {
                    if handler.value.as_deref() != Some("-") {
                        self.nested_script("trap", handler.value.clone(), cx);
                    }
                }
            }
            "let" => self.problem(
                "`let` evaluates its arguments as arithmetic; `(( ))` can be checked".to_string(),
            ),
            "watch" => {
                // watch runs its arguments through `sh -c`, joined with spaces.
                let start = skip_options(words, 1, &["-n", "--interval", "-q", "--equexit"]);
                let script = join_static(&words[start.min(words.len())..]);
                self.nested_script("watch", script, cx);
            }
            "find" => {
                let mut i = 1;
                while i < words.len() {
                    let v = words[i].value.as_deref();
                    if matches!(v, Some("-exec" | "-execdir" | "-ok" | "-okdir")) {
                        let start = i + 1;
                        let mut end = start;
                        while end < words.len()
                            && !matches!(words[end].value.as_deref(), Some(";" | "+"))
                        {
                            end += 1;
                        }
                        if end > start {
                            let inner = &words[start..end];
                            self.argv(join_text(inner), inner, None, cx, wrappers + 1);
                        }
                        i = end;
                    }
                    i += 1;
                }
            }
            "env" => match env_inner(words) {
                Ok(Some(i)) => {
                    let inner = &words[i..];
                    self.argv(join_text(inner), inner, stdin, cx, wrappers + 1);
                }
                Ok(None) => {}
                Err(problem) => self.problem(problem),
            },
            _ => {
                if let Some(i) = wrapper_inner(base, words) {
                    let mut inner = words[i..].to_vec();
                    if base == "xargs" {
                        // xargs adds words read from its input: the guard must see that the
                        // command gets arguments nobody wrote (`echo ~/.x* | xargs cat`).
                        inner.push(Word {
                            text: String::new(),
                            value: None,
                            pattern: false,
                            arg: Arg::Dynamic(String::new()),
                        });
                    }
                    let text = join_text(&words[i..]);
                    self.argv(text, &inner, stdin, cx, wrappers + 1);
                }
            }
        }
    }

    /// `cd DIR`: where the following commands run (both directories stay possible: the `cd`
    /// may fail; see [`Analyser::list`] for `cd DIR && …`).
    fn change_dir(&mut self, base: &str, words: &[Word]) {
        let start = skip_options(words, 1, &[]);
        let target = match (base, &words[start.min(words.len())..]) {
            // `CDPATH=/proc cd self`: the prefix steers where it goes.
            _ if self.env_prefix => None,
            ("cd", [w]) => match &w.arg {
                Arg::Static(v) if v != "-" && !v.starts_with('~') && !v.is_empty() => {
                    // bash's `cd` is logical (`docs/..` is here even when `docs` is a
                    // link elsewhere), what the kernel then opens is physical: keep both.
                    let v = v.clone();
                    self.cwds.clone().map(|cwds| {
                        let mut out = Vec::new();
                        for c in &cwds {
                            for p in [paths::lexical(&v, c), self.resolve_in(&v, c)]
                                .into_iter()
                                .flatten()
                            {
                                if !out.contains(&p) {
                                    out.push(p);
                                }
                            }
                        }
                        out
                    })
                }
                _ => None,
            },
            _ => None,
        };
        self.last_cd = Some(target.clone());
        let before = self.cwds.take();
        self.cwds = union(before, target);
    }

    /// Operands that bash treats as variable names: a subscript in them is evaluated, and a
    /// name only known at run time could carry one.
    fn variable_name_operands(&mut self, base: &str, words: &[Word]) {
        let names: Vec<&Word> = match base {
            b if VARNAME_BUILTINS.contains(&b) => words[1..]
                .iter()
                .filter(|w| !w.value.as_deref().is_some_and(|v| v.starts_with('-')))
                .collect(),
            "printf" | "test" | "[" => {
                let flags: &[&str] = if base == "printf" {
                    &["-v"]
                } else {
                    &["-v", "-R"]
                };
                let mut out = Vec::new();
                for (i, w) in words.iter().enumerate().skip(1) {
                    if let Some(v) = w.value.as_deref() {
                        if flags.contains(&v) {
                            if let Some(next) = words.get(i + 1) {
                                out.push(next);
                            }
                        }
                        if base == "printf" && v.starts_with("-v") && v.len() > 2 {
                            out.push(w);
                        }
                    }
                }
                out
            }
            _ => return,
        };
        for w in &names {
            let v = w.value.as_deref().unwrap_or("");
            let name = v.split('[').next().unwrap_or(v);
            if base != "unset" && is_identifier(name) && !is_private_name(name) {
                // `read CDPATH`, `printf -v HOME …`: variables bash itself uses (CDPATH, HOME,
                // TMPDIR, PATH, IFS …) change what later commands do, with no assignment to see.
                self.problem(format!(
                    "`{base}` sets the shell variable `{name}`; only lower-case names can be \
                     checked"
                ));
            }
        }
        for w in names {
            match w.value.as_deref() {
                Some(v) if v.contains('[') => {
                    self.problem(format!("`{base}` evaluates the subscript in `{}`", w.text))
                }
                None => self.problem(format!(
                    "`{base}` takes a variable name, and `{}` is only known at run time",
                    w.text
                )),
                Some(_) => {}
            }
        }
    }

    /// `bash [options] -c SCRIPT`, `bash SCRIPT_FILE`, or `bash` reading a heredoc.
    fn shell(&mut self, words: &[Word], stdin: Option<Option<String>>, cx: Cx) {
        let mut i = 1;
        let mut dash_c = false;
        while i < words.len() {
            let Some(v) = words[i].value.as_deref() else {
                self.problem(format!(
                    "shell argument `{}` is only known at run time",
                    words[i].text
                ));
                return;
            };
            if v == "--" || v == "-" {
                i += 1;
                break;
            }
            if v.starts_with("--") {
                i += if matches!(v, "--rcfile" | "--init-file") {
                    2
                } else {
                    1
                };
                continue;
            }
            if (v.starts_with('-') || v.starts_with('+')) && v.len() > 1 {
                if v.starts_with('-') && v.contains('c') {
                    dash_c = true;
                }
                i += if v.contains('o') || v.contains('O') {
                    2
                } else {
                    1
                };
                continue;
            }
            break;
        }
        // A new process: a `cd` in it changes nothing here.
        let saved = self.cwds.clone();
        if dash_c {
            match words.get(i) {
                Some(w) => self.nested_script("shell -c", w.value.clone(), cx),
                None => self.problem("shell `-c` without a command string".to_string()),
            }
        } else if i >= words.len() {
            // No script file: the shell runs whatever comes on stdin.
            if let Some(script) = stdin {
                self.nested_script("shell stdin", script, cx);
            }
        }
        self.cwds = saved;
    }

    fn nested_script(&mut self, what: &str, script: Option<String>, cx: Cx) {
        match script {
            Some(script) => self.script(&script, cx.shell_depth + 1, self.depth + 1),
            None => self.problem(format!("{what} string is only known at run time")),
        }
    }

    fn redirect_into(&mut self, node: Node, cx: Cx, depth: usize, parts: &mut RedirectParts) {
        if !self.enter(node, cx, depth) {
            return;
        }
        match node.kind() {
            "file_redirect" => self.file_redirect(node, cx, depth, parts),
            "herestring_redirect" => {
                let mut cursor = node.walk();
                for child in node.named_children(&mut cursor) {
                    if child.kind() != "file_descriptor" {
                        self.word_parts(child, cx, depth + 1);
                    }
                }
                parts.text.push(cx.text(node));
                let mut cursor = node.walk();
                let value = node
                    .named_children(&mut cursor)
                    .find(|c| c.kind() != "file_descriptor")
                    .and_then(|c| static_value(c, cx));
                parts.stdin = Some(value);
            }
            "heredoc_redirect" => self.heredoc(node, cx, depth, parts),
            _ => self.walk(node, cx, depth + 1),
        }
    }

    fn file_redirect(&mut self, node: Node, cx: Cx, depth: usize, parts: &mut RedirectParts) {
        let mut operator = String::new();
        let mut destinations = Vec::new();
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            if node.field_name_for_child(i as u32) == Some("destination") {
                destinations.push(child);
            } else if !child.is_named() {
                operator.push_str(child.kind());
            }
            if child.is_named() || child.is_missing() {
                self.word_parts(child, cx, depth + 1);
            }
        }
        let Some((target, extra)) = destinations.split_first() else {
            return;
        };
        parts
            .extra_args
            .extend(extra.iter().map(|d| self.word(*d, cx)));
        let write = match operator.as_str() {
            "<" => false,
            ">&" | "<&" | ">&-" | "<&-" if target.kind() == "number" || cx.text(*target) == "-" => {
                // Duplicating or closing a file descriptor opens nothing.
                return;
            }
            "<&" => false,
            _ => true,
        };
        if target.kind() == "process_substitution" {
            // `done < <(find …)`: a pipe, not a file; its commands were walked above.
            return;
        }
        let target = self.word(*target, cx);
        let access = if write { "write" } else { "read" };
        let value = match &target.arg {
            Arg::Static(v) if !v.starts_with('~') => v.clone(),
            _ => {
                self.problem(format!(
                    "{access} redirect target `{}` is only known at run time",
                    target.text
                ));
                // Still a parameter, as written, so the guard sees what it names.
                self.push(format!("{access}:{}", target.text), ParamKind::Other);
                return;
            }
        };
        if HARMLESS_TARGETS.contains(&value.as_str()) {
            return;
        }
        let targets: Vec<PathBuf> = if Path::new(&value).is_absolute() {
            paths::normalize(&value, Path::new("/"))
                .into_iter()
                .collect()
        } else {
            match self.cwds.clone() {
                Some(cwds) => cwds
                    .iter()
                    .filter_map(|c| self.resolve_in(&value, c))
                    .collect(),
                None => Vec::new(),
            }
        };
        if targets.is_empty() {
            self.problem(format!(
                "relative redirect target `{value}` where the working directory is not known"
            ));
            return;
        }
        for path in targets {
            let text = format!("{access}:{}", path.display());
            self.push(text, ParamKind::Redirect { path, write });
        }
    }

    /// `path` resolved against `cwd`, cached (loops and repeated redirects are common).
    fn resolve_in(&mut self, path: &str, cwd: &Path) -> Option<PathBuf> {
        let key = (path.to_string(), cwd.to_path_buf());
        if let Some(cached) = self.normalized.get(&key) {
            return cached.clone();
        }
        let resolved = paths::normalize(path, cwd);
        self.normalized.insert(key, resolved.clone());
        resolved
    }

    fn heredoc(&mut self, node: Node, cx: Cx, depth: usize, parts: &mut RedirectParts) {
        let mut start = String::new();
        // The source from `<<` to the end of the delimiter, spacing kept (`<< 'EOF'`).
        let mut header = String::from("<<");
        let mut body_node = None;
        let mut end = String::new();
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            let field = node.field_name_for_child(i as u32);
            match (child.kind(), field) {
                ("heredoc_start", _) => {
                    start = cx.text(child);
                    header = cx.slice(node.start_byte(), child.end_byte());
                }
                ("heredoc_body", _) => body_node = Some(child),
                ("heredoc_end", _) => end = cx.text(child),
                ("file_redirect", _) => self.file_redirect(child, cx, depth, parts),
                (_, Some("argument")) => {
                    parts.extra_args.push(self.word(child, cx));
                    self.word_parts(child, cx, depth + 1);
                }
                _ => {
                    // `right` of `&&`/`||` and `| next` on the heredoc's line: more statements.
                    if child.is_named() || child.is_missing() {
                        self.walk(child, cx, depth + 1);
                    }
                }
            }
        }
        // A quoted delimiter turns expansion off: the body is literal.
        let quoted = start.contains(['\'', '"', '\\']);
        let body = body_node.map(|b| cx.text(b)).unwrap_or_default();
        let mut body_is_static = true;
        if let (Some(b), false) = (body_node, quoted) {
            // Unquoted: the body is expanded like a double-quoted string.
            self.scan_gaps(b, cx);
            let mut c = b.walk();
            for child in b.named_children(&mut c) {
                if child.kind() != "heredoc_content" {
                    body_is_static = false;
                }
                self.word_parts(child, cx, depth + 1);
            }
        }
        parts.text.push(format!("{header}\n{body}{end}"));
        parts.stdin = Some((quoted || body_is_static).then_some(body));
    }

    /// A command word with its static value (if any) and what the guard sees of it.
    fn word(&self, node: Node, cx: Cx) -> Word {
        let node = if node.kind() == "command_name" {
            node.named_child(0).unwrap_or(node)
        } else {
            node
        };
        let value = static_value(node, cx);
        let pattern = is_pattern(node, cx);
        let arg = match (&value, pattern) {
            // `<(cmd)` becomes a pipe's `/dev/fd/N`: no path of the agent's (its commands are
            // parameters of their own).
            _ if node.kind() == "process_substitution" => Arg::Static(String::new()),
            (Some(v), false) => Arg::Static(v.clone()),
            (Some(v), true) => {
                let cut = v.find(['*', '?', '[', '{']).unwrap_or(v.len());
                if v[cut..].split('/').any(|c| c == "..") {
                    // `~/*/../.agent*`: after climbing back, a leading dot is spelled again,
                    // so the pattern is judged like a run-time value.
                    Arg::Dynamic(v[..cut].to_string())
                } else {
                    Arg::Pattern(v[..cut].to_string())
                }
            }
            (None, _) => match plain_expansion_name(node, cx).and_then(|n| self.scope.arg_of(&n)) {
                Some(arg) => arg,
                None => Arg::Dynamic(static_prefix(node, cx)),
            },
        };
        Word {
            text: cx.text(node),
            value,
            pattern,
            arg,
        }
    }
}

/// Both sets of possible directories (`None`: unknown); unknown once there are too many.
fn union(a: Option<Vec<PathBuf>>, b: Option<Vec<PathBuf>>) -> Option<Vec<PathBuf>> {
    let (mut a, b) = (a?, b?);
    for p in b {
        if !a.contains(&p) {
            a.push(p);
        }
    }
    (a.len() <= MAX_CWDS).then_some(a)
}

/// `eval` words that could change directory (checked on the text: the string is parsed later).
fn script_may_cd(words: &[Word]) -> bool {
    words.iter().any(|w| {
        let t = w.value.as_deref().unwrap_or(&w.text);
        DIR_CHANGERS.iter().any(|c| t.contains(c))
    })
}

/// Collects what a script does to its variables (see [`Scope`]). Does not enter nested shell
/// strings: they are scripts of their own.
fn prescan(scope: &mut Scope, node: Node, cx: Cx, depth: usize, in_body: bool) {
    if depth > MAX_NODE_DEPTH {
        return;
    }
    match node.kind() {
        "variable_assignment" => {
            if let Some(name) = node.child_by_field_name("name") {
                let appends = {
                    let mut c = node.walk();
                    let found = node.children(&mut c).any(|ch| ch.kind() == "+=");
                    found
                };
                if name.kind() == "variable_name" {
                    let value = match node.child_by_field_name("value") {
                        Some(v) => static_value(v, cx),
                        None => Some(String::new()),
                    };
                    let info = match value {
                        Some(v) if !appends && !is_pattern_opt(node, cx) => VarInfo::Static(v),
                        _ => VarInfo::Unknown,
                    };
                    scope.record(&cx.text(name), info);
                } else if let Some(array) = name.child_by_field_name("name") {
                    scope.record(&cx.text(array), VarInfo::Unknown);
                }
            }
        }
        "for_statement" => {
            if let Some(var) = node.child_by_field_name("variable") {
                let mut words = Vec::new();
                let mut known = true;
                let mut c = node.walk();
                for (i, child) in node.children(&mut c).enumerate() {
                    if node.field_name_for_child(i as u32) != Some("value") {
                        continue;
                    }
                    match static_value(child, cx) {
                        Some(v) if is_pattern(child, cx) => {
                            let cut = v.find(['*', '?', '[', '{']).unwrap_or(v.len());
                            words.push(Arg::Pattern(v[..cut].to_string()));
                        }
                        Some(v) => words.push(Arg::Static(v)),
                        None => known = false,
                    }
                }
                let info = if known && !words.is_empty() {
                    VarInfo::Words(words)
                } else {
                    VarInfo::Unknown
                };
                scope.record(&cx.text(var), info);
            }
        }
        "binary_expression" | "postfix_expression" | "unary_expression" => {
            // Arithmetic assignment (`(( i = 0 ))`, `i++`): the result is a number.
            let mut c = node.walk();
            let assigns = node.children(&mut c).any(|ch| {
                !ch.is_named()
                    && matches!(
                        ch.kind(),
                        "=" | "+="
                            | "-="
                            | "*="
                            | "/="
                            | "%="
                            | "<<="
                            | ">>="
                            | "&="
                            | "^="
                            | "|="
                            | "++"
                            | "--"
                    )
            });
            if assigns {
                let target = node
                    .child_by_field_name("left")
                    .or_else(|| node.named_child(0));
                if let Some(t) = target {
                    if matches!(t.kind(), "variable_name" | "word") && is_identifier(&cx.text(t)) {
                        scope.record(&cx.text(t), VarInfo::Numeric);
                    }
                }
            }
        }
        "declaration_command" | "unset_command" => {
            let mut c = node.walk();
            for child in node.named_children(&mut c) {
                if child.kind() != "variable_assignment" {
                    match static_value(child, cx) {
                        Some(v) if is_identifier(&v) => scope.record(&v, VarInfo::Unknown),
                        Some(_) => {}
                        None => scope.taint_all = true,
                    }
                }
            }
        }
        "function_definition" => scope.has_function = true,
        "command" => {
            let mut c = node.walk();
            let words: Vec<Option<String>> = node
                .children(&mut c)
                .enumerate()
                .filter(|(i, _)| {
                    matches!(
                        node.field_name_for_child(*i as u32),
                        Some("name") | Some("argument")
                    )
                })
                .map(|(_, w)| static_value(w, cx))
                .collect();
            let mut at = 0;
            while matches!(
                words.get(at).cloned().flatten().as_deref(),
                Some("builtin" | "command")
            ) {
                at += 1;
            }
            match words.get(at).cloned().flatten().as_deref().map(basename) {
                Some(b) if DIR_CHANGERS.contains(&b) => {
                    scope.has_cd = true;
                    if in_body {
                        scope.cd_unfollowable = true;
                    }
                }
                Some(b) if CURRENT_SHELL_RUNNERS.contains(&b) => scope.taint_all = true,
                Some(b)
                    if VARNAME_BUILTINS.contains(&b)
                        || matches!(b, "printf" | "declare" | "typeset" | "local") =>
                {
                    if b == "read" || b == "getopts" {
                        scope.record("REPLY", VarInfo::Unknown);
                        scope.record("OPTARG", VarInfo::Unknown);
                    }
                    for w in &words[at + 1..] {
                        match w.as_deref() {
                            Some(v) => {
                                let name = v.split(['=', '[']).next().unwrap_or("");
                                if is_identifier(name) {
                                    scope.record(name, VarInfo::Unknown);
                                }
                            }
                            None => scope.taint_all = true,
                        }
                    }
                }
                Some(_) => {}
                None => scope.taint_all = true,
            }
        }
        _ => {}
    }
    let in_body = in_body
        || matches!(
            node.kind(),
            "for_statement" | "c_style_for_statement" | "while_statement" | "function_definition"
        );
    let mut cursor = node.walk();
    for child in node.named_children(&mut cursor) {
        prescan(scope, child, cx, depth + 1, in_body);
    }
}

/// The value node of an assignment is a pattern (`x=*`): assignments do not expand globs, but
/// a later unquoted `$x` does, so the value is not one static word.
fn is_pattern_opt(assignment: Node, cx: Cx) -> bool {
    assignment
        .child_by_field_name("value")
        .is_some_and(|v| is_pattern(v, cx))
}

/// The name in `$name`, `${name}` or `"$name"` / `"${name}"`, when the word is only that.
fn plain_expansion_name(node: Node, cx: Cx) -> Option<String> {
    match node.kind() {
        "simple_expansion" => {
            let child = node.named_child(0)?;
            (node.named_child_count() == 1).then(|| cx.text(child))
        }
        "expansion" => {
            let text = cx.text(node);
            let name = text.strip_prefix("${")?.strip_suffix('}')?;
            (is_identifier(name) || matches!(name, "#" | "?" | "$" | "!")).then(|| name.to_string())
        }
        "string" => {
            if node.named_child_count() != 1 {
                return None;
            }
            let only = node.named_child(0)?;
            let text = cx.text(node);
            (text.len() == only.end_byte() - only.start_byte() + 2)
                .then(|| plain_expansion_name(only, cx))
                .flatten()
        }
        _ => None,
    }
}

/// The static text of a word before its first expansion (`/tmp/$x` → `/tmp/`).
fn static_prefix(node: Node, cx: Cx) -> String {
    match node.kind() {
        "concatenation" | "string" => {
            let mut out = String::new();
            let mut cursor = node.walk();
            for child in node.children(&mut cursor) {
                if !child.is_named() {
                    if child.kind() == "\"" {
                        continue;
                    }
                    out.push_str(&cx.text(child));
                    continue;
                }
                let piece = if child.kind() == "string_content" {
                    Some(unescape_double_quoted(&cx.text(child)))
                } else {
                    static_value(child, cx)
                };
                match piece {
                    Some(p) => out.push_str(&p),
                    None => {
                        out.push_str(&static_prefix(child, cx));
                        break;
                    }
                }
            }
            out
        }
        _ => String::new(),
    }
}

/// Where `\<newline>` joins two non-blank characters (a continuation inside a word).
fn continuation_inside_word(src: &str) -> Option<usize> {
    let b = src.as_bytes();
    (1..b.len().saturating_sub(2)).find(|&i| {
        b[i] == b'\\'
            && b[i + 1] == b'\n'
            && !b[i - 1].is_ascii_whitespace()
            && !b[i + 2].is_ascii_whitespace()
    })
}

/// A substitution or expansion left in leaf text: an unescaped backtick, or `$` followed by
/// something bash expands.
fn hidden_expansion(text: &str) -> Option<&'static str> {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '`' => return Some("a backtick"),
            '$' => match chars.peek() {
                Some(n)
                    if n.is_ascii_alphanumeric()
                        || matches!(
                            n,
                            '_' | '(' | '[' | '{' | '@' | '*' | '#' | '?' | '$' | '!' | '-'
                        ) =>
                {
                    return Some("an expansion")
                }
                _ => {}
            },
            _ => {}
        }
    }
    None
}

/// A decimal, hex (`0x1f`), octal or `base#digits` integer, optionally signed.
fn is_number(text: &str) -> bool {
    let t = text.trim();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    if t.is_empty() {
        return false;
    }
    if let Some((base, digits)) = t.split_once('#') {
        return !base.is_empty()
            && base.chars().all(|c| c.is_ascii_digit())
            && !digits.is_empty()
            && digits
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '@' || c == '_');
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    t.chars().all(|c| c.is_ascii_digit())
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A variable name that no other program reads: lower-case, and not a proxy setting
/// (`http_proxy`, `no_proxy` … are read by curl, git, pip).
fn is_private_name(name: &str) -> bool {
    is_identifier(name) && !name.chars().any(|c| c.is_ascii_uppercase()) && !name.ends_with("proxy")
}

/// Non-blank text between the children of `node` (and its start and end), with its offset.
fn uncovered(node: Node, cx: Cx) -> Vec<(usize, String)> {
    let mut gaps = Vec::new();
    let mut last = node.start_byte();
    let bytes = cx.src.as_bytes();
    let check = |from: usize, to: usize, gaps: &mut Vec<(usize, String)>| {
        let to = to.min(bytes.len());
        if to <= from {
            return;
        }
        // Fast path without allocating: blanks only.
        let blank = bytes[from..to].iter().all(|b| b.is_ascii_whitespace());
        if !blank {
            let gap = cx.slice(from, to).replace("\\\n", "");
            let gap = gap.trim();
            if !gap.is_empty() {
                gaps.push((from, gap.to_string()));
            }
        }
    };
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        check(last, child.start_byte(), &mut gaps);
        last = last.max(child.end_byte());
    }
    if node.child_count() > 0 {
        check(last, node.end_byte(), &mut gaps);
    }
    gaps
}

/// Unquoted glob (`*`, `?`, `[`) or brace (`{a,b}`, `{1..3}`) characters.
fn is_pattern(node: Node, cx: Cx) -> bool {
    match node.kind() {
        "word" => {
            let t = cx.text(node);
            let unescaped = t.chars().zip(std::iter::once(' ').chain(t.chars()));
            let mut glob = false;
            for (c, prev) in unescaped {
                if prev != '\\' && matches!(c, '*' | '?' | '[') {
                    glob = true;
                }
            }
            glob || (t.contains('{') && (t.contains(',') || t.contains("..")))
        }
        "brace_expression" | "extglob_pattern" => true,
        "concatenation" => {
            // tree-sitter splits `a{b,c}d` into the words `a`, `{`, `b,c`, `}`, `d`.
            let mut cursor = node.walk();
            let mut unquoted = String::new();
            let mut found = false;
            for c in node.named_children(&mut cursor) {
                found |= is_pattern(c, cx);
                if c.kind() == "word" {
                    unquoted.push_str(&cx.text(c));
                } else {
                    unquoted.push(' ');
                }
            }
            found
                || unquoted.find('{').is_some_and(|open| {
                    let after = &unquoted[open..];
                    after.contains('}') && (after.contains(',') || after.contains(".."))
                })
        }
        _ => false,
    }
}

/// The value of a word after quote removal, when it has no expansions.
fn static_value(node: Node, cx: Cx) -> Option<String> {
    let text = cx.text(node);
    match node.kind() {
        "word" => Some(unescape_unquoted(&text)),
        "number" if node.named_child_count() == 0 => Some(text),
        "raw_string" => Some(strip_quotes(&text, 1).to_string()),
        "string" => {
            let mut cursor = node.walk();
            let plain = node
                .named_children(&mut cursor)
                .all(|c| c.kind() == "string_content");
            plain.then(|| unescape_double_quoted(strip_quotes(&text, 1)))
        }
        "concatenation" => {
            let mut out = String::new();
            let mut cursor = node.walk();
            for child in node.children(&mut cursor) {
                if child.is_named() {
                    out.push_str(&static_value(child, cx)?);
                } else {
                    out.push_str(&cx.text(child));
                }
            }
            Some(out)
        }
        "command_name" => static_value(node.named_child(0)?, cx),
        "variable_assignment" => {
            let name = node.child_by_field_name("name")?;
            let value = match node.child_by_field_name("value") {
                Some(v) => static_value(v, cx)?,
                None => String::new(),
            };
            Some(format!("{}={value}", cx.text(name)))
        }
        "variable_name" => Some(text),
        _ => None,
    }
}

/// argv of `export`/`declare`/`local`/`readonly`/`typeset`/`unset`: keyword, then each operand.
fn declaration_argv(node: Node, cx: Cx) -> Vec<Option<String>> {
    let mut argv = Vec::new();
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        if child.is_named() {
            argv.push(static_value(child, cx));
        } else if argv.is_empty() {
            argv.push(Some(cx.text(child)));
        }
    }
    argv
}

fn strip_quotes(text: &str, n: usize) -> &str {
    if text.len() >= 2 * n {
        text.get(n..text.len() - n).unwrap_or("")
    } else {
        ""
    }
}

/// Backslash removal outside quotes (`\x` → `x`, `\<newline>` → nothing).
fn unescape_unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\n') => {}
                Some(n) => out.push(n),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Backslash removal inside double quotes: only before `$`, `` ` ``, `"`, `\` and newline.
fn unescape_double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('\n') => {
                    chars.next();
                }
                Some(&n) if matches!(n, '$' | '`' | '"' | '\\') => {
                    out.push(n);
                    chars.next();
                }
                _ => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last path component of a command name (`/usr/bin/env` → `env`).
pub(crate) fn basename(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn join_text(words: &[Word]) -> String {
    let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    texts.join(" ")
}

/// The words' static values joined with spaces (how `eval` and `watch` build their script).
fn join_static(words: &[Word]) -> Option<String> {
    let mut parts = Vec::with_capacity(words.len());
    for w in words {
        parts.push(w.value.as_deref()?);
    }
    Some(parts.join(" "))
}

/// Index of the first word after `from` that is not an option (or an option's argument).
fn skip_options(words: &[Word], from: usize, with_arg: &[&str]) -> usize {
    let mut i = from;
    while i < words.len() {
        let Some(v) = words[i].value.as_deref() else {
            return i;
        };
        if v == "--" {
            return i + 1;
        }
        if v.starts_with('-') && v.len() > 1 {
            i += if with_arg.contains(&v) { 2 } else { 1 };
            continue;
        }
        return i;
    }
    i
}

/// Where the command run by `env` starts; `Ok(None)` when `env` only prints the environment.
fn env_inner(words: &[Word]) -> Result<Option<usize>, String> {
    let mut i = 1;
    while i < words.len() {
        let Some(v) = words[i].value.as_deref() else {
            return Ok(Some(i));
        };
        if v == "--" {
            i += 1;
            break;
        }
        if v == "-S" || v.starts_with("--split-string") || (v.starts_with("-S") && v.len() > 2) {
            return Err("`env -S` splits a string at run time".to_string());
        }
        if v.starts_with('-') && v.len() > 1 {
            i += if matches!(v, "-u" | "--unset" | "-C" | "--chdir") {
                2
            } else {
                1
            };
            continue;
        }
        if v.contains('=') {
            i += 1;
            continue;
        }
        break;
    }
    Ok((i < words.len()).then_some(i))
}

/// Where the command run by a wrapper (`sudo`, `timeout`, `xargs`, …) starts.
fn wrapper_inner(base: &str, words: &[Word]) -> Option<usize> {
    // (options that take a separate argument, positional arguments before the command)
    let (with_arg, positionals): (&[&str], usize) = match base {
        "exec" => (&["-a"], 0),
        "command" | "builtin" | "nohup" | "setsid" | "time" | "unbuffer" | "coproc" => (&[], 0),
        "nice" => (&["-n", "--adjustment"], 0),
        "ionice" => (&["-c", "-n", "--class", "--classdata"], 0),
        "stdbuf" => (&["-i", "-o", "-e"], 0),
        "timeout" => (&["-s", "-k", "--signal", "--kill-after"], 1),
        "sudo" => (
            &[
                "-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "-R", "--user",
                "--group", "--host", "--prompt",
            ],
            0,
        ),
        "doas" => (&["-u", "-C"], 0),
        "xargs" => (
            &[
                "-a",
                "-d",
                "-E",
                "-I",
                "-L",
                "-n",
                "-P",
                "-s",
                "--arg-file",
                "--delimiter",
                "--max-args",
                "--max-procs",
                "--max-chars",
                "--max-lines",
            ],
            0,
        ),
        "chroot" => (&["--userspec", "--groups"], 1),
        _ => return None,
    };
    let start = skip_options(words, 1, with_arg) + positionals;
    (start < words.len()).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(script: &str) -> (Vec<String>, Vec<String>) {
        let a = analyse(script, Path::new("/project"));
        (a.params.into_iter().map(|p| p.text).collect(), a.problems)
    }

    #[test]
    fn splits_and_extracts_nested_commands() {
        let cases: &[(&str, &[&str])] = &[
            ("ls -la", &["ls -la"]),
            ("echo $(rm -rf /)", &["echo $(rm -rf /)", "rm -rf /"]),
            ("echo `id`", &["echo `id`", "id"]),
            ("diff <(ls a) >(wc)", &["diff <(ls a) >(wc)", "ls a", "wc"]),
            ("FOO=x cmd arg", &["FOO=x cmd arg"]),
            ("echo hi > /tmp/out", &["echo hi", "write:/tmp/out"]),
            ("echo > f hi", &["echo hi", "write:/project/f"]),
            (
                "sort < in.txt 2>/dev/null",
                &["sort", "read:/project/in.txt"],
            ),
            ("sudo rm -rf /", &["sudo rm -rf /", "rm -rf /"]),
            ("bash -c 'ls; id'", &["bash -c 'ls; id'", "ls", "id"]),
            ("eval 'rm x'", &["eval 'rm x'", "rm x"]),
            (
                "find . -name '*.o' -exec rm {} \\;",
                &["find . -name '*.o' -exec rm {} \\;", "rm {}"],
            ),
            ("X=1", &["X=1"]),
            ("ls; ls", &["ls"]),
        ];
        for (script, expect) in cases {
            let (params, problems) = texts(script);
            assert_eq!(&params, expect, "{script}");
            assert!(problems.is_empty(), "{script}: {problems:?}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_see() {
        for script in [
            "$CMD args",
            "echo x > $OUT",
            "bash -c \"rm $X\"",
            "eval \"$X\"",
            "echo ${!name}",
            "cd \"$d\" && echo x > passwd",
            "/bin/r? -rf /",
            "{rm,-rf,/}",
            "echo 'unterminated",
            "env -S 'rm -rf /'",
        ] {
            let (_, problems) = texts(script);
            assert!(!problems.is_empty(), "{script} should be unsupported");
        }
    }

    #[test]
    fn a_continuation_next_to_wide_characters_is_reported_not_a_panic() {
        // The backslash sits 3k + 3 bytes in: 20 bytes before it is inside a character.
        let (_, problems) = texts("中文中文中文中文中文中文中文 ab\\\nc");
        assert!(problems[0].contains("line continuation"), "{problems:?}");
    }

    #[test]
    fn worst_case_nesting_fits_a_small_stack() {
        // Every kind of nesting at once, on a stack a quarter of tokio's default worker size.
        let inner = format!("{}ls{}", "$(".repeat(60), ")".repeat(60));
        let script = format!(
            "{}{}",
            "eval bash -c ".repeat(MAX_SHELL_DEPTH + 2),
            inner.replace('$', "\\$")
        );
        let scripts = [
            format!("{}ls{}", "$( (".repeat(150), ") )".repeat(150)),
            format!("{}ls{}", "{ ".repeat(500), "; }".repeat(500)),
            script,
        ];
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                for s in scripts {
                    let _ = analyse(&s, Path::new("/project"));
                }
            })
            .unwrap()
            .join()
            .expect("analysis fits in 512 KiB of stack");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let script = format!("{}ls{}", "$(".repeat(400), ")".repeat(400));
        let (_, problems) = texts(&script);
        assert!(!problems.is_empty());
        let script = format!("{}ls", "eval ".repeat(MAX_SHELL_DEPTH + 3));
        let (params, problems) = texts(&script);
        assert!(problems[0].contains("nested"), "{problems:?}");
        assert!(params.len() > MAX_SHELL_DEPTH, "{params:?}");
    }
}
