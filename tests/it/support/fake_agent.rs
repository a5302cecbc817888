//! The stand-in agent CLI (`examples/acg-fake-agent/`), built on first use.
//!
//! It is an example rather than a `[[bin]]` so that `cargo install` never installs it; cargo
//! sets `CARGO_BIN_EXE_*` only for binaries, so the harness builds it itself, with the
//! profile and into the target dir of the gateway binary this test or bench was built with.
//! Shared by the tests (`support`) and `benches/pipeline.rs` (`#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the built fake agent; builds it once per process.
pub fn path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(build)
}

fn build() -> String {
    let gateway = Path::new(env!("CARGO_BIN_EXE_agent-chat-gateway"));
    // `<target>/<debug|release>/agent-chat-gateway`
    let profile_dir = gateway.parent().expect("gateway binary in a profile dir");
    let target_dir = profile_dir.parent().expect("profile dir in a target dir");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--example",
            "acg-fake-agent",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    // Cargo gives a test process the package's own variables; build scripts that watch them
    // (ring watches `CARGO_PKG_NAME`) would rebuild, and the outer build then rebuilds again.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_for_tests = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
            .iter()
            .any(|p| key.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&key.as_ref());
        if set_by_cargo_for_tests {
            cargo.env_remove(key.as_ref());
        }
    }
    // Benches are built with the release profile, into `release/`.
    if profile_dir.file_name() == Some("release".as_ref()) {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .expect("running cargo to build the fake agent");
    assert!(status.success(), "building examples/acg-fake-agent/ failed");
    let bin: PathBuf = profile_dir.join("examples").join("acg-fake-agent");
    bin.to_string_lossy().into_owned()
}
