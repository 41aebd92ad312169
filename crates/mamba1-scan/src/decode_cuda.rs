//! CUDA launcher for the Mamba-1 decode step (kernel: `kernels/mamba1/decode.cu`,
//! design notes: `docs/kernels/decode.md`): the Mamba-1 [`DecodeFamily`] of the
//! decode launcher both families share (`ssm_gpu::decode`).
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
//!
//! What is Mamba-1's here: the tiling knobs (batch rows per thread, B and C
//! prefetched or staged), the argument struct, the shapes (`A` is `(D_in, N)` and
//! read in vectors, one state row per channel) and the grid over (batch tile,
//! channel tile).

use ssm_core::decode::{Mamba1StepDims, Mamba1StepParams, StepInputs};
use ssm_core::{DType, Result, SsmError};
use ssm_gpu::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};
use ssm_gpu::decode::{
    self as shared, BlockGeometry, DecodeFamily, DeviceStepInputs, DeviceStepRefs, StateLayout,
    StepPointers,
};
use ssm_gpu::{kernel_source, KernelSource, KernelVariant};

/// The entry points (`decode_step_cuda::<Mamba1Decode, T>` from host slices,
/// `launch_decode_step` on device buffers).
pub use ssm_gpu::decode::{decode_step_cuda, launch_decode_step};

/// The kernel source, embedded at build time.
pub static DECODE_SOURCE: KernelSource = kernel_source!("mamba1/decode.cu");

/// The Mamba-1 decode family ([`DecodeFamily`]).
#[derive(Clone, Copy, Debug)]
pub struct Mamba1Decode;

/// The decode kernel compiled for element type `T`, state size `N` and one tiling.
pub type DecodeKernel<T> = shared::DecodeKernel<Mamba1Decode, T>;

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

/// `min_blocks_per_sm` is honoured only up to this many state floats per thread,
/// held as 16-byte vectors: at 16 (N = 16, 4 rows) 64 registers suffice; with
/// scalar layouts (N = 7: 2 rows x 7) ptxas spilled.
const MAX_CAPPED_STATE_REGS: usize = 16;
/// Static shared memory a kernel may declare without opting in to more.
const MAX_STATIC_SHARED_BYTES: usize = 48 * 1024;

/// Everything that decides one compiled form of the kernel and its launch shape:
/// the shared block shape (its rows are batch rows of a channel) and how B and C
/// reach the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    block: BlockGeometry,
    bc_prefetch: usize,
    bc_shared: usize,
}

impl Geometry {
    /// `elem_bytes`: size of the input element type (B and C are held packed).
    fn new(d_state: usize, elem_bytes: usize, tiling: DecodeTiling) -> Result<Self> {
        let mut block = BlockGeometry::new(
            d_state,
            "batch_rows",
            tiling.batch_rows,
            tiling.warps,
            tiling.streaming_hints,
            tiling.min_blocks_per_sm,
        )?;
        let (layout, batch_rows) = (block.layout, block.rows);
        let per_row = layout.elems_per_thread(d_state);
        // The register cap is a tuning for the common layouts; with more state per
        // thread (odd N: one lane holds a whole channel) it would only force spills.
        if layout.vec != 4 || batch_rows * per_row > MAX_CAPPED_STATE_REGS {
            block.min_blocks_per_sm = 0;
        }
        // A prefetched row of packed B and C costs 2 x per_row x elem_bytes / 4
        // registers; under the cap only the 16-bit form fits.
        let bc_prefetch = if tiling.bc_shared > 0 || (block.min_blocks_per_sm > 0 && elem_bytes > 2)
        {
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
            block,
            bc_prefetch,
            bc_shared: tiling.bc_shared,
        })
    }

    /// How a channel's `N` states are spread over lanes.
    pub fn layout(&self) -> StateLayout {
        self.block.layout
    }

    /// Channels one block updates (for `batch_rows` batch rows).
    pub fn channels_per_block(&self) -> usize {
        self.block.slots_per_block()
    }

    /// Batch rows each thread updates after capping (see [`DecodeTiling`]).
    pub fn batch_rows(&self) -> usize {
        self.block.rows
    }
}

impl DecodeFamily for Mamba1Decode {
    ssm_gpu::decode_family_names!(
        "mamba1",
        "mamba1-scan CUDA decode",
        DECODE_SOURCE,
        DecodeTiling
    );
    const VECTOR_A: bool = true;

    type Geometry = Geometry;
    type Raw = RawDecodeArgs;
    type Args<'v, T: 'v> = DeviceStepArgs<'v, T>;
    type Params<'a, T: 'a> = Mamba1StepParams<'a, T>;

    fn geometry(d_state: usize, dtype: DType, tiling: DecodeTiling) -> Result<Geometry> {
        Geometry::new(d_state, dtype.size_bytes(), tiling)
    }

    fn block(g: &Geometry) -> &BlockGeometry {
        &g.block
    }

    const ROWS_DEFINE: &'static str = "BROWS";
    const ROWS_TAG: char = 'b';

    /// `kernels/mamba1/decode.cu`'s own defines: how B and C are fetched.
    fn extra_defines(g: &Geometry) -> Vec<(&'static str, String)> {
        vec![
            ("BC_PREFETCH", g.bc_prefetch.to_string()),
            ("BC_SHARED", g.bc_shared.to_string()),
        ]
    }

    fn extra_label(g: &Geometry) -> String {
        let mut label = format!("p{}", g.bc_prefetch);
        if g.bc_shared > 0 {
            label.push_str(&format!("s{}", g.bc_shared));
        }
        label
    }

    fn inputs<'s, 'v: 's, T: 'v>(args: &'s DeviceStepArgs<'v, T>) -> DeviceStepRefs<'s, 'v, T> {
        StepInputs {
            x: &args.x,
            dt: &args.dt,
            a: &args.a,
            b: &args.b,
            c: &args.c,
            d: args.d.as_ref(),
            z: args.z.as_ref(),
            dt_bias: args.dt_bias.as_ref(),
            state_batch_indices: args.state_batch_indices.as_ref(),
        }
    }

    fn validate<T>(
        args: &DeviceStepArgs<'_, T>,
        g: &Geometry,
        state_len: usize,
        out_len: usize,
    ) -> Result<()> {
        let dims = args.dims();
        shared::check_fits_i32("d_inner", "D_in", args.d_inner, "channel index")?;
        shared::check_kernel_state(g.block.d_state, args.d_state)?;
        let lens = Self::inputs(args).map(|v| v.len(), |v| v.len(), |v| v.len());
        dims.check(&lens, state_len)?;
        dims.check_out(out_len)
    }

    fn launch_config<T>(args: &DeviceStepArgs<'_, T>, g: &Geometry) -> Result<LaunchConfig> {
        let channel_tiles = args.d_inner.div_ceil(g.channels_per_block());
        let batch_tiles = args.batch.div_ceil(g.batch_rows());
        shared::grid(
            channel_tiles.checked_mul(batch_tiles),
            g.block.warps,
            || {
                format!(
                "{batch_tiles} batch tiles x {channel_tiles} channel tiles is more than 2^31 - 1 blocks"
            )
            },
        )
    }

    fn raw_args<T>(args: &DeviceStepArgs<'_, T>, ptrs: StepPointers) -> RawDecodeArgs {
        RawDecodeArgs {
            ptrs,
            batch: args.batch as i64,
            d_inner: args.d_inner as i64,
            groups: args.groups as i64,
            cache_rows: args.cache_rows as i64,
            dt_softplus: i32::from(args.dt_softplus),
            // Fits: validate() checks D_in < 2^31.
            channels_per_group: (args.d_inner / args.groups) as u32,
        }
    }

    fn device_args<'v, T>(
        p: &Mamba1StepParams<'_, T>,
        v: DeviceStepInputs<'v, T>,
    ) -> DeviceStepArgs<'v, T> {
        DeviceStepArgs {
            batch: p.batch,
            d_inner: p.d_inner,
            d_state: p.d_state,
            groups: p.groups,
            cache_rows: p.cache_rows,
            x: v.x,
            dt: v.dt,
            a: v.a,
            b: v.b,
            c: v.c,
            d: v.d,
            z: v.z,
            dt_bias: v.dt_bias,
            dt_softplus: p.dt_softplus,
            state_batch_indices: v.state_batch_indices,
        }
    }
}

/// The kernel variant (source, entry, defines) for one element type, `N` and tiling.
pub fn decode_variant(dtype: DType, d_state: usize, tiling: DecodeTiling) -> Result<KernelVariant> {
    shared::decode_variant::<Mamba1Decode>(dtype, d_state, tiling)
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
    pub fn dims(&self) -> Mamba1StepDims {
        Mamba1StepDims {
            batch: self.batch,
            d_inner: self.d_inner,
            d_state: self.d_state,
            groups: self.groups,
            cache_rows: self.cache_rows,
        }
    }
}

/// Kernel arguments as the kernel sees them (`Mamba1DecodeArgs` in the .cu file):
/// the pointers every decode kernel takes (absent options null), then the sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecodeArgs {
    ptrs: StepPointers,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_args_match_the_kernel_struct() {
        // Offsets the kernel reads (Mamba1DecodeArgs): 11 pointers, 4 i64, 2 x i32.
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, batch), 88);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, dt_softplus), 120);
    }

    #[test]
    fn labels_name_non_default_tilings() {
        let v = decode_variant(DType::Bf16, 16, DecodeTiling::for_dtype(DType::Bf16)).unwrap();
        assert_eq!(v.label, "mamba1.decode.bf16.n16");
        let t = DecodeTiling::candidates()[1];
        let v = decode_variant(DType::Bf16, 16, t).unwrap();
        assert_eq!(v.label, "mamba1.decode.bf16.n16.b4w8m4p0");
        let names: Vec<&str> = v.defines.iter().map(|d| d.0).collect();
        assert_eq!(
            names,
            [
                "D_STATE",
                "VEC",
                "TPR",
                "BROWS",
                "WARPS",
                "STREAM_STATE",
                "MIN_BLOCKS",
                "BC_PREFETCH",
                "BC_SHARED"
            ]
        );
    }

    /// The entry points, the f64 refusal, and every tiling the bench may time, for
    /// every element type and a spread of N, compiled without local memory.
    #[test]
    fn every_variant_compiles_without_spills() {
        shared::assert_family_compiles::<Mamba1Decode>(&[16, 7, 64]);
    }
}
