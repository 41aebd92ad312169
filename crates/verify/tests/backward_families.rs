//! The two families' backward passes agree where their models coincide: a
//! Mamba-1 scan whose A is constant over the state (`A[d, n] = a_d`) with
//! grouped B/C is the SSD with head dim P = 1 (one head per channel, the same
//! groups), so every gradient of one is a gradient of the other up to layout
//! (`(b, D_in, L)` against `(b, L, H)`) and `dA_ssd[h] = sum_n dA_m1[h, n]`.
//! Checked on random shapes and options, varlen with per-sequence states
//! included, for the f64 oracles (to 1e-9: the same math derived twice) and
//! for the f32 CPU ports (within f32 rounding of each other).

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::{ScanGrads, SsdGrads};

/// One problem in Mamba-1's layouts, with its SSD twin built by transposition.
struct Twin {
    batch: usize,
    d_inner: usize,
    d_state: usize,
    seqlen: usize,
    groups: usize,
    cu: Option<Vec<i64>>,
    softplus: bool,
    // Mamba-1 layouts.
    u: Vec<f32>,
    delta: Vec<f32>,
    a_channel: Vec<f32>,
    a_full: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
    bias: Vec<f32>,
    h0: Vec<f32>,
    d_out: Vec<f32>,
    d_final: Vec<f32>,
}

impl Twin {
    fn new(
        seed: u64,
        lengths: Option<Vec<usize>>,
        batch: usize,
        d_inner: usize,
        d_state: usize,
        groups: usize,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let (batch, seqlen, cu) = match lengths {
            Some(lengths) => {
                let mut cu = vec![0i64];
                for l in &lengths {
                    cu.push(cu.last().unwrap() + *l as i64);
                }
                (1, lengths.iter().sum(), Some(cu))
            }
            None => (batch, 1 + rng.random_range(0..40), None),
        };
        let seqs = cu.as_ref().map_or(batch, |c| c.len() - 1);
        let mut v = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let io = batch * d_inner * seqlen;
        let a_channel = v(d_inner, -1.5, -0.2);
        let a_full = a_channel
            .iter()
            .flat_map(|&a| std::iter::repeat_n(a, d_state))
            .collect();
        let softplus = seed % 2 == 0;
        Twin {
            batch,
            d_inner,
            d_state,
            seqlen,
            groups,
            softplus,
            u: v(io, -1.0, 1.0),
            delta: if softplus {
                v(io, -3.0, 1.0)
            } else {
                v(io, 0.01, 0.6)
            },
            a_channel,
            a_full,
            b: v(batch * groups * d_state * seqlen, -1.0, 1.0),
            c: v(batch * groups * d_state * seqlen, -1.0, 1.0),
            d: v(d_inner, -1.0, 1.0),
            z: v(io, -2.0, 2.0),
            bias: v(d_inner, -0.3, 0.3),
            h0: v(seqs * d_inner * d_state, -1.0, 1.0),
            d_out: v(io, -1.0, 1.0),
            d_final: v(seqs * d_inner * d_state, -1.0, 1.0),
            cu,
        }
    }

    fn describe(&self) -> String {
        format!(
            "b {} D_in {} N {} L {} G {} cu_seqlens {:?} softplus {}",
            self.batch,
            self.d_inner,
            self.d_state,
            self.seqlen,
            self.groups,
            self.cu,
            self.softplus
        )
    }

    fn mamba1(&self) -> SelectiveScanParams<'_, f32> {
        let dims = Mamba1Dims::new(self.batch, self.d_inner, self.d_state, self.seqlen);
        let grouped = |data| BcInput::Grouped {
            groups: self.groups,
            data,
        };
        let mut p = SelectiveScanParams::new(
            dims,
            &self.u,
            &self.delta,
            &self.a_full,
            grouped(&self.b),
            grouped(&self.c),
        );
        p.d = Some(&self.d);
        p.z = Some(&self.z);
        p.delta_bias = Some(&self.bias);
        p.delta_softplus = self.softplus;
        p.initial_states = Some(&self.h0);
        p.cu_seqlens = self.cu.as_deref();
        p.return_final_states = true;
        p
    }

    /// `(b, D, L)` -> `(b, L, D)`.
    fn bdl_to_bld(&self, x: &[f32], d: usize) -> Vec<f32> {
        swap_inner_axes(x, self.batch, d, self.seqlen)
    }

    fn ssd_inputs(&self) -> SsdInputs {
        let gn = self.groups * self.d_state;
        SsdInputs {
            x: self.bdl_to_bld(&self.u, self.d_inner),
            dt: self.bdl_to_bld(&self.delta, self.d_inner),
            b: self.bdl_to_bld(&self.b, gn),
            c: self.bdl_to_bld(&self.c, gn),
            z: self.bdl_to_bld(&self.z, self.d_inner),
            d_out: self.bdl_to_bld(&self.d_out, self.d_inner),
        }
    }

    fn ssd<'a>(&'a self, s: &'a SsdInputs) -> SsdParams<'a, f32> {
        let dims = SsdDims::new(
            self.batch,
            self.seqlen,
            self.d_inner,
            1,
            self.d_state,
            self.groups,
        );
        let mut p = SsdParams::new(dims, &s.x, &s.dt, &self.a_channel, &s.b, &s.c)
            .with_dt_bias(&self.bias)
            .with_dt_softplus(self.softplus)
            // Mamba-1 has no clamp: an unbounded limit is the identity.
            .with_dt_limit(f32::NEG_INFINITY, f32::INFINITY)
            .with_d(DSkip::PerHead(&self.d))
            .with_z(&s.z)
            .with_initial_states(&self.h0)
            .with_final_states(true);
        if let Some(cu) = &self.cu {
            p = p.with_cu_seqlens(cu);
        }
        p
    }

    /// The SSD gradients in Mamba-1's layouts (`dA` summed over the state).
    fn ssd_as_mamba1(&self, g: &SsdGrads<f64, f64>) -> ScanGrads<f64, f64> {
        // `(b, L, D)` -> `(b, D, L)`.
        let back = |x: &[f64], d: usize| swap_inner_axes(x, self.batch, self.seqlen, d);
        let gn = self.groups * self.d_state;
        ScanGrads {
            du: back(&g.dx, self.d_inner),
            ddelta: back(&g.ddt, self.d_inner),
            da: g.da.clone(),
            db: back(&g.db, gn),
            dc: back(&g.dc, gn),
            dd: g.dd.clone(),
            dz: g.dz.as_ref().map(|z| back(z, self.d_inner)),
            ddelta_bias: g.ddt_bias.clone(),
            dinitial_states: g.dinitial_states.clone(),
        }
    }

    fn sum_da_over_states(&self, g: &ScanGrads<f64, f64>) -> ScanGrads<f64, f64> {
        ScanGrads {
            da: g.da.chunks(self.d_state).map(|r| r.iter().sum()).collect(),
            ..g.clone()
        }
    }
}

struct SsdInputs {
    x: Vec<f32>,
    dt: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    z: Vec<f32>,
    d_out: Vec<f32>,
}

/// Largest `|a - b| / (|b|_max + floor)` over every gradient, with its name.
/// `(b, m, n)` -> `(b, n, m)`: Mamba-1's channel-major layouts to the SSD's
/// token-major ones (`m` = channels) and back (`m` = positions).
fn swap_inner_axes<T: Copy + Default>(x: &[T], b: usize, m: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    for bi in 0..b {
        for i in 0..m {
            for j in 0..n {
                out[(bi * n + j) * m + i] = x[(bi * m + i) * n + j];
            }
        }
    }
    out
}

fn worst(a: &ScanGrads<f64, f64>, b: &ScanGrads<f64, f64>) -> (f64, &'static str) {
    let pairs: [(&'static str, &[f64], &[f64]); 9] = [
        ("du", &a.du, &b.du),
        ("ddelta", &a.ddelta, &b.ddelta),
        ("dA", &a.da, &b.da),
        ("dB", &a.db, &b.db),
        ("dC", &a.dc, &b.dc),
        ("dD", a.dd.as_deref().unwrap(), b.dd.as_deref().unwrap()),
        ("dz", a.dz.as_deref().unwrap(), b.dz.as_deref().unwrap()),
        (
            "ddelta_bias",
            a.ddelta_bias.as_deref().unwrap(),
            b.ddelta_bias.as_deref().unwrap(),
        ),
        (
            "dinitial_states",
            a.dinitial_states.as_deref().unwrap(),
            b.dinitial_states.as_deref().unwrap(),
        ),
    ];
    let mut out = (0.0, "");
    for (name, x, y) in pairs {
        assert_eq!(x.len(), y.len(), "{name}: lengths differ");
        let scale = y.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let err = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs() / scale));
        if err > out.0 {
            out = (err, name);
        }
    }
    out
}

fn shape() -> impl Strategy<Value = (u64, Option<Vec<usize>>, usize, usize, usize, usize)> {
    (
        any::<u64>(),
        prop::option::of(prop::collection::vec(0usize..24, 1..4)),
        1usize..3,
        prop::sample::select(vec![2usize, 4, 6]),
        1usize..9,
        prop::sample::select(vec![1usize, 2]),
    )
        .prop_filter("varlen needs at least one token", |(_, l, ..)| {
            l.as_ref().is_none_or(|l| l.iter().sum::<usize>() > 0)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mamba1_with_a_constant_over_n_is_the_ssd_with_p_1(
        (seed, lengths, batch, d_inner, d_state, groups) in shape()
    ) {
        let t = Twin::new(seed, lengths, batch, d_inner, d_state, groups);
        let s = t.ssd_inputs();
        let m1 = t.mamba1();
        let m2 = t.ssd(&s);

        // The f64 oracles: the same adjoint derived twice.
        let g1 = ssm_reference::mamba1_backward::selective_scan_backward(&m1, &t.d_out, Some(&t.d_final)).unwrap();
        let g2 = ssm_reference::ssd_backward::ssd_backward(&m2, &s.d_out, Some(&t.d_final)).unwrap();
        let (err, name) = worst(&t.ssd_as_mamba1(&g2), &t.sum_da_over_states(&g1));
        prop_assert!(err < 1e-9, "oracles differ: {name} by {err:e} ({})", t.describe());

        // The f32 CPU ports (blocked scan backward, chunked SSD backward).
        let p1 = mamba1_scan::selective_scan_backward(
            &m1, &t.d_out, Some(&t.d_final),
            mamba1_scan::Backend::Cpu(mamba1_scan::CpuOptions { block_len: 5 }),
        ).unwrap();
        let p2 = mamba2_ssd::ssd_backward(
            &m2, &s.d_out, Some(&t.d_final),
            mamba2_ssd::Backend::Cpu(mamba2_ssd::CpuOptions { chunk_size: 7 }),
        ).unwrap();
        let (err, name) = worst(&t.ssd_as_mamba1(&p2.to_f64()), &t.sum_da_over_states(&p1.to_f64()));
        prop_assert!(err < 2e-4, "CPU ports differ: {name} by {err:e} ({})", t.describe());
    }
}
