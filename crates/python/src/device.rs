//! CUDA tensors (torch's) on our kernels: zero-copy, on the caller's stream.
//!
//! Torch allocates in the device's primary context and hands us its current
//! stream as a raw `CUstream`. Per device we retain the primary context once
//! (`CudaContext::new`, the same context torch uses) with cudarc's event
//! tracking off: all work is ordered by the one stream it is enqueued on, as
//! torch orders its own, so cudarc's per-buffer events would only add
//! overhead. Per stream we wrap the raw handle (`wrap_borrowed_stream`, which
//! never destroys it) in a [`Gpu`]. Tensors become [`Lent`] `CudaSlice`s over
//! torch's memory, leaked on drop so that cudarc never frees them.
//!
//! Plans (compiled kernels, work tables, workspaces) are cached per device,
//! stream and problem: each stream has its own workspaces, so calls that run
//! concurrently on two streams never share scratch. A new plan is
//! synchronised once after it is made (its workspaces are allocated and
//! poisoned on the stream of the call that made it). Launches are
//! asynchronous; only varlen scans synchronise, to report offsets the kernel
//! refused (`ScanPlan::take_device_error`).

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mamba1_scan::cuda::{
    ScanBuffers, ScanBwdPlan, ScanBwdWorkspace, ScanGradBuffers, ScanOptions, ScanPlan,
    ScanProblem, ScanTuning,
};
use mamba1_scan::decode_cuda::Mamba1Decode;
use mamba2_ssd::cuda::backward::{SsdBwdPlan, SsdBwdWorkspace, SsdGradBuffers, DEFAULT_BWD_CHUNK};
use mamba2_ssd::cuda::config::{DMode, SsdFeatures};
use mamba2_ssd::cuda::{CudaOptions, SsdDeviceInputs, SsdDeviceOutputs, SsdPlan};
use mamba2_ssd::decode_cuda::Mamba2Decode;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use ssm_core::decode::{Mamba1StepDims, Mamba2StepDims, StepDims, StepInputs};
use ssm_core::mamba1::Mamba1Dims;
use ssm_core::DType;
use ssm_gpu::cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream};
use ssm_gpu::decode::{launch_decode_step, DecodeFamily, DecodeKernel, DeviceStepArgs};
use ssm_gpu::{DeviceElement, Gpu};

use crate::{to_py, Raw, ScanCall, SsdCall, Tensors};

/// Everything cached for one device.
struct Device {
    ctx: Arc<CudaContext>,
    gpus: HashMap<usize, Arc<Gpu>>,
    scan: HashMap<String, ScanPlan>,
    scan_bwd: HashMap<String, (ScanBwdPlan, ScanBwdWorkspace)>,
    ssd: HashMap<String, SsdPlan>,
    ssd_bwd: HashMap<String, (SsdBwdPlan, SsdBwdWorkspace)>,
    decode: HashMap<String, Box<dyn Any + Send>>,
}

/// Plans kept per map before the map is cleared (varlen calls with ever new
/// offsets would otherwise grow it without bound).
const MAX_PLANS: usize = 256;

static DEVICES: Mutex<Vec<(usize, Device)>> = Mutex::new(Vec::new());

fn runtime_err<E: std::fmt::Display>(e: E) -> PyErr {
    PyRuntimeError::new_err(format!("GPU backend: {e}"))
}

fn lock() -> PyResult<MutexGuard<'static, Vec<(usize, Device)>>> {
    DEVICES.lock().map_err(|_| {
        PyRuntimeError::new_err("ssm_kernels: the device cache was poisoned by a panic")
    })
}

fn device(devs: &mut Vec<(usize, Device)>, ordinal: usize) -> PyResult<&mut Device> {
    if let Some(i) = devs.iter().position(|(o, _)| *o == ordinal) {
        return Ok(&mut devs[i].1);
    }
    let ctx = CudaContext::new(ordinal).map_err(runtime_err)?;
    // SAFETY: nothing of ours relies on cudarc's cross-stream synchronisation:
    // every buffer we touch is used on the stream of the call (module docs).
    unsafe { ctx.disable_event_tracking() };
    devs.push((
        ordinal,
        Device {
            ctx,
            gpus: HashMap::new(),
            scan: HashMap::new(),
            scan_bwd: HashMap::new(),
            ssd: HashMap::new(),
            ssd_bwd: HashMap::new(),
            decode: HashMap::new(),
        },
    ));
    Ok(&mut devs.last_mut().expect("just pushed").1)
}

impl Device {
    /// The [`Gpu`] that enqueues on the caller's raw stream `stream`.
    fn gpu(&mut self, stream: usize) -> PyResult<Arc<Gpu>> {
        if let Some(g) = self.gpus.get(&stream) {
            return Ok(g.clone());
        }
        // SAFETY: `stream` is torch's current stream of this device (the Python
        // layer reads it from torch.cuda.current_stream(device)), a stream of the
        // primary context wrapped here; torch keeps it alive while it is current,
        // and the wrapper never destroys it. Ordering with torch's own work is
        // that of the one stream.
        let s: Arc<CudaStream> = unsafe { self.ctx.wrap_borrowed_stream(stream as sys::CUstream) };
        let gpu = Arc::new(Gpu::from_stream(s).map_err(runtime_err)?);
        self.gpus.insert(stream, gpu.clone());
        Ok(gpu)
    }
}

/// Get or make a cached plan; a new one is synchronised once (module docs).
fn cached<'m, P>(
    map: &'m mut HashMap<String, P>,
    key: String,
    gpu: &Gpu,
    make: impl FnOnce() -> ssm_core::Result<P>,
) -> PyResult<&'m mut P> {
    if !map.contains_key(&key) {
        if map.len() >= MAX_PLANS {
            map.clear();
        }
        let plan = make().map_err(to_py)?;
        gpu.synchronize().map_err(runtime_err)?;
        map.insert(key.clone(), plan);
    }
    Ok(map.get_mut(&key).expect("inserted above"))
}

/// Something holding `CudaSlice`s over memory we do not own: [`Lent`] leaks
/// them instead of letting cudarc free them.
trait LeakAll {
    fn leak_all(self);
}

impl<T> LeakAll for CudaSlice<T> {
    fn leak_all(self) {
        self.leak();
    }
}

impl<L: LeakAll> LeakAll for Option<L> {
    fn leak_all(self) {
        if let Some(x) = self {
            x.leak_all();
        }
    }
}

/// `LeakAll` for a struct of buffers: every field leaked. The destructuring
/// names every field, so a buffer added to the struct fails to compile here
/// until it is listed (and so can never be freed by mistake).
macro_rules! leak_fields {
    ($ty:ident, [$($field:ident),* $(,)?]) => {
        impl<T> LeakAll for $ty<T> {
            fn leak_all(self) {
                let $ty { $($field),* } = self;
                $($field.leak_all();)*
            }
        }
    };
}
leak_fields!(
    ScanBuffers,
    [
        u,
        delta,
        a,
        b,
        c,
        d,
        z,
        delta_bias,
        initial_states,
        cu_seqlens,
        out,
        final_states
    ]
);
leak_fields!(
    ScanGradBuffers,
    [du, ddelta, da, db, dc, dd, dz, ddelta_bias, dinitial_states]
);
leak_fields!(
    SsdDeviceInputs,
    [x, dt, a, b, c, dt_bias, d, z, initial_states]
);
leak_fields!(SsdDeviceOutputs, [out, final_states]);
leak_fields!(
    SsdGradBuffers,
    [dx, ddt, da, db, dc, dd, dz, ddt_bias, dinitial_states]
);

macro_rules! leak_tuple {
    ($($n:ident),*) => {
        impl<$($n: LeakAll),*> LeakAll for ($($n,)*) {
            #[allow(non_snake_case)]
            fn leak_all(self) {
                let ($($n,)*) = self;
                $($n.leak_all();)*
            }
        }
    };
}
leak_tuple!(A1, A2);
leak_tuple!(A1, A2, A3, A4);
leak_tuple!(A1, A2, A3, A4, A5);

/// Device memory lent by the caller for one call; leaked, never freed, on drop.
struct Lent<L: LeakAll>(Option<L>);

impl<L: LeakAll> Drop for Lent<L> {
    fn drop(&mut self) {
        if let Some(x) = self.0.take() {
            x.leak_all();
        }
    }
}

impl<L: LeakAll> std::ops::Deref for Lent<L> {
    type Target = L;
    fn deref(&self) -> &L {
        self.0.as_ref().expect("present until drop")
    }
}

impl<L: LeakAll> std::ops::DerefMut for Lent<L> {
    fn deref_mut(&mut self) -> &mut L {
        self.0.as_mut().expect("present until drop")
    }
}

/// A device tensor of the call as a `CudaSlice` over the caller's memory.
///
/// # Safety
/// `raw.0` must be a device address in `gpu`'s context holding `raw.1`
/// elements of `T`, alive until the work enqueued on `gpu`'s stream with it
/// has run (torch's caching allocator keeps a tensor's memory for its stream
/// until then). The result must be leaked, not dropped: wrap it in [`Lent`].
unsafe fn borrow<T>(gpu: &Gpu, name: &str, raw: Raw) -> PyResult<CudaSlice<T>> {
    let (ptr, len) = raw;
    if ptr == 0 || len == 0 || ptr % std::mem::align_of::<T>() != 0 {
        return Err(PyValueError::new_err(format!(
            "argument `{name}`: device address {ptr:#x} with {len} elements is not a valid \
             {}-byte aligned, non-empty tensor",
            std::mem::align_of::<T>()
        )));
    }
    // SAFETY: the contract above.
    Ok(unsafe { gpu.stream().upgrade_device_ptr::<T>(ptr as u64, len) })
}

/// Required tensor.
///
/// # Safety
/// As [`borrow`].
unsafe fn req<T>(gpu: &Gpu, t: &Tensors, name: &str) -> PyResult<CudaSlice<T>> {
    unsafe { borrow(gpu, name, t.req(name)?) }
}

/// Optional tensor.
///
/// # Safety
/// As [`borrow`].
unsafe fn opt<T>(gpu: &Gpu, t: &Tensors, name: &str) -> PyResult<Option<CudaSlice<T>>> {
    t.opt(name)
        .map(|raw| unsafe { borrow(gpu, name, raw) })
        .transpose()
}

// ------------------------------------------------------------------ the scan

impl ScanCall {
    fn problem(&self, dtype: DType, t: &Tensors, final_states: bool) -> PyResult<ScanProblem> {
        let (batch, d_inner, d_state, seqlen) = self.dims;
        let opts = ScanOptions {
            has_d: t.opt("D").is_some(),
            has_z: t.opt("z").is_some(),
            has_delta_bias: t.opt("delta_bias").is_some(),
            delta_softplus: self.delta_softplus,
            has_initial_states: t.opt("initial_states").is_some(),
            return_final_states: final_states,
        };
        let varlen = match t.opt("cu_seqlens") {
            Some((_, 0)) => {
                return Err(PyValueError::new_err(
                    "argument `cu_seqlens`: expected (num_seqs + 1) offsets, got none",
                ))
            }
            Some((_, n)) => Some(n - 1),
            None => None,
        };
        let dims = Mamba1Dims::new(batch, d_inner, d_state, seqlen);
        ScanProblem::from_shapes(dtype, dims, self.b_groups, self.c_groups, opts, varlen)
            .map_err(to_py)
    }
}

/// The scan's buffers over the caller's memory, `out` and `final_states` from
/// the tensors so named (the backward reads none of the forward's outputs and
/// passes `d_out` and `d_final_states` in their place).
///
/// # Safety
/// As [`borrow`].
unsafe fn scan_buffers<T>(
    gpu: &Gpu,
    t: &Tensors,
    out: &str,
    final_states: &str,
) -> PyResult<Lent<ScanBuffers<T>>> {
    // SAFETY: the caller's contract.
    unsafe {
        Ok(Lent(Some(ScanBuffers {
            u: req(gpu, t, "u")?,
            delta: req(gpu, t, "delta")?,
            a: req(gpu, t, "A")?,
            b: req(gpu, t, "B")?,
            c: req(gpu, t, "C")?,
            d: opt(gpu, t, "D")?,
            z: opt(gpu, t, "z")?,
            delta_bias: opt(gpu, t, "delta_bias")?,
            initial_states: opt(gpu, t, "initial_states")?,
            cu_seqlens: opt(gpu, t, "cu_seqlens")?,
            out: req(gpu, t, out)?,
            final_states: opt(gpu, t, final_states)?,
        })))
    }
}

fn scan_fwd_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    call: ScanCall,
    t: &Tensors,
) -> PyResult<()> {
    let mut devs = lock()?;
    let dev = device(&mut devs, ordinal)?;
    let gpu = dev.gpu(stream)?;
    let problem = call.problem(T::DTYPE, t, t.opt("final_states").is_some())?;
    let key = format!("{stream}:{problem:?}");
    let plan = cached(&mut dev.scan, key, &gpu, || {
        ScanPlan::new(&gpu, &problem, ScanTuning::default())
    })?;
    // SAFETY: the Python layer's contract ([`borrow`]): live CUDA tensors of
    // this device, kept by the caller until the launch has run on this stream.
    let mut bufs = unsafe { scan_buffers::<T>(&gpu, t, "out", "final_states")? };
    plan.launch(&gpu, &mut bufs).map_err(to_py)?;
    if problem.varlen_seqs.is_some() {
        plan.take_device_error(&gpu).map_err(to_py)?;
    }
    Ok(())
}

/// The selective scan forward on torch's stream `stream` of device `ordinal`.
#[pyfunction]
fn scan_fwd_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    call: ScanCall,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(dtype, scan_fwd_t(ordinal, stream, call, &tensors))
}

fn scan_bwd_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    call: ScanCall,
    t: &Tensors,
) -> PyResult<()> {
    let mut devs = lock()?;
    let dev = device(&mut devs, ordinal)?;
    let gpu = dev.gpu(stream)?;
    // Without d_final_states the final states do not enter the loss: the
    // backward of a forward that returns none is the same.
    let d_final = t.opt("d_final_states").is_some();
    let problem = call.problem(T::DTYPE, t, d_final)?;
    let key = format!("{stream}:{problem:?}");
    let (plan, ws) = cached(&mut dev.scan_bwd, key, &gpu, || {
        let plan = ScanBwdPlan::new(&gpu, &problem)?;
        let ws = plan.workspace(&gpu)?;
        Ok((plan, ws))
    })?;
    // SAFETY: as in `scan_fwd_t`. The forward's `out` and `final_states` are not
    // read by the backward; `d_out` and `d_final_states` stand in for them.
    unsafe {
        let fwd = scan_buffers::<T>(&gpu, t, "d_out", "d_final_states")?;
        let d_out = Lent(Some(req::<T>(&gpu, t, "d_out")?));
        let d_fin = Lent(Some(opt::<f32>(&gpu, t, "d_final_states")?));
        let mut grads = Lent(Some(ScanGradBuffers::<T> {
            du: req(&gpu, t, "du")?,
            ddelta: req(&gpu, t, "ddelta")?,
            da: req(&gpu, t, "dA")?,
            db: req(&gpu, t, "dB")?,
            dc: req(&gpu, t, "dC")?,
            dd: opt(&gpu, t, "dD")?,
            dz: opt(&gpu, t, "dz")?,
            ddelta_bias: opt(&gpu, t, "ddelta_bias")?,
            dinitial_states: opt(&gpu, t, "dinitial_states")?,
        }));
        plan.launch(&gpu, &fwd, &d_out, d_fin.as_ref(), &mut grads, ws)
            .map_err(to_py)?;
    }
    if problem.varlen_seqs.is_some() {
        // The backward kernels check the offsets as the forward's do; the
        // forward of the same call has reported them already.
        gpu.synchronize().map_err(runtime_err)?;
    }
    Ok(())
}

/// The selective scan backward on torch's stream.
#[pyfunction]
fn scan_bwd_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    call: ScanCall,
    _return_final_states: bool,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(dtype, scan_bwd_t(ordinal, stream, call, &tensors))
}

// ------------------------------------------------------------------ the SSD

impl SsdCall {
    fn features(&self, t: &Tensors, final_states: bool) -> SsdFeatures {
        SsdFeatures {
            dt_bias: t.opt("dt_bias").is_some(),
            dt_softplus: self.dt_softplus,
            d: match (t.opt("D").is_some(), self.d_per_head_dim) {
                (false, _) => DMode::None,
                (true, false) => DMode::PerHead,
                (true, true) => DMode::PerHeadDim,
            },
            z: t.opt("z").is_some(),
            initial_states: t.opt("initial_states").is_some(),
            final_states,
        }
    }

    fn key(&self, stream: usize, dtype: DType, f: &SsdFeatures) -> String {
        format!(
            "{stream}:{dtype:?}:{:?}:{f:?}:{:?}:{:?}",
            self.dims, self.dt_limit, self.cu_seqlens
        )
    }
}

/// The SSD's inputs over the caller's memory.
///
/// # Safety
/// As [`borrow`].
unsafe fn ssd_inputs<T>(gpu: &Gpu, t: &Tensors) -> PyResult<Lent<SsdDeviceInputs<T>>> {
    // SAFETY: the caller's contract.
    unsafe {
        Ok(Lent(Some(SsdDeviceInputs {
            x: req(gpu, t, "x")?,
            dt: req(gpu, t, "dt")?,
            a: req(gpu, t, "A")?,
            b: req(gpu, t, "B")?,
            c: req(gpu, t, "C")?,
            dt_bias: opt(gpu, t, "dt_bias")?,
            d: opt(gpu, t, "D")?,
            z: opt(gpu, t, "z")?,
            initial_states: opt(gpu, t, "initial_states")?,
        })))
    }
}

fn ssd_fwd_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    call: &SsdCall,
    t: &Tensors,
) -> PyResult<()> {
    let mut devs = lock()?;
    let dev = device(&mut devs, ordinal)?;
    let gpu = dev.gpu(stream)?;
    let features = call.features(t, t.opt("final_states").is_some());
    let key = call.key(stream, T::DTYPE, &features);
    let plan = cached(&mut dev.ssd, key, &gpu, || {
        SsdPlan::for_shapes(
            &gpu,
            T::DTYPE,
            call.dims,
            features,
            call.dt_limit,
            call.cu_seqlens.as_deref(),
            &CudaOptions::default(),
        )
    })?;
    // SAFETY: the Python layer's contract ([`borrow`]).
    unsafe {
        let inp = ssd_inputs::<T>(&gpu, t)?;
        let mut outs = Lent(Some(SsdDeviceOutputs {
            out: req::<T>(&gpu, t, "out")?,
            final_states: opt::<f32>(&gpu, t, "final_states")?,
        }));
        plan.launch(&gpu, &inp, &mut outs).map_err(to_py)?;
    }
    Ok(())
}

/// The SSD forward on torch's stream; `cu_seqlens` are host offsets (the
/// forward picks its own chunk length: `call.chunk_size` is not read).
#[pyfunction]
fn ssd_fwd_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    call: SsdCall,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(dtype, ssd_fwd_t(ordinal, stream, &call, &tensors))
}

fn ssd_bwd_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    call: &SsdCall,
    chunk: usize,
    t: &Tensors,
) -> PyResult<()> {
    let mut devs = lock()?;
    let dev = device(&mut devs, ordinal)?;
    let gpu = dev.gpu(stream)?;
    let d_final = t.opt("d_final_states").is_some();
    let features = call.features(t, d_final);
    let key = format!("{}:{chunk}", call.key(stream, T::DTYPE, &features));
    let (plan, ws) = cached(&mut dev.ssd_bwd, key, &gpu, || {
        let plan = SsdBwdPlan::for_shapes(
            &gpu,
            T::DTYPE,
            call.dims,
            features,
            call.dt_limit,
            call.cu_seqlens.as_deref(),
            d_final,
            chunk,
        )?;
        let ws = plan.workspace(&gpu)?;
        Ok((plan, ws))
    })?;
    // SAFETY: the Python layer's contract ([`borrow`]).
    unsafe {
        let inp = ssd_inputs::<T>(&gpu, t)?;
        let d_out = Lent(Some(req::<T>(&gpu, t, "d_out")?));
        let d_fin = Lent(Some(opt::<f32>(&gpu, t, "d_final_states")?));
        let mut grads = Lent(Some(SsdGradBuffers::<T> {
            dx: req(&gpu, t, "dx")?,
            ddt: req(&gpu, t, "ddt")?,
            da: req(&gpu, t, "dA")?,
            db: req(&gpu, t, "dB")?,
            dc: req(&gpu, t, "dC")?,
            dd: opt(&gpu, t, "dD")?,
            dz: opt(&gpu, t, "dz")?,
            ddt_bias: opt(&gpu, t, "ddt_bias")?,
            dinitial_states: opt(&gpu, t, "dinitial_states")?,
        }));
        plan.launch(&gpu, &inp, &d_out, d_fin.as_ref(), &mut grads, ws)
            .map_err(to_py)?;
    }
    Ok(())
}

/// The SSD backward on torch's stream (chunk length of the backward kernels:
/// `chunk_size` when it is 64, 128 or 256, else 64).
#[pyfunction]
fn ssd_bwd_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    call: SsdCall,
    _return_final_states: bool,
    tensors: Tensors,
) -> PyResult<()> {
    let chunk = if [64, 128, 256].contains(&call.chunk_size) {
        call.chunk_size
    } else {
        DEFAULT_BWD_CHUNK
    };
    dispatch!(dtype, ssd_bwd_t(ordinal, stream, &call, chunk, &tensors))
}

// ------------------------------------------------------------------ decode steps

/// The decode kernel of family `F` for `T`, `d_state` and the regime of
/// `batch` (the tiling the crates' decode_step launches at that batch), cached
/// per device and keyed by that tiling: batches that launch the same tiling
/// share one compiled kernel, and a new regime can never reuse another's entry.
fn decode_kernel<'d, F: DecodeFamily, T: DeviceElement>(
    dev: &'d mut Device,
    gpu: &Gpu,
    family: &str,
    d_state: usize,
    batch: usize,
) -> PyResult<&'d DecodeKernel<F, T>>
where
    DecodeKernel<F, T>: Send,
{
    let tiling = F::tiling_for_batch(T::DTYPE, batch);
    let key = format!("{family}:{:?}:{d_state}:{tiling:?}", T::DTYPE);
    if !dev.decode.contains_key(&key) {
        let k = DecodeKernel::<F, T>::new(gpu, d_state, tiling).map_err(to_py)?;
        dev.decode.insert(key.clone(), Box::new(k));
    }
    dev.decode[&key]
        .downcast_ref::<DecodeKernel<F, T>>()
        .ok_or_else(|| {
            PyRuntimeError::new_err("ssm_kernels: decode kernel cache holds another type")
        })
}

/// One decode step of family `F` (`family` names its kernel cache entry) on
/// torch's stream: the buffers by role from `t`, the state updated in place.
fn step_t<F: DecodeFamily, T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    family: &str,
    dims: F::Dims,
    options: F::Options,
    t: &Tensors,
) -> PyResult<()>
where
    DecodeKernel<F, T>: Send,
{
    let mut devs = lock()?;
    let dev = device(&mut devs, ordinal)?;
    let gpu = dev.gpu(stream)?;
    let kernel = decode_kernel::<F, T>(dev, &gpu, family, dims.d_state(), F::batch(&dims))?;
    // SAFETY: the Python layer's contract ([`borrow`]).
    unsafe {
        let ins = Lent(Some((
            req::<T>(&gpu, t, "x")?,
            req::<T>(&gpu, t, "dt")?,
            req::<T>(&gpu, t, "B")?,
            req::<T>(&gpu, t, "C")?,
            opt::<T>(&gpu, t, "z")?,
        )));
        let params = Lent(Some((
            req::<f32>(&gpu, t, "A")?,
            opt::<f32>(&gpu, t, "D")?,
            opt::<f32>(&gpu, t, "dt_bias")?,
            opt::<i64>(&gpu, t, "state_batch_indices")?,
        )));
        let mut outs = Lent(Some((
            req::<f32>(&gpu, t, "state")?,
            req::<T>(&gpu, t, "out")?,
        )));
        let (x, dt, b, c, z) = &*ins;
        let (a, d, bias, idx) = &*params;
        let args = DeviceStepArgs {
            dims,
            inputs: StepInputs {
                x: x.as_view(),
                dt: dt.as_view(),
                a: a.as_view(),
                b: b.as_view(),
                c: c.as_view(),
                d: d.as_ref().map(|v| v.as_view()),
                z: z.as_ref().map(|v| v.as_view()),
                dt_bias: bias.as_ref().map(|v| v.as_view()),
                state_batch_indices: idx.as_ref().map(|v| v.as_view()),
            },
            options,
        };
        let (state, out) = &mut *outs;
        launch_decode_step(
            &gpu,
            kernel,
            &args,
            &mut state.as_view_mut(),
            &mut out.as_view_mut(),
        )
        .map_err(to_py)?;
    }
    Ok(())
}

fn m1_step_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    dims: (usize, usize, usize, usize, usize),
    dt_softplus: bool,
    t: &Tensors,
) -> PyResult<()>
where
    DecodeKernel<Mamba1Decode, T>: Send,
{
    let (batch, d_inner, d_state, groups, cache_rows) = dims;
    let dims = Mamba1StepDims {
        batch,
        d_inner,
        d_state,
        groups,
        cache_rows,
    };
    let options = mamba1_scan::decode_cuda::StepOptions { dt_softplus };
    step_t::<Mamba1Decode, T>(ordinal, stream, "m1", dims, options, t)
}

/// One Mamba-1 decode step on torch's stream; `state` is updated in place.
#[pyfunction]
fn m1_step_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    dims: (usize, usize, usize, usize, usize),
    dt_softplus: bool,
    tensors: Tensors,
) -> PyResult<()> {
    dispatch!(
        dtype,
        m1_step_t(ordinal, stream, dims, dt_softplus, &tensors)
    )
}

fn m2_step_t<T: DeviceElement>(
    ordinal: usize,
    stream: usize,
    dims: (usize, usize, usize, usize, usize, usize),
    flags: (bool, bool, (f32, f32)),
    t: &Tensors,
) -> PyResult<()>
where
    DecodeKernel<Mamba2Decode, T>: Send,
{
    let (batch, heads, head_dim, d_state, groups, cache_rows) = dims;
    let (d_per_head_dim, dt_softplus, dt_limit) = flags;
    let dims = Mamba2StepDims {
        batch,
        heads,
        head_dim,
        d_state,
        groups,
        cache_rows,
    };
    let options = mamba2_ssd::decode_cuda::StepOptions {
        d_per_head_dim,
        dt_softplus,
        dt_limit,
    };
    step_t::<Mamba2Decode, T>(ordinal, stream, "m2", dims, options, t)
}

/// One Mamba-2 decode step on torch's stream; `state` is updated in place.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn m2_step_cuda(
    ordinal: usize,
    stream: usize,
    dtype: &str,
    dims: (usize, usize, usize, usize, usize, usize),
    d_per_head_dim: bool,
    dt_softplus: bool,
    dt_limit: (f32, f32),
    tensors: Tensors,
) -> PyResult<()> {
    let flags = (d_per_head_dim, dt_softplus, dt_limit);
    dispatch!(dtype, m2_step_t(ordinal, stream, dims, flags, &tensors))
}

/// Drop every cached plan and stream wrapper (tests; frees the workspaces).
#[pyfunction]
fn clear_cuda_cache() -> PyResult<()> {
    lock()?.clear();
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(scan_fwd_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(scan_bwd_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(ssd_fwd_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(ssd_bwd_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(m1_step_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(m2_step_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(clear_cuda_cache, m)?)?;
    Ok(())
}
