//! Throughput of the CPU scan on one problem, for f32 and bf16 inputs.
//!
//! ```text
//! cargo run --release -p mamba1-scan --example cpu_throughput [-- b D_in N L block_len]
//! ```
//!
//! Defaults: b=2, D_in=1024, N=16, L=2048, block_len=256, with every option on
//! (D, z, delta_bias, softplus, final states). Reports the median of several
//! runs as tokens x channels per second, exp2 evaluations per second (N per
//! token and channel) and GB/s of input read (u, delta, z, B, C).

use std::time::{Duration, Instant};

use half::bf16;
use mamba1_scan::cpu::selective_scan_blocked;
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::Element;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are b D_in N L block_len"))
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let dims = Mamba1Dims::new(arg(0, 2), arg(1, 1024), arg(2, 16), arg(3, 2048));
    let block_len = arg(4, 256);
    println!(
        "b={} D_in={} N={} L={} block_len={block_len}, {} rayon threads",
        dims.batch,
        dims.d_inner,
        dims.d_state,
        dims.seqlen,
        rayon::current_num_threads()
    );
    bench::<f32>(dims, block_len);
    bench::<bf16>(dims, block_len);
}

/// Deterministic inputs in the usual ranges without a random-number dependency.
fn wave(len: usize, scale: f32, offset: f32, phase: f32) -> Vec<f32> {
    (0..len)
        .map(|i| offset + scale * ((i as f32) * 0.618 + phase).sin())
        .collect()
}

fn bench<T: Element>(dims: Mamba1Dims, block_len: usize) {
    let (batch, d_inner, d_state, seqlen) = (dims.batch, dims.d_inner, dims.d_state, dims.seqlen);
    let bdl = batch * d_inner * seqlen;
    let bc_len = batch * d_state * seqlen;
    let round = |v: Vec<f32>| -> Vec<T> { v.into_iter().map(T::from_f32).collect() };
    let u = round(wave(bdl, 1.0, 0.0, 0.0));
    // Pre-softplus step sizes around -4: dt ~ 0.02, as in trained models.
    let delta = round(wave(bdl, 1.0, -4.0, 1.0));
    let z = round(wave(bdl, 1.0, 0.0, 2.0));
    let b = round(wave(bc_len, 1.0, 0.0, 3.0));
    let c = round(wave(bc_len, 1.0, 0.0, 4.0));
    let a = wave(d_inner * d_state, 0.9, -1.0, 5.0);
    let d = wave(d_inner, 1.0, 0.0, 6.0);
    let bias = wave(d_inner, 0.5, 0.0, 7.0);
    let p = SelectiveScanParams::new(
        dims,
        &u,
        &delta,
        &a,
        BcInput::Grouped {
            groups: 1,
            data: &b,
        },
        BcInput::Grouped {
            groups: 1,
            data: &c,
        },
    )
    .with_d(&d)
    .with_z(&z)
    .with_delta_bias(&bias)
    .with_delta_softplus(true)
    .with_final_states(true);

    let run = || {
        let start = Instant::now();
        let out = selective_scan_blocked(&p, block_len).expect("valid problem");
        std::hint::black_box(out);
        start.elapsed()
    };
    run(); // warm-up: page faults, thread pool start
    let mut times: Vec<Duration> = (0..7).map(|_| run()).collect();
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();

    let token_channels = bdl as f64;
    let input_bytes = ((3 * bdl + 2 * bc_len) * T::DTYPE.size_bytes()) as f64;
    println!(
        "{:>4}: median {:7.2} ms (min {:.2}) | {:6.1} M tok*ch/s | {:6.2} G exp2/s | {:5.2} GB/s input read",
        T::DTYPE.name(),
        median * 1e3,
        times[0].as_secs_f64() * 1e3,
        token_channels / median / 1e6,
        token_channels * d_state as f64 / median / 1e9,
        input_bytes / median / 1e9,
    );
}
