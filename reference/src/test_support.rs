//! Shared by the unit tests: seeded random problems in f64, cutting a problem into
//! the sub-problem of one sequence, and closeness checks.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::tolerance::compare;
use ssm_core::ScanOutput;

/// An SSD call on no tokens (one head, P 1, N 2, A = -1) that asks for final
/// states: what the empty-input tests of the forward and backward pass through.
pub(crate) fn empty_ssd() -> SsdParams<'static, f64> {
    SsdParams::new(SsdDims::new(1, 0, 1, 1, 2, 1), &[], &[], &[-1.0], &[], &[])
        .with_final_states(true)
}

/// The scalar loss `<w_out, out> + <w_final, final_states>` whose gradient
/// the backward tests check (`w_out` and `w_final` are the incoming gradients).
pub(crate) fn weighted_loss(out: &ScanOutput<f64, f64>, w_out: &[f64], w_final: &[f32]) -> f64 {
    let mut loss: f64 = out.out.iter().zip(w_out).map(|(o, w)| o * w).sum();
    if let Some(finals) = &out.final_states {
        loss += finals
            .iter()
            .zip(w_final)
            .map(|(h, &w)| h * f64::from(w))
            .sum::<f64>();
    }
    loss
}

pub(crate) fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub(crate) fn uniform(rng: &mut StdRng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

pub(crate) fn uniform_f32(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

pub(crate) fn to_f32(xs: &[f64]) -> Vec<f32> {
    xs.iter().map(|&x| x as f32).collect()
}

pub(crate) fn widen_f32(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| f64::from(x)).collect()
}

/// Assert `got` is finite and within relative L2 `budget` of `want`.
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &[f64], want: &[f64], budget: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        want.iter().all(|v| v.is_finite()),
        "{what}: reference not finite"
    );
    let cmp = compare(got, want);
    assert!(
        cmp.passes(budget),
        "{what}: rel_l2 {:e} (max abs {:e}, non-finite {}) exceeds {budget:e}",
        cmp.rel_l2,
        cmp.max_abs,
        cmp.non_finite
    );
}

/// Assert that `second`, run on the second part of a problem from the first
/// part's final state, continues `full` (the run over the whole): its output is
/// `tail`, the whole run's output over the second part, and its final states
/// are the whole run's. The budget allows only the f32 rounding of the
/// handed-over state, the one difference between the two.
#[track_caller]
pub(crate) fn assert_continues(
    second: &ScanOutput<f64, f64>,
    tail: &[f64],
    full: &ScanOutput<f64, f64>,
) {
    assert_close("second half", &second.out, tail, 1e-6);
    assert_close(
        "final",
        second.final_states.as_deref().unwrap(),
        full.final_states.as_deref().unwrap(),
        1e-6,
    );
}

/// A Mamba-1 problem with every option on: grouped B/C, D, z, delta_bias,
/// softplus, initial states (one row per sequence) and final states.
#[derive(Clone, Debug)]
pub(crate) struct Mamba1Problem {
    pub dims: Mamba1Dims,
    pub groups: usize,
    pub u: Vec<f64>,
    pub delta: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub z: Vec<f64>,
    pub a: Vec<f32>,
    pub d: Vec<f32>,
    pub delta_bias: Vec<f32>,
    pub h0: Vec<f32>,
}

impl Mamba1Problem {
    pub fn random(seed: u64, dims: Mamba1Dims, groups: usize, state_rows: usize) -> Self {
        let mut r = rng(seed);
        let (bdl, bc) = (dims.io_len(), dims.bc_len(groups));
        Mamba1Problem {
            dims,
            groups,
            u: uniform(&mut r, bdl, -1.0, 1.0),
            delta: uniform(&mut r, bdl, -4.0, 0.5),
            b: uniform(&mut r, bc, -1.0, 1.0),
            c: uniform(&mut r, bc, -1.0, 1.0),
            z: uniform(&mut r, bdl, -2.0, 2.0),
            a: uniform_f32(&mut r, dims.a_len(), -2.0, -0.1),
            d: uniform_f32(&mut r, dims.d_inner, -1.0, 1.0),
            delta_bias: uniform_f32(&mut r, dims.d_inner, -0.5, 0.5),
            h0: uniform_f32(&mut r, dims.states_len(state_rows), -1.0, 1.0),
        }
    }

    pub fn params(&self) -> SelectiveScanParams<'_, f64> {
        let bc = |data| BcInput::Grouped {
            groups: self.groups,
            data,
        };
        SelectiveScanParams::new(
            self.dims,
            &self.u,
            &self.delta,
            &self.a,
            bc(&self.b),
            bc(&self.c),
        )
        .with_d(&self.d)
        .with_z(&self.z)
        .with_delta_bias(&self.delta_bias)
        .with_delta_softplus(true)
        .with_initial_states(&self.h0)
        .with_final_states(true)
    }

    /// Positions `start..end` of batch row `row` as a batch-1 problem whose
    /// initial state is row `state_row` of this problem's.
    pub fn window(&self, row: usize, start: usize, end: usize, state_row: usize) -> Self {
        let (d_inner, seqlen) = (self.dims.d_inner, self.dims.seqlen);
        // Channel-major tensors: `lanes` contiguous runs of L per batch row.
        let cut = |data: &[f64], lanes: usize| -> Vec<f64> {
            (0..lanes)
                .flat_map(|lane| {
                    let at = (row * lanes + lane) * seqlen;
                    data[at + start..at + end].iter().copied()
                })
                .collect()
        };
        let state = self.dims.a_len();
        Mamba1Problem {
            dims: Mamba1Dims {
                batch: 1,
                seqlen: end - start,
                ..self.dims
            },
            groups: self.groups,
            u: cut(&self.u, d_inner),
            delta: cut(&self.delta, d_inner),
            b: cut(&self.b, self.groups * self.dims.d_state),
            c: cut(&self.c, self.groups * self.dims.d_state),
            z: cut(&self.z, d_inner),
            a: self.a.clone(),
            d: self.d.clone(),
            delta_bias: self.delta_bias.clone(),
            h0: self.h0[state_row * state..(state_row + 1) * state].to_vec(),
        }
    }
}

/// An SSD problem with every option on: G groups, D per (head, p), z, dt_bias,
/// softplus, a dt clamp, initial states (one row per sequence) and final states.
#[derive(Clone, Debug)]
pub(crate) struct SsdProblem {
    pub dims: SsdDims,
    pub x: Vec<f64>,
    pub dt: Vec<f64>,
    pub b: Vec<f64>,
    pub c: Vec<f64>,
    pub z: Vec<f64>,
    pub a: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub d: Vec<f32>,
    pub h0: Vec<f32>,
    pub dt_limit: (f32, f32),
}

impl SsdProblem {
    pub fn random(seed: u64, dims: SsdDims, state_rows: usize) -> Self {
        let mut r = rng(seed);
        let (heads, head_dim) = (dims.heads, dims.head_dim);
        let (blhp, blgn) = (dims.x_len(), dims.bc_len());
        SsdProblem {
            dims,
            x: uniform(&mut r, blhp, -1.0, 1.0),
            dt: uniform(&mut r, dims.dt_len(), -4.0, 1.0),
            b: uniform(&mut r, blgn, -1.0, 1.0),
            c: uniform(&mut r, blgn, -1.0, 1.0),
            z: uniform(&mut r, blhp, -2.0, 2.0),
            a: uniform_f32(&mut r, heads, -2.0, -0.1),
            dt_bias: uniform_f32(&mut r, heads, -0.5, 0.5),
            d: uniform_f32(&mut r, heads * head_dim, -1.0, 1.0),
            h0: uniform_f32(&mut r, dims.states_len(state_rows), -1.0, 1.0),
            dt_limit: (1e-3, 2.0),
        }
    }

    pub fn params(&self) -> SsdParams<'_, f64> {
        let (min, max) = self.dt_limit;
        SsdParams::new(self.dims, &self.x, &self.dt, &self.a, &self.b, &self.c)
            .with_dt_bias(&self.dt_bias)
            .with_dt_softplus(true)
            .with_dt_limit(min, max)
            .with_d(DSkip::PerHeadDim(&self.d))
            .with_z(&self.z)
            .with_initial_states(&self.h0)
            .with_final_states(true)
    }

    /// Positions `start..end` of batch row `row` as a batch-1 problem whose
    /// initial state is row `state_row` of this problem's.
    pub fn window(&self, row: usize, start: usize, end: usize, state_row: usize) -> Self {
        let d = self.dims;
        let (seqlen, heads, head_dim) = (d.seqlen, d.heads, d.head_dim);
        // Token-major tensors: one block of `width` values per position.
        let cut = |data: &[f64], width: usize| -> Vec<f64> {
            data[(row * seqlen + start) * width..(row * seqlen + end) * width].to_vec()
        };
        let state = d.states_len(1);
        SsdProblem {
            dims: SsdDims {
                batch: 1,
                seqlen: end - start,
                ..self.dims
            },
            x: cut(&self.x, heads * head_dim),
            dt: cut(&self.dt, heads),
            b: cut(&self.b, d.groups * d.d_state),
            c: cut(&self.c, d.groups * d.d_state),
            z: cut(&self.z, heads * head_dim),
            a: self.a.clone(),
            dt_bias: self.dt_bias.clone(),
            d: self.d.clone(),
            h0: self.h0[state_row * state..(state_row + 1) * state].to_vec(),
            dt_limit: self.dt_limit,
        }
    }
}
