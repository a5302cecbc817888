//! CQ codes: the string message format (`messagePostFormat: "string"`), e.g.
//! `[CQ:reply,id=456][CQ:at,qq=123] hi &#91;x&#93;`. Parsed into the same [`Segment`]s as the
//! array format, so the rest of the connector sees one shape.
//!
//! Escaping (OneBot 11 `message/string.md`): in text `&`→`&amp;`, `[`→`&#91;`, `]`→`&#93;`;
//! inside parameter values also `,`→`&#44;`.

use serde_json::Value;

use super::wire::Segment;

/// Parses a CQ-code string. Malformed codes (no closing `]`, no type) are kept as text, so no
/// input is lost or rejected.
pub fn parse(s: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("[CQ:") {
        let after = &rest[start + 4..];
        let Some(end) = after.find(']') else {
            break;
        };
        let body = &after[..end];
        let mut parts = body.split(',');
        let kind = parts.next().unwrap_or("").trim();
        if kind.is_empty() || kind.contains('[') {
            // Not a code after all: keep the `[CQ:` literally and look further on.
            text.push_str(&unescape(&rest[..start + 4]));
            rest = &rest[start + 4..];
            continue;
        }
        text.push_str(&unescape(&rest[..start]));
        if !text.is_empty() {
            out.push(Segment::text(&std::mem::take(&mut text)));
        }
        let mut seg = Segment::new(kind, &[]);
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            seg.data.insert(k.to_string(), Value::from(unescape(v)));
        }
        out.push(seg);
        rest = &after[end + 1..];
    }
    text.push_str(&unescape(rest));
    if !text.is_empty() {
        out.push(Segment::text(&text));
    }
    out
}

fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    // `&amp;` last, so `&amp;#91;` becomes `&#91;` and not `[`.
    s.replace("&#91;", "[")
        .replace("&#93;", "]")
        .replace("&#44;", ",")
        .replace("&amp;", "&")
}

/// Escapes plain text for a CQ string (used when rendering segments back, e.g. in tests).
pub fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('[', "&#91;")
        .replace(']', "&#93;")
}

/// Escapes a parameter value of a CQ code.
pub fn escape_param(s: &str) -> String {
    escape_text(s).replace(',', "&#44;")
}

/// Renders segments as a CQ string (the inverse of [`parse`]).
pub fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for seg in segments {
        if seg.kind == "text" {
            out.push_str(&escape_text(&seg.get("text").unwrap_or_default()));
            continue;
        }
        out.push_str("[CQ:");
        out.push_str(&seg.kind);
        for key in seg.data.keys() {
            out.push(',');
            out.push_str(key);
            out.push('=');
            out.push_str(&escape_param(&seg.get(key).unwrap_or_default()));
        }
        out.push(']');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_codes_and_text() {
        let segs = parse("[CQ:reply,id=456][CQ:at,qq=123] hi &#91;x&#93; a&amp;b");
        assert_eq!(segs.len(), 3);
        assert_eq!(
            (segs[0].kind.as_str(), segs[0].get("id").unwrap()),
            ("reply", "456".into())
        );
        assert_eq!(
            (segs[1].kind.as_str(), segs[1].get("qq").unwrap()),
            ("at", "123".into())
        );
        assert_eq!(segs[2].get("text").unwrap(), " hi [x] a&b");
    }

    #[test]
    fn unescapes_parameter_values() {
        let segs = parse("[CQ:image,file=a&#44;b.png,url=http://x/?a=1&amp;b=2]");
        assert_eq!(segs[0].get("file").unwrap(), "a,b.png");
        assert_eq!(segs[0].get("url").unwrap(), "http://x/?a=1&b=2");
    }

    #[test]
    fn malformed_codes_stay_text() {
        let segs = parse("look [CQ:at,qq=1 no end");
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].get("text").unwrap(), "look [CQ:at,qq=1 no end");
        let segs = parse("[CQ:] x");
        assert_eq!(segs[0].get("text").unwrap(), "[CQ:] x");
    }

    #[test]
    fn double_escaped_ampersand_is_decoded_once() {
        assert_eq!(parse("&amp;#91;")[0].get("text").unwrap(), "&#91;");
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(text in ".{0,40}", qq in "[0-9]{1,10}", name in ".{0,20}") {
            let segs = vec![
                Segment::at(&qq),
                Segment::text(&format!("x{text}")),
                Segment::new("file", &[("name", Value::from(name.clone()))]),
            ];
            let parsed = parse(&render(&segs));
            prop_assert_eq!(parsed, segs);
        }
    }
}
