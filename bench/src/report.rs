//! The `all` mode's outputs: a JSON file of every figure and an SVG plot of
//! the e2e latency distributions.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::backlog::{ConsumerResult, DrainResult, MemoryResult};
use crate::common::Res;
use crate::producer::{E2eResult, ProducerResult};

/// Every figure of one `all` run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// When the run ended (RFC 3339).
    pub(crate) finished_at: String,
    /// CPUs seen by the process.
    pub(crate) cpus: usize,
    /// Rounds per side of e2e, drain and consumer.
    pub(crate) rounds: usize,
    /// Length of a timed e2e round, seconds.
    pub(crate) round_secs: f64,
    /// Rounds per side of the producer mode.
    pub(crate) producer_rounds: usize,
    /// Length of a producer round, seconds.
    pub(crate) producer_round_secs: f64,
    /// `producer`.
    pub(crate) producer: ProducerResult,
    /// `e2e`.
    pub(crate) e2e: E2eResult,
    /// `drain`.
    pub(crate) drain: DrainResult,
    /// `consumer`.
    pub(crate) consumer: ConsumerResult,
    /// `memory`.
    pub(crate) memory: MemoryResult,
}

/// Writes `BENCHMARKS-results.json` and `e2e-latency.svg` into `dir`.
pub(crate) fn write(dir: &Path, report: &Report) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("BENCHMARKS-results.json"), json)?;
    plot(&dir.join("e2e-latency.svg"), &report.e2e)?;
    println!(
        "wrote {} and {}",
        dir.join("BENCHMARKS-results.json").display(),
        dir.join("e2e-latency.svg").display()
    );
    Ok(())
}

/// Cumulative distribution of commit → confirm latency at half of peak,
/// txmsg beside the baseline; the x axis stops at the larger p99.9.
fn plot(path: &Path, e2e: &E2eResult) -> Res<()> {
    let mut fw = e2e.txmsg.half_samples_ms.clone();
    let mut bl = e2e.baseline.half_samples_ms.clone();
    fw.sort_by(f64::total_cmp);
    bl.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| {
        v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(1.0)
    };
    let x_max = q(&fw, 0.999).max(q(&bl, 0.999)).max(0.1) * 1.05;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "commit -> broker confirm at {:.0} msg/s offered (half of peak)",
                e2e.offered
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("percent of messages at or below")
        .draw()?;
    for (samples, color, name) in [(&fw, RED, "txmsg"), (&bl, BLUE, "hand-written baseline")] {
        let n = samples.len().max(1) as f64;
        let step = (samples.len() / 2000).max(1);
        let points: Vec<(f64, f64)> = samples
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, x)| (x.min(x_max), (i + 1) as f64 * 100.0 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
