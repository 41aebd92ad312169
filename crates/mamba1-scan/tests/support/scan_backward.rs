//! Random problems and incoming gradients of the Mamba-1 tests
//! (`cpu_vs_reference.rs` and `backward_properties.rs` on the CPU,
//! `gpu_scan_backward.rs` on CUDA): one generator, so all judge the same kind
//! of input.
#![allow(dead_code)]

use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use ssm_core::element::round_slice;
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::math::softplus_f32;
use ssm_core::Element;

#[derive(Clone, Debug)]
pub struct Case {
    pub dims: Mamba1Dims,
    /// `Some(G)`: `(b, G, N, L)`; `None`: constant `(D_in, N)`.
    pub b_groups: Option<usize>,
    pub c_groups: Option<usize>,
    pub d: bool,
    pub z: bool,
    pub bias: bool,
    pub softplus: bool,
    pub h0: bool,
    pub final_states: bool,
    pub cu: Option<Vec<i64>>,
    /// Step sizes up to 10 instead of the trained range around 0.02.
    pub large_dt: bool,
}

impl Case {
    /// Every option on (D, z, bias, softplus, initial and final states), B and
    /// C grouped with one group.
    pub fn all(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Self {
        Case {
            dims: Mamba1Dims {
                batch,
                d_inner,
                d_state,
                seqlen,
            },
            b_groups: Some(1),
            c_groups: Some(1),
            d: true,
            z: true,
            bias: true,
            softplus: true,
            h0: true,
            final_states: true,
            cu: None,
            large_dt: false,
        }
    }

    /// No option but the final states, B and C grouped with one group.
    pub fn plain(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Self {
        let all = Self::all(batch, d_inner, d_state, seqlen);
        Case {
            d: false,
            z: false,
            bias: false,
            softplus: false,
            h0: false,
            ..all
        }
    }

    pub fn groups(mut self, b: Option<usize>, c: Option<usize>) -> Self {
        self.b_groups = b;
        self.c_groups = c;
        self
    }

    pub fn rows(&self) -> usize {
        self.cu.as_ref().map_or(self.dims.batch, |cu| cu.len() - 1)
    }
}

pub fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|g| n % g == 0).collect()
}

/// The f32 draw of a problem and of the incoming gradients.
#[derive(Clone)]
pub struct Data {
    pub u: Vec<f32>,
    pub delta: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub d: Vec<f32>,
    pub z: Vec<f32>,
    pub bias: Vec<f32>,
    pub h0: Vec<f32>,
    pub d_out: Vec<f32>,
    pub d_final: Vec<f32>,
}

pub fn randn(rng: &mut StdRng) -> f32 {
    StandardNormal.sample(rng)
}

pub fn randn_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| randn(rng)).collect()
}

impl Data {
    /// Step sizes from softplus(randn - 4) (or up to 10), A = -exp(randn).
    pub fn generate(case: &Case, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let dims = case.dims;
        let (d_inner, seqlen) = (dims.d_inner, dims.seqlen);
        let bdl = dims.io_len();
        let bc_len = |g: Option<usize>| g.map_or(dims.a_len(), |g| dims.bc_len(g));
        let states = dims.states_len(case.rows());
        let bias: Vec<f32> = (0..d_inner).map(|_| 0.5 * randn(&mut rng)).collect();
        // Without softplus, delta is the step size less the bias, so that the
        // step size delta + bias stays positive (a negative one grows the state).
        let delta = (0..bdl)
            .map(|i| {
                let pre = if case.large_dt {
                    rng.random_range(-4.0f32..10.0)
                } else {
                    randn(&mut rng) - 4.0
                };
                let bias = if case.bias {
                    bias[(i / seqlen) % d_inner]
                } else {
                    0.0
                };
                if case.softplus {
                    pre
                } else {
                    softplus_f32(pre) - bias
                }
            })
            .collect();
        Data {
            u: randn_vec(&mut rng, bdl),
            delta,
            a: (0..dims.a_len())
                .map(|_| -randn(&mut rng).clamp(-2.3, 2.0).exp())
                .collect(),
            b: randn_vec(&mut rng, bc_len(case.b_groups)),
            c: randn_vec(&mut rng, bc_len(case.c_groups)),
            d: randn_vec(&mut rng, d_inner),
            z: randn_vec(&mut rng, bdl),
            bias,
            h0: randn_vec(&mut rng, states),
            d_out: randn_vec(&mut rng, bdl),
            d_final: randn_vec(&mut rng, states),
        }
    }

    /// Positions `range` of every row, as a batch-`batch` problem with state
    /// rows `states` (for varlen: the sequence's own row).
    pub fn window(&self, case: &Case, range: Range<usize>, states: Range<usize>) -> (Case, Data) {
        let Mamba1Dims {
            batch,
            d_inner,
            d_state,
            seqlen,
        } = case.dims;
        let cut = |xs: &[f32], lanes: usize| -> Vec<f32> {
            (0..lanes)
                .flat_map(|l| xs[l * seqlen + range.start..l * seqlen + range.end].to_vec())
                .collect()
        };
        let bc = |xs: &[f32], g: Option<usize>| match g {
            Some(g) => cut(xs, batch * g * d_state),
            None => xs.to_vec(),
        };
        let state = d_inner * d_state;
        let rows = |xs: &[f32]| xs[states.start * state..states.end * state].to_vec();
        let mut c = case.clone();
        c.cu = None;
        c.dims.seqlen = range.len();
        c.dims.batch = if case.cu.is_some() { 1 } else { batch };
        let d = Data {
            u: cut(&self.u, batch * d_inner),
            delta: cut(&self.delta, batch * d_inner),
            b: bc(&self.b, case.b_groups),
            c: bc(&self.c, case.c_groups),
            z: cut(&self.z, batch * d_inner),
            d_out: cut(&self.d_out, batch * d_inner),
            h0: rows(&self.h0),
            d_final: rows(&self.d_final),
            ..self.clone()
        };
        (c, d)
    }
}

/// Tensors rounded to `T`.
pub struct Rounded<T> {
    pub u: Vec<T>,
    pub delta: Vec<T>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub z: Vec<T>,
    pub d_out: Vec<T>,
}

impl<T: Element> Rounded<T> {
    pub fn new(data: &Data) -> Self {
        Rounded {
            u: round_slice(&data.u),
            delta: round_slice(&data.delta),
            b: round_slice(&data.b),
            c: round_slice(&data.c),
            z: round_slice(&data.z),
            d_out: round_slice(&data.d_out),
        }
    }

    pub fn params<'a>(&'a self, case: &'a Case, data: &'a Data) -> SelectiveScanParams<'a, T> {
        let mut p = SelectiveScanParams::new(
            case.dims,
            &self.u,
            &self.delta,
            &data.a,
            BcInput::from_groups(case.b_groups, &self.b),
            BcInput::from_groups(case.c_groups, &self.c),
        )
        .with_delta_softplus(case.softplus)
        .with_final_states(case.final_states);
        p.d = case.d.then_some(&data.d[..]);
        p.z = case.z.then_some(&self.z[..]);
        p.delta_bias = case.bias.then_some(&data.bias[..]);
        p.initial_states = case.h0.then_some(&data.h0[..]);
        p.cu_seqlens = case.cu.as_deref();
        p
    }
}
