//! The child processes of a run: started, watched, killed, restarted.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::child::Env;

/// What a child does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Role {
    /// Writes orders `index`, `index + producers`, ...
    Producer {
        index: i64,
        producers: i64,
        keys: i64,
        count: i64,
        interval: Duration,
        fast_path: bool,
    },
    /// Relays.
    Relay(usize),
    /// Consumes for a group (the second field tells its members apart).
    Consumer(&'static str, usize),
}

impl Role {
    /// A short name, also the database application name.
    pub(crate) fn name(&self) -> String {
        match self {
            Role::Producer { index, .. } => format!("producer-{index}"),
            Role::Relay(i) => format!("relay-{i}"),
            Role::Consumer(group, i) => format!("consumer-{group}-{i}"),
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Role::Producer {
                index,
                producers,
                keys,
                count,
                interval,
                fast_path,
            } => {
                let mut args = vec![
                    "producer".to_owned(),
                    format!("--index={index}"),
                    format!("--producers={producers}"),
                    format!("--keys={keys}"),
                    format!("--count={count}"),
                    format!("--interval-us={}", interval.as_micros()),
                ];
                if !fast_path {
                    args.push("--no-fast-path".to_owned());
                }
                args
            }
            Role::Relay(_) => vec!["relay".to_owned()],
            Role::Consumer(group, _) => vec!["consumer".to_owned(), format!("--group={group}")],
        }
    }
}

/// What the children printed, summed over their lives.
#[derive(Debug, Default, Clone)]
struct Printed {
    ready: bool,
    done: bool,
    applied: u64,
    duplicates: u64,
}

/// How a child's life ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Exited by itself with success.
    Clean,
    /// Killed by a signal (SIGKILL from the harness, SIGABRT at a fail point).
    Signal(i32),
    /// Exited with a failure code.
    Failed(i32),
}

struct Slot {
    role: Role,
    child: Option<Child>,
    printed: Arc<Mutex<Printed>>,
    failpoints: Option<String>,
    lives: u32,
    finished: bool,
}

/// The children of one run.
pub(crate) struct Fleet {
    exe: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    slots: Vec<Slot>,
    verbose: bool,
    /// Counts summed over the children's finished lives: (applied, duplicates).
    totals: (u64, u64),
    /// How lives ended, by kind.
    pub(crate) exits: BTreeMap<String, u32>,
    /// Crashes at fail points, by fail point.
    pub(crate) crashes: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Fleet {
    /// A fleet whose children connect as `env` says.
    pub(crate) fn new(env: &Env, verbose: bool) -> std::io::Result<Self> {
        Ok(Fleet {
            exe: std::env::current_exe()?,
            env: vec![
                (Env::DB, env.db.clone()),
                (Env::SCHEMA, env.schema.clone()),
                (Env::AMQP, env.amqp.clone()),
                (Env::EXCHANGE, env.exchange.clone()),
                (
                    Env::CAPTURE,
                    if env.log { "log" } else { "table" }.to_owned(),
                ),
            ],
            slots: Vec::new(),
            verbose,
            totals: (0, 0),
            exits: BTreeMap::new(),
            crashes: Arc::default(),
        })
    }

    /// Adds a child and starts it; `failpoints` is its `FAILPOINTS`.
    pub(crate) fn add(&mut self, role: Role, failpoints: Option<String>) -> std::io::Result<usize> {
        self.slots.push(Slot {
            role,
            child: None,
            printed: Arc::default(),
            failpoints,
            lives: 0,
            finished: false,
        });
        let i = self.slots.len() - 1;
        self.start(i)?;
        Ok(i)
    }

    fn start(&mut self, i: usize) -> std::io::Result<()> {
        let slot = &mut self.slots[i];
        let mut cmd = Command::new(&self.exe);
        cmd.arg("child")
            .args(slot.role.args())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(Env::APP, format!("txmsg-faults-{}", slot.role.name()))
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        if let Some(fp) = &slot.failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take();
        // This life's counts start from zero; the reader adds them up.
        let printed = Arc::clone(&slot.printed);
        {
            let mut p = printed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            p.ready = false;
        }
        let base = {
            let p = printed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (p.applied, p.duplicates)
        };
        let crashes = Arc::clone(&self.crashes);
        if let Some(stdout) = stdout {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut p = printed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    match line.as_str() {
                        "ready" => p.ready = true,
                        "done" => p.done = true,
                        _ if line.starts_with("crash ") => {
                            let point = line.trim_start_matches("crash ").to_owned();
                            *crashes
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(point)
                                .or_default() += 1;
                        }
                        _ => {
                            if let Some((applied, duplicates)) = parse_stats(&line) {
                                p.applied = base.0 + applied;
                                p.duplicates = base.1 + duplicates;
                            }
                        }
                    }
                }
            });
        }
        slot.child = Some(child);
        slot.lives += 1;
        Ok(())
    }

    /// Waits until every running child printed `ready`, at most `limit`.
    pub(crate) async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.slots.iter().all(|s| {
                s.finished
                    || s.printed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .ready
            });
            if all {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts children that died; marks producers that finished. Returns
    /// how many lives ended in this call.
    pub(crate) fn reap(&mut self) -> std::io::Result<u32> {
        let mut ended = 0;
        for i in 0..self.slots.len() {
            let exit = {
                let slot = &mut self.slots[i];
                let Some(child) = slot.child.as_mut() else {
                    continue;
                };
                match child.try_wait()? {
                    None => continue,
                    Some(status) => exit_of(status),
                }
            };
            ended += 1;
            self.slots[i].child = None;
            *self.exits.entry(exit_name(exit)).or_default() += 1;
            let producer_done = matches!(self.slots[i].role, Role::Producer { .. })
                && exit == Exit::Clean
                && self.slots[i]
                    .printed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .done;
            if producer_done {
                self.slots[i].finished = true;
            } else {
                self.start(i)?;
            }
        }
        Ok(ended)
    }

    /// Indexes of running children that `pick` accepts.
    pub(crate) fn running(&self, pick: impl Fn(&Role) -> bool) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.child.is_some() && pick(&s.role))
            .map(|(i, _)| i)
            .collect()
    }

    /// The role of child `i`.
    pub(crate) fn role(&self, i: usize) -> &Role {
        &self.slots[i].role
    }

    /// Sends SIGKILL to child `i` (it is restarted by the next [`reap`](Self::reap)).
    pub(crate) fn sigkill(&mut self, i: usize) {
        if let Some(child) = self.slots[i].child.as_mut() {
            let _ = child.start_kill();
        }
    }

    /// Sends SIGTERM to child `i` and waits for it to exit, at most
    /// `limit`; returns how long it took (`None`: it had to be killed).
    pub(crate) async fn sigterm(&mut self, i: usize, limit: Duration) -> Option<Duration> {
        let child = self.slots[i].child.as_mut()?;
        let pid = child.id()?;
        let started = Instant::now();
        let _ = kill(Pid::from_raw(i32::try_from(pid).ok()?), Signal::SIGTERM);
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(_) => Some(started.elapsed()),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        }
    }

    /// Whether every producer has written all its orders.
    pub(crate) fn producers_done(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| matches!(s.role, Role::Producer { .. }))
            .all(|s| s.finished)
    }

    /// Stops every child with SIGTERM (they are not restarted) and returns
    /// the longest drain (`None` if one had to be killed).
    pub(crate) async fn stop_all(&mut self, limit: Duration) -> Option<Duration> {
        let mut longest = Some(Duration::ZERO);
        for i in 0..self.slots.len() {
            if self.slots[i].child.is_none() {
                continue;
            }
            let took = self.sigterm(i, limit).await;
            longest = match (longest, took) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            self.slots[i].child = None;
            self.slots[i].finished = true;
        }
        self.collect_totals();
        longest
    }

    fn collect_totals(&mut self) {
        let (mut applied, mut duplicates) = (0, 0);
        for s in &self.slots {
            let p = s
                .printed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            applied += p.applied;
            duplicates += p.duplicates;
        }
        self.totals = (applied, duplicates);
    }

    /// Applications and inbox-recognised redeliveries the consumers
    /// reported (a lower bound: a killed consumer's last 100 ms are lost).
    pub(crate) fn consumer_totals(&mut self) -> (u64, u64) {
        self.collect_totals();
        self.totals
    }

    /// Lives started, summed over the children.
    pub(crate) fn lives(&self) -> u32 {
        self.slots.iter().map(|s| s.lives).sum()
    }
}

fn parse_stats(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("stats ")?;
    let mut applied = None;
    let mut duplicates = None;
    for field in rest.split(' ') {
        match field.split_once('=') {
            Some(("applied", v)) => applied = v.parse().ok(),
            Some(("duplicates", v)) => duplicates = v.parse().ok(),
            _ => {}
        }
    }
    Some((applied?, duplicates?))
}

fn exit_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        Exit::Signal(signal)
    } else if status.success() {
        Exit::Clean
    } else {
        Exit::Failed(status.code().unwrap_or(-1))
    }
}

fn exit_name(exit: Exit) -> String {
    match exit {
        Exit::Clean => "clean exit".to_owned(),
        Exit::Signal(9) => "SIGKILL".to_owned(),
        Exit::Signal(6) => "SIGABRT (fail point)".to_owned(),
        Exit::Signal(15) => "SIGTERM".to_owned(),
        Exit::Signal(s) => format!("signal {s}"),
        Exit::Failed(code) => format!("exit code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stats;

    #[test]
    fn stats_lines_parse() {
        assert_eq!(
            parse_stats("stats applied=12 duplicates=3 dead=0 requeued=1"),
            Some((12, 3))
        );
        assert_eq!(parse_stats("ready"), None);
        assert_eq!(parse_stats("stats applied=x duplicates=3"), None);
    }
}
