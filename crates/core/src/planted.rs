//! Planted bugs: deliberate mistakes in the CPU ports that the verification must
//! catch (docs/FUZZING.md, "Planted bugs").
//!
//! Each port has one-line hooks, `if ssm_core::planted::active(Bug::X) { ... }`,
//! at the place where a kernel author could make that mistake. Without the cargo
//! feature `planted-bugs` (the default) [`active`] is a constant `false` and the
//! hooks compile away. With it, the bug named by the environment variable
//! `SSM_PLANTED_BUG` (see [`Bug::name`]; unset or empty: none) is active, or the
//! one set by [`set`].
//!
//! ```text
//! SSM_PLANTED_BUG=dropped-d cargo test -p ssm-verify --features planted-bugs --test equivalence
//! ```

/// The environment variable naming the active bug.
pub const ENV: &str = "SSM_PLANTED_BUG";

/// The bugs that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bug {
    /// SSD: the last token of every chunk is left out of the chunk's own state
    /// (`j < len - 1` for `j <= len - 1`), so what crosses a chunk boundary misses it.
    SsdChunkBoundary,
    /// Scan: after the first L-block of a sequence, the B and C tiles are read one
    /// step early (the tile start is off by one at every L-block boundary).
    ScanBlockBoundary,
    /// Scan: channel `d` reads B/C group `d % G` instead of `d / (D_in / G)`.
    WrongGroup,
    /// SSD: the state carried from one chunk to the next is not decayed by the
    /// chunk's decay.
    NoCarriedDecay,
    /// SSD: the skip term `D x` is dropped from the output.
    DroppedD,
    /// Scan: softplus returns its input above 5 instead of 20. (Above 15 the
    /// mistake is invisible in f32: `log1p(exp(x)) - x < 3.1e-7`, under half an
    /// ulp of x, so a threshold of 15 is an equivalent mutant; see the test.)
    SoftplusThreshold,
    /// Scan: the initial state is ignored (every sequence starts from 0).
    InitialStateIgnored,
    /// SSD: the last chunk of a sequence is skipped when it is shorter than the
    /// chunk length (its outputs stay 0).
    LastPartialChunkSkipped,
    /// Mamba-1 decode step: a padding row (negative state index) reads and writes
    /// the last cache row, as a Python-style `-1` index would.
    PaddingRowWritten,
    // ------------------------------------------------ backward (issues 14, 15)
    /// SSD backward: the dt_bias gradient is dropped (returned as zeros).
    SsdBwdDtBiasDropped,
    /// SSD backward: the log-decay gradient enters the step gradient with the
    /// wrong sign (`d dt' = ... - A da` for `+ A da`).
    SsdBwdDecaySign,
    /// SSD backward: the D gradient is never accumulated (returned as zeros).
    SsdBwdDroppedD,
    /// SSD backward: the last chunk of a sequence is skipped when it is shorter
    /// than the chunk length (its gradients stay 0, its partials are lost).
    SsdBwdLastPartialChunkSkipped,
    /// SSD backward: the causal mask is off by one: the diagonal `j = i` of the
    /// in-chunk decay matrix is masked out.
    SsdBwdCausalMask,
    /// SSD backward: the initial-state gradient is dropped (zeros).
    SsdBwdInitialStateGradDropped,
    /// SSD backward: the step gradient passes through where `dt_limit` clamps
    /// (it must be zero there, as in mamba_ssm).
    SsdBwdClampGradLeaked,
    /// Scan backward: the delta_bias gradient is dropped (zeros).
    ScanBwdDeltaBiasDropped,
    /// Scan backward: softplus' derivative is taken as 1 above 5 instead of 20
    /// (see [`softplus_grad_low_threshold`]).
    ScanBwdSoftplusThreshold,
    /// Scan backward: grouped dB/dC partials are reduced into group
    /// `first channel % G` instead of `first channel / (D_in / G)`.
    ScanBwdWrongGroup,
    /// Scan backward: the initial-state gradient is dropped (zeros).
    ScanBwdInitialStateGradDropped,
    /// Scan backward: the adjoint is carried to step `t - 1` with the decay of
    /// step `t + 1` (one step late) instead of step `t`'s.
    ScanBwdOneStepLate,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 21] = [
        Bug::SsdChunkBoundary,
        Bug::ScanBlockBoundary,
        Bug::WrongGroup,
        Bug::NoCarriedDecay,
        Bug::DroppedD,
        Bug::SoftplusThreshold,
        Bug::InitialStateIgnored,
        Bug::LastPartialChunkSkipped,
        Bug::PaddingRowWritten,
        Bug::SsdBwdDtBiasDropped,
        Bug::SsdBwdDecaySign,
        Bug::SsdBwdDroppedD,
        Bug::SsdBwdLastPartialChunkSkipped,
        Bug::SsdBwdCausalMask,
        Bug::SsdBwdInitialStateGradDropped,
        Bug::SsdBwdClampGradLeaked,
        Bug::ScanBwdDeltaBiasDropped,
        Bug::ScanBwdSoftplusThreshold,
        Bug::ScanBwdWrongGroup,
        Bug::ScanBwdInitialStateGradDropped,
        Bug::ScanBwdOneStepLate,
    ];

    /// The value of `SSM_PLANTED_BUG` that selects this bug.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SsdChunkBoundary => "ssd-chunk-boundary",
            Bug::ScanBlockBoundary => "scan-block-boundary",
            Bug::WrongGroup => "wrong-group",
            Bug::NoCarriedDecay => "no-carried-decay",
            Bug::DroppedD => "dropped-d",
            Bug::SoftplusThreshold => "softplus-threshold",
            Bug::InitialStateIgnored => "initial-state-ignored",
            Bug::LastPartialChunkSkipped => "last-partial-chunk-skipped",
            Bug::PaddingRowWritten => "padding-row-written",
            Bug::SsdBwdDtBiasDropped => "ssd-bwd-dt-bias-dropped",
            Bug::SsdBwdDecaySign => "ssd-bwd-decay-sign",
            Bug::SsdBwdDroppedD => "ssd-bwd-dropped-d",
            Bug::SsdBwdLastPartialChunkSkipped => "ssd-bwd-last-partial-chunk-skipped",
            Bug::SsdBwdCausalMask => "ssd-bwd-causal-mask",
            Bug::SsdBwdInitialStateGradDropped => "ssd-bwd-initial-state-grad-dropped",
            Bug::SsdBwdClampGradLeaked => "ssd-bwd-clamp-grad-leaked",
            Bug::ScanBwdDeltaBiasDropped => "scan-bwd-delta-bias-dropped",
            Bug::ScanBwdSoftplusThreshold => "scan-bwd-softplus-threshold",
            Bug::ScanBwdWrongGroup => "scan-bwd-wrong-group",
            Bug::ScanBwdInitialStateGradDropped => "scan-bwd-initial-state-grad-dropped",
            Bug::ScanBwdOneStepLate => "scan-bwd-one-step-late",
        }
    }

    /// The bug whose [`Bug::name`] is `name`.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    #[cfg(feature = "planted-bugs")]
    fn code(self) -> u8 {
        Bug::ALL.iter().position(|&b| b == self).expect("in ALL") as u8 + 2
    }
}

/// The wrong softplus of [`Bug::SoftplusThreshold`].
pub fn softplus_low_threshold(x: f32) -> f32 {
    if x > 5.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The wrong softplus derivative of [`Bug::ScanBwdSoftplusThreshold`]: 1 above
/// 5 (where the planted forward threshold would stop), `sigmoid(x)` below.
/// `1 - sigmoid(5) = 6.7e-3`, far beyond an f32 gradient budget.
pub fn softplus_grad_low_threshold(x: f32) -> f32 {
    if x > 5.0 {
        1.0
    } else {
        crate::mamba1_grad::softplus_grad_f32(x)
    }
}

/// Whether the bug is one of the backward passes' (its property tests are the
/// backward ones: ci/planted-bugs.sh).
pub fn is_backward(bug: Bug) -> bool {
    bug.name().contains("-bwd-")
}

/// Whether `bug` is planted. A constant `false` without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub const fn active(_bug: Bug) -> bool {
    false
}

#[cfg(feature = "planted-bugs")]
mod switch {
    use super::{Bug, ENV};
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0: not read yet; 1: none; `Bug::code`: that bug.
    static SELECTED: AtomicU8 = AtomicU8::new(0);

    fn code_of(bug: Option<Bug>) -> u8 {
        bug.map_or(1, Bug::code)
    }

    pub fn selected_code() -> u8 {
        match SELECTED.load(Ordering::Relaxed) {
            0 => {
                let from_env = std::env::var(ENV).ok().filter(|v| !v.is_empty());
                let bug = from_env.as_deref().map(|name| {
                    Bug::from_name(name).unwrap_or_else(|| {
                        let all: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                        panic!(
                            "{ENV}={name} names no planted bug (bugs: {})",
                            all.join(", ")
                        )
                    })
                });
                let code = code_of(bug);
                SELECTED.store(code, Ordering::Relaxed);
                code
            }
            code => code,
        }
    }

    pub fn set(bug: Option<Bug>) {
        SELECTED.store(code_of(bug), Ordering::Relaxed);
    }
}

/// Whether `bug` is planted: the one named by `SSM_PLANTED_BUG`, or set by [`set`].
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    switch::selected_code() == bug.code()
}

/// Plant `bug` (or none) for the whole process, overriding `SSM_PLANTED_BUG`.
#[cfg(feature = "planted-bugs")]
pub fn set(bug: Option<Bug>) {
    switch::set(bug)
}

/// The bug planted now, if any.
pub fn current() -> Option<Bug> {
    Bug::ALL.into_iter().find(|&b| active(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in Bug::ALL {
            assert_eq!(Bug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(Bug::from_name("none"), None);
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn nothing_is_planted_without_the_feature() {
        assert!(Bug::ALL.iter().all(|&b| !active(b)));
        assert_eq!(current(), None);
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn set_plants_one_bug_at_a_time() {
        set(Some(Bug::DroppedD));
        assert!(active(Bug::DroppedD) && !active(Bug::WrongGroup));
        assert_eq!(current(), Some(Bug::DroppedD));
        set(None);
        assert_eq!(current(), None);
    }

    /// Why the planted threshold is 5 and not 15: above 15, `log1p(exp(x))` and
    /// `x` round to the same f32 (or differ by the last bit of `exp`/`log1p`), so
    /// no test of an f32 implementation can tell the thresholds apart.
    #[test]
    fn a_softplus_threshold_of_15_is_invisible_in_f32() {
        let mut x = 15.0f32.next_up();
        let mut worst_ulps = 0u32;
        while x <= 20.0 {
            let exact = (x as f64).exp().ln_1p();
            assert_eq!(exact as f32, x, "x = {x}");
            let f32_softplus = x.exp().ln_1p();
            worst_ulps = worst_ulps.max(f32_softplus.to_bits().abs_diff(x.to_bits()));
            x = f32::from_bits(x.to_bits() + 97);
        }
        assert!(worst_ulps <= 1, "{worst_ulps} ulps");
        // At the planted threshold the difference is visible: 6.7e-3 at x = 5.
        assert!((softplus_low_threshold(5.5) - 5.5f32.exp().ln_1p()).abs() > 4e-3);
    }

    #[test]
    fn the_wrong_softplus_derivative_differs_only_above_5() {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(
            softplus_grad_low_threshold(4.9),
            crate::mamba1_grad::softplus_grad_f32(4.9)
        );
        assert!((softplus_grad_low_threshold(5.5) - sigmoid(5.5)) > 4e-3);
        assert_eq!(Bug::ALL.iter().filter(|&&b| is_backward(b)).count(), 12);
    }
}
