//! The magnitude envelope of a problem: whether an f32 implementation can
//! compute it inside the tolerance model at all.
//!
//! The tolerance model (`ssm_core::tolerance`) bounds the *relative* error of an
//! implementation that never leaves the normal f32 range and whose decays are at
//! most 1. Fuzzed inputs break both: huge values overflow f32 intermediates (the
//! f64 oracle is still finite), tiny ones underflow into subnormals (few bits of
//! precision), growing states (`dt' * A > 0`) amplify every rounding error.
//!
//! This module bounds, in f64 and from the inputs alone, every intermediate the
//! algorithms form (step sizes, `dt u B`, the state, `C h`, the sum over N, the
//! skip term, the gate, the cumulative log-decays of a chunk, `C B^T`):
//!
//! * `peak`: the largest bound; a problem *fits* a precision when `peak` stays
//!   below its largest finite value by a margin of 2^10;
//! * `amplification`: the product of the magnitudes (at least 1) that can
//!   multiply a value after it is formed (inputs, gate, the rates `A`: a step
//!   size that underflows to a subnormal is multiplied by `A` in the exponent,
//!   and the state bound: a decay that underflows multiplies the state), times
//!   the number of terms
//!   summed. An absolute error of one underflowed operation (at most the smallest
//!   normal, since the kernels' `exp2` flushes subnormals) reaches the output
//!   multiplied by at most this; it gives the absolute error floor of
//!   [`super::verdict`].
//!
//! The bounds are deliberately loose (a state bounded by `|h0| + L dt |u| |B|`,
//! products bounded in any evaluation order by the product of `max(1, |f|)`), so
//! they only push problems with genuinely extreme values out of the model.

use std::f64::consts::LOG2_E;

use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::mamba2::SsdParams;
use ssm_core::math::{scan_dt, silu, ssd_dt};
use ssm_core::shape::segments;
use ssm_core::Element;

/// Largest `|v|` over the finite values of a tensor, and whether all were finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mag {
    /// Largest `|v|` over the finite values (0 for none).
    pub max: f64,
    /// Every value is finite.
    pub finite: bool,
}

impl Mag {
    /// An absent tensor: magnitude 0, finite.
    pub const ABSENT: Mag = Mag {
        max: 0.0,
        finite: true,
    };

    /// The magnitude of `xs`.
    pub fn of<T: Element>(xs: &[T]) -> Mag {
        xs.iter().fold(Mag::ABSENT, |m, x| {
            let v = x.to_f64();
            if v.is_finite() {
                Mag {
                    max: m.max.max(v.abs()),
                    ..m
                }
            } else {
                Mag { finite: false, ..m }
            }
        })
    }

    /// The magnitude of `xs`, or [`Mag::ABSENT`].
    pub fn of_opt<T: Element>(xs: Option<&[T]>) -> Mag {
        xs.map_or(Mag::ABSENT, Mag::of)
    }

    /// The largest `|silu(z)|` (1 without a gate: the gate is then the identity).
    pub fn gate<T: Element>(z: Option<&[T]>) -> Mag {
        match z {
            None => Mag {
                max: 1.0,
                finite: true,
            },
            Some(z) => {
                let m = Mag::of(z);
                let widest = z
                    .iter()
                    .map(|v| v.to_f64())
                    .filter(|v| v.is_finite())
                    .map(|v| silu(v).abs())
                    .fold(0.0, f64::max);
                Mag { max: widest, ..m }
            }
        }
    }
}

/// What the envelope says about a problem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Envelope {
    /// Every input (after rounding to the element type) is finite.
    pub finite_inputs: bool,
    /// Some step decays by a factor above 1 (`dt' * A > 0`) or has `dt' < 0`:
    /// outside the model.
    pub growth: bool,
    /// Every step size `dt'` and rate `A` is finite. An infinite rate gives a decay
    /// of exactly 0 that the oracle forms as `exp(-inf)`, but a chunked
    /// implementation forms decays from differences of cumulative log-decays,
    /// where it becomes `-inf - (-inf) = NaN`: outside the model.
    pub finite_log_decays: bool,
    /// Largest bound on an intermediate, over the finite inputs.
    pub peak: f64,
    /// Factor by which an absolute error at underflow can grow (module docs).
    pub amplification: f64,
}

impl Envelope {
    /// Every intermediate stays below `max_finite / 2^10`.
    pub fn fits(&self, max_finite: f64) -> bool {
        self.peak.is_finite() && self.peak < max_finite / 1024.0
    }
}

/// Accumulates bounds and factors.
struct Builder {
    finite: bool,
    growth: bool,
    finite_log_decays: bool,
    peak: f64,
    amplification: f64,
}

impl Builder {
    fn new(mags: &[Mag]) -> Self {
        Builder {
            finite: mags.iter().all(|m| m.finite),
            growth: false,
            finite_log_decays: true,
            peak: 0.0,
            amplification: 1.0,
        }
    }

    fn bounds(&mut self, values: &[f64]) {
        for &v in values {
            // A NaN bound (inf * 0) counts as unbounded.
            self.peak = if v.is_nan() {
                f64::INFINITY
            } else {
                self.peak.max(v)
            };
        }
    }

    fn factors(&mut self, factors: &[f64], terms: f64) {
        self.amplification = factors.iter().fold(terms, |acc, &f| acc * f.max(1.0));
    }

    /// Every step size is seen: they join the finiteness of the inputs, and the
    /// log decays `dt' A` are finite when the steps and the rates `a` are.
    fn steps_seen(&mut self, dt: &StepSizes, a: Mag) {
        self.finite &= dt.finite;
        self.finite_log_decays = dt.finite && a.finite;
    }

    /// [`Builder::factors`] of a recurrence, the same for every family: the
    /// step, the log2-rate, x, B, C, D, the gate and the state bound `state`.
    fn recurrence_factors(
        &mut self,
        dt: &StepSizes,
        [x, a, b, c, d, gate]: [Mag; 6],
        state: f64,
        terms: f64,
    ) {
        let log2_rate = a.max * LOG2_E;
        let factors = [
            dt.max, log2_rate, x.max, b.max, c.max, d.max, gate.max, state,
        ];
        self.factors(&factors, terms);
    }

    fn finish(self) -> Envelope {
        Envelope {
            finite_inputs: self.finite,
            growth: self.growth,
            finite_log_decays: self.finite_log_decays,
            peak: self.peak,
            amplification: self.amplification,
        }
    }
}

/// Step sizes seen so far: the largest finite `|dt'|`, and whether any is non-finite.
#[derive(Default)]
struct StepSizes {
    max: f64,
    finite: bool,
}

impl StepSizes {
    fn new() -> Self {
        StepSizes {
            max: 0.0,
            finite: true,
        }
    }

    /// Record `dt'` against the range `[a_min, a_max]` of the rates it multiplies;
    /// returns whether it leaves the model: a decay above 1, or a negative step
    /// (the model has `dt' >= 0`; with `A = 0` a negative step would subtract inputs).
    fn add(&mut self, dt: f64, a_min: f64, a_max: f64) -> bool {
        if !dt.is_finite() {
            self.finite = false;
            return false;
        }
        self.max = self.max.max(dt.abs());
        dt < 0.0 || dt * a_max > 0.0 || dt * a_min > 0.0
    }
}

/// A bound on every partial product of `factors`, whatever the order in which an
/// implementation multiplies them (`|B| * dt` before `* x` can overflow where
/// `(dt * x) * |B|` does not): the product of `max(1, f)`.
fn any_order(factors: &[f64]) -> f64 {
    factors.iter().map(|f| f.max(1.0)).product()
}

/// The bound of one step's input `dt' x B`, and of the state after `len` steps
/// from `start` (decays are at most 1: each step adds at most one input).
fn input_and_state(dt: &StepSizes, x: Mag, b: Mag, start: Mag, len: f64) -> (f64, f64) {
    let input = any_order(&[dt.max, x.max, b.max]);
    (input, start.max + len * input)
}

/// A Mamba-1 channel's rates: the smallest and largest finite of its `d_state`
/// rates in `a`, and its step-size bias (0 without one).
fn channel_rates(a: &[f32], d_state: usize, bias: Option<&[f32]>, ch: usize) -> (f64, f64, f64) {
    let (a_min, a_max) = range(&a[ch * d_state..(ch + 1) * d_state]);
    (a_min, a_max, bias.map_or(0.0, |b| b[ch] as f64))
}

/// Smallest and largest finite values of `xs` (`(0, 0)` when none).
fn range(xs: &[f32]) -> (f64, f64) {
    let finite = xs.iter().map(|&v| v as f64).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Longest sequence of a (possibly varlen) row of `seqlen`: the envelope's
/// recurrence length, and the targets' reduction length.
pub(super) fn longest_sequence(cu_seqlens: Option<&[i64]>, seqlen: usize) -> usize {
    segments(cu_seqlens, seqlen)
        .iter()
        .map(|&(s, e)| e.saturating_sub(s))
        .max()
        .unwrap_or(0)
}

/// Envelope of a Mamba-1 scan (validated parameters).
pub fn scan_envelope<T: Element>(p: &SelectiveScanParams<'_, T>) -> Envelope {
    let dims = p.dims;
    let (u, delta, a) = (Mag::of(p.u), Mag::of(p.delta), Mag::of(p.a));
    let (b, c) = (Mag::of(p.b.data()), Mag::of(p.c.data()));
    let (d, bias, h0) = (
        Mag::of_opt(p.d),
        Mag::of_opt(p.delta_bias),
        Mag::of_opt(p.initial_states),
    );
    let gate = Mag::gate(p.z);
    let mut env = Builder::new(&[u, delta, a, b, c, d, bias, h0, gate]);

    let mut dt = StepSizes::new();
    for ch in 0..dims.d_inner {
        let (a_min, a_max, bias) = channel_rates(p.a, dims.d_state, p.delta_bias, ch);
        for row in 0..dims.batch {
            let at = (row * dims.d_inner + ch) * dims.seqlen;
            for raw in &p.delta[at..at + dims.seqlen] {
                let step = scan_dt(raw.to_f64(), bias, p.delta_softplus);
                env.growth |= dt.add(step, a_min, a_max);
            }
        }
    }
    env.steps_seen(&dt, a);
    let len = longest_sequence(p.cu_seqlens, dims.seqlen) as f64;
    let n = dims.d_state as f64;
    let (input, state) = input_and_state(&dt, u, b, h0, len);
    let y = n * any_order(&[c.max, state]) + any_order(&[d.max, u.max]);
    env.bounds(&[
        a.max * LOG2_E,
        delta.max + bias.max,
        dt.max,
        input,
        state,
        y,
        any_order(&[y, gate.max]),
    ]);
    let terms = (n + 1.0) * (len + 1.0) * 8.0;
    env.recurrence_factors(&dt, [u, a, b, c, d, gate], state, terms);
    env.finish()
}

/// Envelope of an SSD forward pass (validated parameters).
pub fn ssd_envelope<T: Element>(p: &SsdParams<'_, T>) -> Envelope {
    let dims = p.dims;
    let (x, dt_raw, a) = (Mag::of(p.x), Mag::of(p.dt), Mag::of(p.a));
    let (b, c) = (Mag::of(p.b), Mag::of(p.c));
    let (d, bias, s0) = (
        Mag::of_opt(p.d.as_ref().map(|d| d.data())),
        Mag::of_opt(p.dt_bias),
        Mag::of_opt(p.initial_states),
    );
    let gate = Mag::gate(p.z);
    let mut env = Builder::new(&[x, dt_raw, a, b, c, d, bias, s0, gate]);

    let mut dt = StepSizes::new();
    for (h, &a_h) in p.a.iter().enumerate() {
        let a_h = a_h as f64;
        let bias = p.dt_bias.map_or(0.0, |b| b[h] as f64);
        for token in 0..dims.batch * dims.seqlen {
            let raw = p.dt[token * dims.heads + h].to_f64();
            let step = ssd_dt(raw, bias, p.dt_softplus, p.dt_limit);
            env.growth |= dt.add(step, a_h, a_h);
        }
    }
    env.steps_seen(&dt, a);
    let len = longest_sequence(p.cu_seqlens, dims.seqlen) as f64;
    let n = dims.d_state as f64;
    let (input, state) = input_and_state(&dt, x, b, s0, len);
    let cb = n * any_order(&[c.max, b.max]);
    let y = n * any_order(&[c.max, state])
        + len * any_order(&[cb, dt.max, x.max])
        + any_order(&[d.max, x.max]);
    env.bounds(&[
        a.max * LOG2_E,
        dt_raw.max + bias.max,
        dt.max,
        // The cumulative log2-decay of a chunk (at most the whole sequence).
        len * dt.max * a.max * LOG2_E,
        input,
        state,
        cb,
        y,
        any_order(&[y, gate.max]),
    ]);
    let terms = (n + 1.0) * (len + 1.0) * (dims.head_dim as f64 + 1.0) * 8.0;
    env.recurrence_factors(&dt, [x, a, b, c, d, gate], state, terms);
    env.finish()
}

/// Envelope of a Mamba-1 decode step on a cache of `state` (validated parameters).
pub fn mamba1_step_envelope<T: Element>(p: &Mamba1StepParams<'_, T>, state: &[f32]) -> Envelope {
    let (x, dt_raw, a) = (Mag::of(p.x), Mag::of(p.dt), Mag::of(p.a));
    let (b, c, h) = (Mag::of(p.b), Mag::of(p.c), Mag::of(state));
    let (d, bias, gate) = (Mag::of_opt(p.d), Mag::of_opt(p.dt_bias), Mag::gate(p.z));
    let mut env = Builder::new(&[x, dt_raw, a, b, c, d, bias, h, gate]);
    let mut dt = StepSizes::new();
    for ch in 0..p.d_inner {
        let (a_min, a_max, bias) = channel_rates(p.a, p.d_state, p.dt_bias, ch);
        for row in 0..p.batch {
            let step = scan_dt(p.dt[row * p.d_inner + ch].to_f64(), bias, p.dt_softplus);
            env.growth |= dt.add(step, a_min, a_max);
        }
    }
    env.steps_seen(&dt, a);
    step_bounds(
        &mut env,
        &dt,
        [x, a, b, c, d, h, gate],
        dt_raw.max + bias.max,
        p.d_state,
        1,
    );
    env.finish()
}

/// Envelope of a Mamba-2 decode step on a cache of `state` (validated parameters).
pub fn mamba2_step_envelope<T: Element>(p: &Mamba2StepParams<'_, T>, state: &[f32]) -> Envelope {
    let (x, dt_raw, a) = (Mag::of(p.x), Mag::of(p.dt), Mag::of(p.a));
    let (b, c, h) = (Mag::of(p.b), Mag::of(p.c), Mag::of(state));
    let (d, bias) = (
        Mag::of_opt(p.d.as_ref().map(|d| d.data())),
        Mag::of_opt(p.dt_bias),
    );
    let gate = Mag::gate(p.z);
    let mut env = Builder::new(&[x, dt_raw, a, b, c, d, bias, h, gate]);
    let mut dt = StepSizes::new();
    for (head, &a_h) in p.a.iter().enumerate() {
        let bias = p.dt_bias.map_or(0.0, |b| b[head] as f64);
        for row in 0..p.batch {
            let raw = p.dt[row * p.heads + head].to_f64();
            let step = ssd_dt(raw, bias, p.dt_softplus, p.dt_limit);
            env.growth |= dt.add(step, a_h as f64, a_h as f64);
        }
    }
    env.steps_seen(&dt, a);
    let raw = dt_raw.max + bias.max;
    step_bounds(
        &mut env,
        &dt,
        [x, a, b, c, d, h, gate],
        raw,
        p.d_state,
        p.head_dim,
    );
    env.finish()
}

/// The bounds of one recurrence step, shared by both families.
fn step_bounds(
    env: &mut Builder,
    dt: &StepSizes,
    [x, a, b, c, d, h, gate]: [Mag; 7],
    raw_dt: f64,
    d_state: usize,
    head_dim: usize,
) {
    let n = d_state as f64;
    let (input, state) = input_and_state(dt, x, b, h, 1.0);
    let y = n * any_order(&[c.max, state]) + any_order(&[d.max, x.max]);
    env.bounds(&[
        a.max * LOG2_E,
        raw_dt,
        dt.max,
        input,
        state,
        y,
        any_order(&[y, gate.max]),
    ]);
    let terms = (n + 1.0) * (head_dim as f64 + 1.0) * 8.0;
    env.recurrence_factors(dt, [x, a, b, c, d, gate], state, terms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{Mamba1Case, Mamba1Data, SsdCase, SsdData};

    #[test]
    fn typical_problems_fit_f32_with_room() {
        let data = Mamba1Data::generate(&Mamba1Case::plain(2, 16, 8, 64).all_options(), 3);
        let inputs = data.inputs::<f32>();
        let env = scan_envelope(&inputs.params());
        assert!(env.finite_inputs && !env.growth, "{env:?}");
        assert!(env.fits(f32::MAX as f64), "{env:?}");
        assert!(env.amplification * (f32::MIN_POSITIVE as f64) < 1e-25);

        let data = SsdData::generate(&SsdCase::plain(1, 40, 4, 8, 16, 2).all_options(), 4);
        let inputs = data.inputs::<f32>();
        let env = ssd_envelope(&inputs.params());
        assert!(env.finite_inputs && !env.growth && env.fits(f32::MAX as f64));
    }

    #[test]
    fn huge_inputs_leave_f32_and_nan_is_noticed() {
        let mut data = Mamba1Data::generate(&Mamba1Case::plain(1, 8, 4, 16), 5);
        data.u[3] = 1e30;
        data.b[2] = 1e20;
        let inputs = data.inputs::<f32>();
        let env = scan_envelope(&inputs.params());
        assert!(!env.fits(f32::MAX as f64) && env.fits(f64::MAX));
        data.u[3] = f32::NAN;
        let inputs = data.inputs::<f32>();
        assert!(!scan_envelope(&inputs.params()).finite_inputs);
    }

    #[test]
    fn positive_rates_or_negative_steps_are_growth() {
        let mut data = SsdData::generate(&SsdCase::plain(1, 8, 2, 2, 2, 1), 6);
        data.a[1] = 0.5;
        let inputs = data.inputs::<f32>();
        assert!(ssd_envelope(&inputs.params()).growth);
        let mut data = Mamba1Data::generate(&Mamba1Case::plain(1, 8, 4, 16), 5);
        data.delta[0] = -1.0;
        let inputs = data.inputs::<f32>();
        assert!(scan_envelope(&inputs.params()).growth);
        // A = 0 with any step: a decay of exactly 1, no growth.
        data.delta[0] = 1.0;
        data.a.iter_mut().for_each(|a| *a = 0.0);
        let inputs = data.inputs::<f32>();
        assert!(!scan_envelope(&inputs.params()).growth);
    }
}
