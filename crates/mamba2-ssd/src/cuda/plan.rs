//! Device-resident forward pass: a plan (compiled kernels, work table, workspace)
//! and launches on buffers that stay on the GPU (benchmarks, and callers that keep
//! their tensors there).

use ssm_core::mamba2::{check_dt_limit, DSkip, SsdDims, SsdParams};
use ssm_core::shape::{check_allocatable, check_cu_seqlens, Shape};
use ssm_core::{DType, Result, SsmError};
use ssm_gpu::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};
use ssm_gpu::{ContextId, DeviceElement, DeviceLimits, Gpu, Kernel};

use super::config::{unsupported, CudaOptions, KernelConfig, SsdFeatures};
use super::work::{self, WorkTable};

/// Inputs of a forward pass on the device (layouts as in `SsdParams`).
pub struct SsdDeviceInputs<T> {
    /// `(b, L, H, P)`.
    pub x: CudaSlice<T>,
    /// `(b, L, H)`, before bias, softplus and clamp.
    pub dt: CudaSlice<T>,
    /// `(H)`.
    pub a: CudaSlice<f32>,
    /// `(b, L, G, N)`.
    pub b: CudaSlice<T>,
    /// `(b, L, G, N)`.
    pub c: CudaSlice<T>,
    /// `(H)`.
    pub dt_bias: Option<CudaSlice<f32>>,
    /// `(H)` or `(H, P)`, as the plan's features say.
    pub d: Option<CudaSlice<f32>>,
    /// `(b, L, H, P)`: the output gate.
    pub z: Option<CudaSlice<T>>,
    /// `(b or num_seqs, H, P, N)`.
    pub initial_states: Option<CudaSlice<f32>>,
}

impl<T: DeviceElement> SsdDeviceInputs<T> {
    /// Copy the inputs of `p` to the device.
    pub fn upload(gpu: &Gpu, p: &SsdParams<'_, T>) -> Result<Self> {
        let opt = |v: Option<&[f32]>| v.map(|s| gpu.upload(s)).transpose();
        Ok(SsdDeviceInputs {
            x: gpu.upload(p.x)?,
            dt: gpu.upload(p.dt)?,
            a: gpu.upload(p.a)?,
            b: gpu.upload(p.b)?,
            c: gpu.upload(p.c)?,
            dt_bias: opt(p.dt_bias)?,
            d: opt(p.d.as_ref().map(DSkip::data))?,
            z: p.z.map(|z| gpu.upload(z)).transpose()?,
            initial_states: opt(p.initial_states)?,
        })
    }
}

/// Outputs of a forward pass on the device.
pub struct SsdDeviceOutputs<T> {
    /// `(b, L, H, P)`.
    pub out: CudaSlice<T>,
    /// `(b or num_seqs, H, P, N)` when the plan returns final states.
    pub final_states: Option<CudaSlice<f32>>,
}

impl<T> SsdDeviceInputs<T> {
    /// Views of every input, for [`SsdPlan::launch_views`].
    pub fn views(&self) -> SsdInputViews<'_, T> {
        SsdInputViews {
            x: self.x.as_view(),
            dt: self.dt.as_view(),
            a: self.a.as_view(),
            b: self.b.as_view(),
            c: self.c.as_view(),
            dt_bias: self.dt_bias.as_ref().map(CudaSlice::as_view),
            d: self.d.as_ref().map(CudaSlice::as_view),
            z: self.z.as_ref().map(CudaSlice::as_view),
            initial_states: self.initial_states.as_ref().map(CudaSlice::as_view),
        }
    }
}

impl<T> SsdDeviceOutputs<T> {
    /// Views of the outputs, for [`SsdPlan::launch_views`].
    pub fn views(&mut self) -> SsdOutputViews<'_, T> {
        SsdOutputViews {
            out: self.out.as_view_mut(),
            final_states: self.final_states.as_mut().map(CudaSlice::as_view_mut),
        }
    }
}

/// The inputs of a forward pass as views into the caller's device memory (any
/// offset into a larger allocation; each view one contiguous range in the
/// layout of [`SsdDeviceInputs`]), so that upstream code launches without copies.
pub struct SsdInputViews<'a, T> {
    /// `(b, L, H, P)`.
    pub x: CudaView<'a, T>,
    /// `(b, L, H)`, before bias, softplus and clamp.
    pub dt: CudaView<'a, T>,
    /// `(H)`.
    pub a: CudaView<'a, f32>,
    /// `(b, L, G, N)`.
    pub b: CudaView<'a, T>,
    /// `(b, L, G, N)`.
    pub c: CudaView<'a, T>,
    /// `(H)`.
    pub dt_bias: Option<CudaView<'a, f32>>,
    /// `(H)` or `(H, P)`, as the plan's features say.
    pub d: Option<CudaView<'a, f32>>,
    /// `(b, L, H, P)`: the output gate.
    pub z: Option<CudaView<'a, T>>,
    /// `(b or num_seqs, H, P, N)`.
    pub initial_states: Option<CudaView<'a, f32>>,
}

/// The outputs of a forward pass as views into the caller's device memory.
pub struct SsdOutputViews<'a, T> {
    /// `(b, L, H, P)`.
    pub out: CudaViewMut<'a, T>,
    /// `(b or num_seqs, H, P, N)`, present iff the plan returns final states.
    pub final_states: Option<CudaViewMut<'a, f32>>,
}

/// `struct SsdArgs` of `kernels/mamba2/ssd_common.cuh`, field for field:
/// fifteen device addresses (0 for an absent tensor), then `H`, `G` and the
/// dt clamp. Both sides assert its size.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SsdArgs {
    x: u64,
    dt: u64,
    a: u64,
    b: u64,
    c: u64,
    dt_bias: u64,
    d: u64,
    z: u64,
    s0: u64,
    out: u64,
    final_states: u64,
    ws_states: u64,
    ws_decay: u64,
    cbw: u64,
    items: u64,
    heads: i32,
    groups: i32,
    dt_min: f32,
    dt_max: f32,
}

const _: () = assert!(std::mem::size_of::<SsdArgs>() == 136);

// SAFETY: plain data with the C layout the kernel declares (asserted above and there).
unsafe impl DeviceRepr for SsdArgs {}

type PtrGuard<'a> = Option<SyncOnDrop<'a>>;

fn opt_ptr<'a, U>(
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

/// Threads per block of the C·Bᵀ pre-kernel (`kernels/mamba2/ssd_chunk_cb.cu`).
pub const CHUNK_CB_THREADS: u32 = 128;

/// Bytes every device view of [`SsdPlan::launch_views`] must be aligned to (the
/// kernels' widest access).
pub const VIEW_ALIGN: usize = 16;

/// Compiled kernels, the work table on the device and the segment workspace for
/// one problem shape and option set.
pub struct SsdPlan {
    /// The context the kernels were loaded into and the workspaces live in.
    context: ContextId,
    config: KernelConfig,
    dims: SsdDims,
    dt_limit: (f32, f32),
    table: WorkTable,
    main: Kernel,
    prepass: Option<Kernel>,
    /// The C B^T pre-kernel with its chunk table and workspace, when the fused
    /// kernel reads precomputed tiles.
    chunk_cb: Option<ChunkCb>,
    items: CudaSlice<i64>,
    prepass_items: Option<CudaSlice<i64>>,
    ws_states: CudaSlice<f32>,
    ws_decay: CudaSlice<f32>,
}

struct ChunkCb {
    kernel: Kernel,
    chunks: CudaSlice<i64>,
    workspace: CudaSlice<f32>,
}

/// Copy the work table (i64, which is no `DeviceElement`) to the device.
fn upload_i64(gpu: &Gpu, host: &[i64]) -> Result<CudaSlice<i64>> {
    gpu.stream()
        .clone_htod(host)
        .map_err(|e| SsmError::Backend(format!("uploading the work table: {e:?}")))
}

/// What [`SsdParams::validate`] checks of the shapes, for plans made without data.
pub(super) fn check_shapes(
    dims: &SsdDims,
    dt_limit: (f32, f32),
    cu_seqlens: Option<&[i64]>,
) -> Result<()> {
    dims.check()?;
    check_dt_limit(dt_limit)?;
    let seqs = match cu_seqlens {
        Some(cu) => check_cu_seqlens(cu, dims.batch, dims.seqlen)?,
        None => dims.batch,
    };
    check_allocatable("x", Shape(&dims.x_shape()))?;
    check_allocatable("B", Shape(&dims.bc_shape()))?;
    let states = [
        ("seqs", seqs),
        ("H", dims.heads),
        ("P", dims.head_dim),
        ("N", dims.d_state),
    ];
    check_allocatable("final_states", Shape(&states))?;
    Ok(())
}

/// Resident blocks per SM for a kernel, from its registers, threads and shared
/// memory on a device with `limits`.
fn blocks_per_sm(limits: &DeviceLimits, kernel: &Kernel, threads: u32, smem: usize) -> usize {
    limits.blocks_per_sm(kernel.resources.registers, threads, smem)
}

impl SsdPlan {
    /// Plan the call described by `p` (its sizes, options and `cu_seqlens`; the
    /// tensor contents are not read).
    pub fn new<T: DeviceElement>(
        gpu: &Gpu,
        p: &SsdParams<'_, T>,
        opts: &CudaOptions,
    ) -> Result<Self> {
        p.validate()?;
        Self::for_shapes(
            gpu,
            T::DTYPE,
            p.dims,
            SsdFeatures::of(p),
            p.dt_limit,
            p.cu_seqlens,
            opts,
        )
    }

    /// Plan from shapes and options alone, before any tensor exists (upstream
    /// code plans once per shape and launches on its own buffers through
    /// [`SsdPlan::launch_views`]). Varlen offsets are host data here: the work
    /// table (which chunks of which sequence each block owns) is built from
    /// them and is the only thing the kernels index with, so device memory is
    /// never addressed through unchecked offsets.
    pub fn for_shapes(
        gpu: &Gpu,
        dtype: DType,
        dims: SsdDims,
        features: SsdFeatures,
        dt_limit: (f32, f32),
        cu_seqlens: Option<&[i64]>,
        opts: &CudaOptions,
    ) -> Result<Self> {
        check_shapes(&dims, dt_limit, cu_seqlens)?;
        let limits = gpu.limits()?;
        let config = KernelConfig::select(dtype, &dims, features, opts, &limits)?;
        let p_cu_seqlens = cu_seqlens;

        let load = |state_only: bool| -> Result<Kernel> {
            let mut k = gpu.kernel_variant(&config.variant(state_only))?;
            k.set_max_dynamic_smem(config.smem_bytes(state_only) as u32)?;
            Ok(k)
        };
        let main = load(false)?;
        let seqs = work::sequences(dims.batch, dims.seqlen, p_cu_seqlens);
        let per_item = dims.heads * config.p_tiles();
        let max_segments = match opts.segmentation {
            super::Segmentation::AtMost(n) => n.max(1),
            super::Segmentation::Auto => {
                let slots = limits.sm_count as usize
                    * blocks_per_sm(&limits, &main, config.threads(), config.smem_bytes(false));
                work::auto_segments(seqs.len() * per_item, slots)
            }
        };
        let table = work::build(&seqs, config.chunk, max_segments);
        for n in [table.num_items(), table.num_prepass()] {
            if n.checked_mul(per_item)
                .is_none_or(|b| b > i32::MAX as usize)
            {
                return Err(SsmError::Dimension {
                    arg: "cu_seqlens",
                    reason: format!(
                        "{n} work items x {per_item} blocks each exceed the grid limit of 2^31 - 1"
                    ),
                });
            }
        }
        let prepass = if table.num_prepass() > 0 {
            Some(load(true)?)
        } else {
            None
        };
        let chunk_cb = if config.uses_chunk_cb() && table.num_chunks() > 0 {
            let mut kernel = gpu.kernel_variant(&config.chunk_cb_variant())?;
            kernel.set_max_dynamic_smem(config.chunk_cb_smem_bytes() as u32)?;
            let blocks = table.num_chunks() * dims.groups;
            if blocks > i32::MAX as usize {
                return Err(SsmError::Dimension {
                    arg: "seqlen",
                    reason: format!("{blocks} (chunk, group) blocks exceed the grid limit"),
                });
            }
            let len = blocks * config.cb_floats_per_chunk();
            Some(ChunkCb {
                kernel,
                chunks: upload_i64(gpu, &table.chunks)?,
                workspace: gpu.alloc_poisoned::<f32>(len)?,
            })
        } else {
            None
        };
        let ws_len = table.slots.max(1) * dims.heads * dims.head_dim * dims.d_state;
        Ok(SsdPlan {
            context: gpu.context_id(),
            items: upload_i64(gpu, &table.items)?,
            prepass_items: if table.prepass.is_empty() {
                None
            } else {
                Some(upload_i64(gpu, &table.prepass)?)
            },
            ws_states: gpu.alloc_poisoned::<f32>(ws_len)?,
            ws_decay: gpu.alloc_poisoned::<f32>(table.slots.max(1) * dims.heads)?,
            config,
            dims,
            dt_limit,
            table,
            main,
            prepass,
            chunk_cb,
        })
    }

    /// The kernel configuration the plan compiled.
    pub fn config(&self) -> &KernelConfig {
        &self.config
    }
    /// The work-item table the plan uploaded (which tokens each block walks).
    pub fn table(&self) -> &WorkTable {
        &self.table
    }
    /// The main kernel (resources: registers, shared memory, spills).
    pub fn main_kernel(&self) -> &Kernel {
        &self.main
    }
    /// The state-only prepass kernel, when some sequence is split into segments.
    pub fn prepass_kernel(&self) -> Option<&Kernel> {
        self.prepass.as_ref()
    }
    /// The C B^T pre-kernel, when the fused kernel reads shared C B^T tiles.
    pub fn chunk_cb_kernel(&self) -> Option<&Kernel> {
        self.chunk_cb.as_ref().map(|c| &c.kernel)
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} regs, {} B smem, {} items{}{}, {} threads)",
            self.config.label(false),
            self.main.resources.registers,
            self.config.smem_bytes(false),
            self.table.num_items(),
            if self.table.num_prepass() > 0 {
                format!(" + {} prepass", self.table.num_prepass())
            } else {
                String::new()
            },
            if self.chunk_cb.is_some() {
                format!(" + C B^T of {} chunks", self.table.num_chunks())
            } else {
                String::new()
            },
            self.config.threads()
        )
    }

    /// Allocate outputs for this plan, poisoned (NaN) so that unwritten elements show.
    pub fn alloc_outputs<T: DeviceElement>(&self, gpu: &Gpu) -> Result<SsdDeviceOutputs<T>> {
        let d = &self.dims;
        let out = gpu.alloc_poisoned::<T>(d.batch * d.seqlen * d.heads * d.head_dim)?;
        let final_states = if self.config.features.final_states {
            Some(gpu.alloc_poisoned::<f32>(self.table.num_seqs * d.heads * d.head_dim * d.d_state)?)
        } else {
            None
        };
        Ok(SsdDeviceOutputs { out, final_states })
    }

    fn check_inputs<T>(
        &self,
        gpu: &Gpu,
        inp: &SsdInputViews<'_, T>,
        out: &SsdOutputViews<'_, T>,
    ) -> Result<()> {
        let d = &self.dims;
        let f = &self.config.features;
        let tokens = d.batch * d.seqlen;
        let state_len = self.table.num_seqs * d.heads * d.head_dim * d.d_state;
        let d_len = match f.d {
            super::DMode::None => 0,
            super::DMode::PerHead => d.heads,
            super::DMode::PerHeadDim => d.heads * d.head_dim,
        };
        let check = |arg: &'static str, got: Option<usize>, want: Option<usize>| -> Result<()> {
            if got == want {
                return Ok(());
            }
            Err(SsmError::Dimension {
                arg,
                reason: format!(
                    "device buffer has {} elements, the plan expects {}",
                    got.map_or("none".into(), |g| g.to_string()),
                    want.map_or("none".into(), |w| w.to_string())
                ),
            })
        };
        let len = |s: &CudaView<'_, T>| Some(s.len());
        let len32 = |s: &CudaView<'_, f32>| Some(s.len());
        check("x", len(&inp.x), Some(tokens * d.heads * d.head_dim))?;
        check("dt", len(&inp.dt), Some(tokens * d.heads))?;
        check("A", len32(&inp.a), Some(d.heads))?;
        check("B", len(&inp.b), Some(tokens * d.groups * d.d_state))?;
        check("C", len(&inp.c), Some(tokens * d.groups * d.d_state))?;
        check(
            "dt_bias",
            inp.dt_bias.as_ref().map(CudaView::len),
            f.dt_bias.then_some(d.heads),
        )?;
        check(
            "D",
            inp.d.as_ref().map(CudaView::len),
            (d_len > 0).then_some(d_len),
        )?;
        check(
            "z",
            inp.z.as_ref().map(CudaView::len),
            f.z.then_some(tokens * d.heads * d.head_dim),
        )?;
        check(
            "initial_states",
            inp.initial_states.as_ref().map(CudaView::len),
            f.initial_states.then_some(state_len),
        )?;
        check(
            "out",
            Some(out.out.len()),
            Some(tokens * d.heads * d.head_dim),
        )?;
        check(
            "final_states",
            out.final_states.as_ref().map(CudaViewMut::len),
            f.final_states.then_some(state_len),
        )?;
        // Every view must live in the plan's context.
        let own = |arg: &'static str, stream: Option<&std::sync::Arc<CudaStream>>| -> Result<()> {
            match stream {
                Some(s) if s.context().cu_ctx() != gpu.ctx().cu_ctx() => Err(SsmError::Backend(
                    format!("argument `{arg}`: the buffer belongs to another CUDA context than the Gpu launching the SSD"),
                )),
                _ => Ok(()),
            }
        };
        own("x", Some(inp.x.stream()))?;
        own("dt", Some(inp.dt.stream()))?;
        own("A", Some(inp.a.stream()))?;
        own("B", Some(inp.b.stream()))?;
        own("C", Some(inp.c.stream()))?;
        own("dt_bias", inp.dt_bias.as_ref().map(|v| v.stream()))?;
        own("D", inp.d.as_ref().map(|v| v.stream()))?;
        own("z", inp.z.as_ref().map(|v| v.stream()))?;
        own(
            "initial_states",
            inp.initial_states.as_ref().map(|v| v.stream()),
        )?;
        own("out", Some(out.out.stream()))?;
        own(
            "final_states",
            out.final_states.as_ref().map(|v| v.stream()),
        )?;
        Ok(())
    }

    /// Enqueue the forward pass (prepass, when sequences are split, then the main
    /// kernel) on the GPU's stream. Does not synchronize or allocate.
    pub fn launch<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        inp: &SsdDeviceInputs<T>,
        out: &mut SsdDeviceOutputs<T>,
    ) -> Result<()> {
        self.launch_views(gpu, &inp.views(), out.views())
    }

    /// [`SsdPlan::launch`] on views into the caller's memory: lengths are
    /// checked against the plan, contexts against `gpu`'s, then the kernels are
    /// enqueued on `gpu`'s stream.
    pub fn launch_views<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        inp: &SsdInputViews<'_, T>,
        mut out: SsdOutputViews<'_, T>,
    ) -> Result<()> {
        gpu.expect_context(self.context, "the SSD plan")?;
        if T::DTYPE != self.config.dtype {
            return Err(unsupported(format!(
                "{} buffers with a plan made for {}",
                T::DTYPE,
                self.config.dtype
            )));
        }
        self.check_inputs(gpu, inp, &out)?;
        check_view_alignment(gpu, inp, &mut out)?;
        if let Some(cb) = &self.chunk_cb {
            self.launch_chunk_cb(gpu, cb, inp)?;
        }
        if let (Some(k), Some(items)) = (&self.prepass, &self.prepass_items) {
            self.launch_one(gpu, k, true, items, self.table.num_prepass(), inp, &mut out)?;
        }
        self.launch_one(
            gpu,
            &self.main,
            false,
            &self.items,
            self.table.num_items(),
            inp,
            &mut out,
        )
    }

    fn launch_chunk_cb<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        cb: &ChunkCb,
        inp: &SsdInputViews<'_, T>,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: ((self.table.num_chunks() * self.dims.groups) as u32, 1, 1),
            block_dim: (CHUNK_CB_THREADS, 1, 1),
            shared_mem_bytes: self.config.chunk_cb_smem_bytes() as u32,
        };
        let groups = self.dims.groups as i32;
        let mut b = gpu.stream().launch_builder(&cb.kernel.func);
        b.arg(&inp.b)
            .arg(&inp.c)
            .arg(&cb.chunks)
            .arg(&cb.workspace)
            .arg(&groups);
        // SAFETY: matches `ssd_chunk_cb(B, C, chunks, cb, G)`; the chunk table names
        // tokens inside the checked B and C buffers, and the workspace holds
        // (chunks x G) blocks of `cb_floats_per_chunk` floats, one per launch block.
        unsafe { b.launch(cfg) }
            .map_err(|e| SsmError::Backend(format!("{}: {e:?}", cb.kernel.name)))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_one<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        kernel: &Kernel,
        state_only: bool,
        items: &CudaSlice<i64>,
        num_items: usize,
        inp: &SsdInputViews<'_, T>,
        out: &mut SsdOutputViews<'_, T>,
    ) -> Result<()> {
        let blocks = num_items * self.dims.heads * self.config.p_tiles();
        if blocks == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (self.config.threads(), 1, 1),
            shared_mem_bytes: self.config.smem_bytes(state_only) as u32,
        };
        let stream = gpu.stream();
        // The guards record the buffers' use on the stream when dropped, after the launch.
        let (x, _g0) = inp.x.device_ptr(stream);
        let (dt, _g1) = inp.dt.device_ptr(stream);
        let (a, _g2) = inp.a.device_ptr(stream);
        let (b, _g3) = inp.b.device_ptr(stream);
        let (c, _g4) = inp.c.device_ptr(stream);
        let (dt_bias, _g5) = opt_ptr(&inp.dt_bias, stream);
        let (d, _g6) = opt_ptr(&inp.d, stream);
        let (z, _g7) = opt_ptr(&inp.z, stream);
        let (s0, _g8) = opt_ptr(&inp.initial_states, stream);
        let (out_ptr, _g9) = out.out.device_ptr_mut(stream);
        let (final_states, _g10) = match out.final_states.as_mut() {
            Some(v) => {
                let (p, g) = v.device_ptr_mut(stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (ws_states, _g11) = self.ws_states.device_ptr(stream);
        let (ws_decay, _g12) = self.ws_decay.device_ptr(stream);
        let (cbw, _g13) = match &self.chunk_cb {
            Some(cb) => {
                let (p, g) = cb.workspace.device_ptr(stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (items, _g14) = items.device_ptr(stream);
        let (dt_min, dt_max) = self.dt_limit;
        let args = SsdArgs {
            x,
            dt,
            a,
            b,
            c,
            dt_bias,
            d,
            z,
            s0,
            out: out_ptr,
            final_states,
            ws_states,
            ws_decay,
            cbw,
            items,
            heads: self.dims.heads as i32,
            groups: self.dims.groups as i32,
            dt_min,
            dt_max,
        };
        let mut builder = stream.launch_builder(&kernel.func);
        builder.arg(&args);
        // SAFETY: `args` matches the kernels' `SsdArgs` (size asserted on both
        // sides); every buffer's length was checked against the plan's shape
        // (check_inputs), the work table only names tokens inside [0, b * L) and
        // sequences inside the state buffers, the workspaces are the plan's own
        // (written by the prepass and read by the main kernel, in stream order),
        // and absent tensors are null pointers that the kernel, compiled without
        // those options, never reads.
        unsafe { builder.launch(cfg) }
            .map_err(|e| SsmError::Backend(format!("{}: {e:?}", kernel.name)))?;
        Ok(())
    }
}

/// Every view's base must be [`VIEW_ALIGN`]-byte aligned: the kernels' 16-byte
/// loads and stores take their alignment from the base pointers (owned buffers
/// always are; views with offsets need not be, and the H200 faulted on one that
/// was not). Checked before anything is enqueued.
fn check_view_alignment<T: DeviceElement>(
    gpu: &Gpu,
    inp: &SsdInputViews<'_, T>,
    out: &mut SsdOutputViews<'_, T>,
) -> Result<()> {
    let stream = gpu.stream();
    let check = |name: &'static str, p: u64| -> Result<()> {
        if p == 0 {
            return Ok(());
        }
        ssm_gpu::decode::check_aligned(name, p, VIEW_ALIGN)
    };
    check("x", inp.x.device_ptr(stream).0)?;
    check("dt", inp.dt.device_ptr(stream).0)?;
    check("A", inp.a.device_ptr(stream).0)?;
    check("B", inp.b.device_ptr(stream).0)?;
    check("C", inp.c.device_ptr(stream).0)?;
    check("dt_bias", opt_ptr(&inp.dt_bias, stream).0)?;
    check("D", opt_ptr(&inp.d, stream).0)?;
    check("z", opt_ptr(&inp.z, stream).0)?;
    check("initial_states", opt_ptr(&inp.initial_states, stream).0)?;
    check("out", out.out.device_ptr_mut(stream).0)?;
    if let Some(f) = out.final_states.as_mut() {
        check("final_states", f.device_ptr_mut(stream).0)?;
    }
    Ok(())
}
