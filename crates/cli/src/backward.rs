//! `ssmk verify ssd|scan --shape ... --backward`: the CPU backward passes on a
//! shape the user types, every gradient judged against the f64 adjoint.
//!
//! The inputs are the forward's (`ssm_verify::gen`, drawn from `--seed`); the
//! incoming gradients `d_out` (and `d_final_states` when the options return
//! final states) are standard normals drawn from the same seed, `d_out` rounded
//! to the element type. The judges are the ones the property tests and the
//! backward fuzz targets use, so a row here passes exactly when those would:
//! `mamba2_ssd::backward_cpu::tolerance::judge_grads` (SSD) and
//! `mamba1_scan::backward_cpu::tolerance::judge_all` (scan), against
//! `ssm_reference::{ssd_backward, mamba1_backward}`. The scan's CUDA backward
//! (`mamba1_scan::cuda::selective_scan_backward_cuda`) joins with `--impl cuda`
//! and a GPU; the SSD has no CUDA backward in this build, so there `--impl cuda`
//! is named as not verified (and is an error when it is the only one asked for).

use std::time::Instant;

use half::{bf16, f16};
use mamba1_scan::backward_cpu::selective_scan_backward_blocked;
use mamba1_scan::backward_cpu::tolerance::judge_all;
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use mamba2_ssd::backward_cpu::tolerance::judge_grads;
use ssm_core::{DType, Element};
use ssm_gpu::{DeviceElement, Gpu};
use ssm_verify::fuzz::backward::cotangents;
use ssm_verify::fuzz::ssd_window_log_decay;
use ssm_verify::gen::{Mamba1Case, Mamba1Data, SsdCase, SsdData};

/// Why `--impl cuda` is not verified with `ssd --backward`.
pub const NO_CUDA_BACKWARD: &str =
    "the SSD's CUDA backward is not available in this build: ssd --backward verifies --impl cpu only";

/// One gradient of a backward verification.
#[derive(Clone, Debug)]
pub struct GradRow {
    pub implementation: String,
    pub problem: String,
    pub dtype: DType,
    /// `dx`, `ddt`, `dA`, ... (`-` when the port returned no gradients).
    pub gradient: &'static str,
    pub rel_l2: f64,
    pub max_abs: f64,
    /// The relative budget of the gradient's storage type.
    pub budget: f64,
    /// The absolute allowance for a cancelling reduction (0 where none was needed).
    pub allowance: f64,
    /// Wall time of the whole backward call (the same on each of its rows).
    pub time_ms: f64,
    pub passed: bool,
    /// Why the port returned no gradients, if it did not.
    pub error: Option<String>,
}

impl GradRow {
    fn failed_call(implementation: String, problem: String, dtype: DType, e: String) -> Self {
        GradRow {
            implementation,
            problem,
            dtype,
            gradient: "-",
            rel_l2: f64::NAN,
            max_abs: f64::NAN,
            budget: f64::NAN,
            allowance: 0.0,
            time_ms: 0.0,
            passed: false,
            error: Some(e),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "implementation": self.implementation,
            "problem": self.problem,
            "dtype": self.dtype.name(),
            "gradient": self.gradient,
            "rel_l2": self.rel_l2,
            "max_abs": self.max_abs,
            "budget": self.budget,
            "allowance": self.allowance,
            "time_ms": self.time_ms,
            "passed": self.passed,
            "error": self.error,
        })
    }
}

/// The header of the backward table (the forward's columns, with the gradient's
/// name and its cancellation allowance in place of the state error).
pub fn table_header() -> String {
    format!(
        "{:<24} {:<62} {:<5} {:<14} {:>10} {:>10} {:>10} {:>10} {:>9}  {}",
        "implementation",
        "shape",
        "dtype",
        "gradient",
        "rel err",
        "max abs",
        "budget",
        "allowance",
        "time ms",
        "result"
    )
}

pub fn table_line(r: &GradRow) -> String {
    let verdict = match (&r.error, r.passed) {
        (Some(e), _) => format!("FAIL: {e}"),
        (None, true) => "PASS".to_string(),
        (None, false) => "FAIL".to_string(),
    };
    format!(
        "{:<24} {:<62} {:<5} {:<14} {:>10.2e} {:>10.2e} {:>10.1e} {:>10.1e} {:>9.1}  {}",
        r.implementation,
        r.problem,
        r.dtype.name(),
        r.gradient,
        r.rel_l2,
        r.max_abs,
        r.budget,
        r.allowance,
        r.time_ms,
        verdict
    )
}

/// Which backward: the SSD's has no CUDA implementation in this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Ssd,
    Scan,
}

/// The implementations of a backward run: `cpu` and `cuda` (the scan's); for
/// the SSD `cuda` is accepted beside `cpu` and reported as not verified.
pub fn check_impls(op: Op, impls: &[&str]) -> Result<(), String> {
    if let Some(bad) = impls.iter().find(|n| !matches!(**n, "cpu" | "cuda")) {
        return Err(format!(
            "--impl: `{bad}` has no backward (with --backward: cpu, cuda)"
        ));
    }
    if op == Op::Ssd && !impls.contains(&"cpu") {
        return Err(format!("--impl: {NO_CUDA_BACKWARD}"));
    }
    Ok(())
}

/// A case's label, `+fs` when it asks for final states (their gradient is
/// then an input of the backward).
fn problem_label(described: String, final_states: bool) -> String {
    if final_states {
        described + " +fs"
    } else {
        described
    }
}

fn oracle_err(e: ssm_core::SsmError) -> String {
    format!("the f64 adjoint rejected the problem: {e}")
}

macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::Bf16 => $f::<bf16>($($arg),*),
            DType::F64 => Err(
                "--dtype f64: the CPU backward stores f32, f16 or bf16 inputs".to_string()
            ),
        }
    };
}

/// The SSD backward with chunk length `chunk` on `case`, one row per gradient.
pub fn ssd(case: &SsdCase, dtype: DType, chunk: usize, seed: u64) -> Result<Vec<GradRow>, String> {
    by_dtype!(dtype, ssd_as(case, chunk, seed))
}

fn ssd_as<T: Element>(case: &SsdCase, chunk: usize, seed: u64) -> Result<Vec<GradRow>, String> {
    let data = SsdData::generate(case, seed);
    let inputs = data.inputs::<T>();
    let p = inputs.params();
    let implementation = format!("ssd cpu chunked-bwd/{chunk}");
    let states = case
        .final_states
        .then(|| case.dims.states_len(case.dims.batch));
    let (d_out, d_final) = cotangents::<T>(seed, inputs.x.len(), states);
    let dfs = d_final.as_deref();
    let want = ssm_reference::ssd_backward::ssd_backward(&p, &d_out, dfs).map_err(oracle_err)?;
    let problem = problem_label(case.describe(), case.final_states);
    let start = Instant::now();
    let got = match ssd_backward_chunked(&p, &d_out, dfs, chunk) {
        Ok(g) => g.to_f64(),
        Err(e) => {
            return Ok(vec![GradRow::failed_call(
                implementation,
                problem,
                T::DTYPE,
                format!("rejected: {e}"),
            )])
        }
    };
    let time_ms = start.elapsed().as_secs_f64() * 1e3;
    let k = ssd_window_log_decay(&p, chunk);
    let mut magnitude_error = None;
    let checks = judge_grads(&p, &got, &want, chunk, k, || {
        ssm_reference::ssd_backward::ssd_backward_magnitude(&p, &d_out, dfs)
            .map(|m| m.grads)
            .unwrap_or_else(|e| {
                magnitude_error = Some(e.to_string());
                want.clone()
            })
    });
    if let Some(e) = magnitude_error {
        return Err(format!("the f64 magnitude sweep rejected the problem: {e}"));
    }
    Ok(checks
        .into_iter()
        .map(|c| GradRow {
            implementation: implementation.clone(),
            problem: problem.clone(),
            dtype: T::DTYPE,
            gradient: c.name,
            rel_l2: c.rel_l2,
            max_abs: c.max_abs,
            budget: c.budget,
            allowance: c.allowance,
            time_ms,
            passed: c.passed,
            error: None,
        })
        .collect())
}

/// The Mamba-1 scan backward on `case`: the blocked CPU port with time block
/// `block_len` when `cpu`, the CUDA backward when `gpu`.
pub fn scan(
    case: &Mamba1Case,
    dtype: DType,
    block_len: usize,
    seed: u64,
    cpu: bool,
    gpu: Option<&Gpu>,
) -> Result<Vec<GradRow>, String> {
    by_dtype!(dtype, scan_as(case, block_len, seed, cpu, gpu))
}

fn scan_as<T: DeviceElement>(
    case: &Mamba1Case,
    block_len: usize,
    seed: u64,
    cpu: bool,
    gpu: Option<&Gpu>,
) -> Result<Vec<GradRow>, String> {
    let data = Mamba1Data::generate(case, seed);
    let inputs = data.inputs::<T>();
    let p = inputs.params();
    let states = case
        .final_states
        .then(|| case.dims.states_len(case.dims.batch));
    let (d_out, d_final) = cotangents::<T>(seed, inputs.x.len(), states);
    let dh = d_final.as_deref();
    let want = ssm_reference::mamba1_backward::selective_scan_backward(&p, &d_out, dh)
        .map_err(oracle_err)?;
    let magnitude =
        ssm_reference::mamba1_backward::selective_scan_backward_magnitudes(&p, &d_out, dh)
            .map_err(oracle_err)?;
    let problem = problem_label(case.describe(), case.final_states);
    let mut rows = Vec::new();
    let mut judge = |implementation: String,
                     got: ssm_core::Result<ssm_core::ScanGrads<T, f32>>,
                     time_ms: f64| {
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                rows.push(GradRow::failed_call(
                    implementation,
                    problem.clone(),
                    T::DTYPE,
                    format!("rejected: {e}"),
                ));
                return;
            }
        };
        rows.extend(judge_all(&p, &got, &want, &magnitude).into_iter().map(|v| {
            GradRow {
                implementation: implementation.clone(),
                problem: problem.clone(),
                dtype: T::DTYPE,
                gradient: v.name,
                rel_l2: v.comparison.rel_l2,
                max_abs: v.comparison.max_abs,
                budget: v.budget,
                allowance: if v.comparison.passes(v.budget) {
                    0.0
                } else {
                    v.allowance
                },
                time_ms,
                passed: v.passes,
                error: (v.comparison.non_finite > 0)
                    .then(|| format!("{} non-finite elements", v.comparison.non_finite)),
            }
        }));
    };
    if cpu {
        let start = Instant::now();
        let got = selective_scan_backward_blocked(&p, &d_out, dh, block_len);
        judge(
            format!("m1 cpu blocked-bwd/{block_len}"),
            got,
            start.elapsed().as_secs_f64() * 1e3,
        );
    }
    if let Some(gpu) = gpu {
        // Host to host, uploads and downloads included (as the forward's CUDA rows).
        let start = Instant::now();
        let got = mamba1_scan::cuda::selective_scan_backward_cuda(gpu, &p, &d_out, dh);
        judge(
            "m1 cuda-bwd".to_string(),
            got,
            start.elapsed().as_secs_f64() * 1e3,
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_problems_pass_every_gradient() {
        let mut case = SsdCase::plain(1, 37, 2, 4, 3, 1);
        case.final_states = true;
        case.initial_states = true;
        let rows = ssd(&case, DType::Bf16, 16, 5).unwrap();
        assert!(rows.len() >= 5 && rows.iter().all(|r| r.passed), "{rows:?}");
        let mut case = Mamba1Case::plain(2, 6, 4, 29);
        case.final_states = true;
        let rows = scan(&case, DType::F32, 8, 5, true, None).unwrap();
        assert!(rows.len() >= 4 && rows.iter().all(|r| r.passed), "{rows:?}");
    }

    #[test]
    fn cuda_alone_is_named_as_unavailable() {
        assert!(check_impls(Op::Ssd, &["cuda"])
            .unwrap_err()
            .contains("not available"));
        assert!(check_impls(Op::Scan, &["cuda"]).is_ok());
        assert!(check_impls(Op::Ssd, &["cpu", "quadratic"])
            .unwrap_err()
            .contains("quadratic"));
        assert!(check_impls(Op::Ssd, &["cuda", "cpu"]).is_ok());
    }
}
