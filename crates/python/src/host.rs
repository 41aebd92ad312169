//! Host tensors on the CPU ports: the forward and backward of the Mamba-1 scan
//! and of the SSD, and both decode steps.
//!
//! Each entry builds the crate's parameter struct from the `(address, length)`
//! pairs (validation names the argument), runs the CPU port with the GIL
//! released, and writes the results into the output arrays the Python layer
//! allocated. Outputs are checked to be as long as the results and not to
//! overlap any input.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use ssm_core::decode::{Mamba1StepParams, Mamba2StepParams};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::mamba2::{DSkip, SsdParams};
use ssm_core::Element;
use ssm_gpu::DeviceElement;

use crate::{to_py, Raw, ScanCall, SsdCall, Tensors};

/// `raw` as a slice of `T`.
///
/// # Safety
/// `raw.0` must address `raw.1` initialised elements of `T` that stay alive and
/// unmodified (except through this slice when it is the one mutable view) for
/// `'a`. The Python layer guarantees it: it passes the address and size of a
/// contiguous array of the dtype it names, which it holds until the call returns.
unsafe fn slice<'a, T>(name: &str, raw: Raw) -> PyResult<&'a [T]> {
    let (ptr, len) = raw;
    if len == 0 {
        return Ok(&[]);
    }
    check_ptr::<T>(name, ptr)?;
    // SAFETY: non-null and aligned (checked), valid for `len` elements (contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const T, len) })
}

/// `raw` as a mutable slice of `T`.
///
/// # Safety
/// As [`slice`], and no other slice may view the same memory while this one lives
/// ([`check_disjoint`] checks it against the call's other tensors).
unsafe fn slice_mut<'a, T>(name: &str, raw: Raw) -> PyResult<&'a mut [T]> {
    let (ptr, len) = raw;
    if len == 0 {
        return Ok(&mut []);
    }
    check_ptr::<T>(name, ptr)?;
    // SAFETY: as in `slice`; exclusive by the contract and the overlap check.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut T, len) })
}

fn check_ptr<T>(name: &str, ptr: usize) -> PyResult<()> {
    if ptr == 0 || ptr % std::mem::align_of::<T>() != 0 {
        return Err(PyValueError::new_err(format!(
            "argument `{name}`: address {ptr:#x} is not a valid {}-byte aligned array",
            std::mem::align_of::<T>()
        )));
    }
    Ok(())
}

/// Outputs written in place must not overlap any other tensor of the call.
fn check_disjoint(t: &Tensors, outputs: &[&str], size: impl Fn(&str) -> usize) -> PyResult<()> {
    let ranges = t.ranges(size);
    for &(name, lo, hi) in ranges.iter().filter(|r| outputs.contains(&r.0)) {
        for &(other, olo, ohi) in &ranges {
            if other != name && lo < ohi && olo < hi && lo < hi && olo < ohi {
                return Err(PyValueError::new_err(format!(
                    "argument `{name}` overlaps `{other}` in memory; pass separate arrays"
                )));
            }
        }
    }
    Ok(())
}

/// Element size of each argument: the f32 parameters and states, the i64
/// offsets and indices, and everything else in the element type `T`.
fn sizes<T>(name: &str) -> usize {
    match name {
        "A" | "D" | "delta_bias" | "dt_bias" | "initial_states" | "final_states" | "state"
        | "dA" | "dD" | "ddelta_bias" | "ddt_bias" | "dinitial_states" | "d_final_states" => 4,
        "cu_seqlens" | "state_batch_indices" => 8,
        _ => std::mem::size_of::<T>(),
    }
}

/// Copy a result into its output array, which must be exactly as long.
fn write<T: Copy>(t: &Tensors, name: &str, data: &[T]) -> PyResult<()> {
    let raw = t.req(name)?;
    if raw.1 != data.len() {
        return Err(PyValueError::new_err(format!(
            "argument `{name}`: the output needs {} elements, got {}",
            data.len(),
            raw.1
        )));
    }
    // SAFETY: the Python layer's contract (module docs of `slice`); outputs were
    // checked to overlap no input.
    unsafe { slice_mut::<T>(name, raw)? }.copy_from_slice(data);
    Ok(())
}

fn write_opt<T: Copy>(t: &Tensors, name: &str, data: Option<&[T]>) -> PyResult<()> {
    match (t.opt(name), data) {
        (Some(_), Some(d)) => write(t, name, d),
        (None, None) | (None, Some(_)) => Ok(()),
        (Some(_), None) => Err(PyValueError::new_err(format!(
            "argument `{name}`: an output was given but the operation produces none"
        ))),
    }
}

/// Optional input slice.
///
/// # Safety
/// As [`slice`].
unsafe fn opt<'a, T>(t: &Tensors, name: &str) -> PyResult<Option<&'a [T]>> {
    t.opt(name)
        .map(|raw| unsafe { slice::<T>(name, raw) })
        .transpose()
}

/// Required input slice.
///
/// # Safety
/// As [`slice`].
unsafe fn req<'a, T>(t: &Tensors, name: &str) -> PyResult<&'a [T]> {
    unsafe { slice::<T>(name, t.req(name)?) }
}

/// B or C of the scan: `(b, G, N, L)` when `groups` is given, else `(D_in, N)`.
fn bc<T>(data: &[T], groups: Option<usize>) -> BcInput<'_, T> {
    match groups {
        Some(groups) => BcInput::Grouped { groups, data },
        None => BcInput::Constant(data),
    }
}

/// The scan's parameters from the call's tensors.
///
/// # Safety
/// The tensors satisfy [`slice`]'s contract.
unsafe fn scan_params<'a, T: Element>(
    t: &Tensors,
    call: &ScanCall,
    return_final_states: bool,
) -> PyResult<SelectiveScanParams<'a, T>> {
    let (batch, d_inner, d_state, seqlen) = call.dims;
    let dims = Mamba1Dims::new(batch, d_inner, d_state, seqlen);
    // SAFETY (every call below): the caller's contract.
    unsafe {
        let mut p = SelectiveScanParams::new(
            dims,
            req(t, "u")?,
            req(t, "delta")?,
            req(t, "A")?,
            bc(req(t, "B")?, call.b_groups),
            bc(req(t, "C")?, call.c_groups),
        )
        .with_delta_softplus(call.delta_softplus)
        .with_final_states(return_final_states);
        p.d = opt(t, "D")?;
        p.z = opt(t, "z")?;
        p.delta_bias = opt(t, "delta_bias")?;
        p.initial_states = opt(t, "initial_states")?;
        p.cu_seqlens = opt(t, "cu_seqlens")?;
        Ok(p)
    }
}

/// The Mamba-2 skip term `D`, if passed: `(H, P)` when `per_head_dim`, else `(H)`.
fn d_skip(d: Option<&[f32]>, per_head_dim: bool) -> Option<DSkip<'_>> {
    d.map(|d| {
        if per_head_dim {
            DSkip::PerHeadDim(d)
        } else {
            DSkip::PerHead(d)
        }
    })
}

/// The SSD's parameters from the call's tensors.
///
/// # Safety
/// The tensors satisfy [`slice`]'s contract.
pub(crate) unsafe fn ssd_params<'a, T: Element>(
    t: &Tensors,
    f: &'a SsdCall,
    return_final_states: bool,
) -> PyResult<SsdParams<'a, T>> {
    let SsdCall {
        dims,
        d_per_head_dim,
        dt_softplus,
        dt_limit,
        ..
    } = *f;
    // SAFETY (every call below): the caller's contract.
    unsafe {
        let mut p = SsdParams::new(
            dims,
            req(t, "x")?,
            req(t, "dt")?,
            req(t, "A")?,
            req(t, "B")?,
            req(t, "C")?,
        )
        .with_dt_softplus(dt_softplus)
        .with_dt_limit(dt_limit.0, dt_limit.1)
        .with_final_states(return_final_states);
        p.dt_bias = opt(t, "dt_bias")?;
        p.d = d_skip(opt::<f32>(t, "D")?, d_per_head_dim);
        p.z = opt(t, "z")?;
        p.initial_states = opt(t, "initial_states")?;
        p.cu_seqlens = f.cu_seqlens.as_deref();
        Ok(p)
    }
}

fn scan_fwd_t<T: DeviceElement>(
    py: Python<'_>,
    t: &Tensors,
    call: &ScanCall,
    block_len: usize,
) -> PyResult<()> {
    let final_states = t.opt("final_states").is_some();
    check_disjoint(t, &["out", "final_states"], sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]).
    let p = unsafe { scan_params::<T>(t, call, final_states)? };
    let opts = mamba1_scan::CpuOptions { block_len };
    let r = py
        .detach(|| mamba1_scan::selective_scan(&p, mamba1_scan::Backend::Cpu(opts)))
        .map_err(to_py)?;
    write(t, "out", &r.out)?;
    write_opt(t, "final_states", r.final_states.as_deref())
}

/// The Mamba-1 selective scan forward on the CPU port.
#[pyfunction]
#[pyo3(signature = (dtype, call, tensors, block_len = 256))]
fn scan_fwd_cpu(
    py: Python<'_>,
    dtype: &str,
    call: ScanCall,
    tensors: Tensors,
    block_len: usize,
) -> PyResult<()> {
    dispatch!(dtype, scan_fwd_t(py, &tensors, &call, block_len))
}

fn scan_bwd_t<T: DeviceElement>(
    py: Python<'_>,
    t: &Tensors,
    call: &ScanCall,
    return_final_states: bool,
    block_len: usize,
) -> PyResult<()> {
    // The gradient outputs are the scan's gradients by their argument names.
    check_disjoint(t, &ssm_core::mamba1_grad::GRAD_NAMES, sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]).
    let (p, d_out, d_final) = unsafe {
        (
            scan_params::<T>(t, call, return_final_states)?,
            req::<T>(t, "d_out")?,
            opt::<f32>(t, "d_final_states")?,
        )
    };
    let opts = mamba1_scan::CpuOptions { block_len };
    let g = py
        .detach(|| {
            mamba1_scan::selective_scan_backward(
                &p,
                d_out,
                d_final,
                mamba1_scan::Backend::Cpu(opts),
            )
        })
        .map_err(to_py)?;
    write(t, "du", &g.du)?;
    write(t, "ddelta", &g.ddelta)?;
    write(t, "dA", &g.da)?;
    write(t, "dB", &g.db)?;
    write(t, "dC", &g.dc)?;
    write_opt(t, "dD", g.dd.as_deref())?;
    write_opt(t, "dz", g.dz.as_deref())?;
    write_opt(t, "ddelta_bias", g.ddelta_bias.as_deref())?;
    write_opt(t, "dinitial_states", g.dinitial_states.as_deref())
}

/// The Mamba-1 selective scan backward on the CPU port.
#[pyfunction]
#[pyo3(signature = (dtype, call, return_final_states, tensors, block_len = 256))]
fn scan_bwd_cpu(
    py: Python<'_>,
    dtype: &str,
    call: ScanCall,
    return_final_states: bool,
    tensors: Tensors,
    block_len: usize,
) -> PyResult<()> {
    dispatch!(
        dtype,
        scan_bwd_t(py, &tensors, &call, return_final_states, block_len)
    )
}

fn ssd_fwd_t<T: DeviceElement>(py: Python<'_>, t: &Tensors, f: &SsdCall) -> PyResult<()> {
    let final_states = t.opt("final_states").is_some();
    check_disjoint(t, &["out", "final_states"], sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]).
    let p = unsafe { ssd_params::<T>(t, f, final_states)? };
    let opts = mamba2_ssd::CpuOptions {
        chunk_size: f.chunk_size,
    };
    let r = py
        .detach(|| mamba2_ssd::ssd_forward(&p, mamba2_ssd::Backend::Cpu(opts)))
        .map_err(to_py)?;
    write(t, "out", &r.out)?;
    write_opt(t, "final_states", r.final_states.as_deref())
}

/// The Mamba-2 SSD forward on the chunked CPU port.
#[pyfunction]
fn ssd_fwd_cpu(py: Python<'_>, dtype: &str, call: SsdCall, tensors: Tensors) -> PyResult<()> {
    dispatch!(dtype, ssd_fwd_t(py, &tensors, &call))
}

fn ssd_bwd_t<T: DeviceElement>(
    py: Python<'_>,
    t: &Tensors,
    f: &SsdCall,
    return_final_states: bool,
) -> PyResult<()> {
    let outs = [
        "dx",
        "ddt",
        "dA",
        "dB",
        "dC",
        "dD",
        "dz",
        "ddt_bias",
        "dinitial_states",
    ];
    check_disjoint(t, &outs, sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]).
    let (p, d_out, d_final) = unsafe {
        (
            ssd_params::<T>(t, f, return_final_states)?,
            req::<T>(t, "d_out")?,
            opt::<f32>(t, "d_final_states")?,
        )
    };
    let opts = mamba2_ssd::CpuOptions {
        chunk_size: f.chunk_size,
    };
    let g = py
        .detach(|| mamba2_ssd::ssd_backward(&p, d_out, d_final, mamba2_ssd::Backend::Cpu(opts)))
        .map_err(to_py)?;
    write(t, "dx", &g.dx)?;
    write(t, "ddt", &g.ddt)?;
    write(t, "dA", &g.da)?;
    write(t, "dB", &g.db)?;
    write(t, "dC", &g.dc)?;
    write_opt(t, "dD", g.dd.as_deref())?;
    write_opt(t, "dz", g.dz.as_deref())?;
    write_opt(t, "ddt_bias", g.ddt_bias.as_deref())?;
    write_opt(t, "dinitial_states", g.dinitial_states.as_deref())
}

/// The Mamba-2 SSD backward on the chunked CPU port.
#[pyfunction]
fn ssd_bwd_cpu(
    py: Python<'_>,
    dtype: &str,
    call: SsdCall,
    return_final_states: bool,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(dtype, ssd_bwd_t(py, &tensors, &call, return_final_states))
}

fn m1_step_t<T: DeviceElement>(
    py: Python<'_>,
    t: &Tensors,
    dims: (usize, usize, usize, usize, usize),
    dt_softplus: bool,
) -> PyResult<()> {
    let (batch, d_inner, d_state, groups, cache_rows) = dims;
    check_disjoint(t, &["state", "out"], sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]); `state` overlaps nothing.
    let (p, state) = unsafe {
        let mut p = Mamba1StepParams::<T>::new(
            batch,
            d_inner,
            d_state,
            groups,
            req(t, "x")?,
            req(t, "dt")?,
            req(t, "A")?,
            req(t, "B")?,
            req(t, "C")?,
        );
        p.cache_rows = cache_rows;
        p.d = opt(t, "D")?;
        p.z = opt(t, "z")?;
        p.dt_bias = opt(t, "dt_bias")?;
        p.dt_softplus = dt_softplus;
        p.state_batch_indices = opt(t, "state_batch_indices")?;
        (p, slice_mut::<f32>("state", t.req("state")?)?)
    };
    let r = py
        .detach(|| {
            mamba1_scan::decode_step(&p, state, mamba1_scan::Backend::Cpu(Default::default()))
        })
        .map_err(to_py)?;
    write(t, "out", &r.out)
}

/// One Mamba-1 decode step on the CPU; `state` `(cache_rows, D_in, N)` f32 is
/// updated in place.
#[pyfunction]
fn m1_step_cpu(
    py: Python<'_>,
    dtype: &str,
    dims: (usize, usize, usize, usize, usize),
    dt_softplus: bool,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(dtype, m1_step_t(py, &tensors, dims, dt_softplus))
}

fn m2_step_t<T: DeviceElement>(
    py: Python<'_>,
    t: &Tensors,
    dims: (usize, usize, usize, usize, usize, usize),
    d_per_head_dim: bool,
    dt_softplus: bool,
    dt_limit: (f32, f32),
) -> PyResult<()> {
    let (batch, heads, head_dim, d_state, groups, cache_rows) = dims;
    check_disjoint(t, &["state", "out"], sizes::<T>)?;
    // SAFETY: the Python layer's contract ([`slice`]); `state` overlaps nothing.
    let (p, state) = unsafe {
        let mut p = Mamba2StepParams::<T>::new(
            batch,
            heads,
            head_dim,
            d_state,
            groups,
            req(t, "x")?,
            req(t, "dt")?,
            req(t, "A")?,
            req(t, "B")?,
            req(t, "C")?,
        );
        p.cache_rows = cache_rows;
        p.d = d_skip(opt::<f32>(t, "D")?, d_per_head_dim);
        p.z = opt(t, "z")?;
        p.dt_bias = opt(t, "dt_bias")?;
        p.dt_softplus = dt_softplus;
        p.dt_limit = dt_limit;
        p.state_batch_indices = opt(t, "state_batch_indices")?;
        (p, slice_mut::<f32>("state", t.req("state")?)?)
    };
    let r = py
        .detach(|| mamba2_ssd::decode_step(&p, state, mamba2_ssd::Backend::Cpu(Default::default())))
        .map_err(to_py)?;
    write(t, "out", &r.out)
}

/// One Mamba-2 decode step on the CPU; `state` `(cache_rows, H, P, N)` f32 is
/// updated in place.
#[pyfunction]
fn m2_step_cpu(
    py: Python<'_>,
    dtype: &str,
    dims: (usize, usize, usize, usize, usize, usize),
    d_per_head_dim: bool,
    dt_softplus: bool,
    dt_limit: (f32, f32),
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(
        dtype,
        m2_step_t(py, &tensors, dims, d_per_head_dim, dt_softplus, dt_limit)
    )
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan_fwd_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bwd_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(ssd_fwd_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(ssd_bwd_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(m1_step_cpu, m)?)?;
    m.add_function(wrap_pyfunction!(m2_step_cpu, m)?)?;
    Ok(())
}
