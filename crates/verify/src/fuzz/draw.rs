//! Drawing sizes, options and values from fuzzer bytes.
//!
//! Every choice reads a few bytes through [`arbitrary::Unstructured`]; when the
//! bytes run out each choice takes its first (smallest, plainest) option, so any
//! byte string decodes to a problem and short inputs decode to small plain ones.
//! Bulk tensor values come from the verify generators seeded by eight of the
//! bytes; the bytes then pick a *regime* per tensor (typical, huge, tiny, ...) and
//! a few *patches*: single elements overwritten with values from [`PALETTE`]
//! (subnormals, the softplus threshold, f16 overflow, NaN, ...), so that the
//! fuzzer steers the extremes directly.

use arbitrary::Unstructured;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::DType;

/// `Unstructured` with the defaults this module wants: exhausted input gives the
/// first option, never an error.
pub struct Bytes<'a>(pub Unstructured<'a>);

impl<'a> Bytes<'a> {
    /// Read from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes(Unstructured::new(data))
    }

    /// An integer in `lo..=hi`.
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        self.0.int_in_range(lo..=hi).unwrap_or(lo)
    }

    /// A bool (`false` when exhausted).
    pub fn bool(&mut self) -> bool {
        self.0.arbitrary().unwrap_or(false)
    }

    /// True with probability about `num / 256`.
    pub fn chance(&mut self, num: u8) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let v: u8 = self.0.arbitrary().unwrap_or(255);
        v < num
    }

    /// A u64 (0 when exhausted).
    pub fn u64(&mut self) -> u64 {
        self.0.arbitrary().unwrap_or(0)
    }

    /// An i64 (0 when exhausted).
    pub fn i64(&mut self) -> i64 {
        self.0.arbitrary().unwrap_or(0)
    }

    /// Any f32 bit pattern, NaN and infinities included (0 when exhausted).
    pub fn f32(&mut self) -> f32 {
        self.0.arbitrary().unwrap_or(0.0)
    }

    /// One of `options` (the first when the bytes are exhausted).
    pub fn pick<T: Copy>(&mut self, options: &[T]) -> T {
        options[self.int(0, options.len() - 1)]
    }

    /// f32, bf16 or f16 (f32 when exhausted).
    pub fn dtype(&mut self) -> DType {
        self.pick(&[DType::F32, DType::Bf16, DType::F16])
    }

    /// A sequence length that favours the edges: 1, 0, 2, then anything up to `max`.
    pub fn seqlen(&mut self, max: usize) -> usize {
        match self.int(0, 7) {
            0 => 1,
            1 => 0,
            2 => 2,
            _ => self.int(1, max),
        }
    }

    /// A tile length (L-block, chunk) for a sequence of `seqlen`: 1, exactly L,
    /// longer than L, or anything in between.
    pub fn tile(&mut self, seqlen: usize) -> usize {
        match self.int(0, 5) {
            0 => seqlen.max(1) + self.int(1, 8),
            1 => 1,
            2 => seqlen.max(1),
            _ => self.int(1, seqlen.max(1) + 2),
        }
    }

    /// `num_seqs + 1` sorted offsets from 0 to `len`: cuts drawn from the bytes, so
    /// empty and length-1 sequences come up often.
    pub fn cu_seqlens(&mut self, len: usize, num_seqs: usize) -> Vec<i64> {
        let cuts = (0..num_seqs.saturating_sub(1))
            .map(|_| match self.int(0, 3) {
                0 => 0,
                1 => len as i64,
                _ => self.int(0, len) as i64,
            })
            .collect();
        crate::gen::cu_seqlens_from_cuts(len, cuts)
    }
}

/// Magnitude of a tensor's values relative to what the generators draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// As the generators draw them.
    Typical,
    /// Multiplied by `10^k`, `k` in 5..=30 (f16 inputs overflow when rounded).
    Huge,
    /// Multiplied by `10^-k`, `k` in 5..=44 (f32 subnormals from k = 38 on).
    Tiny,
}

impl Scale {
    /// Draw one: typical six times in eight, so most problems stay inside the model.
    pub fn draw(bytes: &mut Bytes<'_>) -> Self {
        // Typical most of the time, so that most problems stay inside the model.
        match bytes.int(0, 7) {
            6 => Scale::Huge,
            7 => Scale::Tiny,
            _ => Scale::Typical,
        }
    }

    /// Scale `values` in place; the exponent comes from `rng` so that one regime
    /// covers its whole range across seeds.
    pub fn apply(self, values: &mut [f32], rng: &mut StdRng) {
        let factor = match self {
            Scale::Typical => return,
            Scale::Huge => 10f64.powi(rng.random_range(5..=30)),
            Scale::Tiny => 10f64.powi(-rng.random_range(5..=44)),
        };
        for v in values {
            *v = (*v as f64 * factor) as f32;
        }
    }
}

/// How step sizes are drawn, beyond the generators' typical and large (up to 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtScale {
    /// As generated (the case's `DtRegime`).
    AsGenerated,
    /// Up to 1e3: decays of `exp(-1e3 * 8)` underflow to exactly 0.
    Huge,
    /// Down to subnormal (or, through softplus, `exp(-110)`, which is 0 in f32).
    Tiny,
}

impl DtScale {
    /// Draw one: as generated four times in six.
    pub fn draw(bytes: &mut Bytes<'_>) -> Self {
        match bytes.int(0, 5) {
            4 => DtScale::Huge,
            5 => DtScale::Tiny,
            _ => DtScale::AsGenerated,
        }
    }

    /// Redraw raw step inputs; `softplus`: the implementation applies softplus to them.
    pub fn apply(self, raw: &mut [f32], softplus: bool, rng: &mut StdRng) {
        match self {
            DtScale::AsGenerated => {}
            // softplus(x) = x above 20, so large raw values are the step sizes either way.
            DtScale::Huge => {
                for v in raw {
                    *v = 10f32.powf(rng.random_range(-1.0..=3.0));
                }
            }
            DtScale::Tiny => {
                for v in raw {
                    *v = if softplus {
                        -rng.random_range(60.0..=110.0)
                    } else {
                        10f64.powf(-rng.random_range(30.0..=44.0)) as f32
                    };
                }
            }
        }
    }
}

/// How the (negative) decay rates A are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AScale {
    /// As the generators draw them.
    AsGenerated,
    /// `-10^-k`, `k` in 3..=40, and exact zeros: decays of 1 or nearly.
    NearZero,
    /// `-10^k`, `k` in 2..=30: decays that underflow to 0.
    VeryNegative,
}

impl AScale {
    /// Draw one: as generated four times in six.
    pub fn draw(bytes: &mut Bytes<'_>) -> Self {
        match bytes.int(0, 5) {
            4 => AScale::NearZero,
            5 => AScale::VeryNegative,
            _ => AScale::AsGenerated,
        }
    }

    /// Rescale `a` in place as this regime says (values from `rng`).
    pub fn apply(self, a: &mut [f32], rng: &mut StdRng) {
        match self {
            AScale::AsGenerated => {}
            AScale::NearZero => {
                for v in a {
                    *v = match rng.random_range(0..8) {
                        0 => 0.0,
                        1 => -0.0,
                        _ => -(10f64.powi(-rng.random_range(3..=40)) as f32),
                    };
                }
            }
            AScale::VeryNegative => {
                for v in a {
                    *v = -(10f64.powi(rng.random_range(2..=30)) as f32);
                }
            }
        }
    }
}

/// Values a patch writes into one element: the places where arithmetic changes
/// behaviour. Non-finite values are last, so they need a large palette index.
pub const PALETTE: &[f32] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    f32::MIN_POSITIVE,
    -f32::MIN_POSITIVE,
    1e-45, // the smallest subnormal
    -3e-42,
    1e-20,
    1e3,
    -1e3,
    15.0,
    19.999_998,
    20.0,
    20.000_002,
    -20.0,
    88.7, // exp overflows f32 just above
    -88.7,
    -104.0,   // exp underflows to a subnormal
    65_504.0, // the largest f16
    65_520.0, // rounds to f16 infinity
    -65_520.0,
    1e20,
    -1e20,
    1e30,
    -1e30,
    3.0e38,
    -3.0e38,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
];

/// Index of the first non-finite value of [`PALETTE`].
const FIRST_NON_FINITE: usize = PALETTE.len() - 3;

/// One element overwritten with a palette value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Patch {
    /// The tensor patched (`x`, `B`, ...).
    pub tensor: &'static str,
    /// Flat index of the element.
    pub index: usize,
    /// The value written.
    pub value: f32,
}

impl std::fmt::Display for Patch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]={:e}", self.tensor, self.index, self.value)
    }
}

/// Overwrite up to `max` single elements of the named tensors with palette
/// values. Non-finite values are drawn rarely (about one patch in eight).
pub fn patch(
    bytes: &mut Bytes<'_>,
    targets: &mut [(&'static str, &mut [f32])],
    max: usize,
) -> Vec<Patch> {
    // No patch half of the time, so that most problems stay inside the model.
    let count = if bytes.bool() { bytes.int(1, max) } else { 0 };
    let mut patches = Vec::with_capacity(count);
    for _ in 0..count {
        let t = bytes.int(0, targets.len() - 1);
        let (name, tensor) = &mut targets[t];
        if tensor.is_empty() {
            continue;
        }
        let index = bytes.int(0, tensor.len() - 1);
        let value = if bytes.chance(32) {
            PALETTE[bytes.int(FIRST_NON_FINITE, PALETTE.len() - 1)]
        } else {
            PALETTE[bytes.int(0, FIRST_NON_FINITE - 1)]
        };
        tensor[index] = value;
        patches.push(Patch {
            tensor: name,
            index,
            value,
        });
    }
    patches
}

/// An RNG for the regime transforms, independent of the generator's stream.
pub fn regime_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_bytes_take_the_first_option() {
        let mut b = Bytes::new(&[]);
        assert_eq!(b.int(3, 9), 3);
        assert!(!b.bool());
        assert!(!b.chance(200));
        assert_eq!(b.pick(&[DType::F16, DType::F32]), DType::F16);
        assert_eq!(b.seqlen(64), 1);
        assert_eq!(b.cu_seqlens(5, 3), vec![0, 0, 0, 5]);
    }

    #[test]
    fn cu_seqlens_are_valid_for_every_input() {
        for seed in 0u8..=255 {
            let data: Vec<u8> = (0..64)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect();
            let mut b = Bytes::new(&data);
            let len = b.int(0, 40);
            let n = b.int(1, 6);
            let cu = b.cu_seqlens(len, n);
            assert_eq!(cu.len(), n + 1);
            assert!(
                ssm_core::shape::check_cu_seqlens(&cu, 1, len).is_ok(),
                "{cu:?}"
            );
        }
    }

    #[test]
    fn scales_reach_their_ranges() {
        let mut rng = regime_rng(1);
        let mut v = vec![1.0f32; 200];
        Scale::Tiny.apply(&mut v, &mut rng);
        assert!(v.iter().all(|&x| x <= 1e-5));
        let mut a = vec![-1.0f32; 200];
        AScale::NearZero.apply(&mut a, &mut rng);
        assert!(a.iter().all(|&x| (-1e-3..=0.0).contains(&x)));
        assert!(a.contains(&0.0));
        let mut dt = vec![0.0f32; 200];
        DtScale::Huge.apply(&mut dt, false, &mut rng);
        assert!(dt.iter().all(|&x| (0.1..=1000.0).contains(&x)));
        assert!(dt.iter().any(|&x| x > 100.0));
    }

    #[test]
    fn patches_stay_in_bounds() {
        let data: Vec<u8> = (0..=255).collect();
        let mut b = Bytes::new(&data);
        let (mut x, mut y, mut empty) = (vec![7.0f32; 3], vec![7.0f32; 1], Vec::<f32>::new());
        let patches = patch(
            &mut b,
            &mut [("x", &mut x), ("y", &mut y), ("e", &mut empty)],
            8,
        );
        assert_eq!((x.len(), y.len()), (3, 1));
        for p in &patches {
            let v = if p.tensor == "x" {
                x[p.index]
            } else {
                y[p.index]
            };
            assert!(
                v.to_bits() == p.value.to_bits()
                    || patches
                        .iter()
                        .filter(|q| q.tensor == p.tensor && q.index == p.index)
                        .count()
                        > 1
            );
        }
    }
}
