//! Which kernel runs a call, and the compile-time configuration it gets.
//!
//! Two kernels share one argument list and one work-item table:
//! - `kernels/mamba2/ssd_fused.cu`: f16/bf16 inputs, tensor cores (mma.sync), the
//!   state on chip; needs `N % 16 == 0`, `N <= 256`, `P % 32 == 0` and its shared
//!   memory (and the C B^T pre-kernel's) within the device's per-block limit. These
//!   are the kernel's `static_assert`s (`Q % 64`, `N % 16 && N <= 256`, `P % PT`,
//!   `PT % YC`, the warps' state split, `SMEM_BYTES <= SSD_MAX_SMEM`), checked here
//!   first so that no accepted shape reaches a failing compile; the selection grid
//!   test (`crates/verify/tests/kernel_selection_grid.rs`) compiles what this picks.
//! - `kernels/mamba2/ssd_simt.cu`: f32 arithmetic on CUDA cores for any `N`, `P`
//!   and input type; the f32 path and the fallback for shapes the fused kernel
//!   does not take.
//!
//! Every option of the forward pass is a compile-time switch (`-D`), so a module
//! is compiled per combination (NVRTC results are cached on disk).

use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::{DType, Element, Result, SsmError};
use ssm_gpu::{kernel_source, DeviceLimits, KernelSource, KernelVariant};

pub(crate) const IMPLEMENTATION: &str = "mamba2-ssd CUDA";

/// The fused tensor-core kernel, embedded at build time.
pub static FUSED_SOURCE: KernelSource = kernel_source!("mamba2/ssd_fused.cu");
/// The f32 CUDA-core kernel, embedded at build time.
pub static SIMT_SOURCE: KernelSource = kernel_source!("mamba2/ssd_simt.cu");
/// The per-group C B^T pre-kernel, embedded at build time.
pub static CHUNK_CB_SOURCE: KernelSource = kernel_source!("mamba2/ssd_chunk_cb.cu");

/// Chunk lengths the kernels are built for.
pub const CHUNK_SIZES: [usize; 3] = [64, 128, 256];

/// Which kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelChoice {
    /// The fused kernel where it applies (f16/bf16 and a supported shape), else SIMT.
    Auto,
    /// The fused kernel, or `SsmError::Unsupported`.
    Fused,
    /// The f32 CUDA-core kernel (any shape and input type).
    Simt,
}

/// How sequences are cut into segments that run in parallel (a prepass computes
/// each segment's state contribution, the main pass starts from the sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Segmentation {
    /// Split only when `sequences x heads x P-tiles` blocks cannot fill the GPU.
    Auto,
    /// At most this many segments per sequence (1: never split).
    AtMost(usize),
}

/// Knobs of the CUDA path. The defaults are the measured best on the H100.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CudaOptions {
    /// Chunk length Q: 64, 128 or 256.
    pub chunk_size: usize,
    /// Which kernel runs the call (fused tensor-core or SIMT).
    pub kernel: KernelChoice,
    /// cp.async stages of the fused kernel: 1 (more blocks per SM) or 2 (the next
    /// chunk's copy overlaps this chunk's math).
    pub stages: usize,
    /// Whether long sequences are cut into segments that run in parallel.
    pub segmentation: Segmentation,
    /// Precompute C B^T once per (chunk, group) for the fused kernel: `None` does
    /// it when at least two blocks share each chunk's tiles at chunk 64.
    pub shared_cb: Option<bool>,
    /// Warps per fused block (4 or 8); `None` picks 4 unless the state needs 8.
    pub warps: Option<usize>,
    /// Output columns per warp work unit of the fused kernel (32 or 64, at most
    /// the P tile); `None` picks the measured best.
    pub y_cols: Option<usize>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            chunk_size: 64,
            kernel: KernelChoice::Auto,
            stages: 1,
            segmentation: Segmentation::Auto,
            shared_cb: None,
            warps: None,
            y_cols: None,
        }
    }
}

/// The skip term's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DMode {
    /// No skip term.
    None,
    /// `D` is `(H)`: one skip weight per head.
    PerHead,
    /// `D` is `(H, P)`: one skip weight per head-dimension channel.
    PerHeadDim,
}

impl DMode {
    fn define(self) -> u8 {
        match self {
            DMode::None => 0,
            DMode::PerHead => 1,
            DMode::PerHeadDim => 2,
        }
    }
}

/// The optional inputs and outputs a call uses; each is a compile-time switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SsdFeatures {
    /// `dt_bias` `(H)` is added to `dt`.
    pub dt_bias: bool,
    /// Softplus is applied to `dt + dt_bias` before the clamp.
    pub dt_softplus: bool,
    /// The skip term's shape.
    pub d: DMode,
    /// The output is gated by `silu(z)`.
    pub z: bool,
    /// The call passes initial states.
    pub initial_states: bool,
    /// The call returns final states.
    pub final_states: bool,
}

impl SsdFeatures {
    /// The switches a call with parameters `p` needs.
    pub fn of<T: Element>(p: &SsdParams<'_, T>) -> Self {
        SsdFeatures {
            dt_bias: p.dt_bias.is_some(),
            dt_softplus: p.dt_softplus,
            d: match p.d {
                None => DMode::None,
                Some(DSkip::PerHead(_)) => DMode::PerHead,
                Some(DSkip::PerHeadDim(_)) => DMode::PerHeadDim,
            },
            z: p.z.is_some(),
            initial_states: p.initial_states.is_some(),
            final_states: p.return_final_states,
        }
    }

    /// Every option on (the variant list and the resource budgets use it: the
    /// most registers and code).
    pub fn all() -> Self {
        SsdFeatures {
            dt_bias: true,
            dt_softplus: true,
            d: DMode::PerHeadDim,
            z: true,
            initial_states: true,
            final_states: true,
        }
    }
}

/// Tiling of the fused kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FusedTiling {
    /// Head-dimension columns per block (32 or 64).
    pub p_tile: usize,
    /// Warps per block (4 or 8).
    pub warps: usize,
    /// Output columns per warp work unit (32 or 64).
    pub y_cols: usize,
    /// cp.async stages of the main pass (1 or 2).
    pub stages: usize,
    /// cp.async stages of the state-only prepass of split sequences: 2 where they
    /// fit (its stage holds only x and B, and with one stage each chunk waits for its
    /// own copy: M2-long's prepass took 241 of 784 µs so).
    pub prepass_stages: usize,
    /// `__launch_bounds__` minimum blocks per SM (caps registers).
    pub min_blocks: usize,
    /// C B^T tiles read from the pre-kernel's workspace instead of formed in-block.
    pub cb_global: bool,
}

impl FusedTiling {
    /// cp.async stages of the main pass, or of the prepass (`state_only`).
    pub fn stages_of(&self, state_only: bool) -> usize {
        if state_only {
            self.prepass_stages
        } else {
            self.stages
        }
    }
}

/// Which kernel, and how it is tiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The fused tensor-core kernel (`ssd_fused.cu`, f16/bf16) with this tiling.
    Fused(FusedTiling),
    /// The f32 CUDA-core kernel (`ssd_simt.cu`), any shape and input type.
    Simt,
}

/// Everything that decides one compiled module and its launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// Input element type.
    pub dtype: DType,
    /// Chunk length Q (one of [`CHUNK_SIZES`]).
    pub chunk: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// The optional inputs and outputs compiled in.
    pub features: SsdFeatures,
    /// Which kernel, and its tiling.
    pub path: KernelPath,
    /// The device's per-block shared-memory limit, passed to the kernels as
    /// `SSD_MAX_SMEM` for their `static_assert`s.
    pub max_smem: usize,
}

/// Registers per thread the fused kernel needs to hold its state tile without
/// spilling: 4 warps (64 state floats each) 168, 8 warps (32 each) 128.
const FUSED_REGS_4_WARPS: usize = 168;
const FUSED_REGS_8_WARPS: usize = 128;
/// Head-dimension columns per SIMT block (kernels/mamba2/ssd_simt.cu `PT`).
const SIMT_P_TILE: usize = 32;

fn dtype_code(dtype: DType) -> Result<u8> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::Bf16 => Ok(2),
        DType::F64 => Err(unsupported("f64 inputs (use f32, f16 or bf16)".into())),
    }
}

pub(crate) fn unsupported(what: String) -> SsmError {
    SsmError::Unsupported {
        implementation: IMPLEMENTATION,
        what,
    }
}

impl KernelConfig {
    /// Pick the kernel for a call on a device with `limits` (the opt-in limit of
    /// shared memory per block decides what fits; shared memory and registers per
    /// SM decide the fused kernel's blocks per SM).
    pub fn select(
        dtype: DType,
        dims: &SsdDims,
        features: SsdFeatures,
        opts: &CudaOptions,
        limits: &DeviceLimits,
    ) -> Result<Self> {
        let max_smem = limits.smem_per_block_optin as usize;
        dtype_code(dtype)?;
        if !CHUNK_SIZES.contains(&opts.chunk_size) {
            return Err(unsupported(format!(
                "chunk size {} (expected one of {CHUNK_SIZES:?})",
                opts.chunk_size
            )));
        }
        if !(1..=2).contains(&opts.stages) {
            return Err(unsupported(format!(
                "{} cp.async stages (expected 1 or 2)",
                opts.stages
            )));
        }
        let simt = KernelConfig {
            dtype,
            chunk: opts.chunk_size,
            d_state: dims.d_state,
            head_dim: dims.head_dim,
            features,
            path: KernelPath::Simt,
            max_smem,
        };
        let fused =
            Self::fused_tiling(dtype, dims, features, opts, limits).map(|tiling| KernelConfig {
                path: KernelPath::Fused(tiling),
                ..simt
            });
        // Every module the config may load: the main pass, the prepass of split
        // sequences and the C B^T pre-kernel.
        let fits = |c: &KernelConfig| c.max_module_smem() <= max_smem;
        match opts.kernel {
            KernelChoice::Simt => {}
            KernelChoice::Auto => {
                if let Ok(c) = &fused {
                    if fits(c) {
                        return Ok(*c);
                    }
                }
            }
            KernelChoice::Fused => {
                let c = fused?;
                if !fits(&c) {
                    return Err(unsupported(format!(
                        "the fused kernel at chunk {} and N = {} ({} bytes of shared memory, \
                         the device allows {max_smem})",
                        opts.chunk_size,
                        dims.d_state,
                        c.max_module_smem()
                    )));
                }
                return Ok(c);
            }
        }
        if !fits(&simt) {
            return Err(unsupported(format!(
                "N = {} ({} bytes of shared memory for the f32 state tile, the device allows \
                 {max_smem})",
                dims.d_state,
                simt.max_module_smem()
            )));
        }
        Ok(simt)
    }

    /// The fused kernel's tiling for these sizes, or why it does not apply.
    fn fused_tiling(
        dtype: DType,
        dims: &SsdDims,
        features: SsdFeatures,
        opts: &CudaOptions,
        limits: &DeviceLimits,
    ) -> Result<FusedTiling> {
        if !matches!(dtype, DType::F16 | DType::Bf16) {
            return Err(unsupported(format!(
                "the tensor-core kernel with {dtype} inputs (f16/bf16 only)"
            )));
        }
        let n = dims.d_state;
        if n % 16 != 0 || n > 256 {
            return Err(unsupported(format!(
                "the tensor-core kernel with N = {n} (a multiple of 16, at most 256)"
            )));
        }
        let p = dims.head_dim;
        if p % 32 != 0 {
            return Err(unsupported(format!(
                "the tensor-core kernel with P = {p} (a multiple of 32)"
            )));
        }
        let p_tile = if p % 64 == 0 { 64 } else { 32 };
        // The state tile (p_tile x N f32) is spread over the warps' registers: at most
        // 64 floats per thread.
        let needed = if p_tile * n / (32 * 4) > 64 { 8 } else { 4 };
        let warps = match opts.warps {
            None => needed,
            Some(w) if (w == 8 && p_tile == 64) || (w == 4 && needed == 4) => w,
            Some(w) => {
                return Err(unsupported(format!(
                    "{w} warps for the fused kernel at P tile {p_tile}, N = {n} (4, or 8 with \
                     a P tile of 64)"
                )))
            }
        };
        let y_cols = match opts.y_cols {
            None if p_tile == 32 || warps == 8 => 32,
            None => 64,
            Some(c) if (c == 32 || c == 64) && c <= p_tile => c,
            Some(c) => {
                return Err(unsupported(format!(
                    "{c} output columns per warp unit (32 or 64, at most the P tile {p_tile})"
                )))
            }
        };
        // Blocks that read each chunk's C B^T tiles: the heads of a group times the P
        // tiles of a head. Precomputing pays when they are at least two.
        let sharing = dims.heads / dims.groups * (p / p_tile);
        let cb_global = opts
            .shared_cb
            .unwrap_or(sharing >= 2 && opts.chunk_size == 64);
        let mut tiling = FusedTiling {
            p_tile,
            warps,
            y_cols,
            stages: opts.stages,
            prepass_stages: 1,
            min_blocks: 1,
            cb_global,
        };
        let probe = KernelConfig {
            dtype,
            chunk: opts.chunk_size,
            d_state: n,
            head_dim: p,
            features,
            path: KernelPath::Fused(tiling),
            max_smem: limits.smem_per_block_optin as usize,
        };
        let smem_per_sm = limits.smem_per_sm as usize;
        let reserved = limits.smem_reserved_per_block as usize;
        let per_sm = smem_per_sm / (probe.smem_bytes(false) + reserved);
        // Registers cap the blocks too: the state tile needs 168 registers a thread
        // with 4 warps, 128 with 8 (64 and 32 of them for the state), so 64 Ki
        // registers hold 3 and 2 blocks; so do the SM's thread and block limits.
        let threads = 32 * warps;
        let regs = if warps == 4 {
            FUSED_REGS_4_WARPS
        } else {
            FUSED_REGS_8_WARPS
        };
        let by_regs = limits.registers_per_sm as usize / (threads * regs);
        let by_threads = limits.max_threads_per_sm as usize / threads;
        let cap = by_regs
            .min(by_threads)
            .min(limits.max_blocks_per_sm as usize);
        tiling.min_blocks = per_sm.min(cap).max(1);
        // Two prepass stages only where as many prepass blocks as main blocks still
        // fit on an SM.
        let two_stage_prepass = KernelConfig {
            path: KernelPath::Fused(FusedTiling {
                prepass_stages: 2,
                ..tiling
            }),
            ..probe
        }
        .smem_bytes(true);
        if tiling.min_blocks * (two_stage_prepass + reserved) <= smem_per_sm
            && two_stage_prepass <= limits.smem_per_block_optin as usize
        {
            tiling.prepass_stages = 2;
        }
        Ok(tiling)
    }

    /// Whether this is the fused tensor-core kernel.
    pub fn is_fused(&self) -> bool {
        matches!(self.path, KernelPath::Fused(_))
    }

    /// The kernel's entry-point name in its `.cu` file.
    pub fn entry(&self) -> &'static str {
        match self.path {
            KernelPath::Fused(_) => "ssd_fused_fwd",
            KernelPath::Simt => "ssd_simt_fwd",
        }
    }

    /// The kernel's embedded source.
    pub fn source(&self) -> KernelSource {
        match self.path {
            KernelPath::Fused(_) => FUSED_SOURCE,
            KernelPath::Simt => SIMT_SOURCE,
        }
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        match self.path {
            KernelPath::Fused(t) => 32 * t.warps as u32,
            KernelPath::Simt => 256,
        }
    }

    /// Head-dimension columns per block.
    pub fn p_tile(&self) -> usize {
        match self.path {
            KernelPath::Fused(t) => t.p_tile,
            KernelPath::Simt => SIMT_P_TILE,
        }
    }

    /// Blocks per (item, head).
    pub fn p_tiles(&self) -> usize {
        self.head_dim.div_ceil(self.p_tile())
    }

    /// Dynamic shared memory in bytes; mirrors the layout constants of the kernels.
    pub fn smem_bytes(&self, state_only: bool) -> usize {
        let q = self.chunk;
        let n = self.d_state;
        match self.path {
            KernelPath::Fused(t) => {
                let x_tile = q * (t.p_tile + 8) * 2;
                let bc_tile = q * (n + 8) * 2;
                let tiles = (q / 16) * (q / 16 + 1) / 2;
                let cb_tiles = if t.cb_global && !state_only {
                    tiles * 256 * 4
                } else {
                    0
                };
                let stage = x_tile + bc_tile * if state_only { 1 } else { 2 } + cb_tiles;
                let state = if state_only {
                    0
                } else {
                    t.p_tile * (n + 8) * 2
                };
                // s, dt' and w of 2 chunks, 2 per warp in the prepass (kernel `CUM_BUFS`).
                let cum_bufs = if state_only { 2 * t.warps } else { 2 };
                t.stages_of(state_only) * stage + state + cum_bufs * 3 * q * 4
            }
            KernelPath::Simt => {
                let floats = SIMT_P_TILE * (n + 1) + 3 * q + 64 * 33 * 2 + 64 * 65 + 64 * 33;
                floats * 4
            }
        }
    }

    /// The most dynamic shared memory any module of this config asks for (main
    /// pass, prepass, C B^T pre-kernel): what must fit the device's block limit.
    pub fn max_module_smem(&self) -> usize {
        let cb = if self.uses_chunk_cb() {
            self.chunk_cb_smem_bytes()
        } else {
            0
        };
        self.smem_bytes(false).max(self.smem_bytes(true)).max(cb)
    }

    /// The `-D` defines of the kernel source.
    pub fn defines(&self, state_only: bool) -> Vec<(&'static str, String)> {
        let f = &self.features;
        let flag = |on: bool| u8::from(on).to_string();
        let mut d = vec![
            ("SSD_DTYPE", dtype_code(self.dtype).unwrap_or(0).to_string()),
            ("SSD_Q", self.chunk.to_string()),
            ("SSD_N", self.d_state.to_string()),
            ("SSD_P", self.head_dim.to_string()),
            ("SSD_DT_BIAS", flag(f.dt_bias)),
            ("SSD_DT_SOFTPLUS", flag(f.dt_softplus)),
            ("SSD_D_MODE", f.d.define().to_string()),
            ("SSD_HAS_Z", flag(f.z)),
            ("SSD_HAS_S0", flag(f.initial_states)),
            ("SSD_FINAL", flag(f.final_states)),
            ("SSD_STATE_ONLY", flag(state_only)),
            ("SSD_MAX_SMEM", self.max_smem.to_string()),
        ];
        if let KernelPath::Fused(t) = self.path {
            d.extend([
                ("SSD_PT", t.p_tile.to_string()),
                ("SSD_NWARPS", t.warps.to_string()),
                ("SSD_YC", t.y_cols.to_string()),
                ("SSD_STAGES", t.stages_of(state_only).to_string()),
                ("SSD_MIN_BLOCKS", t.min_blocks.to_string()),
                ("SSD_CB_GLOBAL", flag(t.cb_global)),
            ]);
        }
        d
    }

    /// Whether the C B^T pre-kernel runs before the main pass.
    pub fn uses_chunk_cb(&self) -> bool {
        matches!(self.path, KernelPath::Fused(t) if t.cb_global)
    }

    /// Floats of C B^T workspace per (chunk, group).
    pub fn cb_floats_per_chunk(&self) -> usize {
        let rt = self.chunk / 16;
        rt * (rt + 1) / 2 * 256
    }

    /// The C B^T pre-kernel (`kernels/mamba2/ssd_chunk_cb.cu`) for this config.
    pub fn chunk_cb_variant(&self) -> KernelVariant {
        KernelVariant::new(
            format!(
                "mamba2.ssd_chunk_cb.{}.q{}.n{}",
                self.dtype, self.chunk, self.d_state
            ),
            CHUNK_CB_SOURCE,
            "ssd_chunk_cb",
            vec![
                ("SSD_DTYPE", dtype_code(self.dtype).unwrap_or(0).to_string()),
                ("SSD_Q", self.chunk.to_string()),
                ("SSD_N", self.d_state.to_string()),
                ("SSD_MAX_SMEM", self.max_smem.to_string()),
            ],
        )
    }

    /// Dynamic shared memory of the C B^T pre-kernel (its B and C tiles).
    pub fn chunk_cb_smem_bytes(&self) -> usize {
        2 * self.chunk * (self.d_state + 8) * 2
    }

    /// A stable name for budgets and reports, e.g. `mamba2.ssd_fused.bf16.q64.n128.p64`.
    pub fn label(&self, state_only: bool) -> String {
        let kind = match self.path {
            KernelPath::Fused(t) => format!(
                "ssd_fused.s{}w{}y{}{}",
                t.stages_of(state_only),
                t.warps,
                t.y_cols,
                if t.cb_global { "cb" } else { "" }
            ),
            KernelPath::Simt => "ssd_simt".to_string(),
        };
        let pass = if state_only { ".prepass" } else { "" };
        format!(
            "mamba2.{kind}.{}.q{}.n{}.p{}{pass}",
            self.dtype, self.chunk, self.d_state, self.head_dim
        )
    }

    /// The NVRTC compile unit of the main pass, or of the state-only prepass of
    /// split sequences (`state_only`): label, source, entry and `-D` defines.
    pub fn variant(&self, state_only: bool) -> KernelVariant {
        KernelVariant::new(
            self.label(state_only),
            self.source(),
            self.entry(),
            self.defines(state_only),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(n: usize, p: usize) -> SsdDims {
        SsdDims::new(1, 100, 2, p, n, 1)
    }

    const H100: &DeviceLimits = &DeviceLimits::H100_SXM;

    #[test]
    fn bf16_reference_shape_takes_the_fused_kernel_with_three_blocks_per_sm() {
        let c = KernelConfig::select(
            DType::Bf16,
            &dims(128, 64),
            SsdFeatures::all(),
            &CudaOptions::default(),
            H100,
        )
        .unwrap();
        let KernelPath::Fused(t) = c.path else {
            panic!("expected the fused kernel, got {c:?}")
        };
        // dims() has 2 heads in 1 group: the C B^T tiles are shared, so precomputed.
        assert_eq!(
            (t.p_tile, t.warps, t.y_cols, t.min_blocks, t.cb_global),
            (64, 4, 64, 3, true)
        );
        // 1 stage of x/B/C tiles and the 10 f32 C B^T tiles, the bf16 state tile,
        // the double-buffered s/dt'/w arrays: three blocks fit in 228 KiB.
        assert_eq!(
            c.smem_bytes(false),
            64 * 72 * 2 + 2 * 64 * 136 * 2 + 10 * 1024 + 64 * 136 * 2 + 2 * 3 * 64 * 4
        );
        assert!(3 * (c.smem_bytes(false) + 1024) <= H100.smem_per_sm as usize);
        assert!(c.smem_bytes(true) < c.smem_bytes(false));
        assert_eq!(c.cb_floats_per_chunk(), 10 * 256);
    }

    #[test]
    fn the_prepass_takes_two_stages_where_three_blocks_still_fit() {
        let select = |q: usize, n: usize| {
            let opts = CudaOptions {
                chunk_size: q,
                ..CudaOptions::default()
            };
            KernelConfig::select(DType::Bf16, &dims(n, 64), SsdFeatures::all(), &opts, H100)
                .unwrap()
        };
        let c = select(64, 128);
        let KernelPath::Fused(t) = c.path else {
            panic!("expected the fused kernel, got {c:?}")
        };
        assert_eq!((t.stages, t.prepass_stages), (1, 2));
        // Two stages of x and B tiles plus 8 chunks' s/dt'/w, no C, C B^T or state.
        assert_eq!(
            c.smem_bytes(true),
            2 * (64 * 72 * 2 + 64 * 136 * 2) + 8 * 3 * 64 * 4
        );
        assert!(t.min_blocks * (c.smem_bytes(true) + 1024) <= H100.smem_per_sm as usize);
        let defines = c.defines(true);
        assert!(defines.contains(&("SSD_STAGES", "2".to_string())));
        assert!(c.label(true).starts_with("mamba2.ssd_fused.s2w4y64cb."));
        assert!(c.defines(false).contains(&("SSD_STAGES", "1".to_string())));
        // Wherever it is chosen, as many prepass blocks as main blocks fit on an SM.
        for q in CHUNK_SIZES {
            for n in [16, 32, 64, 128, 256] {
                let c = select(q, n);
                if let KernelPath::Fused(t) = c.path {
                    let fits =
                        t.min_blocks * (c.smem_bytes(true) + 1024) <= H100.smem_per_sm as usize;
                    assert!(fits, "Q={q} N={n}: {t:?}, {} B", c.smem_bytes(true));
                }
            }
        }
    }

    #[test]
    fn f32_and_odd_shapes_fall_back_to_simt() {
        let opts = CudaOptions::default();
        let f = SsdFeatures::all();
        for (dtype, n, p) in [
            (DType::F32, 128, 64),
            (DType::Bf16, 24, 64),
            (DType::F16, 64, 48),
        ] {
            let c = KernelConfig::select(dtype, &dims(n, p), f, &opts, H100).unwrap();
            assert_eq!(c.path, KernelPath::Simt, "{dtype} N={n} P={p}");
        }
        let forced = CudaOptions {
            kernel: KernelChoice::Fused,
            ..opts
        };
        let err = KernelConfig::select(DType::F32, &dims(128, 64), f, &forced, H100);
        assert!(matches!(err, Err(SsmError::Unsupported { .. })));
    }

    #[test]
    fn large_chunks_that_do_not_fit_fall_back_or_refuse() {
        let opts = CudaOptions {
            chunk_size: 256,
            stages: 2,
            ..CudaOptions::default()
        };
        let c = KernelConfig::select(DType::Bf16, &dims(256, 64), SsdFeatures::all(), &opts, H100)
            .unwrap();
        assert_eq!(c.path, KernelPath::Simt);
        let bad = CudaOptions {
            chunk_size: 96,
            ..CudaOptions::default()
        };
        assert!(matches!(
            KernelConfig::select(DType::Bf16, &dims(64, 64), SsdFeatures::all(), &bad, H100),
            Err(SsmError::Unsupported { .. })
        ));
        assert!(matches!(
            KernelConfig::select(
                DType::F64,
                &dims(64, 64),
                SsdFeatures::all(),
                &CudaOptions::default(),
                H100
            ),
            Err(SsmError::Unsupported { .. })
        ));
    }

    #[test]
    fn n256_uses_eight_warps_to_keep_the_state_at_64_registers() {
        let c = KernelConfig::select(
            DType::Bf16,
            &dims(256, 128),
            SsdFeatures::all(),
            &CudaOptions::default(),
            H100,
        )
        .unwrap();
        let KernelPath::Fused(t) = c.path else {
            panic!("expected fused")
        };
        assert_eq!((t.warps, t.y_cols, c.p_tiles()), (8, 32, 2));
    }

    #[test]
    fn issue_13_shape_is_fused_and_launchable_on_every_known_device() {
        // bf16, P = 64, N = 96 (N / 8 = 12 vectors per B/C row do not divide the
        // 128 threads: the kernel's copy loop leaves the last 8 idle).
        let d = SsdDims::new(2, 4097, 24, 64, 96, 3);
        for (name, limits) in DeviceLimits::KNOWN {
            for q in CHUNK_SIZES {
                let opts = CudaOptions {
                    chunk_size: q,
                    ..CudaOptions::default()
                };
                let c = KernelConfig::select(DType::Bf16, &d, SsdFeatures::all(), &opts, &limits)
                    .unwrap();
                assert!(c.max_module_smem() <= limits.smem_per_block_optin as usize);
                assert!(c
                    .defines(false)
                    .contains(&("SSD_MAX_SMEM", limits.smem_per_block_optin.to_string())));
                if let KernelPath::Fused(t) = c.path {
                    let per_block = c.smem_bytes(false) + limits.smem_reserved_per_block as usize;
                    assert!(
                        t.min_blocks * per_block <= limits.smem_per_sm as usize,
                        "{name}"
                    );
                } else {
                    // Only the small card runs out of shared memory, at Q = 256.
                    assert!(
                        limits == DeviceLimits::SM86_SMALL && q == 256,
                        "{name} Q={q}"
                    );
                }
            }
        }
        // 100 KiB per SM holds one fused block at the reference shape, 228 KiB three.
        let blocks = |limits: &DeviceLimits| {
            let c = KernelConfig::select(
                DType::Bf16,
                &dims(128, 64),
                SsdFeatures::all(),
                &CudaOptions::default(),
                limits,
            )
            .unwrap();
            match c.path {
                KernelPath::Fused(t) => t.min_blocks,
                KernelPath::Simt => 0,
            }
        };
        assert_eq!(blocks(&DeviceLimits::H200), 3);
        assert_eq!(blocks(&DeviceLimits::SM86_SMALL), 1);
    }

    #[test]
    fn a_head_alone_in_its_group_forms_its_own_tiles() {
        let d = SsdDims {
            groups: 2,
            ..dims(128, 64)
        };
        let c = KernelConfig::select(
            DType::Bf16,
            &d,
            SsdFeatures::all(),
            &CudaOptions::default(),
            H100,
        )
        .unwrap();
        assert!(!c.uses_chunk_cb());
        let q128 = CudaOptions {
            chunk_size: 128,
            ..CudaOptions::default()
        };
        let c = KernelConfig::select(DType::Bf16, &dims(128, 64), SsdFeatures::all(), &q128, H100)
            .unwrap();
        assert!(!c.uses_chunk_cb(), "only chunk 64 precomputes by default");
    }
}
