//! Times the CUDA SSD forward pass on the Mamba-2 reference workloads
//! (design.md §6) for several kernel variants, each first verified on sampled
//! (batch row, head) pairs against the f64 oracle, and measures the device-copy
//! ceiling on the same GPU.
//!
//! usage: gpu_ssd_bench [--quick] [--json PATH] [--variants a,b,..] [--shapes a,b,..]
//!                      [--batch B]
//!
//! `--batch B` runs the plain-batch workloads with B sequences instead of their
//! own batch (a diagnostic: fewer blocks per SM). Kernel experiments compiled
//! with extra `SSM_NVRTC_FLAGS` (e.g. `-DSSD_UNROLL_STATE=1`) are recorded with
//! those flags.
//!
//! Prints a table; writes every number with the commit (`SSM_COMMIT`) and
//! `ssm_gpu::KERNELS_HASH` to `--json PATH`, or to
//! `$SSM_RESULTS_DIR/mamba2_ssd_bench.json` when that variable is set.
//!
//! Timed configuration (a Mamba-2 layer as mamba_ssm calls it): bf16 x, dt, B, C;
//! dt_bias, dt_softplus, D per head; no z, no initial or final states (the
//! variants `z` and `states` add them).

use std::error::Error;
use std::fmt::Write as _;

use half::bf16;
use mamba2_ssd::cuda::{
    CudaOptions, KernelChoice, KernelPath, Segmentation, SsdDeviceInputs, SsdPlan,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::tolerance::{compare, max_window_log_decay, rel_l2_budget};
use ssm_core::DType;
use ssm_gpu::{Gpu, GpuError};

/// Ceilings quoted in design.md §6 / KINDS.md for the H100 (the copy ceiling is
/// re-measured here).
const COPY_BYTES_PER_S_NOMINAL: f64 = 3.0e12;
const MMA_BF16_FLOPS_PER_S: f64 = 790e12;

struct Workload {
    name: &'static str,
    dims: SsdDims,
    /// Packed sequences (varlen); `None` for a plain batch.
    cu_seqlens: Option<Vec<i64>>,
    /// mamba_ssm (Triton) time quoted in design.md §6, in ms.
    mamba_ssm_ms: &'static str,
    target_ms: f64,
}

impl Workload {
    /// (first token, length) of every sequence.
    fn sequences(&self) -> Vec<(usize, usize)> {
        match &self.cu_seqlens {
            Some(cu) => cu
                .windows(2)
                .map(|w| (w[0] as usize, (w[1] - w[0]) as usize))
                .collect(),
            None => (0..self.dims.batch)
                .map(|b| (b * self.dims.seqlen, self.dims.seqlen))
                .collect(),
        }
    }
}

/// A packed row of 2^21 + 1000 tokens x 16 heads x 64: the second sequence's
/// elements sit past 2^31 in x and out (mamba_ssm's int32 offsets break past ~61K
/// tokens at its shapes). Only that sequence is verified, every head of it.
const OFFSETS_WORKLOAD: &str = "offsets>2^31";

fn workloads() -> Vec<Workload> {
    let d = |batch, seqlen, heads, head_dim, d_state, groups| SsdDims {
        batch,
        seqlen,
        heads,
        head_dim,
        d_state,
        groups,
    };
    vec![
        Workload {
            name: "M2-2.7B",
            dims: d(4, 4096, 80, 64, 128, 1),
            cu_seqlens: None,
            mamba_ssm_ms: "0.72-0.81",
            target_ms: 0.40,
        },
        Workload {
            name: "M2-long",
            dims: d(1, 65536, 32, 64, 128, 1),
            cu_seqlens: None,
            mamba_ssm_ms: "1.56",
            target_ms: 0.80,
        },
        Workload {
            name: "M2-groups",
            dims: d(4, 4096, 32, 128, 128, 8),
            cu_seqlens: None,
            mamba_ssm_ms: "0.86",
            target_ms: 0.45,
        },
        Workload {
            name: OFFSETS_WORKLOAD,
            dims: d(1, (1 << 21) + 1000, 16, 64, 16, 1),
            cu_seqlens: Some(vec![0, 1 << 21, (1 << 21) + 1000]),
            mamba_ssm_ms: "-",
            target_ms: f64::NAN,
        },
    ]
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    opts: CudaOptions,
    z: bool,
    states: bool,
}

fn variants() -> Vec<Variant> {
    let base = CudaOptions::default();
    let v = |name, opts, z, states| Variant {
        name,
        opts,
        z,
        states,
    };
    vec![
        v("default", base, false, false),
        v(
            "cb_in_block",
            CudaOptions {
                shared_cb: Some(false),
                ..base
            },
            false,
            false,
        ),
        v(
            "yc32",
            CudaOptions {
                y_cols: Some(32),
                ..base
            },
            false,
            false,
        ),
        v(
            "yc64",
            CudaOptions {
                y_cols: Some(64),
                ..base
            },
            false,
            false,
        ),
        v(
            "w8",
            CudaOptions {
                warps: Some(8),
                ..base
            },
            false,
            false,
        ),
        v(
            "q128",
            CudaOptions {
                chunk_size: 128,
                ..base
            },
            false,
            false,
        ),
        v(
            "nosplit",
            CudaOptions {
                segmentation: Segmentation::AtMost(1),
                ..base
            },
            false,
            false,
        ),
        v(
            "split6",
            CudaOptions {
                segmentation: Segmentation::AtMost(6),
                ..base
            },
            false,
            false,
        ),
        v("states", base, false, true),
        v("z", base, true, false),
        v(
            "simt",
            CudaOptions {
                kernel: KernelChoice::Simt,
                ..base
            },
            false,
            false,
        ),
    ]
}

/// Variants that only make sense for some workloads, and the slow reference one
/// (run it with `--variants simt`).
fn applies(variant: &str, workload: &str, explicit: bool) -> bool {
    if workload == OFFSETS_WORKLOAD {
        return variant == "default";
    }
    match variant {
        "nosplit" | "split6" => workload == "M2-long",
        "simt" => explicit,
        _ => true,
    }
}

/// Inputs of one workload, generated in parallel (fresh random data every run).
struct Inputs {
    x: Vec<bf16>,
    dt: Vec<bf16>,
    a: Vec<f32>,
    b: Vec<bf16>,
    c: Vec<bf16>,
    z: Vec<bf16>,
    dt_bias: Vec<f32>,
    d: Vec<f32>,
    s0: Vec<f32>,
}

fn randn_bf16(len: usize, seed: u64, scale: f32, shift: f32) -> Vec<bf16> {
    const BLOCK: usize = 1 << 16;
    let mut v = vec![bf16::ZERO; len];
    v.par_chunks_mut(BLOCK).enumerate().for_each(|(i, chunk)| {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for e in chunk {
            let r: f32 = StandardNormal.sample(&mut rng);
            *e = bf16::from_f32(r * scale + shift);
        }
    });
    v
}

impl Inputs {
    fn new(dims: &SsdDims, num_seqs: usize, with_z: bool, seed: u64) -> Self {
        let tokens = dims.batch * dims.seqlen;
        let mut rng = StdRng::seed_from_u64(seed);
        let hp = tokens * dims.heads * dims.head_dim;
        let gn = tokens * dims.groups * dims.d_state;
        Inputs {
            x: randn_bf16(hp, seed ^ 1, 1.0, 0.0),
            // dt' = softplus(dt + bias) ~ softplus(randn - 4) (design.md §4).
            dt: randn_bf16(tokens * dims.heads, seed ^ 2, 1.0, -4.0),
            a: (0..dims.heads)
                .map(|_| -rng.random_range(-1.0f32..1.0).exp())
                .collect(),
            b: randn_bf16(gn, seed ^ 3, 1.0, 0.0),
            c: randn_bf16(gn, seed ^ 4, 1.0, 0.0),
            z: if with_z {
                randn_bf16(hp, seed ^ 5, 1.0, 0.0)
            } else {
                Vec::new()
            },
            dt_bias: (0..dims.heads)
                .map(|_| rng.random_range(-0.5f32..0.5))
                .collect(),
            d: (0..dims.heads)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect(),
            s0: (0..num_seqs * dims.heads * dims.head_dim * dims.d_state)
                .map(|_| StandardNormal.sample(&mut rng))
                .collect(),
        }
    }

    fn params<'a>(
        &'a self,
        dims: SsdDims,
        cu_seqlens: Option<&'a [i64]>,
        v: &Variant,
    ) -> SsdParams<'a, bf16> {
        let mut p = SsdParams::new(dims, &self.x, &self.dt, &self.a, &self.b, &self.c)
            .with_dt_bias(&self.dt_bias)
            .with_dt_softplus(true)
            .with_d(DSkip::PerHead(&self.d));
        if let Some(cu) = cu_seqlens {
            p = p.with_cu_seqlens(cu);
        }
        if v.z {
            p = p.with_z(&self.z);
        }
        if v.states {
            p = p.with_initial_states(&self.s0).with_final_states(true);
        }
        p
    }
}

/// The (sequence, head) sub-problem as a problem of its own (batch 1, one head,
/// one group), for the f64 oracle.
struct SubProblem {
    x: Vec<bf16>,
    dt: Vec<bf16>,
    b: Vec<bf16>,
    c: Vec<bf16>,
    z: Vec<bf16>,
    a: [f32; 1],
    bias: [f32; 1],
    d: [f32; 1],
    s0: Vec<f32>,
}

impl SubProblem {
    fn new(inp: &Inputs, dims: &SsdDims, seq: (usize, usize), si: usize, h: usize) -> Self {
        let SsdDims {
            heads,
            head_dim: p,
            d_state: n,
            groups,
            ..
        } = *dims;
        let (start, l) = seq;
        let g = dims.group_of(h);
        let mut s = SubProblem {
            x: Vec::with_capacity(l * p),
            dt: Vec::with_capacity(l),
            b: Vec::with_capacity(l * n),
            c: Vec::with_capacity(l * n),
            z: Vec::with_capacity(l * p),
            a: [inp.a[h]],
            bias: [inp.dt_bias[h]],
            d: [inp.d[h]],
            s0: inp.s0[(si * heads + h) * p * n..(si * heads + h + 1) * p * n].to_vec(),
        };
        for t in 0..l {
            let tok = start + t;
            let xo = (tok * heads + h) * p;
            s.x.extend_from_slice(&inp.x[xo..xo + p]);
            if !inp.z.is_empty() {
                s.z.extend_from_slice(&inp.z[xo..xo + p]);
            }
            s.dt.push(inp.dt[tok * heads + h]);
            let bo = (tok * groups + g) * n;
            s.b.extend_from_slice(&inp.b[bo..bo + n]);
            s.c.extend_from_slice(&inp.c[bo..bo + n]);
        }
        s
    }

    fn params(&self, dims: &SsdDims, v: &Variant) -> SsdParams<'_, bf16> {
        let sub = SsdDims {
            batch: 1,
            seqlen: self.dt.len(),
            heads: 1,
            groups: 1,
            ..*dims
        };
        let mut p = SsdParams::new(sub, &self.x, &self.dt, &self.a, &self.b, &self.c)
            .with_dt_bias(&self.bias)
            .with_dt_softplus(true)
            .with_d(DSkip::PerHead(&self.d));
        if v.z {
            p = p.with_z(&self.z);
        }
        if v.states {
            p = p.with_initial_states(&self.s0).with_final_states(true);
        }
        p
    }
}

#[derive(serde::Serialize)]
struct Check {
    sequence: usize,
    head: usize,
    out_rel_l2: f64,
    out_budget: f64,
    state_rel_l2: Option<f64>,
    state_budget: f64,
    non_finite: usize,
}

/// Verify `out` (the full GPU output) on sampled (sequence, head) pairs.
fn verify(
    inp: &Inputs,
    w: &Workload,
    v: &Variant,
    out: &[bf16],
    states: Option<&[f32]>,
    pairs: &[(usize, usize)],
) -> Vec<Check> {
    let dims = &w.dims;
    let seqs = w.sequences();
    pairs
        .par_iter()
        .map(|&(si, h)| {
            let sub = SubProblem::new(inp, dims, seqs[si], si, h);
            let p = sub.params(dims, v);
            let want = ssm_reference::ssd_recurrence(&p).expect("valid sub-problem");
            let (start, l) = seqs[si];
            let (heads, hp, pn) = (dims.heads, dims.head_dim, dims.head_dim * dims.d_state);
            let mut got = Vec::with_capacity(l * hp);
            for t in 0..l {
                let o = ((start + t) * heads + h) * hp;
                got.extend(out[o..o + hp].iter().map(|e| e.to_f64()));
            }
            let log_decay: Vec<f64> = (0..l).map(|t| p.dt_at(0, t, 0) * p.a[0] as f64).collect();
            let k = max_window_log_decay(&log_decay, l, v.opts.chunk_size);
            let c = compare(&got, &want.out);
            let state = states.map(|s| {
                let g: Vec<f64> = s[(si * heads + h) * pn..(si * heads + h + 1) * pn]
                    .iter()
                    .map(|&e| e as f64)
                    .collect();
                compare(&g, want.final_states.as_deref().expect("requested"))
            });
            Check {
                sequence: si,
                head: h,
                out_rel_l2: c.rel_l2,
                out_budget: rel_l2_budget(DType::Bf16, k),
                state_rel_l2: state.map(|s| s.rel_l2),
                state_budget: ssm_core::tolerance::state_budget(k),
                non_finite: c.non_finite + state.map_or(0, |s| s.non_finite),
            }
        })
        .collect()
}

#[derive(serde::Serialize)]
struct Record {
    workload: String,
    variant: String,
    shape: String,
    dtype: &'static str,
    options: String,
    kernel: String,
    registers: u32,
    prepass_registers: Option<u32>,
    smem_bytes: usize,
    local_bytes: u32,
    items: usize,
    prepass_items: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    iters: usize,
    bytes: f64,
    effective_gb_s: f64,
    model_gflop: f64,
    model_tflop_s: f64,
    executed_mma_gflop: f64,
    byte_floor_ms: f64,
    mma_floor_ms: f64,
    frac_of_byte_floor: f64,
    frac_of_mma_floor: f64,
    mamba_ssm_ms: &'static str,
    target_ms: f64,
    checks: Vec<Check>,
    verified: bool,
}

/// Bytes the pass must move: each input read once, each output written once.
fn min_bytes(d: &SsdDims, v: &Variant) -> f64 {
    let tokens = (d.batch * d.seqlen) as f64;
    let hp = tokens * (d.heads * d.head_dim) as f64;
    let mut elems =
        2.0 * hp + tokens * d.heads as f64 + 2.0 * tokens * (d.groups * d.d_state) as f64;
    if v.z {
        elems += hp;
    }
    let mut bytes = 2.0 * elems;
    if v.states {
        bytes += 2.0 * 4.0 * (d.batch * d.heads * d.head_dim * d.d_state) as f64;
    }
    bytes
}

/// Useful flops of the chunked algorithm per (token, head): causal halves of
/// C B^T (Q N) and of the L x product (Q P), the chunk state and the inter-chunk
/// output (2 N P each), two flops per multiply-add.
fn model_flops(d: &SsdDims, q: usize) -> f64 {
    let per = (q * d.d_state + q * d.head_dim + 4 * d.d_state * d.head_dim) as f64;
    per * (d.batch * d.seqlen * d.heads) as f64
}

/// Tensor-core flops the fused kernel issues: whole 16 x 16 tiles on the diagonal,
/// C B^T once per P tile, the inter-chunk output, and the state update, twice
/// (hi and lo halves) when final states are returned (`split`), else once.
fn executed_mma_flops(d: &SsdDims, q: usize, p_tile: usize, split: bool) -> f64 {
    let (n, p) = (d.d_state as f64, d.head_dim as f64);
    let rt = q / 16;
    let tiles = (rt * (rt + 1) / 2) as f64; // 16 x 16 tiles on or below the diagonal
    let p_tiles = (d.head_dim / p_tile) as f64;
    let state_products = if split { 3.0 } else { 2.0 };
    let per_chunk =
        tiles * 256.0 * 2.0 * (n * p_tiles + p) + 2.0 * (q as f64) * n * p * state_products;
    per_chunk * ((d.batch * d.seqlen * d.heads) as f64 / q as f64)
}

fn measure_copy_bandwidth(gpu: &Gpu) -> Result<f64, Box<dyn Error>> {
    let len = 1usize << 28; // 1 GiB of f32
    let src = gpu.alloc_poisoned::<f32>(len)?;
    let mut dst = gpu.alloc_poisoned::<f32>(len)?;
    let t = gpu.time(3, 20, || {
        gpu.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| GpuError::Driver(format!("{e:?}")))
    })?;
    Ok(2.0 * 4.0 * len as f64 / (t.median_ms * 1e-3))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let quick = flag("--quick");
    let wanted = |list: Option<String>, name: &str| {
        list.as_deref()
            .is_none_or(|l| l.split(',').any(|w| w.eq_ignore_ascii_case(name)))
    };
    let json_path = value("--json").or_else(|| {
        std::env::var("SSM_RESULTS_DIR")
            .ok()
            .map(|d| format!("{d}/mamba2_ssd_bench.json"))
    });
    let seed: u64 = std::env::var("SSM_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());

    let gpu = Gpu::new(0)?;
    eprintln!("{} | seed {seed}", gpu.describe());
    let copy_bw = measure_copy_bandwidth(&gpu).unwrap_or(COPY_BYTES_PER_S_NOMINAL);
    eprintln!("device copy: {:.2} TB/s (read + write)", copy_bw / 1e12);

    let mut records = Vec::new();
    let batch_override: Option<usize> = match value("--batch") {
        Some(b) => Some(
            b.parse()
                .map_err(|_| format!("--batch: expected a count, got {b}"))?,
        ),
        None => None,
    };
    for mut w in workloads() {
        if !wanted(value("--shapes"), w.name) {
            continue;
        }
        if let (Some(b), None) = (batch_override, &w.cu_seqlens) {
            w.dims.batch = b;
        }
        let dims = w.dims;
        let offsets = w.name == OFFSETS_WORKLOAD;
        let seqs = w.sequences();
        let cu = w.cu_seqlens.as_deref();
        let t0 = std::time::Instant::now();
        let inp = Inputs::new(&dims, seqs.len(), !offsets, seed ^ dims.seqlen as u64);
        eprintln!(
            "{}: inputs generated in {:.1} s",
            w.name,
            t0.elapsed().as_secs_f64()
        );
        // Upload once; variants differ only in which optional buffers they pass.
        let all = Variant {
            name: "upload",
            opts: CudaOptions::default(),
            z: !offsets,
            states: true,
        };
        let full = SsdDeviceInputs::upload(&gpu, &inp.params(dims, cu, &all))?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let samples = if quick { 2 } else { 4 };
        let pairs: Vec<(usize, usize)> = if offsets {
            (0..dims.heads).map(|h| (seqs.len() - 1, h)).collect()
        } else {
            (0..samples)
                .map(|i| {
                    let si = if i == 0 {
                        0
                    } else {
                        rng.random_range(0..seqs.len())
                    };
                    (si, rng.random_range(0..dims.heads))
                })
                .collect()
        };
        for v in variants() {
            if !wanted(value("--variants"), v.name) {
                continue;
            }
            if !applies(v.name, w.name, value("--variants").is_some()) {
                continue;
            }
            let p = inp.params(dims, cu, &v);
            let plan = match SsdPlan::new(&gpu, &p, &v.opts) {
                Ok(plan) => plan,
                Err(e) => {
                    eprintln!("{} {}: {e}", w.name, v.name);
                    continue;
                }
            };
            let dev = SsdDeviceInputs {
                x: full.x.clone(),
                dt: full.dt.clone(),
                a: full.a.clone(),
                b: full.b.clone(),
                c: full.c.clone(),
                dt_bias: full.dt_bias.clone(),
                d: full.d.clone(),
                z: if v.z { full.z.clone() } else { None },
                initial_states: if v.states {
                    full.initial_states.clone()
                } else {
                    None
                },
            };
            let mut out = plan.alloc_outputs::<bf16>(&gpu)?;
            plan.launch(&gpu, &dev, &mut out)?;
            gpu.synchronize()?;
            let host_out = gpu.download(&out.out)?;
            let host_states = out
                .final_states
                .as_ref()
                .map(|s| gpu.download(s))
                .transpose()?;
            let vpairs: Vec<_> = if !offsets && (v.name == "simt" || w.name == "M2-long") {
                pairs[..pairs.len().min(2)].to_vec()
            } else {
                pairs.clone()
            };
            let checks = verify(&inp, &w, &v, &host_out, host_states.as_deref(), &vpairs);
            let verified = checks.iter().all(|c| {
                c.non_finite == 0
                    && c.out_rel_l2 <= c.out_budget
                    && c.state_rel_l2.is_none_or(|s| s <= c.state_budget)
            });
            let iters = if v.name == "simt" || quick { 10 } else { 50 };
            let timing = gpu.time(5, iters, || {
                plan.launch(&gpu, &dev, &mut out)
                    .map_err(|e| GpuError::Driver(e.to_string()))
            })?;
            let cfg = plan.config();
            let p_tile = match cfg.path {
                KernelPath::Fused(t) => t.p_tile,
                KernelPath::Simt => 32,
            };
            let bytes = min_bytes(&dims, &v);
            let model = model_flops(&dims, cfg.chunk);
            let executed = executed_mma_flops(&dims, cfg.chunk, p_tile, v.states);
            let byte_floor = bytes / copy_bw * 1e3;
            let mma_floor = executed / MMA_BF16_FLOPS_PER_S * 1e3;
            let ms = timing.median_ms;
            let r = Record {
                workload: w.name.into(),
                variant: v.name.into(),
                shape: format!(
                    "b={} L={} H={} P={} N={} G={}",
                    dims.batch, dims.seqlen, dims.heads, dims.head_dim, dims.d_state, dims.groups
                ),
                dtype: "bf16",
                options: format!(
                    "dt_bias, dt_softplus, D(H){}{}",
                    if v.z { ", z" } else { "" },
                    if v.states {
                        ", initial+final states"
                    } else {
                        ""
                    }
                ),
                kernel: plan.describe(),
                registers: plan.main_kernel().resources.registers,
                prepass_registers: plan.prepass_kernel().map(|k| k.resources.registers),
                smem_bytes: cfg.smem_bytes(false),
                local_bytes: plan.main_kernel().resources.local_bytes,
                items: plan.table().num_items(),
                prepass_items: plan.table().num_prepass(),
                median_ms: ms,
                min_ms: timing.min_ms,
                max_ms: timing.max_ms,
                iters,
                bytes,
                effective_gb_s: bytes / (ms * 1e-3) / 1e9,
                model_gflop: model / 1e9,
                model_tflop_s: model / (ms * 1e-3) / 1e12,
                executed_mma_gflop: if cfg.is_fused() { executed / 1e9 } else { 0.0 },
                byte_floor_ms: byte_floor,
                mma_floor_ms: mma_floor,
                frac_of_byte_floor: byte_floor / ms,
                frac_of_mma_floor: mma_floor / ms,
                mamba_ssm_ms: w.mamba_ssm_ms,
                target_ms: w.target_ms,
                checks,
                verified,
            };
            eprintln!(
                "{:<9} {:<8} {:>8.4} ms  {:>6.0} GB/s  {:>6.1} TFLOP/s  byte floor {:.0}%  mma floor {:.0}%  {}  {}",
                r.workload,
                r.variant,
                r.median_ms,
                r.effective_gb_s,
                r.model_tflop_s,
                100.0 * r.frac_of_byte_floor,
                100.0 * r.frac_of_mma_floor,
                if r.verified { "verified" } else { "VERIFY FAILED" },
                r.kernel
            );
            records.push(r);
        }
    }

    let mut table = String::new();
    writeln!(
        table,
        "\n| workload | variant | ms (median) | target | mamba_ssm | GB/s | TFLOP/s | byte floor | MMA floor | regs | smem | check (worst out rel L2 / budget) |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &records {
        let worst = r
            .checks
            .iter()
            .map(|c| c.out_rel_l2 / c.out_budget)
            .fold(0.0, f64::max);
        let worst_abs = r.checks.iter().map(|c| c.out_rel_l2).fold(0.0, f64::max);
        writeln!(
            table,
            "| {} | {} | {:.4} | {:.2} | {} | {:.0} | {:.1} | {:.3} ms ({:.0}%) | {:.3} ms ({:.0}%) | {} | {} | {:.2e} ({:.0}% of budget){} |",
            r.workload,
            r.variant,
            r.median_ms,
            r.target_ms,
            r.mamba_ssm_ms,
            r.effective_gb_s,
            r.model_tflop_s,
            r.byte_floor_ms,
            100.0 * r.frac_of_byte_floor,
            r.mma_floor_ms,
            100.0 * r.frac_of_mma_floor,
            r.registers,
            r.smem_bytes,
            worst_abs,
            100.0 * worst,
            if r.verified { "" } else { " FAILED" }
        )?;
    }
    println!("{table}");
    if let Some(path) = json_path {
        let doc = serde_json::json!({
            "bench": "mamba2-ssd forward (gpu_ssd_bench)",
            "commit": std::env::var("SSM_COMMIT").unwrap_or_else(|_| "unknown".into()),
            "kernels_hash_built": ssm_gpu::KERNELS_HASH,
            "nvrtc_flags": std::env::var("SSM_NVRTC_FLAGS").unwrap_or_default(),
            "batch_override": batch_override,
            "kernels_hash": gpu.compiler().source_root().kernels_hash()?,
            "device": gpu.describe(),
            "seed": seed,
            "copy_bytes_per_s": copy_bw,
            "mma_bf16_flops_per_s_assumed": MMA_BF16_FLOPS_PER_S,
            "timing": "CUDA events around each launch, 5 warm-up launches, median",
            "records": records,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("wrote {path}");
    }
    if records.iter().any(|r| !r.verified) {
        return Err("verification failed for some variant".into());
    }
    Ok(())
}
