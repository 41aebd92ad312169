//! CUDA launcher for the Mamba-1 decode step (kernel: `kernels/mamba1/decode.cu`,
//! design notes: `docs/kernels/decode.md`).
//!
//! Two entry points:
//! - [`decode_step_cuda`]: host slices in, host slices out (upload, launch into a
//!   poisoned output buffer, download, state copied back in place). Validates
//!   everything, including `state_batch_indices`.
//! - [`launch_decode_step`]: device-resident buffers, one launch, no copies (for
//!   benchmarks and for callers that keep the state cache on the GPU). Shapes and
//!   alignment are validated; the contents of `state_batch_indices` cannot be checked
//!   without a copy, so the kernel itself refuses to write past the cache (an index
//!   `>= cache_rows` yields a NaN output and no state write).

use std::marker::PhantomData;

use ssm_core::decode::Mamba1StepParams;
use ssm_core::shape::{check_groups, check_len, check_nonzero, Shape};
use ssm_core::{DType, Result, SsmError, StepOutput};
use ssm_gpu::cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};
use ssm_gpu::{kernel_source, DeviceElement, Gpu, Kernel, KernelSource, KernelVariant};

/// The kernel source, embedded at build time.
pub static DECODE_SOURCE: KernelSource = kernel_source!("mamba1/decode.cu");

const IMPLEMENTATION: &str = "mamba1-scan CUDA decode";

/// Tiling knobs of the decode kernel; each set is compiled into its own module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeTiling {
    /// Batch rows each thread updates for its channel slice: `A` is read once for
    /// all of them and their state loads are in flight together. Capped so that a
    /// thread holds at most 32 state floats.
    pub batch_rows: usize,
    /// Warps per block.
    pub warps: usize,
    /// Evict-first cache hints on the state loads and stores.
    pub streaming_hints: bool,
    /// Blocks per SM that ptxas must leave registers for (`__launch_bounds__`'s
    /// second argument); 0 leaves the register count to ptxas. Ignored when a
    /// thread holds more than 16 state floats or N % 4 != 0 (it would spill).
    pub min_blocks_per_sm: usize,
    /// Rows of B and C fetched ahead of their update (0: just before it). With the
    /// register cap, only 16-bit inputs can afford the packed copy of the next row:
    /// f32 inputs fall back to 0 there (ptxas spilled otherwise).
    pub bc_prefetch: usize,
    /// Groups of B and C a block stages in shared memory before its update (0:
    /// none). Replaces `bc_prefetch`; a block whose channels read more groups
    /// fetches them just in time instead.
    pub bc_shared: usize,
}

impl Default for DecodeTiling {
    fn default() -> Self {
        // v3 (docs/kernels/decode.md): 4 rows x 16 B in flight per thread,
        // registers capped at 64 so that 4 blocks (1024 threads) fit per SM, and
        // the next row's B and C fetched while a row is updated.
        DecodeTiling {
            batch_rows: 4,
            warps: 8,
            streaming_hints: false,
            min_blocks_per_sm: 4,
            bc_prefetch: 1,
            bc_shared: 0,
        }
    }
}

impl DecodeTiling {
    /// The tiling the crate launches for inputs of `dtype` (docs/kernels/decode.md,
    /// v4): f32 inputs stage B and C in shared memory (their prefetched copy does
    /// not fit the register cap: 79.3 -> 69.9 us at b = 256 on the H100); 16-bit
    /// inputs prefetch them into registers (66.6 us, staged 67.1 us).
    pub fn for_dtype(dtype: DType) -> Self {
        let base = DecodeTiling::default();
        match dtype {
            DType::F32 | DType::F64 => DecodeTiling {
                bc_prefetch: 0,
                bc_shared: 2,
                ..base
            },
            DType::F16 | DType::Bf16 => base,
        }
    }
}

/// How the `N` f32 states of one channel are spread over the lanes of a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Floats per vector access: 4, 2 or 1 (the largest dividing `N`).
    pub vec: usize,
    /// Lanes sharing one channel: the largest power of two (at most 32) dividing `N / vec`.
    pub threads_per_channel: usize,
}

impl ChannelLayout {
    pub fn for_state(d_state: usize) -> Self {
        let vec = [4, 2, 1]
            .into_iter()
            .find(|v| d_state % v == 0)
            .unwrap_or(1);
        let vectors = d_state / vec;
        let mut threads_per_channel = 1;
        while threads_per_channel < 32 && vectors % (threads_per_channel * 2) == 0 {
            threads_per_channel *= 2;
        }
        ChannelLayout {
            vec,
            threads_per_channel,
        }
    }

    /// State floats one lane holds per channel and batch row.
    pub fn elems_per_thread(&self, d_state: usize) -> usize {
        d_state / self.threads_per_channel
    }
}

impl DecodeTiling {
    /// The tilings `gpu_decode_bench` compares (the GPU tests verify each one):
    /// the default, less and more work in flight per thread, and cache hints.
    pub fn candidates() -> Vec<DecodeTiling> {
        let base = DecodeTiling::default();
        let just_in_time = DecodeTiling {
            bc_prefetch: 0,
            ..base
        };
        vec![
            base,
            // v2: B and C fetched just before each row's update.
            just_in_time,
            DecodeTiling {
                min_blocks_per_sm: 0,
                ..base
            },
            DecodeTiling {
                batch_rows: 2,
                ..base
            },
            DecodeTiling {
                batch_rows: 8,
                min_blocks_per_sm: 2,
                ..base
            },
            DecodeTiling {
                warps: 4,
                min_blocks_per_sm: 7,
                ..base
            },
            DecodeTiling {
                streaming_hints: true,
                ..base
            },
            // v4: B and C staged in shared memory (2 groups: a block's 64
            // channels span at most 2 groups whenever D_in / G >= 64).
            DecodeTiling {
                bc_shared: 2,
                ..base
            },
            DecodeTiling {
                bc_shared: 2,
                min_blocks_per_sm: 0,
                ..base
            },
            DecodeTiling {
                bc_shared: 2,
                warps: 4,
                min_blocks_per_sm: 8,
                ..base
            },
        ]
    }
}

/// Most state floats a thread keeps in registers (batch_rows is capped to fit).
/// B and C are fetched row by row, so the state is what stays live.
const MAX_STATE_REGS: usize = 32;
/// `min_blocks_per_sm` is honoured only up to this many state floats per thread,
/// held as 16-byte vectors: at 16 (N = 16, 4 rows) 64 registers suffice; with
/// scalar layouts (N = 7: 2 rows x 7) ptxas spilled.
const MAX_CAPPED_STATE_REGS: usize = 16;
/// Static shared memory a kernel may declare without opting in to more.
const MAX_STATIC_SHARED_BYTES: usize = 48 * 1024;

/// Everything that decides one compiled form of the kernel and its launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    d_state: usize,
    layout: ChannelLayout,
    batch_rows: usize,
    warps: usize,
    streaming_hints: bool,
    min_blocks_per_sm: usize,
    bc_prefetch: usize,
    bc_shared: usize,
}

impl Geometry {
    /// `elem_bytes`: size of the input element type (B and C are held packed).
    fn new(d_state: usize, elem_bytes: usize, tiling: DecodeTiling) -> Result<Self> {
        check_nonzero("d_state", d_state)?;
        check_nonzero("batch_rows", tiling.batch_rows)?;
        if !(1..=32).contains(&tiling.warps) {
            return Err(SsmError::Dimension {
                arg: "warps",
                reason: format!("{} warps per block; expected 1 to 32", tiling.warps),
            });
        }
        // An SM holds at most 2048 threads; asking ptxas for room for more blocks
        // than fit would only make it fail.
        if tiling.min_blocks_per_sm * tiling.warps * 32 > 2048 {
            return Err(SsmError::Dimension {
                arg: "min_blocks_per_sm",
                reason: format!(
                    "{} blocks of {} threads do not fit in one SM (2048 threads)",
                    tiling.min_blocks_per_sm,
                    tiling.warps * 32
                ),
            });
        }
        let layout = ChannelLayout::for_state(d_state);
        let per_row = layout.elems_per_thread(d_state);
        let batch_rows = tiling.batch_rows.min((MAX_STATE_REGS / per_row).max(1));
        // The register cap is a tuning for the common layouts; with more state per
        // thread (odd N: one lane holds a whole channel) it would only force spills.
        let min_blocks_per_sm = if layout.vec == 4 && batch_rows * per_row <= MAX_CAPPED_STATE_REGS
        {
            tiling.min_blocks_per_sm
        } else {
            0
        };
        // A prefetched row of packed B and C costs 2 x per_row x elem_bytes / 4
        // registers; under the cap only the 16-bit form fits.
        let bc_prefetch = if tiling.bc_shared > 0 || (min_blocks_per_sm > 0 && elem_bytes > 2) {
            0
        } else {
            tiling.bc_prefetch.min(batch_rows)
        };
        let staged_bytes = 2 * batch_rows * tiling.bc_shared * d_state * 4;
        if staged_bytes > MAX_STATIC_SHARED_BYTES {
            return Err(SsmError::Dimension {
                arg: "bc_shared",
                reason: format!(
                    "{} staged groups of B and C for {batch_rows} rows at N = {d_state} take \
                     {staged_bytes} bytes of shared memory; at most {MAX_STATIC_SHARED_BYTES}",
                    tiling.bc_shared
                ),
            });
        }
        Ok(Geometry {
            d_state,
            layout,
            batch_rows,
            warps: tiling.warps,
            streaming_hints: tiling.streaming_hints,
            min_blocks_per_sm,
            bc_prefetch,
            bc_shared: tiling.bc_shared,
        })
    }

    /// The `-D` defines of `kernels/mamba1/decode.cu`.
    fn defines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("D_STATE", self.d_state.to_string()),
            ("VEC", self.layout.vec.to_string()),
            ("TPR", self.layout.threads_per_channel.to_string()),
            ("BROWS", self.batch_rows.to_string()),
            ("WARPS", self.warps.to_string()),
            ("STREAM_STATE", u8::from(self.streaming_hints).to_string()),
            ("MIN_BLOCKS", self.min_blocks_per_sm.max(1).to_string()),
            ("BC_PREFETCH", self.bc_prefetch.to_string()),
            ("BC_SHARED", self.bc_shared.to_string()),
        ]
    }

    /// Channels one block updates (for `batch_rows` batch rows).
    fn channels_per_block(&self) -> usize {
        self.warps * (32 / self.layout.threads_per_channel)
    }

    fn launch_config(&self, batch: usize, d_inner: usize) -> Result<LaunchConfig> {
        let channel_tiles = d_inner.div_ceil(self.channels_per_block());
        let batch_tiles = batch.div_ceil(self.batch_rows);
        let blocks = channel_tiles
            .checked_mul(batch_tiles)
            .filter(|&v| v <= i32::MAX as usize)
            .ok_or_else(|| SsmError::Dimension {
                arg: "batch",
                reason: format!(
                    "{batch_tiles} batch tiles x {channel_tiles} channel tiles is more than 2^31 - 1 blocks"
                ),
            })?;
        Ok(LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (32 * self.warps as u32, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

/// The kernel variant (source, entry, defines) for one element type, `N` and tiling.
pub fn decode_variant(dtype: DType, d_state: usize, tiling: DecodeTiling) -> Result<KernelVariant> {
    let geometry = Geometry::new(d_state, dtype.size_bytes(), tiling)?;
    let mut label = format!("mamba1.decode.{dtype}.n{d_state}");
    if tiling != DecodeTiling::for_dtype(dtype) {
        label.push_str(&format!(
            ".b{}w{}{}",
            geometry.batch_rows,
            geometry.warps,
            if geometry.streaming_hints { "cs" } else { "" }
        ));
        if geometry.min_blocks_per_sm > 0 {
            label.push_str(&format!("m{}", geometry.min_blocks_per_sm));
        }
        label.push_str(&format!("p{}", geometry.bc_prefetch));
        if geometry.bc_shared > 0 {
            label.push_str(&format!("s{}", geometry.bc_shared));
        }
    }
    Ok(KernelVariant::new(
        label,
        DECODE_SOURCE,
        entry_name(dtype)?,
        geometry.defines(),
    ))
}

/// The variants the crate launches by default (Mamba-1 models use N = 16), for the
/// resources/budget command.
pub fn decode_kernel_variants() -> Vec<KernelVariant> {
    [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .map(|dtype| {
            decode_variant(dtype, 16, DecodeTiling::for_dtype(dtype))
                .expect("the default tiling is valid for N = 16")
        })
        .collect()
}

/// The decode kernel compiled for element type `T`, state size `N` and one tiling.
pub struct DecodeKernel<T> {
    kernel: Kernel,
    geometry: Geometry,
    _elem: PhantomData<T>,
}

impl<T: DeviceElement> DecodeKernel<T> {
    /// Compile (through the runtime's cache) and load the kernel.
    pub fn new(gpu: &Gpu, d_state: usize, tiling: DecodeTiling) -> Result<Self> {
        let geometry = Geometry::new(d_state, T::DTYPE.size_bytes(), tiling)?;
        let variant = decode_variant(T::DTYPE, d_state, tiling)?;
        let kernel = gpu.kernel_variant(&variant)?;
        Ok(DecodeKernel {
            kernel,
            geometry,
            _elem: PhantomData,
        })
    }

    /// The loaded kernel (its resource report included).
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    pub fn d_state(&self) -> usize {
        self.geometry.d_state
    }

    /// Channels one block updates.
    pub fn channels_per_block(&self) -> usize {
        self.geometry.channels_per_block()
    }

    /// Batch rows each thread updates after capping (see [`DecodeTiling`]).
    pub fn batch_rows(&self) -> usize {
        self.geometry.batch_rows
    }
}

fn entry_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("mamba1_decode_f32"),
        DType::F16 => Ok("mamba1_decode_f16"),
        DType::Bf16 => Ok("mamba1_decode_bf16"),
        DType::F64 => Err(SsmError::Unsupported {
            implementation: IMPLEMENTATION,
            what: "f64 inputs (use f32, f16 or bf16)".into(),
        }),
    }
}

/// Device-resident inputs of one decode step; shapes as in [`Mamba1StepParams`].
pub struct DeviceStepArgs<'a, T> {
    pub batch: usize,
    pub d_inner: usize,
    pub d_state: usize,
    pub groups: usize,
    pub cache_rows: usize,
    /// `(b, D_in)`
    pub x: CudaView<'a, T>,
    /// `(b, D_in)`
    pub dt: CudaView<'a, T>,
    /// `(D_in, N)`
    pub a: CudaView<'a, f32>,
    /// `(b, G, N)`
    pub b: CudaView<'a, T>,
    /// `(b, G, N)`
    pub c: CudaView<'a, T>,
    /// `(D_in)`
    pub d: Option<CudaView<'a, f32>>,
    /// `(b, D_in)`
    pub z: Option<CudaView<'a, T>>,
    /// `(D_in)`
    pub dt_bias: Option<CudaView<'a, f32>>,
    pub dt_softplus: bool,
    /// `(b)`; negative entries are padding. Contents are not validated here.
    pub state_batch_indices: Option<CudaView<'a, i64>>,
}

impl<T> DeviceStepArgs<'_, T> {
    /// Shapes, options and the pairing with `kernel`, `state` and `out`.
    fn validate(&self, d_state: usize, state_len: usize, out_len: usize) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("d_inner", self.d_inner)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "D_in", self.d_inner)?;
        if self.d_inner > i32::MAX as usize {
            return Err(SsmError::Dimension {
                arg: "d_inner",
                reason: format!(
                    "D_in = {} does not fit the kernel's 32-bit channel index",
                    self.d_inner
                ),
            });
        }
        if self.d_state != d_state {
            return Err(SsmError::Dimension {
                arg: "d_state",
                reason: format!(
                    "the kernel was compiled for N = {d_state}, the arguments have N = {}",
                    self.d_state
                ),
            });
        }
        let bd = Shape(&[("b", self.batch), ("D_in", self.d_inner)]);
        let per_channel = Shape(&[("D_in", self.d_inner)]);
        let bgn = Shape(&[("b", self.batch), ("G", self.groups), ("N", self.d_state)]);
        check_len("x", bd, self.x.len())?;
        check_len("dt", bd, self.dt.len())?;
        check_len(
            "A",
            Shape(&[("D_in", self.d_inner), ("N", self.d_state)]),
            self.a.len(),
        )?;
        check_len("B", bgn, self.b.len())?;
        check_len("C", bgn, self.c.len())?;
        if let Some(d) = &self.d {
            check_len("D", per_channel, d.len())?;
        }
        if let Some(z) = &self.z {
            check_len("z", bd, z.len())?;
        }
        if let Some(bias) = &self.dt_bias {
            check_len("dt_bias", per_channel, bias.len())?;
        }
        if let Some(idx) = &self.state_batch_indices {
            check_len(
                "state_batch_indices",
                Shape(&[("b", self.batch)]),
                idx.len(),
            )?;
        } else if self.cache_rows != self.batch {
            return Err(SsmError::Dimension {
                arg: "state",
                reason: format!(
                    "without state_batch_indices the cache must have b = {} rows, it has {}",
                    self.batch, self.cache_rows
                ),
            });
        }
        check_len(
            "state",
            Shape(&[
                ("cache_rows", self.cache_rows),
                ("D_in", self.d_inner),
                ("N", self.d_state),
            ]),
            state_len,
        )?;
        check_len("out", bd, out_len)
    }
}

/// Kernel arguments as the kernel sees them (`Mamba1DecodeArgs` in the .cu file);
/// absent options are null pointers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RawDecodeArgs {
    x: u64,
    dt: u64,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    z: u64,
    dt_bias: u64,
    state_batch_indices: u64,
    state: u64,
    out: u64,
    batch: i64,
    d_inner: i64,
    groups: i64,
    cache_rows: i64,
    dt_softplus: i32,
    channels_per_group: u32,
}

// The .cu file asserts the same size.
const _: () = assert!(std::mem::size_of::<RawDecodeArgs>() == 128);

// SAFETY: plain-old-data with the C layout the kernel declares.
unsafe impl DeviceRepr for RawDecodeArgs {}

/// Device pointer of an optional input (0 when absent) and the guard that records
/// the read once the launch is queued.
fn optional_ptr<'s, E>(
    view: Option<&'s CudaView<'_, E>>,
    stream: &'s CudaStream,
) -> (u64, Option<SyncOnDrop<'s>>) {
    match view {
        Some(v) => {
            let (ptr, guard) = v.device_ptr(stream);
            (ptr, Some(guard))
        }
        None => (0, None),
    }
}

fn check_aligned(arg: &'static str, ptr: u64, align: usize) -> Result<()> {
    if ptr % align as u64 != 0 {
        return Err(SsmError::Dimension {
            arg,
            reason: format!("device pointer {ptr:#x} is not {align}-byte aligned (the kernel uses {align}-byte accesses)"),
        });
    }
    Ok(())
}

fn backend<E: std::fmt::Display>(e: E) -> SsmError {
    SsmError::Backend(e.to_string())
}

/// One decode step on device-resident buffers: a single asynchronous launch on the
/// runtime's stream, `state` updated in place, every element of `out` written.
pub fn launch_decode_step<T: DeviceElement>(
    gpu: &Gpu,
    kernel: &DecodeKernel<T>,
    args: &DeviceStepArgs<'_, T>,
    state: &mut CudaViewMut<'_, f32>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    args.validate(kernel.geometry.d_state, state.len(), out.len())?;
    let cfg = kernel.geometry.launch_config(args.batch, args.d_inner)?;
    let stream = gpu.stream();
    let (x, _gx) = args.x.device_ptr(stream);
    let (dt, _gdt) = args.dt.device_ptr(stream);
    let (a, _ga) = args.a.device_ptr(stream);
    let (b, _gb) = args.b.device_ptr(stream);
    let (c, _gc) = args.c.device_ptr(stream);
    let (d, _gd) = optional_ptr(args.d.as_ref(), stream);
    let (z, _gz) = optional_ptr(args.z.as_ref(), stream);
    let (dt_bias, _gbias) = optional_ptr(args.dt_bias.as_ref(), stream);
    let (indices, _gidx) = optional_ptr(args.state_batch_indices.as_ref(), stream);
    let (state_ptr, _gstate) = state.device_ptr_mut(stream);
    let (out_ptr, _gout) = out.device_ptr_mut(stream);
    let vec_bytes = 4 * kernel.geometry.layout.vec;
    check_aligned("state", state_ptr, vec_bytes)?;
    check_aligned("A", a, vec_bytes)?;
    let input_vec_bytes = kernel.geometry.layout.vec * std::mem::size_of::<T>();
    check_aligned("B", b, input_vec_bytes)?;
    check_aligned("C", c, input_vec_bytes)?;
    let raw = RawDecodeArgs {
        x,
        dt,
        a,
        b,
        c,
        d,
        z,
        dt_bias,
        state_batch_indices: indices,
        state: state_ptr,
        out: out_ptr,
        batch: args.batch as i64,
        d_inner: args.d_inner as i64,
        groups: args.groups as i64,
        cache_rows: args.cache_rows as i64,
        dt_softplus: i32::from(args.dt_softplus),
        // Fits: validate() checks D_in < 2^31.
        channels_per_group: (args.d_inner / args.groups) as u32,
    };
    // SAFETY: the argument struct matches the kernel's (size asserted on both sides);
    // every pointer comes from a live view whose length was checked against the
    // shapes above, state, A, B and C are aligned for the kernel's vector accesses, and the
    // guards keep cudarc's stream ordering until the launch is queued.
    unsafe {
        stream
            .launch_builder(&kernel.kernel.func)
            .arg(&raw)
            .launch(cfg)
    }
    .map_err(backend)?;
    Ok(())
}

/// One decode step from host slices; `state` is updated in place.
pub fn decode_step_cuda<T: DeviceElement>(
    gpu: &Gpu,
    p: &Mamba1StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    let kernel = DecodeKernel::<T>::new(gpu, p.d_state, DecodeTiling::for_dtype(T::DTYPE))?;
    let stream = gpu.stream();
    let x = gpu.upload(p.x)?;
    let dt = gpu.upload(p.dt)?;
    let a = gpu.upload(p.a)?;
    let b = gpu.upload(p.b)?;
    let c = gpu.upload(p.c)?;
    let d = p.d.map(|v| gpu.upload(v)).transpose()?;
    let z = p.z.map(|v| gpu.upload(v)).transpose()?;
    let dt_bias = p.dt_bias.map(|v| gpu.upload(v)).transpose()?;
    let indices = p
        .state_batch_indices
        .map(|v| stream.clone_htod(v))
        .transpose()
        .map_err(backend)?;
    let mut dev_state = gpu.upload(state)?;
    let mut out = gpu.alloc_poisoned::<T>(p.x.len())?;
    let args = DeviceStepArgs {
        batch: p.batch,
        d_inner: p.d_inner,
        d_state: p.d_state,
        groups: p.groups,
        cache_rows: p.cache_rows,
        x: x.as_view(),
        dt: dt.as_view(),
        a: a.as_view(),
        b: b.as_view(),
        c: c.as_view(),
        d: d.as_ref().map(|v| v.as_view()),
        z: z.as_ref().map(|v| v.as_view()),
        dt_bias: dt_bias.as_ref().map(|v| v.as_view()),
        dt_softplus: p.dt_softplus,
        state_batch_indices: indices.as_ref().map(|v| v.as_view()),
    };
    launch_decode_step(
        gpu,
        &kernel,
        &args,
        &mut dev_state.as_view_mut(),
        &mut out.as_view_mut(),
    )?;
    let out = gpu.download(&out)?;
    state.copy_from_slice(&gpu.download(&dev_state)?);
    Ok(StepOutput { out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_layout_spreads_states_over_lanes() {
        let l = ChannelLayout::for_state(16);
        assert_eq!(
            (l.vec, l.threads_per_channel, l.elems_per_thread(16)),
            (4, 4, 4)
        );
        let l = ChannelLayout::for_state(12);
        assert_eq!((l.vec, l.threads_per_channel), (4, 1));
        let l = ChannelLayout::for_state(7);
        assert_eq!(
            (l.vec, l.threads_per_channel, l.elems_per_thread(7)),
            (1, 1, 7)
        );
        let l = ChannelLayout::for_state(256);
        assert_eq!((l.vec, l.threads_per_channel), (4, 32));
    }

    #[test]
    fn raw_args_match_the_kernel_struct() {
        // Offsets the kernel reads (Mamba1DecodeArgs): 11 pointers, 4 i64, 2 x i32.
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, batch), 88);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, dt_softplus), 120);
    }

    #[test]
    fn f64_inputs_are_refused_by_name() {
        assert!(matches!(
            entry_name(DType::F64),
            Err(SsmError::Unsupported { .. })
        ));
        assert_eq!(entry_name(DType::F16).unwrap(), "mamba1_decode_f16");
    }

    /// Every tiling the bench may time, for every element type and a spread of N,
    /// compiles with NVRTC and keeps its state in registers (no stack, no spills).
    #[test]
    fn every_variant_compiles_without_spills() {
        let Some(compiler) = ssm_gpu::test_compiler_or_skip("mamba1 decode variants") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            for n in [16, 7, 64] {
                for tiling in DecodeTiling::candidates() {
                    let variant = decode_variant(dtype, n, tiling).unwrap();
                    let report = ssm_gpu::report_variant(&compiler, &variant, ssm_gpu::Arch::Sm90)
                        .unwrap_or_else(|e| panic!("{}: {e}", variant.label));
                    let r = &report.resources;
                    println!("{:<40} {:>3} registers", variant.label, r.registers);
                    assert_eq!(
                        (r.stack_frame_bytes, r.spill_bytes()),
                        (0, 0),
                        "{} uses local memory: {r:?}",
                        variant.label
                    );
                    assert!(
                        report.warnings.is_empty(),
                        "{}: {:?}",
                        variant.label,
                        report.warnings
                    );
                }
            }
        }
    }
}
