//! Text helpers shared by connectors and the turn runner: splitting long replies at a
//! platform's limit without breaking code fences, and truncation on character boundaries.
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
}
