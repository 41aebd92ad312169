//! CUDA launcher for the Mamba-2 decode step (kernel: `kernels/mamba2/decode.cu`,
//! design notes: `docs/kernels/decode.md`): the Mamba-2 [`DecodeFamily`] of the
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
//! What is Mamba-2's here: the tiling knobs (state rows per lane-slot), the
//! argument struct, the shapes (`A` per head, `D` per head or per head and
//! head-dimension index, the step-size clamp, a `P x N` state per head) and the
//! grid over (batch row, head, row tile).

use ssm_core::decode::{Mamba2StepDims, Mamba2StepParams, StepLens};
use ssm_core::mamba2::DSkip;
use ssm_core::{DType, Result};
use ssm_gpu::cudarc::driver::LaunchConfig;
use ssm_gpu::decode::{self as shared, BlockGeometry, BlockTiling, DecodeFamily, StepPointers};
use ssm_gpu::KernelVariant;

/// The entry points (`decode_step_cuda::<Mamba2Decode, T>` from host slices,
/// `launch_decode_step` on device buffers).
pub use ssm_gpu::decode::{decode_step_cuda, launch_decode_step};

/// The Mamba-2 decode family ([`DecodeFamily`]).
#[derive(Clone, Copy, Debug)]
pub struct Mamba2Decode;

/// Tiling knobs of the decode kernel: the shared block shape alone, its rows the
/// rows of a head's `P x N` state per lane-slot; its default is this kernel's v2
/// (docs/kernels/decode.md: about 60 registers, 8 blocks of 128 threads per SM; 8
/// rows measured slower).
pub type DecodeTiling = BlockTiling;

/// Everything that decides one compiled form of the kernel and its launch shape:
/// the shared block shape alone.
pub type Geometry = BlockGeometry;

/// Rows of one head's `P x N` state that one block updates.
fn rows_per_block(g: &Geometry) -> usize {
    g.slots_per_block() * g.rows
}

impl DecodeFamily for Mamba2Decode {
    ssm_gpu::decode_family_names! {
        "mamba2", "mamba2-ssd CUDA decode", "mamba2/decode.cu", Mamba2StepParams, Mamba2StepDims
    }
    // A is one scalar per head.
    const VECTOR_A: bool = false;

    /// The same tiling for every input type (the Mamba-1 kernel is the one that
    /// tunes per type).
    fn default_tiling(_dtype: DType) -> BlockTiling {
        BlockTiling::default()
    }

    /// The default with evict-first state hints (`.r4w4cs`): 4.39 -> 3.85 µs per
    /// graph-replayed b = 1 step on the H200 (docs/kernels/decode.md, "Graph
    /// replay"; the other knobs did not move it).
    fn small_batch_tiling(_dtype: DType) -> BlockTiling {
        BlockTiling::default().with_streaming_hints()
    }

    fn batch(d: &Mamba2StepDims) -> usize {
        d.batch
    }

    /// Any of f32, f16, bf16 (v6: a 16-bit state read in 16-byte vectors of 8).
    fn with_state_dtype(tiling: BlockTiling, state_dtype: DType) -> BlockTiling {
        tiling.with_state_dtype(state_dtype)
    }

    fn state_shape(d: &Mamba2StepDims) -> String {
        format!(
            "(cache_rows={}, H={}, P={}, N={})",
            d.cache_rows, d.heads, d.head_dim, d.d_state
        )
    }

    /// The tilings `gpu_decode_bench` and `bench_decode_graph --tilings` compare
    /// (the GPU tests verify each one): the default, less and more work in flight
    /// per thread, and cache hints; then the b = 1 candidates (issue 16), all
    /// with hints: half-size blocks (twice the blocks, spread over more SMs),
    /// 8 rows a lane, and a row over 8 lanes instead of 32 (16 floats a lane,
    /// a 3-step shuffle tree for C . h instead of 5) with 1 or 2 rows a lane;
    /// then the small-batch tiling as a programmatic dependent launch; last
    /// (v6), the state stored in bf16 with the small-batch and the default
    /// tilings, in f16 with the small-batch one, and in bf16 with 2 rows a lane
    /// (the f32 state's block count at b = 1).
    fn candidates() -> Vec<BlockTiling> {
        let base = BlockTiling::default();
        let rows = |rows| BlockTiling { rows, ..base };
        let hints = base.with_streaming_hints();
        vec![
            base,
            rows(1),
            rows(2),
            rows(8),
            BlockTiling { warps: 8, ..base },
            hints,
            BlockTiling { warps: 2, ..hints },
            BlockTiling { rows: 8, ..hints },
            BlockTiling {
                rows: 1,
                max_lanes: 8,
                ..hints
            },
            BlockTiling {
                rows: 2,
                warps: 2,
                max_lanes: 8,
                ..hints
            },
            // Programmatic dependent launch: the next step's launch and block
            // start overlap this one's tail (the graph's node-to-node gap).
            BlockTiling {
                dependent_launch: true,
                ..hints
            },
            // v6: half the state bytes (issue 16); f32 arithmetic either way.
            hints.with_state_dtype(DType::Bf16),
            base.with_state_dtype(DType::Bf16),
            hints.with_state_dtype(DType::F16),
            // 2 rows a lane: 320 blocks at b = 1 as with the f32 state (4 rows
            // of 16-bit rows give 160, unevenly spread over 132 SMs).
            BlockTiling { rows: 2, ..hints }.with_state_dtype(DType::Bf16),
        ]
    }

    fn geometry(d_state: usize, _dtype: DType, tiling: BlockTiling) -> Result<Geometry> {
        BlockGeometry::new(d_state, "rows_per_slot", tiling)
    }

    /// `kernels/mamba2/decode.cu` reads the shared defines only.
    fn block(g: &Geometry) -> &BlockGeometry {
        g
    }

    const ROWS_DEFINE: &'static str = "ROWS";
    const ROWS_TAG: char = 'r';

    fn validate(d: &Mamba2StepDims, o: &StepOptions, lens: &StepLens, state: usize) -> Result<()> {
        shared::check_fits_i32("head_dim", "P", d.head_dim, "row index")?;
        d.check(lens, o.d_per_head_dim, o.dt_limit, state)
    }

    fn launch_config(d: &Mamba2StepDims, g: &Geometry) -> Result<LaunchConfig> {
        let (batch, heads) = (d.batch, d.heads);
        let tiles = d.head_dim.div_ceil(rows_per_block(g));
        let blocks = batch.checked_mul(heads).and_then(|v| v.checked_mul(tiles));
        shared::grid(blocks, g.warps, || {
            format!("b = {batch} x H = {heads} x {tiles} row tiles needs more than 2^31 - 1 blocks")
        })
    }

    fn raw_args(d: &Mamba2StepDims, o: &StepOptions, ptrs: StepPointers) -> RawDecodeArgs {
        let sizes = [d.batch, d.heads, d.head_dim, d.groups, d.cache_rows];
        RawDecodeArgs {
            ptrs,
            sizes: sizes.map(|v| v as i64),
            dt_limit: [o.dt_limit.0, o.dt_limit.1],
            flags: [o.dt_softplus, o.d_per_head_dim].map(i32::from),
        }
    }

    fn options<T>(p: &Mamba2StepParams<'_, T>) -> StepOptions {
        StepOptions {
            d_per_head_dim: matches!(p.d, Some(DSkip::PerHeadDim(_))),
            dt_softplus: p.dt_softplus,
            dt_limit: p.dt_limit,
        }
    }
}

/// The kernel variant (source, entry, defines) for one element type, `N` and tiling.
pub fn decode_variant(dtype: DType, d_state: usize, tiling: DecodeTiling) -> Result<KernelVariant> {
    shared::decode_variant::<Mamba2Decode>(dtype, d_state, tiling)
}

/// The variants the crate launches by default (the reference decode workload has
/// N = 128; N = 64 is the other common size), for the
/// resources/budget command: the f32 state, then the same tilings with the
/// state stored in bf16 and in f16 (v6, chosen by the caller).
pub fn decode_kernel_variants() -> Vec<KernelVariant> {
    let mut variants = shared::default_variants::<Mamba2Decode>(&[128, 64]);
    for state in [DType::Bf16, DType::F16] {
        for dtype in [DType::F32, DType::F16, DType::Bf16] {
            for n in [128, 64] {
                let large = Mamba2Decode::default_tiling(dtype);
                let small = Mamba2Decode::small_batch_tiling(dtype);
                for t in [large, small] {
                    variants.push(
                        decode_variant(dtype, n, t.with_state_dtype(state))
                            .expect("the default tilings are valid for every listed N"),
                    );
                }
            }
        }
    }
    variants
}

/// The decode kernel compiled for element type `T`, state size `N` and one tiling.
pub type DecodeKernel<T> = shared::DecodeKernel<Mamba2Decode, T>;

/// Device-resident inputs of one decode step; shapes as in [`Mamba2StepParams`]:
/// x and z `(b, H, P)`, dt `(b, H)`, A and dt_bias `(H)`, B and C `(b, G, N)`, D
/// `(H, P)` with `d_per_head_dim` (else `(H)`), the index list `(b)` (negative
/// entries are padding).
pub type DeviceStepArgs<'a, T> = shared::StepArgs<'a, Mamba2Decode, T>;

/// The switches of a Mamba-2 step.
#[derive(Clone, Copy, Debug)]
pub struct StepOptions {
    /// `D` is `(H, P)`, else `(H)`.
    pub d_per_head_dim: bool,
    /// Softplus is applied to `dt + dt_bias` before the clamp.
    pub dt_softplus: bool,
    /// The `(min, max)` clamp of the step size.
    pub dt_limit: (f32, f32),
}

/// Kernel arguments as the kernel sees them (`Mamba2DecodeArgs` in the .cu file):
/// the pointers every decode kernel takes (absent options null), the sizes `(b, H,
/// P, G, cache_rows)`, the step-size clamp `(min, max)` and the switches
/// `(dt_softplus, d_per_head_dim)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecodeArgs {
    ptrs: StepPointers,
    sizes: [i64; 5],
    dt_limit: [f32; 2],
    flags: [i32; 2],
}

// Mamba2DecodeArgs: 11 pointers, 5 i64, 4 x 4 bytes.
ssm_gpu::decode_args_abi!(RawDecodeArgs, 144, sizes @ 88, dt_limit @ 128, flags @ 136);

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry points, the f64 refusal, and every tiling the bench may time, for
    /// every element type and a spread of N, compiled without local memory.
    #[test]
    fn every_variant_compiles_without_spills() {
        shared::assert_family_compiles::<Mamba2Decode>(&[128, 256, 7]);
    }

    #[test]
    fn labels_name_non_default_tilings() {
        let defines = "D_STATE VEC TPR ROWS WARPS STREAM_STATE MIN_BLOCKS";
        let base = DecodeTiling::default();
        shared::assert_variant_names::<Mamba2Decode>(
            DType::F32,
            128,
            base,
            "mamba2.decode.f32.n128",
            defines,
        );
        let t = DecodeTiling {
            warps: 8,
            streaming_hints: true,
            ..base
        };
        // 7 floats a lane: 4 rows in flight.
        shared::assert_variant_names::<Mamba2Decode>(
            DType::F32,
            7,
            t,
            "mamba2.decode.f32.n7.r4w8cs",
            defines,
        );
        // 8 lanes a row of 128 floats: 16 floats a lane, 2 rows in flight.
        let t = DecodeTiling {
            rows: 2,
            warps: 2,
            max_lanes: 8,
            ..base.with_streaming_hints()
        };
        shared::assert_variant_names::<Mamba2Decode>(
            DType::Bf16,
            128,
            t,
            "mamba2.decode.bf16.n128.r2w2csl8",
            defines,
        );
        let t = DecodeTiling {
            dependent_launch: true,
            ..base.with_streaming_hints()
        };
        shared::assert_variant_names::<Mamba2Decode>(
            DType::Bf16,
            128,
            t,
            "mamba2.decode.bf16.n128.r4w4cspdl",
            "D_STATE VEC TPR ROWS WARPS STREAM_STATE MIN_BLOCKS DEPENDENT_LAUNCH",
        );
        // v6: the state stored in bf16 / f16: `.s<dtype>` after the block shape
        // (none for the default block), the define last.
        let with_state = "D_STATE VEC TPR ROWS WARPS STREAM_STATE MIN_BLOCKS DECODE_STATE_DTYPE";
        shared::assert_variant_names::<Mamba2Decode>(
            DType::Bf16,
            128,
            base.with_streaming_hints().with_state_dtype(DType::Bf16),
            "mamba2.decode.bf16.n128.r4w4cs.sbf16",
            with_state,
        );
        shared::assert_variant_names::<Mamba2Decode>(
            DType::F32,
            128,
            base.with_state_dtype(DType::Bf16),
            "mamba2.decode.f32.n128.sbf16",
            with_state,
        );
        shared::assert_variant_names::<Mamba2Decode>(
            DType::F16,
            64,
            base.with_state_dtype(DType::F16),
            "mamba2.decode.f16.n64.sf16",
            with_state,
        );
        let v = decode_variant(DType::Bf16, 128, base.with_state_dtype(DType::Bf16)).unwrap();
        assert!(
            v.defines.contains(&("VEC", "8".to_string())),
            "{:?}",
            v.defines
        );
        assert!(
            v.defines.contains(&("TPR", "16".to_string())),
            "{:?}",
            v.defines
        );
        assert!(matches!(
            decode_variant(DType::Bf16, 128, base.with_state_dtype(DType::F64)),
            Err(ssm_core::SsmError::Dimension {
                arg: "state_dtype",
                ..
            })
        ));
        // A lane cap at or above the widest layout changes nothing but the tiling.
        let t = DecodeTiling {
            max_lanes: 32,
            ..base
        };
        shared::assert_variant_names::<Mamba2Decode>(
            DType::Bf16,
            128,
            t,
            "mamba2.decode.bf16.n128.r4w4",
            defines,
        );
    }

    #[test]
    fn small_batches_launch_the_streaming_tiling() {
        let small = <Mamba2Decode as DecodeFamily>::tiling_for_batch(DType::Bf16, 1);
        assert!(small.streaming_hints);
        assert_eq!(
            <Mamba2Decode as DecodeFamily>::tiling_for_batch(DType::Bf16, shared::SMALL_BATCH),
            small
        );
        let large = <Mamba2Decode as DecodeFamily>::tiling_for_batch(DType::Bf16, 9);
        assert_eq!(large, DecodeTiling::default());
        // Both are compiled for the budget check.
        let labels: Vec<String> = decode_kernel_variants()
            .into_iter()
            .map(|v| v.label)
            .collect();
        assert!(
            labels.contains(&"mamba2.decode.bf16.n128".to_string()),
            "{labels:?}"
        );
        assert!(
            labels.contains(&"mamba2.decode.bf16.n128.r4w4cs".to_string()),
            "{labels:?}"
        );
        // Every candidate is a distinct kernel.
        let c = <Mamba2Decode as DecodeFamily>::candidates();
        let mut labels: Vec<String> = c
            .iter()
            .map(|&t| decode_variant(DType::Bf16, 128, t).unwrap().label)
            .collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), c.len(), "{labels:?}");
        assert!(c.contains(&small));
    }
}
