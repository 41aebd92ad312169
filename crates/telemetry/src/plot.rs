//! SVG plots of result sets, written directly (no plotting dependency):
//! - `time_vs_L_<op>.svg`: median time against L per implementation, with the
//!   floor at the run's ceilings dashed (labelled measured or datasheet, as the
//!   result set's ceilings say);
//! - `fraction_of_floor_vs_L_<op>.svg`: floor / time against L (GPU timings);
//! - `bytes_measured_vs_min.svg`: measured DRAM bytes beside the model minimum;
//! - `reference_workloads.svg`: fraction of floor on docs/DESIGN.md §6's workloads.
//!
//! Series are grouped by implementation and dtype; a sweep point is any result
//! whose workload starts with `L-sweep`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::record::{BenchResult, ResultSet, TimingMethod};

const WIDTH: f64 = 1040.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 400.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 60.0;
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22",
];

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend label.
    pub name: String,
    /// `(x, y)` points in data units, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Draw the line dashed (references and floors).
    pub dashed: bool,
}

/// One series per `(name, points)` entry, all solid or all dashed.
fn series_of(named: BTreeMap<String, Vec<(f64, f64)>>, dashed: bool) -> Vec<Series> {
    named
        .into_iter()
        .map(|(name, points)| Series {
            name,
            points,
            dashed,
        })
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A log-scale axis from `lo` to `hi` (positive), mapped onto `[a, b]` pixels.
struct LogAxis {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

impl LogAxis {
    fn new(values: impl Iterator<Item = f64>, a: f64, b: f64) -> Option<LogAxis> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return None;
        }
        if hi / lo < 1.5 {
            // Widen a nearly flat range so that the ticks make sense.
            lo /= 1.25;
            hi *= 1.25;
        }
        Some(LogAxis {
            lo: lo / 1.08,
            hi: hi * 1.08,
            a,
            b,
        })
    }

    fn map(&self, v: f64) -> f64 {
        let t = (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        self.a + t * (self.b - self.a)
    }

    /// Ticks at 1, 2, 5 x 10^k (or powers of two when `base2`).
    fn ticks(&self, base2: bool) -> Vec<f64> {
        let mut ticks = Vec::new();
        if base2 {
            let mut k = self.lo.log2().ceil() as i32;
            while 2f64.powi(k) <= self.hi {
                ticks.push(2f64.powi(k));
                k += 1;
            }
        } else {
            let mut e = self.lo.log10().floor() as i32;
            while 10f64.powi(e) <= self.hi {
                for m in [1.0, 2.0, 5.0] {
                    let v = m * 10f64.powi(e);
                    if v >= self.lo && v <= self.hi {
                        ticks.push(v);
                    }
                }
                e += 1;
            }
        }
        ticks
    }
}

/// How the y axis is scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YScale {
    /// Logarithmic over the data's range (times).
    Log,
    /// Linear from 0 to at least 1 (fractions of a floor).
    UnitLinear,
}

/// A linear axis from `lo` to `hi`, mapped onto `[a, b]` pixels.
struct LinearAxis {
    lo: f64,
    hi: f64,
    a: f64,
    b: f64,
}

impl LinearAxis {
    fn map(&self, v: f64) -> f64 {
        self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)
    }
    /// Ticks at multiples of 0.2 (of 1 past 2).
    fn ticks(&self) -> Vec<f64> {
        let step = if self.hi > 2.0 { 1.0 } else { 0.2 };
        (0..)
            .map(|i| self.lo + step * i as f64)
            .take_while(|v| *v <= self.hi + 1e-9)
            .collect()
    }
}

enum YAxis {
    Log(LogAxis),
    Linear(LinearAxis),
}

impl YAxis {
    fn new(scale: YScale, values: impl Iterator<Item = f64>, a: f64, b: f64) -> Option<YAxis> {
        match scale {
            YScale::Log => LogAxis::new(values, a, b).map(YAxis::Log),
            YScale::UnitLinear => {
                let max = values.filter(|v| v.is_finite()).fold(f64::NAN, f64::max);
                (!max.is_nan()).then(|| {
                    YAxis::Linear(LinearAxis {
                        lo: 0.0,
                        hi: max.max(1.0) * 1.05,
                        a,
                        b,
                    })
                })
            }
        }
    }
    fn map(&self, v: f64) -> f64 {
        match self {
            YAxis::Log(l) => l.map(v),
            YAxis::Linear(l) => l.map(v),
        }
    }
    fn ticks(&self) -> Vec<f64> {
        match self {
            YAxis::Log(l) => l.ticks(false),
            YAxis::Linear(l) => l.ticks(),
        }
    }
    fn accepts(&self, v: f64) -> bool {
        match self {
            YAxis::Log(_) => v > 0.0,
            YAxis::Linear(_) => v >= 0.0,
        }
    }
}

fn fmt_tick(v: f64) -> String {
    if v >= 1024.0 && (v.log2().fract()).abs() < 1e-9 {
        format!("{}K", v / 1024.0)
    } else if v >= 1000.0 || (v.fract() == 0.0 && v >= 1.0) {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The page, title, axis labels and plot-area border of a chart `height` pixels tall.
fn frame(svg: &mut String, title: &str, x_label: &str, y_label: &str, height: f64) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // "Title | subtitle": the subtitle goes on a second, smaller line.
    let (main, sub) = title.split_once(" | ").unwrap_or((title, ""));
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(main)
    );
    if !sub.is_empty() {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="33" text-anchor="middle" font-size="11" fill="#444">{}</text>"##,
            WIDTH / 2.0,
            escape(sub)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        height - 15.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{y}" text-anchor="middle" transform="rotate(-90 18 {y})">{}</text>"#,
        escape(y_label),
        y = (TOP + height - BOTTOM) / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        WIDTH - LEFT - RIGHT,
        height - TOP - BOTTOM
    );
}

fn empty_message(svg: &mut String, message: &str) {
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">{}</text>"##,
        (LEFT + WIDTH - RIGHT) / 2.0,
        (TOP + HEIGHT - BOTTOM) / 2.0,
        escape(message)
    );
}

fn legend(svg: &mut String, entries: &[(String, &str, bool)]) {
    let x = WIDTH - RIGHT + 12.0;
    for (i, (name, color, dashed)) in entries.iter().enumerate() {
        let y = TOP + 12.0 + 18.0 * i as f64;
        let dash = if *dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>"#,
            x + 22.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 28.0,
            y + 4.0,
            escape(name)
        );
    }
}

/// A line chart with a log x axis (`base2_x`: ticks on powers of two) and a
/// `y_scale` y axis.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    base2_x: bool,
    y_scale: YScale,
) -> String {
    let mut svg = String::new();
    frame(&mut svg, title, x_label, y_label, HEIGHT);
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let axes = LogAxis::new(all().map(|p| p.0), LEFT, WIDTH - RIGHT).zip(YAxis::new(
        y_scale,
        all().map(|p| p.1),
        HEIGHT - BOTTOM,
        TOP,
    ));
    let Some((xa, ya)) = axes else {
        empty_message(&mut svg, "no results for this plot yet");
        svg.push_str("</svg>\n");
        return svg;
    };
    for t in xa.ticks(base2_x) {
        let x = xa.map(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    for t in ya.ticks() {
        let y = ya.map(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let mut entries = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| *x > 0.0 && ya.accepts(*y) && x.is_finite() && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", xa.map(*x), ya.map(*y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                xa.map(*x),
                ya.map(*y)
            );
        }
        entries.push((s.name.clone(), color, s.dashed));
    }
    legend(&mut svg, &entries);
    svg.push_str("</svg>\n");
    svg
}

/// Horizontal grouped bars: one row per category, one bar per series (linear scale from 0).
pub fn bar_chart(
    title: &str,
    x_label: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    mark: Option<f64>,
) -> String {
    let mut svg = String::new();
    let rows = categories.len().max(1) as f64;
    let height = (TOP + BOTTOM + rows * 14.0 * (series.len().max(1) as f64 + 1.0)).max(HEIGHT);
    frame(&mut svg, title, x_label, "", height);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(mark.unwrap_or(0.0), f64::max);
    if categories.is_empty() || series.iter().all(|(_, v)| v.is_empty()) || max <= 0.0 {
        empty_message(&mut svg, "no results for this plot yet");
        svg.push_str("</svg>\n");
        return svg;
    }
    let left = 380.0;
    let span = WIDTH - RIGHT - left;
    let row_h = (height - TOP - BOTTOM) / rows;
    let bar_h = (row_h * 0.8 / series.len().max(1) as f64).min(16.0);
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let x = left + span * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            height - BOTTOM,
            height - BOTTOM + 16.0,
            fmt_tick((v * 1000.0).round() / 1000.0)
        );
    }
    if let Some(m) = mark {
        let x = left + span * m / max;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="#000" stroke-dasharray="4 3"/>"##,
            height - BOTTOM
        );
    }
    for (r, cat) in categories.iter().enumerate() {
        let y0 = TOP + row_h * r as f64 + row_h * 0.1;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"#,
            left - 6.0,
            y0 + row_h * 0.4,
            escape(cat)
        );
        for (s, (_, values)) in series.iter().enumerate() {
            let Some(v) = values.get(r).copied().filter(|v| v.is_finite() && *v > 0.0) else {
                continue;
            };
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{:.1}" width="{:.1}" height="{bar_h:.1}" fill="{}"/>"#,
                y0 + bar_h * s as f64,
                span * v / max,
                PALETTE[s % PALETTE.len()]
            );
        }
    }
    let entries: Vec<(String, &str, bool)> = series
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), PALETTE[i % PALETTE.len()], false))
        .collect();
    legend(&mut svg, &entries);
    svg.push_str("</svg>\n");
    svg
}

/// The shape without L, short enough for a legend (`D5120 N16`, `H80 P64 N128 Q64`).
fn compact_shape(p: &crate::problem::Problem) -> String {
    use crate::problem::Problem;
    match p {
        Problem::Mamba1Scan(s) => format!("b{} D{} N{}", s.batch, s.d_inner, s.d_state),
        Problem::Ssd(s) => format!(
            "b{} H{} P{} N{} Q{}",
            s.batch, s.heads, s.head_dim, s.d_state, s.chunk_size
        ),
        other => other.label(),
    }
}

fn series_name(r: &BenchResult) -> String {
    format!(
        "{} {} {}",
        r.implementation,
        r.problem.dtype(),
        compact_shape(&r.problem)
    )
}

fn is_l_sweep(r: &BenchResult) -> bool {
    r.workload.starts_with("L-sweep") && r.problem.seqlen().is_some()
}

/// `measured`, `datasheet` or `measured|datasheet`: the kinds of ceilings the
/// sets' floors were computed at.
fn kinds(sets: &[ResultSet]) -> String {
    let mut kinds: Vec<&str> = sets.iter().map(|s| s.ceilings.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    if kinds.is_empty() {
        "none".to_string()
    } else {
        kinds.join("|")
    }
}

/// Every plot of the given results: (file name, SVG text).
pub fn plots(sets: &[ResultSet]) -> Vec<(String, String)> {
    let results: Vec<&BenchResult> = sets.iter().flat_map(|s| s.results.iter()).collect();
    let mut out = Vec::new();
    for (op, title) in [
        ("mamba1_scan", "Mamba-1 selective scan"),
        ("ssd", "Mamba-2 SSD"),
    ] {
        // Each result with the kind of its own set's ceilings.
        let sweep: Vec<(&BenchResult, &str)> = sets
            .iter()
            .flat_map(|s| s.results.iter().map(move |r| (r, s.ceilings.kind())))
            .filter(|(r, _)| r.problem.op_name() == op && is_l_sweep(r))
            .collect();
        let mut times: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut fractions: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut floors: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for &(r, kind) in &sweep {
            let l = r.problem.seqlen().unwrap_or(0) as f64;
            times
                .entry(series_name(r))
                .or_default()
                .push((l, r.timing.median_ms));
            if r.timing.method == TimingMethod::CudaEvents {
                // The floor of the shapes the GPU ran, at that run's ceilings (a
                // CPU shape's floor on a GPU would say nothing about the CPU).
                let floor_key = format!(
                    "floor at the run's ceilings ({kind}) {} {}",
                    r.problem.dtype(),
                    compact_shape(&r.problem)
                );
                let f = floors.entry(floor_key).or_default();
                if !f.iter().any(|p| p.0 == l) {
                    f.push((l, r.roofline.floor_ms));
                }
                fractions
                    .entry(series_name(r))
                    .or_default()
                    .push((l, r.roofline.fraction_of_floor));
            }
        }
        let mut series = series_of(times, false);
        // A floor is drawn for a dtype swept over L (single dtype points would clutter).
        floors.retain(|_, points| points.len() > 1);
        series.extend(series_of(floors, true));
        out.push((
            format!("time_vs_L_{op}.svg"),
            line_chart(
                &format!("{title}: median time vs L | CUDA events (GPU), wall clock (CPU ports); dashed: the floor of the GPU shape at the run's ceilings (measured|datasheet)"),
                "sequence length L",
                "time (ms, log)",
                &series,
                true,
                YScale::Log,
            ),
        ));
        let series = series_of(fractions, false);
        out.push((
            format!("fraction_of_floor_vs_L_{op}.svg"),
            line_chart(
                &format!("{title}: fraction of floor vs L | GPU timings; floor = max(bytes, MMA, exp time) at the run's ceilings ({})", kinds(sets)),
                "sequence length L",
                "floor / time (1 = at the floor)",
                &series,
                true,
                YScale::UnitLinear,
            ),
        ));
    }

    let measured: Vec<&&BenchResult> = results
        .iter()
        .filter(|r| r.measured_bytes().is_some())
        .collect();
    let categories: Vec<String> = measured
        .iter()
        .map(|r| {
            format!(
                "{} {} {} ({:.0} MB)",
                r.implementation,
                r.workload,
                r.problem.dtype(),
                r.hbm.model_bytes as f64 / 1e6
            )
        })
        .collect();
    out.push((
        "bytes_measured_vs_min.svg".to_string(),
        bar_chart(
            "DRAM bytes per call: measured (ncu) / minimum (model) | 1 = each input read once and each output written once; below 1: outputs still in L2 when the kernel ends",
            "measured / minimum bytes",
            &categories,
            &[(
                "measured / minimum".to_string(),
                measured
                    .iter()
                    .map(|r| r.hbm.measured_over_model.unwrap_or(f64::NAN))
                    .collect(),
            )],
            Some(1.0),
        ),
    ));

    let reference: Vec<&&BenchResult> = results
        .iter()
        // Default configurations only: converted variant sweeps (`impl[variant]`)
        // belong to the kernels' own notes.
        .filter(|r| {
            r.timing.method == TimingMethod::CudaEvents
                && !r.implementation.contains('[')
                && crate::workloads::reference_workload(&r.workload).is_some()
        })
        .collect();
    let categories: Vec<String> = reference
        .iter()
        .map(|r| format!("{} {} {}", r.workload, r.implementation, r.problem.dtype()))
        .collect();
    out.push((
        "reference_workloads.svg".to_string(),
        bar_chart(
            &format!("docs/DESIGN.md §6 workloads: fraction of floor at the run's ceilings ({}) | floor / median time; 1 = at the floor (bytes, MMA or exp bound, whichever is largest)", kinds(sets)),
            "floor / median time",
            &categories,
            &[(
                "fraction of floor".to_string(),
                reference
                    .iter()
                    .map(|r| r.roofline.fraction_of_floor)
                    .collect(),
            )],
            Some(1.0),
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_chart_draws_every_series_and_escapes_text() {
        let s = vec![
            Series {
                name: "a<b>".into(),
                points: vec![(512.0, 0.1), (1024.0, 0.2), (2048.0, 0.4)],
                dashed: false,
            },
            Series {
                name: "floor".into(),
                points: vec![(512.0, 0.05), (2048.0, 0.2)],
                dashed: true,
            },
        ];
        let svg = line_chart("t & u", "L", "ms", &s, true, YScale::Log);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("a&lt;b&gt;") && svg.contains("t &amp; u"));
        assert!(svg.contains(">1K<") && svg.contains(">512<"));
    }

    #[test]
    fn empty_charts_say_so() {
        let svg = line_chart("t", "x", "y", &[], true, YScale::UnitLinear);
        assert!(svg.contains("no results for this plot yet"));
        let svg = bar_chart("t", "x", &[], &[], None);
        assert!(svg.contains("no results for this plot yet"));
    }

    #[test]
    fn log_ticks() {
        let a = LogAxis::new([0.05, 3.0].into_iter(), 0.0, 1.0).unwrap();
        let t = a.ticks(false);
        assert!(t.contains(&0.1) && t.contains(&1.0) && t.contains(&2.0));
        assert!(a.map(0.05) > 0.0 && a.map(3.0) < 1.0);
    }
    #[test]
    fn floors_are_labelled_with_the_kind_of_ceilings() {
        use crate::record::{DeviceInfo, Measurement, RunInfo, TimingStats};
        use crate::roofline::Ceilings;
        let ceilings = Ceilings::datasheet("NVIDIA H200");
        let mut set = ResultSet::new(RunInfo::default(), DeviceInfo::default(), &ceilings);
        for l in [512, 1024] {
            let problem =
                crate::workloads::mamba1_block_scan(1, 1536, 16, l, ssm_core::DType::Bf16);
            let timing = TimingStats::from_samples(TimingMethod::CudaEvents, &[0.1]).unwrap();
            let workload = format!("L-sweep/L={l}");
            let m = Measurement::forward("mamba1-scan.cuda", workload, problem, timing, vec![]);
            set.results.push(BenchResult::new(m, &ceilings));
        }
        let all = plots(std::slice::from_ref(&set));
        let time = &all
            .iter()
            .find(|(n, _)| n == "time_vs_L_mamba1_scan.svg")
            .unwrap()
            .1;
        assert!(
            time.contains("floor at the run&#39;s ceilings (datasheet)")
                || time.contains("floor at the run's ceilings (datasheet)"),
            "{time}"
        );
        assert!(!time.contains("H100"));
        let fraction = &all
            .iter()
            .find(|(n, _)| n == "fraction_of_floor_vs_L_mamba1_scan.svg")
            .unwrap()
            .1;
        assert!(fraction.contains("ceilings (datasheet)"));
    }
}
