//! Throughput of the f32 CPU port of the chunked SSD.
//!
//! ```text
//! cargo run --release -p mamba2-ssd --example cpu_throughput -- [b L H P N G Q [dtype]]
//! ```
//!
//! Defaults: b=1 L=2048 H=8 P=64 N=64 G=1 Q=64, f32 inputs, z and D on. Prints
//! the best and median of several timed runs as tokens/s and GFLOP/s, counting
//! the multiply-adds of the chunked algorithm (2 flops each):
//! `C B^T` (lower triangle) per (chunk, group), and per (chunk, head) the masked
//! `Q x Q` times `Q x P` product, `C S` and the chunk state (`Q N P` each), and the
//! state passing (`N P`).

use std::time::Instant;

use half::{bf16, f16};
use mamba2_ssd::cpu::ssd_chunked;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::{DType, Element};

const RUNS: usize = 7;

fn flops(d: &SsdDims, chunk: usize) -> f64 {
    let (p, n) = (d.head_dim as f64, d.d_state as f64);
    let mut total = 0.0;
    let mut start = 0;
    while start < d.seqlen {
        let l = chunk.min(d.seqlen - start) as f64;
        let tri = l * (l + 1.0) / 2.0;
        total += d.groups as f64 * tri * n * 2.0;
        total += d.heads as f64 * (tri * p * 2.0 + 2.0 * l * n * p * 2.0 + n * p * 2.0);
        start += chunk;
    }
    total * d.batch as f64
}

fn run<T: Element>(d: SsdDims, chunk: usize) {
    let mut rng = StdRng::seed_from_u64(0);
    let mut vec = |n: usize, lo: f32, hi: f32| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(rng.random_range(lo..hi)))
            .collect()
    };
    let tokens = d.batch * d.seqlen;
    let x = vec(tokens * d.heads * d.head_dim, -1.0, 1.0);
    let z = vec(tokens * d.heads * d.head_dim, -1.0, 1.0);
    let dt = vec(tokens * d.heads, -5.0, -2.0);
    let b = vec(tokens * d.groups * d.d_state, -1.0, 1.0);
    let c = vec(tokens * d.groups * d.d_state, -1.0, 1.0);
    let a: Vec<f32> = (0..d.heads)
        .map(|h| -1.0 - h as f32 / d.heads as f32)
        .collect();
    let skip = vec![1.0f32; d.heads];
    let p = SsdParams::new(d, &x, &dt, &a, &b, &c)
        .with_dt_softplus(true)
        .with_d(DSkip::PerHead(&skip))
        .with_z(&z);

    let mut seconds = Vec::with_capacity(RUNS);
    ssd_chunked(&p, chunk).expect("valid problem"); // warm-up: pages, thread pool
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let out = ssd_chunked(&p, chunk).expect("valid problem");
        seconds.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    seconds.sort_by(f64::total_cmp);
    let (best, median) = (seconds[0], seconds[RUNS / 2]);
    let work = flops(&d, chunk);
    println!(
        "b={} L={} H={} P={} N={} G={} Q={chunk} {} on {} threads",
        d.batch,
        d.seqlen,
        d.heads,
        d.head_dim,
        d.d_state,
        d.groups,
        T::DTYPE,
        rayon::current_num_threads()
    );
    for (label, s) in [("best", best), ("median", median)] {
        println!(
            "  {label:6} {:8.3} ms  {:10.0} tokens/s  {:6.2} GFLOP/s",
            s * 1e3,
            tokens as f64 / s,
            work / s / 1e9
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("argument {} `{s}` is not a size", i + 1))
        })
    };
    let d = SsdDims::new(
        num(0, 1),
        num(1, 2048),
        num(2, 8),
        num(3, 64),
        num(4, 64),
        num(5, 1),
    );
    let chunk = num(6, 64);
    let dtype: DType = args
        .get(7)
        .map_or(Ok(DType::F32), |s| s.parse())
        .unwrap_or_else(|e| panic!("{e}"));
    match dtype {
        DType::F32 => run::<f32>(d, chunk),
        DType::F16 => run::<f16>(d, chunk),
        DType::Bf16 => run::<bf16>(d, chunk),
        DType::F64 => run::<f64>(d, chunk),
    }
}
