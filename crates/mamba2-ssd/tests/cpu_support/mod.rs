//! Random SSD problems with fixed seeds and the tolerance model's `K`, shared by
//! the CPU-port tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use ssm_core::element::round_slice;
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::math::softplus;
use ssm_core::shape::segments;
use ssm_core::tolerance::max_window_log_decay;
use ssm_core::Element;

/// Which options a generated problem uses.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub dt_bias: bool,
    pub dt_softplus: bool,
    pub dt_limit: Option<(f32, f32)>,
    pub d: Option<DKind>,
    pub z: bool,
    pub initial_states: bool,
    pub final_states: bool,
    pub cu_seqlens: Option<Vec<i64>>,
    pub steps: Steps,
}

/// How step sizes and A are drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Steps {
    /// dt' ~ softplus(randn - 4), A in [-e, -1/e] (docs/DESIGN.md §4).
    #[default]
    Typical,
    /// dt' = softplus(randn) + U(0, 10), A in [-8, -0.5]: almost every decay
    /// between two tokens underflows.
    Large,
    /// Typical steps with a spike dt' ~ U(5, 10) at one token in eight, A in
    /// [-8, -0.5]: the cumulative sums inside a chunk grow large while decays
    /// between spikes stay moderate, which is where f32 cumsum error shows.
    Spiky,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DKind {
    PerHead,
    PerHeadDim,
}

impl Options {
    /// Every option on (except varlen).
    pub fn all() -> Self {
        Options {
            dt_bias: true,
            dt_softplus: true,
            dt_limit: Some((1e-3, 0.5)),
            d: Some(DKind::PerHeadDim),
            z: true,
            initial_states: true,
            final_states: true,
            cu_seqlens: None,
            steps: Steps::Typical,
        }
    }

    /// Large steps (`Steps::Large`) with z, D per head and both states: the
    /// forward's and the backward's large-step case.
    pub fn large_steps() -> Self {
        Options {
            steps: Steps::Large,
            z: true,
            d: Some(DKind::PerHead),
            initial_states: true,
            final_states: true,
            ..Options::default()
        }
    }
}

/// `err` is the typed dimension error that names `arg`.
pub fn assert_dimension_error(err: &ssm_core::SsmError, arg: &str) {
    assert!(
        matches!(err, ssm_core::SsmError::Dimension { arg: a, .. } if *a == arg),
        "{err}"
    );
}

/// A problem held in f32; `params::<T>` rounds the tensor inputs to `T`.
pub struct Case {
    pub dims: SsdDims,
    pub opts: Options,
    pub x: Vec<f32>,
    pub dt: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub z: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub d: Vec<f32>,
    pub initial_states: Vec<f32>,
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

impl Case {
    pub fn new(dims: SsdDims, opts: Options, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let (batch, seqlen, heads, head_dim) = (dims.batch, dims.seqlen, dims.heads, dims.head_dim);
        let (d_state, groups) = (dims.d_state, dims.groups);
        let tokens = batch * seqlen;
        let x = randn(&mut rng, tokens * heads * head_dim);
        let b = randn(&mut rng, tokens * groups * d_state);
        let c = randn(&mut rng, tokens * groups * d_state);
        let z = randn(&mut rng, tokens * heads * head_dim);
        let a: Vec<f32> = (0..heads)
            .map(|_| {
                if opts.steps != Steps::Typical {
                    -rng.random_range(0.5f32..8.0)
                } else {
                    -rng.random_range(-1.0f32..1.0).exp()
                }
            })
            .collect();
        let dt_bias: Vec<f32> = (0..heads).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        // dt as stored: with in-kernel softplus the raw value is shifted so that
        // dt' ~ softplus(randn - 4); without it dt' is generated directly.
        let dt: Vec<f32> = (0..tokens * heads)
            .map(|_| {
                let r: f32 = rng.sample(StandardNormal);
                let spike = opts.steps == Steps::Spiky && rng.random_range(0..8) == 0;
                match (opts.steps, opts.dt_softplus) {
                    (Steps::Large, _) => softplus(r as f64) as f32 + rng.random_range(0.0f32..10.0),
                    _ if spike => rng.random_range(5.0f32..10.0),
                    (_, true) => r - 4.0,
                    (_, false) => softplus(r as f64 - 4.0) as f32,
                }
            })
            .collect();
        let d_len = match opts.d {
            Some(DKind::PerHeadDim) => heads * head_dim,
            _ => heads,
        };
        let d = randn(&mut rng, d_len);
        let num_seqs = opts.cu_seqlens.as_ref().map_or(batch, |cu| cu.len() - 1);
        let initial_states = randn(&mut rng, num_seqs * heads * head_dim * d_state);
        Case {
            dims,
            opts,
            x,
            dt,
            a,
            b,
            c,
            z,
            dt_bias,
            d,
            initial_states,
        }
    }

    /// The tensor inputs rounded to `T`, which both sides of a comparison read.
    pub fn rounded<T: Element>(&self) -> Rounded<T> {
        Rounded {
            x: round_slice(&self.x),
            dt: round_slice(&self.dt),
            b: round_slice(&self.b),
            c: round_slice(&self.c),
            z: round_slice(&self.z),
        }
    }

    pub fn params<'a, T: Element>(&'a self, r: &'a Rounded<T>) -> SsdParams<'a, T> {
        let o = &self.opts;
        let mut p = SsdParams::new(self.dims, &r.x, &r.dt, &self.a, &r.b, &r.c)
            .with_dt_softplus(o.dt_softplus)
            .with_final_states(o.final_states)
            .with_check_finite(true);
        if o.dt_bias {
            p = p.with_dt_bias(&self.dt_bias);
        }
        if let Some((lo, hi)) = o.dt_limit {
            p = p.with_dt_limit(lo, hi);
        }
        match o.d {
            Some(DKind::PerHead) => p = p.with_d(DSkip::PerHead(&self.d)),
            Some(DKind::PerHeadDim) => p = p.with_d(DSkip::PerHeadDim(&self.d)),
            None => {}
        }
        if o.z {
            p = p.with_z(&r.z);
        }
        if o.initial_states {
            p = p.with_initial_states(&self.initial_states);
        }
        if let Some(cu) = &o.cu_seqlens {
            p = p.with_cu_seqlens(cu);
        }
        p
    }
}

pub struct Rounded<T> {
    pub x: Vec<T>,
    pub dt: Vec<T>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub z: Vec<T>,
}

/// `K` of the tolerance model for a chunked implementation with chunk `chunk`:
/// the largest `sum |dt' A|` over one chunk of one (sequence, head), chunks
/// restarting at each sequence start.
pub fn chunked_log_decay<T: Element>(p: &SsdParams<'_, T>, chunk: usize) -> f64 {
    let dims = p.dims;
    let rows = if p.cu_seqlens.is_some() {
        1
    } else {
        dims.batch
    };
    let mut k: f64 = 0.0;
    for bi in 0..rows {
        for &(start, end) in &segments(p.cu_seqlens, dims.seqlen) {
            for h in 0..dims.heads {
                let a: Vec<f64> = (start..end)
                    .map(|t| p.dt_at(bi, t, h) * p.a[h] as f64)
                    .collect();
                k = k.max(max_window_log_decay(&a, a.len(), chunk));
            }
        }
    }
    k
}

/// [`SsdDims::new`] under the short name the tests use: `(b, L, H, P, N, G)`.
pub fn dims(b: usize, l: usize, h: usize, p: usize, n: usize, g: usize) -> SsdDims {
    SsdDims::new(b, l, h, p, n, g)
}
