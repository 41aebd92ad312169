//! The differential targets of the backward passes (issues 14, 15): decode a
//! problem from bytes, run the f32 CPU backward and the f64 adjoint on the same
//! rounded inputs and incoming gradients, and judge every gradient with the
//! budgets the property tests use (docs/TOLERANCES.md, "Backward" and
//! "Mamba-1 backward"):
//!
//! - [`Target::SsdBackward`] (`ssd_bwd_diff`): `ssd_backward_chunked` against
//!   `ssm_reference::ssd_backward`, judged by
//!   `mamba2_ssd::backward_cpu::tolerance::judge_grads`;
//! - [`Target::ScanBackward`] (`scan_bwd_diff`): `selective_scan_backward_blocked`
//!   against `ssm_reference::mamba1_backward`, judged by
//!   `mamba1_scan::backward_cpu::tolerance::judge_all`.
//!
//! The bytes choose the shape, every option (varlen with per-sequence states,
//! L = 0 and 1, chunk / L-block lengths from 1 to past L), the element type and
//! the step regime; the values come from the generators (`crate::gen`) seeded
//! by the bytes. Every problem lies inside the tolerance model (normal values,
//! the two step regimes): the backward has no envelope of hostile magnitudes
//! yet, so the rule is the in-model one only. The CUDA backward joins when it
//! exists.

use mamba1_scan::backward_cpu::selective_scan_backward_blocked;
use mamba1_scan::backward_cpu::tolerance::judge_all;
use mamba2_ssd::backward_cpu::ssd_backward_chunked;
use mamba2_ssd::backward_cpu::tolerance::judge_grads;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use ssm_core::mamba2::SsdDims;
use ssm_core::{DType, Element, SsmError};
use ssm_gpu::DeviceElement;

use super::draw::Bytes;
use super::targets::ssd_window_log_decay;
use super::{guarded, Ctx, Finding, Outcome, Target};
use crate::gen::{DKind, DtRegime, Mamba1Case, Mamba1Data, SsdCase, SsdData};

/// Largest sequence the targets decode: the f64 adjoint and the magnitude sweep
/// run on every case, so cases stay small (thousands of cases a minute).
const MAX_SEQLEN: usize = 40;

/// `n` standard normals from `seed`, rounded to `T` (the incoming gradients).
fn normals<T: Element>(rng: &mut StdRng, n: usize) -> Vec<T> {
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    ssm_core::element::round_slice(&v)
}

fn finding(target: Target, implementation: &str, problem: &str, detail: String) -> Finding {
    Finding {
        target,
        implementation: implementation.to_string(),
        problem: problem.to_string(),
        class: Some(super::Class::InModel),
        detail,
    }
}

/// The first failing gradient in full, the others by name (each entry starts
/// with the gradient's name).
fn summarize(failed: &[String]) -> String {
    let mut detail = failed[0].clone();
    if failed.len() > 1 {
        let others: Vec<&str> = failed[1..]
            .iter()
            .map(|f| f.split(' ').next().unwrap_or_default())
            .collect();
        detail += &format!("; also {}", others.join(", "));
    }
    detail
}

/// The number of sequences of a decoded varlen option on `batch` rows.
fn rows(batch: usize, varlen: Option<usize>) -> usize {
    varlen.unwrap_or(batch)
}

// ---------------------------------------------------------------- SSD

/// An SSD backward problem decoded from bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct SsdBwdProblem {
    /// Shape and options.
    pub case: SsdCase,
    /// Element type of the tensors.
    pub dtype: DType,
    /// Chunk length of the CPU port.
    pub chunk: usize,
    /// Seeds the values and the incoming gradients.
    pub seed: u64,
}

impl SsdBwdProblem {
    /// Decode a problem from `b` (any bytes decode to a valid problem).
    pub fn decode(b: &mut Bytes<'_>) -> Self {
        let dtype = b.dtype();
        let groups = b.int(1, 2);
        let heads = groups * b.int(1, 2);
        let varlen = b.chance(64).then(|| b.int(1, 4));
        let batch = if varlen.is_some() { 1 } else { b.int(1, 2) };
        let seqlen = b.seqlen(MAX_SEQLEN);
        let dims = SsdDims::new(batch, seqlen, heads, b.int(1, 8), b.int(1, 8), groups);
        let mut case = SsdCase::plain(batch, seqlen, heads, dims.head_dim, dims.d_state, groups);
        case.varlen = varlen;
        case.dt_bias = b.bool();
        case.softplus = b.bool();
        // Limits that clamp some steps of either regime (the clamp's gradient is 0).
        case.dt_limit = b
            .chance(128)
            .then(|| b.pick(&[(1e-3, 0.5), (0.01, 2.0), (0.05, 0.2)]));
        case.d = b.pick(&[DKind::None, DKind::PerHead, DKind::PerHeadDim]);
        case.z = b.bool();
        case.initial_states = b.bool();
        case.final_states = b.bool();
        case.dt = b.pick(&[DtRegime::Typical, DtRegime::Large]);
        let chunk = b.tile(seqlen);
        SsdBwdProblem {
            case,
            dtype,
            chunk,
            seed: b.u64(),
        }
    }

    /// A one-line label for findings.
    pub fn describe(&self) -> String {
        format!(
            "ssd bwd {}{} {} Q{} seed {:#x}",
            self.case.describe(),
            if self.case.final_states { " +fs" } else { "" },
            self.dtype,
            self.chunk,
            self.seed
        )
    }
}

pub(super) fn ssd(bytes: &[u8], _ctx: &Ctx<'_>) -> Result<Outcome, Finding> {
    let problem = SsdBwdProblem::decode(&mut Bytes::new(bytes));
    by_dtype!(problem.dtype, ssd_as(&problem))
}

fn ssd_as<T: Element>(problem: &SsdBwdProblem) -> Result<Outcome, Finding> {
    let target = Target::SsdBackward;
    let describe = problem.describe();
    let data = SsdData::generate(&problem.case, problem.seed);
    let inputs = data.inputs::<T>();
    let p = inputs.params();
    let dims = problem.case.dims;
    let mut rng = StdRng::seed_from_u64(problem.seed ^ 0x9e37_79b9_7f4a_7c15);
    let d_out: Vec<T> = normals(&mut rng, inputs.x.len());
    let state_len = dims.heads * dims.head_dim * dims.d_state;
    let d_final: Option<Vec<f32>> = problem.case.final_states.then(|| {
        let n = rows(dims.batch, problem.case.varlen) * state_len;
        (0..n).map(|_| rng.sample(StandardNormal)).collect()
    });
    let name = format!("cpu-chunked-bwd(Q={})", problem.chunk);
    let oracle = |f: &dyn Fn() -> ssm_core::Result<ssm_core::SsdGrads<f64, f64>>| match guarded(f) {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(finding(
            target,
            "oracle",
            &describe,
            format!("rejected: {e}"),
        )),
        Err(m) => Err(finding(
            target,
            "oracle",
            &describe,
            format!("panicked: {m}"),
        )),
    };
    let want =
        oracle(&|| ssm_reference::ssd_backward::ssd_backward(&p, &d_out, d_final.as_deref()))?;
    let got = match guarded(|| ssd_backward_chunked(&p, &d_out, d_final.as_deref(), problem.chunk))
    {
        Ok(Ok(g)) => g.to_f64(),
        Ok(Err(e)) => return Err(finding(target, &name, &describe, format!("rejected: {e}"))),
        Err(m) => return Err(finding(target, &name, &describe, format!("panicked: {m}"))),
    };
    let k = ssd_window_log_decay(&p, problem.chunk);
    let mut magnitude_error = None;
    let checks = judge_grads(&p, &got, &want, problem.chunk, k, || {
        ssm_reference::ssd_backward::ssd_backward_magnitude(&p, &d_out, d_final.as_deref())
            .map(|d| d.grads)
            .unwrap_or_else(|e| {
                magnitude_error = Some(e.to_string());
                want.clone()
            })
    });
    if let Some(e) = magnitude_error {
        return Err(finding(
            target,
            "oracle",
            &describe,
            format!("magnitude sweep rejected: {e}"),
        ));
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} rel_l2 {:.3e} > budget {:.3e} (+ allowance {:.1e}), max_abs {:.3e}",
                c.name, c.rel_l2, c.budget, c.allowance, c.max_abs
            )
        })
        .collect();
    if !failed.is_empty() {
        return Err(finding(target, &name, &describe, summarize(&failed)));
    }
    let mut outcome = Outcome::default();
    outcome.record(super::Class::InModel, true);
    Ok(outcome)
}

// ---------------------------------------------------------------- Mamba-1

/// A Mamba-1 selective-scan backward problem decoded from bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanBwdProblem {
    /// Shape and options.
    pub case: Mamba1Case,
    /// Element type of the tensors.
    pub dtype: DType,
    /// L-block length of the CPU port.
    pub block_len: usize,
    /// Seeds the values and the incoming gradients.
    pub seed: u64,
}

/// A B or C layout for `d_inner` channels: constant `(D_in, N)` or grouped with
/// a group count that divides `d_inner`.
fn bc_groups(b: &mut Bytes<'_>, d_inner: usize) -> Option<usize> {
    if b.chance(64) {
        return None;
    }
    let divisors: Vec<usize> = (1..=d_inner).filter(|g| d_inner % g == 0).collect();
    Some(b.pick(&divisors))
}

impl ScanBwdProblem {
    /// Decode a problem from `b` (any bytes decode to a valid problem).
    pub fn decode(b: &mut Bytes<'_>) -> Self {
        let dtype = b.dtype();
        let d_inner = b.int(1, 12);
        let varlen = b.chance(64).then(|| b.int(1, 4));
        let batch = if varlen.is_some() { 1 } else { b.int(1, 2) };
        let seqlen = b.seqlen(MAX_SEQLEN);
        let d_state = b.int(1, 8);
        let mut case = Mamba1Case::plain(batch, d_inner, d_state, seqlen);
        case.varlen = varlen;
        case.b_groups = bc_groups(b, d_inner);
        case.c_groups = bc_groups(b, d_inner);
        case.d = b.bool();
        case.z = b.bool();
        case.delta_bias = b.bool();
        case.softplus = b.bool();
        case.initial_states = b.bool();
        case.final_states = b.bool();
        case.dt = b.pick(&[DtRegime::Typical, DtRegime::Large]);
        let block_len = b.tile(seqlen);
        ScanBwdProblem {
            case,
            dtype,
            block_len,
            seed: b.u64(),
        }
    }

    /// A one-line label for findings.
    pub fn describe(&self) -> String {
        format!(
            "scan bwd {}{} {} T{} seed {:#x}",
            self.case.describe(),
            if self.case.final_states { " +fs" } else { "" },
            self.dtype,
            self.block_len,
            self.seed
        )
    }
}

pub(super) fn scan(bytes: &[u8], ctx: &Ctx<'_>) -> Result<Outcome, Finding> {
    let problem = ScanBwdProblem::decode(&mut Bytes::new(bytes));
    by_dtype!(problem.dtype, scan_as(&problem, ctx))
}

/// The CPU blocked backward, and the CUDA backward when there is a GPU, against
/// the f64 adjoint.
fn scan_as<T: DeviceElement>(problem: &ScanBwdProblem, ctx: &Ctx<'_>) -> Result<Outcome, Finding> {
    let target = Target::ScanBackward;
    let describe = problem.describe();
    let data = Mamba1Data::generate(&problem.case, problem.seed);
    let inputs = data.inputs::<T>();
    let p = inputs.params();
    let (batch, d_inner) = (problem.case.dims.batch, problem.case.dims.d_inner);
    let d_state = problem.case.dims.d_state;
    let mut rng = StdRng::seed_from_u64(problem.seed ^ 0x9e37_79b9_7f4a_7c15);
    let d_out: Vec<T> = normals(&mut rng, inputs.x.len());
    let d_final: Option<Vec<f32>> = problem.case.final_states.then(|| {
        let n = rows(batch, problem.case.varlen) * d_inner * d_state;
        (0..n).map(|_| rng.sample(StandardNormal)).collect()
    });
    let dh = d_final.as_deref();
    let name = format!("cpu-blocked-bwd(T={})", problem.block_len);
    let run_oracle = |magnitudes: bool| match guarded(|| {
        if magnitudes {
            ssm_reference::mamba1_backward::selective_scan_backward_magnitudes(&p, &d_out, dh)
        } else {
            ssm_reference::mamba1_backward::selective_scan_backward(&p, &d_out, dh)
        }
    }) {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(finding(
            target,
            "oracle",
            &describe,
            format!("rejected: {e}"),
        )),
        Err(m) => Err(finding(
            target,
            "oracle",
            &describe,
            format!("panicked: {m}"),
        )),
    };
    let want = run_oracle(false)?;
    let mag = run_oracle(true)?;
    let got = match guarded(|| selective_scan_backward_blocked(&p, &d_out, dh, problem.block_len)) {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return Err(finding(target, &name, &describe, format!("rejected: {e}"))),
        Err(m) => return Err(finding(target, &name, &describe, format!("panicked: {m}"))),
    };
    let judge = |name: &str, got: &ssm_core::ScanGrads<T, f32>| -> Result<(), Finding> {
        let failed: Vec<String> = judge_all(&p, got, &want, &mag)
            .iter()
            .filter(|v| !v.passes)
            .map(|v| {
                format!(
                    "{} rel_l2 {:.3e} > budget {:.3e} (+ allowance {:.1e}), max_abs {:.3e}, {} non-finite",
                    v.name,
                    v.comparison.rel_l2,
                    v.budget,
                    v.allowance,
                    v.comparison.max_abs,
                    v.comparison.non_finite
                )
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(finding(target, name, &describe, summarize(&failed)))
        }
    };
    judge(&name, &got)?;
    if let Some(gpu) = ctx.gpu {
        let cuda = "cuda-bwd";
        match guarded(|| mamba1_scan::cuda::selective_scan_backward_cuda(gpu, &p, &d_out, dh)) {
            Ok(Ok(g)) => judge(cuda, &g)?,
            // A shape the kernels do not take (N > 256) is a typed refusal, not a finding.
            Ok(Err(SsmError::Unsupported { .. })) => {}
            Ok(Err(e)) => return Err(finding(target, cuda, &describe, format!("rejected: {e}"))),
            Err(m) => return Err(finding(target, cuda, &describe, format!("panicked: {m}"))),
        }
    }
    let mut outcome = Outcome::default();
    outcome.record(super::Class::InModel, true);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding is total: any bytes (none included) give a valid problem that
    /// passes on the CPU without a planted bug.
    #[test]
    fn random_bytes_decode_to_passing_problems() {
        let mut rng = StdRng::seed_from_u64(11);
        for len in [0usize, 1, 5, 16, 40, 64] {
            for _ in 0..6 {
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if ssm_core::planted::current().is_none() {
                    ssd(&bytes, &Ctx::CPU).unwrap_or_else(|f| panic!("{f}"));
                    scan(&bytes, &Ctx::CPU).unwrap_or_else(|f| panic!("{f}"));
                }
            }
        }
    }

    /// The same bytes decode to the same problem; the description names it.
    #[test]
    fn decoding_is_reproducible() {
        let bytes = [7u8, 200, 3, 9, 1, 0, 255, 17, 42, 99, 5, 6, 7, 8, 9, 10, 11];
        let a = SsdBwdProblem::decode(&mut Bytes::new(&bytes));
        assert_eq!(a, SsdBwdProblem::decode(&mut Bytes::new(&bytes)));
        assert!(a.describe().starts_with("ssd bwd b"));
        let s = ScanBwdProblem::decode(&mut Bytes::new(&bytes));
        assert_eq!(s, ScanBwdProblem::decode(&mut Bytes::new(&bytes)));
        assert!(s.describe().starts_with("scan bwd "));
    }
}
