//! The typed error every public entry point returns on bad input.
//!
//! Each variant names the argument at fault and says what was expected, so a
//! user can fix the call without reading our source.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SsmError {
    /// A tensor's element count does not match the shape the other arguments imply.
    #[error(
        "argument `{arg}`: expected shape {expected} ({expected_len} elements), got {got} elements"
    )]
    Shape {
        arg: &'static str,
        expected: String,
        expected_len: usize,
        got: usize,
    },

    /// A dimension is zero, too large, or otherwise out of the supported range.
    #[error("argument `{arg}`: {reason}")]
    Dimension { arg: &'static str, reason: String },

    /// The number of groups does not divide the channels or heads that share them.
    #[error("argument `{arg}`: {groups} groups do not divide {what} = {count}")]
    Groups {
        arg: &'static str,
        groups: usize,
        what: &'static str,
        count: usize,
    },

    /// `cu_seqlens` is malformed.
    #[error("argument `cu_seqlens`: {reason}")]
    CuSeqlens { reason: String },

    /// `dt_limit` has min > max or a NaN bound.
    #[error("argument `dt_limit`: min {min} must not exceed max {max} (and neither may be NaN)")]
    DtLimit { min: f32, max: f32 },

    /// A value is NaN or infinite while finiteness checking was requested.
    #[error("argument `{arg}`: element {index} is not finite ({value})")]
    NonFinite {
        arg: &'static str,
        index: usize,
        value: f64,
    },

    /// `state_batch_indices` points past the state cache.
    #[error("argument `state_batch_indices`: entry {index} is {value}, but the state cache holds {cache} rows")]
    StateIndex {
        index: usize,
        value: i64,
        cache: usize,
    },

    /// The option combination is valid but this implementation does not support it.
    #[error("{implementation} does not support {what}")]
    Unsupported {
        implementation: &'static str,
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
