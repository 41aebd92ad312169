//! Random problems for every operation, reproducible from `(case, seed)`.
//!
//! Values follow docs/DESIGN.md §4: A < 0 (from `-exp(randn)`, optionally very
//! negative or near 0), dt from `softplus(randn - 4)` or large (up to 10), B/C/x/u
//! randn. Inputs are drawn in f32 and rounded once to the element type under test;
//! the rounded values are what both the oracle and the implementation see.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdDims, SsdParams};
use ssm_core::Element;

/// How step sizes are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DtRegime {
    /// `softplus(randn - 4)` before the implementation's own bias/softplus: the usual trained range.
    #[default]
    Typical,
    /// Up to 10: long jumps that stress decays and cumulative sums.
    Large,
}

fn randn(rng: &mut StdRng) -> f32 {
    StandardNormal.sample(rng)
}

fn randn_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| randn(rng)).collect()
}

/// Raw step-size inputs: with `softplus` on they go through softplus in the
/// implementation, so draw pre-activations; otherwise draw positive step sizes.
fn dt_vec(rng: &mut StdRng, n: usize, regime: DtRegime, softplus: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let pre = match regime {
                DtRegime::Typical => randn(rng) - 4.0,
                DtRegime::Large => rng.random_range(-4.0f32..10.0),
            };
            if softplus {
                pre
            } else {
                ssm_core::math::softplus_f32(pre)
            }
        })
        .collect()
}

/// A negative `A`: `-exp(randn)`, in roughly [-8, -0.1].
fn a_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| -(randn(rng).clamp(-2.3, 2.0)).exp())
        .collect()
}

/// Random split of `len` into `num_seqs` pieces (some may be empty).
pub fn random_cu_seqlens(rng: &mut StdRng, len: usize, num_seqs: usize) -> Vec<i64> {
    let cuts = (0..num_seqs.saturating_sub(1))
        .map(|_| rng.random_range(0..=len) as i64)
        .collect();
    cu_seqlens_from_cuts(len, cuts)
}

/// The varlen offsets of a scan or SSD draw, `varlen` sequences over `seqlen`
/// (drawn before the tensors), and the rows of initial states: one per
/// sequence, else one per batch row.
fn varlen_rows(
    rng: &mut StdRng,
    varlen: Option<usize>,
    seqlen: usize,
    batch: usize,
) -> (Option<Vec<i64>>, usize) {
    let cu_seqlens = varlen.map(|n| random_cu_seqlens(rng, seqlen, n));
    let rows = cu_seqlens.as_ref().map_or(batch, |cu| cu.len() - 1);
    (cu_seqlens, rows)
}

/// Offsets `0, cuts (sorted), len`: the `cu_seqlens` of the pieces that cut
/// points in `0..=len` leave.
pub(crate) fn cu_seqlens_from_cuts(len: usize, mut cuts: Vec<i64>) -> Vec<i64> {
    cuts.sort_unstable();
    let mut cu = Vec::with_capacity(cuts.len() + 2);
    cu.push(0);
    cu.extend(cuts);
    cu.push(len as i64);
    cu
}

/// The Mamba-2 skip term `d`, if drawn: `(H, P)` when `per_head_dim`, else `(H)`.
pub fn d_skip(d: Option<&[f32]>, per_head_dim: bool) -> Option<DSkip<'_>> {
    d.map(|d| {
        if per_head_dim {
            DSkip::PerHeadDim(d)
        } else {
            DSkip::PerHead(d)
        }
    })
}

/// The option part of a case description: ` +name` per option on, then the
/// varlen count and the step-size regime.
fn option_suffix(options: &[(bool, &str)], varlen: Option<usize>, dt: DtRegime) -> String {
    let mut s: String = options
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| format!(" +{name}"))
        .collect();
    if let Some(n) = varlen {
        s += &format!(" varlen{n}");
    }
    if dt == DtRegime::Large {
        s += " bigdt";
    }
    s
}

fn round<T: Element>(xs: &[f32]) -> Vec<T> {
    ssm_core::element::round_slice(xs)
}

/// A problem's tensor inputs rounded to `T`, by role, beside its f32 draw `D`
/// (parameters and states stay f32 there): the input (Mamba-1 `u`, Mamba-2 `x`),
/// the step sizes (`delta` / `dt`), B, C and the gate z. [`Mamba1Inputs`],
/// [`SsdInputs`] and [`StepInputs`] are this over each family's draw.
pub struct Rounded<'d, D, T> {
    /// The f32 draw the tensors were rounded from (parameters and states stay there).
    pub data: &'d D,
    /// The input (`u` or `x`), rounded to `T`.
    pub x: Vec<T>,
    /// The step sizes (`delta` or `dt`), rounded to `T`.
    pub dt: Vec<T>,
    /// B, rounded to `T`.
    pub b: Vec<T>,
    /// C, rounded to `T`.
    pub c: Vec<T>,
    /// The gate z, rounded to `T`, when the case has one.
    pub z: Option<Vec<T>>,
}

impl<'d, D, T: Element> Rounded<'d, D, T> {
    fn new(data: &'d D, [x, dt, b, c]: [&[f32]; 4], z: Option<&[f32]>) -> Self {
        Rounded {
            data,
            x: round(x),
            dt: round(dt),
            b: round(b),
            c: round(c),
            z: z.map(round),
        }
    }
}

// ---------------------------------------------------------------- Mamba-1

/// Shape and options of a Mamba-1 scan problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Mamba1Case {
    /// The sizes.
    pub dims: Mamba1Dims,
    /// `Some(G)`: B is `(b, G, N, L)`; `None`: constant `(D_in, N)`.
    pub b_groups: Option<usize>,
    /// As `b_groups`, for C.
    pub c_groups: Option<usize>,
    /// Draw `D` `(D_in)`.
    pub d: bool,
    /// Draw the gate z.
    pub z: bool,
    /// Draw `delta_bias` `(D_in)`.
    pub delta_bias: bool,
    /// Apply softplus to the step size.
    pub softplus: bool,
    /// Draw initial states.
    pub initial_states: bool,
    /// Ask for final states.
    pub final_states: bool,
    /// Number of varlen sequences (batch must be 1), or `None`.
    pub varlen: Option<usize>,
    /// How the step sizes are drawn.
    pub dt: DtRegime,
}

impl Mamba1Case {
    /// Plain problem: grouped B/C with one group, no options.
    pub fn plain(batch: usize, d_inner: usize, d_state: usize, seqlen: usize) -> Self {
        Mamba1Case {
            dims: Mamba1Dims::new(batch, d_inner, d_state, seqlen),
            b_groups: Some(1),
            c_groups: Some(1),
            d: false,
            z: false,
            delta_bias: false,
            softplus: false,
            initial_states: false,
            final_states: true,
            varlen: None,
            dt: DtRegime::Typical,
        }
    }

    /// Every option on (as in the M1 reference workloads).
    pub fn all_options(mut self) -> Self {
        self.d = true;
        self.z = true;
        self.delta_bias = true;
        self.softplus = true;
        self.initial_states = true;
        self.final_states = true;
        self
    }

    /// A short label for reports (`b2 D64 N16 L100 B:G1 C:const +D+z...`).
    pub fn describe(&self) -> String {
        let mut s = self.dims.to_string();
        let bc = |g: Option<usize>| g.map_or("const".to_string(), |g| format!("G{g}"));
        s += &format!(" B:{} C:{}", bc(self.b_groups), bc(self.c_groups));
        let options = [
            (self.d, "D"),
            (self.z, "z"),
            (self.delta_bias, "bias"),
            (self.softplus, "softplus"),
            (self.initial_states, "h0"),
        ];
        s + &option_suffix(&options, self.varlen, self.dt)
    }
}

/// The f32 draw of a Mamba-1 problem, before rounding to the element type.
#[derive(Clone, Debug)]
pub struct Mamba1Data {
    /// The case drawn.
    pub case: Mamba1Case,
    /// `(b, D_in, L)`.
    pub u: Vec<f32>,
    /// `(b, D_in, L)`.
    pub delta: Vec<f32>,
    /// `(D_in, N)`.
    pub a: Vec<f32>,
    /// `(b, G, N, L)` or `(D_in, N)`.
    pub b: Vec<f32>,
    /// `(b, G, N, L)` or `(D_in, N)`.
    pub c: Vec<f32>,
    /// `(D_in)`.
    pub d: Option<Vec<f32>>,
    /// `(b, D_in, L)`.
    pub z: Option<Vec<f32>>,
    /// `(D_in)`.
    pub delta_bias: Option<Vec<f32>>,
    /// `(b or num_seqs, D_in, N)`.
    pub initial_states: Option<Vec<f32>>,
    /// Varlen offsets `(num_seqs + 1)`.
    pub cu_seqlens: Option<Vec<i64>>,
}

impl Mamba1Data {
    /// Draw every tensor of `case` from a generator seeded with `seed` (same
    /// seed, same data).
    pub fn generate(case: &Mamba1Case, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let dims = case.dims;
        let d_inner = dims.d_inner;
        let bdl = dims.io_len();
        let bc_len = |g: Option<usize>| g.map_or(dims.a_len(), |g| dims.bc_len(g));
        let (cu_seqlens, rows) = varlen_rows(&mut rng, case.varlen, dims.seqlen, dims.batch);
        Mamba1Data {
            u: randn_vec(&mut rng, bdl),
            delta: dt_vec(&mut rng, bdl, case.dt, case.softplus),
            a: a_vec(&mut rng, dims.a_len()),
            b: randn_vec(&mut rng, bc_len(case.b_groups)),
            c: randn_vec(&mut rng, bc_len(case.c_groups)),
            d: case.d.then(|| randn_vec(&mut rng, d_inner)),
            z: case.z.then(|| randn_vec(&mut rng, bdl)),
            // Without softplus a negative bias could make dt < 0 and the state grow
            // without bound (e^100 after a few steps), which is not a Mamba-1 input.
            delta_bias: case.delta_bias.then(|| {
                (0..d_inner)
                    .map(|_| {
                        let b = 0.5 * randn(&mut rng);
                        if case.softplus {
                            b
                        } else {
                            b.abs()
                        }
                    })
                    .collect()
            }),
            initial_states: case
                .initial_states
                .then(|| randn_vec(&mut rng, dims.states_len(rows))),
            cu_seqlens,
            case: case.clone(),
        }
    }

    /// Round the tensor inputs to `T` (parameters and states stay f32).
    pub fn inputs<T: Element>(&self) -> Mamba1Inputs<'_, T> {
        let tensors = [&self.u, &self.delta, &self.b, &self.c].map(|v| &v[..]);
        Rounded::new(self, tensors, self.z.as_deref())
    }
}

/// A Mamba-1 problem with its tensors rounded to `T` (`x` is `u`, `dt` is `delta`).
pub type Mamba1Inputs<'d, T> = Rounded<'d, Mamba1Data, T>;

impl<T: Element> Mamba1Inputs<'_, T> {
    /// The parameter struct over these tensors, with the case's options.
    pub fn params(&self) -> SelectiveScanParams<'_, T> {
        let data = self.data;
        let case = &data.case;
        SelectiveScanParams {
            dims: case.dims,
            u: &self.x,
            delta: &self.dt,
            a: &data.a,
            b: BcInput::from_groups(case.b_groups, &self.b),
            c: BcInput::from_groups(case.c_groups, &self.c),
            d: data.d.as_deref(),
            z: self.z.as_deref(),
            delta_bias: data.delta_bias.as_deref(),
            delta_softplus: case.softplus,
            initial_states: data.initial_states.as_deref(),
            cu_seqlens: data.cu_seqlens.as_deref(),
            return_final_states: case.final_states,
            check_finite: false,
        }
    }
}

// ---------------------------------------------------------------- Mamba-2 SSD

/// The skip term's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DKind {
    /// No skip term.
    None,
    /// `D` `(H)`.
    PerHead,
    /// `D` `(H, P)`.
    PerHeadDim,
}

/// Shape and options of an SSD problem.
#[derive(Clone, Debug, PartialEq)]
pub struct SsdCase {
    /// The sizes.
    pub dims: SsdDims,
    /// Draw `dt_bias` `(H)`.
    pub dt_bias: bool,
    /// Apply softplus to the step size.
    pub softplus: bool,
    /// The step-size clamp; `None` is [`NO_DT_LIMIT`](ssm_core::mamba2::NO_DT_LIMIT).
    pub dt_limit: Option<(f32, f32)>,
    /// The skip term to draw.
    pub d: DKind,
    /// Draw the gate z.
    pub z: bool,
    /// Draw initial states.
    pub initial_states: bool,
    /// Ask for final states.
    pub final_states: bool,
    /// Number of varlen sequences (batch must be 1), or `None`.
    pub varlen: Option<usize>,
    /// How the step sizes are drawn.
    pub dt: DtRegime,
}

impl SsdCase {
    /// Plain problem: no options, typical step sizes.
    pub fn plain(
        batch: usize,
        seqlen: usize,
        heads: usize,
        head_dim: usize,
        d_state: usize,
        groups: usize,
    ) -> Self {
        SsdCase {
            dims: SsdDims::new(batch, seqlen, heads, head_dim, d_state, groups),
            dt_bias: false,
            softplus: false,
            dt_limit: None,
            d: DKind::None,
            z: false,
            initial_states: false,
            final_states: true,
            varlen: None,
            dt: DtRegime::Typical,
        }
    }

    /// Every option on: dt_bias, softplus, clamp `[0.001, 5]`, `D` per head, z,
    /// initial and final states.
    pub fn all_options(mut self) -> Self {
        self.dt_bias = true;
        self.softplus = true;
        self.dt_limit = Some((0.001, 5.0));
        self.d = DKind::PerHead;
        self.z = true;
        self.initial_states = true;
        self.final_states = true;
        self
    }

    /// A short label for reports.
    pub fn describe(&self) -> String {
        let s = self.dims.to_string();
        let options = [
            (self.dt_bias, "bias"),
            (self.softplus, "softplus"),
            (self.dt_limit.is_some(), "limit"),
            (self.d == DKind::PerHead, "D(H)"),
            (self.d == DKind::PerHeadDim, "D(H,P)"),
            (self.z, "z"),
            (self.initial_states, "s0"),
        ];
        s + &option_suffix(&options, self.varlen, self.dt)
    }
}

/// The f32 draw of an SSD problem.
#[derive(Clone, Debug)]
pub struct SsdData {
    /// The case drawn.
    pub case: SsdCase,
    /// `(b, L, H, P)`.
    pub x: Vec<f32>,
    /// `(b, L, H)`.
    pub dt: Vec<f32>,
    /// `(H)`.
    pub a: Vec<f32>,
    /// `(b, L, G, N)`.
    pub b: Vec<f32>,
    /// `(b, L, G, N)`.
    pub c: Vec<f32>,
    /// `(H)`.
    pub dt_bias: Option<Vec<f32>>,
    /// `(H)` or `(H, P)`.
    pub d: Option<Vec<f32>>,
    /// `(b, L, H, P)`.
    pub z: Option<Vec<f32>>,
    /// `(b or num_seqs, H, P, N)`.
    pub initial_states: Option<Vec<f32>>,
    /// Varlen offsets `(num_seqs + 1)`.
    pub cu_seqlens: Option<Vec<i64>>,
}

impl SsdData {
    /// Draw every tensor of `case` from a generator seeded with `seed` (same
    /// seed, same data).
    pub fn generate(case: &SsdCase, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let dims = case.dims;
        let heads = dims.heads;
        let (blhp, blgn) = (dims.x_len(), dims.bc_len());
        let (cu_seqlens, rows) = varlen_rows(&mut rng, case.varlen, dims.seqlen, dims.batch);
        SsdData {
            x: randn_vec(&mut rng, blhp),
            dt: dt_vec(&mut rng, dims.dt_len(), case.dt, case.softplus),
            a: a_vec(&mut rng, heads),
            b: randn_vec(&mut rng, blgn),
            c: randn_vec(&mut rng, blgn),
            dt_bias: case
                .dt_bias
                .then(|| (0..heads).map(|_| 0.5 * randn(&mut rng)).collect()),
            d: match case.d {
                DKind::None => None,
                DKind::PerHead => Some(randn_vec(&mut rng, heads)),
                DKind::PerHeadDim => Some(randn_vec(&mut rng, heads * dims.head_dim)),
            },
            z: case.z.then(|| randn_vec(&mut rng, blhp)),
            initial_states: case
                .initial_states
                .then(|| randn_vec(&mut rng, dims.states_len(rows))),
            cu_seqlens,
            case: case.clone(),
        }
    }

    /// The tensors rounded to `T`.
    pub fn inputs<T: Element>(&self) -> SsdInputs<'_, T> {
        let tensors = [&self.x, &self.dt, &self.b, &self.c].map(|v| &v[..]);
        Rounded::new(self, tensors, self.z.as_deref())
    }

    /// Per-step log decays `dt' * A` as rows of L per (batch, head), for the tolerance model.
    pub fn log_decays<T: Element>(&self, inputs: &SsdInputs<T>) -> Vec<f64> {
        let p = inputs.params();
        let d = self.case.dims;
        let (batch, seqlen, heads) = (d.batch, d.seqlen, d.heads);
        let mut out = Vec::with_capacity(batch * heads * seqlen);
        for bi in 0..batch {
            for h in 0..heads {
                for t in 0..seqlen {
                    out.push(p.dt_at(bi, t, h) * self.a[h] as f64);
                }
            }
        }
        out
    }
}

/// An SSD problem with its tensors rounded to `T`.
pub type SsdInputs<'d, T> = Rounded<'d, SsdData, T>;

impl<T: Element> SsdInputs<'_, T> {
    /// The parameter struct over these tensors, with the case's options.
    pub fn params(&self) -> SsdParams<'_, T> {
        let data = self.data;
        let case = &data.case;
        SsdParams {
            dims: case.dims,
            x: &self.x,
            dt: &self.dt,
            a: &data.a,
            b: &self.b,
            c: &self.c,
            dt_bias: data.dt_bias.as_deref(),
            dt_softplus: case.softplus,
            dt_limit: case.dt_limit.unwrap_or(ssm_core::mamba2::NO_DT_LIMIT),
            d: match (case.d, data.d.as_deref()) {
                (DKind::PerHead, Some(d)) => Some(DSkip::PerHead(d)),
                (DKind::PerHeadDim, Some(d)) => Some(DSkip::PerHeadDim(d)),
                _ => None,
            },
            z: self.z.as_deref(),
            initial_states: data.initial_states.as_deref(),
            cu_seqlens: data.cu_seqlens.as_deref(),
            return_final_states: case.final_states,
            check_finite: false,
        }
    }
}

// ---------------------------------------------------------------- decode steps

/// Shape and options of a decode step (either family).
#[derive(Clone, Debug, PartialEq)]
pub struct StepCase {
    /// `b`.
    pub batch: usize,
    /// Mamba-1: `(D_in, 1)`; Mamba-2: `(H, P)`.
    pub channels: usize,
    /// Mamba-2: `P`; Mamba-1: 1.
    pub head_dim: usize,
    /// `N`.
    pub d_state: usize,
    /// `G`, the B/C groups.
    pub groups: usize,
    /// Extra cache rows beyond the batch; with `Some`, rows are shuffled and some are padding.
    pub indexed: Option<usize>,
    /// Every option on: D, z, dt_bias, softplus (and for Mamba-2 the clamp
    /// `[0.001, 5]`).
    pub all_options: bool,
    /// `D` is `(H, P)` rather than `(H)` (Mamba-2).
    pub d_per_head_dim: bool,
}

/// The f32 draw of a decode step plus its state cache.
#[derive(Clone, Debug)]
pub struct StepData {
    /// The case drawn.
    pub case: StepCase,
    /// `(b, D_in)` or `(b, H, P)`.
    pub x: Vec<f32>,
    /// `(b, D_in)` or `(b, H)`.
    pub dt: Vec<f32>,
    /// `(D_in, N)` or `(H)`.
    pub a: Vec<f32>,
    /// `(b, G, N)`.
    pub b: Vec<f32>,
    /// `(b, G, N)`.
    pub c: Vec<f32>,
    /// The skip term.
    pub d: Option<Vec<f32>>,
    /// In the shape of `x`.
    pub z: Option<Vec<f32>>,
    /// `(D_in)` or `(H)`.
    pub dt_bias: Option<Vec<f32>>,
    /// The f32 state cache `(cache_rows, ...)`, drawn.
    pub state: Vec<f32>,
    /// Rows of the cache.
    pub cache_rows: usize,
    /// `(b)`: shuffled cache rows, some `-1` (padding), with `indexed`.
    pub state_batch_indices: Option<Vec<i64>>,
}

impl StepData {
    /// `mamba2`: A is per head `(H)`, else per `(D_in, N)`.
    pub fn generate(case: &StepCase, mamba2: bool, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let StepCase {
            batch,
            channels,
            head_dim,
            d_state,
            groups,
            ..
        } = *case;
        let width = channels * head_dim;
        let (cache_rows, indices) = match case.indexed {
            None => (batch, None),
            Some(extra) => {
                let rows = batch + extra;
                let mut perm: Vec<i64> = (0..rows as i64).collect();
                for i in (1..rows).rev() {
                    perm.swap(i, rng.random_range(0..=i));
                }
                let idx = (0..batch)
                    .map(|i| if rng.random_bool(0.2) { -1 } else { perm[i] })
                    .collect();
                (rows, Some(idx))
            }
        };
        let opts = case.all_options;
        StepData {
            x: randn_vec(&mut rng, batch * width),
            dt: dt_vec(&mut rng, batch * channels, DtRegime::Typical, opts),
            a: a_vec(&mut rng, if mamba2 { channels } else { channels * d_state }),
            b: randn_vec(&mut rng, batch * groups * d_state),
            c: randn_vec(&mut rng, batch * groups * d_state),
            d: opts
                .then(|| randn_vec(&mut rng, if case.d_per_head_dim { width } else { channels })),
            z: opts.then(|| randn_vec(&mut rng, batch * width)),
            dt_bias: opts.then(|| (0..channels).map(|_| 0.5 * randn(&mut rng)).collect()),
            state: randn_vec(&mut rng, cache_rows * width * d_state),
            cache_rows,
            state_batch_indices: indices,
            case: case.clone(),
        }
    }

    /// The tensors rounded to `T`.
    pub fn inputs<T: Element>(&self) -> StepInputs<'_, T> {
        let tensors = [&self.x, &self.dt, &self.b, &self.c].map(|v| &v[..]);
        Rounded::new(self, tensors, self.z.as_deref())
    }
}

/// A decode step with its tensors rounded to `T`.
pub type StepInputs<'d, T> = Rounded<'d, StepData, T>;

impl<T: Element> StepInputs<'_, T> {
    /// The Mamba-1 step parameters over these tensors.
    pub fn mamba1(&self) -> Mamba1StepParams<'_, T> {
        let d = self.data;
        let case = &d.case;
        Mamba1StepParams {
            cache_rows: d.cache_rows,
            d: d.d.as_deref(),
            z: self.z.as_deref(),
            dt_bias: d.dt_bias.as_deref(),
            dt_softplus: case.all_options,
            state_batch_indices: d.state_batch_indices.as_deref(),
            ..Mamba1StepParams::new(
                case.batch,
                case.channels,
                case.d_state,
                case.groups,
                &self.x,
                &self.dt,
                &d.a,
                &self.b,
                &self.c,
            )
        }
    }

    /// The Mamba-2 step parameters over these tensors.
    pub fn mamba2(&self) -> Mamba2StepParams<'_, T> {
        let d = self.data;
        let case = &d.case;
        Mamba2StepParams {
            cache_rows: d.cache_rows,
            d: d_skip(d.d.as_deref(), case.d_per_head_dim),
            z: self.z.as_deref(),
            dt_bias: d.dt_bias.as_deref(),
            dt_softplus: case.all_options,
            dt_limit: if case.all_options {
                (0.001, 5.0)
            } else {
                ssm_core::mamba2::NO_DT_LIMIT
            },
            state_batch_indices: d.state_batch_indices.as_deref(),
            ..Mamba2StepParams::new(
                case.batch,
                case.channels,
                case.head_dim,
                case.d_state,
                case.groups,
                &self.x,
                &self.dt,
                &d.a,
                &self.b,
                &self.c,
            )
        }
    }
}
