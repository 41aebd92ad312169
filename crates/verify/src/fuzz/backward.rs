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

/// Mixed into the seed for the incoming gradients, so that they are not the
/// inputs' random stream.
const GRAD_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;

/// `n` standard normals from `rng`, rounded to `T`.
fn normals<T: Element>(rng: &mut StdRng, n: usize) -> Vec<T> {
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    ssm_core::element::round_slice(&v)
}

/// The incoming gradients of a backward check, from their own stream of
/// `seed`: `d_out` of `out_len` elements in `T` and, when the forward returns
/// final states, `d_final_states` of `states` elements (f32, as states are).
/// The backward targets and `ssmk verify --backward` draw them alike.
pub fn cotangents<T: Element>(
    seed: u64,
    out_len: usize,
    states: Option<usize>,
) -> (Vec<T>, Option<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(seed ^ GRAD_STREAM);
    let d_out = normals(&mut rng, out_len);
    let d_final = states.map(|n| normals(&mut rng, n));
    (d_out, d_final)
}

/// `run` under `guarded`: its result, or a finding against `implementation`
/// when it rejects the problem or panics.
fn checked<G>(
    target: Target,
    implementation: &str,
    problem: &str,
    run: impl FnOnce() -> ssm_core::Result<G>,
) -> Result<G, Finding> {
    match guarded(run) {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(finding(
            target,
            implementation,
            problem,
            format!("rejected: {e}"),
        )),
        Err(m) => Err(finding(
            target,
            implementation,
            problem,
            format!("panicked: {m}"),
        )),
    }
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
    let states = rows(dims.batch, problem.case.varlen) * dims.heads * dims.head_dim * dims.d_state;
    let (d_out, d_final) = cotangents::<T>(
        problem.seed,
        inputs.x.len(),
        problem.case.final_states.then_some(states),
    );
    let name = format!("cpu-chunked-bwd(Q={})", problem.chunk);
    let want = checked(target, "oracle", &describe, || {
        ssm_reference::ssd_backward::ssd_backward(&p, &d_out, d_final.as_deref())
    })?;
    let got = checked(target, &name, &describe, || {
        ssd_backward_chunked(&p, &d_out, d_final.as_deref(), problem.chunk)
    })?
    .to_f64();
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
    let dims = problem.case.dims;
    let states = dims.states_len(rows(dims.batch, problem.case.varlen));
    let (d_out, d_final) = cotangents::<T>(
        problem.seed,
        inputs.x.len(),
        problem.case.final_states.then_some(states),
    );
    let dh = d_final.as_deref();
    let name = format!("cpu-blocked-bwd(T={})", problem.block_len);
    let want = checked(target, "oracle", &describe, || {
        ssm_reference::mamba1_backward::selective_scan_backward(&p, &d_out, dh)
    })?;
    let mag = checked(target, "oracle", &describe, || {
        ssm_reference::mamba1_backward::selective_scan_backward_magnitudes(&p, &d_out, dh)
    })?;
    let got = checked(target, &name, &describe, || {
        selective_scan_backward_blocked(&p, &d_out, dh, problem.block_len)
    })?;
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
