//! Roofline floors: the least time a call can take on a card, from its minimum
//! cost ([`crate::traffic::Cost`]) and the card's ceilings.
//!
//! Each unit gives one time (bytes / bandwidth, MMA flops / MMA rate, exps / exp
//! rate); the largest is the floor, and its unit is the limiter. A kernel's
//! *fraction of floor* is `floor / measured`: 1.0 is at the floor.
//!
//! The ceilings of a run are measured on its device ([`Ceilings::measured`],
//! from probes the bench runner times: device copies, a dense bf16 MMA kernel,
//! an exp2 kernel). [`Ceilings::datasheet`] is the fallback when measuring is
//! switched off; the result set then says so (`measured: false` and its source).

use serde::{Deserialize, Serialize};

use crate::traffic::Cost;

/// Throughput ceilings of one card, as used for the floors of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Where the numbers come from: `measured on NVIDIA H200 in this run (...)` or
    /// `datasheet table: ... (measurement switched off)`.
    pub source: String,
    /// Every unit was measured in the run (false: datasheet figures, wholly or in part).
    /// Version-1 result sets predate measuring and read as false.
    #[serde(default)]
    pub measured: bool,
    /// Device-to-device copy, bytes read plus bytes written per second.
    pub hbm_bytes_per_s: f64,
    /// Dense bf16 matrix-unit rate (flops per second).
    pub mma_flops_per_s: f64,
    /// exp2 (MUFU) rate.
    pub exp_per_s: f64,
    /// The timed probes behind a measured ceiling (empty for datasheet figures).
    #[serde(default)]
    pub measurements: Vec<CeilingMeasurement>,
}

/// One timed probe of a ceiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CeilingMeasurement {
    /// The unit it measures: `bytes` (copy), `mma` or `exp`.
    pub unit: Limiter,
    /// How: `cuMemcpyDtoD, events`, `cublasGemmEx bf16->f32 8192^3`, `ex2.approx kernel`.
    pub method: String,
    /// The size probed: `1 GiB buffers`, `m=n=k=8192`.
    pub size: String,
    /// Repetitions measured.
    pub samples: usize,
    /// Median rate over the samples: bytes/s (read + written), flop/s or exp/s.
    pub median_per_s: f64,
}

/// One row of the datasheet table.
struct DatasheetRow {
    card: &'static str,
    /// Case-insensitive substrings of the CUDA device name that select this row.
    names: &'static [&'static str],
    hbm_bytes_per_s: f64,
    mma_flops_per_s: f64,
    exp_per_s: f64,
}

/// Figures for cards this project has run on (docs/DESIGN.md §6). The copy rates are
/// what a device-to-device copy reaches there, not the marketing peak (H200: 4.8
/// TB/s on paper, about 4.3 TB/s copied), so a fallback floor stays a floor.
const DATASHEET: [DatasheetRow; 2] = [
    DatasheetRow {
        card: "H200",
        names: &["h200"],
        hbm_bytes_per_s: 4.3e12,
        mma_flops_per_s: 790e12,
        exp_per_s: 4.15e12,
    },
    DatasheetRow {
        card: "H100 SXM (80GB HBM3)",
        names: &["h100 80gb hbm3", "h100 sxm"],
        hbm_bytes_per_s: 3.0e12,
        mma_flops_per_s: 750e12,
        exp_per_s: 4.15e12,
    },
];

/// The row used for names the table does not know.
const FALLBACK_ROW: usize = 1;

fn rates(hbm: f64, mma: f64, exp: f64) -> String {
    format!(
        "copy {:.2} TB/s, bf16 MMA {:.0} TFLOP/s, exp2 {:.2} T/s",
        hbm / 1e12,
        mma / 1e12,
        exp / 1e12
    )
}

impl Ceilings {
    /// The datasheet figures for `device_name` (`measured: false`): a fallback for
    /// runs with the measurement switched off. A name the table does not know gets
    /// the H100 SXM row, and the source says it is an unknown card.
    pub fn datasheet(device_name: &str) -> Ceilings {
        let lower = device_name.to_lowercase();
        let found = DATASHEET
            .iter()
            .position(|row| row.names.iter().any(|n| lower.contains(n)));
        let row = &DATASHEET[found.unwrap_or(FALLBACK_ROW)];
        let figures = rates(row.hbm_bytes_per_s, row.mma_flops_per_s, row.exp_per_s);
        let source = match found {
            Some(_) => format!(
                "datasheet table: {} ({figures}) for `{device_name}` (measurement switched off)",
                row.card
            ),
            None => format!(
                "datasheet table: unknown card `{device_name}`, the {} row used ({figures}) (measurement switched off)",
                row.card
            ),
        };
        Ceilings {
            source,
            measured: false,
            hbm_bytes_per_s: row.hbm_bytes_per_s,
            mma_flops_per_s: row.mma_flops_per_s,
            exp_per_s: row.exp_per_s,
            measurements: Vec::new(),
        }
    }

    /// Ceilings measured on `device_name` in this run: each unit is the best
    /// median of its probes (the highest rate the card showed is the nearest to
    /// what it can do). Probes with a non-finite or non-positive rate are ignored.
    /// A unit without a usable probe takes its datasheet figure; then `measured`
    /// is false and the source names the unit.
    pub fn measured(device_name: &str, measurements: Vec<CeilingMeasurement>) -> Ceilings {
        let fallback = Ceilings::datasheet(device_name);
        let best = |unit: Limiter| {
            measurements
                .iter()
                .filter(|m| m.unit == unit && m.median_per_s.is_finite() && m.median_per_s > 0.0)
                .map(|m| m.median_per_s)
                .fold(None, |acc: Option<f64>, x| {
                    Some(acc.map_or(x, |a| a.max(x)))
                })
        };
        let units = [
            (
                Limiter::Bytes,
                best(Limiter::Bytes),
                fallback.hbm_bytes_per_s,
            ),
            (Limiter::Mma, best(Limiter::Mma), fallback.mma_flops_per_s),
            (Limiter::Exp, best(Limiter::Exp), fallback.exp_per_s),
        ];
        let missing: Vec<String> = units
            .iter()
            .filter(|(_, m, _)| m.is_none())
            .map(|(u, _, _)| u.to_string())
            .collect();
        let [hbm, mma, exp] = units.map(|(_, m, d)| m.unwrap_or(d));
        let mut source = format!(
            "measured on {device_name} in this run ({})",
            rates(hbm, mma, exp)
        );
        if !missing.is_empty() {
            source += &format!(
                "; not measured, datasheet figure used: {} ({})",
                missing.join(", "),
                fallback.source
            );
        }
        Ceilings {
            source,
            measured: missing.is_empty(),
            hbm_bytes_per_s: hbm,
            mma_flops_per_s: mma,
            exp_per_s: exp,
            measurements,
        }
    }

    /// `measured` or `datasheet`, for labels.
    pub fn kind(&self) -> &'static str {
        if self.measured {
            "measured"
        } else {
            "datasheet"
        }
    }
}

/// The unit that sets a floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limiter {
    /// HBM bytes (read plus written).
    Bytes,
    /// Tensor-core flops.
    Mma,
    /// Exponentials (MUFU).
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
    /// Bytes at the HBM ceiling.
    pub bytes_ms: f64,
    /// MMA flops at the tensor-core ceiling.
    pub mma_ms: f64,
    /// Exponentials at the exp ceiling.
    pub exp_ms: f64,
    /// The largest of the three.
    pub floor_ms: f64,
    /// Which of the three is largest.
    pub limiter: Limiter,
}

impl Floor {
    /// The floor of `cost` at `ceilings` (a unit whose ceiling is 0 costs 0 ms).
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
        let c = Ceilings::datasheet("NVIDIA H100 80GB HBM3");
        let f = Floor::of(&cost(3_000_000_000, 0.0, 4.15e9), &c);
        assert!((f.bytes_ms - 1.0).abs() < 1e-12);
        assert!((f.exp_ms - 1.0).abs() < 1e-12);
        let f = Floor::of(&cost(3_000_000_000, 1.5e12, 0.0), &c);
        assert_eq!(f.limiter, Limiter::Mma);
        assert!((f.floor_ms - 2.0).abs() < 1e-12);
        assert_eq!(f.fraction_of(4.0), Some(0.5));
        assert_eq!(f.fraction_of(0.0), None);
    }
    fn probe(unit: Limiter, median_per_s: f64) -> CeilingMeasurement {
        CeilingMeasurement {
            unit,
            method: "test".into(),
            size: "1 GiB".into(),
            samples: 5,
            median_per_s,
        }
    }

    #[test]
    fn datasheet_rows_by_device_name() {
        let h100 = Ceilings::datasheet("NVIDIA H100 80GB HBM3");
        assert_eq!(
            (h100.hbm_bytes_per_s, h100.mma_flops_per_s, h100.exp_per_s),
            (3.0e12, 750e12, 4.15e12)
        );
        assert!(!h100.measured && h100.measurements.is_empty());
        assert!(h100.source.contains("H100 SXM") && h100.source.contains("switched off"));
        let h200 = Ceilings::datasheet("NVIDIA H200");
        assert_eq!(
            (h200.hbm_bytes_per_s, h200.mma_flops_per_s, h200.exp_per_s),
            (4.3e12, 790e12, 4.15e12)
        );
        let odd = Ceilings::datasheet("NVIDIA GeForce RTX 3090");
        assert_eq!(odd.hbm_bytes_per_s, 3.0e12);
        assert!(
            odd.source
                .contains("unknown card `NVIDIA GeForce RTX 3090`"),
            "{}",
            odd.source
        );
    }

    #[test]
    fn measured_ceilings_take_the_best_median_of_each_unit() {
        let c = Ceilings::measured(
            "NVIDIA H200",
            vec![
                probe(Limiter::Bytes, 4.1e12),
                probe(Limiter::Bytes, 4.32e12),
                probe(Limiter::Bytes, f64::NAN),
                probe(Limiter::Mma, 700e12),
                probe(Limiter::Exp, 4.1e12),
            ],
        );
        assert!(c.measured, "{}", c.source);
        assert_eq!(
            (c.hbm_bytes_per_s, c.mma_flops_per_s, c.exp_per_s),
            (4.32e12, 700e12, 4.1e12)
        );
        assert_eq!(c.measurements.len(), 5);
        assert!(c
            .source
            .starts_with("measured on NVIDIA H200 in this run (copy 4.32 TB/s"));
        // A unit without a probe falls back to the datasheet and the ceilings say so.
        let partial = Ceilings::measured("NVIDIA H200", vec![probe(Limiter::Bytes, 4.3e12)]);
        assert!(!partial.measured);
        assert_eq!(partial.mma_flops_per_s, 790e12);
        assert!(partial
            .source
            .contains("not measured, datasheet figure used: mma, exp"));
    }
}
