//! Roofline floors: the least time a call can take on a card, from its minimum
//! cost ([`crate::traffic::Cost`]) and the card's measured ceilings.
//!
//! Each unit gives one time (bytes / bandwidth, MMA flops / MMA rate, exps / exp
//! rate); the largest is the floor, and its unit is the limiter. A kernel's
//! *fraction of floor* is `floor / measured`: 1.0 is at the floor.

use serde::{Deserialize, Serialize};

use crate::traffic::Cost;

/// Measured throughput ceilings of one card.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Where the numbers come from (card and how they were measured).
    pub source: &'static str,
    /// Device-to-device copy, bytes read plus bytes written per second.
    pub hbm_bytes_per_s: f64,
    /// Dense bf16 matrix-unit rate (flops per second).
    pub mma_flops_per_s: f64,
    /// exp2 (MUFU) rate: 16 per clock per SM.
    pub exp_per_s: f64,
}

impl Ceilings {
    /// The H100 80GB HBM3 (sm_90) ceilings measured for design.md §6:
    /// ~3.0 TB/s copy, ~700-800 TFLOP/s bf16 dense MMA (750 taken), ~4.15 T exp2/s.
    pub const H100_SXM: Ceilings = Ceilings {
        source: "H100 80GB HBM3, design.md §6 (copy 3.0 TB/s, bf16 MMA 750 TFLOP/s, exp2 4.15 T/s)",
        hbm_bytes_per_s: 3.0e12,
        mma_flops_per_s: 750e12,
        exp_per_s: 4.15e12,
    };
}

impl Default for Ceilings {
    fn default() -> Self {
        Ceilings::H100_SXM
    }
}

/// The unit that sets a floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limiter {
    Bytes,
    Mma,
    Exp,
}

impl std::fmt::Display for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limiter::Bytes => "bytes",
            Limiter::Mma => "mma",
            Limiter::Exp => "exp",
        })
    }
}

/// The per-unit times of a cost on a card, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floor {
    pub bytes_ms: f64,
    pub mma_ms: f64,
    pub exp_ms: f64,
    /// The largest of the three.
    pub floor_ms: f64,
    pub limiter: Limiter,
}

impl Floor {
    pub fn of(cost: &Cost, ceilings: &Ceilings) -> Floor {
        let ms = |work: f64, rate: f64| if rate > 0.0 { 1e3 * work / rate } else { 0.0 };
        let bytes_ms = ms(cost.bytes() as f64, ceilings.hbm_bytes_per_s);
        let mma_ms = ms(cost.mma_flops, ceilings.mma_flops_per_s);
        let exp_ms = ms(cost.exps, ceilings.exp_per_s);
        let (floor_ms, limiter) = [
            (bytes_ms, Limiter::Bytes),
            (mma_ms, Limiter::Mma),
            (exp_ms, Limiter::Exp),
        ]
        .into_iter()
        .fold(
            (0.0, Limiter::Bytes),
            |best, x| if x.0 > best.0 { x } else { best },
        );
        Floor {
            bytes_ms,
            mma_ms,
            exp_ms,
            floor_ms,
            limiter,
        }
    }

    /// `floor / measured` (1.0 is at the floor), or `None` for a non-positive time.
    pub fn fraction_of(&self, measured_ms: f64) -> Option<f64> {
        (measured_ms > 0.0 && measured_ms.is_finite()).then(|| self.floor_ms / measured_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(bytes: u64, mma: f64, exps: f64) -> Cost {
        Cost {
            tensors: vec![],
            read_bytes: bytes,
            write_bytes: 0,
            mma_flops: mma,
            simt_flops: 0.0,
            exps,
        }
    }

    #[test]
    fn the_largest_unit_time_is_the_floor() {
        let c = Ceilings::H100_SXM;
        let f = Floor::of(&cost(3_000_000_000, 0.0, 4.15e9), &c);
        assert!((f.bytes_ms - 1.0).abs() < 1e-12);
        assert!((f.exp_ms - 1.0).abs() < 1e-12);
        let f = Floor::of(&cost(3_000_000_000, 1.5e12, 0.0), &c);
        assert_eq!(f.limiter, Limiter::Mma);
        assert!((f.floor_ms - 2.0).abs() < 1e-12);
        assert_eq!(f.fraction_of(4.0), Some(0.5));
        assert_eq!(f.fraction_of(0.0), None);
    }
}
