//! SVG plots drawn with `plotters` (its SVG backend needs no system fonts or libraries):
//! latency CDFs (TTFT and E2EL) per run, and throughput and P99 latency against the request
//! rate for a sweep.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::runner::{config_names, RunResult};
use crate::BenchError;

fn err(path: &Path, e: impl std::fmt::Display) -> BenchError {
    BenchError::Output { path: path.display().to_string(), problem: e.to_string() }
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws one labelled line.
fn line(
    chart: &mut Chart,
    path: &Path,
    pts: Vec<(f64, f64)>,
    label: String,
    color: RGBColor,
) -> Result<(), BenchError> {
    chart
        .draw_series(LineSeries::new(pts, color.stroke_width(2)))
        .map_err(|e| err(path, e))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    Ok(())
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, path: &Path) -> Result<(), BenchError> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(path, e))
}

fn cdf(mut v: Vec<f64>) -> Vec<(f64, f64)> {
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.into_iter().enumerate().map(|(i, x)| (x, (i + 1) as f64 / n)).collect()
}

/// TTFT (top) and E2EL (bottom) CDFs, one line per run.
pub fn latency_cdfs(path: &Path, runs: &[RunResult]) -> Result<(), BenchError> {
    let root = SVGBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let panels = root.split_evenly((2, 1));
    type Pick = fn(&crate::metrics::RequestRecord) -> Option<f64>;
    let picks: [(&str, Pick); 2] = [("TTFT (ms)", |r| r.ttft), ("E2E latency (ms)", |r| Some(r.latency))];
    for (panel, (label, pick)) in panels.iter().zip(picks) {
        let series: Vec<(String, Vec<(f64, f64)>)> = runs
            .iter()
            .map(|run| {
                let v = run.results.iter().filter(|r| r.success).filter_map(pick).map(|s| s * 1e3).collect();
                (format!("{} #{}", run.name, run.run_num), cdf(v))
            })
            .collect();
        let xmax = series.iter().flat_map(|s| s.1.iter().map(|p| p.0)).fold(1.0f64, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{label} CDF"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..xmax, 0.0..1.0)
            .map_err(|e| err(path, e))?;
        chart.configure_mesh().x_desc(label).y_desc("fraction of requests").draw().map_err(|e| err(path, e))?;
        for (i, (name, pts)) in series.into_iter().enumerate() {
            line(&mut chart, path, pts, name, COLORS[i % COLORS.len()])?;
        }
        legend(&mut chart, path)?;
    }
    root.present().map_err(|e| err(path, e))
}

/// Output tokens/s (top) and P99 TTFT and E2EL (bottom) against the request rate, one line
/// per configuration. Runs without a finite rate are left out.
pub fn rate_sweep(path: &Path, runs: &[RunResult]) -> Result<(), BenchError> {
    let names = config_names(runs.iter().filter(|r| r.request_rate.is_some()));
    let points = |name: &str, f: &dyn Fn(&RunResult) -> f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> =
            runs.iter().filter(|r| r.name == name).filter_map(|r| Some((r.request_rate?, f(r)))).collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let xmax = runs.iter().filter_map(|r| r.request_rate).fold(1.0f64, f64::max) * 1.05;
    let root = SVGBackend::new(path, (900, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let panels = root.split_evenly((2, 1));
    type Line = (&'static str, fn(&RunResult) -> f64);
    let tops: [Line; 1] = [("output tok/s", |r| r.summary.output_throughput)];
    let bottoms: [Line; 2] = [
        ("P99 TTFT", |r| r.summary.ttft_ms.p(99.0).unwrap_or(0.0)),
        ("P99 E2EL", |r| r.summary.e2el_ms.p(99.0).unwrap_or(0.0)),
    ];
    for (panel, (title, lines)) in panels
        .iter()
        .zip([("throughput vs request rate", &tops[..]), ("P99 latency (ms) vs request rate", &bottoms[..])])
    {
        let ymax = names
            .iter()
            .flat_map(|n| lines.iter().flat_map(move |(_, f)| points(n, f)))
            .map(|p| p.1)
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(|e| err(path, e))?;
        chart.configure_mesh().x_desc("request rate (req/s)").draw().map_err(|e| err(path, e))?;
        let mut i = 0;
        for name in &names {
            for (label, f) in lines {
                let color = COLORS[i % COLORS.len()];
                i += 1;
                let pts = points(name, f);
                line(&mut chart, path, pts.clone(), format!("{name} {label}"), color)?;
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(|e| err(path, e))?;
            }
        }
        legend(&mut chart, path)?;
    }
    root.present().map_err(|e| err(path, e))
}
