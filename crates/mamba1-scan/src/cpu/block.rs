//! The recurrence over one L-block for one group of `LANES` channels.
//!
//! This is the inner loop of the kernel, and the only place that touches every
//! (step, channel, state index) triple. The channels of a group are the SIMD
//! lanes: every operation below is written lane by lane on `[f32; LANES]`, with
//! the state held as N lane vectors, so LLVM emits vector code and the sum over
//! the state index stays in plain sequential order for every channel.
//!
//! Per step `t`, lane (channel) `l`, state index `n` (all f32):
//!
//! ```text
//! decay   = exp2(dt[t,l] * a2[n,l])          a2 = A * log2(e), folded once by the caller
//! h[n,l]  = decay * h[n,l] + (dt[t,l] * u[t,l]) * B[n]
//! y[t,l]  = sum_n C[n] * h[n,l]              (sequential in n)
//! ```
//!
//! The skip term `D * u` and the z gate are applied when the block is written out.

use super::exp2::exp2;

/// Channels processed together, one per SIMD lane (two SSE or one AVX register).
pub(crate) const LANES: usize = 8;

/// One f32 per channel of a lane group.
pub(crate) type Lanes = [f32; LANES];

/// Where a step reads B or C.
pub(crate) enum Coefficients<'a> {
    /// Time-varying B/C of the group that every lane uses: the block's tile,
    /// `tile[t * N + n]` (transposed from the `(N, L)` input so a step reads N
    /// consecutive values), the same value broadcast to every lane.
    Shared { tile: &'a [f32], d_state: usize },
    /// Constant B/C, different for each channel: `values[n][lane]`.
    PerChannel(&'a [Lanes]),
}

/// A source of the N lane vectors of B or C at step `t` of the block.
trait StepCoefficients {
    fn at_step(&self, t: usize) -> impl Iterator<Item = Lanes> + '_;
}

struct SharedTile<'a> {
    tile: &'a [f32],
    d_state: usize,
}

impl StepCoefficients for SharedTile<'_> {
    #[inline(always)]
    fn at_step(&self, t: usize) -> impl Iterator<Item = Lanes> + '_ {
        self.tile[t * self.d_state..(t + 1) * self.d_state]
            .iter()
            .map(|&v| [v; LANES])
    }
}

struct PerChannel<'a>(&'a [Lanes]);

impl StepCoefficients for PerChannel<'_> {
    #[inline(always)]
    fn at_step(&self, _t: usize) -> impl Iterator<Item = Lanes> + '_ {
        self.0.iter().copied()
    }
}

/// Inputs of one lane group over one L-block (all slices of the block's length).
pub(crate) struct BlockInputs<'a> {
    /// Step sizes after bias and softplus.
    pub dt: &'a [Lanes],
    pub u: &'a [Lanes],
    pub b: Coefficients<'a>,
    pub c: Coefficients<'a>,
}

/// Run the recurrence over one block: `state` (N lane vectors) is read and left
/// holding the state after the block's last step; `y[t]` receives `sum_n C h`.
pub(crate) fn scan_block(
    state: &mut [Lanes],
    a2: &[Lanes],
    inputs: &BlockInputs<'_>,
    y: &mut [Lanes],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { scan_block_avx2(state, a2, inputs, y) };
    }
    scan_block_portable(state, a2, inputs, y)
}

/// The same loop compiled for AVX2: one instruction covers all `LANES` lanes
/// instead of two SSE halves. Only the instruction selection differs (Rust never
/// fuses a multiply and an add), so the results are bitwise those of the
/// portable build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_block_avx2(state: &mut [Lanes], a2: &[Lanes], inputs: &BlockInputs<'_>, y: &mut [Lanes]) {
    scan_block_portable(state, a2, inputs, y)
}

#[inline(always)]
fn scan_block_portable(
    state: &mut [Lanes],
    a2: &[Lanes],
    inputs: &BlockInputs<'_>,
    y: &mut [Lanes],
) {
    use Coefficients as C;
    // One monomorphised loop per B/C kind, so the inner loop has no branches.
    match (&inputs.b, &inputs.c) {
        (&C::Shared { tile: b, d_state }, &C::Shared { tile: c, .. }) => scan(
            state,
            a2,
            inputs,
            &SharedTile { tile: b, d_state },
            &SharedTile { tile: c, d_state },
            y,
        ),
        (&C::Shared { tile: b, d_state }, &C::PerChannel(c)) => scan(
            state,
            a2,
            inputs,
            &SharedTile { tile: b, d_state },
            &PerChannel(c),
            y,
        ),
        (&C::PerChannel(b), &C::Shared { tile: c, d_state }) => scan(
            state,
            a2,
            inputs,
            &PerChannel(b),
            &SharedTile { tile: c, d_state },
            y,
        ),
        (&C::PerChannel(b), &C::PerChannel(c)) => {
            scan(state, a2, inputs, &PerChannel(b), &PerChannel(c), y)
        }
    }
}

#[inline(always)]
fn scan(
    state: &mut [Lanes],
    a2: &[Lanes],
    inputs: &BlockInputs<'_>,
    b: &impl StepCoefficients,
    c: &impl StepCoefficients,
    y: &mut [Lanes],
) {
    let steps = inputs.dt.iter().zip(inputs.u).zip(y.iter_mut());
    for (t, ((dt, u), y)) in steps.enumerate() {
        let mut dtu = [0.0; LANES];
        for l in 0..LANES {
            dtu[l] = dt[l] * u[l];
        }
        let mut acc = [0.0f32; LANES];
        let per_n = state.iter_mut().zip(a2).zip(b.at_step(t)).zip(c.at_step(t));
        for (((h, a2), b), c) in per_n {
            for l in 0..LANES {
                let decay = exp2(dt[l] * a2[l]);
                h[l] = decay * h[l] + dtu[l] * b[l];
                acc[l] += c[l] * h[l];
            }
        }
        *y = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps by hand for lane 0 with N = 2 against the formula.
    #[test]
    fn two_steps_match_the_recurrence() {
        let n = 2;
        let a = [-1.0f32, -0.5];
        let a2: Vec<Lanes> = a
            .iter()
            .map(|&a| [a * std::f32::consts::LOG2_E; LANES])
            .collect();
        let dt = [[0.5f32; LANES], [0.25; LANES]];
        let u = [[2.0f32; LANES], [-1.0; LANES]];
        // tile[t * N + n]
        let b_tile = [1.0f32, 2.0, 3.0, 4.0];
        let c_tile = [0.5f32, -1.0, 1.5, 2.0];
        let mut state = vec![[0.1f32; LANES]; n];
        let mut y = [[0.0f32; LANES]; 2];
        let inputs = BlockInputs {
            dt: &dt,
            u: &u,
            b: Coefficients::Shared {
                tile: &b_tile,
                d_state: n,
            },
            c: Coefficients::Shared {
                tile: &c_tile,
                d_state: n,
            },
        };
        scan_block(&mut state, &a2, &inputs, &mut y);

        let mut h = [0.1f64; 2];
        let mut want_y = [0.0f64; 2];
        for t in 0..2 {
            let (dt, u) = (dt[t][0] as f64, u[t][0] as f64);
            for k in 0..n {
                h[k] = (dt * a[k] as f64).exp() * h[k] + dt * b_tile[t * n + k] as f64 * u;
                want_y[t] += c_tile[t * n + k] as f64 * h[k];
            }
        }
        for t in 0..2 {
            assert!(
                (y[t][0] as f64 - want_y[t]).abs() < 1e-6,
                "{y:?} vs {want_y:?}"
            );
            assert_eq!(y[t][0], y[t][LANES - 1]);
        }
        assert!((state[1][0] as f64 - h[1]).abs() < 1e-6);
    }

    /// The AVX2 build and the portable build of the loop agree bit for bit.
    #[test]
    fn instruction_sets_agree_bitwise() {
        let (n, steps) = (5, 33);
        let wave = |k: usize, scale: f32, offset: f32| -> Lanes {
            std::array::from_fn(|l| offset + scale * ((k * LANES + l) as f32 * 0.618).sin())
        };
        let a2: Vec<Lanes> = (0..n).map(|k| wave(k, 3.0, -4.0)).collect();
        let dt: Vec<Lanes> = (0..steps).map(|k| wave(k + 7, 0.5, 0.6)).collect();
        let u: Vec<Lanes> = (0..steps).map(|k| wave(k + 9, 1.0, 0.0)).collect();
        let tile: Vec<f32> = (0..steps * n).map(|k| (k as f32 * 0.37).cos()).collect();
        let c: Vec<Lanes> = (0..n).map(|k| wave(k + 3, 1.0, 0.0)).collect();
        let inputs = BlockInputs {
            dt: &dt,
            u: &u,
            b: Coefficients::Shared {
                tile: &tile,
                d_state: n,
            },
            c: Coefficients::PerChannel(&c),
        };
        let run = |f: fn(&mut [Lanes], &[Lanes], &BlockInputs<'_>, &mut [Lanes])| {
            let mut state = vec![[0.5f32; LANES]; n];
            let mut y = vec![[0.0f32; LANES]; steps];
            f(&mut state, &a2, &inputs, &mut y);
            (state, y)
        };
        let portable = run(scan_block_portable);
        assert_eq!(run(scan_block), portable);
        assert!(portable.1.iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn per_channel_coefficients_differ_by_lane() {
        let mut lanes = [0.0f32; LANES];
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = l as f32;
        }
        let b = [lanes];
        let c = [[1.0f32; LANES]];
        let mut state = vec![[0.0f32; LANES]];
        let mut y = [[0.0f32; LANES]];
        let inputs = BlockInputs {
            dt: &[[1.0; LANES]],
            u: &[[1.0; LANES]],
            b: Coefficients::PerChannel(&b),
            c: Coefficients::PerChannel(&c),
        };
        scan_block(&mut state, &[[-1.0; LANES]], &inputs, &mut y);
        assert_eq!(y[0], lanes);
    }
}
