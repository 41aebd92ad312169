//! Every shape the API accepts runs or says why before compiling (issue 13).
//!
//! Sweeps the CUDA kernel selection of every family (SSD forward, Mamba-1 scan,
//! both decode steps) over a grid of element types, P and N from 1 to 256 (odd,
//! non-power-of-two and the kernels' edge values), chunk sizes, groups, options and
//! tunings, on the limits of three devices (H100 SXM, H200, a 100 KiB-per-SM
//! sm_86-like card). Every call must either return a configuration or
//! `SsmError::Unsupported` naming the constraint; every distinct kernel variant a
//! configuration would load is then run through NVRTC's front end (every
//! `static_assert` and `#error` of the kernels, for that device's define set), and
//! one of each tiling class is compiled to a cubin in full. No GPU needed; NVRTC is
//! (skips loudly without it only when `SSM_ALLOW_NO_NVRTC=1`).

mod checkout_kernels;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use checkout_kernels::checkout_compiler_or_skip;
use mamba1_scan::cuda::{ScanConfig, ScanProblem, ScanTuning};
use mamba2_ssd::cuda::{
    CudaOptions, DMode, KernelChoice, KernelConfig, KernelPath, SsdFeatures, CHUNK_SIZES,
};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::mamba2::SsdDims;
use ssm_core::{DType, Result, SsmError};
use ssm_gpu::decode::DecodeFamily;
use ssm_gpu::{test_compiler_or_skip, Arch, DeviceLimits, KernelVariant};

/// A device the sweep plans for, and the target its kernels compile to.
struct Device {
    name: &'static str,
    limits: DeviceLimits,
    arch: Arch,
}

fn devices() -> Vec<Device> {
    DeviceLimits::KNOWN
        .iter()
        .map(|&(name, limits)| Device {
            name,
            limits,
            // The small card is an sm_86 part: it runs sm_80 cubins.
            arch: if limits == DeviceLimits::SM86_SMALL {
                Arch::Sm80
            } else {
                Arch::Sm90
            },
        })
        .collect()
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];
/// Head dimensions: 1, odd, the fused kernel's tile multiples (32, 64) and values
/// between them.
const P_GRID: [usize; 12] = [1, 7, 16, 32, 48, 64, 80, 96, 100, 128, 160, 256];
/// State sizes: 1, odd, non-multiples of 16, multiples of 16 whose N/8 does (16,
/// 128, 256) and does not (48, 96, 240) divide the fused kernel's threads, 4 and 8
/// warps' worth of state, and 257 (refused).
const N_GRID: [usize; 12] = [1, 3, 8, 16, 24, 48, 96, 128, 200, 240, 256, 257];
/// The scan's N: its lanes split N into powers of two times states per lane.
const SCAN_N_GRID: [usize; 11] = [1, 3, 5, 16, 17, 33, 64, 96, 129, 200, 256];

/// Everything the sweep collected: the variants to compile (deduplicated by
/// target, source, entry and defines) and how many calls were refused, by reason.
#[derive(Default)]
struct Sweep {
    variants: BTreeMap<String, (Arch, KernelVariant)>,
    accepted: usize,
    refused: BTreeMap<String, usize>,
}

impl Sweep {
    fn add(&mut self, arch: Arch, v: KernelVariant) {
        let key = format!("{arch} {} {} {:?}", v.source.path, v.entry, v.defines);
        self.variants.entry(key).or_insert((arch, v));
    }

    /// Record one selection outcome; anything but a config or `Unsupported` fails.
    fn outcome<T>(&mut self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(c) => {
                self.accepted += 1;
                Some(c)
            }
            Err(SsmError::Unsupported { what: why, .. }) => {
                assert!(!why.is_empty(), "{what}: Unsupported without a reason");
                // Group reasons by their words, not their numbers.
                let class: String = why
                    .split(' ')
                    .map(|w| {
                        if w.matches('.').count() > 2 {
                            "<config>"
                        } else {
                            w
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                *self.refused.entry(class).or_default() += 1;
                None
            }
            Err(e) => panic!("{what}: selection returned {e} (expected a config or Unsupported)"),
        }
    }
}

fn ssd_features() -> [SsdFeatures; 3] {
    let all = SsdFeatures::all();
    let none = SsdFeatures {
        dt_bias: false,
        dt_softplus: false,
        d: DMode::None,
        z: false,
        initial_states: false,
        final_states: false,
    };
    let no_final = SsdFeatures {
        final_states: false,
        d: DMode::PerHead,
        ..all
    };
    [all, none, no_final]
}

fn ssd_options() -> Vec<CudaOptions> {
    let base = CudaOptions::default();
    let mut v = Vec::new();
    for chunk_size in CHUNK_SIZES {
        let o = CudaOptions { chunk_size, ..base };
        v.extend([
            o,
            CudaOptions { stages: 2, ..o },
            CudaOptions {
                kernel: KernelChoice::Simt,
                ..o
            },
            CudaOptions {
                kernel: KernelChoice::Fused,
                ..o
            },
            CudaOptions {
                warps: Some(8),
                ..o
            },
            CudaOptions {
                y_cols: Some(32),
                shared_cb: Some(true),
                ..o
            },
        ]);
    }
    // Refused by name, never compiled.
    v.extend([
        CudaOptions {
            chunk_size: 96,
            ..base
        },
        CudaOptions { stages: 3, ..base },
        CudaOptions {
            warps: Some(5),
            ..base
        },
        CudaOptions {
            y_cols: Some(48),
            ..base
        },
    ]);
    v
}

/// The SSD forward: every config's modules (main pass, prepass, C B^T pre-kernel)
/// fit the device's per-block shared memory, and the fused kernel's blocks per SM
/// fit its shared memory per SM.
fn sweep_ssd(sweep: &mut Sweep, dev: &Device) {
    let limits = &dev.limits;
    let options = ssd_options();
    for dtype in DTYPES.into_iter().chain([DType::F64]) {
        for p in P_GRID {
            for n in N_GRID {
                // (heads, groups): C B^T shared by 4 heads, or each head alone.
                for (heads, groups) in [(4, 1), (3, 3)] {
                    let dims = SsdDims::new(2, 4097, heads, p, n, groups);
                    for features in ssd_features() {
                        for opts in &options {
                            let what =
                                format!("{}: ssd {dtype} P={p} N={n} {dims:?} {opts:?}", dev.name);
                            let r = KernelConfig::select(dtype, &dims, features, opts, limits);
                            let Some(c) = sweep.outcome(&what, r) else {
                                continue;
                            };
                            let max = limits.smem_per_block_optin as usize;
                            assert!(c.max_module_smem() <= max, "{what}: {c:?}");
                            if let KernelPath::Fused(t) = c.path {
                                let per_block =
                                    c.smem_bytes(false) + limits.smem_reserved_per_block as usize;
                                assert!(
                                    t.min_blocks * per_block <= limits.smem_per_sm as usize,
                                    "{what}: {t:?} asks for more blocks per SM than fit"
                                );
                            }
                            sweep.add(dev.arch, c.variant(false));
                            sweep.add(dev.arch, c.variant(true));
                            if c.uses_chunk_cb() {
                                sweep.add(dev.arch, c.chunk_cb_variant());
                            }
                        }
                    }
                }
            }
        }
    }
}

fn scan_tunings() -> Vec<ScanTuning> {
    let d = ScanTuning::default();
    vec![
        d,
        ScanTuning {
            lanes_per_channel: Some(32),
            ..d
        },
        ScanTuning {
            lanes_per_channel: Some(1),
            threads: Some(32),
            ..d
        },
        ScanTuning {
            channels_per_lane: Some(2),
            exp_poly: Some(2),
            elem_exp_poly: Some(true),
            ..d
        },
        ScanTuning {
            channels_per_lane: Some(4),
            slice_major: Some(false),
            ..d
        },
        ScanTuning {
            tile: Some(256),
            threads: Some(1024),
            ..d
        },
        ScanTuning {
            min_blocks: Some(16),
            threads: Some(128),
            ..d
        },
        // Refused by name.
        ScanTuning {
            lanes_per_channel: Some(3),
            ..d
        },
        ScanTuning {
            tile: Some(12),
            ..d
        },
        ScanTuning {
            threads: Some(2048),
            ..d
        },
        ScanTuning {
            min_blocks: Some(0),
            ..d
        },
    ]
}

fn sweep_scan(sweep: &mut Sweep, dev: &Device) {
    for dtype in DTYPES.into_iter().chain([DType::F64]) {
        for n in SCAN_N_GRID.into_iter().chain([257]) {
            for seqlen in [4096, 4097] {
                for (b_groups, c_groups) in [(Some(1), Some(1)), (None, None), (Some(2), None)] {
                    for all in [true, false] {
                        let problem = ScanProblem {
                            dtype,
                            dims: Mamba1Dims::new(2, 64, n, seqlen),
                            b_groups,
                            c_groups,
                            has_d: all,
                            has_z: all,
                            has_delta_bias: all,
                            delta_softplus: all,
                            has_initial_states: all,
                            return_final_states: all,
                            varlen_seqs: None,
                        };
                        for tuning in scan_tunings() {
                            let what = format!("{}: scan {problem:?} {tuning:?}", dev.name);
                            let r = ScanConfig::new(&problem, tuning, &dev.limits);
                            if let Some(c) = sweep.outcome(&what, r) {
                                assert!(
                                    c.smem_bytes() <= dev.limits.smem_per_block_optin as usize,
                                    "{what}"
                                );
                                sweep.add(dev.arch, c.variant());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Both decode steps: every N (their row layouts are per N), the tilings the
/// benchmarks compare, each input type. Their selection has no device limit but
/// the 2048 threads per SM of sm_80/sm_90, the targets they compile for.
fn sweep_decode(sweep: &mut Sweep, dev: &Device) {
    for dtype in DTYPES.into_iter().chain([DType::F64]) {
        for n in N_GRID {
            let m2 = <mamba2_ssd::decode_cuda::Mamba2Decode as DecodeFamily>::candidates();
            let tilings = if n == 96 || n == 3 {
                m2
            } else {
                m2[..1].to_vec()
            };
            for t in tilings {
                let what = format!("{}: mamba2 decode {dtype} N={n} {t:?}", dev.name);
                let r = mamba2_ssd::decode_cuda::decode_variant(dtype, n, t);
                if let Some(v) = decode_outcome(sweep, &what, r) {
                    sweep.add(dev.arch, v);
                }
            }
            let m1 = mamba1_scan::decode_cuda::DecodeTiling::candidates();
            let mut tilings = vec![mamba1_scan::decode_cuda::DecodeTiling::for_dtype(dtype)];
            if n == 96 || n == 3 {
                tilings.extend(m1);
            }
            for t in tilings {
                let what = format!("{}: mamba1 decode {dtype} N={n} {t:?}", dev.name);
                let r = mamba1_scan::decode_cuda::decode_variant(dtype, n, t);
                if let Some(v) = decode_outcome(sweep, &what, r) {
                    sweep.add(dev.arch, v);
                }
            }
        }
    }
}

/// The decode launchers refuse their tiling knobs as `Dimension` errors naming
/// the knob; treat those as refusals too (any other error fails).
fn decode_outcome(
    sweep: &mut Sweep,
    what: &str,
    r: Result<KernelVariant>,
) -> Option<KernelVariant> {
    match r {
        Err(SsmError::Dimension { arg, reason }) => {
            assert!(!reason.is_empty(), "{what}: {arg} without a reason");
            *sweep.refused.entry(format!("decode {arg}")).or_default() += 1;
            None
        }
        other => sweep.outcome(what, other),
    }
}

/// Which variants the front end must see: one per set of the defines that the
/// kernel's `static_assert`s and `#error`s (and the layout constants they test)
/// depend on. Dropped, per source: the option switches (`SSD_DT_BIAS`, `SSD_HAS_Z`,
/// `SCAN_HAS_D`, ...: code paths, no checks), the SSD's `SSD_P` (its one check,
/// `P % PT == 0`, is the selection's `P % 32` rule, and the grid keeps a P of each
/// residue), the fused kernel's element type (f16 and bf16 share every check),
/// and the scan's B/C layout and vector switches (sizes only, in the shared
/// memory the selection checks against the device). Every option combination is
/// still compiled in full at the reference shapes by `kernel_budgets.rs`.
fn check_class(arch: Arch, v: &KernelVariant) -> String {
    const DROPPED: [&str; 17] = [
        "SSD_P",
        "SSD_DT_BIAS",
        "SSD_DT_SOFTPLUS",
        "SSD_D_MODE",
        "SSD_HAS_Z",
        "SSD_HAS_S0",
        "SSD_FINAL",
        "SCAN_HAS_BIAS",
        "SCAN_SOFTPLUS",
        "SCAN_HAS_D",
        "SCAN_HAS_Z",
        "SCAN_B_CONST",
        "SCAN_C_CONST",
        "SCAN_VEC_IO",
        "STREAM_STATE",
        "BC_PREFETCH",
        "SCAN_ELEM_EXP_POLY",
    ];
    // The SIMT kernel's element type, like the fused one's, enters no check; the
    // decode sources hold all three element types' entries in one translation unit.
    let typed = v.source.path.ends_with("ssd_chunk_cb.cu") || v.source.path.contains("scan_fwd");
    let defines: Vec<_> = v
        .defines
        .iter()
        .filter(|(k, _)| !DROPPED.contains(k) && (typed || *k != "SSD_DTYPE"))
        .filter(|(k, _)| *k != "SCAN_DTYPE")
        .collect();
    format!("{arch} {} {defines:?}", v.source.path)
}

/// One variant of each work split (the defines that shape the thread layout) is
/// also compiled to a cubin in full (on whichever target the sweep met it first;
/// `kernel_budgets.rs` compiles the reference variants for sm_90): ptxas sees
/// every layout the selection can pick.
fn tiling_class(v: &KernelVariant) -> String {
    const LAYOUT: [&str; 12] = [
        "SSD_PT",
        "SSD_NWARPS",
        "SSD_STAGES",
        "SSD_CB_GLOBAL",
        "SSD_STATE_ONLY",
        "SCAN_TPC",
        "SCAN_CPL",
        "SCAN_THREADS",
        "VEC",
        "TPR",
        "WARPS",
        "BC_SHARED",
    ];
    let defines: Vec<_> = v
        .defines
        .iter()
        .filter(|(k, _)| LAYOUT.contains(k))
        .collect();
    format!("{} {defines:?}", v.source.path)
}

/// Run `check` over `jobs` on every core (NVRTC is thread safe per program).
fn run_parallel<F>(jobs: &[(Arch, KernelVariant)], check: F) -> Vec<String>
where
    F: Fn(Arch, &KernelVariant) -> std::result::Result<(), String> + Sync,
{
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((arch, v)) = jobs.get(i) else { break };
                if let Err(e) = check(*arch, v) {
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{} ({arch}, {:?}): {e}", v.label, v.defines));
                }
            });
        }
    });
    failures.into_inner().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn every_selected_kernel_compiles_on_every_device() {
    let Some(compiler) =
        checkout_compiler_or_skip("every_selected_kernel_compiles_on_every_device")
    else {
        return;
    };
    let started = std::time::Instant::now();
    let mut sweep = Sweep::default();
    for dev in devices() {
        sweep_ssd(&mut sweep, &dev);
        sweep_scan(&mut sweep, &dev);
        sweep_decode(&mut sweep, &dev);
    }
    let mut classes = BTreeSet::new();
    let jobs: Vec<(Arch, KernelVariant)> = sweep
        .variants
        .values()
        .filter(|(arch, v)| classes.insert(check_class(*arch, v)))
        .cloned()
        .collect();
    let mut tilings = BTreeSet::new();
    let full: Vec<(Arch, KernelVariant)> = jobs
        .iter()
        .filter(|(_, v)| tilings.insert(tiling_class(v)))
        .cloned()
        .collect();
    eprintln!(
        "{} selections accepted, {} refused; {} distinct variants, {} check classes \
         (front end), {} tilings (cubin) ({:.1} s)",
        sweep.accepted,
        sweep.refused.values().sum::<usize>(),
        sweep.variants.len(),
        jobs.len(),
        full.len(),
        started.elapsed().as_secs_f64()
    );
    let mut per_source: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, v) in &jobs {
        per_source
            .entry(format!("{} {}", v.source.path, v.entry))
            .or_default()
            .0 += 1;
    }
    for (_, v) in &full {
        per_source
            .entry(format!("{} {}", v.source.path, v.entry))
            .or_default()
            .1 += 1;
    }
    for (source, (front, cubin)) in &per_source {
        eprintln!("  {source}: {front} front end, {cubin} cubin");
    }
    if std::env::var_os("SSM_GRID_PLAN_ONLY").is_some() {
        return;
    }
    for (why, n) in &sweep.refused {
        eprintln!("  refused {n:>6}x: {why}");
    }
    let front = run_parallel(&jobs, |arch, v| {
        compiler
            .check_front_end(&v.source, &v.defines, arch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    eprintln!("front end done ({:.1} s)", started.elapsed().as_secs_f64());
    let cubin = run_parallel(&full, |arch, v| {
        ssm_gpu::report_variant(&compiler, v, arch)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    eprintln!("cubins done ({:.1} s)", started.elapsed().as_secs_f64());
    let failures: Vec<String> = front.into_iter().chain(cubin).collect();
    assert!(
        failures.is_empty(),
        "{} selected variants do not compile:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The shape of issue 13 takes the fused kernel on the H200 now.
    let dims = SsdDims::new(2, 4097, 24, 64, 96, 3);
    let opts = CudaOptions {
        chunk_size: 128,
        ..CudaOptions::default()
    };
    let c = KernelConfig::select(
        DType::Bf16,
        &dims,
        SsdFeatures::all(),
        &opts,
        &DeviceLimits::H200,
    )
    .unwrap();
    assert!(c.is_fused(), "{c:?}");
}

/// The check can fail: a fused config whose static_assert does not hold (a P
/// tile that does not divide P) is reported by the front end.
#[test]
fn the_front_end_check_reports_a_failing_static_assert() {
    let Some(compiler) =
        test_compiler_or_skip("the_front_end_check_reports_a_failing_static_assert")
    else {
        return;
    };
    let dims = SsdDims::new(1, 64, 2, 64, 64, 1);
    let c = KernelConfig::select(
        DType::Bf16,
        &dims,
        SsdFeatures::all(),
        &CudaOptions::default(),
        &DeviceLimits::H100_SXM,
    )
    .unwrap();
    let good = c.variant(false);
    compiler
        .check_front_end(&good.source, &good.defines, Arch::Sm90)
        .unwrap();
    // The front end's error with one define of the good variant changed.
    let error_with = |key: &str, value: &str| {
        let defines: Vec<(&str, String)> = good
            .defines
            .iter()
            .map(|(k, v)| (*k, if *k == key { value.into() } else { v.clone() }))
            .collect();
        compiler
            .check_front_end(&good.source, &defines, Arch::Sm90)
            .unwrap_err()
            .to_string()
    };
    let err = error_with("SSD_P", "48");
    assert!(err.contains("PT must divide P"), "{err}");
    // And a device limit below the config's shared memory trips SSD_MAX_SMEM.
    let err = error_with("SSD_MAX_SMEM", "1024");
    assert!(err.contains("per-block limit"), "{err}");
}
