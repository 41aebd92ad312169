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

use ssm_core::decode::{Mamba2StepDims, Mamba2StepParams, StepInputs};
use ssm_core::mamba2::DSkip;
use ssm_core::{DType, Result};
use ssm_gpu::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig};
use ssm_gpu::decode::{
    self as shared, BlockGeometry, DecodeFamily, DeviceStepInputs, DeviceStepRefs, StepPointers,
};
use ssm_gpu::{kernel_source, KernelSource, KernelVariant};

/// The entry points (`decode_step_cuda::<Mamba2Decode, T>` from host slices,
/// `launch_decode_step` on device buffers).
pub use ssm_gpu::decode::{decode_step_cuda, launch_decode_step};

/// The kernel source, embedded at build time.
pub static DECODE_SOURCE: KernelSource = kernel_source!("mamba2/decode.cu");

/// The Mamba-2 decode family ([`DecodeFamily`]).
#[derive(Clone, Copy, Debug)]
pub struct Mamba2Decode;

/// The decode kernel compiled for element type `T`, state size `N` and one tiling.
pub type DecodeKernel<T> = shared::DecodeKernel<Mamba2Decode, T>;

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

impl DecodeTiling {
    /// The tiling the crate launches for inputs of `dtype`: the default for every
    /// type (the Mamba-1 kernel is the one that tunes per type).
    pub fn for_dtype(_dtype: DType) -> Self {
        DecodeTiling::default()
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

/// Everything that decides one compiled form of the kernel and its launch shape:
/// the shared block shape alone (its rows are rows of a head's `P x N` state, per
/// lane-slot).
pub type Geometry = BlockGeometry;

fn geometry(d_state: usize, tiling: DecodeTiling) -> Result<Geometry> {
    BlockGeometry::new(
        d_state,
        "rows_per_slot",
        tiling.rows_per_slot,
        tiling.warps,
        tiling.streaming_hints,
        tiling.min_blocks_per_sm,
    )
}

/// Rows of one head's `P x N` state that one block updates.
fn rows_per_block(g: &Geometry) -> usize {
    g.slots_per_block() * g.rows
}

impl DecodeFamily for Mamba2Decode {
    ssm_gpu::decode_family_names!(
        "mamba2",
        "mamba2-ssd CUDA decode",
        DECODE_SOURCE,
        DecodeTiling
    );
    // A is one scalar per head.
    const VECTOR_A: bool = false;

    type Geometry = Geometry;
    type Raw = RawDecodeArgs;
    type Args<'v, T: 'v> = DeviceStepArgs<'v, T>;
    type Params<'a, T: 'a> = Mamba2StepParams<'a, T>;

    fn geometry(d_state: usize, _dtype: DType, tiling: DecodeTiling) -> Result<Geometry> {
        geometry(d_state, tiling)
    }

    /// `kernels/mamba2/decode.cu` reads the shared defines only.
    fn block(g: &Geometry) -> &BlockGeometry {
        g
    }

    const ROWS_DEFINE: &'static str = "ROWS";
    const ROWS_TAG: char = 'r';

    fn inputs<'s, 'v: 's, T: 'v>(args: &'s DeviceStepArgs<'v, T>) -> DeviceStepRefs<'s, 'v, T> {
        StepInputs {
            x: &args.x,
            dt: &args.dt,
            a: &args.a,
            b: &args.b,
            c: &args.c,
            d: args.d.as_ref().map(DeviceDSkip::view),
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
        shared::check_fits_i32("head_dim", "P", args.head_dim, "row index")?;
        shared::check_kernel_state(g.d_state, args.d_state)?;
        let lens = Self::inputs(args).map(|v| v.len(), |v| v.len(), |v| v.len());
        let per_head_dim = matches!(args.d, Some(DeviceDSkip::PerHeadDim(_)));
        let dims = args.dims();
        dims.check(&lens, per_head_dim, args.dt_limit, state_len)?;
        dims.check_out(out_len)
    }

    fn launch_config<T>(args: &DeviceStepArgs<'_, T>, g: &Geometry) -> Result<LaunchConfig> {
        let (batch, heads) = (args.batch, args.heads);
        let tiles = args.head_dim.div_ceil(rows_per_block(g));
        let blocks = batch.checked_mul(heads).and_then(|v| v.checked_mul(tiles));
        shared::grid(blocks, g.warps, || {
            format!("b = {batch} x H = {heads} x {tiles} row tiles needs more than 2^31 - 1 blocks")
        })
    }

    fn raw_args<T>(args: &DeviceStepArgs<'_, T>, ptrs: StepPointers) -> RawDecodeArgs {
        RawDecodeArgs {
            ptrs,
            batch: args.batch as i64,
            heads: args.heads as i64,
            head_dim: args.head_dim as i64,
            groups: args.groups as i64,
            cache_rows: args.cache_rows as i64,
            dt_min: args.dt_limit.0,
            dt_max: args.dt_limit.1,
            dt_softplus: i32::from(args.dt_softplus),
            d_per_head_dim: i32::from(matches!(args.d, Some(DeviceDSkip::PerHeadDim(_)))),
        }
    }

    fn device_args<'v, T>(
        p: &Mamba2StepParams<'_, T>,
        v: DeviceStepInputs<'v, T>,
    ) -> DeviceStepArgs<'v, T> {
        DeviceStepArgs {
            batch: p.batch,
            heads: p.heads,
            head_dim: p.head_dim,
            d_state: p.d_state,
            groups: p.groups,
            cache_rows: p.cache_rows,
            x: v.x,
            dt: v.dt,
            a: v.a,
            b: v.b,
            c: v.c,
            d: v.d.map(|d| match p.d {
                Some(DSkip::PerHeadDim(_)) => DeviceDSkip::PerHeadDim(d),
                _ => DeviceDSkip::PerHead(d),
            }),
            z: v.z,
            dt_bias: v.dt_bias,
            dt_softplus: p.dt_softplus,
            dt_limit: p.dt_limit,
            state_batch_indices: v.state_batch_indices,
        }
    }
}

/// The kernel variant (source, entry, defines) for one element type, `N` and tiling.
pub fn decode_variant(dtype: DType, d_state: usize, tiling: DecodeTiling) -> Result<KernelVariant> {
    shared::decode_variant::<Mamba2Decode>(dtype, d_state, tiling)
}

/// The variants the crate launches by default (the reference decode workload has
/// N = 128; N = 64 is the other common size), for the resources/budget command.
pub fn decode_kernel_variants() -> Vec<KernelVariant> {
    [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .flat_map(|dtype| [128, 64].map(|n| (dtype, n)))
        .map(|(dtype, n)| {
            decode_variant(dtype, n, DecodeTiling::for_dtype(dtype))
                .expect("the default tiling is valid for every listed N")
        })
        .collect()
}

/// `D` on the device: per head `(H)` or per head and head-dimension index `(H, P)`.
pub enum DeviceDSkip<'a> {
    PerHead(CudaView<'a, f32>),
    PerHeadDim(CudaView<'a, f32>),
}

impl<'a> DeviceDSkip<'a> {
    fn view(&self) -> &CudaView<'a, f32> {
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
    pub fn dims(&self) -> Mamba2StepDims {
        Mamba2StepDims {
            batch: self.batch,
            heads: self.heads,
            head_dim: self.head_dim,
            d_state: self.d_state,
            groups: self.groups,
            cache_rows: self.cache_rows,
        }
    }
}

/// Kernel arguments as the kernel sees them (`Mamba2DecodeArgs` in the .cu file):
/// the pointers every decode kernel takes (absent options null), then the sizes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RawDecodeArgs {
    ptrs: StepPointers,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_args_match_the_kernel_struct() {
        // Offsets the kernel reads (Mamba2DecodeArgs): 11 pointers, 5 i64, 4 x 4 bytes.
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, batch), 88);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, dt_min), 128);
        assert_eq!(std::mem::offset_of!(RawDecodeArgs, d_per_head_dim), 140);
    }

    #[test]
    fn labels_name_non_default_tilings() {
        let v = decode_variant(DType::F32, 128, DecodeTiling::default()).unwrap();
        assert_eq!(v.label, "mamba2.decode.f32.n128");
        let t = DecodeTiling {
            warps: 8,
            streaming_hints: true,
            ..DecodeTiling::default()
        };
        let v = decode_variant(DType::F32, 7, t).unwrap();
        // 7 floats a lane: 4 rows in flight.
        assert_eq!(v.label, "mamba2.decode.f32.n7.r4w8cs");
        let names: Vec<&str> = v.defines.iter().map(|d| d.0).collect();
        assert_eq!(
            names,
            [
                "D_STATE",
                "VEC",
                "TPR",
                "ROWS",
                "WARPS",
                "STREAM_STATE",
                "MIN_BLOCKS"
            ]
        );
    }

    /// The entry points, the f64 refusal, and every tiling the bench may time, for
    /// every element type and a spread of N, compiled without local memory.
    #[test]
    fn every_variant_compiles_without_spills() {
        shared::assert_family_compiles::<Mamba2Decode>(&[128, 256, 7]);
    }
}
