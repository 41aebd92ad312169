//! Problems decoded from fuzzer bytes: a shape and options, values from the
//! verify generators, then extreme regimes and single-element patches (see
//! [`super::draw`]), plus the implementation options (L-block, chunk length).

use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::mamba2::{SsdDims, NO_DT_LIMIT};
use ssm_core::{DType, Element};

use super::draw::{patch, regime_rng, AScale, Bytes, DtScale, Scale};
use crate::gen::{
    d_skip, DKind, DtRegime, Mamba1Case, Mamba1Data, SsdCase, SsdData, StepCase, StepData,
};
use crate::impls::Family;

/// Names of the non-typical regimes a problem was drawn with, for messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regimes(Vec<String>);

impl Regimes {
    fn patches(&mut self, patches: Vec<super::draw::Patch>) {
        self.0.extend(patches.iter().map(|p| p.to_string()));
    }

    /// Record `regime` for `tensor` unless it is the plain one.
    fn note<R: std::fmt::Debug + PartialEq>(&mut self, tensor: &str, regime: R, plain: R) {
        if regime != plain {
            self.0.push(format!("{tensor}:{regime:?}"));
        }
    }
}

impl std::fmt::Display for Regimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.0 {
            write!(f, " {r}")?;
        }
        Ok(())
    }
}

fn draw_scale(bytes: &mut Bytes<'_>, regimes: &mut Regimes, tensor: &str) -> Scale {
    let s = Scale::draw(bytes);
    regimes.note(tensor, s, Scale::Typical);
    s
}

// ---------------------------------------------------------------- Mamba-1 scan

/// A Mamba-1 scan problem and the CPU port's L-block.
#[derive(Clone, Debug)]
pub struct ScanProblem {
    /// The f32 draw (shape, options, values).
    pub data: Mamba1Data,
    /// Element type the tensors are rounded to.
    pub dtype: DType,
    /// L-block length of the CPU port.
    pub block_len: usize,
    /// The non-typical value regimes drawn, by name (for messages).
    pub regimes: Regimes,
}

/// A Mamba-1 or SSD draw as the regimes perturb it: its tensors by role, under
/// the names the findings give them.
trait Perturbed {
    /// Names of [`Perturbed::tensors`], in its order.
    const NAMES: ([&'static str; 5], [&'static str; 4]);
    /// Whether the step sizes are pre-activations (softplus on).
    fn softplus(&self) -> bool;
    /// The case's label.
    fn describe(&self) -> String;
    /// The varlen offsets, if any.
    fn cu_seqlens(&self) -> Option<&[i64]>;
    /// The varlen offsets, the required tensors `[x, dt, A, B, C]` and the
    /// optional ones `[D, z, bias, initial states]`.
    fn tensors(&mut self) -> Tensors<'_>;
}

/// What [`Perturbed::tensors`] returns.
type Tensors<'a> = (
    &'a mut Option<Vec<i64>>,
    [&'a mut Vec<f32>; 5],
    [&'a mut Option<Vec<f32>>; 4],
);

/// [`Perturbed`] for a draw whose fields are `x, dt, a, b, c` and
/// `d, z, bias, initial_states`, with the family's own names for `x`, `dt` and
/// `bias` (the two draws differ in nothing else here).
macro_rules! perturbed {
    ($draw:ty, [$x:ident, $dt:ident, $bias:ident], $names:expr) => {
        impl Perturbed for $draw {
            const NAMES: ([&'static str; 5], [&'static str; 4]) = $names;
            fn softplus(&self) -> bool {
                self.case.softplus
            }
            fn describe(&self) -> String {
                self.case.describe()
            }
            fn cu_seqlens(&self) -> Option<&[i64]> {
                self.cu_seqlens.as_deref()
            }
            fn tensors(&mut self) -> Tensors<'_> {
                let required = [
                    &mut self.$x,
                    &mut self.$dt,
                    &mut self.a,
                    &mut self.b,
                    &mut self.c,
                ];
                let optional = [
                    &mut self.d,
                    &mut self.z,
                    &mut self.$bias,
                    &mut self.initial_states,
                ];
                (&mut self.cu_seqlens, required, optional)
            }
        }
    };
}

perturbed!(
    Mamba1Data,
    [u, delta, delta_bias],
    (["u", "delta", "A", "B", "C"], ["D", "z", "bias", "h0"])
);
perturbed!(
    SsdData,
    [x, dt, dt_bias],
    (["x", "dt", "A", "B", "C"], ["D", "z", "dt_bias", "s0"])
);

/// What both families decode after the case, in this order: the seed of the
/// values `generate` draws, the varlen offsets (same count as the generator's,
/// so the initial states keep their rows), the value regimes, the element type
/// and the tile length (the CPU port's L-block or chunk).
fn decode_values<D: Perturbed>(
    bytes: &mut Bytes<'_>,
    seqlen: usize,
    varlen: Option<usize>,
    generate: impl FnOnce(u64) -> D,
) -> (D, Regimes, DType, usize) {
    let seed = bytes.u64();
    let mut data = generate(seed);
    let softplus = data.softplus();
    let (cu_seqlens, required, optional) = data.tensors();
    if let Some(n) = varlen {
        *cu_seqlens = Some(bytes.cu_seqlens(seqlen, n));
    }
    let regimes = draw_regimes(bytes, seed, softplus, D::NAMES, required, optional);
    let dtype = bytes.dtype();
    let tile = bytes.tile(seqlen);
    (data, regimes, dtype, tile)
}

/// The value regimes of a problem, drawn from `bytes` in one order for both
/// families: a scale for the input, the step sizes' and `A`'s own regimes,
/// scales for B, C and the initial states, then value patches into up to six
/// tensors (the required ones, then those of the optional ones present).
/// The tensors are by role as [`Perturbed::tensors`] gives them, named by `names`.
fn draw_regimes(
    bytes: &mut Bytes<'_>,
    seed: u64,
    softplus: bool,
    (names, optional_names): ([&'static str; 5], [&'static str; 4]),
    [x, dt, a, b, c]: [&mut Vec<f32>; 5],
    optional: [&mut Option<Vec<f32>>; 4],
) -> Regimes {
    let mut rng = regime_rng(seed);
    let mut regimes = Regimes::default();
    draw_scale(bytes, &mut regimes, names[0]).apply(x, &mut rng);
    let dt_scale = DtScale::draw(bytes);
    regimes.note("dt", dt_scale, DtScale::AsGenerated);
    dt_scale.apply(dt, softplus, &mut rng);
    let a_scale = AScale::draw(bytes);
    regimes.note("A", a_scale, AScale::AsGenerated);
    a_scale.apply(a, &mut rng);
    draw_scale(bytes, &mut regimes, names[3]).apply(b, &mut rng);
    draw_scale(bytes, &mut regimes, names[4]).apply(c, &mut rng);
    let [d, z, bias, s0] = optional;
    if let Some(h0) = s0.as_mut() {
        draw_scale(bytes, &mut regimes, optional_names[3]).apply(h0, &mut rng);
    }
    let mut targets: Vec<(&str, &mut [f32])> = names
        .into_iter()
        .zip([x, dt, a, b, c])
        .map(|(name, t)| (name, &mut t[..]))
        .collect();
    for (name, t) in optional_names.into_iter().zip([d, z, bias, s0]) {
        if let Some(t) = t {
            targets.push((name, t));
        }
    }
    regimes.patches(patch(bytes, &mut targets, 6));
    regimes
}

/// The label of a scan or SSD finding: the case, the element type, the tile
/// (its name and length), the regimes and the varlen offsets.
fn label(
    data: &impl Perturbed,
    dtype: DType,
    (tile, len): (&str, usize),
    regimes: &Regimes,
) -> String {
    let mut s = format!("{} {dtype} {tile} {len}{regimes}", data.describe());
    if let Some(cu) = data.cu_seqlens() {
        s += &format!(" cu {cu:?}");
    }
    s
}

/// Large step sizes or typical ones, a byte's low bit deciding (as the corpora
/// were written; `Bytes::pick` reads the byte differently).
fn dt_regime(bytes: &mut Bytes<'_>) -> DtRegime {
    if bytes.bool() {
        DtRegime::Large
    } else {
        DtRegime::Typical
    }
}

impl ScanProblem {
    /// Decode a problem from `bytes` (any bytes decode to a valid problem).
    pub fn decode(bytes: &mut Bytes<'_>) -> Self {
        let seqlen = bytes.seqlen(64);
        let groups = bytes.int(1, 3);
        let per_group = bytes.int(1, 12);
        let d_state = bytes.int(1, 17);
        let varlen = bytes.chance(64).then(|| bytes.int(1, 5));
        let batch = if varlen.is_some() { 1 } else { bytes.int(1, 3) };
        let bc = |kind: usize| match kind {
            0 => Some(1),
            1 => Some(groups),
            _ => None,
        };
        let (b_kind, c_kind) = (bytes.int(0, 2), bytes.int(0, 2));
        let case = Mamba1Case {
            dims: Mamba1Dims::new(batch, groups * per_group, d_state, seqlen),
            b_groups: bc(b_kind),
            c_groups: bc(c_kind),
            d: bytes.bool(),
            z: bytes.bool(),
            delta_bias: bytes.bool(),
            softplus: bytes.bool(),
            initial_states: bytes.bool(),
            final_states: !bytes.chance(32),
            varlen,
            dt: dt_regime(bytes),
        };
        let (data, regimes, dtype, block_len) = decode_values(bytes, seqlen, varlen, |seed| {
            Mamba1Data::generate(&case, seed)
        });
        ScanProblem {
            data,
            dtype,
            block_len,
            regimes,
        }
    }

    /// A one-line label for findings.
    pub fn describe(&self) -> String {
        label(
            &self.data,
            self.dtype,
            ("block", self.block_len),
            &self.regimes,
        )
    }
}

// ---------------------------------------------------------------- Mamba-2 SSD

/// Step-size clamps the SSD problems use: none, the usual, degenerate (min = max)
/// and wide.
const DT_LIMITS: &[Option<(f32, f32)>] = &[
    None,
    Some((0.001, 5.0)),
    Some((0.0, 0.1)),
    Some((1.0, 1.0)),
    Some((0.5, 1e3)),
];

/// An SSD problem and the CPU port's chunk length.
#[derive(Clone, Debug)]
pub struct SsdProblem {
    /// The f32 draw (shape, options, values).
    pub data: SsdData,
    /// Element type the tensors are rounded to.
    pub dtype: DType,
    /// Chunk length of the CPU port.
    pub chunk: usize,
    /// The non-typical value regimes drawn, by name (for messages).
    pub regimes: Regimes,
}

impl SsdProblem {
    /// Decode a problem from `bytes` (any bytes decode to a valid problem).
    pub fn decode(bytes: &mut Bytes<'_>) -> Self {
        let seqlen = bytes.seqlen(64);
        let groups = bytes.int(1, 3);
        let heads_per_group = bytes.int(1, 3);
        let head_dim = bytes.int(1, 8);
        let d_state = bytes.int(1, 12);
        let varlen = bytes.chance(64).then(|| bytes.int(1, 5));
        let batch = if varlen.is_some() { 1 } else { bytes.int(1, 2) };
        let case = SsdCase {
            dims: SsdDims::new(
                batch,
                seqlen,
                groups * heads_per_group,
                head_dim,
                d_state,
                groups,
            ),
            dt_bias: bytes.bool(),
            softplus: bytes.bool(),
            dt_limit: bytes.pick(DT_LIMITS),
            d: bytes.pick(&[DKind::None, DKind::PerHead, DKind::PerHeadDim]),
            z: bytes.bool(),
            initial_states: bytes.bool(),
            final_states: !bytes.chance(32),
            varlen,
            dt: dt_regime(bytes),
        };
        let (data, regimes, dtype, chunk) =
            decode_values(bytes, seqlen, varlen, |seed| SsdData::generate(&case, seed));
        SsdProblem {
            data,
            dtype,
            chunk,
            regimes,
        }
    }

    /// A one-line label for findings.
    pub fn describe(&self) -> String {
        let s = label(&self.data, self.dtype, ("chunk", self.chunk), &self.regimes);
        match self.data.case.dt_limit {
            Some((lo, hi)) => s + &format!(" dt_limit ({lo}, {hi})"),
            None => s,
        }
    }
}

// ---------------------------------------------------------------- decode steps

/// One decode step of either family with every option chosen independently.
#[derive(Clone, Debug)]
pub struct StepProblem {
    /// Mamba-1 or Mamba-2.
    pub family: Family,
    /// Element type the tensors are rounded to.
    pub dtype: DType,
    /// `b`.
    pub batch: usize,
    /// Mamba-1: `D_in`; Mamba-2: `H`.
    pub channels: usize,
    /// Mamba-2: `P`; Mamba-1: 1.
    pub head_dim: usize,
    /// `N`.
    pub d_state: usize,
    /// `G`, the B/C groups.
    pub groups: usize,
    /// Rows of the state cache.
    pub cache_rows: usize,
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
    /// Mamba-2: `D` is `(H, P)` rather than `(H)`.
    pub d_per_head_dim: bool,
    /// In the shape of `x`.
    pub z: Option<Vec<f32>>,
    /// `(D_in)` or `(H)`.
    pub dt_bias: Option<Vec<f32>>,
    /// Apply softplus to the step size.
    pub softplus: bool,
    /// Mamba-2 only.
    pub dt_limit: (f32, f32),
    /// The f32 state cache `(cache_rows, ...)`.
    pub state: Vec<f32>,
    /// `(b)`: the cache row of each batch row (negative: padding).
    pub indices: Option<Vec<i64>>,
    /// The non-typical value regimes drawn, by name (for messages).
    pub regimes: Regimes,
}

/// A step's tensors rounded to `T`.
pub struct StepTensors<T> {
    /// `x`.
    pub x: Vec<T>,
    /// `dt`.
    pub dt: Vec<T>,
    /// B.
    pub b: Vec<T>,
    /// C.
    pub c: Vec<T>,
    /// The gate, when drawn.
    pub z: Option<Vec<T>>,
}

impl StepProblem {
    /// Decode a problem from `bytes` (any bytes decode to a problem; some are
    /// invalid on purpose, which the checks expect as typed errors).
    pub fn decode(bytes: &mut Bytes<'_>) -> Self {
        let family = bytes.pick(&[Family::Mamba1, Family::Mamba2]);
        let batch = bytes.int(1, 4);
        let groups = bytes.int(1, 3);
        let (channels, head_dim) = match family {
            Family::Mamba1 => (groups * bytes.int(1, 12), 1),
            Family::Mamba2 => (groups * bytes.int(1, 3), bytes.int(1, 8)),
        };
        let d_state = bytes.int(1, 17);
        let indexed = bytes.bool().then(|| bytes.int(0, 3));
        let d_per_head_dim = family == Family::Mamba2 && bytes.bool();
        let case = StepCase {
            batch,
            channels,
            head_dim,
            d_state,
            groups,
            indexed,
            all_options: true,
            d_per_head_dim,
        };
        let seed = bytes.u64();
        let mut g = StepData::generate(&case, family == Family::Mamba2, seed);
        let softplus = bytes.bool();
        if !softplus {
            // The generator drew pre-activations; without softplus keep dt > 0.
            g.dt.iter_mut()
                .for_each(|v| *v = ssm_core::math::softplus_f32(*v));
        }
        // Each optional tensor drawn is kept or dropped by its own byte.
        for t in [&mut g.d, &mut g.z, &mut g.dt_bias] {
            if !bytes.bool() {
                *t = None;
            }
        }
        let dt_limit = match family {
            Family::Mamba1 => NO_DT_LIMIT,
            Family::Mamba2 => bytes.pick(DT_LIMITS).unwrap_or(NO_DT_LIMIT),
        };
        if let Some(idx) = g.state_batch_indices.as_mut() {
            // Now and then a raw index: out of range or repeated, a typed error.
            if bytes.chance(24) {
                let at = bytes.int(0, idx.len() - 1);
                idx[at] = bytes.pick(&[-1, -7, i64::MIN, g.cache_rows as i64, i64::MAX, 0]);
            }
        }
        let mut rng = regime_rng(seed);
        let mut regimes = Regimes::default();
        draw_scale(bytes, &mut regimes, "x").apply(&mut g.x, &mut rng);
        let dt = DtScale::draw(bytes);
        regimes.note("dt", dt, DtScale::AsGenerated);
        dt.apply(&mut g.dt, softplus, &mut rng);
        let a = AScale::draw(bytes);
        regimes.note("A", a, AScale::AsGenerated);
        a.apply(&mut g.a, &mut rng);
        draw_scale(bytes, &mut regimes, "B").apply(&mut g.b, &mut rng);
        draw_scale(bytes, &mut regimes, "C").apply(&mut g.c, &mut rng);
        draw_scale(bytes, &mut regimes, "state").apply(&mut g.state, &mut rng);
        let mut problem = StepProblem {
            regimes,
            ..StepProblem::from_draw(family, g, softplus, dt_limit)
        };
        {
            let p = &mut problem;
            let mut targets: Vec<(&str, &mut [f32])> = vec![
                ("x", &mut p.x),
                ("dt", &mut p.dt),
                ("A", &mut p.a),
                ("B", &mut p.b),
                ("C", &mut p.c),
                ("state", &mut p.state),
            ];
            for (name, t) in [
                ("D", &mut p.d),
                ("z", &mut p.z),
                ("dt_bias", &mut p.dt_bias),
            ] {
                if let Some(t) = t {
                    targets.push((name, t));
                }
            }
            let patches = patch(bytes, &mut targets, 6);
            p.regimes.patches(patches);
        }
        problem.dtype = bytes.dtype();
        problem
    }

    /// The problem over the generator's draw `g` of `family`, as drawn: its
    /// optional tensors and cache indices, F32, no regimes. `softplus` must
    /// match how `g.dt` was drawn; `dt_limit` is Mamba-2's clamp.
    pub fn from_draw(family: Family, g: StepData, softplus: bool, dt_limit: (f32, f32)) -> Self {
        let case = g.case;
        StepProblem {
            family,
            dtype: DType::F32,
            batch: case.batch,
            channels: case.channels,
            head_dim: case.head_dim,
            d_state: case.d_state,
            groups: case.groups,
            cache_rows: g.cache_rows,
            x: g.x,
            dt: g.dt,
            a: g.a,
            b: g.b,
            c: g.c,
            d: g.d,
            d_per_head_dim: case.d_per_head_dim,
            z: g.z,
            dt_bias: g.dt_bias,
            softplus,
            dt_limit,
            state: g.state,
            indices: g.state_batch_indices,
            regimes: Regimes::default(),
        }
    }

    /// The tensors rounded to `T`.
    pub fn tensors<T: Element>(&self) -> StepTensors<T> {
        let round = ssm_core::element::round_slice::<T>;
        StepTensors {
            x: round(&self.x),
            dt: round(&self.dt),
            b: round(&self.b),
            c: round(&self.c),
            z: self.z.as_deref().map(round),
        }
    }

    /// The Mamba-1 step parameters over `t` and this problem's f32 parameters.
    pub fn mamba1<'a, T: Element>(&'a self, t: &'a StepTensors<T>) -> Mamba1StepParams<'a, T> {
        Mamba1StepParams {
            cache_rows: self.cache_rows,
            d: self.d.as_deref(),
            z: t.z.as_deref(),
            dt_bias: self.dt_bias.as_deref(),
            dt_softplus: self.softplus,
            state_batch_indices: self.indices.as_deref(),
            ..Mamba1StepParams::new(
                self.batch,
                self.channels,
                self.d_state,
                self.groups,
                &t.x,
                &t.dt,
                &self.a,
                &t.b,
                &t.c,
            )
        }
    }

    /// The Mamba-2 step parameters over `t` and this problem's f32 parameters.
    pub fn mamba2<'a, T: Element>(&'a self, t: &'a StepTensors<T>) -> Mamba2StepParams<'a, T> {
        Mamba2StepParams {
            cache_rows: self.cache_rows,
            d: d_skip(self.d.as_deref(), self.d_per_head_dim),
            z: t.z.as_deref(),
            dt_bias: self.dt_bias.as_deref(),
            dt_softplus: self.softplus,
            dt_limit: self.dt_limit,
            state_batch_indices: self.indices.as_deref(),
            ..Mamba2StepParams::new(
                self.batch,
                self.channels,
                self.head_dim,
                self.d_state,
                self.groups,
                &t.x,
                &t.dt,
                &self.a,
                &t.b,
                &t.c,
            )
        }
    }

    /// Elements of one cache row.
    pub fn row_len(&self) -> usize {
        self.channels * self.head_dim * self.d_state
    }

    /// A one-line label for findings.
    pub fn describe(&self) -> String {
        let family = match self.family {
            Family::Mamba1 => format!("m1 step D{}", self.channels),
            Family::Mamba2 => format!("m2 step H{} P{}", self.channels, self.head_dim),
        };
        let mut s = format!(
            "{family} b{} N{} G{} rows{} {}",
            self.batch, self.d_state, self.groups, self.cache_rows, self.dtype
        );
        for (on, name) in [
            (self.d.is_some(), "D"),
            (self.d_per_head_dim, "(H,P)"),
            (self.z.is_some(), "z"),
            (self.dt_bias.is_some(), "bias"),
            (self.softplus, "softplus"),
        ] {
            if on {
                s += " +";
                s += name;
            }
        }
        if self.family == Family::Mamba2 && self.dt_limit != NO_DT_LIMIT {
            s += &format!(" dt_limit {:?}", self.dt_limit);
        }
        if let Some(idx) = &self.indices {
            s += &format!(" idx {idx:?}");
        }
        s + &self.regimes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random()).collect()
    }

    #[test]
    fn empty_input_decodes_to_small_plain_problems() {
        let s = ScanProblem::decode(&mut Bytes::new(&[]));
        assert_eq!(s.data.case.dims.seqlen, 1);
        assert_eq!(s.dtype, DType::F32);
        assert_eq!(s.block_len, 2);
        let d = SsdProblem::decode(&mut Bytes::new(&[]));
        assert_eq!(d.data.case.dims.heads, 1);
        let st = StepProblem::decode(&mut Bytes::new(&[]));
        assert_eq!((st.family, st.batch), (Family::Mamba1, 1));
    }

    #[test]
    fn decoded_problems_pass_validation_unless_an_index_is_raw() {
        for seed in 0..300 {
            let bytes = bytes_of(seed, 200);
            let s = ScanProblem::decode(&mut Bytes::new(&bytes));
            let inputs = s.data.inputs::<f32>();
            inputs.params().validate().unwrap();
            let d = SsdProblem::decode(&mut Bytes::new(&bytes));
            d.data.inputs::<f32>().params().validate().unwrap();
            let st = StepProblem::decode(&mut Bytes::new(&bytes));
            let t = st.tensors::<f32>();
            let ok = match st.family {
                Family::Mamba1 => st.mamba1(&t).validate(st.state.len()),
                Family::Mamba2 => st.mamba2(&t).validate(st.state.len()),
            };
            let raw = st
                .indices
                .as_ref()
                .is_some_and(|i| i.iter().any(|&v| v >= st.cache_rows as i64 || v < -1));
            if ok.is_err() && !raw {
                // Duplicates from a raw index are the only other way to fail.
                let idx = st.indices.clone().unwrap_or_default();
                let mut seen = idx.iter().filter(|&&v| v >= 0).collect::<Vec<_>>();
                seen.sort();
                let before = seen.len();
                seen.dedup();
                assert!(seen.len() < before, "{}: {ok:?}", st.describe());
            }
        }
    }

    #[test]
    fn the_same_bytes_decode_to_the_same_problem() {
        let bytes = bytes_of(7, 300);
        let a = ScanProblem::decode(&mut Bytes::new(&bytes));
        let b = ScanProblem::decode(&mut Bytes::new(&bytes));
        assert_eq!(a.describe(), b.describe());
        assert_eq!(a.data.u, b.data.u);
    }
}
