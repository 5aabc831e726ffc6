//! Runs the simulation over a range of seeds, on SQLite and on PostgreSQL,
//! and fails with every seed that broke a promise, and how.
//!
//! `SIM_SEEDS` (default 200) SQLite schedules and `SIM_PG_SEEDS` (default
//! 200) PostgreSQL schedules, from `SIM_FIRST_SEED` (default 1);
//! `SIM_SEED=<n>` replays one schedule on both. PostgreSQL is found through
//! `DATABASE_URL`.

use std::time::Duration;

use txmsg_sim::{Backend, Postgres, Sqlite};

/// How long a run may take to settle once its producers are done.
const BOUND: Duration = Duration::from_secs(20);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
        })
        .unwrap_or(default)
}

/// Keeps the injected panics (handlers, publishes) out of the output, so
/// that a failure's report is readable; any other panic prints as usual.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !text.starts_with("injected ") {
                default(info);
            }
        }));
    });
}

/// Runs the seeds on `B`, a few schedules at once (they share nothing but
/// the process), prints the totals and fails with every violation.
async fn seeds<B: Backend>(count_var: &str, default_count: u64) {
    quiet_injected_panics();
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(_) => vec![env_u64("SIM_SEED", 0)],
        Err(_) => {
            let first = env_u64("SIM_FIRST_SEED", 1);
            (first..first + env_u64(count_var, default_count)).collect()
        }
    };
    let parallel = 4;
    let mut failures = Vec::new();
    let (mut runs, mut checks, mut applications, mut rolled_back, mut faults) = (0, 0, 0, 0, 0);
    for chunk in seeds.chunks(parallel) {
        let mut set = tokio::task::JoinSet::new();
        for &seed in chunk {
            set.spawn(async move { (seed, txmsg_sim::run::<B>(seed, BOUND).await) });
        }
        while let Some(done) = set.join_next().await {
            let (seed, report) = done.expect("a simulation task panicked");
            let report = report.unwrap_or_else(|e| {
                panic!("seed {seed} could not run: {}", txmsg_sim::describe(&e))
            });
            runs += 1;
            checks += report.checks;
            applications += report.expected_applications;
            rolled_back += report.rolled_back;
            faults += report.publish_faults;
            if !report.violations.is_empty() {
                let found: Vec<String> =
                    report.violations.iter().map(|v| format!("  {v}")).collect();
                failures.push(format!(
                    "seed {seed} ({:?}):\n{}",
                    txmsg_sim::Plan::new(seed),
                    found.join("\n")
                ));
            }
        }
    }
    println!(
        "{}: {runs} schedules, {checks} counted checks, {applications} applications expected, \
         {rolled_back} rolled-back messages, {faults} publish faults injected",
        B::NAMES.a
    );
    assert!(
        runs == seeds.len() && applications > 0 && checks > 0,
        "the schedules ran and expected something to be applied"
    );
    assert!(
        failures.is_empty(),
        "{} seeds broke a promise (replay one with SIM_SEED=<seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_holds_under_seeded_schedules_on_sqlite() {
    seeds::<Sqlite>("SIM_SEEDS", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_holds_under_seeded_schedules_on_postgres() {
    seeds::<Postgres>("SIM_PG_SEEDS", 200).await;
}
