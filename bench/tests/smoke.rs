//! Runs every mode once with tiny sizes (`all --quick`) against the real
//! PostgreSQL and RabbitMQ, and checks that each printed both of its figures
//! and that the JSON results and the SVG plot were written. Speed is not
//! asserted.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn every_mode_completes_and_prints_both_figures() {
    let out_dir = std::env::temp_dir().join(format!("txmsg-bench-smoke-{}", std::process::id()));
    let stdout = run_quick(
        "all",
        &out_dir,
        "PostgreSQL at DATABASE_URL and RabbitMQ at AMQP_URL",
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"))
            .to_owned()
    };
    for prefix in [
        "producer (8 clients) throughput:",
        "e2e peak throughput:",
        "drain of",
        "consumer (",
    ] {
        let l = line(prefix);
        let fw = figure_after(&l, ": txmsg ");
        let bl = figure_after(&l, "| baseline ");
        assert!(fw > 0.0 && bl > 0.0, "both figures positive: {l}");
        assert!(l.contains("ratio "), "{l}");
    }
    let together = line("producer, both sides at once");
    assert!(
        together.contains("ratio ") && together.contains("CI"),
        "{together}"
    );
    let half = line("e2e at half of peak");
    assert!(half.contains("p99") && half.contains("baseline"), "{half}");
    let mem = line("memory: relay peak RSS");
    assert!(
        mem.contains("200 rows") && mem.contains("2000 rows") && mem.contains("ratio"),
        "{mem}"
    );
    let json = std::fs::read_to_string(out_dir.join("BENCHMARKS-results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for mode in ["producer", "e2e", "drain", "consumer", "memory"] {
        assert!(
            v[mode]["ratio"].as_f64().is_some(),
            "{mode} ratio in {json}"
        );
    }
    let svg = std::fs::read_to_string(out_dir.join("e2e-latency.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("txmsg"),
        "plot written"
    );
    std::fs::remove_dir_all(&out_dir).unwrap();
}

/// Runs `txmsg-bench --quick --out <out_dir> <mode>` and returns what it
/// printed, failing the test if it failed (naming the `services` it needs).
fn run_quick(mode: &str, out_dir: &std::path::Path, services: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_txmsg-bench"))
        .args(["--quick", "--out"])
        .arg(out_dir)
        .arg(mode)
        .output()
        .expect("run txmsg-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "txmsg-bench --quick {mode} failed ({}); are {services} up?\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

/// The number right after `label` in `line`.
fn figure_after(line: &str, label: &str) -> f64 {
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("`{label}` in {line}"))
        + label.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a number after `{label}` in {line}"))
}

#[test]
fn rocketmq_modes_complete_and_print_both_figures() {
    let out_dir =
        std::env::temp_dir().join(format!("txmsg-bench-smoke-rocketmq-{}", std::process::id()));
    let stdout = run_quick(
        "rocketmq",
        &out_dir,
        "PostgreSQL at DATABASE_URL and RocketMQ at ROCKETMQ_URL",
    );
    for prefix in ["rocketmq drain of", "rocketmq e2e peak throughput:"] {
        let l = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stdout}"));
        let fw = figure_after(l, ": txmsg ");
        let bl = figure_after(l, "| baseline ");
        assert!(fw > 0.0 && bl > 0.0, "both figures positive: {l}");
    }
    let json = std::fs::read_to_string(out_dir.join("rocketmq-results.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for mode in ["drain", "e2e"] {
        assert!(
            v[mode]["ratio"].as_f64().is_some(),
            "{mode} ratio in {json}"
        );
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}
