//! File helpers every platform that downloads or uploads attachments shares: a safe local
//! name for a remote file, a MIME type guessed from an extension, and sizes for the notes an
//! agent reads ("12.3 MB").
//!
//! Owns: pure functions; no I/O. Knows nothing about any platform.

use std::path::Path;

/// The MIME type an upload declares, from the file extension (octet-stream when unknown).
pub fn guess_mime(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "json" => "application/json",
        "html" => "text/html",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// A file name safe to create inside the attachments folder: no separators, no `..`, no
/// control characters, at most 100 characters; never empty.
pub fn sanitize_file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    let cut: String = trimmed.chars().take(100).collect();
    if cut.is_empty() || cut.chars().all(|c| c == '_') {
        "file".to_string()
    } else {
        cut
    }
}

/// `12.3 MB`, `4.9 KB`, `10 MB` for notes.
pub fn human_size(bytes: u64) -> String {
    let (value, unit) = if bytes >= 1024 * 1024 {
        (bytes as f64 / (1024.0 * 1024.0), "MB")
    } else if bytes >= 1024 {
        (bytes as f64 / 1024.0, "KB")
    } else {
        return format!("{bytes} bytes");
    };
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape_the_folder() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\x.txt"), "x.txt");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_file_name("my report (1).pdf"), "my_report__1_.pdf");
        assert_eq!(sanitize_file_name("报告.txt"), "报告.txt");
        assert_eq!(sanitize_file_name(""), "file");
    }

    #[test]
    fn sizes_and_mime_types() {
        assert_eq!(human_size(12_897_485), "12.3 MB");
        assert_eq!(human_size(10 * 1024 * 1024), "10 MB");
        assert_eq!(human_size(5000), "4.9 KB");
        assert_eq!(human_size(12), "12 bytes");
        assert_eq!(guess_mime(Path::new("a/b.PNG")), "image/png");
        assert_eq!(guess_mime(Path::new("notes")), "application/octet-stream");
    }
}
