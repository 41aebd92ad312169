//! Context-parallel SSD scaling on several GPUs over NCCL (issue 19).
//!
//! M2-long widened to L = 1,048,576 tokens (b 1, H 32, P 64, N 128, G 1, bf16,
//! dt_bias + softplus + D), forward and forward+backward, on 1, 2, 4 and 8
//! GPUs (every count that the machine has), one thread per rank, NCCL between
//! them. NVLink multicast stays off: this example sets `NCCL_NVLS_ENABLE=0`
//! (unless the environment sets it) before any communicator is made.
//!
//! ```text
//! NCCL_NVLS_ENABLE=0 cargo run --release -p ssm-context-parallel --features nccl \
//!     --example bench_context_parallel -- [--len 1048576] [--gpus 1,2,4,8] \
//!     [--iters 5] [--exchange log|ring|allgather] [--pass2 rerun|add] [--backward] \
//!     [--out results.json]
//! ```
//!
//! `--pass2 add` adds the entering state's contribution on the host
//! (`Pass2::AddContribution`) instead of rerunning the segment: it shows what
//! the additive design costs before its kernel exists, host-bound on the GPU.
//!
//! Needs NCCL on the loader path under a name cudarc looks for (`libnccl.so`):
//! with the nvidia-nccl-cu13 wheel of the device image,
//!
//! ```text
//! lib=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])')/lib
//! mkdir -p /tmp/nccl && ln -sf "$lib/libnccl.so.2" /tmp/nccl/libnccl.so
//! export LD_LIBRARY_PATH=/tmp/nccl:$lib:$LD_LIBRARY_PATH
//! ```
//!
//! Per GPU count it reports the median wall time of one call over all ranks
//! (barrier, call, barrier), the time the call spent inside the communicator
//! (`TimedComm`: the exchange plus waiting for slower ranks), the exchange
//! alone (a scan of one bench-sized pair after a barrier, every form), and the
//! scaling efficiency `T_1 / (R T_R)`, with `T_1` the one-GPU time at the
//! largest L that fits one GPU, scaled linearly to L. The calls take host
//! slices, so every time includes the host-device copies of the segment, on
//! one GPU and on R alike.

use half::bf16;
use ssm_context_parallel::exchange::exclusive_scan;
use ssm_context_parallel::nccl::{disable_nvls, NcclCommunicator};
use ssm_context_parallel::{
    ssd_backward_cp, ssd_forward_cp, Communicator, CpError, CpOptions, Exchange, Pair, Pass2,
    Segment, TimedComm,
};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::SsmError;
use ssm_gpu::Gpu;
use std::time::Instant;

struct Args {
    len: usize,
    gpus: Vec<usize>,
    iters: usize,
    exchange: Exchange,
    pass2: Pass2,
    backward: bool,
    out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        len: 1 << 20,
        gpus: vec![1, 2, 4, 8],
        iters: 5,
        exchange: Exchange::LogDepth,
        pass2: Pass2::Rerun,
        backward: false,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--len" => a.len = value()?.parse().map_err(|e| format!("--len: {e}"))?,
            "--iters" => a.iters = value()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--gpus" => {
                a.gpus = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--gpus: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--exchange" => {
                a.exchange = match value()?.as_str() {
                    "log" => Exchange::LogDepth,
                    "ring" => Exchange::Ring,
                    "allgather" => Exchange::AllGather,
                    other => return Err(format!("--exchange: unknown form {other}")),
                }
            }
            "--pass2" => {
                a.pass2 = match value()?.as_str() {
                    "rerun" => Pass2::Rerun,
                    "add" => Pass2::AddContribution,
                    other => return Err(format!("--pass2: unknown form {other}")),
                }
            }
            "--backward" => a.backward = true,
            "--out" => a.out = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

const H: usize = 32;
const P: usize = 64;
const N: usize = 128;

/// A value of tensor `tensor` at global index `i`: the same on every rank and
/// in the one-GPU baseline, so the segments are slices of one problem.
fn value(tensor: u64, i: u64) -> f32 {
    let mut z = i
        .wrapping_add(tensor << 56)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // Uniform in [-1.73, 1.73): unit variance.
    ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.464
}

/// `len` elements of tensor `tensor` from global index `start`, in bf16, on all host cores.
fn fill(tensor: u64, start: usize, len: usize, scale: f32, shift: f32) -> Vec<bf16> {
    let mut v = vec![bf16::ZERO; len];
    let threads = std::thread::available_parallelism().map_or(8, |n| n.get());
    let chunk = len.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (c, part) in v.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, x) in part.iter_mut().enumerate() {
                    let i = (start + c * chunk + j) as u64;
                    *x = bf16::from_f32(value(tensor, i) * scale + shift);
                }
            });
        }
    });
    v
}

/// One rank's tokens `[lo, hi)`.
struct Slices {
    x: Vec<bf16>,
    dt: Vec<bf16>,
    b: Vec<bf16>,
    c: Vec<bf16>,
    d_out: Vec<bf16>,
}

fn slices(lo: usize, hi: usize, backward: bool) -> Slices {
    let n = hi - lo;
    Slices {
        x: fill(1, lo * H * P, n * H * P, 1.0, 0.0),
        // softplus(dt + bias) ~ 0.02 .. 0.1: mamba's dt range.
        dt: fill(2, lo * H, n * H, 0.5, -3.5),
        b: fill(3, lo * N, n * N, 1.0, 0.0),
        c: fill(4, lo * N, n * N, 1.0, 0.0),
        d_out: if backward {
            fill(5, lo * H * P, n * H * P, 1.0, 0.0)
        } else {
            Vec::new()
        },
    }
}

struct Params {
    a: Vec<f32>,
    bias: Vec<f32>,
    d: Vec<f32>,
}

fn params() -> Params {
    Params {
        a: (0..H).map(|h| -(1.0 + h as f32 / H as f32)).collect(),
        bias: (0..H).map(|h| 0.1 * value(6, h as u64)).collect(),
        d: (0..H).map(|h| value(7, h as u64)).collect(),
    }
}

fn ssd<'a>(s: &'a Slices, pa: &'a Params, len: usize) -> SsdParams<'a, bf16> {
    let dims = SsdDims::new(1, len, H, P, N, 1);
    SsdParams::new(dims, &s.x, &s.dt, &pa.a, &s.b, &s.c)
        .with_dt_bias(&pa.bias)
        .with_dt_softplus(true)
        .with_d(DSkip::PerHead(&pa.d))
        .with_final_states(true)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The one-GPU forward time at the largest L (halving from `len`) that fits.
fn baseline(len: usize, iters: usize) -> Result<(usize, f64), String> {
    let gpu = Gpu::new(0).map_err(|e| format!("GPU 0: {e}"))?;
    let pa = params();
    let mut l = len;
    while l >= 1024 {
        let s = slices(0, l, false);
        let p = ssd(&s, &pa, l);
        let backend = mamba2_ssd::Backend::Cuda(&gpu);
        match mamba2_ssd::ssd_forward(&p, backend) {
            Ok(_) => {
                let mut times = Vec::new();
                for _ in 0..iters {
                    let t = Instant::now();
                    mamba2_ssd::ssd_forward(&p, backend).map_err(|e| e.to_string())?;
                    times.push(t.elapsed().as_secs_f64());
                }
                return Ok((l, median(times)));
            }
            Err(e) => eprintln!("one GPU at L = {l}: {e}; halving"),
        }
        l /= 2;
    }
    Err("no L >= 1024 fits one GPU".into())
}

#[derive(Default)]
struct RankTimes {
    fwd: Vec<f64>,
    fwd_comm: Vec<f64>,
    bwd: Vec<f64>,
    bwd_note: Option<String>,
    exchange: Vec<(String, f64)>,
}

fn barrier(c: &dyn Communicator) -> Result<(), CpError> {
    c.all_gather(&[0.0])?;
    Ok(())
}

fn run_rank(
    rank: usize,
    ranks: usize,
    id: cudarc::nccl::Id,
    args: &Args,
) -> Result<RankTimes, String> {
    let gpu = Gpu::new(rank).map_err(|e| format!("GPU {rank}: {e}"))?;
    let nccl =
        NcclCommunicator::new(gpu.stream().clone(), rank, ranks, id).map_err(|e| e.to_string())?;
    let comm = TimedComm::new(nccl);
    let (lo, hi) = (args.len * rank / ranks, args.len * (rank + 1) / ranks);
    let s = slices(lo, hi, args.backward);
    let pa = params();
    let p = ssd(&s, &pa, hi - lo);
    let seg = Segment::new(lo, args.len);
    let backend = mamba2_ssd::Backend::Cuda(&gpu);
    let opts = CpOptions {
        exchange: args.exchange,
        pass2: args.pass2,
    };
    let err = |e: CpError| e.to_string();
    let mut t = RankTimes::default();
    ssd_forward_cp(&p, &seg, &comm, backend, opts).map_err(err)?; // warm-up (compiles)
    for _ in 0..args.iters {
        barrier(&comm).map_err(err)?;
        comm.reset();
        let start = Instant::now();
        ssd_forward_cp(&p, &seg, &comm, backend, opts).map_err(err)?;
        let inside = comm.spent();
        barrier(&comm).map_err(err)?;
        t.fwd.push(start.elapsed().as_secs_f64());
        t.fwd_comm.push(inside.as_secs_f64());
    }
    if args.backward {
        for _ in 0..args.iters {
            barrier(&comm).map_err(err)?;
            // A training step's share: the forward, then the backward (which
            // reruns the forward's pass 1 and exchange for its initial states).
            let start = Instant::now();
            let r = ssd_forward_cp(&p, &seg, &comm, backend, opts)
                .and_then(|_| ssd_backward_cp(&p, &seg, &s.d_out, None, &comm, backend, opts));
            barrier(&comm).map_err(err)?;
            match r {
                Ok(_) => t.bwd.push(start.elapsed().as_secs_f64()),
                Err(CpError::Ssm(SsmError::Unsupported { what, .. })) => {
                    t.bwd_note = Some(format!("backward not run: {what}"));
                    break;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    // The exchange alone: one bench-sized pair (H decays, H P N states), every form.
    let pair = Pair {
        decay: vec![0.5; H],
        state: vec![0.25; H * P * N],
    };
    for form in [Exchange::Ring, Exchange::LogDepth, Exchange::AllGather] {
        let mut times = Vec::new();
        for _ in 0..args.iters.max(3) {
            barrier(&comm).map_err(err)?;
            let start = Instant::now();
            exclusive_scan(&comm, &pair, form, false).map_err(err)?;
            barrier(&comm).map_err(err)?;
            times.push(start.elapsed().as_secs_f64());
        }
        t.exchange.push((format!("{form:?}"), median(times)));
    }
    Ok(t)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_context_parallel: {e}");
            std::process::exit(2);
        }
    };
    disable_nvls();
    let count = cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize;
    eprintln!(
        "{count} GPU(s); L = {}, H {H}, P {P}, N {N}, bf16; NCCL_NVLS_ENABLE={}",
        args.len,
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_default()
    );
    if count == 0 {
        eprintln!("SKIPPED bench_context_parallel: no GPU");
        return;
    }
    let (base_len, base_s) = match baseline(args.len, args.iters) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("baseline: {e}");
            std::process::exit(1);
        }
    };
    let t1 = base_s * args.len as f64 / base_len as f64;
    println!(
        "one GPU: L = {base_len}: {:.3} ms (scaled to L = {}: {:.3} ms)",
        base_s * 1e3,
        args.len,
        t1 * 1e3
    );
    let mut records = Vec::new();
    for &ranks in args.gpus.iter().filter(|&&r| r <= count) {
        let id = match NcclCommunicator::unique_id() {
            Ok(id) => id,
            Err(e) => {
                eprintln!("NCCL: {e}");
                std::process::exit(1);
            }
        };
        let results: Vec<Result<RankTimes, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..ranks)
                .map(|rank| {
                    let args = &args;
                    s.spawn(move || run_rank(rank, ranks, id, args))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("rank panicked".into())))
                .collect()
        });
        let times: Vec<RankTimes> = match results.into_iter().collect() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{ranks} GPUs: {e}");
                continue;
            }
        };
        // Every rank timed between the same barriers: take the slowest rank per iteration.
        let per_iter = |f: &dyn Fn(&RankTimes) -> &Vec<f64>| -> Vec<f64> {
            (0..f(&times[0]).len())
                .map(|i| times.iter().map(|t| f(t)[i]).fold(0.0, f64::max))
                .collect()
        };
        let fwd = median(per_iter(&|t| &t.fwd));
        let comm = median(per_iter(&|t| &t.fwd_comm));
        let bwd = (!times[0].bwd.is_empty()).then(|| median(per_iter(&|t| &t.bwd)));
        let efficiency = t1 / (ranks as f64 * fwd);
        println!(
            "{ranks} GPU(s): forward {:.3} ms (in the communicator {:.3} ms), efficiency {:.1}%{}",
            fwd * 1e3,
            comm * 1e3,
            efficiency * 100.0,
            bwd.map_or(String::new(), |b| format!(
                ", forward+backward {:.3} ms",
                b * 1e3
            ))
        );
        if let Some(note) = &times[0].bwd_note {
            println!("  {note}");
        }
        for (form, s) in &times[0].exchange {
            println!("  exchange alone, {form}: {:.3} ms", s * 1e3);
        }
        records.push(serde_json::json!({
            "gpus": ranks,
            "len": args.len,
            "heads": H, "head_dim": P, "d_state": N, "dtype": "bf16",
            "exchange": format!("{:?}", args.exchange),
            "pass2": format!("{:?}", args.pass2),
            "forward_ms": fwd * 1e3,
            "forward_in_communicator_ms": comm * 1e3,
            "forward_backward_ms": bwd.map(|b| b * 1e3),
            "backward_note": times[0].bwd_note,
            "exchange_alone_ms": times[0].exchange.iter()
                .map(|(f, s)| (f.clone(), serde_json::json!(s * 1e3)))
                .collect::<serde_json::Map<_, _>>(),
            "baseline_len": base_len,
            "baseline_ms": base_s * 1e3,
            "efficiency": efficiency,
        }));
    }
    if let Some(path) = &args.out {
        let doc = serde_json::json!({ "bench": "context_parallel_ssd", "records": records });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
