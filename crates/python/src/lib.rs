//! `ssm_kernels._native`: the extension module behind the `ssm_kernels` Python
//! package (crates/python/python/ssm_kernels).
//!
//! This module is private to the package. Its functions take tensors as
//! `(address, element count)` pairs in a dict keyed by the argument's name, plus
//! the dtype, the sizes and the options; the Python layer checks shapes, dtypes
//! and devices against mamba_ssm's signatures, keeps every array alive and
//! contiguous for the duration of the call and passes its address. Here the
//! sizes go through the same validated parameter structs as every other caller
//! (`ssm-core`), so a length that disagrees with the shapes is a typed error
//! naming the argument, raised as `ValueError`.
//!
//! - [`host`]: host tensors (NumPy arrays, CPU torch tensors) as slices, and the
//!   CPU-port entries (forward, backward, decode steps).
//! - [`device`]: CUDA tensors (torch's) as borrowed device views on the caller's
//!   stream: zero-copy, asynchronous, plans cached per shape.

use pyo3::exceptions::{PyKeyError, PyNotImplementedError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use ssm_core::mamba2::SsdDims;
use ssm_core::SsmError;
use std::collections::HashMap;

/// Run `$f::<T>` for the element type named by `$dtype` (the host and the
/// device entries dispatch alike: f32, f16 or bf16, as [`dtype_of`] allows).
macro_rules! dispatch {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $crate::dtype_of($dtype)? {
            ::ssm_core::DType::F32 => $f::<f32>($($arg),*),
            ::ssm_core::DType::F16 => $f::<::half::f16>($($arg),*),
            ::ssm_core::DType::Bf16 => $f::<::half::bf16>($($arg),*),
            ::ssm_core::DType::F64 => unreachable!("dtype_of never names f64"),
        }
    };
}

mod device;
mod host;

/// A tensor argument: its address and its number of elements.
pub type Raw = (usize, usize);

/// The tensors of one call, by argument name.
pub struct Tensors(HashMap<String, Raw>);

impl Tensors {
    /// A tensor the operation needs.
    pub fn req(&self, name: &str) -> PyResult<Raw> {
        self.0
            .get(name)
            .copied()
            .ok_or_else(|| PyKeyError::new_err(format!("argument `{name}` is required")))
    }

    /// An optional tensor.
    pub fn opt(&self, name: &str) -> Option<Raw> {
        self.0.get(name).copied()
    }

    /// Every named range, for the overlap check of outputs against inputs.
    pub fn ranges(&self, elem_size: impl Fn(&str) -> usize) -> Vec<(&str, usize, usize)> {
        self.0
            .iter()
            .map(|(k, &(ptr, len))| (k.as_str(), ptr, ptr + len * elem_size(k)))
            .collect()
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Tensors {
    type Error = PyErr;
    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Tensors(ob.extract()?))
    }
}

/// Sizes and options of a scan call: one tuple `(dims, b_groups, c_groups,
/// delta_softplus)` from the Python layer (`ScanCall.native_call` in
/// `_impl.py`), the same for the host and the device entries.
#[derive(Clone, Copy)]
pub struct ScanCall {
    /// `(batch, d_inner, d_state, seqlen)`.
    pub dims: (usize, usize, usize, usize),
    pub b_groups: Option<usize>,
    pub c_groups: Option<usize>,
    pub delta_softplus: bool,
}

impl<'a, 'py> FromPyObject<'a, 'py> for ScanCall {
    type Error = PyErr;
    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let (dims, b_groups, c_groups, delta_softplus) = ob.extract()?;
        Ok(ScanCall {
            dims,
            b_groups,
            c_groups,
            delta_softplus,
        })
    }
}

/// Sizes and options of an SSD call: one tuple `(dims, d_per_head_dim,
/// dt_softplus, dt_limit, chunk_size, cu_seqlens)` from the Python layer
/// (`SsdCall.native_args` in `_impl.py`), the same for the host and the device
/// entries. The varlen offsets are host data on every backend (the CUDA plan
/// builds its work table from them).
pub struct SsdCall {
    pub dims: SsdDims,
    pub d_per_head_dim: bool,
    pub dt_softplus: bool,
    pub dt_limit: (f32, f32),
    /// The CPU port's chunk length; the CUDA backward's when it is one of its
    /// own (the CUDA forward picks its own).
    pub chunk_size: usize,
    pub cu_seqlens: Option<Vec<i64>>,
}

impl<'a, 'py> FromPyObject<'a, 'py> for SsdCall {
    type Error = PyErr;
    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let (dims, d_per_head_dim, dt_softplus, dt_limit, chunk_size, cu_seqlens) = ob.extract()?;
        let (batch, seqlen, heads, head_dim, d_state, groups): (
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        ) = dims;
        Ok(SsdCall {
            dims: SsdDims::new(batch, seqlen, heads, head_dim, d_state, groups),
            d_per_head_dim,
            dt_softplus,
            dt_limit,
            chunk_size,
            cu_seqlens,
        })
    }
}

/// An [`SsmError`] as the Python exception that fits it: shapes, dimensions and
/// bad values are `ValueError` (the message names the argument), what an
/// implementation does not support is `NotImplementedError`, the GPU runtime's
/// failures `RuntimeError`.
pub fn to_py(e: SsmError) -> PyErr {
    match e {
        SsmError::Unsupported { .. } => PyNotImplementedError::new_err(e.to_string()),
        SsmError::Backend(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// The element type named by the Python layer.
pub fn dtype_of(name: &str) -> PyResult<ssm_core::DType> {
    use ssm_core::DType;
    match name {
        "float32" => Ok(DType::F32),
        "float16" => Ok(DType::F16),
        "bfloat16" => Ok(DType::Bf16),
        other => Err(PyValueError::new_err(format!(
            "dtype {other} is not supported (float32, float16 or bfloat16)"
        ))),
    }
}

/// The library's version and build facts, for bug reports and the GPU tests' logs.
#[pyfunction]
fn build_info() -> HashMap<&'static str, String> {
    HashMap::from([
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("kernels_hash", ssm_gpu::KERNELS_HASH.to_string()),
    ])
}

#[pymodule(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    host::register(m)?;
    device::register(m)?;
    Ok(())
}
