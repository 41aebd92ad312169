//! Device-resident buffers and the launch of `mamba1_scan_fwd`: the kernel
//! argument block, the grid, and the checks that make a launch safe (every
//! buffer has exactly the length the problem implies).

use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Result, SsmError};
use ssm_gpu::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop,
};
use ssm_gpu::{DeviceElement, Gpu, GpuError, Kernel, KernelSource};

use super::config::{unsupported, ScanConfig, ScanProblem, ScanTuning};

pub(crate) static SCAN_SOURCE: KernelSource = ssm_gpu::kernel_source!("mamba1/scan_fwd.cu");
pub(crate) const SCAN_ENTRY: &str = "mamba1_scan_fwd";

/// `struct ScanArgs` of `kernels/mamba1/scan_fwd.cu`, field for field (all 8
/// bytes wide, so both sides lay it out without padding). Pointers are device
/// addresses, 0 for an absent optional tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ScanArgs {
    u: u64,
    delta: u64,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    z: u64,
    delta_bias: u64,
    initial_states: u64,
    cu_seqlens: u64,
    out: u64,
    final_states: u64,
    d_inner: i64,
    seqlen: i64,
    groups_b: i64,
    groups_c: i64,
    seg_channels: i64,
    blocks_per_seg: i64,
    blocks_per_seq: i64,
}

// SAFETY: a plain-old-data struct of integers with the C layout the kernel expects.
unsafe impl DeviceRepr for ScanArgs {}

/// Every tensor of one scan on the device. Optional inputs are present exactly
/// when the [`ScanProblem`] says so; `out` and `final_states` are written.
pub struct ScanBuffers<T> {
    pub u: CudaSlice<T>,
    pub delta: CudaSlice<T>,
    pub a: CudaSlice<f32>,
    pub b: CudaSlice<T>,
    pub c: CudaSlice<T>,
    pub d: Option<CudaSlice<f32>>,
    pub z: Option<CudaSlice<T>>,
    pub delta_bias: Option<CudaSlice<f32>>,
    pub initial_states: Option<CudaSlice<f32>>,
    pub cu_seqlens: Option<CudaSlice<i64>>,
    pub out: CudaSlice<T>,
    pub final_states: Option<CudaSlice<f32>>,
}

impl<T: DeviceElement> ScanBuffers<T> {
    /// Upload the inputs of `p` and allocate poisoned outputs.
    /// `p` must have at least one position (`L >= 1`): CUDA has no empty buffers.
    pub fn upload(gpu: &Gpu, p: &SelectiveScanParams<'_, T>) -> Result<Self> {
        let problem = ScanProblem::of(p)?;
        let up_f32 = |x: Option<&[f32]>| x.map(|x| gpu.upload(x)).transpose();
        Ok(ScanBuffers {
            u: gpu.upload(p.u)?,
            delta: gpu.upload(p.delta)?,
            a: gpu.upload(p.a)?,
            b: gpu.upload(p.b.data())?,
            c: gpu.upload(p.c.data())?,
            d: up_f32(p.d)?,
            z: p.z.map(|z| gpu.upload(z)).transpose()?,
            delta_bias: up_f32(p.delta_bias)?,
            initial_states: up_f32(p.initial_states)?,
            cu_seqlens: p
                .cu_seqlens
                .map(|cu| gpu.stream().clone_htod(cu).map_err(GpuError::from))
                .transpose()?,
            out: gpu.alloc_poisoned(problem.io_len())?,
            final_states: if problem.return_final_states {
                Some(gpu.alloc_poisoned(problem.state_len())?)
            } else {
                None
            },
        })
    }

    /// Check every buffer against the problem, so that a launch cannot read or
    /// write out of bounds.
    pub(crate) fn check(&self, problem: &ScanProblem) -> Result<()> {
        let io = problem.io_len();
        let channels = problem.dims.d_inner;
        let n = problem.dims.d_state;
        expect_len("u", self.u.len(), io)?;
        expect_len("delta", self.delta.len(), io)?;
        expect_len("A", self.a.len(), channels * n)?;
        expect_len("B", self.b.len(), problem.bc_len(problem.b_groups))?;
        expect_len("C", self.c.len(), problem.bc_len(problem.c_groups))?;
        expect_len("out", self.out.len(), io)?;
        expect_opt(
            "D",
            self.d.as_ref().map(|x| x.len()),
            problem.has_d,
            channels,
        )?;
        expect_opt("z", self.z.as_ref().map(|x| x.len()), problem.has_z, io)?;
        expect_opt(
            "delta_bias",
            self.delta_bias.as_ref().map(|x| x.len()),
            problem.has_delta_bias,
            channels,
        )?;
        expect_opt(
            "initial_states",
            self.initial_states.as_ref().map(|x| x.len()),
            problem.has_initial_states,
            problem.state_len(),
        )?;
        expect_opt(
            "final_states",
            self.final_states.as_ref().map(|x| x.len()),
            problem.return_final_states,
            problem.state_len(),
        )?;
        expect_opt(
            "cu_seqlens",
            self.cu_seqlens.as_ref().map(|x| x.len()),
            problem.varlen_seqs.is_some(),
            problem.num_seqs() + 1,
        )
    }
}

pub(crate) fn expect_len(arg: &'static str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(SsmError::Shape {
            arg,
            expected: format!("{expected} elements on the device"),
            expected_len: expected,
            got,
        });
    }
    Ok(())
}

pub(crate) fn expect_opt(
    arg: &'static str,
    got: Option<usize>,
    present: bool,
    expected: usize,
) -> Result<()> {
    match (got, present) {
        (Some(got), true) => expect_len(arg, got, expected),
        (None, false) => Ok(()),
        (Some(_), false) => Err(SsmError::Shape {
            arg,
            expected: "no buffer (the problem does not use it)".into(),
            expected_len: 0,
            got: got.unwrap_or(0),
        }),
        (None, true) => Err(SsmError::Shape {
            arg,
            expected: format!("{expected} elements on the device"),
            expected_len: expected,
            got: 0,
        }),
    }
}

/// A compiled kernel for one problem shape and its launch geometry. Build once,
/// launch many times (benchmarks) on buffers of that shape.
pub struct ScanPlan {
    pub problem: ScanProblem,
    pub config: ScanConfig,
    pub kernel: Kernel,
    launch: LaunchConfig,
    seg_channels: usize,
    blocks_per_seg: usize,
    blocks_per_seq: usize,
}

impl ScanPlan {
    pub fn new(gpu: &Gpu, problem: &ScanProblem, tuning: ScanTuning) -> Result<Self> {
        let limits = gpu.limits()?;
        let config = ScanConfig::new(problem, tuning, &limits)?;
        if problem.dims.seqlen == 0 {
            return Err(unsupported(
                "launching on L = 0 (selective_scan_cuda handles it without a launch)".into(),
            ));
        }
        let seg_channels = problem.seg_channels();
        let blocks_per_seg = seg_channels.div_ceil(config.channels_per_block());
        let blocks_per_seq = (problem.dims.d_inner / seg_channels) * blocks_per_seg;
        let blocks = problem
            .num_seqs()
            .checked_mul(blocks_per_seq)
            .filter(|&b| b <= i32::MAX as usize)
            .ok_or_else(|| {
                unsupported(format!(
                    "{} sequences x {blocks_per_seq} channel blocks (more than 2^31 - 1 blocks)",
                    problem.num_seqs()
                ))
            })?;
        let mut kernel = gpu.kernel(&SCAN_SOURCE, SCAN_ENTRY, &config.defines())?;
        let smem = config.smem_bytes();
        // Past the 48 KiB default the kernel opts in (selection checked the limit).
        if smem > 48 * 1024 {
            kernel.set_max_dynamic_smem(smem as u32)?;
        }
        Ok(ScanPlan {
            problem: *problem,
            config,
            kernel,
            launch: LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (config.threads as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            },
            seg_channels,
            blocks_per_seg,
            blocks_per_seq,
        })
    }

    /// Number of blocks of a launch.
    pub fn blocks(&self) -> u32 {
        self.launch.grid_dim.0
    }

    /// Enqueue one scan on the GPU's stream (asynchronous).
    pub fn launch<T: DeviceElement>(&self, gpu: &Gpu, bufs: &mut ScanBuffers<T>) -> Result<()> {
        if T::DTYPE != self.problem.dtype {
            return Err(unsupported(format!(
                "{} buffers with a plan compiled for {}",
                T::DTYPE,
                self.problem.dtype
            )));
        }
        bufs.check(&self.problem)?;
        let stream = gpu.stream();
        // The guards record the buffers' use on the stream when dropped, after the launch.
        let (u, _g0) = bufs.u.device_ptr(stream);
        let (delta, _g1) = bufs.delta.device_ptr(stream);
        let (a, _g2) = bufs.a.device_ptr(stream);
        let (b, _g3) = bufs.b.device_ptr(stream);
        let (c, _g4) = bufs.c.device_ptr(stream);
        let (d, _g5) = opt_ptr(&bufs.d, gpu);
        let (z, _g6) = opt_ptr(&bufs.z, gpu);
        let (delta_bias, _g7) = opt_ptr(&bufs.delta_bias, gpu);
        let (initial_states, _g8) = opt_ptr(&bufs.initial_states, gpu);
        let (cu_seqlens, _g9) = opt_ptr(&bufs.cu_seqlens, gpu);
        let (out, _g10) = bufs.out.device_ptr_mut(stream);
        let (final_states, _g11) = opt_ptr_mut(&mut bufs.final_states, gpu);
        let dims = self.problem.dims;
        let args = ScanArgs {
            u,
            delta,
            a,
            b,
            c,
            d,
            z,
            delta_bias,
            initial_states,
            cu_seqlens,
            out,
            final_states,
            d_inner: dims.d_inner as i64,
            seqlen: dims.seqlen as i64,
            groups_b: self.problem.b_groups.unwrap_or(1) as i64,
            groups_c: self.problem.c_groups.unwrap_or(1) as i64,
            seg_channels: self.seg_channels as i64,
            blocks_per_seg: self.blocks_per_seg as i64,
            blocks_per_seq: self.blocks_per_seq as i64,
        };
        let mut builder = stream.launch_builder(&self.kernel.func);
        builder.arg(&args);
        // SAFETY: `args` matches the kernel's `ScanArgs` field for field; every
        // pointer covers the length `check` verified against the problem the
        // kernel was compiled and sized for, and all buffers outlive the launch
        // (their guards are alive until after it is enqueued, and cudarc orders
        // frees after the stream's pending work).
        unsafe { builder.launch(self.launch) }
            .map_err(|e| SsmError::Backend(format!("launching {}: {e:?}", self.config.label())))?;
        Ok(())
    }
}

pub(crate) type PtrGuard<'a> = Option<SyncOnDrop<'a>>;

pub(crate) fn opt_ptr<'a, U>(buf: &'a Option<CudaSlice<U>>, gpu: &'a Gpu) -> (u64, PtrGuard<'a>) {
    match buf {
        Some(b) => {
            let (p, g) = b.device_ptr(gpu.stream());
            (p, Some(g))
        }
        None => (0, None),
    }
}

pub(crate) fn opt_ptr_mut<'a, U>(
    buf: &'a mut Option<CudaSlice<U>>,
    gpu: &'a Gpu,
) -> (u64, PtrGuard<'a>) {
    match buf {
        Some(b) => {
            let (p, g) = b.device_ptr_mut(gpu.stream());
            (p, Some(g))
        }
        None => (0, None),
    }
}
