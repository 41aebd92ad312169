//! What every op needs to run our kernels on candle CUDA tensors (feature
//! `cuda`): one `ssm_gpu::Gpu` per candle device, on that device's stream;
//! zero-copy views of a tensor's storage; candle tensors around our outputs;
//! a cache of plans (a plan compiles kernels and allocates its workspaces, so
//! it is made once per shape and device).
//!
//! Stream ordering: candle enqueues its own kernels on `CudaDevice::cuda_stream()`
//! and our `Gpu` is built on that same stream (`Gpu::from_stream`), so our
//! launches are ordered after the kernels that wrote their inputs and before
//! the ones that read their outputs, with no synchronisation.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Storage, StorageRef, Tensor};
use ssm_gpu::{DeviceElement, Gpu};

use crate::op::{grad_list, named, Roles};

/// The `Gpu` of candle device `dev` (made on its stream the first time).
pub(crate) fn gpu_for(op: &'static str, dev: &CudaDevice) -> Result<Arc<Gpu>> {
    static GPUS: Mutex<Vec<(candle_core::cuda_backend::DeviceId, Arc<Gpu>)>> =
        Mutex::new(Vec::new());
    let mut gpus = GPUS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, g)) = gpus.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(g.clone());
    }
    let gpu = Gpu::from_stream(dev.cuda_stream()).map_err(|e| {
        candle_core::Error::Msg(format!(
            "{op}: opening the kernels' runtime on candle's CUDA stream: {e}"
        ))
    })?;
    let gpu = Arc::new(gpu);
    gpus.push((dev.id(), gpu.clone()));
    Ok(gpu)
}

/// A plan made by `make` for `key` (which names the device, dtype, shape and
/// options), cached: the same shape on the same device reuses it. Plans hold
/// workspaces that each launch overwrites; launches of one device are ordered
/// on its one stream, so sharing them is sound.
pub(crate) fn cached_plan<P: Any + Send + Sync>(
    key: String,
    make: impl FnOnce() -> Result<P>,
) -> Result<Arc<P>> {
    type Cache = HashMap<String, Arc<dyn Any + Send + Sync>>;
    static PLANS: Mutex<Option<Cache>> = Mutex::new(None);
    {
        let plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.as_ref().and_then(|m| m.get(&key)) {
            if let Ok(p) = p.clone().downcast::<P>() {
                return Ok(p);
            }
        }
    }
    // Planning compiles kernels (seconds the first time): not under the lock.
    let plan = Arc::new(make()?);
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    plans
        .get_or_insert_with(HashMap::new)
        .insert(key, plan.clone());
    Ok(plan)
}

/// A tensor's storage, borrowed for the length of a launch.
pub(crate) struct Borrowed<'a> {
    name: &'static str,
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

pub(crate) fn borrow<'a>(name: &'static str, t: &'a Tensor) -> Borrowed<'a> {
    let (storage, layout) = t.storage_and_layout();
    Borrowed {
        name,
        storage,
        layout,
    }
}

impl Borrowed<'_> {
    /// The CUDA storage, or an error naming the tensor.
    pub(crate) fn cuda(&self, op: &'static str) -> Result<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(s) => Ok(s),
            other => candle_core::bail!(
                "{op}: `{}` is on {:?}, not on the CUDA device of the other inputs",
                self.name,
                other.device().location()
            ),
        }
    }

    /// A zero-copy view of the tensor's elements (its layout's offset
    /// honoured). Only contiguous layouts are accepted: the kernels read dense
    /// row-major tensors.
    pub(crate) fn view<T: CudaDType>(&self, op: &'static str) -> Result<CudaView<'_, T>> {
        let Some((start, end)) = self.layout.contiguous_offsets() else {
            candle_core::bail!(
                "{op}: `{}` is not contiguous (shape {:?}, stride {:?}); the CUDA kernels read \
                 dense row-major tensors: call `.contiguous()` first",
                self.name,
                self.layout.dims(),
                self.layout.stride()
            )
        };
        let slice: &CudaSlice<T> = self
            .cuda(op)?
            .as_cuda_slice::<T>()
            .map_err(|e| candle_core::Error::Msg(format!("{op}: `{}`: {e}", self.name)))?;
        if end > slice.len() {
            candle_core::bail!(
                "{op}: `{}`: layout ends at element {end}, the storage has {}",
                self.name,
                slice.len()
            );
        }
        Ok(slice.slice(start..end))
    }
}

/// An op's input storages by role, borrowed while a launch reads them.
pub(crate) struct Held<'a>(Roles<Borrowed<'a>>);

impl<'a> Held<'a> {
    /// Borrow every input; `names` (role order) name them in errors.
    pub(crate) fn new(inputs: &'a Roles<Tensor>, names: [&'static str; 8]) -> Self {
        let by_name = |(name, t): (&'static str, &'a Tensor)| borrow(name, t);
        Held(named(inputs, names).map(by_name, by_name, |n| match n {}))
    }

    /// Zero-copy views: the sequence tensors as `T`, the parameters as f32.
    pub(crate) fn views<T: CudaDType>(
        &self,
        op: &'static str,
    ) -> Result<Roles<CudaView<'_, T>, CudaView<'_, f32>>> {
        self.0
            .as_ref()
            .try_map(|b| b.view::<T>(op), |b| b.view::<f32>(op), |n| match *n {})
    }

    /// Device-to-device copies of the inputs, for launches that take owned
    /// buffers; enqueued on the GPU's (candle's) stream.
    pub(crate) fn owned<T: DeviceElement + CudaDType>(
        &self,
        op: &'static str,
        gpu: &Gpu,
    ) -> Result<Roles<CudaSlice<T>, CudaSlice<f32>>> {
        self.views::<T>(op)?
            .try_map(|v| copy(op, gpu, &v), |v| copy(op, gpu, &v), |n| match n {})
    }

    /// A device copy of one more tensor (`name` in errors).
    pub(crate) fn copy_of<T: DeviceElement + CudaDType>(
        op: &'static str,
        gpu: &Gpu,
        name: &'static str,
        t: &Tensor,
    ) -> Result<CudaSlice<T>> {
        copy(op, gpu, &borrow(name, t).view::<T>(op)?)
    }
}

/// The slot's list of device gradients by role, each a tensor of its input's dims.
pub(crate) fn wrap_grads<T: CudaDType>(
    inputs: &Roles<Tensor>,
    dev: &CudaDevice,
    grads: Roles<CudaSlice<T>, CudaSlice<f32>>,
) -> Result<Vec<Option<Tensor>>> {
    grad_list(
        inputs,
        grads,
        |g, t| Ok(wrap(g, dev, t.dims())),
        |g, t| Ok(wrap(g, dev, t.dims())),
    )
}

/// A candle tensor of `dims` owning `slice` (no copy, no gradient tracking).
pub(crate) fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice, dims: &[usize]) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(slice, dev.clone());
    Tensor::from_storage(Storage::Cuda(storage), dims, BackpropOp::none(), false)
}

/// The CUDA device of `t`, or an error naming it.
pub(crate) fn device_of(op: &'static str, name: &str, t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        candle_core::Device::Cuda(d) => Ok(d.clone()),
        other => candle_core::bail!(
            "{op}: `{name}` is on {:?}, a CUDA device was expected",
            other.location()
        ),
    }
}

/// Convert an error of the kernels' GPU runtime.
pub(crate) fn gpu_err(op: &'static str) -> impl Fn(ssm_gpu::GpuError) -> candle_core::Error {
    move |e| candle_core::Error::Msg(format!("{op}: {e}"))
}

/// An owned device copy of `v`, enqueued on the GPU's (candle's) stream.
pub(crate) fn copy<T: ssm_gpu::DeviceElement>(
    op: &'static str,
    gpu: &Gpu,
    v: &CudaView<'_, T>,
) -> Result<CudaSlice<T>> {
    gpu.stream()
        .clone_dtod(v)
        .map_err(|e| gpu_err(op)(ssm_gpu::GpuError::from(e)))
}
