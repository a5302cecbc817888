//! Policy decisions per second, printed as one JSON object:
//! a typical bash command, a typical Read, and a ~10 KB bash script.
//! Run with `cargo bench --bench policy` (one thread, so the numbers are per core);
//! `POLICY_BENCH_MS` sets the time spent on each case (default 1000).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_chat_gateway::model::Role;
use agent_chat_gateway::policy::{decide, Guard, PolicyInput, Rule, RuleSet};
use serde_json::{json, Value};

/// Runs `f` repeatedly for about `budget` and returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up: the thread-local parser and the dentry cache for path lookups.
    for _ in 0..100 {
        f();
    }
    let start = Instant::now();
    let mut calls: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        calls += 100;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

/// A realistic script of about 10 KB: functions, loops, pipelines, substitutions, heredocs.
fn big_script(bytes: usize) -> String {
    let block = r#"
build_one() {
  local crate="$1"
  if [ -d "crates/$crate" ]; then
    (cd "crates/$crate" && cargo build --release 2>&1 | tail -n 20)
  else
    echo "missing $crate" >&2
  fi
}
for c in $(ls crates | sort); do
  build_one "$c" && echo "built $c" >> /project/build.log || echo "failed $c"
done
grep -rn "TODO" src | awk -F: '{print $1}' | sort | uniq -c | sort -rn | head -5
cat > /project/notes.md <<'NOTES'
# Build notes
Everything built on $(date).
NOTES
"#;
    let mut s = String::new();
    while s.len() < bytes {
        s.push_str(block);
    }
    s
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("POLICY_BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let owner = RuleSet::new(vec![
        Rule::new("Bash", Some("git (log|diff|status).*")).unwrap(),
        Rule::new("Bash", Some("head.*")).unwrap(),
        Rule::new("Read", Some("/project/.*")).unwrap(),
    ]);
    let guest = RuleSet::default();
    let guard = Guard::new("/home/agent/.agent-chat-gateway").with_own_room(Some("rc"), "GENERAL");
    let cwd = Path::new("/project");
    let script = big_script(10 * 1024);

    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "bash_typical",
            "Bash",
            json!({"command": "git log --oneline | head -20"}),
        ),
        ("read_typical", "Read", json!({"file_path": "src/main.rs"})),
        ("bash_10kb", "Bash", json!({"command": script})),
    ];
    let mut report = serde_json::Map::new();
    for (name, tool, input) in &cases {
        let mut decision = String::new();
        let per_sec = rate(budget, || {
            let outcome = decide(&PolicyInput {
                role: Role::Owner,
                tool,
                input,
                cwd,
                owner_rules: &owner,
                guest_rules: &guest,
                skip_owner_approval: false,
                guard: &guard,
            });
            if decision.is_empty() {
                decision = outcome.decision.word().to_string();
            }
            black_box(outcome);
        });
        report.insert(format!("{name}_per_sec"), json!(per_sec.round()));
        report.insert(format!("{name}_decision"), json!(decision));
    }
    report.insert("bash_10kb_bytes".to_string(), json!(script.len()));
    // The largest script the analyser accepts: how long one decision can take at worst.
    for (name, bytes) in [("bash_64kb", 64 * 1024), ("bash_1mb", 1024 * 1024)] {
        let input = json!({"command": big_script(bytes)});
        let start = Instant::now();
        let outcome = decide(&PolicyInput {
            role: Role::Owner,
            tool: "Bash",
            input: &input,
            cwd,
            owner_rules: &owner,
            guest_rules: &guest,
            skip_owner_approval: false,
            guard: &guard,
        });
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        report.insert(format!("{name}_ms"), json!((ms * 10.0).round() / 10.0));
        report.insert(format!("{name}_decision"), json!(outcome.decision.word()));
    }
    println!("{}", Value::Object(report));
}
