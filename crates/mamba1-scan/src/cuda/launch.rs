//! Device-resident buffers and the launch of `mamba1_scan_fwd`: the kernel
//! argument block, the grid, and the checks that make a launch safe (every
//! buffer has exactly the length the problem implies).

use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{Result, SsmError};
use std::sync::Arc;

use ssm_gpu::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};
use ssm_gpu::{ContextId, DeviceElement, Gpu, GpuError, Kernel, KernelSource};

use super::backward::{ScanBwdPlan, ScanBwdWorkspace};
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
    status: u64,
    d_inner: i64,
    seqlen: i64,
    groups_b: i64,
    groups_c: i64,
    seg_channels: i64,
    blocks_per_seg: i64,
    blocks_per_seq: i64,
    ckpt: u64,
    ckpt_slots: i64,
}

// The kernel asserts the same size (`static_assert` in scan_fwd.cu).
const _: () = assert!(std::mem::size_of::<ScanArgs>() == 176);

// SAFETY: a plain-old-data struct of integers with the C layout the kernel expects.
unsafe impl DeviceRepr for ScanArgs {}

/// Every tensor of one scan on the device. Optional inputs are present exactly
/// when the [`ScanProblem`] says so; `out` and `final_states` are written.
pub struct ScanBuffers<T> {
    /// `(b, D_in, L)`.
    pub u: CudaSlice<T>,
    /// `(b, D_in, L)`, before bias and softplus.
    pub delta: CudaSlice<T>,
    /// `(D_in, N)`.
    pub a: CudaSlice<f32>,
    /// `(b, G, N, L)`, or `(D_in, N)` for constant B.
    pub b: CudaSlice<T>,
    /// `(b, G, N, L)`, or `(D_in, N)` for constant C.
    pub c: CudaSlice<T>,
    /// `(D_in)`.
    pub d: Option<CudaSlice<f32>>,
    /// `(b, D_in, L)`: the output gate.
    pub z: Option<CudaSlice<T>>,
    /// `(D_in)`.
    pub delta_bias: Option<CudaSlice<f32>>,
    /// `(b or num_seqs, D_in, N)`.
    pub initial_states: Option<CudaSlice<f32>>,
    /// Varlen offsets `(num_seqs + 1)`, batch 1; checked by the kernel.
    pub cu_seqlens: Option<CudaSlice<i64>>,
    /// `(b, D_in, L)`, written.
    pub out: CudaSlice<T>,
    /// `(b or num_seqs, D_in, N)`, written when the problem returns final states.
    pub final_states: Option<CudaSlice<f32>>,
}

/// Every tensor of one scan as views into the caller's device memory (any
/// offset into a larger allocation; each view is one contiguous range, laid
/// out as [`ScanBuffers`] documents). What [`ScanPlan::launch_views`] takes, so
/// that upstream code (a candle tensor's storage, a slice of an activation
/// arena) launches without copies.
pub struct ScanViews<'a, T> {
    /// `(b, D_in, L)`.
    pub u: CudaView<'a, T>,
    /// `(b, D_in, L)`, before bias and softplus.
    pub delta: CudaView<'a, T>,
    /// `(D_in, N)`.
    pub a: CudaView<'a, f32>,
    /// `(b, G, N, L)`, or `(D_in, N)` for constant B.
    pub b: CudaView<'a, T>,
    /// `(b, G, N, L)`, or `(D_in, N)` for constant C.
    pub c: CudaView<'a, T>,
    /// `(D_in)`.
    pub d: Option<CudaView<'a, f32>>,
    /// `(b, D_in, L)`: the output gate.
    pub z: Option<CudaView<'a, T>>,
    /// `(D_in)`.
    pub delta_bias: Option<CudaView<'a, f32>>,
    /// `(b or num_seqs, D_in, N)`.
    pub initial_states: Option<CudaView<'a, f32>>,
    /// Device-resident offsets: checked by the kernel, not trusted
    /// ([`ScanPlan::take_device_error`]).
    pub cu_seqlens: Option<CudaView<'a, i64>>,
    /// `(b, D_in, L)`, written.
    pub out: CudaViewMut<'a, T>,
    /// `(b or num_seqs, D_in, N)`, written when the problem returns final states.
    pub final_states: Option<CudaViewMut<'a, f32>>,
}

impl<T: DeviceElement> ScanBuffers<T> {
    /// Views of every buffer, for [`ScanPlan::launch_views`].
    pub fn views(&mut self) -> ScanViews<'_, T> {
        ScanViews {
            u: self.u.as_view(),
            delta: self.delta.as_view(),
            a: self.a.as_view(),
            b: self.b.as_view(),
            c: self.c.as_view(),
            d: self.d.as_ref().map(|x| x.as_view()),
            z: self.z.as_ref().map(|x| x.as_view()),
            delta_bias: self.delta_bias.as_ref().map(|x| x.as_view()),
            initial_states: self.initial_states.as_ref().map(|x| x.as_view()),
            cu_seqlens: self.cu_seqlens.as_ref().map(|x| x.as_view()),
            out: self.out.as_view_mut(),
            final_states: self.final_states.as_mut().map(|x| x.as_view_mut()),
        }
    }

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
        let len = |x: &Option<CudaSlice<_>>| x.as_ref().map(|x: &CudaSlice<_>| x.len());
        ScanLens {
            u: self.u.len(),
            delta: self.delta.len(),
            a: self.a.len(),
            b: self.b.len(),
            c: self.c.len(),
            d: len(&self.d),
            z: self.z.as_ref().map(|x| x.len()),
            delta_bias: len(&self.delta_bias),
            initial_states: len(&self.initial_states),
            cu_seqlens: self.cu_seqlens.as_ref().map(|x| x.len()),
            out: self.out.len(),
            final_states: len(&self.final_states),
        }
        .check(problem)
    }
}

impl<T> ScanViews<'_, T> {
    fn lens(&self) -> ScanLens {
        ScanLens {
            u: self.u.len(),
            delta: self.delta.len(),
            a: self.a.len(),
            b: self.b.len(),
            c: self.c.len(),
            d: self.d.as_ref().map(|x| x.len()),
            z: self.z.as_ref().map(|x| x.len()),
            delta_bias: self.delta_bias.as_ref().map(|x| x.len()),
            initial_states: self.initial_states.as_ref().map(|x| x.len()),
            cu_seqlens: self.cu_seqlens.as_ref().map(|x| x.len()),
            out: self.out.len(),
            final_states: self.final_states.as_ref().map(|x| x.len()),
        }
    }

    /// Every view must live in `gpu`'s context: a pointer of another context is
    /// not valid in this one.
    fn check_context(&self, gpu: &Gpu) -> Result<()> {
        let own = |name: &'static str, stream: &Arc<CudaStream>| -> Result<()> {
            if stream.context().cu_ctx() == gpu.ctx().cu_ctx() {
                Ok(())
            } else {
                Err(SsmError::Backend(format!(
                    "argument `{name}`: the buffer belongs to another CUDA context than the Gpu launching the scan"
                )))
            }
        };
        own("u", self.u.stream())?;
        own("delta", self.delta.stream())?;
        own("A", self.a.stream())?;
        own("B", self.b.stream())?;
        own("C", self.c.stream())?;
        own("out", self.out.stream())?;
        let opt = [
            ("D", self.d.as_ref().map(|x| x.stream())),
            ("z", self.z.as_ref().map(|x| x.stream())),
            ("delta_bias", self.delta_bias.as_ref().map(|x| x.stream())),
            (
                "initial_states",
                self.initial_states.as_ref().map(|x| x.stream()),
            ),
            ("cu_seqlens", self.cu_seqlens.as_ref().map(|x| x.stream())),
            (
                "final_states",
                self.final_states.as_ref().map(|x| x.stream()),
            ),
        ];
        for (name, stream) in opt {
            if let Some(stream) = stream {
                own(name, stream)?;
            }
        }
        Ok(())
    }
}

/// The element counts of a launch's buffers, checked against the problem in
/// one place whichever way the buffers came (owned or views).
struct ScanLens {
    u: usize,
    delta: usize,
    a: usize,
    b: usize,
    c: usize,
    d: Option<usize>,
    z: Option<usize>,
    delta_bias: Option<usize>,
    initial_states: Option<usize>,
    cu_seqlens: Option<usize>,
    out: usize,
    final_states: Option<usize>,
}

impl ScanLens {
    fn check(&self, problem: &ScanProblem) -> Result<()> {
        let io = problem.io_len();
        let channels = problem.dims.d_inner;
        let n = problem.dims.d_state;
        expect_len("u", self.u, io)?;
        expect_len("delta", self.delta, io)?;
        expect_len("A", self.a, channels * n)?;
        expect_len("B", self.b, problem.bc_len(problem.b_groups))?;
        expect_len("C", self.c, problem.bc_len(problem.c_groups))?;
        expect_len("out", self.out, io)?;
        expect_opt("D", self.d, problem.has_d, channels)?;
        expect_opt("z", self.z, problem.has_z, io)?;
        expect_opt(
            "delta_bias",
            self.delta_bias,
            problem.has_delta_bias,
            channels,
        )?;
        expect_opt(
            "initial_states",
            self.initial_states,
            problem.has_initial_states,
            problem.state_len(),
        )?;
        expect_opt(
            "final_states",
            self.final_states,
            problem.return_final_states,
            problem.state_len(),
        )?;
        expect_opt(
            "cu_seqlens",
            self.cu_seqlens,
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

/// Bytes every device view of a launch must be aligned to (the kernels' widest access).
pub const VIEW_ALIGN: usize = 16;

/// `SCAN_STATUS_BAD_CU_SEQLENS` of `kernels/mamba1/scan_fwd.cu` and
/// `scan_bwd.cu`: a block found its device-resident `cu_seqlens` range outside
/// the packed sequence.
const STATUS_BAD_CU_SEQLENS: u32 = 1;

/// The one device word a plan's kernels raise (atomicOr) when they reject
/// device-resident input, and its read-and-clear on the host. Shared by the
/// forward ([`ScanPlan`]) and the backward (`ScanBwdPlan`) plans.
pub(crate) struct DeviceStatus {
    context: ContextId,
    word: CudaSlice<u32>,
}

impl DeviceStatus {
    pub(crate) fn new(gpu: &Gpu) -> Result<Self> {
        Ok(DeviceStatus {
            context: gpu.context_id(),
            word: gpu.stream().alloc_zeros::<u32>(1).map_err(GpuError::from)?,
        })
    }

    /// The word's device address for a launch on `stream`. The kernels only
    /// ever raise its bits, so `&self` is enough: a plan's launches are
    /// ordered on one stream.
    pub(crate) fn device_ptr<'a>(&'a self, stream: &'a Arc<CudaStream>) -> (u64, impl Drop + 'a) {
        self.word.device_ptr(stream)
    }

    /// `Err(CuSeqlens)` (and the word cleared) when some launch since the last
    /// call rejected its offsets. Synchronises the stream.
    pub(crate) fn take(&self, gpu: &Gpu, what: &str, problem: &ScanProblem) -> Result<()> {
        gpu.expect_context(self.context, what)?;
        let word = gpu
            .stream()
            .clone_dtoh(&self.word)
            .map_err(GpuError::from)?;
        if word.first().copied().unwrap_or(0) & STATUS_BAD_CU_SEQLENS == 0 {
            return Ok(());
        }
        let (status, _guard) = self.word.device_ptr(gpu.stream());
        // SAFETY: `status` is this plan's live 4-byte allocation, used on this stream.
        unsafe {
            ssm_gpu::cudarc::driver::result::memset_d8_async(status, 0, 4, gpu.stream().cu_stream())
        }
        .map_err(GpuError::from)?;
        Err(SsmError::CuSeqlens {
            reason: format!(
                "{what}: the device-resident offsets of {} sequences are not a partition of \
                 [0, L = {}) (0 = cu[0] <= cu[1] <= ... <= cu[seqs] = L): the sequences with a \
                 bad range were not computed",
                problem.num_seqs(),
                problem.dims.seqlen
            ),
        })
    }
}

/// A compiled kernel for one problem shape and its launch geometry. Build once,
/// launch many times (benchmarks) on buffers of that shape.
///
/// The plan belongs to the context of the [`Gpu`] that built it (launching it
/// with another is a typed error) and owns the one device word the kernel
/// raises when it rejects device-resident input (`cu_seqlens` that are not a
/// partition of `[0, L)`), read by [`ScanPlan::take_device_error`].
pub struct ScanPlan {
    /// The shapes and options the plan was built for.
    pub problem: ScanProblem,
    /// What the kernel was compiled for.
    pub config: ScanConfig,
    /// The compiled kernel (resources: registers, shared memory, spills).
    pub kernel: Kernel,
    context: ContextId,
    status: DeviceStatus,
    launch: LaunchConfig,
    seg_channels: usize,
    blocks_per_seg: usize,
    blocks_per_seq: usize,
    /// Training plans: the backward's checkpoint slots per (row, channel) and
    /// the checkpoint buffer's length.
    ckpt: Option<CkptLayout>,
}

#[derive(Clone, Copy, Debug)]
struct CkptLayout {
    slots: usize,
    len: usize,
}

impl ScanPlan {
    /// Check `problem`, pick the configuration for `tuning` on `gpu`'s device and
    /// compile the kernel into `gpu`'s context.
    ///
    /// Errors: [`SsmError::Unsupported`] naming the constraint for a shape or
    /// tuning the kernel does not take (including L = 0, which the host-side
    /// `selective_scan_cuda` handles without a launch); compile and load
    /// failures as the runtime reports them.
    pub fn new(gpu: &Gpu, problem: &ScanProblem, tuning: ScanTuning) -> Result<Self> {
        problem.check()?;
        let limits = gpu.limits()?;
        let config = ScanConfig::new(problem, tuning, &limits)?;
        Self::compile(gpu, problem, config, None)
    }

    /// The forward for training with `bwd`: the same scan, also writing the
    /// checkpoints `bwd` reads ([`ScanPlan::launch_training`]), so that a
    /// backward built with `BwdOptions::forward_checkpoints` skips its
    /// checkpoint kernel. Errors as [`ScanPlan::new`]; `Unsupported` for a
    /// `bwd` of another problem and for polynomial exponentials
    /// ([`ScanConfig::with_checkpoints`]).
    pub fn for_training(
        gpu: &Gpu,
        problem: &ScanProblem,
        tuning: ScanTuning,
        bwd: &ScanBwdPlan,
    ) -> Result<Self> {
        problem.check()?;
        if bwd.problem != *problem {
            return Err(unsupported(
                "a training forward for a backward plan of another problem".into(),
            ));
        }
        let limits = gpu.limits()?;
        let config = ScanConfig::new(problem, tuning, &limits)?
            .with_checkpoints(problem, bwd.config.tile)?;
        let (slots, len) = bwd.ckpt_layout();
        Self::compile(gpu, problem, config, Some(CkptLayout { slots, len }))
    }

    fn compile(
        gpu: &Gpu,
        problem: &ScanProblem,
        config: ScanConfig,
        ckpt: Option<CkptLayout>,
    ) -> Result<Self> {
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
        let status = DeviceStatus::new(gpu)?;
        Ok(ScanPlan {
            problem: *problem,
            config,
            kernel,
            context: gpu.context_id(),
            status,
            launch: LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (config.threads as u32, 1, 1),
                shared_mem_bytes: smem as u32,
            },
            seg_channels,
            blocks_per_seg,
            blocks_per_seq,
            ckpt,
        })
    }

    /// Number of blocks of a launch.
    pub fn blocks(&self) -> u32 {
        self.launch.grid_dim.0
    }

    /// Read and clear what the kernel reported about device-resident input
    /// since the last call: `Err(CuSeqlens)` when some launch met offsets that
    /// are not `0 = cu[0] <= cu[1] <= ... <= cu[seqs] = L`; the sequences with
    /// a bad range were not computed (their outputs keep what they held) and
    /// nothing was read or written out of bounds. Synchronises the stream, so
    /// call it where the caller syncs anyway (the host entry points do, after
    /// each launch); [`ScanPlan::launch`] itself never waits.
    pub fn take_device_error(&self, gpu: &Gpu) -> Result<()> {
        gpu.expect_context(self.context, "the scan plan")?;
        self.status.take(gpu, "the scan forward", &self.problem)
    }

    /// Enqueue one scan on the GPU's stream (asynchronous: no allocation and
    /// no synchronisation; device-resident `cu_seqlens` are checked by the
    /// kernel, see [`ScanPlan::take_device_error`]).
    pub fn launch<T: DeviceElement>(&self, gpu: &Gpu, bufs: &mut ScanBuffers<T>) -> Result<()> {
        self.launch_views(gpu, bufs.views())
    }

    /// [`ScanPlan::launch`] on views into the caller's memory: every view's
    /// length is checked against the plan's problem and its context against
    /// `gpu`'s, then one kernel is enqueued on `gpu`'s stream.
    pub fn launch_views<T: DeviceElement>(&self, gpu: &Gpu, views: ScanViews<'_, T>) -> Result<()> {
        self.launch_inner(gpu, views, 0)
    }

    /// [`ScanPlan::launch`] of a training plan ([`ScanPlan::for_training`]):
    /// also writes the backward's checkpoints into `ws` (a workspace of the
    /// backward plan this one was built for) and marks them as written, for a
    /// backward with `BwdOptions::forward_checkpoints`. The checkpoints belong
    /// to these inputs: the backward must run on the same buffers.
    pub fn launch_training<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        bufs: &mut ScanBuffers<T>,
        ws: &mut ScanBwdWorkspace,
    ) -> Result<()> {
        self.launch_views_training(gpu, bufs.views(), ws)
    }

    /// [`ScanPlan::launch_training`] on views into the caller's memory.
    pub fn launch_views_training<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        views: ScanViews<'_, T>,
        ws: &mut ScanBwdWorkspace,
    ) -> Result<()> {
        let Some(layout) = self.ckpt else {
            return Err(unsupported(format!(
                "a training launch of a plan built without checkpoints ({}): use \
                 ScanPlan::for_training",
                self.config.label()
            )));
        };
        expect_len("checkpoints", ws.ckpt.len(), layout.len)?;
        if ws.ckpt.stream().context().cu_ctx() != gpu.ctx().cu_ctx() {
            return Err(SsmError::Backend(
                "argument `ws`: the workspace belongs to another CUDA context than the Gpu \
                 launching the scan"
                    .into(),
            ));
        }
        let (ckpt, _guard) = ws.ckpt.device_ptr_mut(gpu.stream());
        self.launch_inner(gpu, views, ckpt)?;
        ws.forward_checkpoints = true;
        Ok(())
    }

    /// One launch; `ckpt` is the checkpoint buffer of a training launch (its
    /// length checked by the caller) or 0.
    fn launch_inner<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        views: ScanViews<'_, T>,
        ckpt: u64,
    ) -> Result<()> {
        gpu.expect_context(self.context, "the scan plan")?;
        if T::DTYPE != self.problem.dtype {
            return Err(unsupported(format!(
                "{} buffers with a plan compiled for {}",
                T::DTYPE,
                self.problem.dtype
            )));
        }
        views.lens().check(&self.problem)?;
        views.check_context(gpu)?;
        let stream = gpu.stream();
        // The guards record the buffers' use on the stream when dropped, after the launch.
        let (u, _g0) = views.u.device_ptr(stream);
        let (delta, _g1) = views.delta.device_ptr(stream);
        let (a, _g2) = views.a.device_ptr(stream);
        let (b, _g3) = views.b.device_ptr(stream);
        let (c, _g4) = views.c.device_ptr(stream);
        let (d, _g5) = opt_view_ptr(&views.d, stream);
        let (z, _g6) = opt_view_ptr(&views.z, stream);
        let (delta_bias, _g7) = opt_view_ptr(&views.delta_bias, stream);
        let (initial_states, _g8) = opt_view_ptr(&views.initial_states, stream);
        let (cu_seqlens, _g9) = opt_view_ptr(&views.cu_seqlens, stream);
        let mut out_view = views.out;
        let (out, _g10) = out_view.device_ptr_mut(stream);
        let mut final_view = views.final_states;
        let (final_states, _g11) = match final_view.as_mut() {
            Some(v) => {
                let (p, g) = v.device_ptr_mut(stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        // The kernel's 16-byte row accesses assume 16-byte-aligned bases
        // (views with offsets need not be; the H200 faulted on one that was not).
        for (name, p) in [
            ("u", u),
            ("delta", delta),
            ("A", a),
            ("B", b),
            ("C", c),
            ("D", d),
            ("z", z),
            ("delta_bias", delta_bias),
            ("initial_states", initial_states),
            ("cu_seqlens", cu_seqlens),
            ("out", out),
            ("final_states", final_states),
        ] {
            if p != 0 {
                ssm_gpu::decode::check_aligned(name, p, VIEW_ALIGN)?;
            }
        }
        let (status, _g12) = self.status.device_ptr(stream);
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
            status,
            d_inner: dims.d_inner as i64,
            seqlen: dims.seqlen as i64,
            groups_b: self.problem.b_groups.unwrap_or(1) as i64,
            groups_c: self.problem.c_groups.unwrap_or(1) as i64,
            seg_channels: self.seg_channels as i64,
            blocks_per_seg: self.blocks_per_seg as i64,
            blocks_per_seq: self.blocks_per_seq as i64,
            ckpt,
            ckpt_slots: self.ckpt.map_or(0, |c| c.slots) as i64,
        };
        let mut builder = stream.launch_builder(&self.kernel.func);
        builder.arg(&args);
        // SAFETY: `args` matches the kernel's `ScanArgs` field for field; every
        // pointer covers the length `check` verified against the problem the
        // kernel was compiled and sized for (a training launch's `ckpt` the
        // length of its backward's checkpoints, whose slots the kernel's are:
        // see `ScanBwdPlan::ckpt_layout`), and all buffers outlive the launch
        // (their guards are alive until after it is enqueued, and cudarc orders
        // frees after the stream's pending work).
        unsafe { builder.launch(self.launch) }
            .map_err(|e| SsmError::Backend(format!("launching {}: {e:?}", self.config.label())))?;
        Ok(())
    }
}

pub(crate) type PtrGuard<'a> = Option<SyncOnDrop<'a>>;

fn opt_view_ptr<'a, U>(
    view: &'a Option<CudaView<'_, U>>,
    stream: &'a CudaStream,
) -> (u64, PtrGuard<'a>) {
    match view {
        Some(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, Some(g))
        }
        None => (0, None),
    }
}

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
