//! The decode-step launcher of both families, written once (kernels:
//! `kernels/{mamba1,mamba2}/decode.cu`, design notes: `docs/kernels/decode.md`).
//!
//! A family (`mamba1_scan::decode_cuda::Mamba1Decode`,
//! `mamba2_ssd::decode_cuda::Mamba2Decode`) implements [`DecodeFamily`]: its
//! kernel source and entry points, its tiling knobs and the compiled geometry they
//! give, its `#[repr(C)]` argument struct, its device argument struct and how its
//! shapes are checked. Everything else is here: the state layout over the lanes,
//! the block-shape checks, kernel compilation through the runtime's cache
//! ([`DecodeKernel`]), the device pointers of the inputs and the guards that keep
//! cudarc's stream ordering, the alignment checks, the one `unsafe` launch
//! ([`launch_decode_step`]) and the host-slice entry point ([`decode_step_cuda`]:
//! upload, launch into a poisoned output, download, state copied back).
//!
//! The pure parts shared with the CPU paths (the buffers by role,
//! [`ssm_core::decode::StepInputs`], and each family's dims and their validation)
//! are in `ssm_core::decode`.

use std::fmt::Debug;
use std::marker::PhantomData;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};
use ssm_core::decode::{StepDims, StepInputs, StepLens, StepParams};
use ssm_core::shape::check_nonzero;
use ssm_core::{DType, Result, SsmError, StepOutput};

use crate::{DeviceElement, Gpu, Kernel, KernelSource, KernelVariant};

/// Device views of one step's inputs, by role.
pub type DeviceStepInputs<'v, T> =
    StepInputs<CudaView<'v, T>, CudaView<'v, f32>, CudaView<'v, i64>>;

/// Device pointers of one step's buffers, 0 for an absent option: the first 88
/// bytes of both kernels' argument structs (`Mamba1DecodeArgs`, `Mamba2DecodeArgs`
/// open with these eleven pointers in this order), so each family's `#[repr(C)]`
/// argument struct starts with this one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StepPointers {
    /// `x`.
    pub x: u64,
    /// `dt`.
    pub dt: u64,
    /// `A`.
    pub a: u64,
    /// `B`.
    pub b: u64,
    /// `C`.
    pub c: u64,
    /// `D`, or 0.
    pub d: u64,
    /// `z`, or 0.
    pub z: u64,
    /// `dt_bias`, or 0.
    pub dt_bias: u64,
    /// `state_batch_indices`, or 0.
    pub state_batch_indices: u64,
    /// The state cache (f32, or the 16-bit type of [`BlockTiling::state_dtype`]),
    /// read and written in place.
    pub state: u64,
    /// The output, written.
    pub out: u64,
}

const _: () = assert!(std::mem::size_of::<StepPointers>() == 88);

/// How the `N` states of one state row (a Mamba-1 channel, a row of a
/// Mamba-2 head's `P x N` state) are spread over the lanes of a warp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLayout {
    /// State elements per vector access: 4, 2 or 1 (the largest dividing `N`)
    /// for an f32 state, up to 8 for a 16-bit one (16 bytes either way).
    pub vec: usize,
    /// Lanes sharing one row (the kernels' `TPR`): the largest power of two (at
    /// most 32) dividing `N / vec`.
    pub lanes: usize,
}

impl StateLayout {
    /// The layout for a state of `d_state` floats: the widest vector dividing
    /// it, then the most lanes (a power of two up to 32) sharing a row.
    pub fn for_state(d_state: usize) -> Self {
        Self::for_state_lanes(d_state, 32)
    }

    /// [`StateLayout::for_state`] with at most `max_lanes` (a power of two)
    /// lanes sharing a row: fewer lanes hold more vectors each, and the sum over a
    /// row's lanes is a shorter shuffle tree (log2 of the lanes).
    pub fn for_state_lanes(d_state: usize, max_lanes: usize) -> Self {
        Self::for_state_elems(d_state, max_lanes, 4)
    }

    /// [`StateLayout::for_state_lanes`] for a state stored in elements of
    /// `elem_bytes` bytes (4: f32, 2: f16 / bf16): the widest access is 16
    /// bytes, so a 16-bit state takes vectors of up to 8 elements.
    pub fn for_state_elems(d_state: usize, max_lanes: usize, elem_bytes: usize) -> Self {
        let widest = (16 / elem_bytes.clamp(1, 16)).max(1);
        let vec = [8, 4, 2, 1]
            .into_iter()
            .filter(|&v| v <= widest)
            .find(|v| d_state % v == 0)
            .unwrap_or(1);
        let vectors = d_state / vec;
        let mut lanes = 1;
        while lanes < max_lanes.min(32) && vectors % (lanes * 2) == 0 {
            lanes *= 2;
        }
        StateLayout { vec, lanes }
    }

    /// State floats one lane holds per row.
    pub fn elems_per_thread(&self, d_state: usize) -> usize {
        d_state / self.lanes
    }

    /// Rows each lane keeps in flight: `rows`, capped so that a thread holds at
    /// most [`MAX_STATE_REGS`] state floats of `N = d_state` (at least one row).
    pub fn cap_rows(&self, d_state: usize, rows: usize) -> usize {
        rows.min((MAX_STATE_REGS / self.elems_per_thread(d_state)).max(1))
    }

    /// The defines of `kernels/common/decode_state.cuh` and the shared geometry
    /// of both kernels (`D_STATE`, `VEC`, `TPR`).
    pub fn defines(&self, d_state: usize) -> Vec<(&'static str, String)> {
        vec![
            ("D_STATE", d_state.to_string()),
            ("VEC", self.vec.to_string()),
            ("TPR", self.lanes.to_string()),
        ]
    }
}

/// Most state floats a thread keeps in registers (the rows per thread are capped
/// to fit).
pub const MAX_STATE_REGS: usize = 32;

/// The block-shape knobs both families share, checked the same way: `rows` (named
/// `rows_arg`) state rows per thread, `warps` per block, `min_blocks_per_sm`
/// blocks per SM that ptxas must leave room for.
pub fn check_block(
    d_state: usize,
    rows_arg: &'static str,
    rows: usize,
    warps: usize,
    min_blocks_per_sm: usize,
) -> Result<()> {
    check_nonzero("d_state", d_state)?;
    check_nonzero(rows_arg, rows)?;
    if !(1..=32).contains(&warps) {
        return Err(SsmError::Dimension {
            arg: "warps",
            reason: format!("{warps} warps per block; expected 1 to 32"),
        });
    }
    // An SM holds at most 2048 threads; asking ptxas for room for more blocks
    // than fit would only make it fail.
    if min_blocks_per_sm * warps * 32 > 2048 {
        return Err(SsmError::Dimension {
            arg: "min_blocks_per_sm",
            reason: format!(
                "{min_blocks_per_sm} blocks of {} threads do not fit in one SM (2048 threads)",
                warps * 32
            ),
        });
    }
    Ok(())
}

/// The block-shape knobs both families' tilings share (each set compiles into its
/// own module). The default is Mamba-2's v2 (docs/kernels/decode.md): 4 rows x
/// 16 B in flight per thread, 4 warps, no cache hints, no register cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockTiling {
    /// State rows (of N floats) each lane-slot updates, their loads all in flight
    /// together (Mamba-1: batch rows of a channel, `A` read once for all of them;
    /// Mamba-2: rows of a head's `P x N` state). Capped so that a thread holds at
    /// most [`MAX_STATE_REGS`] state floats.
    pub rows: usize,
    /// Warps per block.
    pub warps: usize,
    /// Evict-first cache hints on the state loads and stores.
    pub streaming_hints: bool,
    /// Blocks per SM that ptxas must leave registers for (`__launch_bounds__`'s
    /// second argument); 0 leaves the register count to ptxas.
    pub min_blocks_per_sm: usize,
    /// At most this many lanes share a state row (a power of two up to 32); 0:
    /// the widest layout [`StateLayout::for_state`] gives.
    pub max_lanes: usize,
    /// Programmatic dependent launch (sm_90+): the launch may start while the
    /// stream's previous kernel is still running, the kernel waits for it
    /// (`griddepcontrol.wait`) before its first global load, and it lets the
    /// stream's next kernel start early (`griddepcontrol.launch_dependents`). On
    /// older devices the launch is an ordinary one.
    pub dependent_launch: bool,
    /// The element type the state cache is stored in (v6,
    /// docs/kernels/decode.md): `F32` (the default, unchanged), or `Bf16` /
    /// `F16` (widened to f32 on load, rounded to nearest even on store, f32
    /// arithmetic; half the state bytes). Mamba-2 only; the state buffer passed
    /// to the launch must have this element type (checked).
    pub state_dtype: DType,
}

impl Default for BlockTiling {
    fn default() -> Self {
        BlockTiling {
            rows: 4,
            warps: 4,
            streaming_hints: false,
            min_blocks_per_sm: 0,
            max_lanes: 0,
            dependent_launch: false,
            state_dtype: DType::F32,
        }
    }
}

impl BlockTiling {
    /// The same block shape with evict-first hints on the state.
    pub fn with_streaming_hints(self) -> Self {
        BlockTiling {
            streaming_hints: true,
            ..self
        }
    }

    /// The same block shape with the state cache stored as `state_dtype`.
    pub fn with_state_dtype(self, state_dtype: DType) -> Self {
        BlockTiling {
            state_dtype,
            ..self
        }
    }
}

/// The value of the kernels' `DECODE_STATE_DTYPE` define for a state stored
/// as `dtype` (0 f32, 1 f16, 2 bf16), or the error naming `state_dtype` (f64).
pub fn state_dtype_define(dtype: DType) -> Result<u8> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::Bf16 => Ok(2),
        DType::F64 => Err(SsmError::Dimension {
            arg: "state_dtype",
            reason: "an f64 state cache; expected f32, f16 or bf16".into(),
        }),
    }
}

/// The state buffer's element type `got` against the type the kernel stores
/// the state in (`kernel`): `Err(Dimension)` naming `state`, with the shape
/// `shape` the other arguments imply, when they differ.
pub fn check_state_dtype(kernel: DType, got: DType, shape: &str) -> Result<()> {
    if kernel != got {
        return Err(SsmError::Dimension {
            arg: "state",
            reason: format!(
                "the kernel stores the state cache as {kernel}, the buffer holds {got} \
                 elements (expected a {kernel} buffer of shape {shape}; compile the kernel \
                 with `state_dtype: {got}` to use this one)"
            ),
        });
    }
    Ok(())
}

/// Batches up to this size launch a family's small-batch tiling
/// ([`DecodeFamily::tiling_for_batch`]): there the step is one trip of a few MB
/// of state through HBM plus the launch, and the evict-first state hints took
/// 0.3-0.5 µs off a graph-replayed b = 1 step on the H200 (docs/kernels/decode.md,
/// "Graph replay"); above it the defaults are the measured bandwidth tilings.
pub const SMALL_BATCH: usize = 8;

/// The compiled block shape both families share: `N` and how a state row is
/// spread over lanes, the state rows each lane-slot keeps in flight (capped to the
/// register budget), warps per block, cache hints and the blocks per SM that
/// ptxas must leave registers for. A family's geometry is this plus its own knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockGeometry {
    /// `N`, the floats in one state row.
    pub d_state: usize,
    /// How a state row is spread over a warp's lanes.
    pub layout: StateLayout,
    /// State rows per lane-slot after capping (Mamba-1: batch rows of a channel;
    /// Mamba-2: rows of a head's `P x N` state).
    pub rows: usize,
    /// Warps per block.
    pub warps: usize,
    /// Evict-first cache hints on the state loads and stores.
    pub streaming_hints: bool,
    /// Blocks per SM ptxas must leave registers for (0: no cap).
    pub min_blocks_per_sm: usize,
    /// Launched as a programmatic dependent launch (see
    /// [`BlockTiling::dependent_launch`]).
    pub dependent_launch: bool,
    /// The state cache's element type ([`BlockTiling::state_dtype`]).
    pub state_dtype: DType,
}

impl BlockGeometry {
    /// The knobs checked by [`check_block`] (`rows_arg` names `rows` in the
    /// error), then `rows` capped so that a thread holds at most
    /// [`MAX_STATE_REGS`] state floats.
    pub fn new(d_state: usize, rows_arg: &'static str, t: BlockTiling) -> Result<Self> {
        check_block(d_state, rows_arg, t.rows, t.warps, t.min_blocks_per_sm)?;
        if t.max_lanes != 0 && !(t.max_lanes.is_power_of_two() && t.max_lanes <= 32) {
            return Err(SsmError::Dimension {
                arg: "max_lanes",
                reason: format!(
                    "{} lanes per state row; expected 0 (widest) or a power of two up to 32",
                    t.max_lanes
                ),
            });
        }
        state_dtype_define(t.state_dtype)?;
        let elem_bytes = t.state_dtype.size_bytes();
        let layout = match t.max_lanes {
            0 => StateLayout::for_state_elems(d_state, 32, elem_bytes),
            m => StateLayout::for_state_elems(d_state, m, elem_bytes),
        };
        Ok(BlockGeometry {
            d_state,
            layout,
            rows: layout.cap_rows(d_state, t.rows),
            warps: t.warps,
            streaming_hints: t.streaming_hints,
            min_blocks_per_sm: t.min_blocks_per_sm,
            dependent_launch: t.dependent_launch,
            state_dtype: t.state_dtype,
        })
    }

    /// Lane-slots of one block (each a Mamba-1 channel or a Mamba-2 state row).
    pub fn slots_per_block(&self) -> usize {
        self.warps * (32 / self.layout.lanes)
    }

    /// The defines both kernels read from `kernels/common/decode_state.cuh`, in
    /// this order: the layout (`D_STATE`, `VEC`, `TPR`), the rows (named
    /// `rows_define`), warps per block, cache hints, blocks per SM, and
    /// `DEPENDENT_LAUNCH` and `DECODE_STATE_DTYPE` only when set (the other
    /// variants keep their defines, so an f32 state compiles as before).
    pub fn defines(&self, rows_define: &'static str) -> Vec<(&'static str, String)> {
        let mut defines = self.layout.defines(self.d_state);
        defines.push((rows_define, self.rows.to_string()));
        defines.push(("WARPS", self.warps.to_string()));
        defines.push(("STREAM_STATE", u8::from(self.streaming_hints).to_string()));
        defines.push(("MIN_BLOCKS", self.min_blocks_per_sm.max(1).to_string()));
        if self.dependent_launch {
            defines.push(("DEPENDENT_LAUNCH", "1".to_string()));
        }
        if self.state_dtype != DType::F32 {
            let v = state_dtype_define(self.state_dtype).expect("checked in BlockGeometry::new");
            defines.push(("DECODE_STATE_DTYPE", v.to_string()));
        }
        defines
    }

    /// What a non-default block shape appends to a label:
    /// `.<rows_tag><rows>w<warps>`, `cs` with cache hints, `m<blocks>` with a
    /// register cap, `l<lanes>` with fewer lanes per row than the widest layout,
    /// `pdl` for a programmatic dependent launch.
    pub fn label(&self, rows_tag: char) -> String {
        let mut label = format!(
            ".{rows_tag}{}w{}{}",
            self.rows,
            self.warps,
            if self.streaming_hints { "cs" } else { "" }
        );
        if self.min_blocks_per_sm > 0 {
            label.push_str(&format!("m{}", self.min_blocks_per_sm));
        }
        let widest = StateLayout::for_state_elems(self.d_state, 32, self.state_dtype.size_bytes());
        if self.layout != widest {
            label.push_str(&format!("l{}", self.layout.lanes));
        }
        if self.dependent_launch {
            label.push_str("pdl");
        }
        label
    }
}

/// The arguments' `N` against the `N` the kernel was compiled for.
pub fn check_kernel_state(kernel: usize, args: usize) -> Result<()> {
    if kernel != args {
        return Err(SsmError::Dimension {
            arg: "d_state",
            reason: format!(
                "the kernel was compiled for N = {kernel}, the arguments have N = {args}"
            ),
        });
    }
    Ok(())
}

/// A size the kernel indexes in 32 bits: `arg = value` must stay below 2^31
/// (`what` says what the kernel indexes with it).
pub fn check_fits_i32(arg: &'static str, symbol: &str, value: usize, what: &str) -> Result<()> {
    if value > i32::MAX as usize {
        return Err(SsmError::Dimension {
            arg,
            reason: format!("{symbol} = {value} does not fit the kernel's 32-bit {what}"),
        });
    }
    Ok(())
}

/// A grid of `blocks` blocks of `warps` warps, refused past 2^31 - 1 blocks (the
/// kernels index blocks in 32 bits); `what` describes the count for the error.
pub fn grid(
    blocks: Option<usize>,
    warps: usize,
    what: impl FnOnce() -> String,
) -> Result<LaunchConfig> {
    let blocks = blocks
        .filter(|&v| v <= i32::MAX as usize)
        .ok_or_else(|| SsmError::Dimension {
            arg: "batch",
            reason: what(),
        })?;
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (32 * warps as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The family-specific parts of a decode launcher.
pub trait DecodeFamily: Sized + 'static {
    /// `mamba1` / `mamba2`: the budget labels' prefix (`<NAME>.decode.<dtype>.n<N>`).
    const NAME: &'static str;
    /// Names the implementation in [`SsmError::Unsupported`].
    const IMPLEMENTATION: &'static str;
    /// The `extern "C"` entry points for f32, f16 and bf16 inputs.
    const ENTRIES: [&'static str; 3];
    /// Whether the kernel reads `A` with vector accesses (then `A` must be aligned
    /// like the state).
    const VECTOR_A: bool;

    /// The tiling knobs (each set compiles into its own module).
    type Tiling: Copy + Debug + PartialEq + Default;
    /// Everything that decides one compiled form and its launch shape.
    type Geometry: Copy + Debug;
    /// The argument struct the kernel takes by value (`#[repr(C)]`, size
    /// asserted on both sides).
    type Raw: DeviceRepr + Copy;
    /// The sizes of one step (`ssm_core::decode`'s dims of the family).
    type Dims: StepDims + Copy;
    /// The step's switches (softplus, the step-size clamp, ...).
    type Options: Copy;
    /// Host inputs of one step (the `ssm_core::decode` parameter struct).
    type Params<'a, T: 'a>: StepParams<'a, T, Dims = Self::Dims>;

    /// The kernel source.
    fn source() -> KernelSource;
    /// The tiling launched for inputs of `dtype` when none is given, at batches
    /// above [`SMALL_BATCH`] (the bandwidth-bound regime).
    fn default_tiling(dtype: DType) -> Self::Tiling;
    /// The tiling launched for inputs of `dtype` at batches up to
    /// [`SMALL_BATCH`] (latency-bound: one trip of the state through HBM).
    fn small_batch_tiling(dtype: DType) -> Self::Tiling;
    /// The tiling launched for inputs of `dtype` at batch `batch` when none is
    /// given: [`DecodeFamily::small_batch_tiling`] up to [`SMALL_BATCH`], else
    /// [`DecodeFamily::default_tiling`].
    fn tiling_for_batch(dtype: DType, batch: usize) -> Self::Tiling {
        if batch <= SMALL_BATCH {
            Self::small_batch_tiling(dtype)
        } else {
            Self::default_tiling(dtype)
        }
    }
    /// The batch of one step's sizes.
    fn batch(d: &Self::Dims) -> usize;
    /// `tiling` with its state cache stored as `state_dtype`
    /// ([`BlockTiling::state_dtype`]; a family that supports only f32 refuses
    /// the others in [`DecodeFamily::geometry`]).
    fn with_state_dtype(tiling: Self::Tiling, state_dtype: DType) -> Self::Tiling;
    /// The state cache's shape with its sizes, for errors
    /// (`(cache_rows=.., H=.., P=.., N=..)`).
    fn state_shape(d: &Self::Dims) -> String;
    /// The tilings `gpu_decode_bench` compares, each compiled by the no-GPU test
    /// and verified by the GPU tests.
    fn candidates() -> Vec<Self::Tiling>;
    /// The geometry of `tiling` for `N = d_state` and inputs of `dtype`, or the
    /// knob that cannot be honoured.
    fn geometry(d_state: usize, dtype: DType, tiling: Self::Tiling) -> Result<Self::Geometry>;
    /// The block shape within the geometry.
    fn block(g: &Self::Geometry) -> &BlockGeometry;
    /// The `-D` define (`BROWS` / `ROWS`) and the label letter (`b` / `r`) of
    /// [`BlockGeometry::rows`].
    const ROWS_DEFINE: &'static str;
    /// The letter of `ROWS_DEFINE` in labels.
    const ROWS_TAG: char;
    /// The family's own defines, after the shared ones.
    fn extra_defines(_g: &Self::Geometry) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// What the family's own knobs append to the label.
    fn extra_label(_g: &Self::Geometry) -> String {
        String::new()
    }
    /// The `-D` defines of the kernel: the block shape's, then the family's.
    fn defines(g: &Self::Geometry) -> Vec<(&'static str, String)> {
        let mut defines = Self::block(g).defines(Self::ROWS_DEFINE);
        defines.extend(Self::extra_defines(g));
        defines
    }
    /// What a non-default tiling appends to the label (`.b4w8...`).
    fn label_suffix(g: &Self::Geometry) -> String {
        Self::block(g).label(Self::ROWS_TAG) + &Self::extra_label(g)
    }

    /// Sizes, buffers of the lengths `lens` and options of one step, and a
    /// state view of `state_len` elements (the launcher checks `N` against the
    /// kernel's and the output's length).
    fn validate(d: &Self::Dims, o: &Self::Options, lens: &StepLens, state_len: usize)
        -> Result<()>;
    /// Grid and block of one step with sizes `d`, or an error when the grid
    /// would exceed the device's limits.
    fn launch_config(d: &Self::Dims, g: &Self::Geometry) -> Result<LaunchConfig>;
    /// The kernel's argument struct (validated), opening with `ptrs`.
    fn raw_args(d: &Self::Dims, o: &Self::Options, ptrs: StepPointers) -> Self::Raw;
    /// The options of host parameters.
    fn options<T>(p: &Self::Params<'_, T>) -> Self::Options;
}

/// Device-resident inputs of one decode step: the family's sizes, the buffers by
/// role (shapes as the dims say) and the family's options. The contents of the
/// index list are not validated on the device path (the kernels refuse to write
/// past the cache instead).
#[derive(Debug)]
pub struct DeviceStepArgs<'a, T, D, O> {
    /// The family's sizes (batch, channels or heads, `N`, groups, cache rows).
    pub dims: D,
    /// The device buffers by role, shapes as `dims` say.
    pub inputs: DeviceStepInputs<'a, T>,
    /// The family's switches (softplus, `D` shape, dt clamp).
    pub options: O,
}

/// The device arguments of family `F`.
pub type StepArgs<'a, F, T> =
    DeviceStepArgs<'a, T, <F as DecodeFamily>::Dims, <F as DecodeFamily>::Options>;

/// Device arguments for host parameters `p` whose buffers are uploaded as `views`.
pub fn device_args<'v, F: DecodeFamily, T>(
    p: &F::Params<'_, T>,
    views: DeviceStepInputs<'v, T>,
) -> StepArgs<'v, F, T> {
    DeviceStepArgs {
        dims: p.dims(),
        inputs: views,
        options: F::options(p),
    }
}

/// The items of a [`DecodeFamily`] impl that only name things, written once:
/// `NAME` (the entry points are `<NAME>_decode_<dtype>`), the implementation
/// named in errors, the kernel file (under `kernels/`), the host parameters and
/// dims from `ssm_core::decode`, and the family module's own types, which every
/// family names alike: `DecodeTiling`, `Geometry`, `RawDecodeArgs`, `StepOptions`.
#[macro_export]
macro_rules! decode_family_names {
    ($name:literal, $implementation:literal, $path:literal, $params:ident, $dims:ident) => {
        const NAME: &'static str = $name;
        const IMPLEMENTATION: &'static str = $implementation;
        const ENTRIES: [&'static str; 3] = [
            concat!($name, "_decode_f32"),
            concat!($name, "_decode_f16"),
            concat!($name, "_decode_bf16"),
        ];

        type Tiling = DecodeTiling;
        type Geometry = Geometry;
        type Raw = RawDecodeArgs;
        type Dims = $dims;
        type Options = StepOptions;
        type Params<'a, T: 'a> = $params<'a, T>;

        fn source() -> $crate::KernelSource {
            $crate::kernel_source!($path)
        }
    };
}

/// The `#[repr(C)]` argument struct `$raw` of a decode kernel: its size and the
/// offsets of the fields the kernel reads asserted (the `.cu` file asserts the
/// same size), and passed to the launch by value.
#[macro_export]
macro_rules! decode_args_abi {
    ($raw:ty, $bytes:literal, $($field:ident @ $offset:literal),*) => {
        const _: () = assert!(std::mem::size_of::<$raw>() == $bytes);
        $(const _: () = assert!(std::mem::offset_of!($raw, $field) == $offset);)*

        // SAFETY: plain-old-data with the C layout the kernel declares (size
        // asserted on both sides).
        unsafe impl $crate::cudarc::driver::DeviceRepr for $raw {}
    };
}

/// The variants a family launches by default (the large- and the small-batch
/// tiling) for each `N` of `states` and every input type, for the
/// resources/budget command.
pub fn default_variants<F: DecodeFamily>(states: &[usize]) -> Vec<KernelVariant> {
    [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .flat_map(|dtype| states.iter().map(move |&n| (dtype, n)))
        .flat_map(|(dtype, n)| {
            let (large, small) = (F::default_tiling(dtype), F::small_batch_tiling(dtype));
            let tilings = if small == large {
                vec![large]
            } else {
                vec![large, small]
            };
            tilings.into_iter().map(move |t| {
                decode_variant::<F>(dtype, n, t)
                    .expect("the default tilings are valid for every listed N")
            })
        })
        .collect()
}

/// The entry point of `family` for `dtype`; f64 has none.
pub fn entry_name<F: DecodeFamily>(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok(F::ENTRIES[0]),
        DType::F16 => Ok(F::ENTRIES[1]),
        DType::Bf16 => Ok(F::ENTRIES[2]),
        DType::F64 => Err(SsmError::Unsupported {
            implementation: F::IMPLEMENTATION,
            what: "f64 inputs (use f32, f16 or bf16)".into(),
        }),
    }
}

/// The kernel variant (source, entry, defines) for one element type, `N` and
/// tiling; the label carries the tiling when it is not the default one.
pub fn decode_variant<F: DecodeFamily>(
    dtype: DType,
    d_state: usize,
    tiling: F::Tiling,
) -> Result<KernelVariant> {
    let geometry = F::geometry(d_state, dtype, tiling)?;
    let mut label = format!("{}.decode.{dtype}.n{d_state}", F::NAME);
    // The block shape when it is not the default one (whatever the state's
    // type), then `.s<dtype>` for a 16-bit state: `.r4w4cs.sbf16`, `.sbf16`.
    if F::with_state_dtype(tiling, DType::F32) != F::default_tiling(dtype) {
        label.push_str(&F::label_suffix(&geometry));
    }
    let state_dtype = F::block(&geometry).state_dtype;
    if state_dtype != DType::F32 {
        label.push_str(&format!(".s{state_dtype}"));
    }
    Ok(KernelVariant::new(
        label,
        F::source(),
        entry_name::<F>(dtype)?,
        F::defines(&geometry),
    ))
}

/// A family's decode kernel compiled for element type `T`, state size `N` and
/// one tiling.
pub struct DecodeKernel<F: DecodeFamily, T> {
    kernel: Kernel,
    geometry: F::Geometry,
    _elem: PhantomData<T>,
}

impl<F: DecodeFamily, T: DeviceElement> DecodeKernel<F, T> {
    /// Compile (through the runtime's cache) and load the kernel.
    pub fn new(gpu: &Gpu, d_state: usize, tiling: F::Tiling) -> Result<Self> {
        let geometry = F::geometry(d_state, T::DTYPE, tiling)?;
        let variant = decode_variant::<F>(T::DTYPE, d_state, tiling)?;
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

    /// The compiled geometry (rows per thread after capping, block shape).
    pub fn geometry(&self) -> &F::Geometry {
        &self.geometry
    }

    /// `N` the kernel was compiled for.
    pub fn d_state(&self) -> usize {
        F::block(&self.geometry).d_state
    }

    /// The element type the kernel stores the state cache in.
    pub fn state_dtype(&self) -> DType {
        F::block(&self.geometry).state_dtype
    }
}

/// Device pointer of a view and the guard that records the read once the launch
/// is queued.
fn ptr<'s, E>(view: &'s CudaView<'_, E>, stream: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
    view.device_ptr(stream)
}

fn optional_ptr<'s, E>(
    view: Option<&'s CudaView<'_, E>>,
    stream: &'s CudaStream,
) -> (Option<u64>, Option<SyncOnDrop<'s>>) {
    match view.map(|v| v.device_ptr(stream)) {
        Some((p, guard)) => (Some(p), Some(guard)),
        None => (None, None),
    }
}

/// `Err(Dimension)` naming `arg` unless the device pointer `ptr` is a multiple of
/// `align` bytes: the kernels read and write through vector accesses whose
/// alignment they take from their base pointers (owned buffers always are;
/// views with offsets may not be). Used by every device-view entry point.
pub fn check_aligned(arg: &'static str, ptr: u64, align: usize) -> Result<()> {
    if ptr % align as u64 != 0 {
        return Err(SsmError::Dimension {
            arg,
            reason: format!("device pointer {ptr:#x} is not {align}-byte aligned (the kernel uses {align}-byte accesses)"),
        });
    }
    Ok(())
}

/// A driver error as the crates' error type.
pub fn backend<E: std::fmt::Display>(e: E) -> SsmError {
    SsmError::Backend(e.to_string())
}

/// One decode step on device-resident buffers: a single asynchronous launch on the
/// runtime's stream, `state` updated in place, every element of `out` written.
/// Shapes and alignment are validated; the contents of `state_batch_indices`
/// cannot be checked without a copy, so the kernels themselves refuse to write
/// past the cache (an index `>= cache_rows` yields a NaN output and no state write).
/// The state is f32: a kernel compiled for a 16-bit state
/// ([`BlockTiling::state_dtype`]) is refused here; use
/// [`launch_decode_step_state`] with a buffer of that type.
pub fn launch_decode_step<F: DecodeFamily, T: DeviceElement>(
    gpu: &Gpu,
    kernel: &DecodeKernel<F, T>,
    args: &StepArgs<'_, F, T>,
    state: &mut CudaViewMut<'_, f32>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    launch_decode_step_state(gpu, kernel, args, state, out)
}

/// [`launch_decode_step`] with the state cache stored as `S` (f32, f16 or bf16):
/// `S` must be the type the kernel was compiled for ([`DecodeKernel::state_dtype`],
/// from [`BlockTiling::state_dtype`]), else `Err(Dimension)` naming `state` with
/// the expected type and shape; a wrong length is `Err(Shape)` naming `state`.
pub fn launch_decode_step_state<F: DecodeFamily, T: DeviceElement, S: DeviceElement>(
    gpu: &Gpu,
    kernel: &DecodeKernel<F, T>,
    args: &StepArgs<'_, F, T>,
    state: &mut CudaViewMut<'_, S>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let g = &kernel.geometry;
    let views = args.inputs.as_ref();
    let lens = views.map(|v| v.len(), |v| v.len(), |v| v.len());
    let (dims, options) = (&args.dims, &args.options);
    check_kernel_state(F::block(g).d_state, dims.d_state())?;
    F::validate(dims, options, &lens, state.len())?;
    check_state_dtype(F::block(g).state_dtype, S::DTYPE, &F::state_shape(dims))?;
    dims.check_out(out.len())?;
    let cfg = F::launch_config(dims, g)?;
    let stream = gpu.stream();
    let (x, _gx) = ptr(views.x, stream);
    let (dt, _gdt) = ptr(views.dt, stream);
    let (a, _ga) = ptr(views.a, stream);
    let (b, _gb) = ptr(views.b, stream);
    let (c, _gc) = ptr(views.c, stream);
    let (d, _gd) = optional_ptr(views.d, stream);
    let (z, _gz) = optional_ptr(views.z, stream);
    let (dt_bias, _gbias) = optional_ptr(views.dt_bias, stream);
    let (indices, _gidx) = optional_ptr(views.state_batch_indices, stream);
    let (state_ptr, _gstate) = state.device_ptr_mut(stream);
    let (out_ptr, _gout) = out.device_ptr_mut(stream);
    let vec = F::block(g).layout.vec;
    check_aligned("state", state_ptr, vec * std::mem::size_of::<S>())?;
    if F::VECTOR_A {
        check_aligned("A", a, 4 * vec)?;
    }
    // B and C are read VEC elements at a time, in accesses of at most 16 bytes
    // (f32 rows of 8 elements, with a 16-bit state, as two).
    let bc_align = (vec * std::mem::size_of::<T>()).min(16);
    check_aligned("B", b, bc_align)?;
    check_aligned("C", c, bc_align)?;
    let raw = F::raw_args(
        dims,
        options,
        StepPointers {
            x,
            dt,
            a,
            b,
            c,
            d: d.unwrap_or(0),
            z: z.unwrap_or(0),
            dt_bias: dt_bias.unwrap_or(0),
            state_batch_indices: indices.unwrap_or(0),
            state: state_ptr,
            out: out_ptr,
        },
    );
    if F::block(g).dependent_launch && supports_dependent_launch(kernel.kernel.arch) {
        // SAFETY: as below; the kernel was compiled with DEPENDENT_LAUNCH = 1 for
        // this arch (sm_90+), so it waits for the stream's previous kernel before
        // its first global load and writes nothing before that.
        return unsafe { launch_dependent(stream, &kernel.kernel, &raw, cfg) };
    }
    // SAFETY: the argument struct matches the kernel's (size asserted on both
    // sides); every pointer comes from a live view whose length the family's
    // validate() checked against the shapes, the state, B, C (and A where the
    // kernel reads it in vectors) are aligned for the kernel's vector accesses, and
    // the guards keep cudarc's stream ordering until the launch is queued.
    unsafe {
        stream
            .launch_builder(&kernel.kernel.func)
            .arg(&raw)
            .launch(cfg)
    }
    .map_err(backend)?;
    Ok(())
}

/// Whether modules built for `arch` run where programmatic dependent launch
/// exists (sm_90 and later; `Compute90` is the PTX newer majors JIT).
pub fn supports_dependent_launch(arch: crate::Arch) -> bool {
    matches!(
        arch,
        crate::Arch::Sm90 | crate::Arch::Sm90a | crate::Arch::Compute90
    )
}

/// `cuLaunchKernelEx` of `kernel` with its one by-value argument `raw` on
/// `stream`, with programmatic stream serialization allowed (cudarc's launch
/// builder takes no launch attributes). Stream capture records it as a
/// programmatic edge.
///
/// # Safety
/// As for any launch: `raw` is the kernel's argument struct with every pointer
/// valid for what the kernel does, and the kernel waits (`griddepcontrol.wait`)
/// before touching memory the stream's previous work may still be writing.
unsafe fn launch_dependent<R: DeviceRepr>(
    stream: &CudaStream,
    kernel: &Kernel,
    raw: &R,
    cfg: LaunchConfig,
) -> Result<()> {
    use cudarc::driver::sys;
    stream.context().bind_to_thread().map_err(backend)?;
    // SAFETY: a plain C struct of an enum and a union of integers; all zeros is
    // a valid value (then the id and the one field read are set).
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // The driver reads the argument through this pointer during the call.
    let mut params = [raw as *const R as *mut std::ffi::c_void];
    // SAFETY: the caller's contract; `config`, `attr` and `params` outlive the
    // call, and the function handle is alive while `kernel` is.
    unsafe {
        sys::cuLaunchKernelEx(
            &config,
            kernel.func.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(backend)
}

/// One decode step from host slices with the family's default tiling for the
/// batch ([`DecodeFamily::tiling_for_batch`]): upload, launch into a poisoned
/// output buffer, download; `state` is updated in place. Validates everything,
/// including the contents of `state_batch_indices`.
pub fn decode_step_cuda<F: DecodeFamily, T: DeviceElement>(
    gpu: &Gpu,
    p: &F::Params<'_, T>,
    state: &mut [f32],
) -> Result<StepOutput<T>> {
    decode_step_cuda_state::<F, T, f32>(gpu, p, state)
}

/// [`decode_step_cuda`] with the state cache stored as `S` (f32, f16 or bf16):
/// the batch's default tiling with [`BlockTiling::state_dtype`] set to `S`.
/// A family without a 16-bit state (Mamba-1) refuses it with `Unsupported`.
pub fn decode_step_cuda_state<F: DecodeFamily, T: DeviceElement, S: DeviceElement>(
    gpu: &Gpu,
    p: &F::Params<'_, T>,
    state: &mut [S],
) -> Result<StepOutput<T>> {
    p.validate(state.len())?;
    let tiling = F::tiling_for_batch(T::DTYPE, F::batch(&p.dims()));
    let tiling = F::with_state_dtype(tiling, S::DTYPE);
    let kernel = DecodeKernel::<F, T>::new(gpu, p.d_state(), tiling)?;
    let host = p.inputs();
    let stream = gpu.stream();
    let buffers: StepInputs<CudaSlice<T>, CudaSlice<f32>, CudaSlice<i64>> = host.try_map(
        |v| gpu.upload(v).map_err(SsmError::from),
        |v| gpu.upload(v).map_err(SsmError::from),
        |v| stream.clone_htod(v).map_err(backend),
    )?;
    let mut dev_state = gpu.upload(state)?;
    let mut out = gpu.alloc_poisoned::<T>(host.x.len())?;
    let args = device_args::<F, T>(
        p,
        buffers
            .as_ref()
            .map(|v| v.as_view(), |v| v.as_view(), |v| v.as_view()),
    );
    launch_decode_step_state(
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

/// For the families' unit tests: the variant of `tiling` is labelled `label` and
/// its defines are named `defines` (space-separated), in this order.
pub fn assert_variant_names<F: DecodeFamily>(
    dtype: DType,
    d_state: usize,
    tiling: F::Tiling,
    label: &str,
    defines: &str,
) {
    let v = decode_variant::<F>(dtype, d_state, tiling).unwrap();
    assert_eq!(v.label, label);
    let names: Vec<&str> = v.defines.iter().map(|d| d.0).collect();
    assert_eq!(names.join(" "), defines, "{label}");
}

/// The no-GPU checks of a family, shared by both launchers' unit tests: its entry
/// points are `<NAME>_decode_<dtype>` and f64 is refused by name, and every
/// candidate tiling, for every element type and each `N` of `states`, compiles
/// with NVRTC and keeps its state in registers (no stack, no spills, no warnings).
pub fn assert_family_compiles<F: DecodeFamily>(states: &[usize]) {
    let tilings = F::candidates();
    assert!(matches!(
        entry_name::<F>(DType::F64),
        Err(SsmError::Unsupported { .. })
    ));
    for (i, dtype) in [DType::F32, DType::F16, DType::Bf16]
        .into_iter()
        .enumerate()
    {
        let entry = entry_name::<F>(dtype).unwrap();
        assert_eq!(
            (entry, entry),
            (F::ENTRIES[i], &*format!("{}_decode_{dtype}", F::NAME))
        );
    }
    let what = format!("{} decode variants", F::NAME);
    let Some(compiler) = crate::test_compiler_or_skip(&what) else {
        return;
    };
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        for &n in states {
            for &tiling in &tilings {
                let variant = decode_variant::<F>(dtype, n, tiling).unwrap();
                let report = crate::report_variant(&compiler, &variant, crate::Arch::Sm90)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_layout_spreads_rows_over_lanes() {
        let l = StateLayout::for_state(128);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(128)), (4, 32, 4));
        let l = StateLayout::for_state(256);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(256)), (4, 32, 8));
        let l = StateLayout::for_state(16);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(16)), (4, 4, 4));
        let l = StateLayout::for_state(12);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(12)), (4, 1, 12));
        let l = StateLayout::for_state(6);
        assert_eq!((l.vec, l.lanes), (2, 1));
        let l = StateLayout::for_state(7);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(7)), (1, 1, 7));
        // 7 floats a row: 4 rows in flight, capped from 8.
        assert_eq!(l.cap_rows(7, 8), 4);
        assert_eq!(StateLayout::for_state(256).cap_rows(256, 8), 4);
        // At most 8 lanes: 4 vectors a lane of a 128-float row, 2 rows in flight.
        let l = StateLayout::for_state_lanes(128, 8);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(128)), (4, 8, 16));
        assert_eq!(l.cap_rows(128, 4), 2);
        assert_eq!(
            StateLayout::for_state_lanes(16, 8),
            StateLayout::for_state(16)
        );
        assert_eq!(StateLayout::for_state_lanes(128, 1).lanes, 1);
    }

    #[test]
    fn a_16_bit_state_takes_16_byte_vectors_of_8() {
        let l = StateLayout::for_state_elems(128, 32, 2);
        assert_eq!((l.vec, l.lanes, l.elems_per_thread(128)), (8, 16, 8));
        assert_eq!(l.cap_rows(128, 4), 4);
        assert_eq!(StateLayout::for_state_elems(64, 32, 2).lanes, 8);
        assert_eq!(StateLayout::for_state_elems(12, 32, 2).vec, 4);
        assert_eq!(StateLayout::for_state_elems(7, 32, 2).vec, 1);
        // An f32 state is as before.
        assert_eq!(
            StateLayout::for_state_elems(128, 32, 4),
            StateLayout::for_state(128)
        );
        let t = BlockTiling::default().with_state_dtype(DType::Bf16);
        let g = BlockGeometry::new(128, "rows", t).unwrap();
        assert_eq!((g.layout.vec, g.layout.lanes, g.rows), (8, 16, 4));
        // The widest 16-bit layout carries no lane tag; the define is there.
        assert_eq!(g.label('r'), ".r4w4");
        let defines = g.defines("ROWS");
        assert!(defines.contains(&("DECODE_STATE_DTYPE", "2".to_string())));
        assert!(defines.contains(&("VEC", "8".to_string())));
        let f16 = BlockGeometry::new(128, "rows", t.with_state_dtype(DType::F16)).unwrap();
        assert!(f16
            .defines("ROWS")
            .contains(&("DECODE_STATE_DTYPE", "1".to_string())));
        // An f32 state adds no define.
        let f32_defines = BlockGeometry::new(128, "rows", BlockTiling::default())
            .unwrap()
            .defines("ROWS");
        assert!(f32_defines.iter().all(|d| d.0 != "DECODE_STATE_DTYPE"));
        assert!(matches!(
            BlockGeometry::new(128, "rows", t.with_state_dtype(DType::F64)),
            Err(SsmError::Dimension {
                arg: "state_dtype",
                ..
            })
        ));
    }

    #[test]
    fn a_state_buffer_of_another_type_is_refused_by_name() {
        assert!(check_state_dtype(DType::Bf16, DType::Bf16, "(x)").is_ok());
        let err = check_state_dtype(DType::Bf16, DType::F32, "(cache_rows=2, N=16)").unwrap_err();
        assert!(
            matches!(err, SsmError::Dimension { arg: "state", .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("bf16") && text.contains("f32") && text.contains("(cache_rows=2, N=16)"),
            "{text}"
        );
    }

    #[test]
    fn lane_cap_is_a_power_of_two_and_labelled() {
        let t = BlockTiling {
            max_lanes: 8,
            ..BlockTiling::default()
        };
        let g = BlockGeometry::new(128, "rows", t).unwrap();
        assert_eq!((g.layout.lanes, g.rows, g.slots_per_block()), (8, 2, 16));
        assert_eq!(g.label('r'), ".r2w4l8");
        // A cap the layout does not reach is not in the label.
        let g = BlockGeometry::new(16, "rows", t).unwrap();
        assert_eq!(g.label('r'), ".r4w4");
        for bad in [3, 64] {
            let t = BlockTiling {
                max_lanes: bad,
                ..BlockTiling::default()
            };
            assert!(matches!(
                BlockGeometry::new(128, "rows", t),
                Err(SsmError::Dimension {
                    arg: "max_lanes",
                    ..
                })
            ));
        }
        assert!(
            BlockTiling::default()
                .with_streaming_hints()
                .streaming_hints
        );
    }

    #[test]
    fn block_checks_name_the_knob() {
        assert!(check_block(16, "rows", 4, 8, 4).is_ok());
        assert!(matches!(
            check_block(16, "rows", 0, 8, 4),
            Err(SsmError::Dimension { arg: "rows", .. })
        ));
        assert!(matches!(
            check_block(16, "rows", 4, 33, 0),
            Err(SsmError::Dimension { arg: "warps", .. })
        ));
        assert!(matches!(
            check_block(16, "rows", 4, 8, 9),
            Err(SsmError::Dimension {
                arg: "min_blocks_per_sm",
                ..
            })
        ));
        assert!(matches!(
            grid(None, 4, || "too many".into()),
            Err(SsmError::Dimension { arg: "batch", .. })
        ));
    }
}
