//! Bash analysis with tree-sitter-bash: a script → every command it can run, as parameters.
//!
//! Owns: walking the syntax tree and producing one [`Param`] per simple command (wherever it
//! sits: lists, pipelines, subshells, `$(…)`, backticks, `<(…)`/`>(…)`, loops, conditionals,
//! `case`, function bodies, heredoc bodies), per redirect target (`write:<path>` /
//! `read:<path>`), per bare assignment or declaration, and per command run by another one
//! (`sudo …`, `env …`, `timeout …`, `xargs …`, `find -exec … ;`, `coproc …`, `bash -c '…'`,
//! `eval …`, `watch '…'`, `trap '…' SIG`, a shell fed a static heredoc or herestring). A command
//! that runs another yields both, so `find . -exec rm {} \;` needs a rule for `rm {}` too.
//! Test commands (`[ … ]`, `[[ … ]]`) and arithmetic are not parameters (they run nothing), but
//! substitutions inside them are.
//!
//! The parameter text of a command is its source text, with its env-prefix assignments
//! (`FOO=x cmd`), arguments as written (substitutions stay in the text *and* are extracted as
//! their own commands) and heredoc (`python3 <<'EOF'\n…\nEOF`) or herestring, but without
//! file redirects, which become their own parameters.
//!
//! Unsupported (reported as problems, so the decision is never Allow):
//! - syntax errors (ERROR or MISSING nodes), nesting deeper than [`MAX_NODE_DEPTH`], and
//!   source text that the grammar skipped (not covered by any node, so invisible to rules);
//!   the one known harmless case, the `-` in `python3 - <<'EOF'`, is put back as an argument;
//! - a command name that is not static text: `$CMD`, `${X}y`, `$(which rm)`, `$'rm'`, an
//!   unquoted glob (`/bin/r?`) or brace expansion (`{rm,-rf,/}`);
//! - a redirect target that is not static text (`> $OUT`, `> ~/x`, `> *.log`), or a relative
//!   target in a script that changes directory (`cd`, `pushd`, `popd`);
//! - `bash -c`/`eval`/`watch` strings, or heredocs fed to a shell, that contain expansions;
//!   nesting of such strings deeper than [`MAX_SHELL_DEPTH`]; `env -S`;
//! - indirect expansion `${!name}` (it can read any variable, see `guard`).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tree_sitter::{Node, Parser};

use super::paths;
use super::{Param, ParamKind};

/// How many `bash -c`/`eval` strings may nest inside each other.
pub const MAX_SHELL_DEPTH: usize = 4;
/// How deep the syntax tree may nest before the script is refused (protects the stack).
pub const MAX_NODE_DEPTH: usize = 100;
/// How many wrappers (`sudo env timeout …`) one command may stack.
const MAX_WRAPPERS: usize = 16;

/// Shells whose `-c` string, stdin heredoc or herestring is parsed as bash.
const SHELLS: &[&str] = &["bash", "sh", "dash", "zsh", "ksh", "ash", "mksh"];
/// Commands that change the shell's directory, so relative redirect targets stop being knowable.
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
];
/// Redirect targets that are harmless whatever the rules say.
const HARMLESS_TARGETS: &[&str] = &["/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin"];

thread_local! {
    // Building a parser allocates; reusing one per thread keeps a decision at a few µs.
    static PARSER: RefCell<Option<Parser>> = const { RefCell::new(None) };
}

/// The code point the parser sees for every non-ASCII character.
///
/// Why: tree-sitter-bash's scanner calls C `isdigit` on the lookahead, which indexes a
/// 384-entry table, so a code point far above 255 after a `{` reads out of bounds and can
/// crash the whole gateway (found by the fuzz test in `tests/policy_corpus.rs`). Bash itself
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

/// Analyses `script` as run in `cwd` (used to resolve relative redirect targets).
pub fn analyse(script: &str, cwd: &Path) -> Analysis {
    let mut analyser = Analyser {
        cwd,
        params: Vec::new(),
        problems: Vec::new(),
        changes_dir: false,
        relative_targets: Vec::new(),
        normalized: HashMap::new(),
        depth: 0,
    };
    analyser.script(script, 0, 0);
    if analyser.changes_dir {
        if let Some(target) = analyser.relative_targets.first() {
            let problem =
                format!("relative redirect target `{target}` in a script that changes directory");
            analyser.problem(problem);
        }
    }
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

struct Analyser<'c> {
    cwd: &'c Path,
    params: Vec<Param>,
    problems: Vec<String>,
    changes_dir: bool,
    relative_targets: Vec<String>,
    /// Depth of the node being walked (nested scripts continue from it).
    depth: usize,
    /// Redirect targets already resolved in this script (loops repeat them).
    normalized: HashMap<String, Option<PathBuf>>,
}

/// One word of a command line: its source text and, when it is static, its value after quote
/// removal.
#[derive(Clone, Debug)]
struct Word {
    text: String,
    value: Option<String>,
    /// Unquoted glob or brace characters: the value is a pattern, not the final word.
    pattern: bool,
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

impl Analyser<'_> {
    fn problem(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    fn push(&mut self, text: String, kind: ParamKind) {
        self.params.push(Param { text, kind });
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
        let cx = Cx { src, shell_depth };
        self.walk(root, cx, depth);
        if root.has_error() && self.problems.len() == before {
            self.problem("bash syntax error".to_string());
        }
    }

    fn walk(&mut self, node: Node, cx: Cx, depth: usize) {
        self.depth = depth;
        if depth > MAX_NODE_DEPTH {
            self.problem(format!(
                "script nests more than {MAX_NODE_DEPTH} levels deep"
            ));
            return;
        }
        if node.is_error() {
            let near: String = cx.text(node).chars().take(40).collect();
            self.problem(format!("bash syntax error near `{}`", near.trim()));
        } else if node.is_missing() {
            self.problem(format!("bash syntax error: missing `{}`", node.kind()));
        }
        if STRUCTURAL.contains(&node.kind()) {
            if let Some((_, gap)) = uncovered(node, cx).first() {
                self.problem(format!("text the parser skipped: `{gap}`"));
            }
        }
        match node.kind() {
            "command" => self.command(node, &[], false, cx, depth),
            "redirected_statement" => self.redirected_statement(node, cx, depth),
            "variable_assignment" | "variable_assignments" => {
                // `PATH=/tmp/evil:$PATH` changes what later commands run: a rule must allow it.
                self.push(cx.text(node), ParamKind::Other);
                self.walk_children(node, cx, depth);
            }
            "declaration_command" | "unset_command" => {
                let argv = declaration_argv(node, cx);
                self.push(cx.text(node), ParamKind::Command { argv });
                self.walk_operands(node, cx, depth);
            }
            // `for ((i=0; …))`: arithmetic, not a shell assignment.
            "c_style_for_statement" => self.walk_operands(node, cx, depth),
            "file_redirect" | "heredoc_redirect" | "herestring_redirect" => {
                self.redirect(node, cx, depth);
            }
            "expansion" => {
                if cx.text(node).starts_with("${!") {
                    self.problem(format!(
                        "indirect expansion `{}` is not supported",
                        cx.text(node)
                    ));
                }
                self.walk_children(node, cx, depth);
            }
            _ => self.walk_children(node, cx, depth),
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

    /// Children of a node whose assignments are part of it (`export A=1`, `for ((i=0;;))`):
    /// only their values are looked into.
    fn walk_operands(&mut self, node: Node, cx: Cx, depth: usize) {
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            if child.kind() == "variable_assignment" {
                self.walk_children(child, cx, depth + 1);
            } else if child.is_named() || child.is_missing() {
                self.walk(child, cx, depth + 1);
            }
        }
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
            _ => {
                if let Some(body) = body {
                    self.walk(body, cx, depth + 1);
                }
                for r in redirects {
                    self.walk(r, cx, depth + 1);
                }
            }
        }
    }

    /// A simple command with the redirects that tree-sitter put beside it (`outer`).
    fn command(&mut self, node: Node, outer: &[Node], dash_arg: bool, cx: Cx, depth: usize) {
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
                    let word = word(child, cx);
                    if word.value.is_none() || word.pattern {
                        name_problem = Some(word.text.clone());
                    }
                    argv.push(word);
                }
                Some("argument") => argv.push(word(child, cx)),
                _ => {}
            }
            if child.kind() == "variable_assignment" {
                // An env prefix stays in the command's text; only look inside its value.
                self.walk_children(child, cx, depth + 1);
            } else if child.is_named() || child.is_missing() {
                self.walk(child, cx, depth + 1);
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
        self.push(text, ParamKind::Command { argv: values });
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
            self.changes_dir = true;
        }
        if SHELLS.contains(&base) {
            self.shell(words, stdin, cx);
            return;
        }
        match base {
            "eval" => {
                let script = join_static(&words[1..]);
                self.nested_script("eval", script, cx);
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
                    let inner = &words[i..];
                    self.argv(join_text(inner), inner, stdin, cx, wrappers + 1);
                }
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
    }

    fn nested_script(&mut self, what: &str, script: Option<String>, cx: Cx) {
        match script {
            Some(script) => self.script(&script, cx.shell_depth + 1, self.depth + 1),
            None => self.problem(format!("{what} string is only known at run time")),
        }
    }

    /// A redirect that stands apart from any simple command (after a loop, a group, …).
    fn redirect(&mut self, node: Node, cx: Cx, depth: usize) {
        let mut parts = RedirectParts::default();
        self.redirect_into(node, cx, depth, &mut parts);
    }

    fn redirect_into(&mut self, node: Node, cx: Cx, depth: usize, parts: &mut RedirectParts) {
        match node.kind() {
            "file_redirect" => self.file_redirect(node, cx, depth, parts),
            "herestring_redirect" => {
                self.walk_children(node, cx, depth);
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
                self.walk(child, cx, depth + 1);
            }
        }
        let Some((target, extra)) = destinations.split_first() else {
            return;
        };
        parts.extra_args.extend(extra.iter().map(|d| word(*d, cx)));
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
        let target = word(*target, cx);
        let access = if write { "write" } else { "read" };
        let value = match target.value {
            Some(v) if !target.pattern && !v.starts_with('~') => v,
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
        if !Path::new(&value).is_absolute() {
            self.relative_targets.push(value.clone());
        }
        let normalized = match self.normalized.get(&value) {
            Some(cached) => cached.clone(),
            None => {
                let path = paths::normalize(&value, self.cwd);
                self.normalized.insert(value.clone(), path.clone());
                path
            }
        };
        match normalized {
            Some(path) => {
                let text = format!("{access}:{}", path.display());
                self.push(text, ParamKind::Redirect { path, write });
            }
            None => self.problem(format!(
                "relative redirect target `{value}` without a working directory"
            )),
        }
    }

    fn heredoc(&mut self, node: Node, cx: Cx, depth: usize, parts: &mut RedirectParts) {
        let mut start = String::new();
        // The source from `<<` to the end of the delimiter, spacing kept (`<< 'EOF'`).
        let mut header = String::from("<<");
        let mut body = String::new();
        let mut end = String::new();
        let mut body_is_static = true;
        let mut cursor = node.walk();
        for (i, child) in node.children(&mut cursor).enumerate() {
            let field = node.field_name_for_child(i as u32);
            match (child.kind(), field) {
                ("heredoc_start", _) => {
                    start = cx.text(child);
                    header = cx.slice(node.start_byte(), child.end_byte());
                }
                ("heredoc_body", _) => {
                    body = cx.text(child);
                    let mut c = child.walk();
                    body_is_static = child
                        .named_children(&mut c)
                        .all(|n| n.kind() == "heredoc_content");
                    self.walk_children(child, cx, depth);
                }
                ("heredoc_end", _) => end = cx.text(child),
                ("file_redirect", _) => self.file_redirect(child, cx, depth, parts),
                (_, Some("argument")) => parts.extra_args.push(word(child, cx)),
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
        parts.text.push(format!("{header}\n{body}{end}"));
        parts.stdin = Some((quoted || body_is_static).then_some(body));
    }
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

/// A command word with its static value (if any).
fn word(node: Node, cx: Cx) -> Word {
    let node = if node.kind() == "command_name" {
        node.named_child(0).unwrap_or(node)
    } else {
        node
    };
    Word {
        text: cx.text(node),
        value: static_value(node, cx),
        pattern: is_pattern(node, cx),
    }
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
            let mut cursor = node.walk();
            let found = node.named_children(&mut cursor).any(|c| is_pattern(c, cx));
            found
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
            "cd /etc && echo x > passwd",
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
