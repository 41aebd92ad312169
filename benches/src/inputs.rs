//! Benchmark inputs: realistic values (never zeros), generated fast and in
//! parallel so that full-size workloads (hundreds of millions of elements) take
//! well under a second on the device machine's CPUs.
//!
//! Values follow the layers the workloads come from: x/u/z/B/C roughly
//! standard normal; step-size pre-activations uniform in [-4, -1.5] (softplus
//! gives 0.018 to 0.2: decays neither vanish nor saturate); A uniform in
//! [-8, -0.5]; D and the biases small. Each tensor has its own stream of a
//! counter-based generator (splitmix64 of the index), so values do not depend
//! on the thread count.

use rayon::prelude::*;
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::Element;
use ssm_telemetry::problem::{
    Mamba1ScanShape, Mamba1StepShape, Mamba2StepShape, SkipKind, SsdShape,
};

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Uniform in [0, 1) from (stream, index).
fn unit(stream: u64, i: u64) -> f32 {
    let bits = splitmix64(stream.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ i);
    (bits >> 40) as f32 / (1u64 << 24) as f32
}

/// The distribution of a tensor.
#[derive(Clone, Copy, Debug)]
pub enum Dist {
    /// Approximately standard normal (Irwin-Hall of 4 uniforms, rescaled).
    Normal,
    Uniform(f32, f32),
}

/// `len` values of `dist` from stream `stream`, rounded to `T`.
pub fn fill<T: Element>(len: usize, stream: u64, dist: Dist) -> Vec<T> {
    let mut out = vec![T::default(); len];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(chunk, slice)| {
            let base = (chunk << 16) as u64;
            for (j, v) in slice.iter_mut().enumerate() {
                let i = base + j as u64;
                let x = match dist {
                    Dist::Normal => {
                        let s: f32 = (0..4).map(|k| unit(stream, 4 * i + k)).sum();
                        // Sum of 4 U(0,1): mean 2, variance 1/3.
                        (s - 2.0) * 3f32.sqrt()
                    }
                    Dist::Uniform(lo, hi) => lo + (hi - lo) * unit(stream, i),
                };
                *v = T::from_f32(x);
            }
        });
    out
}

const DT_PRE: Dist = Dist::Uniform(-4.0, -1.5);
const A_NEG: Dist = Dist::Uniform(-8.0, -0.5);
const SMALL: Dist = Dist::Uniform(-0.5, 0.5);

/// Host tensors of a Mamba-1 scan.
pub struct Mamba1Host<T> {
    pub shape: Mamba1ScanShape,
    pub u: Vec<T>,
    pub delta: Vec<T>,
    pub a: Vec<f32>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub d: Vec<f32>,
    pub z: Vec<T>,
    pub delta_bias: Vec<f32>,
    pub initial_states: Vec<f32>,
}

impl<T: Element> Mamba1Host<T> {
    pub fn generate(s: &Mamba1ScanShape, seed: u64) -> Self {
        let bdl = s.batch * s.d_inner * s.seqlen;
        let bc = match s.groups {
            Some(g) => s.batch * g * s.d_state * s.seqlen,
            None => s.d_inner * s.d_state,
        };
        let opt = |on: bool, n: usize| if on { n } else { 0 };
        Mamba1Host {
            shape: *s,
            u: fill(bdl, seed, Dist::Normal),
            delta: fill(
                bdl,
                seed + 1,
                if s.softplus {
                    DT_PRE
                } else {
                    Dist::Uniform(0.02, 0.2)
                },
            ),
            a: fill(s.d_inner * s.d_state, seed + 2, A_NEG),
            b: fill(bc, seed + 3, Dist::Normal),
            c: fill(bc, seed + 4, Dist::Normal),
            d: fill(opt(s.d, s.d_inner), seed + 5, Dist::Normal),
            z: fill(opt(s.z, bdl), seed + 6, Dist::Normal),
            delta_bias: fill(opt(s.delta_bias, s.d_inner), seed + 7, SMALL),
            initial_states: fill(
                opt(s.initial_states, s.batch * s.d_inner * s.d_state),
                seed + 8,
                Dist::Normal,
            ),
        }
    }

    pub fn params(&self) -> SelectiveScanParams<'_, T> {
        let s = &self.shape;
        fn bc<T>(groups: Option<usize>, data: &[T]) -> BcInput<'_, T> {
            match groups {
                Some(groups) => BcInput::Grouped { groups, data },
                None => BcInput::Constant(data),
            }
        }
        let dims = Mamba1Dims::new(s.batch, s.d_inner, s.d_state, s.seqlen);
        let mut p = SelectiveScanParams::new(
            dims,
            &self.u,
            &self.delta,
            &self.a,
            bc(s.groups, &self.b),
            bc(s.groups, &self.c),
        )
        .with_delta_softplus(s.softplus)
        .with_final_states(s.final_states);
        if s.d {
            p = p.with_d(&self.d);
        }
        if s.z {
            p = p.with_z(&self.z);
        }
        if s.delta_bias {
            p = p.with_delta_bias(&self.delta_bias);
        }
        if s.initial_states {
            p = p.with_initial_states(&self.initial_states);
        }
        p
    }
}

/// Host tensors of an SSD forward pass.
pub struct SsdHost<T> {
    pub shape: SsdShape,
    pub x: Vec<T>,
    pub dt: Vec<T>,
    pub a: Vec<f32>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub dt_bias: Vec<f32>,
    pub d: Vec<f32>,
    pub z: Vec<T>,
    pub initial_states: Vec<f32>,
}

impl<T: Element> SsdHost<T> {
    pub fn generate(s: &SsdShape, seed: u64) -> Self {
        let blhp = s.batch * s.seqlen * s.heads * s.head_dim;
        let blgn = s.batch * s.seqlen * s.groups * s.d_state;
        let opt = |on: bool, n: usize| if on { n } else { 0 };
        let d_len = s.d.len(s.heads, s.head_dim);
        SsdHost {
            shape: *s,
            x: fill(blhp, seed, Dist::Normal),
            dt: fill(
                s.batch * s.seqlen * s.heads,
                seed + 1,
                if s.softplus {
                    DT_PRE
                } else {
                    Dist::Uniform(0.02, 0.2)
                },
            ),
            a: fill(s.heads, seed + 2, A_NEG),
            b: fill(blgn, seed + 3, Dist::Normal),
            c: fill(blgn, seed + 4, Dist::Normal),
            dt_bias: fill(opt(s.dt_bias, s.heads), seed + 5, SMALL),
            d: fill(d_len, seed + 6, Dist::Normal),
            z: fill(opt(s.z, blhp), seed + 7, Dist::Normal),
            initial_states: fill(
                opt(s.initial_states, s.batch * s.heads * s.head_dim * s.d_state),
                seed + 8,
                Dist::Normal,
            ),
        }
    }

    pub fn params(&self) -> SsdParams<'_, T> {
        let s = &self.shape;
        let dims = SsdDims::new(s.batch, s.seqlen, s.heads, s.head_dim, s.d_state, s.groups);
        let mut p = SsdParams::new(dims, &self.x, &self.dt, &self.a, &self.b, &self.c)
            .with_dt_softplus(s.softplus)
            .with_final_states(s.final_states);
        if s.dt_bias {
            p = p.with_dt_bias(&self.dt_bias);
        }
        match s.d {
            SkipKind::None => {}
            SkipKind::PerHead => p = p.with_d(DSkip::PerHead(&self.d)),
            SkipKind::PerHeadDim => p = p.with_d(DSkip::PerHeadDim(&self.d)),
        }
        if s.z {
            p = p.with_z(&self.z);
        }
        if s.initial_states {
            p = p.with_initial_states(&self.initial_states);
        }
        p
    }
}

/// Host tensors of a decode step (either family) and its state cache.
pub struct StepHost<T> {
    pub x: Vec<T>,
    pub dt: Vec<T>,
    pub a: Vec<f32>,
    pub b: Vec<T>,
    pub c: Vec<T>,
    pub d: Vec<f32>,
    pub z: Vec<T>,
    pub dt_bias: Vec<f32>,
    pub state: Vec<f32>,
}

impl<T: Element> StepHost<T> {
    /// `width` values per row (D_in or H x P), `channels` step sizes per row
    /// (D_in or H), `a_len` entries of A, `d_len` of D.
    #[allow(clippy::too_many_arguments)]
    fn generate(
        batch: usize,
        width: usize,
        channels: usize,
        bgn: usize,
        a_len: usize,
        d_len: usize,
        z: bool,
        dt_bias: bool,
        d_state: usize,
        seed: u64,
    ) -> Self {
        StepHost {
            x: fill(batch * width, seed, Dist::Normal),
            dt: fill(batch * channels, seed + 1, DT_PRE),
            a: fill(a_len, seed + 2, A_NEG),
            b: fill(bgn, seed + 3, Dist::Normal),
            c: fill(bgn, seed + 4, Dist::Normal),
            d: fill(d_len, seed + 5, Dist::Normal),
            z: fill(if z { batch * width } else { 0 }, seed + 6, Dist::Normal),
            dt_bias: fill(if dt_bias { channels } else { 0 }, seed + 7, SMALL),
            state: fill(batch * width * d_state, seed + 8, Dist::Normal),
        }
    }

    pub fn mamba1(s: &Mamba1StepShape, seed: u64) -> Self {
        Self::generate(
            s.batch,
            s.d_inner,
            s.d_inner,
            s.batch * s.groups * s.d_state,
            s.d_inner * s.d_state,
            if s.d { s.d_inner } else { 0 },
            s.z,
            s.dt_bias,
            s.d_state,
            seed,
        )
    }

    pub fn mamba2(s: &Mamba2StepShape, seed: u64) -> Self {
        let d_len = s.d.len(s.heads, s.head_dim);
        Self::generate(
            s.batch,
            s.heads * s.head_dim,
            s.heads,
            s.batch * s.groups * s.d_state,
            s.heads,
            d_len,
            s.z,
            s.dt_bias,
            s.d_state,
            seed,
        )
    }

    pub fn mamba1_params(&self, s: &Mamba1StepShape) -> Mamba1StepParams<'_, T> {
        let mut p = Mamba1StepParams::new(
            s.batch, s.d_inner, s.d_state, s.groups, &self.x, &self.dt, &self.a, &self.b, &self.c,
        );
        p.d = s.d.then_some(self.d.as_slice());
        p.z = s.z.then_some(self.z.as_slice());
        p.dt_bias = s.dt_bias.then_some(self.dt_bias.as_slice());
        p.dt_softplus = s.softplus;
        p
    }

    pub fn mamba2_params(&self, s: &Mamba2StepShape) -> Mamba2StepParams<'_, T> {
        let mut p = Mamba2StepParams::new(
            s.batch, s.heads, s.head_dim, s.d_state, s.groups, &self.x, &self.dt, &self.a, &self.b,
            &self.c,
        );
        p.d = match s.d {
            SkipKind::None => None,
            SkipKind::PerHead => Some(DSkip::PerHead(&self.d)),
            SkipKind::PerHeadDim => Some(DSkip::PerHeadDim(&self.d)),
        };
        p.z = s.z.then_some(self.z.as_slice());
        p.dt_bias = s.dt_bias.then_some(self.dt_bias.as_slice());
        p.dt_softplus = s.softplus;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_are_deterministic_nonzero_and_shaped() {
        let a: Vec<f32> = fill(100_000, 7, Dist::Normal);
        let b: Vec<f32> = fill(100_000, 7, Dist::Normal);
        assert_eq!(a, b);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / a.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
        assert!(a.iter().filter(|x| **x == 0.0).count() < 5);
        let u: Vec<f32> = fill(10_000, 3, Dist::Uniform(-8.0, -0.5));
        assert!(u.iter().all(|x| (-8.0..-0.5).contains(x)));
        let other: Vec<f32> = fill(100, 8, Dist::Normal);
        assert_ne!(other[..], a[..100], "streams differ");
    }
}
