//! Runs the simulation over a range of seeds and fails with every seed that
//! broke a promise, and how. `SIM_SEEDS` (default 200) seeds from
//! `SIM_FIRST_SEED` (default 1); `SIM_SEED=<n>` replays one schedule.

use std::time::Duration;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_holds_under_seeded_schedules() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(_) => vec![env_u64("SIM_SEED", 0)],
        Err(_) => {
            let first = env_u64("SIM_FIRST_SEED", 1);
            (first..first + env_u64("SIM_SEEDS", 200)).collect()
        }
    };
    // A few schedules at once: they share nothing but the process.
    let parallel = 4;
    let mut failures = Vec::new();
    let (mut runs, mut checks, mut applications, mut rolled_back, mut faults) = (0, 0, 0, 0, 0);
    for chunk in seeds.chunks(parallel) {
        let mut set = tokio::task::JoinSet::new();
        for &seed in chunk {
            set.spawn(async move { (seed, txmsg_sim::run(seed, BOUND).await) });
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
            for v in &report.violations {
                failures.push(format!(
                    "seed {seed} ({:?}): {v}",
                    txmsg_sim::Plan::new(seed)
                ));
            }
        }
    }
    println!(
        "{runs} schedules, {checks} counted checks, {applications} applications expected, \
         {rolled_back} rolled-back messages, {faults} publish faults injected"
    );
    assert!(
        failures.is_empty(),
        "{} violations (replay one with SIM_SEED=<seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
