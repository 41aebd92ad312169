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

use ssm_core::decode::{Mamba1StepDims, Mamba1StepParams, StepLens};
use ssm_core::{DType, Result, SsmError};
use ssm_gpu::cudarc::driver::LaunchConfig;
use ssm_gpu::decode::{
    self as shared, BlockGeometry, BlockTiling, DecodeFamily, StateLayout, StepPointers,
};
use ssm_gpu::KernelVariant;

/// The entry points (`decode_step_cuda::<Mamba1Decode, T>` from host slices,
/// `launch_decode_step` on device buffers).
pub use ssm_gpu::decode::{decode_step_cuda, launch_decode_step};

/// The Mamba-1 decode family ([`DecodeFamily`]).
#[derive(Clone, Copy, Debug)]
pub struct Mamba1Decode;

/// Tiling knobs of the decode kernel; each set is compiled into its own module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DecodeTiling {
    /// Rows are batch rows of a channel slice: `A` is read once for all of them.
    /// `min_blocks_per_sm` is ignored when a thread holds more than 16 state
    /// floats or N % 4 != 0 (it would spill).
    pub block: BlockTiling,
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
        // v3 (docs/kernels/decode.md): 4 rows x 16 B in flight per thread, 8 warps,
        // registers capped at 64 so that 4 blocks (1024 threads) fit per SM, and
        // the next row's B and C fetched while a row is updated.
        DecodeTiling {
            block: BlockTiling {
                warps: 8,
                min_blocks_per_sm: 4,
                ..BlockTiling::default()
            },
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

    /// The tilings `gpu_decode_bench` compares (the GPU tests verify each one):
    /// the default, less and more work in flight per thread, and cache hints.
    pub fn candidates() -> Vec<DecodeTiling> {
        let base = DecodeTiling::default();
        let block = |rows, warps, min_blocks_per_sm| DecodeTiling {
            block: BlockTiling {
                rows,
                warps,
                min_blocks_per_sm,
                ..base.block
            },
            ..base
        };
        let hints = BlockTiling {
            streaming_hints: true,
            ..base.block
        };
        vec![
            base,
            // v2: B and C fetched just before each row's update.
            DecodeTiling {
                bc_prefetch: 0,
                ..base
            },
            block(4, 8, 0),
            block(2, 8, 4),
            block(8, 8, 2),
            block(4, 4, 7),
            DecodeTiling {
                block: hints,
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
                ..block(4, 8, 0)
            },
            DecodeTiling {
                bc_shared: 2,
                ..block(4, 4, 8)
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
        let mut block = BlockGeometry::new(d_state, "batch_rows", tiling.block)?;
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
    ssm_gpu::decode_family_names! {
        "mamba1", "mamba1-scan CUDA decode", "mamba1/decode.cu", Mamba1StepParams, Mamba1StepDims
    }
    const VECTOR_A: bool = true;

    fn default_tiling(dtype: DType) -> DecodeTiling {
        DecodeTiling::for_dtype(dtype)
    }

    /// The dtype's tiling with evict-first state hints: 2.92 -> 2.65 µs per
    /// graph-replayed b = 1 bf16 step on the H200 (docs/kernels/decode.md,
    /// "Graph replay"); f32 inputs keep their staged B and C (not timed at b = 1).
    fn small_batch_tiling(dtype: DType) -> DecodeTiling {
        let t = DecodeTiling::for_dtype(dtype);
        DecodeTiling {
            block: t.block.with_streaming_hints(),
            ..t
        }
    }

    fn batch(d: &Mamba1StepDims) -> usize {
        d.batch
    }

    fn candidates() -> Vec<DecodeTiling> {
        DecodeTiling::candidates()
    }

    /// Sets the knob; [`DecodeFamily::geometry`] refuses all but f32.
    fn with_state_dtype(tiling: DecodeTiling, state_dtype: DType) -> DecodeTiling {
        DecodeTiling {
            block: tiling.block.with_state_dtype(state_dtype),
            ..tiling
        }
    }

    fn state_shape(d: &Mamba1StepDims) -> String {
        format!(
            "(cache_rows={}, D_in={}, N={})",
            d.cache_rows, d.d_inner, d.d_state
        )
    }

    /// The state is f32 only: this kernel also reads A and its staged B and C
    /// in the state's vector layout, so a 16-bit state (Mamba-2's v6) would
    /// change those paths too (docs/kernels/decode.md).
    fn geometry(d_state: usize, dtype: DType, tiling: DecodeTiling) -> Result<Geometry> {
        if tiling.block.state_dtype != DType::F32 {
            return Err(SsmError::Unsupported {
                implementation: <Self as DecodeFamily>::IMPLEMENTATION,
                what: format!(
                    "a state cache stored as {} (the Mamba-1 decode state is f32)",
                    tiling.block.state_dtype
                ),
            });
        }
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

    fn validate(d: &Mamba1StepDims, _: &StepOptions, lens: &StepLens, state: usize) -> Result<()> {
        shared::check_fits_i32("d_inner", "D_in", d.d_inner, "channel index")?;
        d.check(lens, state)
    }

    fn launch_config(d: &Mamba1StepDims, g: &Geometry) -> Result<LaunchConfig> {
        let channel_tiles = d.d_inner.div_ceil(g.channels_per_block());
        let batch_tiles = d.batch.div_ceil(g.batch_rows());
        let blocks = channel_tiles.checked_mul(batch_tiles);
        shared::grid(blocks, g.block.warps, || {
            format!("{batch_tiles} batch tiles x {channel_tiles} channel tiles is more than 2^31 - 1 blocks")
        })
    }

    fn raw_args(d: &Mamba1StepDims, o: &StepOptions, ptrs: StepPointers) -> RawDecodeArgs {
        RawDecodeArgs {
            ptrs,
            // b, D_in, G, cache_rows
            sizes: [d.batch, d.d_inner, d.groups, d.cache_rows].map(|v| v as i64),
            dt_softplus: i32::from(o.dt_softplus),
            // Fits: validate() checks D_in < 2^31.
            channels_per_group: (d.d_inner / d.groups) as u32,
        }
    }

    fn options<T>(p: &Mamba1StepParams<'_, T>) -> StepOptions {
        StepOptions {
            dt_softplus: p.dt_softplus,
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
    shared::default_variants::<Mamba1Decode>(&[16])
}

/// The decode kernel compiled for element type `T`, state size `N` and one tiling.
pub type DecodeKernel<T> = shared::DecodeKernel<Mamba1Decode, T>;

/// Device-resident inputs of one decode step; shapes as in [`Mamba1StepParams`]:
/// x, dt and z `(b, D_in)`, A `(D_in, N)`, B and C `(b, G, N)`, D and dt_bias
/// `(D_in)`, the index list `(b)` (negative entries are padding).
pub type DeviceStepArgs<'a, T> = shared::StepArgs<'a, Mamba1Decode, T>;

/// The switches of a Mamba-1 step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepOptions {
    /// Softplus is applied to `dt + dt_bias`.
    pub dt_softplus: bool,
}

/// Kernel arguments as the kernel sees them (`Mamba1DecodeArgs` in the .cu file):
/// the pointers every decode kernel takes (absent options null), then the sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecodeArgs {
    ptrs: StepPointers,
    sizes: [i64; 4],
    dt_softplus: i32,
    channels_per_group: u32,
}

// Mamba1DecodeArgs: 11 pointers, 4 i64, 2 x 4 bytes.
ssm_gpu::decode_args_abi!(RawDecodeArgs, 128, sizes @ 88, dt_softplus @ 120);

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit state is Mamba-2's only: refused by name, never compiled.
    #[test]
    fn a_16_bit_state_is_refused() {
        let t =
            <Mamba1Decode as DecodeFamily>::with_state_dtype(DecodeTiling::default(), DType::Bf16);
        let err = decode_variant(DType::Bf16, 16, t).unwrap_err();
        assert!(matches!(err, SsmError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("bf16"), "{err}");
    }

    #[test]
    fn labels_name_non_default_tilings() {
        let bf16 = DecodeTiling::for_dtype(DType::Bf16);
        let defines = "D_STATE VEC TPR BROWS WARPS STREAM_STATE MIN_BLOCKS BC_PREFETCH BC_SHARED";
        shared::assert_variant_names::<Mamba1Decode>(
            DType::Bf16,
            16,
            bf16,
            "mamba1.decode.bf16.n16",
            defines,
        );
        let t = DecodeTiling::candidates()[1];
        let label = "mamba1.decode.bf16.n16.b4w8m4p0";
        shared::assert_variant_names::<Mamba1Decode>(DType::Bf16, 16, t, label, defines);
    }

    #[test]
    fn small_batches_launch_the_streaming_tiling() {
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            let small = <Mamba1Decode as DecodeFamily>::tiling_for_batch(dtype, 1);
            let large = <Mamba1Decode as DecodeFamily>::tiling_for_batch(dtype, 64);
            assert_eq!(large, DecodeTiling::for_dtype(dtype));
            assert_eq!(
                small,
                DecodeTiling {
                    block: large.block.with_streaming_hints(),
                    ..large
                }
            );
        }
        let labels: Vec<String> = decode_kernel_variants()
            .into_iter()
            .map(|v| v.label)
            .collect();
        assert!(
            labels.contains(&"mamba1.decode.bf16.n16.b4w8csm4p1".to_string()),
            "{labels:?}"
        );
        assert_eq!(labels.len(), 6, "{labels:?}");
    }

    /// The entry points, the f64 refusal, and every tiling the bench may time, for
    /// every element type and a spread of N, compiled without local memory.
    #[test]
    fn every_variant_compiles_without_spills() {
        shared::assert_family_compiles::<Mamba1Decode>(&[16, 7, 64]);
    }
}
