//! Text helpers shared by connectors, the turn runner and the approval prompt: splitting long
//! replies at a platform's limit without breaking code fences, truncation on character
//! boundaries, and making invisible characters visible.
//!
//! Owns: pure string functions. Knows nothing about platforms.

/// Splits `text` into parts of at most `max_chars` characters. Prefers to cut at a blank line,
/// then at a line end, then at a space; a cut inside a fenced code block closes the fence at
/// the end of the part and reopens it (with its language tag) at the start of the next one.
pub fn split_message(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(16);
    if text.chars().count() <= max_chars {
        return vec![text.to_string()];
    }
    let mut parts = Vec::new();
    let mut rest: &str = text;
    // The fence opener (e.g. "```rust") carried into the next part.
    let mut reopen: Option<String> = None;
    while !rest.is_empty() {
        let prefix = reopen
            .as_ref()
            .map(|f| format!("{f}\n"))
            .unwrap_or_default();
        let prefix_len = prefix.chars().count();
        // Room for a closing fence in case this part ends inside a block.
        let budget = max_chars.saturating_sub(prefix_len + 4).max(8);
        if prefix_len + rest.chars().count() <= max_chars {
            parts.push(format!("{prefix}{rest}"));
            break;
        }
        let cut = cut_point(rest, budget);
        let (head, tail) = rest.split_at(cut);
        let mut part = format!("{prefix}{head}");
        let open = open_fence_after(reopen.as_deref(), head);
        if let Some(fence) = &open {
            if !part.ends_with('\n') {
                part.push('\n');
            }
            part.push_str(fence_marker(fence));
        }
        parts.push(part.trim_end_matches(['\n', ' ']).to_string());
        reopen = open;
        rest = tail.trim_start_matches('\n');
    }
    parts
}

/// Byte offset to cut `s` at so the head has at most `budget` characters.
fn cut_point(s: &str, budget: usize) -> usize {
    let hard = s
        .char_indices()
        .nth(budget)
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let window = &s[..hard];
    // Do not cut so early that parts become tiny: look in the last 40% of the window.
    let floor = hard * 3 / 5;
    for sep in ["\n\n", "\n", " "] {
        if let Some(i) = window.rfind(sep) {
            if i >= floor && i > 0 {
                return i + sep.len();
            }
        }
    }
    hard
}

/// The fence still open at the end of `head`, given the one open at its start.
fn open_fence_after(open_at_start: Option<&str>, head: &str) -> Option<String> {
    let mut open = open_at_start.map(str::to_string);
    for line in head.lines() {
        let trimmed = line.trim_start();
        if let Some(marker) = fence_of(trimmed) {
            match &open {
                Some(o) if trimmed.trim_end() == fence_marker(o) => open = None,
                Some(_) => {}
                None => open = Some(marker.to_string()),
            }
        }
    }
    open
}

/// If `line` starts a fence, the whole opener (marker plus info string).
fn fence_of(line: &str) -> Option<&str> {
    (line.starts_with("```") || line.starts_with("~~~")).then(|| line.trim_end())
}

/// The bare marker (``` or ~~~, any length) of a fence opener.
fn fence_marker(opener: &str) -> &str {
    let c = opener.chars().next().unwrap_or('`');
    let n = opener.chars().take_while(|&x| x == c).count();
    &opener[..n * c.len_utf8()]
}

/// Cuts `s` to at most `max_chars` characters, adding `…` when it was cut.
pub fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

/// Cuts `s` to at most `max_bytes` bytes (on a character boundary) and says how much was cut:
/// `abc… [1234 more bytes]`. For records whose size an outsider controls.
pub fn truncate_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

/// Whether `c` would be invisible or would change how the text around it is shown: C0
/// controls but the newline (ESC starts ANSI sequences, CR rewinds a terminal line), DEL and
/// C1 controls, bidi embeddings, overrides and isolates (the "Trojan Source" trick, CVE-2021-42574),
/// zero-width and other format characters, line/paragraph separators, the BOM, and the tag
/// characters (invisible ASCII look-alikes).
pub fn is_hidden_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{9}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{ad}'              // soft hyphen
        | '\u{34f}'             // combining grapheme joiner
        | '\u{61c}'             // Arabic letter mark (bidi)
        | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' // Hangul fillers (blank letters)
        | '\u{180e}'            // Mongolian vowel separator
        | '\u{200b}'..='\u{200f}' // zero-width space/joiners, LRM, RLM
        | '\u{2028}' | '\u{2029}' // line and paragraph separators
        | '\u{202a}'..='\u{202e}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{206f}' // bidi isolates, deprecated format characters
        | '\u{feff}'            // BOM / zero-width no-break space
        | '\u{fff9}'..='\u{fffb}' // interlinear annotation
        | '\u{e0000}'..='\u{e007f}' // tag characters
    )
}

/// `s` with every [hidden character](is_hidden_char) replaced by `<U+XXXX>`, so text shown to
/// a person who decides on it (an approval prompt) reads the same as what will run. Newlines
/// are kept: a multi-line command is shown on several lines.
pub fn make_visible(s: &str) -> String {
    if !s.chars().any(is_hidden_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_hidden_char(c) {
            out.push_str(&format!("<U+{:04X}>", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_message("hello", 100), vec!["hello"]);
    }

    #[test]
    fn splits_at_line_boundaries_and_respects_limit() {
        let text = (0..50)
            .map(|i| format!("line number {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let parts = split_message(&text, 100);
        assert!(parts.len() > 1);
        for p in &parts {
            assert!(p.chars().count() <= 100, "{p:?}");
            assert!(p.starts_with("line number"), "{p:?}");
        }
        assert_eq!(parts.join("\n"), text);
    }

    #[test]
    fn code_fence_is_closed_and_reopened() {
        let code: String = (0..40).map(|i| format!("let x{i} = {i};\n")).collect();
        let text = format!("Here:\n```rust\n{code}```\nDone.");
        let parts = split_message(&text, 120);
        assert!(parts.len() > 2);
        for p in &parts {
            assert!(p.chars().count() <= 120, "{p:?}");
            let fences = p.lines().filter(|l| l.starts_with("```")).count();
            assert_eq!(fences % 2, 0, "unbalanced fences in {p:?}");
        }
        assert!(parts[1].starts_with("```rust\n"));
    }

    #[test]
    fn multibyte_text_splits_on_char_boundaries() {
        let text = "你好世界".repeat(100);
        let parts = split_message(&text, 50);
        assert!(parts.iter().all(|p| p.chars().count() <= 50));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn truncate_marks_cut() {
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn truncate_bytes_says_how_much_was_cut() {
        assert_eq!(truncate_bytes("abcdef", 10), "abcdef");
        assert_eq!(truncate_bytes("abcdef", 4), "abcd… [2 more bytes]");
        // "é" is two bytes: the cut moves back to a character boundary.
        assert_eq!(truncate_bytes("aé", 2), "a… [2 more bytes]");
    }

    #[test]
    fn hidden_characters_are_made_visible() {
        let cases = [
            ("ls -la", "ls -la"),
            ("line one\nline two", "line one\nline two"),
            ("a\tb", "a<U+0009>b"),
            ("ok\r", "ok<U+000D>"),
            ("\u{1b}[31mred\u{1b}[0m", "<U+001B>[31mred<U+001B>[0m"),
            (
                "\u{0}\u{7f}\u{85}\u{9b}",
                "<U+0000><U+007F><U+0085><U+009B>",
            ),
            ("rm -rf /\u{202e}txt.exe", "rm -rf /<U+202E>txt.exe"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                "<U+202A><U+202B><U+202C><U+202D>",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                "<U+2066><U+2067><U+2068><U+2069>",
            ),
            (
                "a\u{200b}b\u{200c}\u{200d}\u{200e}\u{200f}",
                "a<U+200B>b<U+200C><U+200D><U+200E><U+200F>",
            ),
            ("x\u{2028}y\u{2029}", "x<U+2028>y<U+2029>"),
            ("\u{feff}echo", "<U+FEFF>echo"),
            ("tag\u{e0041}", "tag<U+E0041>"),
            // Visible non-ASCII text is left alone.
            ("héllo 你好 ✅", "héllo 你好 ✅"),
        ];
        for (input, expected) in cases {
            assert_eq!(make_visible(input), expected, "{input:?}");
        }
        for c in ['\n', 'a', ' ', 'é', '\u{a0}', '\u{2030}'] {
            assert!(!is_hidden_char(c), "{c:?}");
        }
    }
}
