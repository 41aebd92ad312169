//! The one error type of the telemetry crate.

use thiserror::Error;

/// Why a telemetry step (NVML, parsing, the result files) failed.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// NVML could not be loaded or initialised (no driver, no library, no device):
    /// telemetry is then absent, never a crash.
    #[error("NVML unavailable: {0}")]
    NvmlUnavailable(String),

    /// An NVML call failed after NVML itself came up.
    #[error("NVML: {0}")]
    Nvml(String),

    /// Input text (ncu CSV, result JSON) does not have the expected form.
    #[error("{source_name}: {reason}")]
    Parse {
        /// The file or stream read.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A result set was written by an incompatible schema version.
    #[error("{source_name}: schema `{schema}` version {version} is not readable by this build (expected `{expected}` version <= {max_version})")]
    Schema {
        /// The file read.
        source_name: String,
        /// The schema name it declares.
        schema: String,
        /// The version it declares.
        version: u32,
        /// The schema name this build reads.
        expected: &'static str,
        /// The newest version this build reads.
        max_version: u32,
    },

    /// Two inputs that must describe the same thing do not.
    #[error("{0}")]
    Mismatch(String),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl TelemetryError {
    /// A [`TelemetryError::Parse`] of `source_name` (a file or stream name).
    pub fn parse(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        TelemetryError::Parse {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }

    /// A [`TelemetryError::Io`] on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TelemetryError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Result with [`TelemetryError`].
pub type Result<T> = std::result::Result<T, TelemetryError>;
