//! Strategies and tensor slicing shared by the property tests.
#![allow(dead_code)]

use proptest::prelude::*;
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::tolerance::Comparison;
use ssm_verify::gen::{bc_input, DKind, DtRegime, Mamba1Case, SsdCase};

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
                    dims: Mamba1Dims {
                        batch: if vl.is_some() { 1 } else { batch },
                        d_inner: groups * per_group,
                        d_state,
                        seqlen,
                    },
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
                    dims: SsdDims {
                        batch: if vl.is_some() { 1 } else { batch },
                        seqlen,
                        heads: groups * per_group,
                        head_dim,
                        d_state,
                        groups,
                    },
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

/// Largest absolute error accepted regardless of the relative budget. Inputs here
/// are O(1), so f32 arithmetic errs by ~1e-7 in absolute terms; a result that
/// nearly cancels (a tiny output or state built from O(1) terms) can then show a
/// large *relative* error that is only rounding. Planted bugs err by far more.
pub const ABS_FLOOR: f64 = 1e-6;

/// The budget of the tolerance model, or the absolute floor for cancelling results.
pub fn within(c: Comparison, budget: f64) -> bool {
    c.passes(budget) || (c.non_finite == 0 && c.max_abs <= ABS_FLOOR)
}

/// Assert a comparison passes, with a message that names what failed.
pub fn assert_close(what: &str, c: Comparison, budget: f64) -> Result<(), TestCaseError> {
    prop_assert!(
        within(c, budget),
        "{what}: rel L2 {:.3e} (budget {:.1e}), max abs {:.3e} (floor {:.0e}), non-finite {}",
        c.rel_l2,
        budget,
        c.max_abs,
        ABS_FLOOR,
        c.non_finite
    );
    Ok(())
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
            b: bc_input(self.b.0, &self.b.1),
            c: bc_input(self.c.0, &self.c.1),
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
