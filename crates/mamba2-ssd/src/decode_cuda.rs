//! CUDA launcher for the Mamba-2 decode step (kernel: `kernels/mamba2/decode.cu`,
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

use ssm_core::decode::Mamba2StepParams;
use ssm_core::mamba2::DSkip;
use ssm_core::shape::{check_groups, check_len, check_nonzero, Shape};
use ssm_core::{DType, Result, SsmError, StepOutput};
use ssm_gpu::cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};
use ssm_gpu::{kernel_source, DeviceElement, Gpu, Kernel, KernelSource, KernelVariant};

/// The kernel source, embedded at build time.
pub static DECODE_SOURCE: KernelSource = kernel_source!("mamba2/decode.cu");

const IMPLEMENTATION: &str = "mamba2-ssd CUDA decode";

/// Tiling knobs of the decode kernel; each set is compiled into its own module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeTiling {
    /// State rows (of N floats) each lane-slot updates; their loads are all in flight
    /// together. Capped so that a thread holds at most 32 state floats.
    pub rows_per_slot: usize,
    /// Warps per block.
    pub warps: usize,
    /// Evict-first cache hints on the state loads and stores.
    pub streaming_hints: bool,
    /// Blocks per SM that ptxas must leave registers for (`__launch_bounds__`'s
    /// second argument); 0 leaves the register count to ptxas.
    pub min_blocks_per_sm: usize,
}

impl Default for DecodeTiling {
    fn default() -> Self {
        // v2 (docs/kernels/decode.md): 4 rows x 16 B in flight per thread at about
        // 60 registers, 8 blocks of 128 threads per SM; 8 rows measured slower.
        DecodeTiling {
            rows_per_slot: 4,
            warps: 4,
            streaming_hints: false,
            min_blocks_per_sm: 0,
        }
    }
}

/// How one state row of `N` f32 is spread over the lanes of a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLayout {
    /// Floats per vector access: 4, 2 or 1 (the largest dividing `N`).
    pub vec: usize,
    /// Lanes sharing one row: the largest power of two (at most 32) dividing `N / vec`.
    pub threads_per_row: usize,
}

impl RowLayout {
    pub fn for_state(d_state: usize) -> Self {
        let vec = [4, 2, 1]
            .into_iter()
            .find(|v| d_state % v == 0)
            .unwrap_or(1);
        let vectors = d_state / vec;
        let mut threads_per_row = 1;
        while threads_per_row < 32 && vectors % (threads_per_row * 2) == 0 {
            threads_per_row *= 2;
        }
        RowLayout {
            vec,
            threads_per_row,
        }
    }

    /// State floats one lane holds per row.
    pub fn elems_per_thread(&self, d_state: usize) -> usize {
        d_state / self.threads_per_row
    }
}

impl DecodeTiling {
    /// The tilings `gpu_decode_bench` compares (the GPU tests verify each one):
    /// the default, less and more work in flight per thread, and cache hints.
    pub fn candidates() -> Vec<DecodeTiling> {
        let base = DecodeTiling::default();
        vec![
            base,
            DecodeTiling {
                rows_per_slot: 1,
                ..base
            },
            DecodeTiling {
                rows_per_slot: 2,
                ..base
            },
            DecodeTiling {
                rows_per_slot: 8,
                ..base
            },
            DecodeTiling { warps: 8, ..base },
            DecodeTiling {
                streaming_hints: true,
                ..base
            },
        ]
    }
}

/// Most state floats a thread keeps in registers (rows_per_slot is capped to fit).
const MAX_STATE_REGS: usize = 32;

/// Everything that decides one compiled form of the kernel and its launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    d_state: usize,
    layout: RowLayout,
    rows_per_slot: usize,
    warps: usize,
    streaming_hints: bool,
    min_blocks_per_sm: usize,
}

impl Geometry {
    fn new(d_state: usize, tiling: DecodeTiling) -> Result<Self> {
        check_nonzero("d_state", d_state)?;
        check_nonzero("rows_per_slot", tiling.rows_per_slot)?;
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
        let layout = RowLayout::for_state(d_state);
        let per_row = layout.elems_per_thread(d_state);
        Ok(Geometry {
            d_state,
            layout,
            rows_per_slot: tiling.rows_per_slot.min((MAX_STATE_REGS / per_row).max(1)),
            warps: tiling.warps,
            streaming_hints: tiling.streaming_hints,
            min_blocks_per_sm: tiling.min_blocks_per_sm,
        })
    }

    /// The `-D` defines of `kernels/mamba2/decode.cu`.
    fn defines(&self) -> Vec<(&'static str, String)> {
        vec![
            ("D_STATE", self.d_state.to_string()),
            ("VEC", self.layout.vec.to_string()),
            ("TPR", self.layout.threads_per_row.to_string()),
            ("ROWS", self.rows_per_slot.to_string()),
            ("WARPS", self.warps.to_string()),
            ("STREAM_STATE", u8::from(self.streaming_hints).to_string()),
            ("MIN_BLOCKS", self.min_blocks_per_sm.max(1).to_string()),
        ]
    }

    /// Rows of one head's `P x N` state that one block updates.
    fn rows_per_block(&self) -> usize {
        self.warps * (32 / self.layout.threads_per_row) * self.rows_per_slot
    }

    fn launch_config(&self, batch: usize, heads: usize, head_dim: usize) -> Result<LaunchConfig> {
        let tiles = head_dim.div_ceil(self.rows_per_block());
        let blocks = batch
            .checked_mul(heads)
            .and_then(|v| v.checked_mul(tiles))
            .filter(|&v| v <= i32::MAX as usize)
            .ok_or_else(|| SsmError::Dimension {
                arg: "batch",
                reason: format!(
                    "b = {batch} x H = {heads} x {tiles} row tiles needs more than 2^31 - 1 blocks"
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
    let geometry = Geometry::new(d_state, tiling)?;
    let mut label = format!("mamba2.decode.{dtype}.n{d_state}");
    if tiling != DecodeTiling::default() {
        label.push_str(&format!(
            ".r{}w{}{}",
            geometry.rows_per_slot,
            geometry.warps,
            if geometry.streaming_hints { "cs" } else { "" }
        ));
        if geometry.min_blocks_per_sm > 0 {
            label.push_str(&format!("m{}", geometry.min_blocks_per_sm));
        }
    }
    Ok(KernelVariant::new(
        label,
        DECODE_SOURCE,
        entry_name(dtype)?,
        geometry.defines(),
    ))
}

/// The variants the crate launches by default (the reference decode workload has
/// N = 128; N = 64 is the other common size), for the resources/budget command.
pub fn decode_kernel_variants() -> Vec<KernelVariant> {
    [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .flat_map(|dtype| [128, 64].map(|n| (dtype, n)))
        .map(|(dtype, n)| {
            decode_variant(dtype, n, DecodeTiling::default())
                .expect("the default tiling is valid for every listed N")
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
        let geometry = Geometry::new(d_state, tiling)?;
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

    /// Rows of one head's `P x N` state that one block updates.
    pub fn rows_per_block(&self) -> usize {
        self.geometry.rows_per_block()
    }

    /// State rows each lane-slot updates after capping (see [`DecodeTiling`]).
    pub fn rows_per_slot(&self) -> usize {
        self.geometry.rows_per_slot
    }
}

fn entry_name(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("mamba2_decode_f32"),
        DType::F16 => Ok("mamba2_decode_f16"),
        DType::Bf16 => Ok("mamba2_decode_bf16"),
        DType::F64 => Err(SsmError::Unsupported {
            implementation: IMPLEMENTATION,
            what: "f64 inputs (use f32, f16 or bf16)".into(),
        }),
    }
}

/// `D` on the device: per head `(H)` or per head and head-dimension index `(H, P)`.
pub enum DeviceDSkip<'a> {
    PerHead(CudaView<'a, f32>),
    PerHeadDim(CudaView<'a, f32>),
}

impl DeviceDSkip<'_> {
    fn view(&self) -> &CudaView<'_, f32> {
        match self {
            DeviceDSkip::PerHead(v) | DeviceDSkip::PerHeadDim(v) => v,
        }
    }
}

/// Device-resident inputs of one decode step; shapes as in [`Mamba2StepParams`].
pub struct DeviceStepArgs<'a, T> {
    pub batch: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub d_state: usize,
    pub groups: usize,
    pub cache_rows: usize,
    /// `(b, H, P)`
    pub x: CudaView<'a, T>,
    /// `(b, H)`
    pub dt: CudaView<'a, T>,
    /// `(H)`
    pub a: CudaView<'a, f32>,
    /// `(b, G, N)`
    pub b: CudaView<'a, T>,
    /// `(b, G, N)`
    pub c: CudaView<'a, T>,
    pub d: Option<DeviceDSkip<'a>>,
    /// `(b, H, P)`
    pub z: Option<CudaView<'a, T>>,
    /// `(H)`
    pub dt_bias: Option<CudaView<'a, f32>>,
    pub dt_softplus: bool,
    pub dt_limit: (f32, f32),
    /// `(b)`; negative entries are padding. Contents are not validated here.
    pub state_batch_indices: Option<CudaView<'a, i64>>,
}

impl<T> DeviceStepArgs<'_, T> {
    /// Shapes, options and the pairing with `kernel`, `state` and `out`.
    fn validate(&self, d_state: usize, state_len: usize, out_len: usize) -> Result<()> {
        check_nonzero("batch", self.batch)?;
        check_nonzero("heads", self.heads)?;
        check_nonzero("head_dim", self.head_dim)?;
        check_nonzero("d_state", self.d_state)?;
        check_groups("B", self.groups, "H", self.heads)?;
        if self.head_dim > i32::MAX as usize {
            return Err(SsmError::Dimension {
                arg: "head_dim",
                reason: format!(
                    "P = {} does not fit the kernel's 32-bit row index",
                    self.head_dim
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
        let bhp = Shape(&[("b", self.batch), ("H", self.heads), ("P", self.head_dim)]);
        let bgn = Shape(&[("b", self.batch), ("G", self.groups), ("N", self.d_state)]);
        let h = Shape(&[("H", self.heads)]);
        check_len("x", bhp, self.x.len())?;
        check_len(
            "dt",
            Shape(&[("b", self.batch), ("H", self.heads)]),
            self.dt.len(),
        )?;
        check_len("A", h, self.a.len())?;
        check_len("B", bgn, self.b.len())?;
        check_len("C", bgn, self.c.len())?;
        match &self.d {
            Some(DeviceDSkip::PerHead(v)) => check_len("D", h, v.len())?,
            Some(DeviceDSkip::PerHeadDim(v)) => check_len(
                "D",
                Shape(&[("H", self.heads), ("P", self.head_dim)]),
                v.len(),
            )?,
            None => {}
        }
        if let Some(z) = &self.z {
            check_len("z", bhp, z.len())?;
        }
        if let Some(bias) = &self.dt_bias {
            check_len("dt_bias", h, bias.len())?;
        }
        let (min, max) = self.dt_limit;
        if min.is_nan() || max.is_nan() || min > max {
            return Err(SsmError::DtLimit { min, max });
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
                ("H", self.heads),
                ("P", self.head_dim),
                ("N", self.d_state),
            ]),
            state_len,
        )?;
        check_len("out", bhp, out_len)
    }
}

/// Kernel arguments as the kernel sees them (`Mamba2DecodeArgs` in the .cu file);
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
    heads: i64,
    head_dim: i64,
    groups: i64,
    cache_rows: i64,
    dt_min: f32,
    dt_max: f32,
    dt_softplus: i32,
    d_per_head_dim: i32,
}

// The .cu file asserts the same size.
const _: () = assert!(std::mem::size_of::<RawDecodeArgs>() == 144);

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
    let cfg = kernel
        .geometry
        .launch_config(args.batch, args.heads, args.head_dim)?;
    let stream = gpu.stream();
    let (x, _gx) = args.x.device_ptr(stream);
    let (dt, _gdt) = args.dt.device_ptr(stream);
    let (a, _ga) = args.a.device_ptr(stream);
    let (b, _gb) = args.b.device_ptr(stream);
    let (c, _gc) = args.c.device_ptr(stream);
    let (d, _gd) = optional_ptr(args.d.as_ref().map(DeviceDSkip::view), stream);
    let (z, _gz) = optional_ptr(args.z.as_ref(), stream);
    let (dt_bias, _gbias) = optional_ptr(args.dt_bias.as_ref(), stream);
    let (indices, _gidx) = optional_ptr(args.state_batch_indices.as_ref(), stream);
    let (state_ptr, _gstate) = state.device_ptr_mut(stream);
    let (out_ptr, _gout) = out.device_ptr_mut(stream);
    let vec = kernel.geometry.layout.vec;
    check_aligned("state", state_ptr, 4 * vec)?;
    check_aligned("B", b, vec * std::mem::size_of::<T>())?;
    check_aligned("C", c, vec * std::mem::size_of::<T>())?;
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
        heads: args.heads as i64,
        head_dim: args.head_dim as i64,
        groups: args.groups as i64,
        cache_rows: args.cache_rows as i64,
        dt_min: args.dt_limit.0,
        dt_max: args.dt_limit.1,
        dt_softplus: i32::from(args.dt_softplus),
        d_per_head_dim: i32::from(matches!(args.d, Some(DeviceDSkip::PerHeadDim(_)))),
    };
    // SAFETY: the argument struct matches the kernel's (size asserted on both sides);
    // every pointer comes from a live view whose length was checked against the
    // shapes above, state, B and C are aligned for the kernel's vector accesses, and the guards
    // keep cudarc's stream ordering until the launch is queued.
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
    p: &Mamba2StepParams<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    let kernel = DecodeKernel::<T>::new(gpu, p.d_state, DecodeTiling::default())?;
    let stream = gpu.stream();
    let x = gpu.upload(p.x)?;
    let dt = gpu.upload(p.dt)?;
    let a = gpu.upload(p.a)?;
    let b = gpu.upload(p.b)?;
    let c = gpu.upload(p.c)?;
    let d = p.d.as_ref().map(|d| gpu.upload(d.data())).transpose()?;
    let z = p.z.map(|z| gpu.upload(z)).transpose()?;
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
        heads: p.heads,
        head_dim: p.head_dim,
        d_state: p.d_state,
        groups: p.groups,
        cache_rows: p.cache_rows,
        x: x.as_view(),
        dt: dt.as_view(),
        a: a.as_view(),
        b: b.as_view(),
        c: c.as_view(),
        d: match (&p.d, &d) {
            (Some(DSkip::PerHead(_)), Some(v)) => Some(DeviceDSkip::PerHead(v.as_view())),
            (Some(DSkip::PerHeadDim(_)), Some(v)) => Some(DeviceDSkip::PerHeadDim(v.as_view())),
            _ => None,
        },
        z: z.as_ref().map(|v| v.as_view()),
        dt_bias: dt_bias.as_ref().map(|v| v.as_view()),
        dt_softplus: p.dt_softplus,
        dt_limit: p.dt_limit,
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
    fn row_layout_spreads_rows_over_lanes() {
        let l = RowLayout::for_state(128);
        assert_eq!(
            (l.vec, l.threads_per_row, l.elems_per_thread(128)),
            (4, 32, 4)
        );
        let l = RowLayout::for_state(256);
        assert_eq!(
            (l.vec, l.threads_per_row, l.elems_per_thread(256)),
            (4, 32, 8)
        );
        let l = RowLayout::for_state(16);
        assert_eq!((l.vec, l.threads_per_row), (4, 4));
        let l = RowLayout::for_state(12);
        assert_eq!(
            (l.vec, l.threads_per_row, l.elems_per_thread(12)),
            (4, 1, 12)
        );
        let l = RowLayout::for_state(6);
        assert_eq!((l.vec, l.threads_per_row), (2, 1));
        let l = RowLayout::for_state(7);
        assert_eq!((l.vec, l.threads_per_row, l.elems_per_thread(7)), (1, 1, 7));
    }

    #[test]
    fn raw_args_match_the_kernel_struct() {
        // Offsets the kernel reads (Mamba2DecodeArgs): 11 pointers, 5 i64, 4 x 4 bytes.
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, batch), 88);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, dt_min), 128);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, d_per_head_dim), 140);
    }

    #[test]
    fn f64_inputs_are_refused_by_name() {
        assert!(matches!(
            entry_name(DType::F64),
            Err(SsmError::Unsupported { .. })
        ));
        assert_eq!(entry_name(DType::Bf16).unwrap(), "mamba2_decode_bf16");
    }

    /// Every tiling the bench may time, for every element type and a spread of N,
    /// compiles with NVRTC and keeps its state in registers (no stack, no spills).
    #[test]
    fn every_variant_compiles_without_spills() {
        let Some(compiler) = ssm_gpu::test_compiler_or_skip("mamba2 decode variants") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            for n in [128, 256, 7] {
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
