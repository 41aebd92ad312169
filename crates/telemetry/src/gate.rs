//! The regression gate: compare a new result set with a baseline and list every
//! way a kernel got worse.
//!
//! Results are paired by id (`implementation/workload/dtype`). For each pair:
//! - **slower**: new median > baseline median x (1 + `time_noise` + spread),
//!   where spread is the larger of the two runs' `(p90 - p10) / median`: a
//!   difference inside the measured noise is not a regression;
//! - **more registers**, **more shared memory** (static + dynamic), **spills**
//!   (more spill bytes than before), per kernel name;
//! - **more bytes**: measured DRAM bytes above baseline x (1 + `bytes_tolerance`);
//! - **missing**: a baseline result absent from the new set (unless allowed);
//! - **incomparable**: same id but a different problem, timing method or device.
//!
//! Throttled runs are reported in the notes: their times are suspect either way.

use serde::Serialize;

use crate::record::{BenchResult, ResultSet};

/// Thresholds of the gate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateOptions {
    /// Relative slow-down tolerated on top of the measured spread.
    pub time_noise: f64,
    /// Relative growth of measured DRAM bytes tolerated (counter noise).
    pub bytes_tolerance: f64,
    /// A baseline result missing from the new set is a note, not a failure.
    pub allow_missing: bool,
    /// Compare results taken on different devices (times are then not comparable
    /// and are skipped; resources and bytes are still compared).
    pub allow_device_change: bool,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            time_noise: 0.05,
            bytes_tolerance: 0.02,
            allow_missing: false,
            allow_device_change: false,
        }
    }
}

/// The kinds of regression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    Slower,
    MoreRegisters,
    MoreSharedMemory,
    Spills,
    MoreBytes,
    Missing,
    Incomparable,
}

/// One regression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub id: String,
    /// The kernel at fault, for per-kernel checks.
    pub kernel: Option<String>,
    pub message: String,
}

/// The gate's verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GateReport {
    /// Result pairs compared.
    pub compared: usize,
    pub violations: Vec<Violation>,
    pub notes: Vec<String>,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Human-readable report, one line per finding, verdict last.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for v in &self.violations {
            out += &format!("REGRESSION {:?}: {}: {}\n", v.kind, v.id, v.message);
        }
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        out += &format!(
            "gate: {} result pairs compared, {} regressions: {}\n",
            self.compared,
            self.violations.len(),
            if self.passed() { "PASS" } else { "FAIL" }
        );
        out
    }
}

/// Compare `new` with `baseline`.
pub fn compare(baseline: &ResultSet, new: &ResultSet, opts: &GateOptions) -> GateReport {
    let mut report = GateReport::default();
    let same_device = baseline.device.name == new.device.name;
    if !same_device {
        let msg = format!(
            "baseline device `{}`, new device `{}`",
            baseline.device.name, new.device.name
        );
        if opts.allow_device_change {
            report
                .notes
                .push(format!("{msg}: times not compared (--allow-device-change)"));
        } else {
            report.violations.push(Violation {
                kind: ViolationKind::Incomparable,
                id: "*".into(),
                kernel: None,
                message: format!(
                    "{msg} (pass --allow-device-change to compare resources and bytes only)"
                ),
            });
        }
    }
    for base in &baseline.results {
        let Some(cur) = new.get(&base.id) else {
            let message = "in the baseline, absent from the new results".to_string();
            if opts.allow_missing {
                report.notes.push(format!("{}: {message}", base.id));
            } else {
                report.violations.push(Violation {
                    kind: ViolationKind::Missing,
                    id: base.id.clone(),
                    kernel: None,
                    message,
                });
            }
            continue;
        };
        report.compared += 1;
        compare_pair(base, cur, same_device, opts, &mut report);
    }
    for cur in &new.results {
        if baseline.get(&cur.id).is_none() {
            report.notes.push(format!("{}: new (no baseline)", cur.id));
        }
    }
    report
}

fn compare_pair(
    base: &BenchResult,
    cur: &BenchResult,
    same_device: bool,
    opts: &GateOptions,
    report: &mut GateReport,
) {
    let id = &base.id;
    let mut violation = |kind, kernel: Option<&str>, message: String| {
        report.violations.push(Violation {
            kind,
            id: id.clone(),
            kernel: kernel.map(str::to_string),
            message,
        })
    };
    if base.problem != cur.problem {
        violation(
            ViolationKind::Incomparable,
            None,
            format!(
                "problem changed: `{}` -> `{}`",
                base.problem.label(),
                cur.problem.label()
            ),
        );
        return;
    }
    if base.timing.method != cur.timing.method {
        violation(
            ViolationKind::Incomparable,
            None,
            format!(
                "timing method changed: {:?} -> {:?}",
                base.timing.method, cur.timing.method
            ),
        );
        return;
    }

    if same_device {
        let spread = base.timing.spread.max(cur.timing.spread);
        let allowed = base.timing.median_ms * (1.0 + opts.time_noise + spread);
        if cur.timing.median_ms > allowed {
            violation(
                ViolationKind::Slower,
                None,
                format!(
                    "median {:.4} ms -> {:.4} ms (+{:.1}%), allowed up to {:.4} ms ({:.0}% noise + {:.1}% spread)",
                    base.timing.median_ms,
                    cur.timing.median_ms,
                    100.0 * (cur.timing.median_ms / base.timing.median_ms - 1.0),
                    allowed,
                    100.0 * opts.time_noise,
                    100.0 * spread
                ),
            );
        }
    }

    for bk in &base.kernels {
        let Some(ck) = cur.kernels.iter().find(|k| k.name == bk.name) else {
            report
                .notes
                .push(format!("{id}: kernel `{}` is no longer launched", bk.name));
            continue;
        };
        let (Some(bs), Some(cs)) = (&bk.sram, &ck.sram) else {
            continue;
        };
        let kernel = Some(bk.name.as_str());
        if cs.registers_per_thread > bs.registers_per_thread {
            violation(
                ViolationKind::MoreRegisters,
                kernel,
                format!(
                    "`{}`: {} -> {} registers per thread",
                    bk.name, bs.registers_per_thread, cs.registers_per_thread
                ),
            );
        }
        if cs.smem_per_block() > bs.smem_per_block() {
            violation(
                ViolationKind::MoreSharedMemory,
                kernel,
                format!(
                    "`{}`: {} -> {} bytes of shared memory per block",
                    bk.name,
                    bs.smem_per_block(),
                    cs.smem_per_block()
                ),
            );
        }
        if cs.spills() > bs.spills() {
            violation(
                ViolationKind::Spills,
                kernel,
                format!(
                    "`{}`: spills {} -> {} bytes per thread",
                    bk.name,
                    bs.spills(),
                    cs.spills()
                ),
            );
        }
    }

    match (base.measured_bytes(), cur.measured_bytes()) {
        (Some(b), Some(c)) => {
            let allowed = b as f64 * (1.0 + opts.bytes_tolerance);
            if c as f64 > allowed {
                violation(
                    ViolationKind::MoreBytes,
                    None,
                    format!(
                        "DRAM bytes {b} -> {c} (+{:.1}%, tolerance {:.0}%; minimum {})",
                        100.0 * (c as f64 / b as f64 - 1.0),
                        100.0 * opts.bytes_tolerance,
                        cur.hbm.model_bytes
                    ),
                );
            }
        }
        (Some(_), None) => report
            .notes
            .push(format!("{id}: DRAM bytes measured in the baseline only")),
        _ => {}
    }
    if cur.throttled {
        report.notes.push(format!(
            "{id}: the new run was throttled ({}); its time is suspect",
            cur.nvml
                .as_ref()
                .map(|t| t.throttle_reasons.join(", "))
                .unwrap_or_default()
        ));
    }
}
