//! The one error type of the telemetry crate.

use thiserror::Error;

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
    Parse { source_name: String, reason: String },

    /// A result set was written by an incompatible schema version.
    #[error("{source_name}: schema `{schema}` version {version} is not readable by this build (expected `{expected}` version <= {max_version})")]
    Schema {
        source_name: String,
        schema: String,
        version: u32,
        expected: &'static str,
        max_version: u32,
    },

    /// Two inputs that must describe the same thing do not.
    #[error("{0}")]
    Mismatch(String),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl TelemetryError {
    pub fn parse(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        TelemetryError::Parse {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TelemetryError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TelemetryError>;
