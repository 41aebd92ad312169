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
//! - **incomparable**: same id but a different problem, timing method or device;
//! - **failed verification**: a new result whose check against the reference
//!   (made before timing) failed.
//!
//! Peer results (mamba_ssm, fla: [`crate::peers`]) are context, not ours: a
//! slower or missing peer is a note. Throttled runs are reported in the notes:
//! their times are suspect either way.
//!
//! Baselines are kept per device, `benches/results/baselines/<slug>.json` with
//! the slug of the CUDA device name ([`device_slug`], [`baseline_path`]): a
//! result set is gated against the baseline of the card it ran on.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::peers::is_peer;
use crate::record::{BenchResult, ResultSet};

/// Where the per-device baselines live, relative to the workspace root.
pub const BASELINES_DIR: &str = "benches/results/baselines";

/// A file-name slug of a device name: lowercase ASCII letters and digits, every
/// other run of characters one `-` (`NVIDIA H100 80GB HBM3` ->
/// `nvidia-h100-80gb-hbm3`).
pub fn device_slug(device_name: &str) -> String {
    let mut slug = String::new();
    for c in device_name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() {
        "unnamed-device".to_string()
    } else {
        slug
    }
}

/// The baseline file of `device_name` under `dir`.
pub fn baseline_path(dir: &Path, device_name: &str) -> PathBuf {
    dir.join(format!("{}.json", device_slug(device_name)))
}

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
    /// New median above the baseline's by more than the noise allowance.
    Slower,
    /// A kernel uses more registers per thread.
    MoreRegisters,
    /// A kernel uses more shared memory (static + dynamic).
    MoreSharedMemory,
    /// A kernel spills more bytes.
    Spills,
    /// Measured DRAM bytes above the baseline's by more than `bytes_tolerance`.
    MoreBytes,
    /// A baseline result absent from the new set.
    Missing,
    /// Same id, but a different problem, timing method or device.
    Incomparable,
    /// The new result's check against the reference failed.
    FailedVerification,
}

/// One regression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// What got worse.
    pub kind: ViolationKind,
    /// The result id (`implementation/workload/dtype`).
    pub id: String,
    /// The kernel at fault, for per-kernel checks.
    pub kernel: Option<String>,
    /// The finding, with both values.
    pub message: String,
}

/// The gate's verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GateReport {
    /// Result pairs compared.
    pub compared: usize,
    /// Every regression found.
    pub violations: Vec<Violation>,
    /// Context that is not a regression (peers, throttling, allowed absences).
    pub notes: Vec<String>,
}

impl GateReport {
    /// No violation.
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
            if opts.allow_missing || is_peer(base) {
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
            check_verification(cur, &mut report);
        }
    }
    report
}

/// A new result whose pre-timing check failed is a regression, paired or not.
fn check_verification(cur: &BenchResult, report: &mut GateReport) {
    if let Some(v) = cur.verification.as_ref().filter(|v| !v.passed) {
        report.violations.push(Violation {
            kind: ViolationKind::FailedVerification,
            id: cur.id.clone(),
            kernel: None,
            message: format!(
                "failed its check against the {} ({}): rel L2 {:.2e} over budget {:.2e}{}",
                v.reference,
                v.sampled,
                v.rel_l2,
                v.budget,
                v.state_rel_l2
                    .zip(v.state_budget)
                    .map_or(String::new(), |(e, b)| format!(
                        ", states {e:.2e} over {b:.2e}"
                    ))
            ),
        });
    }
}

fn compare_pair(
    base: &BenchResult,
    cur: &BenchResult,
    same_device: bool,
    opts: &GateOptions,
    report: &mut GateReport,
) {
    let id = &base.id;
    check_verification(cur, report);
    if is_peer(base) {
        // A peer is context for our numbers: its time moving is worth a note only.
        if same_device && base.timing.median_ms > 0.0 {
            let change = cur.timing.median_ms / base.timing.median_ms - 1.0;
            if change.abs() > opts.time_noise {
                report.notes.push(format!(
                    "{id}: peer median {:.4} -> {:.4} ms ({:+.1}%)",
                    base.timing.median_ms,
                    cur.timing.median_ms,
                    100.0 * change
                ));
            }
        }
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_slugs_are_file_names() {
        assert_eq!(
            device_slug("NVIDIA H100 80GB HBM3"),
            "nvidia-h100-80gb-hbm3"
        );
        assert_eq!(device_slug("NVIDIA H200"), "nvidia-h200");
        assert_eq!(
            device_slug("  cpu: AMD EPYC (2 cores) "),
            "cpu-amd-epyc-2-cores"
        );
        assert_eq!(device_slug("../"), "unnamed-device");
        assert_eq!(
            baseline_path(Path::new("b"), "NVIDIA H200"),
            Path::new("b/nvidia-h200.json")
        );
    }
}
