//! What is benchmarked: one [`Case`] per (implementation, workload, dtype).
//!
//! - GPU: docs/DESIGN.md §6's workloads (bf16, plus f16 and f32), the L sweeps
//!   (512 to 65536) on the 2.8B/2.7B layer widths, N and chunk-size sweeps,
//!   decode steps over batch, and the runtime's self-test stream kernel (the
//!   card's bandwidth, and the telemetry path's own check).
//! - CPU ports: the same sweeps on narrow layers (2 cores must finish them).
//! - Reference (f64 oracle): small shapes only.
//!
//! `quick` keeps every family but trims the sweeps (CI and criterion's quick mode).

use ssm_core::DType;
use ssm_telemetry::problem::{Pass, Problem, SsdShape, StreamShape};
use ssm_telemetry::record::result_id_for;
use ssm_telemetry::workloads::{
    mamba1_block_scan, mamba1_decode, mamba2_block_ssd, mamba2_decode, reference_workloads,
    seqlen_sweep,
};

/// Which implementation runs a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The f64 oracle (for SSD: the recurrence).
    Reference,
    /// The f64 quadratic (dual) form of SSD.
    ReferenceQuadratic,
    /// The multi-threaded f32 CPU port of the kernel algorithm.
    Cpu,
    /// The CUDA kernel, on device-resident buffers.
    Cuda,
}

/// One benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub backend: Backend,
    pub workload: String,
    pub problem: Problem,
    /// Kernel options of the CUDA SSD (the default configuration unless a
    /// variant case says otherwise; its workload name then carries `#label`).
    pub ssd_options: mamba2_ssd::cuda::CudaOptions,
    /// The pass timed: the forward, the backward alone, or both as one call.
    pub pass: Pass,
    /// The SSD backward's tensor-core S C / G B (`#bwd-mma` cases).
    pub bwd_tensor_cores: bool,
    /// Variants of the Mamba-1 scan backward (`#ckpt-fwd` cases, ...).
    pub scan_bwd: mamba1_scan::cuda::BwdOptions,
}

impl Case {
    pub fn new(backend: Backend, workload: impl Into<String>, problem: Problem) -> Case {
        Case {
            backend,
            workload: workload.into(),
            problem,
            ssd_options: Default::default(),
            pass: Pass::Forward,
            bwd_tensor_cores: false,
            scan_bwd: Default::default(),
        }
    }

    /// The same Mamba-1 backward case with other backward variants, named
    /// `workload#label`.
    pub fn scan_bwd_variant(mut self, label: &str, options: mamba1_scan::cuda::BwdOptions) -> Case {
        self.workload = format!("{}#{label}", self.workload);
        self.scan_bwd = options;
        self
    }

    /// The same case timing another pass (id suffix `/bwd` or `/fwd+bwd`).
    pub fn with_pass(mut self, pass: Pass) -> Case {
        self.pass = pass;
        self
    }

    /// The same case with other CUDA SSD kernel options, named `workload#label`.
    pub fn ssd_variant(mut self, label: &str, options: mamba2_ssd::cuda::CudaOptions) -> Case {
        self.workload = format!("{}#{label}", self.workload);
        self.ssd_options = options;
        self
    }

    /// The same SSD backward case on the tensor-core S C / G B, named
    /// `workload#bwd-mma`.
    pub fn with_bwd_tensor_cores(mut self) -> Case {
        self.workload = format!("{}#bwd-mma", self.workload);
        self.bwd_tensor_cores = true;
        self
    }

    /// The CUDA SSD options of this case (its chunk size comes from the problem).
    pub fn ssd_options(&self) -> mamba2_ssd::cuda::CudaOptions {
        self.ssd_options
    }

    /// The implementation's name in results (`mamba1-scan.cuda`, `reference.ssd-recurrence`, ...).
    pub fn implementation(&self) -> &'static str {
        use Backend::*;
        match (&self.problem, self.backend) {
            (Problem::Mamba1Scan(_), Reference) => "reference.mamba1-scan",
            (Problem::Ssd(_), Reference) => "reference.ssd-recurrence",
            (_, ReferenceQuadratic) => "reference.ssd-quadratic",
            (Problem::Mamba1Step(_), Reference) => "reference.mamba1-step",
            (Problem::Mamba2Step(_), Reference) => "reference.mamba2-step",
            (Problem::Stream(_), Reference) => "reference.stream",
            (Problem::Mamba1Scan(_), Cpu) => "mamba1-scan.cpu",
            (Problem::Mamba1Scan(_), Cuda) => "mamba1-scan.cuda",
            (Problem::Ssd(_), Cpu) => "mamba2-ssd.cpu",
            (Problem::Ssd(_), Cuda) => "mamba2-ssd.cuda",
            (Problem::Mamba1Step(_), Cpu) => "mamba1-scan.decode.cpu",
            (Problem::Mamba1Step(_), Cuda) => "mamba1-scan.decode.cuda",
            (Problem::Mamba2Step(_), Cpu) => "mamba2-ssd.decode.cpu",
            (Problem::Mamba2Step(_), Cuda) => "mamba2-ssd.decode.cuda",
            (Problem::Stream(_), Cpu) => "stream.cpu",
            (Problem::Stream(_), Cuda) => "selftest.cuda",
        }
    }

    /// The result id (`implementation/workload/dtype`).
    pub fn id(&self) -> String {
        result_id_for(
            self.implementation(),
            &self.workload,
            &self.problem,
            self.pass,
        )
    }

    /// Whether `filter` selects this case: a substring of the id, or several
    /// separated by commas (any of them).
    pub fn matches(&self, filter: Option<&str>) -> bool {
        let id = self.id();
        filter.is_none_or(|f| f.split(',').any(|part| id.contains(part)))
    }
}

fn with_chunk(p: Problem, chunk_size: usize) -> Problem {
    match p {
        Problem::Ssd(s) => Problem::Ssd(SsdShape { chunk_size, ..s }),
        other => other,
    }
}

fn with_d_state(p: Problem, n: usize) -> Problem {
    match p {
        Problem::Mamba1Scan(mut s) => {
            s.d_state = n;
            Problem::Mamba1Scan(s)
        }
        Problem::Ssd(mut s) => {
            s.d_state = n;
            Problem::Ssd(s)
        }
        other => other,
    }
}

/// The chunk length the CUDA SSD path uses by default (its measured best).
pub const CUDA_SSD_CHUNK: usize = 64;

/// GPU cases.
pub fn gpu_cases(quick: bool) -> Vec<Case> {
    use Backend::Cuda;
    let mut cases = vec![Case::new(
        Cuda,
        "stream-640MB",
        Problem::Stream(StreamShape {
            elements: 1 << 26,
            read_bytes_per_element: 6,
            write_bytes_per_element: 4,
            flops_per_element: 2,
        }),
    )];
    let dtypes: &[DType] = if quick {
        &[DType::Bf16]
    } else {
        &[DType::Bf16, DType::F16, DType::F32]
    };
    for w in reference_workloads() {
        for &dtype in dtypes {
            let p = with_chunk(w.problem.with_dtype(dtype), CUDA_SSD_CHUNK);
            cases.push(Case::new(Cuda, w.name, p));
        }
    }
    // The Mamba-1 backward, alone and after its forward (bf16, the trained setting).
    for w in reference_workloads()
        .into_iter()
        .filter(|w| matches!(w.problem, Problem::Mamba1Scan(_)))
    {
        for pass in [Pass::Backward, Pass::ForwardBackward] {
            let p = w.problem.with_dtype(DType::Bf16);
            cases.push(Case::new(Cuda, w.name, p).with_pass(pass));
            // The variants (docs/kernels/mamba1-scan-bwd.md, v4 and v5): the
            // training forward writes the checkpoints (`/bwd`: without the
            // checkpoint kernel, the forward run once before timing); the
            // slice-major sweep with its decays kept or recomputed (the default
            // chooses by waves); the lanes sweep it replaced (v3b).
            use mamba1_scan::cuda::BwdOptions;
            let ckfwd = BwdOptions {
                forward_checkpoints: true,
                ..Default::default()
            };
            let keep = |k: bool| BwdOptions {
                keep_decays: Some(k),
                ..Default::default()
            };
            let lanes = BwdOptions {
                lanes_sweep: true,
                ..Default::default()
            };
            let lanes_ckfwd = BwdOptions {
                lanes_sweep: true,
                ..ckfwd
            };
            for (label, options) in [
                ("ckpt-fwd", ckfwd),
                ("sm-keep", keep(true)),
                ("sm-recompute", keep(false)),
                ("lanes", lanes),
                ("lanes-ckpt-fwd", lanes_ckfwd),
            ] {
                cases.push(
                    Case::new(Cuda, w.name, p)
                        .with_pass(pass)
                        .scan_bwd_variant(label, options),
                );
            }
        }
    }
    // The SSD backward, alone and after its forward (bf16, chunk 64 for both).
    for w in reference_workloads()
        .into_iter()
        .filter(|w| matches!(w.problem, Problem::Ssd(_)))
    {
        for pass in [Pass::Backward, Pass::ForwardBackward] {
            let p = with_chunk(w.problem.with_dtype(DType::Bf16), CUDA_SSD_CHUNK);
            cases.push(Case::new(Cuda, w.name, p).with_pass(pass));
            cases.push(
                Case::new(Cuda, w.name, p)
                    .with_pass(pass)
                    .with_bwd_tensor_cores(),
            );
        }
    }
    // The f32 decode steps (fp32 inputs are common at decode time).
    if quick {
        for name in ["M1-decode", "M2-decode"] {
            let w = reference_workloads().into_iter().find(|w| w.name == name);
            if let Some(w) = w {
                cases.push(Case::new(Cuda, w.name, w.problem.with_dtype(DType::F32)));
            }
        }
    }
    let lengths: Vec<usize> = if quick {
        vec![512, 4096, 65536]
    } else {
        seqlen_sweep()
    };
    for &l in &lengths {
        cases.push(Case::new(
            Cuda,
            format!("L-sweep/L={l}"),
            mamba1_block_scan(1, 5120, 16, l, DType::Bf16),
        ));
        cases.push(Case::new(
            Cuda,
            format!("L-sweep/L={l}"),
            with_chunk(
                mamba2_block_ssd(1, l, 80, 64, 128, 1, DType::Bf16),
                CUDA_SSD_CHUNK,
            ),
        ));
    }
    let m1_n: &[usize] = if quick { &[32] } else { &[8, 32, 64] };
    for &n in m1_n {
        let p = with_d_state(mamba1_block_scan(4, 5120, 16, 4096, DType::Bf16), n);
        cases.push(Case::new(Cuda, format!("N-sweep/N={n}"), p));
    }
    let ssd_n: &[usize] = if quick { &[64] } else { &[64, 256] };
    for &n in ssd_n {
        let p = with_d_state(mamba2_block_ssd(4, 4096, 80, 64, 128, 1, DType::Bf16), n);
        cases.push(Case::new(
            Cuda,
            format!("N-sweep/N={n}"),
            with_chunk(p, CUDA_SSD_CHUNK),
        ));
    }
    for q in [128, 256] {
        let p = with_chunk(mamba2_block_ssd(4, 4096, 80, 64, 128, 1, DType::Bf16), q);
        cases.push(Case::new(Cuda, format!("chunk-sweep/Q={q}"), p));
    }
    cases.extend(ssd_option_cases(quick));
    let batches: &[usize] = if quick { &[1] } else { &[1, 16, 64] };
    for &b in batches {
        cases.push(Case::new(
            Cuda,
            format!("decode-b{b}"),
            mamba1_decode(b, 5120, 16, DType::Bf16),
        ));
        cases.push(Case::new(
            Cuda,
            format!("decode-b{b}"),
            mamba2_decode(b, 80, 64, 128, DType::Bf16),
        ));
    }
    cases
}

/// The SSD's forward options and kernel variants at the design workloads (what
/// the old `gpu_ssd_bench` example measured): with final states returned (the
/// state update's hi/lo split is then on), with the z gate, and the kernel's
/// experiment knobs at M2-2.7B (two cp.async stages, 8 warps, C·Bᵀ formed in the
/// block instead of by the pre-kernel, 32-column work units).
pub fn ssd_option_cases(quick: bool) -> Vec<Case> {
    use mamba2_ssd::cuda::CudaOptions;
    let mut cases = Vec::new();
    let workloads: Vec<_> = reference_workloads()
        .into_iter()
        .filter(|w| matches!(w.problem, Problem::Ssd(_)))
        .filter(|w| !quick || w.name == "M2-2.7B")
        .collect();
    for w in &workloads {
        let Problem::Ssd(base) = with_chunk(w.problem, CUDA_SSD_CHUNK) else {
            continue;
        };
        let final_states = SsdShape {
            final_states: true,
            ..base
        };
        let gated = SsdShape { z: true, ..base };
        cases.push(Case::new(
            Backend::Cuda,
            format!("{}+final", w.name),
            Problem::Ssd(final_states),
        ));
        cases.push(Case::new(
            Backend::Cuda,
            format!("{}+z", w.name),
            Problem::Ssd(gated),
        ));
    }
    let m2 = with_chunk(
        mamba2_block_ssd(4, 4096, 80, 64, 128, 1, DType::Bf16),
        CUDA_SSD_CHUNK,
    );
    let base = CudaOptions::default();
    let variants = [
        ("stages=2", CudaOptions { stages: 2, ..base }),
        (
            "warps=8",
            CudaOptions {
                warps: Some(8),
                ..base
            },
        ),
        (
            "cb=in-block",
            CudaOptions {
                shared_cb: Some(false),
                ..base
            },
        ),
        (
            "y_cols=32",
            CudaOptions {
                y_cols: Some(32),
                ..base
            },
        ),
    ];
    if !quick {
        for (label, options) in variants {
            cases.push(Case::new(Backend::Cuda, "M2-2.7B", m2).ssd_variant(label, options));
        }
    }
    cases
}

/// CPU-port cases: narrow layers, the same sweeps.
pub fn cpu_cases(quick: bool) -> Vec<Case> {
    use Backend::Cpu;
    let m1 = |l: usize| mamba1_block_scan(1, 64, 16, l, DType::Bf16);
    let ssd = |l: usize| mamba2_block_ssd(1, l, 4, 64, 64, 1, DType::Bf16);
    let mut cases = Vec::new();
    let lengths: Vec<usize> = if quick {
        vec![512, 2048, 8192]
    } else {
        seqlen_sweep()
    };
    for &l in &lengths {
        cases.push(Case::new(Cpu, format!("L-sweep/L={l}"), m1(l)));
        cases.push(Case::new(Cpu, format!("L-sweep/L={l}"), ssd(l)));
    }
    let ns: &[usize] = if quick { &[32] } else { &[8, 32, 64] };
    for &n in ns {
        cases.push(Case::new(
            Cpu,
            format!("N-sweep/N={n}"),
            with_d_state(m1(4096), n),
        ));
        cases.push(Case::new(
            Cpu,
            format!("N-sweep/N={n}"),
            with_d_state(ssd(4096), 2 * n),
        ));
    }
    for q in [64, 128] {
        cases.push(Case::new(
            Cpu,
            format!("chunk-sweep/Q={q}"),
            with_chunk(ssd(4096), q),
        ));
    }
    let dtypes: &[DType] = if quick {
        &[DType::F32]
    } else {
        &[DType::F32, DType::F16]
    };
    for &dtype in dtypes {
        cases.push(Case::new(Cpu, "L-sweep/L=4096", m1(4096).with_dtype(dtype)));
        cases.push(Case::new(
            Cpu,
            "L-sweep/L=4096",
            ssd(4096).with_dtype(dtype),
        ));
    }
    for b in [1, 16] {
        cases.push(Case::new(
            Cpu,
            format!("decode-b{b}"),
            mamba1_decode(b, 1024, 16, DType::Bf16),
        ));
        cases.push(Case::new(
            Cpu,
            format!("decode-b{b}"),
            mamba2_decode(b, 16, 64, 64, DType::Bf16),
        ));
    }
    // Duplicate ids (the L=4096 point of the sweep in the swept dtype) are dropped.
    let mut seen = std::collections::HashSet::new();
    cases.retain(|c| seen.insert(c.id()));
    cases
}

/// Reference (f64 oracle) cases: small shapes only.
pub fn reference_cases() -> Vec<Case> {
    use Backend::{Reference, ReferenceQuadratic};
    let mut cases = Vec::new();
    for l in [512, 2048] {
        cases.push(Case::new(
            Reference,
            format!("L-sweep/L={l}"),
            mamba1_block_scan(1, 16, 16, l, DType::Bf16),
        ));
        let ssd = mamba2_block_ssd(1, l, 2, 32, 32, 1, DType::Bf16);
        cases.push(Case::new(Reference, format!("L-sweep/L={l}"), ssd));
        cases.push(Case::new(ReferenceQuadratic, format!("L-sweep/L={l}"), ssd));
    }
    cases.push(Case::new(
        Reference,
        "decode-b4",
        mamba1_decode(4, 256, 16, DType::Bf16),
    ));
    cases.push(Case::new(
        Reference,
        "decode-b4",
        mamba2_decode(4, 8, 32, 32, DType::Bf16),
    ));
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique(cases: &[Case]) {
        let mut seen = std::collections::HashSet::new();
        for c in cases {
            assert!(seen.insert(c.id()), "duplicate id {}", c.id());
        }
    }

    #[test]
    fn ids_are_unique_in_every_suite() {
        for quick in [true, false] {
            unique(&gpu_cases(quick));
            unique(&cpu_cases(quick));
        }
        unique(&reference_cases());
    }

    #[test]
    fn the_gpu_suite_covers_design_md_and_the_full_l_range() {
        let cases = gpu_cases(false);
        for w in reference_workloads() {
            assert!(cases.iter().any(|c| c.workload == w.name), "{}", w.name);
        }
        let ls: Vec<usize> = cases.iter().filter_map(|c| c.problem.seqlen()).collect();
        assert!(ls.contains(&512) && ls.contains(&65536));
        assert!(cases.iter().all(|c| c.backend == Backend::Cuda));
        assert_eq!(cases[0].implementation(), "selftest.cuda");
    }

    #[test]
    fn filters_select_by_id_substring() {
        let cases = gpu_cases(true);
        let picked: Vec<&Case> = cases.iter().filter(|c| c.matches(Some("decode"))).collect();
        assert!(!picked.is_empty());
        assert!(picked.iter().all(|c| c.id().contains("decode")));
    }
}
