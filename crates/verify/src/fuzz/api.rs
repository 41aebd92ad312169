//! The API target: malformed parameters must give a typed error, never a panic.
//!
//! Sizes are drawn from a palette of hostile values (0, 1, 2^31, 2^32 + 1, 2^40,
//! `usize::MAX`, ...) and tensors get the length the shape implies, or one off, or
//! anything small; options get wrong lengths, `cu_seqlens` arbitrary offsets,
//! `dt_limit` arbitrary floats (min > max, NaN), `state_batch_indices` arbitrary
//! entries, and `check_finite` meets NaN and Inf. Then:
//!
//! * `validate` is the contract: when it fails, the oracle and the CPU ports fail
//!   with the same error (a CUDA implementation with any error); when it passes,
//!   they succeed with outputs of the shape the parameters imply;
//! * with `check_finite` on, a non-finite value in any input tensor must fail
//!   validation;
//! * nobody panics.
//!
//! A problem that validates but implies more than [`MAX_OUTPUT_ELEMENTS`]
//! output or state elements is counted as skipped and not run: it is slow for
//! no new coverage. (What cannot be allocated at all is a typed error from
//! validation since the fixed finding `huge_dims_with_empty_sequence`,
//! docs/FUZZING.md; that part is run.)

use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::{Result, ScanOutput, SsmError};

use super::draw::Bytes;
use super::verdict::Class;
use super::{guarded, Ctx, Finding, Outcome, Target};

/// Problems implying more output or state elements than this are not run by the
/// API target (see the module docs).
pub const MAX_OUTPUT_ELEMENTS: u128 = 1 << 20;

/// The bytes, and whether this problem is *consistent*: tensors get exactly the
/// lengths their shapes imply and hostile sizes are rare, so that about half the
/// problems pass validation and reach the implementations; otherwise lengths are
/// often wrong.
struct Hostile<'a> {
    bytes: Bytes<'a>,
    consistent: bool,
}

impl<'a> std::ops::Deref for Hostile<'a> {
    type Target = Bytes<'a>;
    fn deref(&self) -> &Bytes<'a> {
        &self.bytes
    }
}

impl std::ops::DerefMut for Hostile<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.bytes
    }
}

/// A size: small most of the time, sometimes hostile.
fn dim(b: &mut Hostile<'_>) -> usize {
    const HOSTILE: &[usize] = &[
        0,
        1 << 20,
        1 << 31,
        (1 << 32) + 1,
        1 << 40,
        usize::MAX / 2 + 1,
        usize::MAX,
    ];
    let odds = if b.consistent { 8 } else { 40 };
    if b.chance(odds) {
        b.pick(HOSTILE)
    } else {
        b.int(1, 6)
    }
}

/// A group count for `count` channels or heads: hostile, or a divisor when the
/// problem is consistent.
fn groups(b: &mut Hostile<'_>, count: usize) -> usize {
    if b.consistent && !b.chance(8) {
        if b.bool() {
            count
        } else {
            1
        }
    } else {
        dim(b)
    }
}

/// A `dt_limit`: arbitrary floats (min > max, NaN), or valid when consistent.
fn dt_limit(b: &mut Hostile<'_>) -> (f32, f32) {
    match (b.consistent, b.bool()) {
        (_, false) => ssm_core::mamba2::NO_DT_LIMIT,
        (true, true) => (0.001, 5.0),
        (false, true) => (b.f32(), b.f32()),
    }
}

/// Longest tensor the API target builds.
const MAX_TENSOR: usize = 4096;

/// The length of a tensor whose shape implies `expected` elements (`None` when
/// the product overflows): right, one off, or anything small; never above
/// [`MAX_TENSOR`].
fn length(b: &mut Hostile<'_>, expected: Option<usize>) -> usize {
    let small = expected.filter(|&e| e <= MAX_TENSOR);
    let pick = if b.consistent { 9 } else { b.int(0, 9) };
    match (pick, small) {
        (0, Some(e)) => (e + 1).min(MAX_TENSOR),
        (1, Some(e)) => e.saturating_sub(1),
        (2, _) | (_, None) => b.int(0, 40),
        (_, Some(e)) => e,
    }
}

fn product(sizes: &[usize]) -> Option<usize> {
    sizes.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s))
}

/// `len` finite values, with a NaN or an infinity now and then.
fn values(b: &mut Hostile<'_>, len: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..len)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
        .collect();
    if len > 0 && b.chance(48) {
        let at = b.int(0, len - 1);
        v[at] = b.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    }
    v
}

/// A tensor for a shape of `expected` elements (see [`length`]).
fn tensor(b: &mut Hostile<'_>, expected: Option<usize>) -> Vec<f32> {
    let len = length(b, expected);
    values(b, len)
}

/// A negative `A` tensor (the contract does not care about signs; negative rates
/// keep the oracle's values in range).
fn rates(b: &mut Hostile<'_>, expected: Option<usize>) -> Vec<f32> {
    tensor(b, expected).iter().map(|v| -v.abs() - 0.5).collect()
}

fn optional(b: &mut Hostile<'_>, expected: Option<usize>) -> Option<Vec<f32>> {
    b.bool().then(|| tensor(b, expected))
}

fn cu_seqlens(b: &mut Hostile<'_>, seqlen: usize) -> Option<Vec<i64>> {
    let hi = if b.consistent { 1 } else { 3 };
    match b.int(0, hi) {
        0 => None,
        1 => {
            let n = b.int(1, 4);
            Some(b.cu_seqlens(seqlen, n))
        }
        _ => {
            let n = b.int(0, 6);
            let l = seqlen as i64;
            Some(
                (0..n)
                    .map(|_| b.pick(&[0, 1, -1, l, l.wrapping_add(1), l / 2, i64::MAX, i64::MIN]))
                    .collect(),
            )
        }
    }
}

/// Lengths of the final states and output the parameters imply, when they fit u128.
fn implied(out: &[usize], states: &[usize]) -> u128 {
    let p = |s: &[usize]| {
        s.iter()
            .fold(1u128, |acc, &d| acc.saturating_mul(d as u128))
    };
    p(out).max(p(states))
}

/// Any non-finite value in the listed tensors.
fn any_non_finite(tensors: &[Option<&[f32]>]) -> bool {
    tensors
        .iter()
        .flatten()
        .any(|t| t.iter().any(|v| !v.is_finite()))
}

/// Every input tensor of a scan or SSD call: the five each call has, then the
/// four optional ones.
fn sequence_tensors<'t>(
    always: [&'t Vec<f32>; 5],
    optional: [&'t Option<Vec<f32>>; 4],
) -> Vec<Option<&'t [f32]>> {
    let always = always.into_iter().map(|t| Some(&t[..]));
    always.chain(optional.map(Option::as_deref)).collect()
}

/// The contract checks shared by every operation.
struct Contract {
    target_problem: String,
    outcome: Outcome,
}

impl Contract {
    fn new(target_problem: String) -> Self {
        Contract {
            target_problem,
            outcome: Outcome::default(),
        }
    }

    /// Validate's answer; a panic in it is a finding of its own, and so is,
    /// with `check_finite` on, accepting a non-finite value in any of `tensors`
    /// (every input tensor of the operation). Returns the answer without its
    /// value, and the value (`T::default()` where validation rejected the call).
    fn validate<T: Default>(
        &self,
        check_finite: bool,
        tensors: &[Option<&[f32]>],
        run: impl FnOnce() -> Result<T>,
    ) -> std::result::Result<(Result<()>, T), Finding> {
        let valid = guarded(run).map_err(|m| self.finding("validate", format!("panicked: {m}")))?;
        if check_finite && valid.is_ok() && any_non_finite(tensors) {
            return Err(self.finding(
                "validate",
                "accepted a non-finite input although check_finite is on".into(),
            ));
        }
        Ok(match valid {
            Ok(value) => (Ok(()), value),
            Err(e) => (Err(e), T::default()),
        })
    }

    /// The outcome once every implementation agreed with validation: the
    /// problem counts as out of range when valid, else as invalid.
    fn finish(mut self, valid: &Result<()>) -> std::result::Result<Outcome, Finding> {
        self.outcome.record(
            if valid.is_ok() {
                Class::OutOfRange
            } else {
                Class::Invalid
            },
            true,
        );
        Ok(self.outcome)
    }

    fn finding(&self, implementation: &str, detail: String) -> Finding {
        Finding {
            target: Target::Api,
            implementation: implementation.into(),
            problem: self.target_problem.clone(),
            class: None,
            detail,
        }
    }

    /// `valid` is validate's answer; `lens` the output and state lengths a
    /// successful call must return; `own_error` an error an implementation may add
    /// for its own options (a zero L-block or chunk).
    fn check(
        &mut self,
        name: &str,
        valid: &Result<()>,
        lens: (usize, Option<usize>),
        own_error: bool,
        may_decline: bool,
        run: impl FnOnce() -> Result<(usize, Option<usize>)>,
    ) -> std::result::Result<(), Finding> {
        let got = guarded(run).map_err(|m| self.finding(name, format!("panicked: {m}")))?;
        match (valid, got) {
            (Err(_), Err(_)) if may_decline => {}
            // By message: `NonFinite` carries the value, and NaN != NaN.
            (Err(v), Err(g)) if v.to_string() == g.to_string() => {}
            (Err(v), Err(g)) => {
                return Err(self.finding(name, format!("error `{g}` differs from validate's `{v}`")))
            }
            (Err(v), Ok(_)) => {
                return Err(self.finding(name, format!("succeeded although validate says `{v}`")))
            }
            (Ok(()), Err(SsmError::Unsupported { .. })) if may_decline => {}
            (Ok(()), Err(SsmError::Dimension { .. })) if own_error => {}
            (Ok(()), Err(g)) => {
                return Err(self.finding(name, format!("failed on valid parameters: `{g}`")))
            }
            (Ok(()), Ok(got)) if got != lens => {
                return Err(self.finding(
                    name,
                    format!("returned (out, states) lengths {got:?}, expected {lens:?}"),
                ))
            }
            (Ok(()), Ok(_)) => {}
        }
        Ok(())
    }
}

fn lens(o: &ScanOutput<impl Copy, impl Copy>) -> (usize, Option<usize>) {
    (o.out.len(), o.final_states.as_ref().map(Vec::len))
}

pub(super) fn api(bytes: &[u8], ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
    let mut bytes = Bytes::new(bytes);
    let consistent = bytes.bool();
    let mut b = Hostile { bytes, consistent };
    match b.int(0, 3) {
        0 => scan(&mut b, ctx),
        1 => ssd(&mut b, ctx),
        2 => mamba1_step(&mut b, ctx),
        _ => mamba2_step(&mut b, ctx),
    }
}

fn skipped() -> std::result::Result<Outcome, Finding> {
    Ok(Outcome {
        skipped_large: 1,
        ..Outcome::default()
    })
}

fn scan(b: &mut Hostile<'_>, ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
    let dims = Mamba1Dims::new(dim(b), dim(b), dim(b), if b.bool() { 0 } else { dim(b) });
    let (batch, d_inner, d_state, seqlen) = (dims.batch, dims.d_inner, dims.d_state, dims.seqlen);
    let bdl = product(&[batch, d_inner, seqlen]);
    let u = tensor(b, bdl);
    let delta = tensor(b, bdl);
    let a = rates(b, product(&[d_inner, d_state]));
    let bc = |b: &mut Hostile<'_>| -> (Option<usize>, Vec<f32>) {
        if b.bool() {
            let g = groups(b, d_inner);
            let len = length(b, product(&[batch, g, d_state, seqlen]));
            (Some(g), values(b, len))
        } else {
            let len = length(b, product(&[d_inner, d_state]));
            (None, values(b, len))
        }
    };
    let (b_groups, b_data) = bc(b);
    let (c_groups, c_data) = bc(b);
    let d = optional(b, Some(d_inner));
    let z = optional(b, bdl);
    let bias = optional(b, Some(d_inner));
    let cu = cu_seqlens(b, seqlen);
    let seqs = cu.as_ref().map_or(batch, |c| c.len().saturating_sub(1));
    let h0 = optional(b, product(&[seqs, d_inner, d_state]));
    let tensors = sequence_tensors([&u, &delta, &a, &b_data, &c_data], [&d, &z, &bias, &h0]);
    let block_len = b.pick(&[256, 0, 1, 3, usize::MAX]);
    let p = SelectiveScanParams {
        d: d.as_deref(),
        z: z.as_deref(),
        delta_bias: bias.as_deref(),
        delta_softplus: b.bool(),
        initial_states: h0.as_deref(),
        cu_seqlens: cu.as_deref(),
        return_final_states: b.bool(),
        check_finite: b.bool(),
        ..SelectiveScanParams::new(
            dims,
            &u,
            &delta,
            &a,
            BcInput::from_groups(b_groups, &b_data),
            BcInput::from_groups(c_groups, &c_data),
        )
    };
    let mut c = Contract::new(format!(
            "api scan {dims:?} B:{b_groups:?} C:{c_groups:?} block {block_len} cu {cu:?} final {} check_finite {}",
            p.return_final_states, p.check_finite
        ));
    let (valid, num_seqs) = c.validate(p.check_finite, &tensors, || Ok(p.validate()?.num_seqs))?;
    let states = [num_seqs, d_inner, d_state];
    if valid.is_ok() && implied(&[batch, d_inner, seqlen], &states) > MAX_OUTPUT_ELEMENTS {
        return skipped();
    }
    let want = (
        u.len(),
        p.return_final_states
            .then(|| num_seqs.wrapping_mul(d_inner).wrapping_mul(d_state)),
    );
    c.check("m1 reference f64", &valid, want, false, false, || {
        ssm_reference::selective_scan(&p).map(|o| lens(&o))
    })?;
    let cpu = mamba1_scan::Backend::Cpu(mamba1_scan::CpuOptions { block_len });
    c.check(
        "m1 cpu blocked",
        &valid,
        want,
        block_len == 0,
        false,
        || mamba1_scan::selective_scan(&p, cpu).map(|o| lens(&o)),
    )?;
    if let Some(gpu) = ctx.gpu {
        c.check("m1 cuda scan", &valid, want, false, true, || {
            mamba1_scan::selective_scan(&p, mamba1_scan::Backend::Cuda(gpu)).map(|o| lens(&o))
        })?;
    }
    c.finish(&valid)
}

fn ssd(b: &mut Hostile<'_>, ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
    let dims = SsdDims::new(
        dim(b),
        if b.bool() { 0 } else { dim(b) },
        dim(b),
        dim(b),
        dim(b),
        0,
    );
    let dims = SsdDims {
        groups: groups(b, dims.heads),
        ..dims
    };
    let (batch, seqlen, heads, head_dim) = (dims.batch, dims.seqlen, dims.heads, dims.head_dim);
    let (d_state, groups) = (dims.d_state, dims.groups);
    let blhp = product(&[batch, seqlen, heads, head_dim]);
    let blgn = product(&[batch, seqlen, groups, d_state]);
    let x = tensor(b, blhp);
    let dt = tensor(b, product(&[batch, seqlen, heads]));
    let a = rates(b, Some(heads));
    let b_data = tensor(b, blgn);
    let c_data = tensor(b, blgn);
    let bias = optional(b, Some(heads));
    let (d_per_head_dim, d) = mamba2_skip(b, heads, head_dim);
    let z = optional(b, blhp);
    let cu = cu_seqlens(b, seqlen);
    let seqs = cu.as_ref().map_or(batch, |c| c.len().saturating_sub(1));
    let s0 = optional(b, product(&[seqs, heads, head_dim, d_state]));
    let tensors = sequence_tensors([&x, &dt, &a, &b_data, &c_data], [&d, &z, &bias, &s0]);
    let dt_limit = dt_limit(b);
    let chunk = b.pick(&[256, 0, 1, 3, usize::MAX]);
    let p = SsdParams {
        dt_bias: bias.as_deref(),
        dt_softplus: b.bool(),
        dt_limit,
        d: crate::gen::d_skip(d.as_deref(), d_per_head_dim),
        z: z.as_deref(),
        initial_states: s0.as_deref(),
        cu_seqlens: cu.as_deref(),
        return_final_states: b.bool(),
        check_finite: b.bool(),
        ..SsdParams::new(dims, &x, &dt, &a, &b_data, &c_data)
    };
    let mut c = Contract::new(format!(
        "api ssd {dims:?} chunk {chunk} dt_limit {dt_limit:?} cu {cu:?} final {} check_finite {}",
        p.return_final_states, p.check_finite
    ));
    let (valid, num_seqs) = c.validate(p.check_finite, &tensors, || Ok(p.validate()?.num_seqs))?;
    let states = [num_seqs, heads, head_dim, d_state];
    if valid.is_ok() && implied(&[batch, seqlen, heads, head_dim], &states) > MAX_OUTPUT_ELEMENTS {
        return skipped();
    }
    let want = (
        x.len(),
        p.return_final_states
            .then(|| states.iter().fold(1usize, |acc, &s| acc.wrapping_mul(s))),
    );
    c.check("ssd recurrence f64", &valid, want, false, false, || {
        ssm_reference::ssd_recurrence(&p).map(|o| lens(&o))
    })?;
    c.check("ssd quadratic f64", &valid, want, false, false, || {
        ssm_reference::ssd_quadratic(&p).map(|o| lens(&o))
    })?;
    let cpu = mamba2_ssd::Backend::Cpu(mamba2_ssd::CpuOptions { chunk_size: chunk });
    c.check("ssd cpu chunked", &valid, want, chunk == 0, false, || {
        mamba2_ssd::ssd_forward(&p, cpu).map(|o| lens(&o))
    })?;
    if let Some(gpu) = ctx.gpu {
        c.check("ssd cuda", &valid, want, false, true, || {
            mamba2_ssd::ssd_forward(&p, mamba2_ssd::Backend::Cuda(gpu)).map(|o| lens(&o))
        })?;
    }
    c.finish(&valid)
}

/// The Mamba-2 skip term, if drawn: `(H, P)` when the flag is set, else `(H)`.
fn mamba2_skip(b: &mut Hostile<'_>, heads: usize, head_dim: usize) -> (bool, Option<Vec<f32>>) {
    let per_head_dim = b.bool();
    let len = if per_head_dim {
        product(&[heads, head_dim])
    } else {
        Some(heads)
    };
    (per_head_dim, optional(b, len))
}

/// A state cache and `state_batch_indices` for a step: the right size or not,
/// indices valid, padding, out of range or repeated.
fn cache_and_indices(
    b: &mut Hostile<'_>,
    batch: usize,
    row: Option<usize>,
) -> (usize, Vec<f32>, Option<Vec<i64>>) {
    let cache_rows = if b.bool() { batch } else { dim(b) };
    let state = tensor(b, row.and_then(|r| r.checked_mul(cache_rows)));
    let indices = b.bool().then(|| {
        let n = length(b, Some(batch));
        let hostile_from = if b.consistent { 3 } else { 0 };
        (0..n)
            .map(|i| match b.int(hostile_from, 5) {
                0 => b.i64(),
                1 => cache_rows as i64,
                2 => 0,
                3 => -1,
                _ => i as i64,
            })
            .collect()
    });
    (cache_rows, state, indices)
}

fn mamba1_step(b: &mut Hostile<'_>, ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
    let (batch, d_inner, d_state) = (dim(b), dim(b), dim(b));
    let groups = groups(b, d_inner);
    let bd = product(&[batch, d_inner]);
    let x = tensor(b, bd);
    let dt = tensor(b, bd);
    let a = rates(b, product(&[d_inner, d_state]));
    let bgn = product(&[batch, groups, d_state]);
    let (b_data, c_data) = (tensor(b, bgn), tensor(b, bgn));
    let d = optional(b, Some(d_inner));
    let z = optional(b, bd);
    let bias = optional(b, Some(d_inner));
    let (cache_rows, state, indices) = cache_and_indices(b, batch, product(&[d_inner, d_state]));
    let p = Mamba1StepParams {
        cache_rows,
        d: d.as_deref(),
        z: z.as_deref(),
        dt_bias: bias.as_deref(),
        dt_softplus: b.bool(),
        state_batch_indices: indices.as_deref(),
        check_finite: b.bool(),
        ..Mamba1StepParams::new(
            batch, d_inner, d_state, groups, &x, &dt, &a, &b_data, &c_data,
        )
    };
    let c = Contract::new(format!(
            "api m1 step b{batch} D{d_inner} N{d_state} G{groups} rows {cache_rows} state {} idx {indices:?} check_finite {}",
            state.len(),
            p.check_finite
        ));
    step_contract(c, &p, &state, [d.as_deref(), bias.as_deref()], ctx)
}

fn mamba2_step(b: &mut Hostile<'_>, ctx: &Ctx<'_>) -> std::result::Result<Outcome, Finding> {
    let (batch, heads, head_dim, d_state) = (dim(b), dim(b), dim(b), dim(b));
    let groups = groups(b, heads);
    let bhp = product(&[batch, heads, head_dim]);
    let x = tensor(b, bhp);
    let dt = tensor(b, product(&[batch, heads]));
    let a = rates(b, Some(heads));
    let bgn = product(&[batch, groups, d_state]);
    let (b_data, c_data) = (tensor(b, bgn), tensor(b, bgn));
    let (d_per_head_dim, d) = mamba2_skip(b, heads, head_dim);
    let z = optional(b, bhp);
    let bias = optional(b, Some(heads));
    let dt_limit = dt_limit(b);
    let (cache_rows, state, indices) =
        cache_and_indices(b, batch, product(&[heads, head_dim, d_state]));
    let p = Mamba2StepParams {
        cache_rows,
        d: crate::gen::d_skip(d.as_deref(), d_per_head_dim),
        z: z.as_deref(),
        dt_bias: bias.as_deref(),
        dt_softplus: b.bool(),
        dt_limit,
        state_batch_indices: indices.as_deref(),
        check_finite: b.bool(),
        ..Mamba2StepParams::new(
            batch, heads, head_dim, d_state, groups, &x, &dt, &a, &b_data, &c_data,
        )
    };
    let c = Contract::new(format!(
            "api m2 step b{batch} H{heads} P{head_dim} N{d_state} G{groups} rows {cache_rows} state {} idx {indices:?} dt_limit {dt_limit:?} check_finite {}",
            state.len(),
            p.check_finite
        ));
    step_contract(c, &p, &state, [d.as_deref(), bias.as_deref()], ctx)
}

/// The decode-step parameters of either family, as the step contract uses them.
trait StepApi {
    /// "m1" or "m2", for the implementation names.
    const FAMILY: &'static str;
    fn check_finite(&self) -> bool;
    fn validate(&self, state_len: usize) -> Result<()>;
    fn out_len(&self) -> usize;
    /// The tensors `check_finite` covers, but for the skip vector and `dt_bias`.
    fn checked_tensors(&self) -> [Option<&[f32]>; 6];
    /// Each returns the length of the output it produced.
    fn reference(&self, state: &mut [f64]) -> Result<usize>;
    fn cpu(&self, state: &mut [f32]) -> Result<usize>;
    fn cuda(&self, gpu: &ssm_gpu::Gpu, state: &mut [f32]) -> Result<usize>;
}

/// `StepApi` for one family: its parameter type, name, oracle and crate.
macro_rules! step_api {
    ($params:ident, $family:literal, $oracle:path, $krate:ident) => {
        impl StepApi for $params<'_, f32> {
            const FAMILY: &'static str = $family;
            fn check_finite(&self) -> bool {
                self.check_finite
            }
            fn validate(&self, state_len: usize) -> Result<()> {
                $params::validate(self, state_len)
            }
            fn out_len(&self) -> usize {
                self.x.len()
            }
            fn checked_tensors(&self) -> [Option<&[f32]>; 6] {
                [
                    Some(self.x),
                    Some(self.dt),
                    Some(self.a),
                    Some(self.b),
                    Some(self.c),
                    self.z,
                ]
            }
            fn reference(&self, state: &mut [f64]) -> Result<usize> {
                $oracle(self, state).map(|o| o.out.len())
            }
            fn cpu(&self, state: &mut [f32]) -> Result<usize> {
                let backend = $krate::Backend::Cpu(Default::default());
                $krate::decode_step(self, state, backend).map(|o| o.out.len())
            }
            fn cuda(&self, gpu: &ssm_gpu::Gpu, state: &mut [f32]) -> Result<usize> {
                $krate::decode_step(self, state, $krate::Backend::Cuda(gpu)).map(|o| o.out.len())
            }
        }
    };
}
step_api!(
    Mamba1StepParams,
    "m1",
    ssm_reference::mamba1_step,
    mamba1_scan
);
step_api!(
    Mamba2StepParams,
    "m2",
    ssm_reference::mamba2_step,
    mamba2_ssd
);

/// The contract both decode steps share once their parameters are drawn:
/// validation does not panic and rejects non-finite inputs (`skip_and_bias`: D
/// and dt_bias, as the caller drew them) when asked; the oracle, the CPU step and, with a
/// GPU, the CUDA step each agree with validation and return `out_len` outputs.
fn step_contract<P: StepApi>(
    mut c: Contract,
    p: &P,
    state: &[f32],
    skip_and_bias: [Option<&[f32]>; 2],
    ctx: &Ctx<'_>,
) -> std::result::Result<Outcome, Finding> {
    let mut tensors = p.checked_tensors().to_vec();
    tensors.extend(skip_and_bias);
    let (valid, ()) = c.validate(p.check_finite(), &tensors, || p.validate(state.len()))?;
    let want = (p.out_len(), None);
    let name = |implementation: &str| format!("{} step {implementation}", P::FAMILY);
    c.check(&name("reference f64"), &valid, want, false, false, || {
        let mut s: Vec<f64> = state.iter().map(|&v| v as f64).collect();
        p.reference(&mut s).map(|n| (n, None))
    })?;
    c.check(&name("cpu"), &valid, want, false, false, || {
        p.cpu(&mut state.to_vec()).map(|n| (n, None))
    })?;
    if let Some(gpu) = ctx.gpu {
        c.check(&name("cuda"), &valid, want, false, true, || {
            p.cuda(gpu, &mut state.to_vec()).map(|n| (n, None))
        })?;
    }
    c.finish(&valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sizes_and_lengths_come_up() {
        let data: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
        let hostile = |data| Hostile {
            bytes: Bytes::new(data),
            consistent: false,
        };
        let mut b = hostile(&data);
        let dims: Vec<usize> = (0..200).map(|_| dim(&mut b)).collect();
        assert!(dims.contains(&usize::MAX) || dims.contains(&(1 << 40)));
        assert!(dims.iter().any(|&d| (1..=6).contains(&d)));
        assert_eq!(length(&mut hostile(&[9]), Some(12)), 12);
        assert_eq!(length(&mut hostile(&[1]), Some(12)), 11);
        let mut consistent = Hostile {
            bytes: Bytes::new(&[1]),
            consistent: true,
        };
        assert_eq!(length(&mut consistent, Some(12)), 12);
    }
}
