//! The CUDA backward of the SSD (`kernels/mamba2/ssd_bwd.cu`, derivation in
//! docs/BACKWARD-SSD.md, kernel notes in docs/kernels/mamba2-ssd-bwd.md): its
//! configuration, the device-resident buffers, the six launches, and the
//! host-slice entry point.
//!
//! - [`ssd_backward_cuda`]: host slices in, [`SsdGrads`] out (every gradient
//!   buffer poisoned on the device first, so an unwritten element shows as NaN).
//! - [`SsdBwdPlan`] + [`SsdGradBuffers`] + [`SsdBwdWorkspace`]: the
//!   device-resident path (compile once, launch many times), for benchmarks and
//!   callers whose tensors stay on the GPU. The forward's inputs are passed as
//!   the forward's own [`SsdDeviceInputs`]; the forward saves nothing for the
//!   backward (the chunk states are recomputed, docs/BACKWARD-SSD.md §6).
//!
//! Deterministic by construction: no atomics, every sum in a fixed order (the
//! kernel's header), so reruns are bit-identical.
//!
//! Memory beyond the inputs and the gradients ([`SsdBwdWorkspace::bytes`]), with
//! `T` tokens, `K` chunks, all f32: `dt'`, `s` (`2 T H`), `dy`, `S C`, `G B`
//! (`3 T H P`), entering states and their gradients (`2 K H P N`), per-head `dB`,
//! `dC` (`2 T H N`), `C B^T` (`K G Q^2`), `dy . x` (`K H Q^2`) and the parameter
//! partials (`K H (2 + P)`). At M2-2.7B and Q = 256 that is about 4.7 GB: the
//! price of a correctness-first kernel that keeps its intermediates in global
//! memory.

use ssm_core::mamba2::{SsdDims, SsdParams};
use ssm_core::mamba2_grad::validate_grad_inputs;
use ssm_core::{DType, Result, SsdGrads, SsmError};
use ssm_gpu::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use ssm_gpu::{ContextId, DeviceElement, Gpu, Kernel, KernelSource, KernelVariant};

use super::config::{unsupported, DMode, SsdFeatures, CHUNK_SIZES};
use super::plan::SsdDeviceInputs;
use super::work;
use crate::cpu::checked_product;

/// The backward kernels, embedded at build time.
pub static BWD_SOURCE: KernelSource = ssm_gpu::kernel_source!("mamba2/ssd_bwd.cu");

/// Threads per block of every backward kernel (fixed in the kernel).
pub const BWD_THREADS: u32 = 256;

/// The six entry points, in launch order, with their label suffixes.
const ENTRIES: [(&str, &str); 6] = [
    ("chunk", "ssd_bwd_chunk"),
    ("cb", "ssd_bwd_cb"),
    ("pass", "ssd_bwd_pass"),
    ("grad", "ssd_bwd_grad"),
    ("reduce_bc", "ssd_bwd_reduce_bc"),
    ("reduce_params", "ssd_bwd_reduce_params"),
];

/// Default chunk length of the backward.
pub const DEFAULT_BWD_CHUNK: usize = 64;

/// The compile-time configuration of the backward kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BwdConfig {
    /// Input element type (the gradients of tensor inputs come back in it).
    pub dtype: DType,
    /// Chunk length Q of the backward ([`DEFAULT_BWD_CHUNK`] unless chosen).
    pub chunk: usize,
    /// `N`, the state size.
    pub d_state: usize,
    /// `P`, the head dimension.
    pub head_dim: usize,
    /// The forward's optional inputs (each a compile-time switch).
    pub features: SsdFeatures,
    /// Whether the call passes `d_final_states`.
    pub d_final: bool,
    /// `S C` and `G B` of `ssd_bwd_grad` on the tensor cores (SSD_BWD_MMA,
    /// bf16 only; [`BwdConfig::with_tensor_cores`]); off: the SIMT loop (v1).
    pub tensor_cores: bool,
    /// Stages A + C and E as shared-memory tiled kernels (SSD_BWD_TILED, v3;
    /// the default wherever [`BwdConfig::tiled_supports`] holds;
    /// [`BwdConfig::with_tiled`]).
    pub tiled: bool,
    /// The tiled kernels' products on the tensor cores over bf16 planes of
    /// their operands (SSD_BWD_TC, v4; the default wherever
    /// [`BwdConfig::tensor_tiles_supports`] holds; [`BwdConfig::with_tensor_tiles`]).
    pub tensor_tiles: bool,
}

impl BwdConfig {
    /// The configuration, or [`SsmError::Unsupported`] naming the constraint
    /// (checked before anything is compiled).
    pub fn new(
        dtype: DType,
        dims: &SsdDims,
        features: SsdFeatures,
        d_final: bool,
        chunk: usize,
    ) -> Result<Self> {
        if dtype == DType::F64 {
            return Err(unsupported(
                "the backward on f64 inputs (use f32, f16 or bf16)".into(),
            ));
        }
        if !CHUNK_SIZES.contains(&chunk) {
            return Err(unsupported(format!(
                "the backward with chunk_size = {chunk} (64, 128 or 256)"
            )));
        }
        // The kernel keeps per-token and per-pair vectors in shared memory and
        // loops over N and P with runtime-sized strides: any N and P work, but
        // the range is what is tested (P 32-128 and N 16-256 are the model
        // shapes; smaller ones are tested too).
        if dims.d_state > 256 || dims.head_dim > 256 {
            return Err(unsupported(format!(
                "the backward for d_state = {} and head_dim = {} (each at most 256)",
                dims.d_state, dims.head_dim
            )));
        }
        let tiled = Self::tiled_supports(chunk, dims.d_state, dims.head_dim).is_ok();
        Ok(BwdConfig {
            dtype,
            chunk,
            d_state: dims.d_state,
            head_dim: dims.head_dim,
            features,
            d_final,
            tensor_cores: false,
            tiled,
            tensor_tiles: tiled && Self::tensor_tiles_supports(dtype, dims.head_dim).is_ok(),
        })
    }

    /// Whether v4's tensor-core tiles take this shape on top of
    /// [`BwdConfig::tiled_supports`], or why not: bf16 inputs (B, C and x are
    /// then exact single planes) and `head_dim` 64 (its shared-memory layout);
    /// elsewhere the tiled kernels keep v3's SIMT products.
    pub fn tensor_tiles_supports(dtype: DType, head_dim: usize) -> Result<()> {
        if dtype == DType::Bf16 && head_dim == 64 {
            return Ok(());
        }
        Err(unsupported(format!(
            "the tensor-core tiles of the backward on {dtype} inputs with head_dim = \
             {head_dim} (bf16 and head_dim 64)"
        )))
    }

    /// The tiled configuration with v4's tensor-core products on or off; on
    /// fails with [`SsmError::Unsupported`] where the tiled kernels or
    /// [`BwdConfig::tensor_tiles_supports`] do not take the shape.
    pub fn with_tensor_tiles(self, on: bool) -> Result<Self> {
        let mut c = if on { self.with_tiled(true)? } else { self };
        if on {
            Self::tensor_tiles_supports(c.dtype, c.head_dim)?;
        }
        c.tensor_tiles = on;
        Ok(c)
    }

    /// Whether the tiled v3 kernels take this shape, or why not: chunk 64,
    /// `head_dim` 64 or 128, `d_state` a multiple of 64 up to 256 (their 64 x 64
    /// tiles; other shapes run v1).
    pub fn tiled_supports(chunk: usize, d_state: usize, head_dim: usize) -> Result<()> {
        if chunk == 64 && matches!(head_dim, 64 | 128) && d_state % 64 == 0 && d_state <= 256 {
            return Ok(());
        }
        Err(unsupported(format!(
            "the tiled backward for chunk_size = {chunk}, d_state = {d_state}, head_dim = \
             {head_dim} (chunk 64, head_dim 64 or 128, d_state a multiple of 64 up to 256)"
        )))
    }

    /// The same configuration on the tiled v3 kernels or on v1's loops; on
    /// fails with [`SsmError::Unsupported`] where [`BwdConfig::tiled_supports`]
    /// does, before anything is compiled. Turning tensor cores on turns this off.
    pub fn with_tiled(mut self, on: bool) -> Result<Self> {
        if on {
            Self::tiled_supports(self.chunk, self.d_state, self.head_dim)?;
            self.tensor_cores = false;
        } else {
            self.tensor_tiles = false;
        }
        self.tiled = on;
        Ok(self)
    }

    /// Dynamic shared memory of `ssd_bwd_chunk` and `ssd_bwd_grad` in the tiled
    /// build (the layout of kernels/mamba2/ssd_bwd_tiled.cuh, which asserts the
    /// same numbers); zero for v1 and v2 (static arrays only).
    pub fn tiled_smem_bytes(&self) -> (usize, usize) {
        if !self.tiled {
            return (0, 0);
        }
        let (q, p, n, threads) = (
            self.chunk,
            self.head_dim,
            self.d_state,
            BWD_THREADS as usize,
        );
        let (ld, ldp, ldn) = (64 + 4, p + 4, n + 4);
        let results = 2 * q * ldp + q * ld;
        let grad_f32 = 8 * q + threads + 2 * q * ldp + 2 * q * ld;
        if self.tensor_tiles {
            // u16 planes with rows padded by 8 (kernels: PLP, PLN, PLQ, PL64).
            let (plp, pln, plq, pl64) = (p + 8, n + 8, q + 8, 64 + 8);
            let chunk = 4 * 2 * q + 2 * (6 * q * plp + 2 * q * pln);
            let stage = 2 * (2 * q * pl64 + 6 * p * pl64);
            let planes = 4 * q * plp + 2 * q * plq;
            let grad = 4 * grad_f32 + 2 * planes + stage.max(4 * results);
            return (chunk, grad);
        }
        let chunk = 2 * q + 2 * q * ldp + 2 * q * ldn;
        let stage = (2 * q + 2 * p) * ld;
        let grad = grad_f32 + stage.max(results);
        (4 * chunk, 4 * grad)
    }

    /// The default configuration cut down to a device that allows `optin` bytes
    /// of shared memory per block: v4's tensor-core tiles (201 KB at P 64, N
    /// 128) where they fit, else v3's tiles (142 KB), else v1's loops (a few KB
    /// of static arrays). [`SsdBwdPlan::with_config`] instead refuses a
    /// configuration that does not fit, naming the sizes.
    pub fn fit_shared_memory(mut self, optin: usize) -> Self {
        let fits = |c: &BwdConfig| {
            let (chunk, grad) = c.tiled_smem_bytes();
            chunk.max(grad) <= optin
        };
        if self.tensor_tiles && !fits(&self) {
            self.tensor_tiles = false;
        }
        if self.tiled && !fits(&self) {
            self.tiled = false;
        }
        self
    }

    /// The same configuration with the tensor-core `S C` / `G B` of
    /// `ssd_bwd_grad` on or off; on needs bf16 inputs, `d_state` a multiple of
    /// 16 and `head_dim` a multiple of 8 ([`SsmError::Unsupported`] otherwise,
    /// before anything is compiled).
    pub fn with_tensor_cores(mut self, on: bool) -> Result<Self> {
        if on && self.dtype != DType::Bf16 {
            return Err(unsupported(format!(
                "the tensor-core backward on {} inputs (bf16 only: the f32 states are \
                 split into three bf16 parts)",
                self.dtype
            )));
        }
        if on {
            self.tiled = false;
            self.tensor_tiles = false;
        }
        if on && (self.d_state % 16 != 0 || self.head_dim % 8 != 0) {
            return Err(unsupported(format!(
                "the tensor-core backward for d_state = {} and head_dim = {} (d_state a \
                 multiple of 16, head_dim of 8)",
                self.d_state, self.head_dim
            )));
        }
        self.tensor_cores = on;
        Ok(self)
    }

    fn dtype_define(&self) -> u8 {
        match self.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            _ => 2,
        }
    }

    /// The `-D` defines of `ssd_bwd.cu`.
    pub fn defines(&self) -> Vec<(&'static str, String)> {
        let f = &self.features;
        let flag = |on: bool| u8::from(on).to_string();
        let d_mode = match f.d {
            DMode::None => 0,
            DMode::PerHead => 1,
            DMode::PerHeadDim => 2,
        };
        let mut defines = vec![
            ("SSD_DTYPE", self.dtype_define().to_string()),
            ("SSD_Q", self.chunk.to_string()),
            ("SSD_N", self.d_state.to_string()),
            ("SSD_P", self.head_dim.to_string()),
            ("SSD_DT_BIAS", flag(f.dt_bias)),
            ("SSD_DT_SOFTPLUS", flag(f.dt_softplus)),
            ("SSD_D_MODE", d_mode.to_string()),
            ("SSD_HAS_Z", flag(f.z)),
            ("SSD_HAS_S0", flag(f.initial_states)),
            ("SSD_HAS_DFINAL", flag(self.d_final)),
        ];
        // Only when on, so that the SIMT modules keep v1's defines (and cache keys).
        if self.tensor_cores {
            defines.push(("SSD_BWD_MMA", "1".to_string()));
        }
        if self.tiled {
            let (chunk, grad) = self.tiled_smem_bytes();
            defines.push(("SSD_BWD_TILED", "1".to_string()));
            if self.tensor_tiles {
                defines.push(("SSD_BWD_TC", "1".to_string()));
            }
            defines.push(("SSD_BWD_CHUNK_SMEM", chunk.to_string()));
            defines.push(("SSD_BWD_GRAD_SMEM", grad.to_string()));
        }
        defines
    }

    /// A stable name, e.g. `bf16.q64.n128.p64` (`.mma` with tensor cores,
    /// `.tiled` on the v3 kernels, `.tc` on v4's tensor-core tiles).
    pub fn label(&self) -> String {
        let version = if self.tensor_cores {
            ".mma"
        } else if self.tensor_tiles {
            ".tc"
        } else if self.tiled {
            ".tiled"
        } else {
            ""
        };
        format!(
            "{}.q{}.n{}.p{}{version}",
            self.dtype, self.chunk, self.d_state, self.head_dim
        )
    }

    /// The six kernels as [`KernelVariant`]s (labels are `kernels/budgets.toml` keys).
    pub fn variants(&self) -> Vec<KernelVariant> {
        ENTRIES
            .iter()
            .map(|(what, entry)| {
                KernelVariant::new(
                    format!("mamba2.ssd_bwd_{what}.{}", self.label()),
                    BWD_SOURCE,
                    entry,
                    self.defines(),
                )
            })
            .collect()
    }
}

/// `struct SsdBwdArgs` of `kernels/mamba2/ssd_bwd.cu`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SsdBwdArgs {
    x: u64,
    dt: u64,
    a: u64,
    b: u64,
    c: u64,
    dt_bias: u64,
    d: u64,
    z: u64,
    s0: u64,
    dout: u64,
    dfinal: u64,
    dx: u64,
    ddt: u64,
    db: u64,
    dc: u64,
    dz: u64,
    da: u64,
    ddt_bias: u64,
    dd: u64,
    dinit: u64,
    ws_dt: u64,
    ws_cum: u64,
    ws_dy: u64,
    ws_s: u64,
    ws_g: u64,
    ws_cb: u64,
    ws_gx: u64,
    ws_sc: u64,
    ws_gb: u64,
    ws_dbh: u64,
    ws_dch: u64,
    ws_part: u64,
    chunks: u64,
    seqs: u64,
    nchunks: i64,
    ntok: i64,
    heads: i32,
    groups: i32,
    nseqs: i32,
    pad: i32,
    dt_min: f32,
    dt_max: f32,
}
const _: () = assert!(std::mem::size_of::<SsdBwdArgs>() == 312);

// SAFETY: plain data with the C layout the kernel declares (size asserted on both sides).
unsafe impl DeviceRepr for SsdBwdArgs {}

/// The gradients on the device, in the layouts of [`SsdGrads`].
pub struct SsdGradBuffers<T> {
    /// `(b, L, H, P)`.
    pub dx: CudaSlice<T>,
    /// `(b, L, H)`: with respect to the raw `dt` (through bias, softplus, clamp).
    pub ddt: CudaSlice<T>,
    /// `(H)`.
    pub da: CudaSlice<f32>,
    /// `(b, L, G, N)`.
    pub db: CudaSlice<T>,
    /// `(b, L, G, N)`.
    pub dc: CudaSlice<T>,
    /// `(H)` or `(H, P)`, as the forward's `D`; present iff the plan has `D`.
    pub dd: Option<CudaSlice<f32>>,
    /// `(b, L, H, P)`; present iff the plan has `z`.
    pub dz: Option<CudaSlice<T>>,
    /// `(H)`; present iff the plan has `dt_bias`.
    pub ddt_bias: Option<CudaSlice<f32>>,
    /// `(b or num_seqs, H, P, N)`; present iff the plan has initial states.
    pub dinitial_states: Option<CudaSlice<f32>>,
}

/// Scratch of the backward (module docs); reused across launches of one plan.
pub struct SsdBwdWorkspace {
    bufs: [CudaSlice<f32>; 12],
}

impl SsdBwdWorkspace {
    /// Bytes of scratch the backward needs beyond its inputs and gradients.
    pub fn bytes(&self) -> usize {
        self.bufs.iter().map(|b| 4 * b.len()).sum()
    }
}

/// The compiled backward for one problem shape and option set.
pub struct SsdBwdPlan {
    context: ContextId,
    /// The compile-time configuration the kernels were built with.
    pub config: BwdConfig,
    dims: SsdDims,
    dt_limit: (f32, f32),
    num_seqs: usize,
    num_chunks: usize,
    kernels: Vec<Kernel>,
    chunks: CudaSlice<i64>,
    seqs: CudaSlice<i64>,
}

fn upload_i64(gpu: &Gpu, host: &[i64]) -> Result<CudaSlice<i64>> {
    // An empty table still needs a buffer (the kernels never read it then).
    let host: Vec<i64> = if host.is_empty() {
        vec![0]
    } else {
        host.to_vec()
    };
    gpu.stream()
        .clone_htod(&host)
        .map_err(|e| SsmError::Backend(format!("uploading the backward's chunk table: {e:?}")))
}

/// Slices of the `P x N` state elements per (sequence, head) block of
/// `ssd_bwd_pass` (its grid is `pairs x slices`): at least enough for 4 elements
/// per thread (1024 per block), more while the grid is under 1024 blocks, at
/// most one element per thread. The kernel takes any count (it reads it from
/// the grid).
pub(crate) fn pass_slices(pairs: usize, state_elems: usize) -> usize {
    let threads = BWD_THREADS as usize;
    let fewest = state_elems.div_ceil(4 * threads).max(1);
    let most = state_elems.div_ceil(threads).max(1);
    1024usize.div_ceil(pairs.max(1)).clamp(fewest, most)
}

fn grid_of(arg: &'static str, blocks: usize) -> Result<u32> {
    if blocks > i32::MAX as usize {
        return Err(SsmError::Dimension {
            arg,
            reason: format!("{blocks} blocks exceed the grid limit of 2^31 - 1"),
        });
    }
    Ok(blocks as u32)
}

impl SsdBwdPlan {
    /// Plan the backward of the forward described by `p` (sizes, options and
    /// `cu_seqlens`; tensor contents are not read), for a call that passes
    /// `d_final_states` when `d_final`.
    pub fn new<T: DeviceElement>(
        gpu: &Gpu,
        p: &SsdParams<'_, T>,
        d_final: bool,
        chunk: usize,
    ) -> Result<Self> {
        Self::new_with(gpu, p, d_final, chunk, false)
    }

    /// [`SsdBwdPlan::new`] with the tensor-core `S C` / `G B` on or off
    /// ([`BwdConfig::with_tensor_cores`]).
    pub fn new_with<T: DeviceElement>(
        gpu: &Gpu,
        p: &SsdParams<'_, T>,
        d_final: bool,
        chunk: usize,
        tensor_cores: bool,
    ) -> Result<Self> {
        p.validate()?;
        if d_final && !p.return_final_states {
            return Err(SsmError::Dimension {
                arg: "d_final_states",
                reason: "given, but the forward returns no final states".into(),
            });
        }
        Self::for_shapes_with(
            gpu,
            T::DTYPE,
            p.dims,
            SsdFeatures::of(p),
            p.dt_limit,
            p.cu_seqlens,
            d_final,
            chunk,
            tensor_cores,
        )
    }

    /// Plan from shapes and options alone (tensors that live on the device
    /// already, as in [`super::SsdPlan::for_shapes`]): the shape checks of
    /// the forward's plan, then as [`SsdBwdPlan::new`]. `features.final_states`
    /// must be set when `d_final` is.
    #[allow(clippy::too_many_arguments)]
    pub fn for_shapes(
        gpu: &Gpu,
        dtype: DType,
        dims: SsdDims,
        features: SsdFeatures,
        dt_limit: (f32, f32),
        cu_seqlens: Option<&[i64]>,
        d_final: bool,
        chunk: usize,
    ) -> Result<Self> {
        Self::for_shapes_with(
            gpu, dtype, dims, features, dt_limit, cu_seqlens, d_final, chunk, false,
        )
    }

    /// [`SsdBwdPlan::for_shapes`] with the tensor-core `S C` / `G B` on or off
    /// ([`BwdConfig::with_tensor_cores`]).
    #[allow(clippy::too_many_arguments)]
    pub fn for_shapes_with(
        gpu: &Gpu,
        dtype: DType,
        dims: SsdDims,
        features: SsdFeatures,
        dt_limit: (f32, f32),
        cu_seqlens: Option<&[i64]>,
        d_final: bool,
        chunk: usize,
        tensor_cores: bool,
    ) -> Result<Self> {
        super::plan::check_shapes(&dims, dt_limit, cu_seqlens)?;
        if d_final && !features.final_states {
            return Err(SsmError::Dimension {
                arg: "d_final_states",
                reason: "given, but the forward returns no final states".into(),
            });
        }
        let optin = gpu.max_smem_per_block_optin()? as usize;
        let config = BwdConfig::new(dtype, &dims, features, d_final, chunk)?
            .with_tensor_cores(tensor_cores)?
            .fit_shared_memory(optin);
        Self::with_config(gpu, config, dims, dt_limit, cu_seqlens)
    }

    /// Plan with an explicit kernel configuration (e.g. v1's loops through
    /// [`BwdConfig::with_tiled`]`(false)`, for comparisons); the shape checks
    /// of [`SsdBwdPlan::for_shapes`].
    pub fn with_config(
        gpu: &Gpu,
        config: BwdConfig,
        dims: SsdDims,
        dt_limit: (f32, f32),
        cu_seqlens: Option<&[i64]>,
    ) -> Result<Self> {
        super::plan::check_shapes(&dims, dt_limit, cu_seqlens)?;
        if config.d_state != dims.d_state || config.head_dim != dims.head_dim {
            return Err(unsupported(format!(
                "a backward configuration for d_state = {}, head_dim = {} on a problem with {}, {}",
                config.d_state, config.head_dim, dims.d_state, dims.head_dim
            )));
        }
        if config.d_final && !config.features.final_states {
            return Err(SsmError::Dimension {
                arg: "d_final_states",
                reason: "given, but the forward returns no final states".into(),
            });
        }
        let chunk = config.chunk;
        if dims.batch * dims.seqlen == 0 {
            return Err(unsupported(
                "launching the backward on L = 0 (ssd_backward_cuda handles it without a launch)"
                    .into(),
            ));
        }
        let seqs = work::sequences(dims.batch, dims.seqlen, cu_seqlens);
        let table = work::build(&seqs, chunk, 1);
        let num_chunks = table.num_chunks();
        let mut seq_table = Vec::with_capacity(2 * seqs.len());
        let mut first = 0i64;
        for s in &seqs {
            let n = s.len.div_ceil(chunk) as i64;
            seq_table.extend_from_slice(&[first, n]);
            first += n;
        }
        grid_of(
            "seqlen",
            checked_product("seqlen", &[num_chunks, dims.heads])?,
        )?;
        let pairs = checked_product("cu_seqlens", &[seqs.len(), dims.heads])?;
        let state_elems = dims.head_dim * dims.d_state;
        grid_of(
            "cu_seqlens",
            checked_product("cu_seqlens", &[pairs, pass_slices(pairs, state_elems)])?,
        )?;
        let (chunk_smem, grad_smem) = config.tiled_smem_bytes();
        let optin = gpu.max_smem_per_block_optin()? as usize;
        if chunk_smem.max(grad_smem) > optin {
            return Err(unsupported(format!(
                "the tiled backward at head_dim = {}, d_state = {}: {} bytes of shared memory \
                 per block, the device allows {optin}",
                dims.head_dim,
                dims.d_state,
                chunk_smem.max(grad_smem)
            )));
        }
        let mut kernels = config
            .variants()
            .iter()
            .map(|v| gpu.kernel_variant(v).map_err(SsmError::from))
            .collect::<Result<Vec<_>>>()?;
        for (kernel, bytes) in [(0, chunk_smem), (3, grad_smem)] {
            if bytes > 0 {
                kernels[kernel].set_max_dynamic_smem(bytes as u32)?;
            }
        }
        Ok(SsdBwdPlan {
            context: gpu.context_id(),
            config,
            dims,
            dt_limit,
            num_seqs: seqs.len(),
            num_chunks,
            kernels,
            chunks: upload_i64(gpu, &table.chunks)?,
            seqs: upload_i64(gpu, &seq_table)?,
        })
    }

    /// The kernels one launch runs, in order.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    fn tokens(&self) -> usize {
        self.dims.batch * self.dims.seqlen
    }

    fn state_len(&self) -> usize {
        self.num_seqs * self.dims.heads * self.dims.head_dim * self.dims.d_state
    }

    fn d_len(&self) -> usize {
        match self.config.features.d {
            DMode::None => 0,
            DMode::PerHead => self.dims.heads,
            DMode::PerHeadDim => self.dims.heads * self.dims.head_dim,
        }
    }

    /// Poisoned (NaN) gradient buffers for this plan.
    pub fn alloc_grads<T: DeviceElement>(&self, gpu: &Gpu) -> Result<SsdGradBuffers<T>> {
        let d = &self.dims;
        let f = &self.config.features;
        let io = self.tokens() * d.heads * d.head_dim;
        let bc = self.tokens() * d.groups * d.d_state;
        let when = |on: bool, len: usize| -> Result<Option<CudaSlice<f32>>> {
            Ok(if on {
                Some(gpu.alloc_poisoned(len)?)
            } else {
                None
            })
        };
        Ok(SsdGradBuffers {
            dx: gpu.alloc_poisoned(io)?,
            ddt: gpu.alloc_poisoned(self.tokens() * d.heads)?,
            da: gpu.alloc_poisoned(d.heads)?,
            db: gpu.alloc_poisoned(bc)?,
            dc: gpu.alloc_poisoned(bc)?,
            dd: when(f.d != DMode::None, self.d_len())?,
            dz: if f.z {
                Some(gpu.alloc_poisoned(io)?)
            } else {
                None
            },
            ddt_bias: when(f.dt_bias, d.heads)?,
            dinitial_states: when(f.initial_states, self.state_len())?,
        })
    }

    fn workspace_lens(&self) -> Result<[usize; 12]> {
        let d = &self.dims;
        let (t, h, p, n, q, k) = (
            self.tokens(),
            d.heads,
            d.head_dim,
            d.d_state,
            self.config.chunk,
            self.num_chunks.max(1),
        );
        let arg = "seqlen";
        Ok([
            checked_product(arg, &[t, h])?,
            checked_product(arg, &[t, h])?,
            checked_product(arg, &[t, h, p])?,
            checked_product(arg, &[k, h, p, n])?,
            checked_product(arg, &[k, h, p, n])?,
            checked_product(arg, &[k, d.groups, q, q])?,
            checked_product(arg, &[k, h, q, q])?,
            checked_product(arg, &[t, h, p])?,
            checked_product(arg, &[t, h, p])?,
            checked_product(arg, &[t, h, n])?,
            checked_product(arg, &[t, h, n])?,
            checked_product(arg, &[k, h, 2 + p])?,
        ])
    }

    /// Bytes [`SsdBwdPlan::workspace`] allocates.
    pub fn workspace_bytes(&self) -> Result<usize> {
        Ok(self.workspace_lens()?.iter().map(|l| 4 * l).sum())
    }

    /// Allocate the scratch of this plan (poisoned: every element the kernels
    /// read is written first).
    pub fn workspace(&self, gpu: &Gpu) -> Result<SsdBwdWorkspace> {
        let lens = self.workspace_lens()?;
        let mut bufs = Vec::with_capacity(12);
        for l in lens {
            bufs.push(gpu.alloc_poisoned::<f32>(l)?);
        }
        Ok(SsdBwdWorkspace {
            bufs: bufs
                .try_into()
                .map_err(|_| SsmError::Backend("backward workspace: wrong buffer count".into()))?,
        })
    }

    fn check_lengths<T: DeviceElement>(
        &self,
        inp: &SsdDeviceInputs<T>,
        d_out: &CudaSlice<T>,
        d_final: Option<&CudaSlice<f32>>,
        g: &SsdGradBuffers<T>,
        ws: &SsdBwdWorkspace,
    ) -> Result<()> {
        let d = &self.dims;
        let f = &self.config.features;
        let io = self.tokens() * d.heads * d.head_dim;
        let bc = self.tokens() * d.groups * d.d_state;
        let check = |arg: &'static str, got: Option<usize>, want: Option<usize>| -> Result<()> {
            if got == want {
                return Ok(());
            }
            Err(SsmError::Dimension {
                arg,
                reason: format!(
                    "device buffer has {} elements, the backward plan expects {}",
                    got.map_or("none".into(), |g| g.to_string()),
                    want.map_or("none".into(), |w| w.to_string())
                ),
            })
        };
        let len = |s: &CudaSlice<T>| Some(s.len());
        let len32 = |s: &CudaSlice<f32>| Some(s.len());
        let opt32 = |s: &Option<CudaSlice<f32>>| s.as_ref().map(|v| v.len());
        check("x", len(&inp.x), Some(io))?;
        check("dt", len(&inp.dt), Some(self.tokens() * d.heads))?;
        check("A", len32(&inp.a), Some(d.heads))?;
        check("B", len(&inp.b), Some(bc))?;
        check("C", len(&inp.c), Some(bc))?;
        check("dt_bias", opt32(&inp.dt_bias), f.dt_bias.then_some(d.heads))?;
        let dl = self.d_len();
        check("D", opt32(&inp.d), (dl > 0).then_some(dl))?;
        check("z", inp.z.as_ref().map(|v| v.len()), f.z.then_some(io))?;
        check(
            "initial_states",
            opt32(&inp.initial_states),
            f.initial_states.then_some(self.state_len()),
        )?;
        check("d_out", len(d_out), Some(io))?;
        check(
            "d_final_states",
            d_final.map(|v| v.len()),
            self.config.d_final.then_some(self.state_len()),
        )?;
        check("dx", len(&g.dx), Some(io))?;
        check("ddt", len(&g.ddt), Some(self.tokens() * d.heads))?;
        check("dA", len32(&g.da), Some(d.heads))?;
        check("dB", len(&g.db), Some(bc))?;
        check("dC", len(&g.dc), Some(bc))?;
        check("dD", opt32(&g.dd), (dl > 0).then_some(dl))?;
        check("dz", g.dz.as_ref().map(|v| v.len()), f.z.then_some(io))?;
        check("ddt_bias", opt32(&g.ddt_bias), f.dt_bias.then_some(d.heads))?;
        check(
            "dinitial_states",
            opt32(&g.dinitial_states),
            f.initial_states.then_some(self.state_len()),
        )?;
        let lens = self.workspace_lens()?;
        for (b, l) in ws.bufs.iter().zip(lens) {
            check("workspace", Some(b.len()), Some(l))?;
        }
        Ok(())
    }

    /// Enqueue the backward on the GPU's stream (asynchronous): the gradients of
    /// `<d_out, out> + <d_final_states, final_states>` for the forward whose
    /// inputs are `inp`.
    pub fn launch<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        inp: &SsdDeviceInputs<T>,
        d_out: &CudaSlice<T>,
        d_final: Option<&CudaSlice<f32>>,
        grads: &mut SsdGradBuffers<T>,
        ws: &mut SsdBwdWorkspace,
    ) -> Result<()> {
        gpu.expect_context(self.context, "the SSD backward plan")?;
        if T::DTYPE != self.config.dtype {
            return Err(unsupported(format!(
                "{} buffers with a backward plan made for {}",
                T::DTYPE,
                self.config.dtype
            )));
        }
        self.check_lengths(inp, d_out, d_final, grads, ws)?;
        let stream = gpu.stream();
        let ptr = |s: &CudaSlice<T>| s.device_ptr(stream).0;
        let ptr32 = |s: &CudaSlice<f32>| s.device_ptr(stream).0;
        let opt = |s: &Option<CudaSlice<f32>>| s.as_ref().map_or(0, |v| v.device_ptr(stream).0);
        // The pointers' guards only record stream use; the buffers are borrowed
        // for the whole call, and the launches are enqueued on this stream.
        let w: Vec<u64> = ws
            .bufs
            .iter_mut()
            .map(|b| b.device_ptr_mut(stream).0)
            .collect();
        let mut_t = |s: &mut CudaSlice<T>| s.device_ptr_mut(stream).0;
        let mut_32 = |s: &mut CudaSlice<f32>| s.device_ptr_mut(stream).0;
        let (dt_min, dt_max) = self.dt_limit;
        let args = SsdBwdArgs {
            x: ptr(&inp.x),
            dt: ptr(&inp.dt),
            a: ptr32(&inp.a),
            b: ptr(&inp.b),
            c: ptr(&inp.c),
            dt_bias: opt(&inp.dt_bias),
            d: opt(&inp.d),
            z: inp.z.as_ref().map_or(0, ptr),
            s0: opt(&inp.initial_states),
            dout: ptr(d_out),
            dfinal: d_final.map_or(0, ptr32),
            dx: mut_t(&mut grads.dx),
            ddt: mut_t(&mut grads.ddt),
            db: mut_t(&mut grads.db),
            dc: mut_t(&mut grads.dc),
            dz: grads.dz.as_mut().map_or(0, mut_t),
            da: mut_32(&mut grads.da),
            ddt_bias: grads.ddt_bias.as_mut().map_or(0, mut_32),
            dd: grads.dd.as_mut().map_or(0, mut_32),
            dinit: grads.dinitial_states.as_mut().map_or(0, mut_32),
            ws_dt: w[0],
            ws_cum: w[1],
            ws_dy: w[2],
            ws_s: w[3],
            ws_g: w[4],
            ws_cb: w[5],
            ws_gx: w[6],
            ws_sc: w[7],
            ws_gb: w[8],
            ws_dbh: w[9],
            ws_dch: w[10],
            ws_part: w[11],
            chunks: self.chunks.device_ptr(stream).0,
            seqs: self.seqs.device_ptr(stream).0,
            nchunks: self.num_chunks as i64,
            ntok: self.tokens() as i64,
            heads: self.dims.heads as i32,
            groups: self.dims.groups as i32,
            nseqs: self.num_seqs as i32,
            pad: 0,
            dt_min,
            dt_max,
        };
        let d = &self.dims;
        let bc_elems = self.tokens() * d.groups * d.d_state;
        let grids = [
            self.num_chunks * d.heads,
            self.num_chunks * d.groups,
            self.num_seqs * d.heads * pass_slices(self.num_seqs * d.heads, d.head_dim * d.d_state),
            self.num_chunks * d.heads,
            bc_elems.div_ceil(BWD_THREADS as usize).clamp(1, 132 * 64),
            d.heads,
        ];
        let (chunk_smem, grad_smem) = self.config.tiled_smem_bytes();
        let smem = [chunk_smem, 0, 0, grad_smem, 0, 0];
        for ((kernel, grid), smem) in self.kernels.iter().zip(grids).zip(smem) {
            if grid == 0 {
                continue;
            }
            let cfg = LaunchConfig {
                grid_dim: (grid_of("seqlen", grid)?, 1, 1),
                block_dim: (BWD_THREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut b = stream.launch_builder(&kernel.func);
            b.arg(&args);
            // SAFETY: `args` matches the kernels' `SsdBwdArgs` (size asserted on
            // both sides); every buffer's length was checked against the plan's
            // shape above; the chunk and sequence tables only name tokens inside
            // [0, b L) and sequences inside the state buffers; absent tensors are
            // null and the kernels, compiled without those options, never read them.
            unsafe { b.launch(cfg) }
                .map_err(|e| SsmError::Backend(format!("{}: {e:?}", kernel.name)))?;
        }
        Ok(())
    }
}

/// The backward on `gpu` with chunk length `chunk` (64, 128 or 256): uploads the
/// inputs, runs [`SsdBwdPlan`], downloads every gradient. Validation as
/// [`validate_grad_inputs`]; what the kernels do not handle is
/// [`SsmError::Unsupported`] before anything is compiled.
pub fn ssd_backward_cuda<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    chunk: usize,
) -> Result<SsdGrads<T, f32>> {
    ssd_backward_cuda_with(gpu, p, d_out, d_final_states, chunk, false)
}

/// [`ssd_backward_cuda`] with the tensor-core `S C` / `G B` of `ssd_bwd_grad`
/// on or off ([`BwdConfig::with_tensor_cores`]: bf16, `d_state % 16 == 0`,
/// `head_dim % 8 == 0`).
pub fn ssd_backward_cuda_with<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    chunk: usize,
    tensor_cores: bool,
) -> Result<SsdGrads<T, f32>> {
    let config = || {
        BwdConfig::new(
            T::DTYPE,
            &p.dims,
            SsdFeatures::of(p),
            d_final_states.is_some(),
            chunk,
        )?
        .with_tensor_cores(tensor_cores)
        .map(|_| ())
    };
    let plan = || SsdBwdPlan::new_with(gpu, p, d_final_states.is_some(), chunk, tensor_cores);
    backward_on(gpu, p, d_out, d_final_states, config, plan)
}

/// [`ssd_backward_cuda_with`] on an explicit kernel configuration, planned by
/// [`SsdBwdPlan::with_config`] (which refuses one the device cannot run): e.g.
/// v3's tiles where v4 is the default, `config.with_tensor_tiles(false)`.
pub fn ssd_backward_cuda_config<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    config: BwdConfig,
) -> Result<SsdGrads<T, f32>> {
    let check = || {
        if config.dtype != T::DTYPE || config.d_final != d_final_states.is_some() {
            return Err(unsupported(format!(
                "a backward configuration for {} inputs{} on {} inputs{}",
                config.dtype,
                if config.d_final {
                    " with d_final_states"
                } else {
                    ""
                },
                T::DTYPE,
                if d_final_states.is_some() {
                    " with d_final_states"
                } else {
                    ""
                },
            )));
        }
        Ok(())
    };
    let plan = || SsdBwdPlan::with_config(gpu, config, p.dims, p.dt_limit, p.cu_seqlens);
    backward_on(gpu, p, d_out, d_final_states, check, plan)
}

/// The host-slice backward around a plan: validation (shapes first, then what
/// `config_check` says, then finiteness), upload, launch, download.
fn backward_on<T: DeviceElement>(
    gpu: &Gpu,
    p: &SsdParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    config_check: impl FnOnce() -> Result<()>,
    plan: impl FnOnce() -> Result<SsdBwdPlan>,
) -> Result<SsdGrads<T, f32>> {
    let layout = validate_grad_inputs(p, d_out, d_final_states)?;
    config_check()?;
    // As the forward: non-finite inputs are declined with the argument named.
    if let Err(e) = p.with_check_finite(true).validate() {
        return Err(unsupported(format!("non-finite inputs ({e})")));
    }
    if d_out.iter().any(|v| !v.to_f64().is_finite())
        || d_final_states.is_some_and(|s| s.iter().any(|v| !v.is_finite()))
    {
        return Err(unsupported(
            "non-finite gradient inputs (d_out or d_final_states)".into(),
        ));
    }
    if p.x.is_empty() {
        return Ok(empty_grads(p, d_final_states, layout.num_seqs));
    }
    let plan = plan()?;
    let inp = SsdDeviceInputs::upload(gpu, p)?;
    let d_out = gpu.upload(d_out)?;
    let d_final = d_final_states.map(|s| gpu.upload(s)).transpose()?;
    let mut grads = plan.alloc_grads::<T>(gpu)?;
    let mut ws = plan.workspace(gpu)?;
    plan.launch(gpu, &inp, &d_out, d_final.as_ref(), &mut grads, &mut ws)?;
    let opt = |x: &Option<CudaSlice<f32>>| x.as_ref().map(|x| gpu.download(x)).transpose();
    Ok(SsdGrads {
        dx: gpu.download(&grads.dx)?,
        ddt: gpu.download(&grads.ddt)?,
        da: gpu.download(&grads.da)?,
        db: gpu.download(&grads.db)?,
        dc: gpu.download(&grads.dc)?,
        dd: opt(&grads.dd)?,
        dz: grads.dz.as_ref().map(|x| gpu.download(x)).transpose()?,
        ddt_bias: opt(&grads.ddt_bias)?,
        dinitial_states: opt(&grads.dinitial_states)?,
    })
}

/// No tokens: every sum is empty, and the initial states' gradient is the final
/// states' (the state passes through unchanged).
fn empty_grads<T: DeviceElement>(
    p: &SsdParams<'_, T>,
    d_final_states: Option<&[f32]>,
    num_seqs: usize,
) -> SsdGrads<T, f32> {
    let d = p.dims;
    SsdGrads {
        dx: Vec::new(),
        ddt: Vec::new(),
        da: vec![0.0; d.heads],
        db: Vec::new(),
        dc: Vec::new(),
        dd: p.d.as_ref().map(|dd| vec![0.0; dd.data().len()]),
        dz: p.z.map(|_| Vec::new()),
        ddt_bias: p.dt_bias.map(|_| vec![0.0; d.heads]),
        dinitial_states: p.initial_states.map(|_| match d_final_states {
            Some(g) => g.to_vec(),
            None => vec![0.0; num_seqs * d.heads * d.head_dim * d.d_state],
        }),
    }
}

/// The compiled forms the reference workloads launch (every option on), for the
/// budget check (`kernels/budgets.toml`).
pub fn ssd_bwd_kernel_variants() -> Vec<KernelVariant> {
    let dims = |n, p| SsdDims {
        batch: 1,
        seqlen: 1,
        heads: 2,
        head_dim: p,
        d_state: n,
        groups: 1,
    };
    let mut v = Vec::new();
    for (dtype, n, p, q) in [
        (DType::Bf16, 128, 64, 64),
        (DType::Bf16, 128, 64, 256),
        (DType::F32, 128, 64, 64),
    ] {
        if let Ok(c) = BwdConfig::new(dtype, &dims(n, p), SsdFeatures::all(), true, q) {
            // v1's loops, the tiled v3 where it takes the shape, and v4's
            // tensor-core tiles (the default) where those do.
            if let Ok(simt) = c.with_tiled(false) {
                v.extend(simt.variants());
            }
            if let Ok(tiled) = c.with_tiled(true).and_then(|c| c.with_tensor_tiles(false)) {
                v.extend(tiled.variants());
            }
            if let Ok(tc) = c.with_tensor_tiles(true) {
                v.extend(tc.variants());
            }
        }
    }
    // The tiled v3 at M2-groups' head (P = N = 128) and at the largest state.
    for (n, p) in [(128, 128), (256, 128)] {
        if let Ok(c) = BwdConfig::new(DType::Bf16, &dims(n, p), SsdFeatures::all(), true, 64)
            .and_then(|c| c.with_tiled(true))
        {
            v.extend(c.variants());
        }
    }
    // The tensor-core S C / G B at M2-2.7B's head (bf16, Q 64).
    if let Ok(c) = BwdConfig::new(DType::Bf16, &dims(128, 64), SsdFeatures::all(), true, 64)
        .and_then(|c| c.with_tensor_cores(true))
    {
        v.extend(c.variants());
    }
    v
}
