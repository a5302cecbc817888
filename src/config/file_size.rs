//! `attachments.max_file_size_mb`, the one download limit every platform section uses.
//!
//! Owns: how the key is written (megabytes, fractions allowed, `0` = no limit), its default,
//! and its validation. Knows nothing about: which platforms use it.

use serde::Deserialize;

use super::Validator;

/// Used when a section does not set `max_file_size_mb`. Documented in `config.example.yaml`
/// and the platform docs; both platforms used to differ (10 and 20).
pub const DEFAULT_MAX_FILE_SIZE_MB: u64 = 20;

/// The key as written: a number of megabytes (`20`, `0.5`). Integers and fractions both load,
/// so files written for either former key keep loading.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct RawMaxFileSize(f64);

impl Default for RawMaxFileSize {
    fn default() -> Self {
        RawMaxFileSize(DEFAULT_MAX_FILE_SIZE_MB as f64)
    }
}

/// The validated limit in bytes; `None` means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxFileSize(Option<u64>);

impl MaxFileSize {
    pub fn bytes(self) -> Option<u64> {
        self.0
    }

    /// Validates the key found at `path` (reported there when it is not a size).
    pub fn validate(raw: RawMaxFileSize, path: &str, v: &mut Validator) -> MaxFileSize {
        let mb = raw.0;
        if !(mb >= 0.0 && mb.is_finite()) {
            v.error(path, "must be a number of megabytes, 0 for no limit");
            return MaxFileSize::default();
        }
        MaxFileSize((mb > 0.0).then_some((mb * 1024.0 * 1024.0) as u64))
    }
}

impl Default for MaxFileSize {
    fn default() -> Self {
        MaxFileSize(Some(DEFAULT_MAX_FILE_SIZE_MB * 1024 * 1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> (Option<u64>, usize) {
        let mut v = Validator::new(".".into(), String::new());
        let raw: RawMaxFileSize = v.parse("k", serde_yaml::from_str(yaml).unwrap()).unwrap();
        (
            MaxFileSize::validate(raw, "k", &mut v).bytes(),
            v.issues.len(),
        )
    }

    #[test]
    fn integers_fractions_and_zero_load() {
        assert_eq!(check("20"), (Some(20 << 20), 0));
        assert_eq!(check("10.0"), (Some(10 << 20), 0));
        assert_eq!(check("0.5"), (Some(1 << 19), 0));
        assert_eq!(check("0"), (None, 0));
        assert_eq!(check("-1"), (Some(DEFAULT_MAX_FILE_SIZE_MB << 20), 1));
        assert_eq!(
            MaxFileSize::default().bytes(),
            Some(DEFAULT_MAX_FILE_SIZE_MB << 20)
        );
    }
}
