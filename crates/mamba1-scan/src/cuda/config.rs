//! The compile-time shape of the scan kernel (`kernels/mamba1/scan_fwd.cu`):
//! which problem it is specialised for (element type, N, options) and how the
//! work is cut (lanes per channel, states per lane, time tile), chosen here and
//! passed as `-D` defines. Also the shared-memory size, mirroring the kernel's
//! layout.

use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::shape::{check_allocatable, check_groups, check_nonzero, Shape};
use ssm_core::{DType, Element, Result, SsmError};
use ssm_gpu::DeviceLimits;

pub(crate) const IMPLEMENTATION: &str = "mamba1-scan CUDA";

/// Largest state size: 32 lanes per channel times 8 states per lane.
pub const MAX_D_STATE: usize = 256;
/// Time steps per chunk: the unit of the kernel's 16-byte loads and stores.
const CHUNK: usize = 8;
/// Dynamic shared memory a configuration may use without the opt-in attribute
/// (48 KiB on every architecture since sm_70); the default time tile stays under it.
const SMEM_DEFAULT_LIMIT: usize = 48 * 1024;
/// Threads per block on every architecture the kernels build for.
const MAX_THREADS_PER_BLOCK: usize = 1024;

/// The optional tensors and flags of a scan, for [`ScanProblem::from_shapes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// The call passes `D` `(D_in)`.
    pub has_d: bool,
    /// The call passes `z` `(b, D_in, L)`.
    pub has_z: bool,
    /// The call passes `delta_bias` `(D_in)`.
    pub has_delta_bias: bool,
    /// Softplus is applied to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// The call passes initial states `(b or num_seqs, D_in, N)`.
    pub has_initial_states: bool,
    /// The call returns final states.
    pub return_final_states: bool,
}

/// Shapes and options of a call, without the data: everything the kernel is
/// specialised on or sized by. Built from validated [`SelectiveScanParams`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanProblem {
    /// Input element type (f32, f16 or bf16 on the GPU).
    pub dtype: DType,
    /// The sizes of the call.
    pub dims: Mamba1Dims,
    /// `Some(G)` for B `(b, G, N, L)`, `None` for constant B `(D_in, N)`.
    pub b_groups: Option<usize>,
    /// `Some(G)` for C `(b, G, N, L)`, `None` for constant C `(D_in, N)`.
    pub c_groups: Option<usize>,
    /// The call passes `D` `(D_in)`.
    pub has_d: bool,
    /// The call passes `z` `(b, D_in, L)`.
    pub has_z: bool,
    /// The call passes `delta_bias` `(D_in)`.
    pub has_delta_bias: bool,
    /// Softplus is applied to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// The call passes initial states.
    pub has_initial_states: bool,
    /// The call returns final states.
    pub return_final_states: bool,
    /// `Some(num_seqs)` for varlen input.
    pub varlen_seqs: Option<usize>,
}

impl ScanProblem {
    /// Validate `p` and describe it.
    pub fn of<T: Element>(p: &SelectiveScanParams<'_, T>) -> Result<Self> {
        let layout = p.validate()?;
        let groups = |bc: &BcInput<'_, T>| match *bc {
            BcInput::Grouped { groups, .. } => Some(groups),
            BcInput::Constant(_) => None,
        };
        Ok(ScanProblem {
            dtype: T::DTYPE,
            dims: p.dims,
            b_groups: groups(&p.b),
            c_groups: groups(&p.c),
            has_d: p.d.is_some(),
            has_z: p.z.is_some(),
            has_delta_bias: p.delta_bias.is_some(),
            delta_softplus: p.delta_softplus,
            has_initial_states: p.initial_states.is_some(),
            return_final_states: p.return_final_states,
            varlen_seqs: p.cu_seqlens.map(|_| layout.num_seqs),
        })
    }

    /// A problem from shapes and options alone (no host data), for plans that
    /// upstream code builds before its tensors exist; checked as
    /// [`ScanProblem::check`] does.
    #[allow(clippy::too_many_arguments)]
    pub fn from_shapes(
        dtype: DType,
        dims: Mamba1Dims,
        b_groups: Option<usize>,
        c_groups: Option<usize>,
        options: ScanOptions,
        varlen_seqs: Option<usize>,
    ) -> Result<Self> {
        let problem = ScanProblem {
            dtype,
            dims,
            b_groups,
            c_groups,
            has_d: options.has_d,
            has_z: options.has_z,
            has_delta_bias: options.has_delta_bias,
            delta_softplus: options.delta_softplus,
            has_initial_states: options.has_initial_states,
            return_final_states: options.return_final_states,
            varlen_seqs,
        };
        problem.check()?;
        Ok(problem)
    }

    /// The invariants [`SelectiveScanParams::validate`] establishes for host
    /// data, checked on the shapes alone: every plan checks them, so that a
    /// hand-built problem cannot size a launch wrongly (or divide by zero).
    pub fn check(&self) -> Result<()> {
        let (batch, d_inner, d_state) = (self.dims.batch, self.dims.d_inner, self.dims.d_state);
        let seqlen = self.dims.seqlen;
        check_nonzero("batch", batch)?;
        check_nonzero("d_inner", d_inner)?;
        check_nonzero("d_state", d_state)?;
        for (arg, groups) in [("B", self.b_groups), ("C", self.c_groups)] {
            if let Some(groups) = groups {
                check_groups(arg, groups, "D_in", d_inner)?;
            }
        }
        if let Some(seqs) = self.varlen_seqs {
            if batch != 1 {
                return Err(SsmError::CuSeqlens {
                    reason: format!(
                        "varlen input packs its sequences in one row; batch is {batch}"
                    ),
                });
            }
            check_nonzero("cu_seqlens (number of sequences)", seqs)?;
        }
        let rows = if self.varlen_seqs.is_some() {
            "num_seqs"
        } else {
            "b"
        };
        let bdl = [("b", batch), ("D_in", d_inner), ("L", seqlen)];
        check_allocatable("u", Shape(&bdl))?;
        for (arg, groups) in [("B", self.b_groups), ("C", self.c_groups)] {
            let g = groups.unwrap_or(1);
            check_allocatable(
                arg,
                Shape(&[("b", batch), ("G", g), ("N", d_state), ("L", seqlen)]),
            )?;
        }
        check_allocatable(
            "final_states",
            Shape(&[(rows, self.num_seqs()), ("D_in", d_inner), ("N", d_state)]),
        )?;
        Ok(())
    }

    /// Independent sequences: batch rows, or varlen sequences.
    pub fn num_seqs(&self) -> usize {
        self.varlen_seqs.unwrap_or(self.dims.batch)
    }

    /// Elements of u, delta, z and out.
    pub fn io_len(&self) -> usize {
        self.dims.batch * self.dims.d_inner * self.dims.seqlen
    }

    /// Elements of B (or C) given its group count.
    pub fn bc_len(&self, groups: Option<usize>) -> usize {
        let (batch, d_inner, d_state) = (self.dims.batch, self.dims.d_inner, self.dims.d_state);
        let seqlen = self.dims.seqlen;
        match groups {
            Some(g) => batch * g * d_state * seqlen,
            None => d_inner * d_state,
        }
    }

    /// Elements of the initial or final states.
    pub fn state_len(&self) -> usize {
        self.num_seqs() * self.dims.d_inner * self.dims.d_state
    }

    /// Channels that share one B group and one C group: the unit a block's
    /// channels must not cross (their B/C time tiles are shared).
    pub fn seg_channels(&self) -> usize {
        let d = self.dims.d_inner;
        let per_group = |g: Option<usize>| g.map_or(d, |g| d / g);
        gcd(per_group(self.b_groups), per_group(self.c_groups))
    }

    /// Bytes the kernel must move at least: u, delta, z read and out written
    /// once, B/C read once, parameters and states.
    pub fn min_bytes(&self) -> usize {
        let e = self.dtype.size_bytes();
        let io = self.io_len() * e * (3 + usize::from(self.has_z));
        let bc = (self.bc_len(self.b_groups) + self.bc_len(self.c_groups)) * e;
        let per_channel = self.dims.d_inner * 4 * (self.dims.d_state + 2);
        let states = self.state_len()
            * 4
            * (usize::from(self.has_initial_states) + usize::from(self.return_final_states));
        io + bc + per_channel + states
    }

    /// exp2 evaluations of the recurrence: one per (sequence position, channel, state).
    pub fn recurrence_exps(&self) -> usize {
        self.io_len() * self.dims.d_state
    }
}

/// `SCAN_DTYPE` of the scan kernels (forward and backward): 0 f32, 1 f16, 2 bf16.
pub(crate) fn dtype_define(dtype: DType) -> String {
    match dtype {
        DType::F32 | DType::F64 => "0",
        DType::F16 => "1",
        DType::Bf16 => "2",
    }
    .to_string()
}

/// The `-D` flags both scan kernels (forward and backward) take from the
/// forward's options, in one place so that the two cannot drift.
pub(crate) fn option_defines(
    has_delta_bias: bool,
    delta_softplus: bool,
    has_d: bool,
    has_z: bool,
    b_const: bool,
    c_const: bool,
) -> [(&'static str, String); 6] {
    let flag = |b: bool| String::from(if b { "1" } else { "0" });
    [
        ("SCAN_HAS_BIAS", flag(has_delta_bias)),
        ("SCAN_SOFTPLUS", flag(delta_softplus)),
        ("SCAN_HAS_D", flag(has_d)),
        ("SCAN_HAS_Z", flag(has_z)),
        ("SCAN_B_CONST", flag(b_const)),
        ("SCAN_C_CONST", flag(c_const)),
    ]
}

/// The options part of a kernel label: `z`, `D`, `b` (delta_bias), `s`
/// (softplus) for those on, in that order (empty when none).
pub(crate) fn option_letters(z: bool, d: bool, bias: bool, softplus: bool) -> String {
    [(z, 'z'), (d, 'D'), (bias, 'b'), (softplus, 's')]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Knobs of the kernel's work split; `None` lets [`ScanConfig::new`] choose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanTuning {
    /// Lanes per channel (a power of two up to 32); the states are split among them.
    pub lanes_per_channel: Option<usize>,
    /// Channels per lane (1 to 4): each B/C value a lane reads from shared
    /// memory serves that many channels.
    pub channels_per_lane: Option<usize>,
    /// Time steps per tile (a multiple of 8).
    pub tile: Option<usize>,
    /// Threads per block (a multiple of 32).
    pub threads: Option<usize>,
    /// Of the `4 * states_per_lane` exponentials of a lane's 4-step group, how
    /// many take exp2 as an FMA polynomial instead of MUFU (spread evenly).
    pub exp_poly: Option<usize>,
    /// The softplus and silu exponentials as FMA polynomials too.
    pub elem_exp_poly: Option<bool>,
    /// Lane order: `true` puts the lanes of one state slice of 32 channels in a
    /// warp (B/C reads become warp-wide broadcasts), `false` the lanes of one
    /// channel next to each other.
    pub slice_major: Option<bool>,
    /// `__launch_bounds__` minimum blocks per SM (caps registers).
    pub min_blocks: Option<usize>,
}

/// Everything the kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanConfig {
    /// Input element type.
    pub dtype: DType,
    /// `N`, the state size per channel.
    pub d_state: usize,
    /// Lanes per channel (a power of two up to 32).
    pub lanes_per_channel: usize,
    /// States each lane owns (`ceil(N / lanes_per_channel)`).
    pub states_per_lane: usize,
    /// Channels per lane (1 to 4).
    pub channels_per_lane: usize,
    /// Threads per block.
    pub threads: usize,
    /// Time steps per shared-memory tile (a multiple of 8).
    pub tile: usize,
    /// `__launch_bounds__` minimum blocks per SM.
    pub min_blocks: usize,
    /// Exponentials per 4-step group computed as FMA polynomials (see [`ScanTuning::exp_poly`]).
    pub exp_poly: usize,
    /// The softplus and silu exponentials as FMA polynomials.
    pub elem_exp_poly: bool,
    /// Lane order (see [`ScanTuning::slice_major`]).
    pub slice_major: bool,
    /// `delta_bias` is added to `delta`.
    pub has_delta_bias: bool,
    /// Softplus is applied to `delta + delta_bias`.
    pub delta_softplus: bool,
    /// The skip term `D` is compiled in.
    pub has_d: bool,
    /// The `silu(z)` gate is compiled in.
    pub has_z: bool,
    /// B is constant `(D_in, N)`.
    pub b_const: bool,
    /// C is constant `(D_in, N)`.
    pub c_const: bool,
    /// 16-byte vector loads and stores (rows aligned: L a multiple of 8).
    pub vec_io: bool,
    /// Training: the forward also stores the backward's checkpoints, the state
    /// entering every `ckpt_tile` steps (0: it does not; see
    /// [`ScanConfig::with_checkpoints`]).
    pub ckpt_tile: usize,
    /// The checkpoint steps are known at compile time (no varlen, and
    /// `ckpt_tile` divides `tile`); otherwise a per-lane countdown finds them.
    pub ckpt_static: bool,
}

impl ScanConfig {
    /// The configuration for `problem` on a device with `limits`, or `Unsupported`
    /// for shapes and tunings the kernel does not handle (never a configuration
    /// that would compute a wrong answer, fail its `#error` checks in
    /// `kernels/mamba1/scan_fwd.cu`, or not launch on that device).
    pub fn new(problem: &ScanProblem, tuning: ScanTuning, limits: &DeviceLimits) -> Result<Self> {
        let n = problem.dims.d_state;
        if problem.dtype == DType::F64 {
            return Err(unsupported("f64 inputs (use f32, f16 or bf16)".into()));
        }
        if n > MAX_D_STATE {
            return Err(unsupported(format!(
                "d_state = {n} (at most {MAX_D_STATE})"
            )));
        }
        let lanes = match tuning.lanes_per_channel {
            Some(l) => l,
            None => default_lanes(n),
        };
        if !lanes.is_power_of_two() || lanes > 32 {
            return Err(unsupported(format!(
                "{lanes} lanes per channel (a power of two up to 32)"
            )));
        }
        let states_per_lane = n.div_ceil(lanes);
        // Two channels per lane halve the shared-memory bytes per state and step
        // but also the warps in flight; measured slower on the M1 workloads
        // (docs/kernels/mamba1-scan.md, v3), so one is the default.
        let channels_per_lane = tuning.channels_per_lane.unwrap_or(1);
        if !(1..=4).contains(&channels_per_lane) {
            return Err(unsupported(format!(
                "{channels_per_lane} channels per lane (1 to 4)"
            )));
        }
        let threads = tuning
            .threads
            .unwrap_or(if channels_per_lane == 2 { 64 } else { 128 });
        let max_threads = MAX_THREADS_PER_BLOCK.min(limits.max_threads_per_sm as usize);
        if threads == 0 || threads % 32 != 0 || threads > max_threads {
            return Err(unsupported(format!(
                "{threads} threads per block (a multiple of 32 up to {max_threads})"
            )));
        }
        // (`SCAN_TPC` divides `SCAN_THREADS`: lanes is a power of two up to 32 and
        // threads a multiple of 32.)
        let exp_poly = tuning.exp_poly.unwrap_or(0);
        if exp_poly > 4 * channels_per_lane * states_per_lane {
            return Err(unsupported(format!(
                "{exp_poly} polynomial exponentials per 4 steps of a lane with \
                 {channels_per_lane} x {states_per_lane} states"
            )));
        }
        let mut config = ScanConfig {
            dtype: problem.dtype,
            d_state: n,
            lanes_per_channel: lanes,
            states_per_lane,
            channels_per_lane,
            threads,
            tile: 32,
            min_blocks: 1,
            exp_poly,
            elem_exp_poly: tuning.elem_exp_poly.unwrap_or(false),
            // Warp-uniform B/C reads need whole warps per slice.
            slice_major: tuning.slice_major.unwrap_or(threads % (32 * lanes) == 0),
            has_delta_bias: problem.has_delta_bias,
            delta_softplus: problem.delta_softplus,
            has_d: problem.has_d,
            has_z: problem.has_z,
            b_const: problem.b_groups.is_none(),
            c_const: problem.c_groups.is_none(),
            vec_io: problem.dims.seqlen % CHUNK == 0,
            ckpt_tile: 0,
            ckpt_static: false,
        };
        match tuning.tile {
            Some(tile) => {
                if tile == 0 || tile % CHUNK != 0 {
                    return Err(unsupported(format!(
                        "a time tile of {tile} (a multiple of 8)"
                    )));
                }
                config.tile = tile;
            }
            None => {
                while config.smem_bytes() > SMEM_DEFAULT_LIMIT && config.tile > CHUNK {
                    config.tile /= 2;
                }
            }
        }
        config.min_blocks = match tuning.min_blocks {
            Some(m) => m,
            None => config.default_min_blocks(),
        };
        // `__launch_bounds__` asks ptxas for room for min_blocks resident blocks;
        // past the SM's threads it cannot exist.
        let resident = config.min_blocks * threads;
        if config.min_blocks == 0 || resident > limits.max_threads_per_sm as usize {
            return Err(unsupported(format!(
                "{} blocks of {threads} threads per SM (at least 1, at most {} threads)",
                config.min_blocks, limits.max_threads_per_sm
            )));
        }
        let smem = config.smem_bytes();
        if smem > limits.smem_per_block_optin as usize {
            return Err(unsupported(format!(
                "{} ({smem} bytes of shared memory, the device allows {})",
                config.label(),
                limits.smem_per_block_optin
            )));
        }
        Ok(config)
    }

    /// Channels per block.
    pub fn channels_per_block(&self) -> usize {
        self.threads / self.lanes_per_channel * self.channels_per_lane
    }

    /// The same forward, also writing the checkpoints of a backward whose tile
    /// is `ckpt_tile` steps (`BwdConfig::tile`) for `problem`: the backward then
    /// skips its checkpoint kernel (docs/kernels/mamba1-scan-bwd.md, v4).
    /// [`SsmError::Unsupported`] with polynomial exponentials (`exp_poly`,
    /// `elem_exp_poly`): the checkpoints would not be the states the backward
    /// recomputes, bit for bit.
    pub fn with_checkpoints(self, problem: &ScanProblem, ckpt_tile: usize) -> Result<Self> {
        if self.exp_poly != 0 || self.elem_exp_poly {
            return Err(unsupported(format!(
                "a training forward ({}) with polynomial exponentials: the backward \
                 recomputes its states with the MUFU exp2 and the exact softplus",
                self.label()
            )));
        }
        if ckpt_tile == 0 {
            return Err(unsupported("a checkpoint interval of 0 steps".into()));
        }
        Ok(ScanConfig {
            ckpt_tile,
            ckpt_static: problem.varlen_seqs.is_none() && self.tile % ckpt_tile == 0,
            ..self
        })
    }

    /// Dynamic shared memory per block, as laid out by the kernel: (dt, dt*u)
    /// slots, partial sums, and the f32 B/C rows of grouped B/C.
    pub fn smem_bytes(&self) -> usize {
        let cpb = self.channels_per_block();
        let slots = cpb * (self.tile + 2) * 8;
        let parts = cpb * self.lanes_per_channel * (self.tile + 4) * 4;
        let padded_n = self.lanes_per_channel * self.states_per_lane;
        let grouped = usize::from(!self.b_const) + usize::from(!self.c_const);
        slots + parts + grouped * self.tile * padded_n * 4
    }

    /// Register cap through `__launch_bounds__`, for the tuned N = 16 splits
    /// only: five resident blocks per SM, so that the M1 workloads (4-5 blocks
    /// per SM) run in one wave. Other splits keep the compiler's choice (their
    /// prefetch registers grow with tile / lanes; a cap would spill).
    fn default_min_blocks(&self) -> usize {
        let tuned_split = self.lanes_per_channel == 4
            && self.states_per_lane == 4
            && self.tile == 32
            && self.vec_io
            && self.threads * self.channels_per_lane == 128;
        match (tuned_split, self.dtype) {
            (false, _) => 1,
            // f32 inputs double the prefetch registers; the 5-block cap would spill.
            (true, DType::F32 | DType::F64) => 4,
            (true, DType::F16 | DType::Bf16) => 5,
        }
    }

    /// The `-D` defines of `kernels/mamba1/scan_fwd.cu`.
    pub fn defines(&self) -> Vec<(&'static str, String)> {
        let flag = |b: bool| String::from(if b { "1" } else { "0" });
        let mut defines = vec![
            ("SCAN_DTYPE", dtype_define(self.dtype)),
            ("SCAN_N", self.d_state.to_string()),
            ("SCAN_TPC", self.lanes_per_channel.to_string()),
            ("SCAN_NPT", self.states_per_lane.to_string()),
            ("SCAN_CPL", self.channels_per_lane.to_string()),
            ("SCAN_THREADS", self.threads.to_string()),
            ("SCAN_TILE", self.tile.to_string()),
            ("SCAN_MIN_BLOCKS", self.min_blocks.to_string()),
            ("SCAN_EXP_POLY", self.exp_poly.to_string()),
            ("SCAN_ELEM_EXP_POLY", flag(self.elem_exp_poly)),
            ("SCAN_SLICE_MAJOR", flag(self.slice_major)),
            ("SCAN_VEC_IO", flag(self.vec_io)),
            ("SCAN_CKPT_BT", self.ckpt_tile.to_string()),
            ("SCAN_CKPT_STATIC", flag(self.ckpt_static)),
        ];
        defines.extend(option_defines(
            self.has_delta_bias,
            self.delta_softplus,
            self.has_d,
            self.has_z,
            self.b_const,
            self.c_const,
        ));
        defines
    }

    /// A short stable name, e.g. `bf16.n16.tpc4.t32.p0.zDbs.vec`.
    pub fn label(&self) -> String {
        let opts = option_letters(
            self.has_z,
            self.has_d,
            self.has_delta_bias,
            self.delta_softplus,
        );
        let bc = match (self.b_const, self.c_const) {
            (false, false) => "",
            (true, false) => ".Bconst",
            (false, true) => ".Cconst",
            (true, true) => ".BCconst",
        };
        // Training forwards: `.ck<tile>` (`d`: countdown, not compile-time stores).
        let ck = match (self.ckpt_tile, self.ckpt_static) {
            (0, _) => String::new(),
            (t, true) => format!(".ck{t}"),
            (t, false) => format!(".ck{t}d"),
        };

        format!(
            "{}.n{}.tpc{}{}.cpl{}.t{}.w{}.mb{}.p{}{}.{}{}{}{ck}",
            self.dtype,
            self.d_state,
            self.lanes_per_channel,
            if self.slice_major { "s" } else { "" },
            self.channels_per_lane,
            self.tile,
            self.threads,
            self.min_blocks,
            self.exp_poly,
            if self.elem_exp_poly { "e" } else { "" },
            if opts.is_empty() { "-" } else { &opts },
            bc,
            if self.vec_io { ".vec" } else { ".scalar" }
        )
    }
}

/// States per lane 4 for small N (more lanes, more channels in flight), 8 past
/// N = 64 so that 256 states fit 32 lanes.
fn default_lanes(n: usize) -> usize {
    let per_lane = if n <= 64 { 4 } else { 8 };
    n.div_ceil(per_lane).next_power_of_two().min(32)
}

pub(crate) fn unsupported(what: String) -> SsmError {
    SsmError::Unsupported {
        implementation: IMPLEMENTATION,
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &DeviceLimits = &DeviceLimits::H100_SXM;

    fn problem(n: usize, seqlen: usize) -> ScanProblem {
        ScanProblem {
            dtype: DType::Bf16,
            dims: Mamba1Dims::new(4, 5120, n, seqlen),
            b_groups: Some(1),
            c_groups: Some(1),
            has_d: true,
            has_z: true,
            has_delta_bias: true,
            delta_softplus: true,
            has_initial_states: false,
            return_final_states: false,
            varlen_seqs: None,
        }
    }

    #[test]
    fn state_split_covers_n_with_at_most_32_lanes() {
        for n in 1..=MAX_D_STATE {
            let c = ScanConfig::new(&problem(n, 64), ScanTuning::default(), H100).unwrap();
            assert!(c.lanes_per_channel * c.states_per_lane >= n, "n={n}");
            assert!(c.lanes_per_channel <= 32 && c.states_per_lane <= 8, "n={n}");
            assert!(c.smem_bytes() <= SMEM_DEFAULT_LIMIT, "n={n}: {c:?}");
            assert_eq!(c.tile % CHUNK, 0);
        }
        // The measured split of the M1 workloads (docs/kernels/mamba1-scan.md, v4).
        let c = ScanConfig::new(&problem(16, 4096), ScanTuning::default(), H100).unwrap();
        assert_eq!((c.lanes_per_channel, c.states_per_lane, c.tile), (4, 4, 32));
        assert_eq!((c.channels_per_lane, c.threads, c.min_blocks), (1, 128, 5));
        assert!(c.slice_major && c.vec_io);
        assert_eq!(c.smem_bytes(), 31_232);
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        let too_big = ScanConfig::new(&problem(257, 64), ScanTuning::default(), H100);
        assert!(matches!(too_big, Err(SsmError::Unsupported { .. })));
        let bad_lanes = ScanTuning {
            lanes_per_channel: Some(3),
            ..ScanTuning::default()
        };
        assert!(ScanConfig::new(&problem(16, 64), bad_lanes, H100).is_err());
        let f64_problem = ScanProblem {
            dtype: DType::F64,
            ..problem(16, 64)
        };
        assert!(ScanConfig::new(&f64_problem, ScanTuning::default(), H100).is_err());
    }

    #[test]
    fn unaligned_lengths_take_the_scalar_path() {
        let c = ScanConfig::new(&problem(16, 4095), ScanTuning::default(), H100).unwrap();
        assert!(!c.vec_io);
    }

    #[test]
    fn segments_respect_both_group_counts() {
        let mut p = problem(16, 64);
        p.dims.d_inner = 12;
        p.b_groups = Some(2); // 6 channels per group
        p.c_groups = Some(3); // 4 channels per group
        assert_eq!(p.seg_channels(), 2);
        p.c_groups = None;
        assert_eq!(p.seg_channels(), 6);
    }
}
