//! Times the CUDA scan on the Mamba-1 reference workloads (design.md §6) for
//! several work splits, each verified first against the f64 oracle on sampled
//! channels, and measures the two ceilings it is held against (device copy
//! bandwidth and the exp2 unit's rate) on the same GPU.
//!
//! usage: gpu_scan_bench [--quick] [--json PATH] [--cubins DIR] [--variants a,b,..]
//!                       [--workloads M1-2.8B,M1-small] [--bf16-only]
//!
//! Prints a table and, with `--json`, writes every number with the commit
//! (`SSM_COMMIT`) and `ssm_gpu::KERNELS_HASH`. With `--cubins` it also writes the
//! cubin of every timed variant there (for `cuobjdump -sass`).

use std::error::Error;
use std::fmt::Write as _;

use half::bf16;
use mamba1_scan::cuda::{
    ScanBuffers, ScanPlan, ScanProblem, ScanTuning, SCAN_PROBE_CHAINS, SCAN_PROBE_EX2_ENTRY,
    SCAN_PROBE_SOURCE,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::tolerance::{compare, rel_l2_budget};
use ssm_core::{DType, Element};
use ssm_gpu::cudarc::driver::{LaunchConfig, PushKernelArg};
use ssm_gpu::{DeviceElement, Gpu, GpuError};

/// Design.md §6 ceilings, used when the measured ones are not available.
const EXP2_PER_S_NOMINAL: f64 = 4.15e12;
const COPY_BYTES_PER_S_NOMINAL: f64 = 3.0e12;

struct Workload {
    name: &'static str,
    batch: usize,
    d_inner: usize,
    seqlen: usize,
    mamba_ssm_ms: f64,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "M1-2.8B",
        batch: 4,
        d_inner: 5120,
        seqlen: 4096,
        mamba_ssm_ms: 1.46,
    },
    Workload {
        name: "M1-small",
        batch: 8,
        d_inner: 2048,
        seqlen: 2048,
        mamba_ssm_ms: 0.60,
    },
];

/// The work splits timed, by name (the default first).
fn variants() -> Vec<(&'static str, ScanTuning)> {
    let t = |slice_major, cpl, threads, tile, poly, elem, min_blocks| ScanTuning {
        lanes_per_channel: None,
        channels_per_lane: cpl,
        slice_major: Some(slice_major),
        tile,
        threads,
        exp_poly: poly,
        elem_exp_poly: elem,
        min_blocks,
    };
    vec![
        ("default", ScanTuning::default()),
        ("cm", t(false, Some(1), Some(128), None, None, None, None)),
        (
            "cm_p2",
            t(false, Some(1), Some(128), None, Some(2), None, None),
        ),
        (
            "s_p1",
            t(true, Some(1), Some(128), None, Some(1), None, None),
        ),
        (
            "s_p2",
            t(true, Some(1), Some(128), None, Some(2), None, None),
        ),
        (
            "s_p4",
            t(true, Some(1), Some(128), None, Some(4), None, None),
        ),
        (
            "s_elem",
            t(true, Some(1), Some(128), None, None, Some(true), None),
        ),
        (
            "s_p2elem",
            t(true, Some(1), Some(128), None, Some(2), Some(true), None),
        ),
        (
            "s_mb4",
            t(true, Some(1), Some(128), None, None, None, Some(4)),
        ),
        (
            "s_t16",
            t(true, Some(1), Some(128), Some(16), None, None, Some(5)),
        ),
        (
            "s_cpl2",
            t(true, Some(2), Some(128), None, None, None, Some(2)),
        ),
        (
            "cm_cpl2",
            t(false, Some(2), Some(64), None, None, None, Some(5)),
        ),
    ]
}

struct Args {
    quick: bool,
    json: Option<String>,
    cubins: Option<String>,
    only: Option<Vec<String>>,
    workloads: Option<Vec<String>>,
    /// Also time f16 and f32 inputs (default split, M1-2.8B).
    other_dtypes: bool,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        quick: false,
        json: None,
        cubins: None,
        only: None,
        workloads: None,
        other_dtypes: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = Some(it.next().ok_or("--json needs a path")?),
            "--cubins" => args.cubins = Some(it.next().ok_or("--cubins needs a directory")?),
            "--variants" => {
                let list = it.next().ok_or("--variants needs a list")?;
                args.only = Some(list.split(',').map(str::to_string).collect());
            }
            "--workloads" => {
                let list = it.next().ok_or("--workloads needs a list")?;
                args.workloads = Some(list.split(',').map(str::to_string).collect());
            }
            "--bf16-only" => args.other_dtypes = false,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn randn(rng: &mut StdRng) -> f32 {
    StandardNormal.sample(rng)
}

/// Inputs of a workload in `T`: u, B, C, z randn; delta = randn - 4 before
/// softplus; A = -exp(randn); D randn; bias 0.5 randn.
struct HostInputs<T> {
    dims: Mamba1Dims,
    u: Vec<T>,
    delta: Vec<T>,
    a: Vec<f32>,
    b: Vec<T>,
    c: Vec<T>,
    d: Vec<f32>,
    z: Vec<T>,
    bias: Vec<f32>,
}

impl<T: Element> HostInputs<T> {
    fn generate(w: &Workload, rng: &mut StdRng) -> Self {
        let dims = Mamba1Dims {
            batch: w.batch,
            d_inner: w.d_inner,
            d_state: 16,
            seqlen: w.seqlen,
        };
        let io = w.batch * w.d_inner * w.seqlen;
        let bc = w.batch * 16 * w.seqlen;
        let mut v = |n: usize, f: &mut dyn FnMut(&mut StdRng) -> f32| -> Vec<T> {
            (0..n).map(|_| T::from_f32(f(rng))).collect()
        };
        let u = v(io, &mut randn);
        let delta = v(io, &mut |r| randn(r) - 4.0);
        let b = v(bc, &mut randn);
        let c = v(bc, &mut randn);
        let z = v(io, &mut randn);
        HostInputs {
            dims,
            u,
            delta,
            a: (0..w.d_inner * 16)
                .map(|_| -(randn(rng).clamp(-2.3, 2.0)).exp())
                .collect(),
            b,
            c,
            d: (0..w.d_inner).map(|_| randn(rng)).collect(),
            z,
            bias: (0..w.d_inner).map(|_| 0.5 * randn(rng)).collect(),
        }
    }

    fn params(&self) -> SelectiveScanParams<'_, T> {
        SelectiveScanParams::new(
            self.dims,
            &self.u,
            &self.delta,
            &self.a,
            BcInput::Grouped {
                groups: 1,
                data: &self.b,
            },
            BcInput::Grouped {
                groups: 1,
                data: &self.c,
            },
        )
        .with_d(&self.d)
        .with_z(&self.z)
        .with_delta_bias(&self.bias)
        .with_delta_softplus(true)
    }

    /// Channels `channels` of batch row `row` as a problem of their own.
    fn sample(&self, row: usize, channels: &[usize]) -> HostInputs<T> {
        let Mamba1Dims {
            d_inner, seqlen: l, ..
        } = self.dims;
        let rows = |x: &[T]| -> Vec<T> {
            channels
                .iter()
                .flat_map(|&c| x[(row * d_inner + c) * l..(row * d_inner + c + 1) * l].to_vec())
                .collect()
        };
        let per = |x: &[f32], w: usize| -> Vec<f32> {
            channels
                .iter()
                .flat_map(|&c| x[c * w..(c + 1) * w].to_vec())
                .collect()
        };
        HostInputs {
            dims: Mamba1Dims {
                batch: 1,
                d_inner: channels.len(),
                ..self.dims
            },
            u: rows(&self.u),
            delta: rows(&self.delta),
            a: per(&self.a, 16),
            b: self.b[row * 16 * l..(row + 1) * 16 * l].to_vec(),
            c: self.c[row * 16 * l..(row + 1) * 16 * l].to_vec(),
            d: per(&self.d, 1),
            z: rows(&self.z),
            bias: per(&self.bias, 1),
        }
    }
}

/// Sampled channels and the oracle's output for them.
struct Oracle {
    picks: Vec<(usize, Vec<usize>)>,
    reference: Vec<f64>,
}

impl Oracle {
    fn new<T: Element>(inputs: &HostInputs<T>, rng: &mut StdRng) -> Self {
        let Mamba1Dims { batch, d_inner, .. } = inputs.dims;
        let mut picks = Vec::new();
        let mut reference = Vec::new();
        for row in [0, batch - 1] {
            let mut channels = vec![0, d_inner - 1, rng.random_range(0..d_inner)];
            channels.sort_unstable();
            channels.dedup();
            let sub = inputs.sample(row, &channels);
            let out = ssm_reference::selective_scan(&sub.params()).expect("oracle");
            reference.extend(out.out);
            picks.push((row, channels));
        }
        Oracle { picks, reference }
    }

    /// Relative L2 error of the sampled channels of a full output.
    fn check<T: Element>(&self, dims: Mamba1Dims, out: &[T]) -> f64 {
        let Mamba1Dims {
            d_inner, seqlen: l, ..
        } = dims;
        let got: Vec<f64> = self
            .picks
            .iter()
            .flat_map(|(row, channels)| {
                channels.iter().flat_map(move |&c| {
                    out[(row * d_inner + c) * l..(row * d_inner + c + 1) * l]
                        .iter()
                        .map(|x| x.to_f64())
                })
            })
            .collect();
        let c = compare(&got, &self.reference);
        if c.non_finite > 0 {
            f64::INFINITY
        } else {
            c.rel_l2
        }
    }
}

struct Ceilings {
    copy_bytes_per_s: f64,
    exp2_per_s: f64,
}

/// Device copy bandwidth (bytes read + written) and the MUFU exp2 rate.
fn measure_ceilings(gpu: &Gpu) -> Result<Ceilings, Box<dyn Error>> {
    let n = 256usize << 20; // 1 GiB of f32 each way
    let src = gpu.upload(&vec![1.0f32; n])?;
    let mut dst = gpu.alloc_poisoned::<f32>(n)?;
    let copy = gpu.time(3, 20, || {
        gpu.stream().memcpy_dtod(&src, &mut dst)?;
        Ok(())
    })?;
    let copy_bytes_per_s = 2.0 * (n * 4) as f64 / (copy.median_ms * 1e-3);

    let probe = gpu.kernel(&SCAN_PROBE_SOURCE, SCAN_PROBE_EX2_ENTRY, &[])?;
    let sms = gpu.multiprocessor_count()? as usize;
    let (blocks, threads, iters) = (sms * 8, 256usize, 4096i32);
    let mut out = gpu.alloc_poisoned::<f32>(blocks * threads)?;
    let cfg = LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let ex2 = gpu.time(3, 20, || {
        let mut b = gpu.stream().launch_builder(&probe.func);
        b.arg(&mut out).arg(&iters);
        // SAFETY: the probe writes one float per thread into `out`, which holds
        // blocks * threads of them.
        unsafe { b.launch(cfg) }?;
        Ok(())
    })?;
    let exps = (blocks * threads * SCAN_PROBE_CHAINS) as f64 * iters as f64;
    Ok(Ceilings {
        copy_bytes_per_s,
        exp2_per_s: exps / (ex2.median_ms * 1e-3),
    })
}

struct Row {
    workload: &'static str,
    dtype: DType,
    variant: &'static str,
    label: String,
    registers: u32,
    smem_bytes: usize,
    local_bytes: u32,
    blocks: u32,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    gb_per_s: f64,
    exp2_per_s: f64,
    byte_floor_ms: f64,
    exp_floor_ms: f64,
    mamba_ssm_ms: f64,
    rel_l2: f64,
    ok: bool,
}

#[allow(clippy::too_many_arguments)]
fn bench_workload<T: DeviceElement>(
    gpu: &Gpu,
    w: &Workload,
    ceilings: &Ceilings,
    variants: &[(&'static str, ScanTuning)],
    iters: usize,
    cubins: Option<&str>,
    rng: &mut StdRng,
    rows: &mut Vec<Row>,
) -> Result<(), Box<dyn Error>> {
    let inputs = HostInputs::<T>::generate(w, rng);
    let p = inputs.params();
    let problem = ScanProblem::of(&p)?;
    let oracle = Oracle::new(&inputs, rng);
    let mut bufs = ScanBuffers::upload(gpu, &p)?;
    let budget = rel_l2_budget(T::DTYPE, 0.0);
    let byte_floor_ms = problem.min_bytes() as f64 / ceilings.copy_bytes_per_s * 1e3;
    let exp_floor_ms = problem.recurrence_exps() as f64 / ceilings.exp2_per_s * 1e3;
    for &(name, tuning) in variants {
        let plan = match ScanPlan::new(gpu, &problem, tuning) {
            Ok(plan) => plan,
            Err(e) => {
                println!("{} {} {name}: skipped ({e})", w.name, T::DTYPE);
                continue;
            }
        };
        if let Some(dir) = cubins {
            let v = plan.config.variant();
            let compiled = gpu.compiler().compile(&v.source, &v.defines, gpu.arch())?;
            std::fs::write(format!("{dir}/{}.cubin", v.label), &compiled.module.cubin)?;
        }
        // Verify this very launch configuration before timing it.
        gpu.poison(&mut bufs.out)?;
        plan.launch(gpu, &mut bufs)?;
        let out = gpu.download(&bufs.out)?;
        let rel_l2 = oracle.check(problem.dims, &out);
        let timing = gpu.time(10, iters, || {
            plan.launch(gpu, &mut bufs)
                .map_err(|e| GpuError::Driver(e.to_string()))
        })?;
        let secs = timing.median_ms * 1e-3;
        let res = plan.kernel.resources;
        rows.push(Row {
            workload: w.name,
            dtype: T::DTYPE,
            variant: name,
            label: plan.config.label(),
            registers: res.registers,
            smem_bytes: plan.config.smem_bytes(),
            local_bytes: res.local_bytes,
            blocks: plan.blocks(),
            median_ms: timing.median_ms,
            min_ms: timing.min_ms,
            max_ms: timing.max_ms,
            gb_per_s: problem.min_bytes() as f64 / secs / 1e9,
            exp2_per_s: problem.recurrence_exps() as f64 / secs,
            byte_floor_ms,
            exp_floor_ms,
            mamba_ssm_ms: w.mamba_ssm_ms,
            rel_l2,
            ok: rel_l2 <= budget,
        });
        let r = rows.last().expect("just pushed");
        println!(
            "{:<9} {:<5} {:<8} {:>8.4} ms  rel L2 {:.2e} {}",
            r.workload,
            r.dtype,
            r.variant,
            r.median_ms,
            r.rel_l2,
            if r.ok { "ok" } else { "OVER BUDGET" }
        );
    }
    Ok(())
}

fn json(rows: &[Row], ceilings: &Ceilings, gpu: &Gpu, iters: usize) -> String {
    let mut s = String::new();
    let commit = std::env::var("SSM_COMMIT").unwrap_or_else(|_| "unknown".into());
    let _ = writeln!(s, "{{");
    let _ = writeln!(
        s,
        "  \"benchmark\": \"mamba1 selective scan forward (CUDA)\","
    );
    let _ = writeln!(s, "  \"commit\": \"{commit}\",");
    let _ = writeln!(s, "  \"kernels_hash\": \"{}\",", ssm_gpu::KERNELS_HASH);
    let _ = writeln!(s, "  \"device\": \"{}\",", gpu.describe().replace('"', "'"));
    let _ = writeln!(
        s,
        "  \"method\": \"CUDA events around each launch, 10 warm-up launches, median of {iters}; inputs (> L2) not rotated; output verified against the f64 oracle on sampled channels first\","
    );
    let _ = writeln!(
        s,
        "  \"ceilings\": {{\"copy_bytes_per_s\": {:.4e}, \"exp2_per_s\": {:.4e}}},",
        ceilings.copy_bytes_per_s, ceilings.exp2_per_s
    );
    let _ = writeln!(s, "  \"rows\": [");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "    {{\"workload\": \"{}\", \"dtype\": \"{}\", \"variant\": \"{}\", \"label\": \"{}\", \
             \"registers\": {}, \"dynamic_smem_bytes\": {}, \"local_bytes\": {}, \"blocks\": {}, \
             \"median_ms\": {:.5}, \"min_ms\": {:.5}, \"max_ms\": {:.5}, \"effective_gb_per_s\": {:.1}, \
             \"exp2_per_s\": {:.4e}, \"byte_floor_ms\": {:.4}, \"exp_floor_ms\": {:.4}, \
             \"fraction_of_byte_floor\": {:.3}, \"fraction_of_exp_floor\": {:.3}, \
             \"mamba_ssm_ms\": {}, \"speedup_vs_mamba_ssm\": {:.2}, \"rel_l2_sampled\": {:.3e}, \"ok\": {}}}",
            r.workload,
            r.dtype,
            r.variant,
            r.label,
            r.registers,
            r.smem_bytes,
            r.local_bytes,
            r.blocks,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.gb_per_s,
            r.exp2_per_s,
            r.byte_floor_ms,
            r.exp_floor_ms,
            r.byte_floor_ms / r.median_ms,
            r.exp_floor_ms / r.median_ms,
            r.mamba_ssm_ms,
            r.mamba_ssm_ms / r.median_ms,
            r.rel_l2,
            r.ok
        );
        let _ = writeln!(s, "{}", if i + 1 < rows.len() { "," } else { "" });
    }
    let _ = writeln!(s, "  ]");
    let _ = writeln!(s, "}}");
    s
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let gpu = Gpu::new(0)?;
    println!("{}", gpu.describe());
    let ceilings = measure_ceilings(&gpu).unwrap_or_else(|e| {
        println!("ceilings not measured ({e}); using design.md's");
        Ceilings {
            copy_bytes_per_s: COPY_BYTES_PER_S_NOMINAL,
            exp2_per_s: EXP2_PER_S_NOMINAL,
        }
    });
    println!(
        "ceilings: device copy {:.3} TB/s (read + write), exp2 {:.3} T/s",
        ceilings.copy_bytes_per_s / 1e12,
        ceilings.exp2_per_s / 1e12
    );
    let mut variants = variants();
    if let Some(only) = &args.only {
        variants.retain(|(name, _)| only.iter().any(|o| o == name));
    }
    let iters = if args.quick { 20 } else { 100 };
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut rows = Vec::new();
    let selected = |w: &Workload| {
        args.workloads
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == w.name))
    };
    for w in WORKLOADS.iter().filter(|w| selected(w)) {
        bench_workload::<bf16>(
            &gpu,
            w,
            &ceilings,
            &variants,
            iters,
            args.cubins.as_deref(),
            &mut rng,
            &mut rows,
        )?;
    }
    // The other input types at the big shape, default split only.
    if args.other_dtypes && selected(&WORKLOADS[0]) {
        let default_only = [("default", ScanTuning::default())];
        bench_workload::<half::f16>(
            &gpu,
            &WORKLOADS[0],
            &ceilings,
            &default_only,
            iters,
            None,
            &mut rng,
            &mut rows,
        )?;
        let f32_splits = [
            ("default", ScanTuning::default()),
            (
                "cm",
                ScanTuning {
                    slice_major: Some(false),
                    ..ScanTuning::default()
                },
            ),
        ];
        bench_workload::<f32>(
            &gpu,
            &WORKLOADS[0],
            &ceilings,
            &f32_splits,
            iters,
            None,
            &mut rng,
            &mut rows,
        )?;
    }

    println!(
        "\n| workload | dtype | variant | config | regs | smem B | blocks | median ms | min..max ms | GB/s | exp2/s | byte floor | exp floor | x mamba_ssm | rel L2 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.4} | {:.4}..{:.4} | {:.0} | {:.3e} | {:.3} ms ({:.0}%) | {:.3} ms ({:.0}%) | {:.2} | {:.2e}{} |",
            r.workload,
            r.dtype,
            r.variant,
            r.label,
            r.registers,
            r.smem_bytes,
            r.blocks,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            r.gb_per_s,
            r.exp2_per_s,
            r.byte_floor_ms,
            100.0 * r.byte_floor_ms / r.median_ms,
            r.exp_floor_ms,
            100.0 * r.exp_floor_ms / r.median_ms,
            r.mamba_ssm_ms / r.median_ms,
            r.rel_l2,
            if r.ok { "" } else { " OVER BUDGET" }
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, json(&rows, &ceilings, &gpu, iters))?;
        println!("wrote {path}");
    }
    if rows.iter().any(|r| !r.ok) {
        return Err("a variant's output is over its error budget".into());
    }
    Ok(())
}
