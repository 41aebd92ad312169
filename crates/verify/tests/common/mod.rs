//! Strategies and tensor slicing shared by the property tests.
#![allow(dead_code)]

use std::cell::OnceCell;

use proptest::prelude::*;
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::tolerance::Comparison;
use ssm_core::{DType, Element, ScanOutput};
use ssm_verify::check::{compare_outputs, CheckRow};
use ssm_verify::conditioning::{f32_gamma, l2, subnormal_half_ulp, within, Conditioning};
use ssm_verify::gen::{DKind, DtRegime, Mamba1Case, SsdCase, StepData};
use ssm_verify::impls::{Family, StepImpl};

/// Cases per property: 1000 in CI, more with `SSM_PROPTEST_CASES`.
pub fn config() -> ProptestConfig {
    let cases = std::env::var("SSM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

pub fn dt_regime() -> impl Strategy<Value = DtRegime> {
    prop_oneof![4 => Just(DtRegime::Typical), 1 => Just(DtRegime::Large)]
}

/// Number of packed sequences, when varlen problems are allowed.
fn varlen_count(allowed: bool) -> BoxedStrategy<Option<usize>> {
    if allowed {
        prop::option::weighted(0.5, 1usize..=4).boxed()
    } else {
        Just(None).boxed()
    }
}

/// Small Mamba-1 problems with random options. `varlen` allows packed sequences.
pub fn mamba1_case(max_len: usize, varlen: bool) -> impl Strategy<Value = Mamba1Case> {
    (
        (
            1usize..=2,
            1usize..=2,
            1usize..=3,
            1usize..=9,
            1usize..=max_len,
        ),
        (any::<bool>(), any::<bool>(), 0u8..3, 0u8..3),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (varlen_count(varlen), dt_regime()),
    )
        .prop_map(
            |(
                (batch, groups, per_group, d_state, seqlen),
                (d, z, b_kind, c_kind),
                (bias, sp, h0, fin),
                (vl, dt),
            )| {
                let bc = |kind: u8| match kind {
                    0 => None,
                    1 => Some(1),
                    _ => Some(groups),
                };
                Mamba1Case {
                    dims: Mamba1Dims::new(
                        if vl.is_some() { 1 } else { batch },
                        groups * per_group,
                        d_state,
                        seqlen,
                    ),
                    b_groups: bc(b_kind),
                    c_groups: bc(c_kind),
                    d,
                    z,
                    delta_bias: bias,
                    softplus: sp,
                    initial_states: h0,
                    final_states: fin,
                    varlen: vl,
                    dt,
                }
            },
        )
}

/// Small SSD problems with random options.
pub fn ssd_case(max_len: usize, varlen: bool) -> impl Strategy<Value = SsdCase> {
    (
        (
            1usize..=2,
            1usize..=2,
            1usize..=2,
            1usize..=4,
            1usize..=9,
            1usize..=max_len,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u8..3,
            any::<bool>(),
        ),
        (any::<bool>(), any::<bool>()),
        (varlen_count(varlen), dt_regime()),
    )
        .prop_map(
            |(
                (batch, groups, per_group, head_dim, d_state, seqlen),
                (bias, sp, limit, d, z),
                (s0, fin),
                (vl, dt),
            )| {
                SsdCase {
                    dims: SsdDims::new(
                        if vl.is_some() { 1 } else { batch },
                        seqlen,
                        groups * per_group,
                        head_dim,
                        d_state,
                        groups,
                    ),
                    dt_bias: bias,
                    softplus: sp,
                    dt_limit: limit.then_some((0.001, 5.0)),
                    d: [DKind::None, DKind::PerHead, DKind::PerHeadDim][d as usize],
                    z,
                    initial_states: s0,
                    final_states: fin,
                    varlen: vl,
                    dt,
                }
            },
        )
}

/// The oracle's answer to one problem and what judges a near cancellation in
/// it: a result passes within its relative budget, or failing that within the
/// absolute allowance of [`ssm_verify::conditioning`] (the fuzzers' rule), whose
/// extra oracle runs happen only then.
pub struct Oracle<'p> {
    pub want: ScanOutput<f64, f64>,
    gamma: f64,
    conditioning: OnceCell<Conditioning>,
    measure: Box<dyn Fn() -> Conditioning + 'p>,
}

impl<'p> Oracle<'p> {
    /// A Mamba-1 problem, judged for an f32 implementation that exponentiates
    /// one step at a time.
    pub fn scan<T: Element>(p: SelectiveScanParams<'p, T>) -> Self {
        let reduction = p.dims.d_state + p.dims.seqlen;
        Oracle {
            want: ssm_reference::selective_scan(&p).unwrap(),
            gamma: f32_gamma(reduction, 0.0),
            conditioning: OnceCell::new(),
            measure: Box::new(move || Conditioning::of_scan(&p)),
        }
    }

    /// An SSD problem, judged for an f32 implementation whose decays come from
    /// cumulative sums over windows of largest log-decay `k` (0: step by step).
    pub fn ssd<T: Element>(p: SsdParams<'p, T>, k: f64) -> Self {
        let reduction = p.dims.d_state + p.dims.head_dim + p.dims.seqlen;
        Oracle {
            want: ssm_reference::ssd_recurrence(&p).unwrap(),
            gamma: f32_gamma(reduction, k),
            conditioning: OnceCell::new(),
            measure: Box::new(move || Conditioning::of_ssd(&p)),
        }
    }

    /// One decode step of `family` on `data` (f32 inputs).
    pub fn step(family: Family, data: &'p StepData) -> Self {
        let c = &data.case;
        Oracle {
            want: StepImpl::Reference
                .run(family, &data.inputs::<f32>(), None)
                .unwrap(),
            gamma: f32_gamma(c.d_state + c.head_dim, 0.0),
            conditioning: OnceCell::new(),
            measure: Box::new(move || Conditioning::of_step(family, data)),
        }
    }

    /// Assert one comparison against this oracle (`states`: of the final states,
    /// else of the outputs) passes `budget`, naming what failed.
    /// Outputs are taken as stored in f32; see [`Self::assert_close_as`].
    pub fn assert_close(
        &self,
        what: &str,
        c: Comparison,
        budget: f64,
        states: bool,
    ) -> Result<(), TestCaseError> {
        self.assert_close_as(what, c, budget, states, DType::F32)
    }

    /// [`Self::assert_close`] for outputs stored as `out_dtype`: rounding a tiny
    /// output to a subnormal of that type may add half its spacing per element.
    pub fn assert_close_as(
        &self,
        what: &str,
        c: Comparison,
        budget: f64,
        states: bool,
        out_dtype: DType,
    ) -> Result<(), TestCaseError> {
        let floor = if states {
            0.0
        } else {
            subnormal_half_ulp(out_dtype)
        };
        let want = if states {
            self.want.final_states.as_deref().unwrap_or(&[])
        } else {
            &self.want.out
        };
        let mut allowance = None;
        let ok = within(&c, want, budget, floor, || {
            let a = self
                .conditioning
                .get_or_init(&self.measure)
                .allowance(want, self.gamma, states);
            allowance = Some(a);
            a
        });
        prop_assert!(
            ok,
            "{what}: rel L2 {:.3e} (budget {:.1e}), abs L2 {:.3e} (allowed {:.3e} beyond the budget), max abs {:.3e}, non-finite {}",
            c.rel_l2,
            budget,
            c.rel_l2 * l2(want),
            allowance.unwrap_or(0.0),
            c.max_abs,
            c.non_finite
        );
        Ok(())
    }

    /// Assert `got` matches this oracle, outputs within `out_budget` and final
    /// states (where the oracle has them) within `state_budget`.
    pub fn assert_matches(
        &self,
        what: &str,
        got: &ScanOutput<f64, f64>,
        out_budget: f64,
        state_budget: f64,
    ) -> Result<(), TestCaseError> {
        let (o, s) = compare_outputs(got, &self.want);
        self.assert_close(&format!("{what}: out"), o, out_budget, false)?;
        if let Some(s) = s {
            self.assert_close(&format!("{what}: final states"), s, state_budget, true)?;
        }
        Ok(())
    }

    /// Assert one row of [`ssm_verify::check`] (run against this same problem) passed.
    pub fn assert_row(&self, r: &CheckRow) -> Result<(), TestCaseError> {
        let what = format!("{} on {} ({})", r.implementation, r.problem, r.dtype);
        prop_assert!(r.error.is_none(), "{what}: error {:?}", r.error);
        let Some(out) = r.out else {
            return Err(TestCaseError::fail(format!("{what}: no output")));
        };
        self.assert_close_as(&format!("{what}: out"), out, r.out_budget, false, r.dtype)?;
        if let Some(st) = r.state {
            self.assert_close(&format!("{what}: final states"), st, r.state_budget, true)?;
        }
        Ok(())
    }
}

/// Assert two f64 computations of the same math agree to [`F64_TOL`] relative
/// (no absolute floor: f64 rounding is far below it).
pub fn assert_f64_close(what: &str, c: Comparison) -> Result<(), TestCaseError> {
    prop_assert!(
        c.passes(F64_TOL),
        "{what}: rel L2 {:.3e} (f64 tolerance {:.0e}), max abs {:.3e}, non-finite {}",
        c.rel_l2,
        F64_TOL,
        c.max_abs,
        c.non_finite
    );
    Ok(())
}

/// Tolerance for comparing two f64 implementations of the same math.
pub const F64_TOL: f64 = 1e-9;

/// Columns `[t0, t1)` of a `(rows, len)` row-major tensor.
pub fn cols<T: Copy>(x: &[T], len: usize, t0: usize, t1: usize) -> Vec<T> {
    x.chunks(len)
        .flat_map(|row| row[t0..t1].iter().copied())
        .collect()
}

/// Rows `[t0, t1)` of a `(batch, len, width)` tensor.
pub fn time_rows<T: Copy>(x: &[T], len: usize, width: usize, t0: usize, t1: usize) -> Vec<T> {
    x.chunks(len * width)
        .flat_map(|seq| seq[t0 * width..t1 * width].iter().copied())
        .collect()
}

/// The per-token tensors of a scan problem cut to the time steps `[t0, t1)`,
/// owned, so a test can run part of a sequence (splits, varlen pieces).
pub struct ScanSlice {
    seqlen: usize,
    u: Vec<f32>,
    delta: Vec<f32>,
    z: Option<Vec<f32>>,
    b: (Option<usize>, Vec<f32>),
    c: (Option<usize>, Vec<f32>),
}

impl ScanSlice {
    pub fn new(p: &SelectiveScanParams<'_, f32>, t0: usize, t1: usize) -> Self {
        let len = p.dims.seqlen;
        let sl = |v: &[f32]| cols(v, len, t0, t1);
        // Constant B/C (D_in, N) has no time axis: it is shared by every slice.
        let bc = |x: &BcInput<'_, f32>| match *x {
            BcInput::Grouped { groups, data } => (Some(groups), sl(data)),
            BcInput::Constant(data) => (None, data.to_vec()),
        };
        ScanSlice {
            seqlen: t1 - t0,
            u: sl(p.u),
            delta: sl(p.delta),
            z: p.z.map(sl),
            b: bc(&p.b),
            c: bc(&p.c),
        }
    }

    /// `p` on this slice alone: one sequence from `initial_states`, final states returned.
    pub fn params<'a>(
        &'a self,
        p: SelectiveScanParams<'a, f32>,
        initial_states: Option<&'a [f32]>,
    ) -> SelectiveScanParams<'a, f32> {
        SelectiveScanParams {
            dims: Mamba1Dims {
                seqlen: self.seqlen,
                ..p.dims
            },
            u: &self.u,
            delta: &self.delta,
            b: BcInput::from_groups(self.b.0, &self.b.1),
            c: BcInput::from_groups(self.c.0, &self.c.1),
            z: self.z.as_deref(),
            initial_states,
            cu_seqlens: None,
            return_final_states: true,
            ..p
        }
    }
}

/// The per-token tensors of an SSD problem cut to the time steps `[t0, t1)`.
pub struct SsdSlice {
    seqlen: usize,
    x: Vec<f32>,
    dt: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    z: Option<Vec<f32>>,
}

impl SsdSlice {
    pub fn new(p: &SsdParams<'_, f32>, t0: usize, t1: usize) -> Self {
        let d = p.dims;
        let (width, gn) = (d.heads * d.head_dim, d.groups * d.d_state);
        let rows = |v: &[f32], w: usize| time_rows(v, d.seqlen, w, t0, t1);
        SsdSlice {
            seqlen: t1 - t0,
            x: rows(p.x, width),
            dt: rows(p.dt, d.heads),
            b: rows(p.b, gn),
            c: rows(p.c, gn),
            z: p.z.map(|z| rows(z, width)),
        }
    }

    /// `p` on this slice alone: one sequence from `initial_states`, final states returned.
    pub fn params<'a>(
        &'a self,
        p: SsdParams<'a, f32>,
        initial_states: Option<&'a [f32]>,
    ) -> SsdParams<'a, f32> {
        SsdParams {
            dims: SsdDims {
                seqlen: self.seqlen,
                ..p.dims
            },
            x: &self.x,
            dt: &self.dt,
            b: &self.b,
            c: &self.c,
            z: self.z.as_deref(),
            initial_states,
            cu_seqlens: None,
            return_final_states: true,
            ..p
        }
    }
}
