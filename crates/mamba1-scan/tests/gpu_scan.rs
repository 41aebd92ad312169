//! The CUDA scan against the f64 oracle (`ssm_reference::selective_scan`) and
//! the CPU port, on fresh random inputs, with poisoned outputs. Skips loudly
//! without a GPU (`SSM_REQUIRE_GPU=1` turns the skip into a failure).
//!
//! Every test prints its verification table (`--nocapture` shows it); a row
//! fails when the relative L2 error of the output or of the final states is over
//! the `ssm_core::tolerance` budget, or when any element is NaN/Inf (an element
//! the kernel never wrote stays NaN from the poison).

use half::{bf16, f16};
use mamba1_scan::cuda::{selective_scan_cuda, selective_scan_cuda_tuned, ScanTuning};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::tolerance::{compare, rel_l2_budget, state_budget};
use ssm_core::{Element, ScanOutput, SsmError};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, Gpu};

// ---------------------------------------------------------------- problems

#[derive(Clone, Debug)]
struct Case {
    batch: usize,
    d_inner: usize,
    d_state: usize,
    seqlen: usize,
    /// `Some(G)`: grouped `(b, G, N, L)`; `None`: constant `(D_in, N)`.
    b_groups: Option<usize>,
    c_groups: Option<usize>,
    d: bool,
    z: bool,
    bias: bool,
    softplus: bool,
    h0: bool,
    final_states: bool,
    /// Varlen sequence lengths (batch must be 1; they must sum to `seqlen`).
    varlen: Option<Vec<usize>>,
    /// dt up to 10 instead of the trained range.
    large_dt: bool,
    tuning: ScanTuning,
}

impl Case {
    fn plain(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Self {
        Case {
            batch,
            d_inner,
            d_state,
            seqlen,
            b_groups: Some(1),
            c_groups: Some(1),
            d: false,
            z: false,
            bias: false,
            softplus: false,
            h0: false,
            final_states: true,
            varlen: None,
            large_dt: false,
            tuning: ScanTuning::default(),
        }
    }

    fn all_options(mut self) -> Self {
        self.d = true;
        self.z = true;
        self.bias = true;
        self.softplus = true;
        self.h0 = true;
        self
    }

    fn varlen(mut self, lengths: &[usize]) -> Self {
        self.batch = 1;
        self.seqlen = lengths.iter().sum();
        self.varlen = Some(lengths.to_vec());
        self
    }

    fn describe(&self) -> String {
        let bc = |g: Option<usize>| g.map_or("const".into(), |g| format!("G{g}"));
        let mut s = format!(
            "b{} D{} N{} L{} B:{} C:{}",
            self.batch,
            self.d_inner,
            self.d_state,
            self.seqlen,
            bc(self.b_groups),
            bc(self.c_groups)
        );
        for (on, name) in [
            (self.d, "D"),
            (self.z, "z"),
            (self.bias, "bias"),
            (self.softplus, "sp"),
            (self.h0, "h0"),
            (self.large_dt, "bigdt"),
        ] {
            if on {
                s += " +";
                s += name;
            }
        }
        if !self.final_states {
            s += " -hN";
        }
        if let Some(v) = &self.varlen {
            s += &format!(" varlen{v:?}");
        }
        let t = self.tuning;
        if t != ScanTuning::default() {
            s += &format!(
                " [tpc {:?} sm {:?} cpl {:?} tile {:?} thr {:?} poly {:?} elem {:?}]",
                t.lanes_per_channel,
                t.slice_major,
                t.channels_per_lane,
                t.tile,
                t.threads,
                t.exp_poly,
                t.elem_exp_poly
            );
        }
        s
    }
}

fn randn(rng: &mut StdRng) -> f32 {
    StandardNormal.sample(rng)
}

fn randn_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| randn(rng)).collect()
}

/// Owned inputs of a case, tensors rounded to `T` (what kernel and oracle both see).
struct Inputs<T> {
    dims: Mamba1Dims,
    u: Vec<T>,
    delta: Vec<T>,
    a: Vec<f32>,
    b: Vec<T>,
    c: Vec<T>,
    b_groups: Option<usize>,
    c_groups: Option<usize>,
    d: Option<Vec<f32>>,
    z: Option<Vec<T>>,
    bias: Option<Vec<f32>>,
    softplus: bool,
    h0: Option<Vec<f32>>,
    cu: Option<Vec<i64>>,
    final_states: bool,
}

fn round<T: Element>(xs: Vec<f32>) -> Vec<T> {
    xs.into_iter().map(T::from_f32).collect()
}

impl<T: Element> Inputs<T> {
    /// Distributions of docs/DESIGN.md §4: A = -exp(randn) in about [-8, -0.1], dt
    /// from softplus(randn - 4) (or up to 10), everything else randn.
    fn generate(case: &Case, rng: &mut StdRng) -> Self {
        let (batch, d_inner, n, seqlen) = (case.batch, case.d_inner, case.d_state, case.seqlen);
        let io = batch * d_inner * seqlen;
        let bc_len = |g: Option<usize>| g.map_or(d_inner * n, |g| batch * g * n * seqlen);
        let pre = |rng: &mut StdRng| {
            if case.large_dt {
                rng.random_range(-4.0f32..10.0)
            } else {
                randn(rng) - 4.0
            }
        };
        let delta: Vec<f32> = (0..io)
            .map(|_| {
                let x = pre(rng);
                if case.softplus {
                    x
                } else {
                    ssm_core::math::softplus_f32(x)
                }
            })
            .collect();
        let cu = case.varlen.as_ref().map(|lengths| {
            let mut cu = vec![0i64];
            for &l in lengths {
                cu.push(cu.last().unwrap() + l as i64);
            }
            cu
        });
        let seqs = case.varlen.as_ref().map_or(batch, Vec::len);
        Inputs {
            dims: Mamba1Dims::new(batch, d_inner, n, seqlen),
            u: round(randn_vec(rng, io)),
            delta: round(delta),
            a: (0..d_inner * n)
                .map(|_| -(randn(rng).clamp(-2.3, 2.0)).exp())
                .collect(),
            b: round(randn_vec(rng, bc_len(case.b_groups))),
            c: round(randn_vec(rng, bc_len(case.c_groups))),
            b_groups: case.b_groups,
            c_groups: case.c_groups,
            d: case.d.then(|| randn_vec(rng, d_inner)),
            z: case.z.then(|| round(randn_vec(rng, io))),
            // Without softplus a negative bias could make dt < 0 and the state
            // grow without bound, which is no Mamba-1 input.
            bias: case.bias.then(|| {
                (0..d_inner)
                    .map(|_| {
                        let b = 0.5 * randn(rng);
                        if case.softplus {
                            b
                        } else {
                            b.abs()
                        }
                    })
                    .collect()
            }),
            softplus: case.softplus,
            h0: case.h0.then(|| randn_vec(rng, seqs * d_inner * n)),
            cu,
            final_states: case.final_states,
        }
    }

    fn params(&self) -> SelectiveScanParams<'_, T> {
        let mut p = SelectiveScanParams::new(
            self.dims,
            &self.u,
            &self.delta,
            &self.a,
            BcInput::from_groups(self.b_groups, &self.b),
            BcInput::from_groups(self.c_groups, &self.c),
        )
        .with_delta_softplus(self.softplus)
        .with_final_states(self.final_states);
        p.d = self.d.as_deref();
        p.z = self.z.as_deref();
        p.delta_bias = self.bias.as_deref();
        p.initial_states = self.h0.as_deref();
        p.cu_seqlens = self.cu.as_deref();
        p
    }
}

// ---------------------------------------------------------------- checking

/// One row of the verification table.
struct Row {
    case: String,
    dtype: &'static str,
    out_rel_l2: f64,
    out_budget: f64,
    state_rel_l2: Option<f64>,
    state_budget: f64,
    /// Kernel vs CPU port (out), when the CPU port ran.
    cpu_rel_l2: Option<f64>,
    ok: bool,
}

impl Row {
    fn print_header() {
        println!(
            "| {:<70} | {:<5} | {:>10} | {:>8} | {:>10} | {:>10} | {:<4} |",
            "case", "dtype", "rel L2 out", "budget", "rel L2 hN", "vs CPU", "ok"
        );
    }

    fn print(&self) {
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3e}"));
        println!(
            "| {:<70} | {:<5} | {:>10.3e} | {:>8.1e} | {:>10} | {:>10} | {:<4} |",
            self.case,
            self.dtype,
            self.out_rel_l2,
            self.out_budget,
            opt(self.state_rel_l2),
            opt(self.cpu_rel_l2),
            if self.ok { "ok" } else { "FAIL" }
        );
    }
}

fn widen_out<T: Element>(out: &ScanOutput<T, f32>) -> ScanOutput<f64, f64> {
    out.to_f64()
}

/// Compare a kernel output with the oracle's for the same inputs.
fn judge<T: Element>(
    case: String,
    got: &ScanOutput<T, f32>,
    oracle: &ScanOutput<f64, f64>,
    cpu: Option<&ScanOutput<T, f32>>,
) -> Row {
    let got = widen_out(got);
    let out_budget = rel_l2_budget(T::DTYPE, 0.0);
    let st_budget = state_budget(0.0);
    let out_cmp = compare(&got.out, &oracle.out);
    let mut ok = out_cmp.passes(out_budget);
    let state_rel_l2 = match (&got.final_states, &oracle.final_states) {
        (Some(g), Some(r)) => {
            let c = compare(g, r);
            ok &= c.passes(st_budget);
            Some(c.rel_l2)
        }
        (None, None) => None,
        _ => {
            ok = false;
            None
        }
    };
    let cpu_rel_l2 = cpu.map(|cpu| {
        let c = compare(&got.out, &widen_out(cpu).out);
        ok &= c.passes(out_budget);
        c.rel_l2
    });
    if out_cmp.non_finite > 0 {
        ok = false;
    }
    Row {
        case,
        dtype: T::DTYPE.name(),
        out_rel_l2: out_cmp.rel_l2,
        out_budget,
        state_rel_l2,
        state_budget: st_budget,
        cpu_rel_l2,
        ok,
    }
}

/// Run one case in dtype `T`: kernel, oracle and (when `with_cpu`) the CPU port.
fn run_case<T: DeviceElement>(gpu: &Gpu, case: &Case, rng: &mut StdRng, with_cpu: bool) -> Row {
    let inputs = Inputs::<T>::generate(case, rng);
    let p = inputs.params();
    let got = selective_scan_cuda_tuned(gpu, &p, case.tuning)
        .unwrap_or_else(|e| panic!("{}: {e}", case.describe()));
    let oracle = ssm_reference::selective_scan(&p).expect("oracle");
    let cpu =
        with_cpu.then(|| mamba1_scan::cpu::selective_scan_blocked(&p, 256).expect("CPU port"));
    judge(case.describe(), &got, &oracle, cpu.as_ref())
}

fn run_all_dtypes(gpu: &Gpu, case: &Case, rng: &mut StdRng, rows: &mut Vec<Row>, cpu: bool) {
    rows.push(run_case::<f32>(gpu, case, rng, cpu));
    rows.push(run_case::<f16>(gpu, case, rng, cpu));
    rows.push(run_case::<bf16>(gpu, case, rng, cpu));
}

fn report(title: &str, seed: u64, rows: &[Row]) {
    println!("\n{title} (seed {seed})");
    Row::print_header();
    for r in rows {
        r.print();
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| !r.ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} rows over budget (seed {seed}); first: {} {}: out {:.3e} (budget {:.1e}), hN {:?} (budget {:.1e}), vs CPU {:?}",
        failed.len(),
        rows.len(),
        failed[0].case,
        failed[0].dtype,
        failed[0].out_rel_l2,
        failed[0].out_budget,
        failed[0].state_rel_l2,
        failed[0].state_budget,
        failed[0].cpu_rel_l2
    );
}

/// Fresh inputs every run; the seed is printed so a failure can be replayed
/// with `SSM_TEST_SEED`.
fn fresh_rng() -> (StdRng, u64) {
    let seed = ssm_gpu::test_seed("gpu_scan");
    (StdRng::seed_from_u64(seed), seed)
}

// ---------------------------------------------------------------- tests

#[test]
fn every_option_combination_matches_the_oracle() {
    let Some(gpu) = test_gpu_or_skip("every_option_combination_matches_the_oracle") else {
        return;
    };
    let (mut rng, seed) = fresh_rng();
    let base = Case::plain(2, 24, 16, 200);
    let mut cases = vec![
        base.clone(),
        base.clone().all_options(),
        Case {
            d: true,
            ..base.clone()
        },
        Case {
            z: true,
            ..base.clone()
        },
        Case {
            bias: true,
            ..base.clone()
        },
        Case {
            softplus: true,
            ..base.clone()
        },
        Case {
            bias: true,
            softplus: true,
            ..base.clone()
        },
        Case {
            h0: true,
            ..base.clone()
        },
        Case {
            final_states: false,
            ..base.clone().all_options()
        },
        Case {
            b_groups: None,
            ..base.clone().all_options()
        },
        Case {
            c_groups: None,
            ..base.clone().all_options()
        },
        Case {
            b_groups: None,
            c_groups: None,
            ..base.clone().all_options()
        },
        Case {
            b_groups: Some(2),
            c_groups: Some(2),
            ..base.clone().all_options()
        },
        Case {
            b_groups: Some(3),
            c_groups: Some(4),
            ..base.clone().all_options()
        },
        Case {
            b_groups: Some(24),
            c_groups: None,
            ..base.clone().all_options()
        },
        Case {
            large_dt: true,
            ..base.clone().all_options()
        },
        Case {
            large_dt: true,
            softplus: false,
            ..base.clone().all_options()
        },
        // Lengths: one step, shorter than a chunk, not a multiple of 8, many tiles.
        Case::plain(2, 24, 16, 1).all_options(),
        Case::plain(2, 24, 16, 7).all_options(),
        Case::plain(1, 24, 16, 37).all_options(),
        Case::plain(1, 8, 16, 1003).all_options(),
        // State sizes: odd, one, not a power of two, the largest.
        Case::plain(2, 24, 5, 50).all_options(),
        Case::plain(2, 9, 1, 64).all_options(),
        Case::plain(1, 24, 17, 72).all_options(),
        Case::plain(1, 12, 100, 40).all_options(),
        Case::plain(1, 8, 256, 48).all_options(),
        Case {
            b_groups: None,
            ..Case::plain(1, 8, 256, 41).all_options()
        },
        // Varlen: empty sequences (first, middle, last), length 1, boundaries inside tiles.
        Case::plain(1, 24, 16, 0)
            .all_options()
            .varlen(&[0, 5, 1, 0, 40, 33, 1, 0]),
        Case::plain(1, 24, 16, 0).all_options().varlen(&[64, 64, 8]),
        Case::plain(1, 16, 16, 0).varlen(&[3, 0, 77, 1]),
        Case {
            b_groups: Some(2),
            ..Case::plain(1, 8, 5, 0).all_options().varlen(&[1, 9, 0, 30])
        },
        Case::plain(1, 8, 256, 0)
            .all_options()
            .varlen(&[0, 17, 1, 30]),
    ];
    // Many channel blocks with B/C groups not aligned to blocks.
    cases.push(Case {
        b_groups: Some(5),
        c_groups: Some(5),
        ..Case::plain(2, 325, 16, 96).all_options()
    });
    let mut rows = Vec::new();
    for case in &cases {
        run_all_dtypes(&gpu, case, &mut rng, &mut rows, cpu_port_available());
    }
    report("every option combination", seed, &rows);
}

#[test]
fn every_work_split_computes_the_same_function() {
    let Some(gpu) = test_gpu_or_skip("every_work_split_computes_the_same_function") else {
        return;
    };
    let (mut rng, seed) = fresh_rng();
    let mut rows = Vec::new();
    let base = Case::plain(2, 40, 16, 300).all_options();
    // (lanes per channel, channels per lane, tile, threads, polynomial exps per
    // 4 steps, softplus/silu exps as polynomials)
    let splits = [
        (Some(1), Some(1), None, None, None, None),
        (Some(2), Some(1), None, None, None, None),
        (Some(8), Some(1), None, None, None, None),
        (Some(16), Some(1), None, None, None, None),
        (Some(4), Some(1), None, None, None, None),
        (Some(4), Some(3), None, None, None, None),
        (Some(4), Some(4), None, Some(32), None, None),
        (Some(2), Some(2), None, None, None, None),
        (Some(4), None, Some(8), None, None, None),
        (Some(4), None, Some(16), None, None, None),
        (Some(4), None, Some(64), None, None, None),
        (Some(4), Some(1), None, Some(64), None, None),
        (Some(4), Some(1), None, Some(256), None, None),
        (Some(4), None, None, None, Some(1), None),
        (Some(4), None, None, None, Some(2), None),
        (Some(4), None, None, None, Some(7), None),
        (Some(4), Some(2), None, None, Some(32), Some(true)),
        (Some(4), None, None, None, None, Some(true)),
        (Some(2), Some(1), None, None, Some(3), None),
    ];
    for (lanes, cpl, tile, threads, poly, elem_poly) in splits {
        // Both lane orders (slice-major B/C reads are warp-uniform only where
        // whole warps share a slice, but every order must be right).
        for slice_major in [false, true] {
            let tuning = ScanTuning {
                lanes_per_channel: lanes,
                channels_per_lane: cpl,
                slice_major: Some(slice_major),
                tile,
                threads,
                exp_poly: poly,
                elem_exp_poly: elem_poly,
                min_blocks: None,
            };
            let case = Case {
                tuning,
                ..base.clone()
            };
            rows.push(run_case::<f32>(&gpu, &case, &mut rng, false));
            rows.push(run_case::<bf16>(&gpu, &case, &mut rng, false));
        }
    }
    // Varlen and large steps through the polynomial exponentials (identity steps
    // must stay exact, and 2^x must underflow gracefully).
    let tuning = ScanTuning {
        exp_poly: Some(16),
        elem_exp_poly: Some(true),
        ..ScanTuning::default()
    };
    let case = Case {
        tuning,
        ..Case::plain(1, 24, 16, 0)
            .all_options()
            .varlen(&[5, 0, 60, 1, 30])
    };
    rows.push(run_case::<f32>(&gpu, &case, &mut rng, false));
    let case = Case {
        tuning,
        large_dt: true,
        ..Case::plain(2, 24, 16, 100).all_options()
    };
    rows.push(run_case::<f32>(&gpu, &case, &mut rng, false));
    rows.push(run_case::<bf16>(&gpu, &case, &mut rng, false));
    report("work splits", seed, &rows);
}

#[test]
fn long_sequences_past_2_pow_16() {
    let Some(gpu) = test_gpu_or_skip("long_sequences_past_2_pow_16") else {
        return;
    };
    let (mut rng, seed) = fresh_rng();
    let mut rows = Vec::new();
    let case = Case::plain(1, 16, 16, 70_000).all_options();
    rows.push(run_case::<bf16>(&gpu, &case, &mut rng, false));
    rows.push(run_case::<f32>(&gpu, &case, &mut rng, false));
    let case = Case::plain(1, 8, 16, 0)
        .all_options()
        .varlen(&[66_000, 1, 4_003]);
    rows.push(run_case::<bf16>(&gpu, &case, &mut rng, false));
    report("long sequences", seed, &rows);
}

#[test]
fn unsupported_shapes_are_errors_not_answers() {
    let Some(gpu) = test_gpu_or_skip("unsupported_shapes_are_errors_not_answers") else {
        return;
    };
    let (mut rng, _) = fresh_rng();
    let inputs = Inputs::<f32>::generate(&Case::plain(1, 2, 257, 8), &mut rng);
    let err = selective_scan_cuda(&gpu, &inputs.params()).unwrap_err();
    assert!(matches!(err, SsmError::Unsupported { .. }), "{err}");
    let inputs = Inputs::<f64>::generate(&Case::plain(1, 2, 4, 8), &mut rng);
    let err = selective_scan_cuda(&gpu, &inputs.params()).unwrap_err();
    assert!(matches!(err, SsmError::Unsupported { .. }), "{err}");
    // Bad shapes are validation errors before anything reaches the GPU.
    let inputs = Inputs::<f32>::generate(&Case::plain(1, 2, 4, 8), &mut rng);
    let p = SelectiveScanParams {
        u: &inputs.u[..15],
        ..inputs.params()
    };
    assert!(matches!(
        selective_scan_cuda(&gpu, &p),
        Err(SsmError::Shape { arg: "u", .. })
    ));
}

/// Whether `mamba1_scan::cpu` is implemented yet (it is written in parallel):
/// set `SSM_SCAN_SKIP_CPU=1` to leave it out while it is a stub.
fn cpu_port_available() -> bool {
    std::env::var("SSM_SCAN_SKIP_CPU").map_or(true, |v| v != "1")
}

// ---------------------------------------------------------------- reference workloads

/// The inputs of channels `channels` (all in one B/C group) of batch row `row`,
/// as a problem of their own: the oracle's cost on a sample of a big problem.
fn channel_subproblem<T: Element>(inputs: &Inputs<T>, row: usize, channels: &[usize]) -> Inputs<T> {
    let Mamba1Dims {
        d_inner,
        d_state: n,
        seqlen: l,
        ..
    } = inputs.dims;
    let rows_of = |x: &[T]| -> Vec<T> {
        channels
            .iter()
            .flat_map(|&c| {
                x[(row * d_inner + c) * l..(row * d_inner + c + 1) * l]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let per_channel = |x: &[f32], width: usize| -> Vec<f32> {
        channels
            .iter()
            .flat_map(|&c| x[c * width..(c + 1) * width].iter().copied())
            .collect()
    };
    let bc = |x: &[T], g: Option<usize>| -> Vec<T> {
        match g {
            Some(groups) => {
                let group = channels[0] / (d_inner / groups);
                let at = (row * groups + group) * n * l;
                x[at..at + n * l].to_vec()
            }
            None => channels
                .iter()
                .flat_map(|&c| x[c * n..(c + 1) * n].iter().copied())
                .collect(),
        }
    };
    Inputs {
        dims: Mamba1Dims::new(1, channels.len(), n, l),
        u: rows_of(&inputs.u),
        delta: rows_of(&inputs.delta),
        a: per_channel(&inputs.a, n),
        b: bc(&inputs.b, inputs.b_groups),
        c: bc(&inputs.c, inputs.c_groups),
        b_groups: inputs.b_groups.map(|_| 1),
        c_groups: inputs.c_groups.map(|_| 1),
        d: inputs.d.as_deref().map(|d| per_channel(d, 1)),
        z: inputs.z.as_deref().map(rows_of),
        bias: inputs.bias.as_deref().map(|b| per_channel(b, 1)),
        softplus: inputs.softplus,
        h0: inputs.h0.as_deref().map(|h| {
            channels
                .iter()
                .flat_map(|&c| {
                    h[(row * d_inner + c) * n..(row * d_inner + c + 1) * n]
                        .iter()
                        .copied()
                })
                .collect()
        }),
        cu: None,
        final_states: inputs.final_states,
    }
}

/// Slice the kernel's full output down to the sampled channels.
fn sample_output<T: Element>(
    out: &ScanOutput<T, f32>,
    dims: Mamba1Dims,
    row: usize,
    channels: &[usize],
) -> ScanOutput<T, f32> {
    let Mamba1Dims {
        d_inner,
        d_state: n,
        seqlen: l,
        ..
    } = dims;
    ScanOutput {
        out: channels
            .iter()
            .flat_map(|&c| {
                out.out[(row * d_inner + c) * l..(row * d_inner + c + 1) * l]
                    .iter()
                    .copied()
            })
            .collect(),
        final_states: out.final_states.as_ref().map(|s| {
            channels
                .iter()
                .flat_map(|&c| {
                    s[(row * d_inner + c) * n..(row * d_inner + c + 1) * n]
                        .iter()
                        .copied()
                })
                .collect()
        }),
    }
}

/// M1-2.8B and M1-small (docs/DESIGN.md §6) in bf16 with every option: the kernel on
/// the whole problem, the oracle and the CPU port on sampled channels of every
/// batch row (first, last and random ones).
#[test]
fn reference_workloads_match_on_sampled_channels() {
    let Some(gpu) = test_gpu_or_skip("reference_workloads_match_on_sampled_channels") else {
        return;
    };
    let (mut rng, seed) = fresh_rng();
    let mut rows = Vec::new();
    for (name, batch, d_inner, seqlen) in [("M1-2.8B", 4, 5120, 4096), ("M1-small", 8, 2048, 2048)]
    {
        let case = Case {
            h0: false,
            ..Case::plain(batch, d_inner, 16, seqlen).all_options()
        };
        let inputs = Inputs::<bf16>::generate(&case, &mut rng);
        let full = selective_scan_cuda(&gpu, &inputs.params()).expect("kernel");
        for row in 0..batch {
            let mut channels = vec![0, 1, d_inner - 1];
            channels.extend((0..5).map(|_| rng.random_range(0..d_inner)));
            channels.sort_unstable();
            channels.dedup();
            let sub = channel_subproblem(&inputs, row, &channels);
            let p = sub.params();
            let oracle = ssm_reference::selective_scan(&p).expect("oracle");
            let cpu = cpu_port_available()
                .then(|| mamba1_scan::cpu::selective_scan_blocked(&p, 256).expect("CPU port"));
            let got = sample_output(&full, inputs.dims, row, &channels);
            rows.push(judge(
                format!("{name} row {row} channels {channels:?}"),
                &got,
                &oracle,
                cpu.as_ref(),
            ));
        }
    }
    report("reference workloads (sampled channels)", seed, &rows);
}

/// Offsets past 2^31 elements: a bf16 problem of 2^31 + 2^17 elements per
/// tensor (about 13 GB on the device for u, delta, out). Runs only with
/// `SSM_SCAN_HUGE=1` (the device script sets it); the oracle checks the first
/// and last channels, whose offsets straddle 2^31.
#[test]
fn offsets_past_2_pow_31() {
    if std::env::var("SSM_SCAN_HUGE").map_or(true, |v| v != "1") {
        eprintln!(
            "SKIPPED offsets_past_2_pow_31: set SSM_SCAN_HUGE=1 (needs ~13 GB of GPU memory)"
        );
        return;
    }
    let Some(gpu) = test_gpu_or_skip("offsets_past_2_pow_31") else {
        return;
    };
    let (_, seed) = fresh_rng();
    let (d_inner, seqlen, n) = (262_160usize, 8_192usize, 16usize);
    let io = d_inner * seqlen;
    assert!(io > 1 << 31);
    // A cheap counter-based generator, filled in parallel: randn-like values are
    // not needed for an indexing test, distinct values per position are.
    let fill = |salt: u64, scale: f32, offset: f32| -> Vec<bf16> {
        use rayon::prelude::*;
        let mut v = vec![bf16::ZERO; io];
        v.par_chunks_mut(1 << 20)
            .enumerate()
            .for_each(|(chunk, xs)| {
                for (i, x) in xs.iter_mut().enumerate() {
                    let k = ((chunk << 20) + i) as u64;
                    let h = splitmix(k ^ salt ^ seed);
                    let unit = (h >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    *x = bf16::from_f32(offset + scale * (unit - 0.5));
                }
            });
        v
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs = Inputs::<bf16> {
        dims: Mamba1Dims::new(1, d_inner, n, seqlen),
        u: fill(1, 3.0, 0.0),
        delta: fill(2, 2.0, -4.0),
        a: (0..d_inner * n)
            .map(|_| -(randn(&mut rng).clamp(-2.3, 2.0)).exp())
            .collect(),
        b: round(randn_vec(&mut rng, n * seqlen)),
        c: round(randn_vec(&mut rng, n * seqlen)),
        b_groups: Some(1),
        c_groups: Some(1),
        d: Some(randn_vec(&mut rng, d_inner)),
        z: None,
        bias: None,
        softplus: true,
        h0: None,
        cu: None,
        final_states: true,
    };
    let full = selective_scan_cuda(&gpu, &inputs.params()).expect("kernel");
    let first_past = (1usize << 31) / seqlen; // the channel whose row crosses 2^31
    let channels = [0, first_past - 1, first_past, first_past + 1, d_inner - 1];
    let sub = channel_subproblem(&inputs, 0, &channels);
    let oracle = ssm_reference::selective_scan(&sub.params()).expect("oracle");
    let got = sample_output(&full, inputs.dims, 0, &channels);
    let rows = vec![judge(
        format!("b1 D{d_inner} N{n} L{seqlen} ({io} elements) channels {channels:?}"),
        &got,
        &oracle,
        None,
    )];
    report("offsets past 2^31", seed, &rows);
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
