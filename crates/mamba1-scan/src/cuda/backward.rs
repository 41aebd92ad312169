//! The CUDA backward of the selective scan (`kernels/mamba1/scan_bwd.cu`,
//! docs/BACKWARD-MAMBA1.md): its configuration, the device-resident buffers,
//! the four launches, and the host-slice entry point.
//!
//! - [`selective_scan_backward_cuda`]: host slices in, [`ScanGrads`] out
//!   (every output poisoned on the device first).
//! - [`ScanBwdPlan`] + [`ScanGradBuffers`] + [`ScanBwdWorkspace`]: the
//!   device-resident path (compile once, launch many times), used by the
//!   benchmarks and by callers whose tensors stay on the GPU.
//!
//! Memory beyond the inputs and the gradients ([`ScanBwdWorkspace::bytes`]):
//! the checkpoints, one f32 state per (row, channel) and tile of
//! [`BwdConfig::tile`] steps, and the per-block partial sums of grouped dB/dC
//! (`(rows, D_in / channels_per_block, N, L)` f32 each), which make the
//! channel reduction deterministic without atomics.
//!
//! With [`BwdOptions::forward_checkpoints`] the training forward
//! (`ScanPlan::for_training` + `ScanPlan::launch_training`) writes the
//! checkpoints into the workspace and the backward skips its checkpoint
//! kernel: the same bits, one kernel fewer, but the checkpoints then live from
//! the forward to the backward.

use ssm_core::mamba1::SelectiveScanParams;
use ssm_core::{DType, Result, ScanGradInputs, ScanGrads, SsmError};
use ssm_gpu::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use ssm_gpu::{DeviceElement, DeviceLimits, Gpu, Kernel, KernelSource, KernelVariant};

use super::config::{
    dtype_define, option_defines, option_letters, unsupported, ScanProblem, MAX_D_STATE,
};
use super::launch::{
    expect_len, expect_opt, opt_ptr, opt_ptr_mut, DeviceStatus, ScanBuffers, ScanPlan,
};

pub(crate) static SCAN_BWD_SOURCE: KernelSource = ssm_gpu::kernel_source!("mamba1/scan_bwd.cu");
const ENTRY_CKPT: &str = "mamba1_scan_bwd_ckpt";
const ENTRY_CKPT_SLICES: &str = "mamba1_scan_bwd_ckpt_sm";
const ENTRY_SWEEP: &str = "mamba1_scan_bwd";
const ENTRY_SWEEP_SLICES: &str = "mamba1_scan_bwd_sm";
const ENTRY_REDUCE_BC: &str = "mamba1_scan_bwd_reduce_bc";
const ENTRY_REDUCE_PARAMS: &str = "mamba1_scan_bwd_reduce_params";
const ENTRY_CHECK_OFFSETS: &str = "mamba1_scan_bwd_check_offsets";
/// Threads per block of the two reduction kernels (fixed in the kernel).
const REDUCE_THREADS: u32 = 256;
/// Environment variable that shortens the backward's tile (experiments only).
pub const TILE_ENV: &str = "SSM_SCAN_BWD_TILE";

/// The compile-time tiling of the backward kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BwdConfig {
    /// Input element type (the gradients of tensor inputs come back in it).
    pub dtype: DType,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// Lanes per channel (a power of two up to 32).
    pub lanes_per_channel: usize,
    /// States each lane of the sweep owns (`ceil(N / lanes_per_channel)`).
    pub states_per_lane: usize,
    /// Threads per block of the sweep.
    pub threads: usize,
    /// Time steps per tile: the checkpoint interval. Each lane holds the tile's
    /// states and decays in registers (`2 * tile * states_per_lane` floats).
    pub tile: usize,
    /// Lanes per channel of the checkpoint kernel (it keeps no tile in
    /// registers, so its lanes take more states each: fewer shared-memory reads
    /// per state and step); it runs `channels_per_block() * ckpt_lanes` threads.
    pub ckpt_lanes: usize,
    /// States each lane of the checkpoint kernel owns.
    pub ckpt_states_per_lane: usize,
    /// Blocks per SM the sweep's register allocation must allow
    /// (`__launch_bounds__`): 6 keeps the lean sweep at 80 registers
    /// ([`BwdOptions::six_blocks`]), 5 the sweep at 96 (tile 8, 8 or more
    /// lanes), 4 at 128, 3 at or under 170 (tile 16).
    pub min_blocks: usize,
    /// The forward has the skip term `D`.
    pub has_d: bool,
    /// The forward gates its output with `silu(z)`.
    pub has_z: bool,
    /// The forward adds `delta_bias` to `delta`.
    pub has_delta_bias: bool,
    /// The forward applies softplus to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// B is constant `(D_in, N)` rather than grouped `(b, G, N, L)`.
    pub b_const: bool,
    /// C is constant `(D_in, N)` rather than grouped `(b, G, N, L)`.
    pub c_const: bool,
    /// The checkpoints come from the training forward
    /// ([`crate::cuda::ScanPlan::for_training`]): the backward does not run its
    /// checkpoint kernel ([`BwdOptions::forward_checkpoints`]).
    pub forward_checkpoints: bool,
    /// The lean sweep (`SCAN_LEAN`, [`BwdOptions::six_blocks`]).
    pub lean: bool,
    /// Which sweep kernel runs: the slice-major one (v5) where N <= 32, the
    /// lanes sweep (v3b) beyond or when asked for ([`BwdOptions::lanes_sweep`]).
    /// The fields above other than `tile` and the checkpoint kernel's describe
    /// the lanes sweep.
    pub sweep: Sweep,
}

/// The sweep kernel of a [`BwdConfig`] (docs/kernels/mamba1-scan-bwd.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// `mamba1_scan_bwd`: the lanes of a channel in one warp (v3b).
    Lanes,
    /// `mamba1_scan_bwd_sm` (kernels/mamba1/scan_bwd_slices.cuh, v5): blocks of
    /// 32 channels, one warp per slice of `states` states of all of them.
    Slices {
        /// Warps per block (1, 2 or 4: the tile's steps split evenly over them).
        slices: usize,
        /// States per slice (`ceil(N / slices)`).
        states: usize,
        /// The tile's decays kept in registers (255 registers, 8 warps per SM)
        /// rather than recomputed in the reverse sweep (168, 12 warps per SM).
        keep_decays: bool,
        /// Blocks per SM the registers must allow (`__launch_bounds__`).
        min_blocks: usize,
    },
}

/// Selectable variants of the backward (docs/kernels/mamba1-scan-bwd.md, v4),
/// so that one device run can time them side by side; the default is the
/// measured best.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BwdOptions {
    /// The training forward writes the checkpoints (a store every tile of
    /// steps of the states it computes anyway) and the backward skips its
    /// checkpoint kernel: [`crate::cuda::ScanPlan::for_training`] +
    /// [`crate::cuda::ScanPlan::launch_training`], then [`ScanBwdPlan::launch`]
    /// on the same workspace. Label suffix `.ckfwd`.
    pub forward_checkpoints: bool,
    /// The sweep at 6 blocks per SM (80 registers instead of 96 or 128): the
    /// epilogue reads dt, gy and u back from shared memory instead of holding
    /// them in registers, and the dB/dC rows are swizzled instead of padded
    /// (1 KB less per block, so that 6 blocks fit the SM's shared memory).
    /// Where the 5-blocks-per-SM form exists (up to 2 states per lane, tiles of
    /// 8, 8 or more lanes); elsewhere ignored. Label suffix `.b6`.
    /// Applies to the lanes sweep only.
    pub six_blocks: bool,
    /// The lanes sweep (v3b) even where the slice-major one (v5) runs.
    pub lanes_sweep: bool,
    /// The slice-major sweep with its decays kept in registers (`Some(true)`)
    /// or recomputed (`Some(false)`); `None` chooses by waves: kept when the
    /// grid fits one wave at the kept form's blocks per SM.
    pub keep_decays: Option<bool>,
}

impl BwdConfig {
    /// The configuration for `problem` on a device with `limits`, or
    /// [`SsmError::Unsupported`] naming the constraint.
    pub fn new(problem: &ScanProblem, limits: &DeviceLimits) -> Result<Self> {
        Self::with_options(problem, limits, BwdOptions::default())
    }

    /// [`BwdConfig::new`] with the variants of `options`.
    pub fn with_options(
        problem: &ScanProblem,
        limits: &DeviceLimits,
        options: BwdOptions,
    ) -> Result<Self> {
        let n = problem.dims.d_state;
        if problem.dtype == DType::F64 {
            return Err(unsupported("f64 inputs (use f32, f16 or bf16)".into()));
        }
        if n == 0 || n > MAX_D_STATE {
            return Err(unsupported(format!(
                "the backward for d_state = {n} (1 to {MAX_D_STATE})"
            )));
        }
        // Two states per lane where N allows (16 lanes of 2 would leave too few
        // channels per block), at most 8 (N = 256 over 32 lanes).
        let lanes = n.div_ceil(2).next_power_of_two().min(32);
        let states_per_lane = n.div_ceil(lanes);
        // The tile's states and decays stay in registers: at most 32 floats of
        // each per lane; and each thread keeps at most 2 (channel, step) items
        // of a tile for the epilogue (items per thread = tile / lanes).
        let longest = (32 / states_per_lane).min(2 * lanes).max(2);
        // Up to 2 states per lane the tile is 8 steps (N = 16: 16 floats of
        // states and decays per lane, 96 registers, 5 blocks per SM): more warps
        // per SM beat fewer barriers and checkpoints (v3 on the H200, BT = 16 at
        // 3 blocks per SM: sweep 3.89 ms; BT = 8 at 4: 3.47 ms).
        let mut tile = if states_per_lane <= 2 {
            longest.min(8)
        } else {
            longest
        };
        // Experiments only (docs/kernels/mamba1-scan-bwd.md): another tile, up
        // to `longest`, from the environment, so that one device run can time
        // two tilings. The tile sets the checkpoint interval, hence the sums'
        // rounding.
        if let Some(t) = std::env::var(TILE_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&t| (1..=longest).contains(&t))
        {
            tile = t;
        }
        // The checkpoint kernel: half the lanes with twice the states, up to 8
        // states per lane (N = 16: 4 lanes of 4 states, 64 threads).
        let ckpt_lanes = if states_per_lane <= 4 {
            (lanes / 2).max(1)
        } else {
            lanes
        };
        let ckpt_states_per_lane = n.div_ceil(ckpt_lanes);
        let config = BwdConfig {
            dtype: problem.dtype,
            d_state: n,
            lanes_per_channel: lanes,
            states_per_lane,
            threads: 128,
            tile,
            ckpt_lanes,
            ckpt_states_per_lane,
            // 2 states per lane fit 3 blocks per SM (170 registers); wider lanes
            // (N > 64) hold 4 to 8 states and need more registers.
            // (Fewer than 8 lanes hold 2 items per thread and spill at 96.)
            min_blocks: match (states_per_lane, tile) {
                (1..=2, 0..=8) if lanes >= 8 => {
                    let cpb = 128 / lanes;
                    let seg = problem.seg_channels();
                    let grid = problem.num_seqs()
                        * (problem.dims.d_inner / seg.max(1))
                        * seg.div_ceil(cpb);
                    blocks_for_waves(grid, limits.sm_count as usize)
                }
                (1..=2, 0..=8) => 4,
                (1..=2, _) => 3,
                _ => 2,
            },
            has_d: problem.has_d,
            has_z: problem.has_z,
            has_delta_bias: problem.has_delta_bias,
            delta_softplus: problem.delta_softplus,
            b_const: problem.b_groups.is_none(),
            c_const: problem.c_groups.is_none(),
            forward_checkpoints: options.forward_checkpoints,
            lean: false,
            sweep: Sweep::Lanes,
        };
        let config = if options.six_blocks && config.has_five_block_form() {
            BwdConfig {
                min_blocks: 6,
                lean: true,
                ..config
            }
        } else {
            config
        };
        let config = BwdConfig {
            sweep: if options.lanes_sweep {
                Sweep::Lanes
            } else {
                slices_sweep(problem, limits, tile, options.keep_decays)
            },
            ..config
        };
        let smem = config
            .sweep_smem_bytes()
            .max(config.ckpt_kernel().2)
            .max(config.ckpt_smem_bytes());
        if !limits.smem_fits_block(smem) {
            return Err(unsupported(format!(
                "the backward's {smem} bytes of shared memory per block (the device allows {})",
                limits.smem_per_block_optin
            )));
        }
        Ok(config)
    }

    /// Channels one block of the sweep kernel covers.
    pub fn sweep_channels_per_block(&self) -> usize {
        match self.sweep {
            Sweep::Lanes => self.channels_per_block(),
            Sweep::Slices { .. } => 32,
        }
    }

    /// Threads per block of the sweep kernel.
    pub fn sweep_threads(&self) -> usize {
        match self.sweep {
            Sweep::Lanes => self.threads,
            Sweep::Slices { slices, .. } => 32 * slices,
        }
    }

    /// The checkpoint kernel that runs with this sweep: its entry point,
    /// threads per block and dynamic shared memory. The slice-major sweep comes
    /// with a slice-major checkpoint kernel (v5.1) on the sweep's blocks; the
    /// lanes sweep with `mamba1_scan_bwd_ckpt`.
    pub fn ckpt_kernel(&self) -> (&'static str, usize, usize) {
        match self.sweep {
            Sweep::Lanes => (ENTRY_CKPT, self.ckpt_threads(), self.ckpt_smem_bytes()),
            Sweep::Slices { slices, states, .. } => {
                let r4 = |x: usize| x.div_ceil(4) * 4;
                let plane = self.tile * 36;
                let rows = if self.b_const {
                    0
                } else {
                    r4(self.tile * slices * states)
                };
                (ENTRY_CKPT_SLICES, 32 * slices, (4 * plane + 2 * rows) * 4)
            }
        }
    }

    /// Channels one block of the checkpoint kernel that runs covers.
    fn ckpt_kernel_channels_per_block(&self) -> usize {
        match self.sweep {
            Sweep::Lanes => self.channels_per_block(),
            Sweep::Slices { .. } => 32,
        }
    }

    /// Dynamic shared memory of the sweep kernel that runs.
    pub fn sweep_smem_bytes(&self) -> usize {
        match self.sweep {
            Sweep::Lanes => self.smem_bytes(),
            Sweep::Slices { slices, states, .. } => {
                let r4 = |x: usize| x.div_ceil(4) * 4;
                let grouped = usize::from(!self.b_const) + usize::from(!self.c_const);
                let bt = self.tile;
                // [step][channel] planes with rows of 36 floats (scan_bwd_slices.cuh).
                let plane = bt * 36;
                let el = 2 * 6 * plane;
                let bc = 2 * r4(bt * grouped * slices * states);
                let part = 3 * slices * plane;
                let dbc = r4(slices * grouped * states * (bt + 1));
                (el + bc + part + dbc) * 4
            }
        }
    }

    /// The sweep has the register-capped forms of 5 (and, lean, 6) blocks per
    /// SM: up to 2 states per lane, tiles of 8 or less, 8 or more lanes.
    fn has_five_block_form(&self) -> bool {
        self.states_per_lane <= 2 && self.tile <= 8 && self.lanes_per_channel >= 8
    }

    /// Channels one block of the checkpoint kernel (and of the lanes sweep) covers.
    pub fn channels_per_block(&self) -> usize {
        self.threads / self.lanes_per_channel
    }

    /// Blocks per SM the checkpoint kernel's registers must allow: at most 80
    /// registers per thread for up to 4 states per lane, so that its grid fits
    /// one wave (M1-2.8B: 1280 blocks of 64 threads over 132 SMs at 12 per SM).
    pub fn ckpt_min_blocks(&self) -> usize {
        if self.ckpt_states_per_lane <= 4 {
            (65536 / (self.ckpt_threads() * 80)).clamp(1, 32)
        } else {
            1
        }
    }

    /// Threads per block of `mamba1_scan_bwd_ckpt`.
    pub fn ckpt_threads(&self) -> usize {
        self.channels_per_block() * self.ckpt_lanes
    }

    /// Dynamic shared memory of `mamba1_scan_bwd`, mirroring the layout at the
    /// top of the kernel (the kernel checks it against `SCAN_BWD_SMEM_BYTES`).
    pub fn smem_bytes(&self) -> usize {
        let r4 = |x: usize| x.div_ceil(4) * 4;
        let cpb = self.channels_per_block();
        let lanes = self.lanes_per_channel;
        let np = lanes * self.states_per_lane;
        let bt = self.tile;
        let grouped = usize::from(!self.b_const) + usize::from(!self.c_const);
        // Per (channel, step) float4 {dt, dt*u, gy, u}, two buffers.
        let el = cpb * (4 * bt + 4);
        // B/C rows interleaved per state, two buffers.
        let bc = if grouped > 0 {
            r4(bt * (grouped * np + 4))
        } else {
            0
        };
        // The lanes' partials of y, <lam, B>, <A, w>: rows of `lanes` floats,
        // each channel padded so that a warp's channels hit distinct banks.
        let pch = if lanes >= 4 {
            bt * lanes + (lanes + 32 - (bt * lanes) % 32) % 32
        } else {
            bt * lanes + 1
        };
        let part = r4(3 * cpb * pch);
        // lam_t and h_t for grouped dB/dC: [tile][channel][state], rows padded
        // by 16 floats (lean: swizzled instead).
        let dbc = grouped * bt * (r4(cpb * np) + if self.lean { 0 } else { 16 });
        (2 * el + 2 * bc + part + dbc) * 4
    }

    /// Dynamic shared memory of `mamba1_scan_bwd_ckpt`: float2 {dt, dt*u} per
    /// (channel, step) and (grouped B) the B rows, two buffers of each.
    pub fn ckpt_smem_bytes(&self) -> usize {
        let r4 = |x: usize| x.div_ceil(4) * 4;
        let el = r4(self.channels_per_block() * (2 * self.tile + 2));
        let rows = if self.b_const {
            0
        } else {
            r4(self.tile * (self.ckpt_lanes * self.ckpt_states_per_lane + 4))
        };
        2 * (el + rows) * 4
    }

    /// The `-D` defines the backward kernels are compiled with.
    pub fn defines(&self) -> Vec<(&'static str, String)> {
        let flag = |b: bool| String::from(if b { "1" } else { "0" });
        let mut defines = vec![
            ("SCAN_DTYPE", dtype_define(self.dtype)),
            ("SCAN_N", self.d_state.to_string()),
            ("SCAN_TPC", self.lanes_per_channel.to_string()),
            ("SCAN_NPT", self.states_per_lane.to_string()),
            ("SCAN_THREADS", self.threads.to_string()),
            ("SCAN_BT", self.tile.to_string()),
            ("SCAN_CK_TPC", self.ckpt_lanes.to_string()),
            ("SCAN_CK_NPT", self.ckpt_states_per_lane.to_string()),
            ("SCAN_MIN_BLOCKS", self.min_blocks.to_string()),
            ("SCAN_LEAN", flag(self.lean)),
            ("SCAN_CK_MIN_BLOCKS", self.ckpt_min_blocks().to_string()),
            ("SCAN_BWD_SMEM_BYTES", self.smem_bytes().to_string()),
            ("SCAN_CKPT_SMEM_BYTES", self.ckpt_smem_bytes().to_string()),
        ];
        defines.extend(option_defines(
            self.has_delta_bias,
            self.delta_softplus,
            self.has_d,
            self.has_z,
            self.b_const,
            self.c_const,
        ));
        if let Sweep::Slices {
            slices,
            states,
            keep_decays,
            min_blocks,
        } = self.sweep
        {
            defines.extend([
                ("SCAN_SL_NPT", states.to_string()),
                ("SCAN_SL_SLICES", slices.to_string()),
                ("SCAN_SL_KEEP", flag(keep_decays)),
                ("SCAN_SL_MIN_BLOCKS", min_blocks.to_string()),
                ("SCAN_SL_SMEM_BYTES", self.sweep_smem_bytes().to_string()),
                ("SCAN_SL_CKPT_SMEM_BYTES", self.ckpt_kernel().2.to_string()),
            ]);
        }
        defines
    }

    /// A short stable name, e.g. `bf16.n16.tpc8.bt16.zDbs`.
    pub fn label(&self) -> String {
        let (opts, bc) = self.option_label();
        // 5 blocks per SM (96 registers) is the one register cap that is not
        // implied by the rest of the label.
        let b5 = match self.min_blocks {
            5 => ".b5",
            6 => ".b6",
            _ => "",
        };
        // Not a kernel difference (the launches differ), but a plan's name.
        let ckfwd = if self.forward_checkpoints {
            ".ckfwd"
        } else {
            ""
        };
        match self.sweep {
            Sweep::Lanes => format!(
                "{}.n{}.tpc{}.bt{}.{opts}{bc}{b5}{ckfwd}",
                self.dtype.name(),
                self.d_state,
                self.lanes_per_channel,
                self.tile,
            ),
            // e.g. `bf16.n16.sm2x8r6.bt8.zDbs`: 2 slices of 8 states, decays
            // recomputed (k: kept), 6 blocks per SM.
            Sweep::Slices {
                slices,
                states,
                keep_decays,
                min_blocks,
            } => format!(
                "{}.n{}.sm{slices}x{states}{}{min_blocks}.bt{}.{opts}{bc}{ckfwd}",
                self.dtype.name(),
                self.d_state,
                if keep_decays { "k" } else { "r" },
                self.tile,
            ),
        }
    }

    /// The options and B/C layout parts of a label: e.g. `zDbs`, `.bconst`.
    fn option_label(&self) -> (String, &'static str) {
        let opts = option_letters(
            self.has_z,
            self.has_d,
            self.has_delta_bias,
            self.delta_softplus,
        );
        let bc = match (self.b_const, self.c_const) {
            (false, false) => "",
            (true, true) => ".bcconst",
            (true, false) => ".bconst",
            (false, true) => ".cconst",
        };
        (if opts.is_empty() { "bare".into() } else { opts }, bc)
    }

    /// The four kernels of this configuration as [`KernelVariant`]s.
    /// Where the sweep can run at 4 or 5 blocks per SM (the grid decides), the
    /// sweep at 5 comes too, so that the budgets cover both.
    pub fn variants(&self) -> Vec<KernelVariant> {
        let mut variants: Vec<KernelVariant> = [
            ("ckpt", ENTRY_CKPT),
            ("sweep", ENTRY_SWEEP),
            ("reduce_bc", ENTRY_REDUCE_BC),
            ("reduce_params", ENTRY_REDUCE_PARAMS),
        ]
        .into_iter()
        .map(|(what, entry)| self.variant(what, entry))
        .collect();
        // The slice-major sweep in both its forms, for their budgets.
        if let Sweep::Slices { slices, states, .. } = self.sweep {
            for keep_decays in [true, false] {
                let form = BwdConfig {
                    sweep: Sweep::Slices {
                        slices,
                        states,
                        keep_decays,
                        min_blocks: slices_min_blocks(slices, keep_decays),
                    },
                    ..*self
                };
                variants.push(form.variant("sweep_sm", ENTRY_SWEEP_SLICES));
            }
            variants.push(self.variant("ckpt_sm", ENTRY_CKPT_SLICES));
        }
        if self.min_blocks == 4 && self.has_five_block_form() {
            let five = BwdConfig {
                min_blocks: 5,
                ..*self
            };
            variants.push(five.variant("sweep", ENTRY_SWEEP));
        }
        // The lean sweep at 6 blocks per SM (BwdOptions::six_blocks), for its budget.
        if (4..=5).contains(&self.min_blocks) && !self.lean && self.has_five_block_form() {
            let six = BwdConfig {
                min_blocks: 6,
                lean: true,
                ..*self
            };
            variants.push(six.variant("sweep", ENTRY_SWEEP));
        }
        variants
    }

    fn variant(&self, what: &str, entry: &'static str) -> KernelVariant {
        // The kernels do not depend on where the checkpoints come from, and
        // only the slice-major sweep on its form (the others keep the lanes
        // sweep's names and budgets; the slice-major checkpoints depend on the
        // slices alone).
        let kernels = BwdConfig {
            forward_checkpoints: false,
            sweep: if entry == ENTRY_SWEEP_SLICES {
                self.sweep
            } else {
                Sweep::Lanes
            },
            ..*self
        };
        let label = match (entry, self.sweep) {
            (ENTRY_CKPT_SLICES, Sweep::Slices { slices, states, .. }) => {
                let (opts, bc) = self.option_label();
                format!(
                    "{}.n{}.sm{slices}x{states}.bt{}.{opts}{bc}",
                    self.dtype.name(),
                    self.d_state,
                    self.tile
                )
            }
            _ => kernels.label(),
        };
        KernelVariant::new(
            format!("mamba1.scan_bwd_{what}.{label}"),
            SCAN_BWD_SOURCE,
            entry,
            self.defines(),
        )
    }
}

/// Blocks per SM for the sweep at tiles of 8 (8 or more lanes): 4 (128
/// registers) or 5 (96), whichever costs fewer block-slots, waves x blocks per
/// SM (the SM's throughput is shared by its blocks, and the last wave is paid
/// in full). M1-2.8B, 1280 blocks on 132 SMs: 3 x 4 against 2 x 5, so 5 (H200,
/// v3: sweep 3.47 -> 3.30 ms); M1-small, 1024 blocks: 2 x 4 against 2 x 5, so
/// 4 (1.28 against 1.44 ms).
fn blocks_for_waves(grid: usize, sms: usize) -> usize {
    let cost = |k: usize| grid.div_ceil(k * sms.max(1)) * k;
    if cost(5) < cost(4) {
        5
    } else {
        4
    }
}

/// The slice-major sweep for `problem` at `tile`, or the lanes sweep where it
/// does not apply (N > 32, or a tile the slices cannot split into even runs).
/// Slices of at most 8 states: 1, 2 or 4 warps per block (N = 16: 2 of 8).
/// Its decays are kept in registers when the grid fits one wave at the kept
/// form's blocks per SM (or as `keep` says), else recomputed.
fn slices_sweep(
    problem: &ScanProblem,
    limits: &DeviceLimits,
    tile: usize,
    keep: Option<bool>,
) -> Sweep {
    let n = problem.dims.d_state;
    if n > 32 {
        return Sweep::Lanes;
    }
    let slices = n.div_ceil(8).next_power_of_two();
    if tile % slices != 0 || (tile / slices) % 2 != 0 {
        return Sweep::Lanes;
    }
    let seg = problem.seg_channels().max(1);
    let grid = problem.num_seqs() * (problem.dims.d_inner / seg) * seg.div_ceil(32);
    let keep_decays =
        keep.unwrap_or_else(|| grid <= slices_min_blocks(slices, true) * limits.sm_count as usize);
    Sweep::Slices {
        slices,
        states: n.div_ceil(slices),
        keep_decays,
        min_blocks: slices_min_blocks(slices, keep_decays),
    }
}

/// Blocks of `slices` warps per SM the slice-major sweep is compiled for:
/// 2 warps per SM sub-partition with its decays kept (255 registers), 3 with
/// them recomputed (168 registers); ptxas reports in kernels/budgets.toml.
fn slices_min_blocks(slices: usize, keep_decays: bool) -> usize {
    let warps_per_sm = if keep_decays { 8 } else { 12 };
    (warps_per_sm / slices).max(1)
}

/// Geometry shared by the kernels, derived from the problem and the tiling.
/// The sweep's blocks may cover fewer channels than the checkpoint kernel's
/// (the slice-major sweep: 32), so each has its own block counts.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    seg_channels: usize,
    /// The sweep's (and the dB/dC partials'): per B/C segment and per sequence.
    blocks_per_seg: usize,
    blocks_per_seq: usize,
    /// The checkpoint kernel's.
    ckpt_blocks_per_seg: usize,
    ckpt_blocks_per_seq: usize,
    /// Rows of the position-indexed tensors: the batch, or 1 for varlen.
    rows: usize,
    ckpt_slots: usize,
}

impl Geometry {
    fn of(problem: &ScanProblem, config: &BwdConfig) -> Self {
        let seg_channels = problem.seg_channels();
        let segs = problem.dims.d_inner / seg_channels;
        let blocks_per_seg = seg_channels.div_ceil(config.sweep_channels_per_block());
        let ckpt_blocks_per_seg = seg_channels.div_ceil(config.ckpt_kernel_channels_per_block());
        let l = problem.dims.seqlen;
        let (rows, ckpt_slots) = match problem.varlen_seqs {
            // Sequence s's tiles take slots from lo / BT + s on (scan_bwd.cu, bw_block).
            Some(seqs) => (1, l / config.tile + seqs),
            None => (problem.dims.batch, l.div_ceil(config.tile)),
        };
        Geometry {
            seg_channels,
            blocks_per_seg,
            blocks_per_seq: segs * blocks_per_seg,
            ckpt_blocks_per_seg,
            ckpt_blocks_per_seq: segs * ckpt_blocks_per_seg,
            rows,
            ckpt_slots,
        }
    }
}

/// `struct ScanBwdArgs` of `kernels/mamba1/scan_bwd.cu`, field for field (all 8
/// bytes). Pointers are device addresses, 0 for an absent tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ScanBwdArgs {
    u: u64,
    delta: u64,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    z: u64,
    delta_bias: u64,
    initial_states: u64,
    cu_seqlens: u64,
    d_out: u64,
    d_final_states: u64,
    ckpt: u64,
    du: u64,
    ddelta: u64,
    dz: u64,
    dinitial_states: u64,
    part_b: u64,
    part_c: u64,
    part_params: u64,
    db: u64,
    dc: u64,
    da: u64,
    dd: u64,
    ddelta_bias: u64,
    d_inner: i64,
    seqlen: i64,
    groups_b: i64,
    groups_c: i64,
    seg_channels: i64,
    blocks_per_seg: i64,
    blocks_per_seq: i64,
    num_seqs: i64,
    ckpt_slots: i64,
}
const _: () = assert!(std::mem::size_of::<ScanBwdArgs>() == 34 * 8);

// SAFETY: a plain-old-data struct of integers with the C layout the kernel expects.
unsafe impl DeviceRepr for ScanBwdArgs {}

/// The gradients on the device, in the layouts of [`ScanGrads`].
pub struct ScanGradBuffers<T> {
    /// `(b, D_in, L)`.
    pub du: CudaSlice<T>,
    /// `(b, D_in, L)`: with respect to the raw `delta` (through bias and softplus).
    pub ddelta: CudaSlice<T>,
    /// `(D_in, N)`.
    pub da: CudaSlice<f32>,
    /// As B: `(b, G, N, L)`, or `(D_in, N)` for constant B.
    pub db: CudaSlice<T>,
    /// As C: `(b, G, N, L)`, or `(D_in, N)` for constant C.
    pub dc: CudaSlice<T>,
    /// `(D_in)`; present iff the problem has `D`.
    pub dd: Option<CudaSlice<f32>>,
    /// `(b, D_in, L)`; present iff the problem has `z`.
    pub dz: Option<CudaSlice<T>>,
    /// `(D_in)`; present iff the problem has `delta_bias`.
    pub ddelta_bias: Option<CudaSlice<f32>>,
    /// `(b or num_seqs, D_in, N)`; present iff the problem has initial states.
    pub dinitial_states: Option<CudaSlice<f32>>,
}

impl<T: DeviceElement> ScanGradBuffers<T> {
    /// Poisoned gradient buffers for `problem` (L >= 1).
    pub fn alloc(gpu: &Gpu, problem: &ScanProblem) -> Result<Self> {
        let io = problem.io_len();
        let channels = problem.dims.d_inner;
        let when = |on: bool, len: usize| -> Result<Option<CudaSlice<f32>>> {
            Ok(if on {
                Some(gpu.alloc_poisoned(len)?)
            } else {
                None
            })
        };
        Ok(ScanGradBuffers {
            du: gpu.alloc_poisoned(io)?,
            ddelta: gpu.alloc_poisoned(io)?,
            da: gpu.alloc_poisoned(channels * problem.dims.d_state)?,
            db: gpu.alloc_poisoned(problem.bc_len(problem.b_groups))?,
            dc: gpu.alloc_poisoned(problem.bc_len(problem.c_groups))?,
            dd: when(problem.has_d, channels)?,
            dz: if problem.has_z {
                Some(gpu.alloc_poisoned(io)?)
            } else {
                None
            },
            ddelta_bias: when(problem.has_delta_bias, channels)?,
            dinitial_states: when(problem.has_initial_states, problem.state_len())?,
        })
    }

    fn check(&self, problem: &ScanProblem) -> Result<()> {
        let io = problem.io_len();
        let channels = problem.dims.d_inner;
        expect_len("du", self.du.len(), io)?;
        expect_len("ddelta", self.ddelta.len(), io)?;
        expect_len("dA", self.da.len(), channels * problem.dims.d_state)?;
        expect_len("dB", self.db.len(), problem.bc_len(problem.b_groups))?;
        expect_len("dC", self.dc.len(), problem.bc_len(problem.c_groups))?;
        expect_opt(
            "dD",
            self.dd.as_ref().map(|x| x.len()),
            problem.has_d,
            channels,
        )?;
        expect_opt("dz", self.dz.as_ref().map(|x| x.len()), problem.has_z, io)?;
        expect_opt(
            "ddelta_bias",
            self.ddelta_bias.as_ref().map(|x| x.len()),
            problem.has_delta_bias,
            channels,
        )?;
        expect_opt(
            "dinitial_states",
            self.dinitial_states.as_ref().map(|x| x.len()),
            problem.has_initial_states,
            problem.state_len(),
        )
    }
}

/// Scratch of the backward: checkpoints and partial sums. Reused across launches
/// of one plan.
pub struct ScanBwdWorkspace {
    /// Written by the checkpoint kernel, or by a training forward
    /// (`ScanPlan::launch_training`).
    pub(crate) ckpt: CudaSlice<f32>,
    /// A training forward has written `ckpt` (required by a backward with
    /// [`BwdOptions::forward_checkpoints`]).
    pub(crate) forward_checkpoints: bool,
    part_b: Option<CudaSlice<f32>>,
    part_c: Option<CudaSlice<f32>>,
    part_params: CudaSlice<f32>,
    /// Varlen: the checked copy of the device-resident `cu_seqlens`.
    offsets: Option<CudaSlice<i64>>,
}

impl ScanBwdWorkspace {
    /// Bytes of scratch the backward needs beyond its inputs and gradients.
    pub fn bytes(&self) -> usize {
        8 * self.offsets.as_ref().map_or(0, |o| o.len())
            + 4 * (self.ckpt.len()
                + self.part_b.as_ref().map_or(0, |p| p.len())
                + self.part_c.as_ref().map_or(0, |p| p.len())
                + self.part_params.len())
    }
}

/// The compiled backward for one problem shape.
pub struct ScanBwdPlan {
    /// The shapes and options the plan was built for.
    pub problem: ScanProblem,
    /// The kernels' compile-time tiling.
    pub config: BwdConfig,
    geometry: Geometry,
    ckpt: Kernel,
    sweep: Kernel,
    reduce_bc: Kernel,
    reduce_params: Kernel,
    /// Varlen only: checks the device-resident `cu_seqlens` and copies them to
    /// the workspace's `offsets`, which the other kernels read.
    check_offsets: Option<Kernel>,
    /// Blocks of the sweep and of the checkpoint kernel.
    grid: u32,
    ckpt_grid: u32,
    /// Raised by `check_offsets` when device-resident `cu_seqlens` are rejected.
    status: DeviceStatus,
}

impl ScanBwdPlan {
    /// Compile the backward kernels for `problem` into `gpu`'s context.
    ///
    /// Errors: [`SsmError::Unsupported`] naming the constraint for a shape or
    /// device the kernels do not take (including L = 0, which the host-side
    /// `selective_scan_backward_cuda` handles without a launch); compile and
    /// load failures as the runtime reports them.
    pub fn new(gpu: &Gpu, problem: &ScanProblem) -> Result<Self> {
        Self::with_options(gpu, problem, BwdOptions::default())
    }

    /// [`ScanBwdPlan::new`] with the variants of `options`.
    pub fn with_options(gpu: &Gpu, problem: &ScanProblem, options: BwdOptions) -> Result<Self> {
        let config = BwdConfig::with_options(problem, &gpu.limits()?, options)?;
        if problem.dims.seqlen == 0 {
            return Err(unsupported(
                "launching the backward on L = 0 (selective_scan_backward_cuda handles it \
                 without a launch)"
                    .into(),
            ));
        }
        let geometry = Geometry::of(problem, &config);
        let blocks = |per_seq: usize| -> Result<u32> {
            Ok(problem
                .num_seqs()
                .checked_mul(per_seq)
                .filter(|&b| b <= i32::MAX as usize)
                .ok_or_else(|| {
                    unsupported(format!(
                        "{} sequences x {per_seq} channel blocks (more than 2^31 - 1 blocks)",
                        problem.num_seqs(),
                    ))
                })? as u32)
        };
        let grid = blocks(geometry.blocks_per_seq)?;
        let ckpt_grid = blocks(geometry.ckpt_blocks_per_seq)?;
        let defines = config.defines();
        let load = |entry: &str| gpu.kernel(&SCAN_BWD_SOURCE, entry, &defines);
        let (ckpt_entry, _, ckpt_smem) = config.ckpt_kernel();
        let mut ckpt = load(ckpt_entry)?;
        let mut sweep = load(match config.sweep {
            Sweep::Lanes => ENTRY_SWEEP,
            Sweep::Slices { .. } => ENTRY_SWEEP_SLICES,
        })?;
        // Past the 48 KiB default a kernel opts in (selection checked the limit).
        for (kernel, smem) in [
            (&mut ckpt, ckpt_smem),
            (&mut sweep, config.sweep_smem_bytes()),
        ] {
            if smem > 48 * 1024 {
                kernel.set_max_dynamic_smem(smem as u32)?;
            }
        }
        Ok(ScanBwdPlan {
            problem: *problem,
            config,
            geometry,
            ckpt,
            sweep,
            reduce_bc: load(ENTRY_REDUCE_BC)?,
            reduce_params: load(ENTRY_REDUCE_PARAMS)?,
            check_offsets: match problem.varlen_seqs {
                Some(_) => Some(load(ENTRY_CHECK_OFFSETS)?),
                None => None,
            },
            grid,
            ckpt_grid,
            status: DeviceStatus::new(gpu)?,
        })
    }

    /// The kernels one [`ScanBwdPlan::launch`] runs, in launch order, with
    /// their threads per block and dynamic shared memory (the grouped-B/C
    /// reduction runs once per grouped tensor).
    pub fn kernels(&self) -> Vec<(&Kernel, u32, u32)> {
        let threads = self.config.sweep_threads() as u32;
        let smem = self.config.sweep_smem_bytes() as u32;
        let (_, ckpt_threads, ckpt_smem) = self.config.ckpt_kernel();
        let mut k = Vec::new();
        if !self.config.forward_checkpoints {
            k.push((&self.ckpt, ckpt_threads as u32, ckpt_smem as u32));
        }
        k.push((&self.sweep, threads, smem));
        for grouped in [self.problem.b_groups, self.problem.c_groups] {
            if grouped.is_some() {
                k.push((&self.reduce_bc, REDUCE_THREADS, 0));
            }
        }
        k.push((&self.reduce_params, REDUCE_THREADS, 0));
        k
    }

    /// Checkpoint slots per (row, channel) and the checkpoint buffer's length
    /// in floats: what a training forward for this plan writes.
    pub(crate) fn ckpt_layout(&self) -> (usize, usize) {
        let g = &self.geometry;
        (
            g.ckpt_slots,
            g.rows * self.problem.dims.d_inner * g.ckpt_slots * self.problem.dims.d_state,
        )
    }

    /// Allocate the scratch of this plan.
    pub fn workspace(&self, gpu: &Gpu) -> Result<ScanBwdWorkspace> {
        let p = &self.problem;
        let g = &self.geometry;
        let n = p.dims.d_state;
        let part = |grouped: bool| -> Result<Option<CudaSlice<f32>>> {
            if !grouped {
                return Ok(None);
            }
            let len = g.rows * g.blocks_per_seq * n * p.dims.seqlen;
            // Varlen: positions past the last sequence are covered by no block.
            Ok(Some(if p.varlen_seqs.is_some() {
                gpu.stream()
                    .alloc_zeros(len)
                    .map_err(ssm_gpu::GpuError::from)?
            } else {
                gpu.alloc_poisoned(len)?
            }))
        };
        Ok(ScanBwdWorkspace {
            ckpt: gpu.alloc_poisoned(g.rows * p.dims.d_inner * g.ckpt_slots * n)?,
            forward_checkpoints: false,
            part_b: part(p.b_groups.is_some())?,
            part_c: part(p.c_groups.is_some())?,
            part_params: gpu.alloc_poisoned(p.num_seqs() * p.dims.d_inner * (3 * n + 2))?,
            offsets: match p.varlen_seqs {
                Some(seqs) => Some(
                    gpu.stream()
                        .alloc_zeros::<i64>(seqs + 1)
                        .map_err(ssm_gpu::GpuError::from)?,
                ),
                None => None,
            },
        })
    }

    /// Read and clear what the kernels reported about device-resident input
    /// since the last call: `Err(CuSeqlens)` when a launch met offsets that are
    /// not a partition of `[0, L)` (the sequences with a bad range were not
    /// computed, their gradients are not valid, and nothing was read or written
    /// out of bounds). Synchronises the stream; [`ScanBwdPlan::launch`] never
    /// waits.
    pub fn take_device_error(&self, gpu: &Gpu) -> Result<()> {
        self.status.take(gpu, "the scan backward", &self.problem)
    }

    /// Enqueue the backward on the GPU's stream (asynchronous): the gradients of
    /// `sum(d_out * out) + sum(d_final_states * final_states)` for the forward
    /// whose inputs are in `fwd` (its `out` and `final_states` are not read).
    /// Device-resident `cu_seqlens` are checked by the kernels
    /// ([`ScanBwdPlan::take_device_error`]).
    pub fn launch<T: DeviceElement>(
        &self,
        gpu: &Gpu,
        fwd: &ScanBuffers<T>,
        d_out: &CudaSlice<T>,
        d_final_states: Option<&CudaSlice<f32>>,
        grads: &mut ScanGradBuffers<T>,
        ws: &mut ScanBwdWorkspace,
    ) -> Result<()> {
        let p = &self.problem;
        if T::DTYPE != p.dtype {
            return Err(unsupported(format!(
                "{} buffers with a backward plan compiled for {}",
                T::DTYPE,
                p.dtype
            )));
        }
        fwd.check(p)?;
        grads.check(p)?;
        expect_len("d_out", d_out.len(), p.io_len())?;
        if d_final_states.is_some() && !p.return_final_states {
            return Err(SsmError::Dimension {
                arg: "d_final_states",
                reason: "given, but the forward does not return final states".into(),
            });
        }
        expect_opt(
            "d_final_states",
            d_final_states.map(|x| x.len()),
            d_final_states.is_some(),
            p.state_len(),
        )?;
        let g = &self.geometry;
        let n = p.dims.d_state;
        let part_len = g.rows * g.blocks_per_seq * n * p.dims.seqlen;
        expect_len(
            "checkpoints",
            ws.ckpt.len(),
            g.rows * p.dims.d_inner * g.ckpt_slots * n,
        )?;
        expect_opt(
            "dB partials",
            ws.part_b.as_ref().map(|x| x.len()),
            p.b_groups.is_some(),
            part_len,
        )?;
        expect_opt(
            "dC partials",
            ws.part_c.as_ref().map(|x| x.len()),
            p.c_groups.is_some(),
            part_len,
        )?;
        expect_len(
            "parameter partials",
            ws.part_params.len(),
            p.num_seqs() * p.dims.d_inner * (3 * n + 2),
        )?;
        expect_opt(
            "checked offsets",
            ws.offsets.as_ref().map(|x| x.len()),
            p.varlen_seqs.is_some(),
            p.num_seqs() + 1,
        )?;
        if self.config.forward_checkpoints && !ws.forward_checkpoints {
            return Err(SsmError::Dimension {
                arg: "ws",
                reason:
                    "the plan reads the forward's checkpoints (BwdOptions::forward_checkpoints), \
                         but no training forward (ScanPlan::launch_training) has written this \
                         workspace's"
                        .into(),
            });
        }

        let stream = gpu.stream();
        let (u, _g0) = fwd.u.device_ptr(stream);
        let (delta, _g1) = fwd.delta.device_ptr(stream);
        let (a, _g2) = fwd.a.device_ptr(stream);
        let (b, _g3) = fwd.b.device_ptr(stream);
        let (c, _g4) = fwd.c.device_ptr(stream);
        let (d, _g5) = opt_ptr(&fwd.d, gpu);
        let (z, _g6) = opt_ptr(&fwd.z, gpu);
        let (delta_bias, _g7) = opt_ptr(&fwd.delta_bias, gpu);
        // The backward starts from the given initial states, as the forward did.
        let (initial_states, _g8) = opt_ptr(&fwd.initial_states, gpu);
        // Varlen: the kernels read the checked copy of the offsets (launched first, below).
        let (user_offsets, _g9) = opt_ptr(&fwd.cu_seqlens, gpu);
        let (cu_seqlens, _g9b) = opt_ptr_mut(&mut ws.offsets, gpu);
        let (d_out, _g10) = d_out.device_ptr(stream);
        let (d_final_states, _g11) = match d_final_states {
            Some(s) => {
                let (p, g) = s.device_ptr(stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (ckpt, _g12) = ws.ckpt.device_ptr_mut(stream);
        let (part_b, _g13) = opt_ptr_mut(&mut ws.part_b, gpu);
        let (part_c, _g14) = opt_ptr_mut(&mut ws.part_c, gpu);
        let (part_params, _g15) = ws.part_params.device_ptr_mut(stream);
        let (du, _g16) = grads.du.device_ptr_mut(stream);
        let (ddelta, _g17) = grads.ddelta.device_ptr_mut(stream);
        let (dz, _g18) = opt_ptr_mut(&mut grads.dz, gpu);
        let (dinitial_states, _g19) = opt_ptr_mut(&mut grads.dinitial_states, gpu);
        let (db, _g20) = grads.db.device_ptr_mut(stream);
        let (dc, _g21) = grads.dc.device_ptr_mut(stream);
        let (da, _g22) = grads.da.device_ptr_mut(stream);
        let (dd, _g23) = opt_ptr_mut(&mut grads.dd, gpu);
        let (ddelta_bias, _g24) = opt_ptr_mut(&mut grads.ddelta_bias, gpu);
        let args = ScanBwdArgs {
            u,
            delta,
            a,
            b,
            c,
            d,
            z,
            delta_bias,
            initial_states,
            cu_seqlens,
            d_out,
            d_final_states,
            ckpt,
            du,
            ddelta,
            dz,
            dinitial_states,
            part_b,
            part_c,
            part_params,
            db,
            dc,
            da,
            dd,
            ddelta_bias,
            d_inner: p.dims.d_inner as i64,
            seqlen: p.dims.seqlen as i64,
            groups_b: p.b_groups.unwrap_or(1) as i64,
            groups_c: p.c_groups.unwrap_or(1) as i64,
            seg_channels: g.seg_channels as i64,
            blocks_per_seg: g.blocks_per_seg as i64,
            blocks_per_seq: g.blocks_per_seq as i64,
            num_seqs: p.num_seqs() as i64,
            ckpt_slots: g.ckpt_slots as i64,
        };
        // The checkpoint kernel's blocks may cover more channels than the sweep's.
        let ckpt_args = ScanBwdArgs {
            blocks_per_seg: g.ckpt_blocks_per_seg as i64,
            blocks_per_seq: g.ckpt_blocks_per_seq as i64,
            ..args
        };
        let tiled = |grid: u32, threads: usize, smem: usize| LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        let reduce = |elements: usize| LaunchConfig {
            grid_dim: (
                (elements.div_ceil(REDUCE_THREADS as usize)).clamp(1, 132 * 16) as u32,
                1,
                1,
            ),
            block_dim: (REDUCE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let label = self.config.label();
        let fail = |what: &str, e| SsmError::Backend(format!("launching {what} ({label}): {e:?}"));
        // SAFETY (all four launches): `args` matches the kernels' `ScanBwdArgs`
        // field for field; every pointer covers the length checked above against
        // the problem the kernels were compiled and sized for; the buffers
        // outlive the launches (their guards live until after they are enqueued,
        // and cudarc orders frees after the stream's pending work).
        if let Some(check) = &self.check_offsets {
            if user_offsets == 0 || cu_seqlens == 0 {
                return Err(SsmError::Dimension {
                    arg: "cu_seqlens",
                    reason: "the plan is varlen but the buffers or the workspace hold no offsets"
                        .into(),
                });
            }
            let (status, _gs) = self.status.device_ptr(stream);
            let seqs = p.num_seqs() as i64;
            let seqlen = p.dims.seqlen as i64;
            let mut b0 = stream.launch_builder(&check.func);
            b0.arg(&user_offsets)
                .arg(&seqs)
                .arg(&seqlen)
                .arg(&cu_seqlens)
                .arg(&status);
            // SAFETY: the kernel reads seqs + 1 offsets from the forward's
            // `cu_seqlens` (length checked by `fwd.check`), writes as many to the
            // workspace's copy (allocated for this problem, checked above) and
            // raises one bit of the plan's status word.
            unsafe {
                b0.launch(LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (REDUCE_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(|e| fail(ENTRY_CHECK_OFFSETS, e))?;
        }
        // With forward checkpoints the training forward has written them (same
        // slots, same bits: kernels/mamba1/scan_fwd.cu, SCAN_CKPT_BT).
        // One kernel taking the argument struct alone.
        let launch_with = |kernel: &Kernel, args: &ScanBwdArgs, cfg: LaunchConfig, entry: &str| {
            let mut b = stream.launch_builder(&kernel.func);
            b.arg(args);
            unsafe { b.launch(cfg) }.map_err(|e| fail(entry, e))
        };
        if !self.config.forward_checkpoints {
            let (entry, threads, smem) = self.config.ckpt_kernel();
            let cfg = tiled(self.ckpt_grid, threads, smem);
            launch_with(&self.ckpt, &ckpt_args, cfg, entry)?;
        }
        let cfg = tiled(
            self.grid,
            self.config.sweep_threads(),
            self.config.sweep_smem_bytes(),
        );
        launch_with(&self.sweep, &args, cfg, ENTRY_SWEEP)?;
        for (which, groups) in [(0i64, p.b_groups), (1i64, p.c_groups)] {
            if let Some(groups) = groups {
                let elements = g.rows * groups * n * p.dims.seqlen;
                let mut b3 = stream.launch_builder(&self.reduce_bc.func);
                b3.arg(&args);
                b3.arg(&which);
                unsafe { b3.launch(reduce(elements)) }.map_err(|e| fail(ENTRY_REDUCE_BC, e))?;
            }
        }
        let cfg = reduce(p.dims.d_inner * (3 * n + 2));
        launch_with(&self.reduce_params, &args, cfg, ENTRY_REDUCE_PARAMS)?;
        Ok(())
    }
}

/// The backward on `gpu`: uploads `p`, `d_out` and `d_final_states`, runs
/// [`ScanBwdPlan`], downloads every gradient. Validation as
/// [`ScanGradInputs::validate`]; shapes the kernels do not handle get
/// [`SsmError::Unsupported`].
pub fn selective_scan_backward_cuda<T: DeviceElement>(
    gpu: &Gpu,
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
) -> Result<ScanGrads<T, f32>> {
    selective_scan_backward_cuda_with(gpu, p, d_out, d_final_states, BwdOptions::default())
}

/// [`selective_scan_backward_cuda`] with the variants of `options` (for the
/// tests that run every variant). With [`BwdOptions::forward_checkpoints`]
/// the training forward ([`crate::cuda::ScanPlan::for_training`], default
/// tuning) runs first and writes the checkpoints.
pub fn selective_scan_backward_cuda_with<T: DeviceElement>(
    gpu: &Gpu,
    p: &SelectiveScanParams<'_, T>,
    d_out: &[T],
    d_final_states: Option<&[f32]>,
    options: BwdOptions,
) -> Result<ScanGrads<T, f32>> {
    let layout = ScanGradInputs::new(d_out, d_final_states).validate(p)?;
    let problem = ScanProblem::of(p)?;
    if problem.dims.seqlen == 0 {
        BwdConfig::with_options(&problem, &gpu.limits()?, options)?;
        return Ok(empty_sequence_grads(
            &problem,
            p,
            d_final_states,
            layout.num_seqs,
        ));
    }
    let plan = ScanBwdPlan::with_options(gpu, &problem, options)?;
    let mut fwd = ScanBuffers::upload(gpu, p)?;
    let d_out = gpu.upload(d_out)?;
    let d_final = d_final_states.map(|x| gpu.upload(x)).transpose()?;
    let mut grads = ScanGradBuffers::alloc(gpu, &problem)?;
    let mut ws = plan.workspace(gpu)?;
    if options.forward_checkpoints {
        let forward = ScanPlan::for_training(gpu, &problem, Default::default(), &plan)?;
        forward.launch_training(gpu, &mut fwd, &mut ws)?;
        forward.take_device_error(gpu)?;
    }
    plan.launch(gpu, &fwd, &d_out, d_final.as_ref(), &mut grads, &mut ws)?;
    plan.take_device_error(gpu)?;
    let opt = |x: &Option<CudaSlice<f32>>| x.as_ref().map(|x| gpu.download(x)).transpose();
    Ok(ScanGrads {
        du: gpu.download(&grads.du)?,
        ddelta: gpu.download(&grads.ddelta)?,
        da: gpu.download(&grads.da)?,
        db: gpu.download(&grads.db)?,
        dc: gpu.download(&grads.dc)?,
        dd: opt(&grads.dd)?,
        dz: grads.dz.as_ref().map(|x| gpu.download(x)).transpose()?,
        ddelta_bias: opt(&grads.ddelta_bias)?,
        dinitial_states: opt(&grads.dinitial_states)?,
    })
}

/// L = 0: every sum is empty, and the initial states' gradient is the final
/// states' (the state passes through unchanged).
fn empty_sequence_grads<T: DeviceElement>(
    problem: &ScanProblem,
    p: &SelectiveScanParams<'_, T>,
    d_final_states: Option<&[f32]>,
    num_seqs: usize,
) -> ScanGrads<T, f32> {
    let channels = problem.dims.d_inner;
    let n = problem.dims.d_state;
    let zeros = |len: usize| vec![0.0f32; len];
    ScanGrads {
        du: Vec::new(),
        ddelta: Vec::new(),
        da: zeros(channels * n),
        db: vec![T::default(); problem.bc_len(problem.b_groups)],
        dc: vec![T::default(); problem.bc_len(problem.c_groups)],
        dd: p.d.map(|_| zeros(channels)),
        dz: p.z.map(|_| Vec::new()),
        ddelta_bias: p.delta_bias.map(|_| zeros(channels)),
        dinitial_states: p.initial_states.map(|_| match d_final_states {
            Some(g) => g.to_vec(),
            None => zeros(num_seqs * channels * n),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_per_sm_follow_the_waves() {
        // M1-2.8B (1280 blocks) and M1-small (1024) on the H200's 132 SMs.
        assert_eq!(blocks_for_waves(1280, 132), 5);
        assert_eq!(blocks_for_waves(1024, 132), 4);
        // A grid of one partial wave keeps the larger register budget.
        assert_eq!(blocks_for_waves(4, 132), 4);
        assert_eq!(blocks_for_waves(0, 0), 4);
    }
}
