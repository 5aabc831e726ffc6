//! The example is a test too: run on a free port, its endpoint is scraped
//! twice over plain HTTP, and between the scrapes the publish and consume
//! counters must have grown; the outbox gauges, the duration histograms and
//! the inbox duplicate counter must be there under their documented names.
//! Ctrl-C must then stop it cleanly.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the example may take to start, and each counter to move.
const DEADLINE: Duration = Duration::from_secs(30);

/// The example's process, killed if the test ends without stopping it.
struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Example {
    fn start(listen: SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_txmsg-example-metrics"))
            .args([
                "--listen",
                &listen.to_string(),
                "--for",
                "120",
                "--rate",
                "20",
            ])
            .env_remove("METRICS_ADDR")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example");
        Example(child)
    }

    /// Fails the test if the example has already exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.0.try_wait().expect("poll the example") {
            panic!(
                "the example exited early with {status}\nstdout:\n{}\nstderr:\n{}",
                self.read_stdout(),
                self.read_stderr()
            );
        }
    }

    /// Waits up to `DEADLINE` for the example to exit.
    async fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll the example") {
                return status;
            }
            assert!(Instant::now() < until, "the example did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn read_stdout(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut pipe) = self.0.stdout.take() {
            let _ = pipe.read_to_string(&mut out);
        }
        out
    }

    fn read_stderr(&mut self) -> String {
        let mut out = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            let _ = pipe.read_to_string(&mut out);
        }
        out
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address")
}

/// One scrape of `/metrics` over HTTP/1.0: the body of a 200 answer.
async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("answered {status:?}")));
    }
    Ok(body.to_owned())
}

/// Sum of the samples of metric `name` over all its label sets; `None` if
/// it has no sample.
fn total(body: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unreadable sample: {line}"));
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

/// Scrapes until `done` accepts the body, failing after `DEADLINE`.
async fn scrape_until(
    example: &mut Example,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        example.assert_running();
        let last = match scrape(addr).await {
            Ok(body) if done(&body) => return body,
            Ok(body) => body,
            Err(e) => format!("scrape failed: {e}"),
        };
        assert!(
            Instant::now() < until,
            "{what}: not within {DEADLINE:?}; last scrape:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn scrapes_see_the_counters_move_and_every_documented_metric() {
    let addr = free_port();
    let mut example = Example::start(addr);

    let first = scrape_until(&mut example, addr, "first published message", |b| {
        total(b, "txmsg_published_total").is_some_and(|n| n > 0.0)
            && total(b, "txmsg_consumed_total").is_some_and(|n| n > 0.0)
    })
    .await;
    let published = total(&first, "txmsg_published_total").unwrap_or_default();
    let consumed = total(&first, "txmsg_consumed_total").unwrap_or_default();

    let second = scrape_until(&mut example, addr, "counters growing", |b| {
        total(b, "txmsg_published_total").is_some_and(|n| n > published)
            && total(b, "txmsg_consumed_total").is_some_and(|n| n > consumed)
            && total(b, "txmsg_inbox_duplicates_total").is_some_and(|n| n > 0.0)
    })
    .await;

    // The outbox gauges, with their documented names and types.
    for gauge in [
        "txmsg_outbox_pending",
        "txmsg_outbox_oldest_pending_age_seconds",
        "txmsg_outbox_prepared",
    ] {
        assert!(
            second.contains(&format!("# TYPE {gauge} gauge")),
            "{gauge} is not a gauge:\n{second}"
        );
        let value = total(&second, gauge).unwrap_or_else(|| panic!("no {gauge}:\n{second}"));
        assert!(value >= 0.0, "{gauge} = {value}");
    }
    // Both durations, as Prometheus histograms with one observation per
    // publish and per handler call at least.
    for histogram in [
        "txmsg_publish_duration_seconds",
        "txmsg_handle_duration_seconds",
    ] {
        assert!(
            second.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram:\n{second}"
        );
        assert!(
            second.contains(&format!("{histogram}_bucket{{")),
            "no buckets for {histogram}"
        );
        assert!(
            total(&second, &format!("{histogram}_count")).is_some_and(|n| n > 0.0),
            "{histogram} observed nothing"
        );
    }
    let publishes = total(&second, "txmsg_publish_duration_seconds_count").unwrap_or_default();
    assert!(
        publishes >= total(&second, "txmsg_published_total").unwrap_or_default(),
        "fewer publish durations than published messages"
    );
    assert!(
        second.contains("txmsg_published_total{topic=\"orders.placed\"}"),
        "published_total is labelled by topic"
    );
    assert!(
        second.contains("group=\"billing\"") && second.contains("outcome=\"applied\""),
        "consumed_total is labelled by group and outcome"
    );
    assert!(
        second.contains("# HELP txmsg_published_total "),
        "descriptions reach the exporter"
    );

    // Ctrl-C: the example stops on its own, cleanly.
    let pid = Pid::from_raw(i32::try_from(example.0.id()).expect("pid fits"));
    kill(pid, Signal::SIGINT).expect("send SIGINT");
    let status = example.wait_exit().await;
    let stdout = example.read_stdout();
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{stdout}\nstderr:\n{}",
        example.read_stderr()
    );
    assert!(
        stdout.contains(&format!("metrics: http://{addr}/metrics")),
        "{stdout}"
    );
    assert!(stdout.contains("stopped (interrupted)"), "{stdout}");
}
