//! Element types accepted as kernel inputs.
//!
//! Inputs may be f32, f16 or bf16 (docs/DESIGN.md §2); f64 is accepted too so that the
//! oracle and the property tests can drive every implementation with exact values.
//! Parameters (A, D, biases) and states are always f32.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// Storage type of a kernel input or output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 64-bit float (the oracle's type; no GPU kernel takes it).
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

impl DType {
    /// Unit roundoff of the type (half the distance from 1 to the next value).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F64 => f64::EPSILON / 2.0,
            DType::F32 => f32::EPSILON as f64 / 2.0,
            DType::F16 => 2f64.powi(-11),
            DType::Bf16 => 2f64.powi(-8),
        }
    }

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// The lowercase name (`f32`, `bf16`, ...), as `Display` and `FromStr` use it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f64" | "fp64" => Ok(DType::F64),
            "f32" | "fp32" => Ok(DType::F32),
            "f16" | "fp16" => Ok(DType::F16),
            "bf16" => Ok(DType::Bf16),
            other => Err(format!(
                "unknown dtype `{other}` (expected f32, f16, bf16 or f64)"
            )),
        }
    }
}

/// A scalar type that can hold kernel inputs or outputs.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + Default + 'static {
    /// The [`DType`] tag of this type.
    const DTYPE: DType;
    /// Widen exactly to f64.
    fn to_f64(self) -> f64;
    /// Convert to f32 (exact for f32, f16, bf16; rounds an f64).
    fn to_f32(self) -> f32;
    /// Round an f32 to this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Round an f64 to this type (round to nearest even).
    fn from_f64(x: f64) -> Self;
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

/// `f16` and `bf16` convert through `half`'s own methods, alike for both.
macro_rules! half_element {
    ($t:ident, $dtype:expr) => {
        impl Element for $t {
            const DTYPE: DType = $dtype;
            fn to_f64(self) -> f64 {
                $t::to_f64(self)
            }
            fn to_f32(self) -> f32 {
                $t::to_f32(self)
            }
            fn from_f32(x: f32) -> Self {
                $t::from_f32(x)
            }
            fn from_f64(x: f64) -> Self {
                $t::from_f64(x)
            }
        }
    };
}
half_element!(f16, DType::F16);
half_element!(bf16, DType::Bf16);

/// Convert a slice of f32 values to `T`, rounding each.
pub fn round_slice<T: Element>(xs: &[f32]) -> Vec<T> {
    xs.iter().map(|&x| T::from_f32(x)).collect()
}

/// Widen a slice to f64.
pub fn widen<T: Element>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|x| x.to_f64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_within_unit_roundoff() {
        for &x in &[1.0f32, 1.3, -2.7, 1e-3, 12345.678] {
            let r = bf16::from_f32(x).to_f64();
            assert!(((r - x as f64) / x as f64).abs() <= DType::Bf16.unit_roundoff());
        }
    }

    #[test]
    fn dtype_parses_its_own_names() {
        for d in [DType::F64, DType::F32, DType::F16, DType::Bf16] {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("int8".parse::<DType>().is_err());
    }
}
