//! Summary statistics of CUDA-event timings.

use crate::GpuError;

/// Median and spread of CUDA-event timings, in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// Median of the samples.
    pub median_ms: f64,
    /// Fastest sample.
    pub min_ms: f64,
    /// Slowest sample.
    pub max_ms: f64,
    /// Every sample, in measurement order.
    pub samples: Vec<f64>,
}

impl Timing {
    /// Summarize `samples` (kept in measurement order). Fails on an empty or
    /// non-finite sample, which would make every statistic meaningless.
    ///
    /// ```
    /// let t = ssm_gpu::Timing::from_samples(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
    /// assert_eq!((t.median_ms, t.min_ms, t.max_ms), (2.5, 1.0, 10.0));
    /// assert_eq!(t.samples, [3.0, 1.0, 2.0, 10.0]); // measurement order kept
    /// assert!(ssm_gpu::Timing::from_samples(vec![]).is_err());
    /// ```
    pub fn from_samples(samples: Vec<f64>) -> Result<Self, GpuError> {
        if samples.is_empty() {
            return Err(GpuError::InvalidArgument("no timing samples".into()));
        }
        if let Some(bad) = samples.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(GpuError::InvalidArgument(format!(
                "timing sample {bad} ms is not a finite, non-negative time"
            )));
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median_ms = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Ok(Timing {
            median_ms,
            min_ms: sorted[0],
            max_ms: sorted[sorted.len() - 1],
            samples,
        })
    }

    /// (max - min) / median: how much to trust a difference between two timings.
    pub fn relative_spread(&self) -> f64 {
        if self.median_ms > 0.0 {
            (self.max_ms - self.min_ms) / self.median_ms
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((t.median_ms, t.min_ms, t.max_ms), (2.0, 1.0, 3.0));
        assert_eq!(t.samples, [3.0, 1.0, 2.0]);
        let t = Timing::from_samples(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(t.median_ms, 2.5);
        assert!((t.relative_spread() - 1.2).abs() < 1e-12);
    }

    #[test]
    fn rejects_empty_and_nan_samples() {
        assert!(Timing::from_samples(vec![]).is_err());
        assert!(Timing::from_samples(vec![1.0, f64::NAN]).is_err());
        assert!(Timing::from_samples(vec![-1.0]).is_err());
    }
}
