//! The typed error every public entry point returns on bad input.
//!
//! Each variant names the argument at fault and says what was expected, so a
//! user can fix the call without reading our source.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
/// Why a call was rejected or failed. Every variant names the argument at fault
/// where there is one; the `Display` text is meant for the user.
pub enum SsmError {
    /// A tensor's element count does not match the shape the other arguments imply.
    #[error(
        "argument `{arg}`: expected shape {expected} ({expected_len} elements), got {got} elements"
    )]
    Shape {
        /// The argument's name as the docs spell it (`x`, `B`, `cu_seqlens`, ...).
        arg: &'static str,
        /// The expected shape with its dimension names, e.g. `(b=1, L=4, H=2, P=2)`.
        expected: String,
        /// Elements that shape holds.
        expected_len: usize,
        /// Elements passed.
        got: usize,
    },

    /// A dimension is zero, too large, or otherwise out of the supported range.
    #[error("argument `{arg}`: {reason}")]
    Dimension {
        /// The dimension or argument at fault.
        arg: &'static str,
        /// What is wrong, with the limit.
        reason: String,
    },

    /// The number of groups does not divide the channels or heads that share them.
    #[error("argument `{arg}`: {groups} groups do not divide {what} = {count}")]
    Groups {
        /// The grouped argument (`B`, `C`, `groups`).
        arg: &'static str,
        /// The number of groups passed.
        groups: usize,
        /// What the groups must divide (`D_in`, `H`).
        what: &'static str,
        /// Its size.
        count: usize,
    },

    /// `cu_seqlens` is malformed.
    #[error("argument `cu_seqlens`: {reason}")]
    CuSeqlens {
        /// What is wrong (not starting at 0, decreasing, not ending at L, ...).
        reason: String,
    },

    /// `dt_limit` has min > max or a NaN bound.
    #[error("argument `dt_limit`: min {min} must not exceed max {max} (and neither may be NaN)")]
    DtLimit {
        /// The lower bound passed.
        min: f32,
        /// The upper bound passed.
        max: f32,
    },

    /// A value is NaN or infinite while finiteness checking was requested.
    #[error("argument `{arg}`: element {index} is not finite ({value})")]
    NonFinite {
        /// The argument holding the value.
        arg: &'static str,
        /// Flat index of the first non-finite element.
        index: usize,
        /// The value (NaN or an infinity).
        value: f64,
    },

    /// `state_batch_indices` points past the state cache.
    #[error("argument `state_batch_indices`: entry {index} is {value}, but the state cache holds {cache} rows")]
    StateIndex {
        /// Position in `state_batch_indices`.
        index: usize,
        /// The entry there.
        value: i64,
        /// Rows of the state cache.
        cache: usize,
    },

    /// The option combination is valid but this implementation does not support it.
    #[error("{implementation} does not support {what}")]
    Unsupported {
        /// Which implementation refused (`mamba2-ssd CUDA`, ...).
        implementation: &'static str,
        /// The unsupported shape or option.
        what: String,
    },

    /// No GPU, no driver, no NVRTC, or a CUDA call failed.
    #[error("GPU backend: {0}")]
    Backend(String),
}

impl SsmError {
    pub(crate) fn shape(
        arg: &'static str,
        expected: String,
        expected_len: usize,
        got: usize,
    ) -> Self {
        SsmError::Shape {
            arg,
            expected,
            expected_len,
            got,
        }
    }
}
