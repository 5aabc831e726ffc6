//! The short runs of the fault harness (a few hundred messages, a few
//! kills), against the real PostgreSQL and RabbitMQ. The long runs and
//! their figures are in RELIABILITY.md.
//!
//! Each test runs the harness binary and checks its counts: every order
//! committed, published, applied once per group, none lost, none applied
//! twice, per-key order kept where it is promised, nothing pending or dead.
//! The broker run here leaves RabbitMQ itself running (other tests use it at
//! the same time); `scripts/test.sh` runs the restart afterwards, alone.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_txmsg-faults"))
        .arg("run")
        .args(args)
        .output()
        .expect("the harness runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the harness reported a failure");
    assert!(stdout.contains("RESULT PASS"));
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("json "))
        .expect("a json line");
    serde_json::from_str(json).unwrap()
}

fn check_counts(report: &serde_json::Value, groups: usize) {
    let messages = report["messages"].as_i64().unwrap();
    assert_eq!(report["committed"].as_i64(), Some(messages));
    assert_eq!(report["not_published"].as_i64(), Some(0));
    assert_eq!(report["published_at_least_once"].as_i64(), Some(messages));
    assert_eq!(report["outbox_pending"].as_i64(), Some(0));
    assert_eq!(report["outbox_dead"].as_i64(), Some(0));
    assert_eq!(report["consumer_dead"].as_i64(), Some(0));
    let list = report["groups"].as_array().unwrap();
    assert_eq!(list.len(), groups);
    for pair in list {
        let (name, c) = (pair[0].as_str().unwrap(), &pair[1]);
        assert_eq!(c["lost"].as_i64(), Some(0), "{name}");
        assert_eq!(c["applied_twice"].as_i64(), Some(0), "{name}");
        assert_eq!(c["phantom"].as_i64(), Some(0), "{name}");
        assert_eq!(c["distinct"].as_i64(), Some(messages), "{name}");
        if name == "ordered" {
            assert_eq!(c["keys_out_of_order"].as_i64(), Some(0));
        }
    }
}

#[test]
fn crashes_lose_nothing_and_apply_nothing_twice() {
    let report = run(&[
        "crash",
        "--messages=300",
        "--kills=6",
        "--seconds=10",
        "--crash-percent=1.5",
    ]);
    check_counts(&report, 2);
    let kills =
        report["harness_sigkills"].as_u64().unwrap() + report["harness_sigterms"].as_u64().unwrap();
    assert_eq!(kills, 6, "every planned kill happened");
}

#[test]
fn broker_cuts_lose_nothing_and_publishing_resumes() {
    let report = run(&["broker", "--messages=300", "--no-restart"]);
    check_counts(&report, 2);
    let resumed = report["resume_ms"].as_array().unwrap();
    assert_eq!(resumed.len(), 6, "three faults, publish and consume each");
    for r in resumed {
        assert!(r[1].as_u64().unwrap() < 30_000, "{r}");
    }
}

#[test]
fn database_faults_lose_nothing() {
    let report = run(&["database", "--messages=300"]);
    check_counts(&report, 2);
    assert_eq!(report["resume_ms"].as_array().unwrap().len(), 6);
}

#[test]
fn four_relays_publish_each_message_once() {
    let report = run(&[
        "relays",
        "--messages=2000",
        "--relays=4",
        "--kills=0",
        "--seconds=0",
    ]);
    check_counts(&report, 0);
    assert_eq!(report["published_twice"].as_i64(), Some(0));
}

#[test]
fn a_killed_relay_loses_nothing() {
    let report = run(&[
        "relays",
        "--messages=2000",
        "--relays=4",
        "--kills=1",
        "--seconds=0",
    ]);
    check_counts(&report, 0);
    assert_eq!(report["harness_sigkills"].as_u64(), Some(1));
}

#[test]
fn log_capture_loses_nothing_when_the_slot_reader_is_killed() {
    let report = run(&["log", "--messages=300", "--kills=2", "--no-restart"]);
    check_counts(&report, 2);
    assert_eq!(report["harness_sigkills"].as_u64(), Some(2));
    let resumed = report["resume_ms"].as_array().unwrap();
    assert_eq!(
        resumed.len(),
        6,
        "two kills: slot read again, publish and consume each"
    );
    for r in resumed {
        assert!(r[1].as_u64().unwrap() < 30_000, "{r}");
    }
}
