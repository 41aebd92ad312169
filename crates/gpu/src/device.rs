//! The device side: one context, one stream, kernels loaded from cached cubins,
//! typed buffers and CUDA-event timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUfunction_attribute, CUgraphInstantiate_flags, CUresult,
    CUstreamCaptureMode,
};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr,
    DriverError,
};
use cudarc::nvrtc::Ptx;

use crate::compile::Compiler;
use crate::limits::DeviceLimits;
use crate::nvrtc::{Arch, ARCH_ENV};
use crate::ptxas::{find_entry, PtxasFunction};
use crate::timing::Timing;
use crate::toolkit::driver_present;
use crate::variants::KernelVariant;
use crate::{GpuError, KernelSource};

/// Element types that can live in device buffers.
pub trait DeviceElement: ssm_core::Element + DeviceRepr + cudarc::driver::ValidAsZeroBits {
    /// A value written over fresh output buffers so that unwritten elements are caught.
    const POISON: Self;
}

// All-ones bytes: a NaN in every float format, and a single byte memset writes it.
impl DeviceElement for f32 {
    const POISON: Self = f32::from_bits(u32::MAX);
}
impl DeviceElement for f64 {
    const POISON: Self = f64::from_bits(u64::MAX);
}
impl DeviceElement for half::f16 {
    const POISON: Self = half::f16::from_bits(u16::MAX);
}
impl DeviceElement for half::bf16 {
    const POISON: Self = half::bf16::from_bits(u16::MAX);
}

/// Resource use of a loaded kernel, read through function attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelResources {
    /// Registers per thread.
    pub registers: u32,
    /// Static `__shared__` bytes per block.
    pub static_smem_bytes: u32,
    /// Per-thread local memory: stack frame and spills.
    pub local_bytes: u32,
    /// The most threads per block this kernel can launch with.
    pub max_threads_per_block: u32,
    /// The most dynamic shared memory per block this kernel may launch with
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    pub max_dynamic_smem_bytes: u32,
}

/// A compiled, loaded kernel entry point.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The loaded function, what `launch_builder` takes.
    pub func: CudaFunction,
    /// The entry point's name.
    pub name: String,
    /// Resources as the driver reports them.
    pub resources: KernelResources,
    /// ptxas's report for this entry point (spills, stack, barriers).
    pub ptxas: Option<PtxasFunction>,
    /// The target the cubin was built for.
    pub arch: Arch,
    /// The cache key of the module (hex sha256 of source, options, NVRTC version).
    pub module_key: String,
}

impl Kernel {
    /// Allow launches with up to `bytes` of dynamic shared memory (needed past
    /// 48 KiB; the device's opt-in limit is [`Gpu::max_smem_per_block_optin`]).
    pub fn set_max_dynamic_smem(&mut self, bytes: u32) -> Result<(), GpuError> {
        let value = i32::try_from(bytes)
            .map_err(|_| GpuError::InvalidArgument(format!("{bytes} bytes of shared memory")))?;
        self.func
            .set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                value,
            )
            .map_err(|e| {
                GpuError::Driver(format!(
                    "{}: raising dynamic shared memory to {bytes} bytes (static {} bytes): {e:?}",
                    self.name, self.resources.static_smem_bytes
                ))
            })?;
        self.resources = read_resources(&self.func)?;
        Ok(())
    }
}

fn read_resources(func: &CudaFunction) -> Result<KernelResources, GpuError> {
    let get =
        |attribute| -> Result<u32, GpuError> { Ok(func.get_attribute(attribute)?.max(0) as u32) };
    Ok(KernelResources {
        registers: get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        static_smem_bytes: get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
        local_bytes: get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        max_threads_per_block: get(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        max_dynamic_smem_bytes: get(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        )?,
    })
}

/// Which CUDA context a plan's kernels were loaded into ([`Gpu::context_id`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContextId(usize);

/// One device, its context and the stream every launch goes to.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    compiler: Compiler,
    arch: Arch,
    name: String,
    compute_capability: (i32, i32),
    /// Loaded kernels by (module key, entry): repeated `kernel()` calls reuse the module.
    loaded: Mutex<HashMap<(String, String), Kernel>>,
}

impl Gpu {
    /// Open device `ordinal` with a context of its own (its primary context)
    /// and launch on that context's legacy default stream. Fails with
    /// `NoDriver`, `NoDevice`, `NoNvrtc` or `NoToolkitHeaders` (never panics) on
    /// machines without a GPU stack.
    ///
    /// ```
    /// use ssm_gpu::{Gpu, GpuError};
    ///
    /// match Gpu::new(0) {
    ///     Ok(gpu) => println!("{}", gpu.describe()),
    ///     // What a machine without a GPU, a driver or NVRTC gets: a typed error.
    ///     Err(e @ (GpuError::NoDriver(_)
    ///     | GpuError::NoDevice(_)
    ///     | GpuError::NoNvrtc(_)
    ///     | GpuError::NoToolkitHeaders { .. })) => println!("no GPU: {e}"),
    ///     Err(e) => panic!("unexpected: {e}"),
    /// }
    /// ```
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver(
                "libcuda.so.1 is not on the dynamic loader's path".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(classify_init_error)?;
        if count <= 0 {
            return Err(GpuError::NoDevice(
                "the driver reports no CUDA device".into(),
            ));
        }
        if ordinal >= count as usize {
            return Err(GpuError::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(classify_init_error)?;
        // The legacy default stream: one stream, and cudarc skips its per-buffer
        // event tracking (which only multi-stream use needs).
        let stream = ctx.default_stream();
        Self::on(stream)
    }

    /// Launch on the caller's `stream` (and its context): how upstream code (a
    /// candle device, a server with a stream per request, a CUDA-graph capture)
    /// puts our kernels in its own ordering. Every launch of every plan made
    /// with this `Gpu` is enqueued on `stream` without synchronising; kernels
    /// are compiled and loaded into the stream's context when a plan is built.
    ///
    /// Capturing launches into a CUDA graph needs a stream other than the
    /// legacy default one, and the context's event tracking off
    /// (`CudaContext::disable_event_tracking`, before the buffers are made):
    /// cudarc otherwise makes each launch wait on events recorded outside the
    /// capture, which the driver refuses.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Self, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver(
                "libcuda.so.1 is not on the dynamic loader's path".into(),
            ));
        }
        Self::on(stream)
    }

    /// Everything past the context: device facts, the target and the compiler.
    fn on(stream: Arc<CudaStream>) -> Result<Self, GpuError> {
        let ctx = stream.context().clone();
        let compute_capability = ctx.compute_capability()?;
        let name = ctx.name()?;
        let arch = match std::env::var(ARCH_ENV) {
            Ok(value) if !value.is_empty() => value.parse().map_err(GpuError::InvalidArgument)?,
            _ => Arch::for_compute_capability(compute_capability.0, compute_capability.1)
                .ok_or_else(|| {
                    GpuError::NoDevice(format!(
                        "{name} has compute capability {}.{}; kernels are built for sm_80 and sm_90",
                        compute_capability.0, compute_capability.1
                    ))
                })?,
        };
        let compiler = Compiler::from_env()?;
        Ok(Gpu {
            ctx,
            stream,
            compiler,
            arch,
            name,
            compute_capability,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    /// The identity of this `Gpu`'s context, which plans record when they load
    /// their kernels: a plan's functions and buffers are only valid in it.
    pub fn context_id(&self) -> ContextId {
        ContextId(self.ctx.cu_ctx() as usize)
    }

    /// `Ok` when `plan_context` (a plan's [`ContextId`]) is this `Gpu`'s
    /// context; otherwise the typed error that a launch in another context
    /// (whose kernels and buffers are not valid here) must become.
    pub fn expect_context(&self, plan_context: ContextId, what: &str) -> Result<(), GpuError> {
        if plan_context == self.context_id() {
            Ok(())
        } else {
            Err(GpuError::InvalidArgument(format!(
                "{what} was planned in CUDA context {:#x} and launched with a Gpu of context {:#x}: \
                 build the plan with the Gpu (context and stream) that launches it",
                plan_context.0,
                self.context_id().0
            )))
        }
    }

    /// The CUDA context every plan built with this `Gpu` belongs to.
    pub fn ctx(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every launch and copy of this `Gpu` is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The NVRTC compiler (with its cache and pack) this `Gpu` loads kernels through.
    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }
    /// The target kernels are compiled for (from the device, or `SSM_CUDA_ARCH`).
    pub fn arch(&self) -> Arch {
        self.arch
    }
    /// The device's name, as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.name
    }
    /// `(major, minor)` compute capability.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// One line: device, arch and where sources, headers and NVRTC come from.
    pub fn describe(&self) -> String {
        format!(
            "{} (cc {}.{}, compiling for {}); {}",
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.arch,
            self.compiler.describe()
        )
    }

    /// Streaming multiprocessors on the device.
    pub fn multiprocessor_count(&self) -> Result<u32, GpuError> {
        self.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
    }
    /// The most shared memory one block may use after opting in.
    pub fn max_smem_per_block_optin(&self) -> Result<u32, GpuError> {
        self.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    }
    /// L2 cache size in bytes.
    pub fn l2_cache_bytes(&self) -> Result<u32, GpuError> {
        self.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
    }
    /// The limits kernel selection plans from, read from this device's attributes.
    pub fn limits(&self) -> Result<DeviceLimits, GpuError> {
        use CUdevice_attribute::*;
        // The driver reports no reserved amount before CUDA 11; 1 KiB is what sm_80
        // and sm_90 reserve.
        let reserved = self
            .attribute(CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK)
            .unwrap_or(1024);
        Ok(DeviceLimits {
            sm_count: self.multiprocessor_count()?,
            smem_per_block_optin: self.max_smem_per_block_optin()?,
            smem_per_sm: self
                .attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
            smem_reserved_per_block: reserved,
            registers_per_sm: self
                .attribute(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR)?,
            register_unit_per_warp: 256,
            max_threads_per_sm: self
                .attribute(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)?,
            max_blocks_per_sm: self.attribute(CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR)?,
            l2_bytes: self.l2_cache_bytes()?,
        })
    }
    fn attribute(&self, attribute: CUdevice_attribute) -> Result<u32, GpuError> {
        Ok(self.ctx.attribute(attribute)?.max(0) as u32)
    }

    /// Compile (through the on-disk cache) and load `entry` from `src` with `-D` defines.
    pub fn kernel(
        &self,
        src: &KernelSource,
        entry: &str,
        defines: &[(&str, String)],
    ) -> Result<Kernel, GpuError> {
        let output = self.compiler.compile(src, defines, self.arch)?;
        let memo_key = (output.key.clone(), entry.to_string());
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kernel) = loaded.get(&memo_key) {
            let mut kernel = kernel.clone();
            // Attributes may have changed through another handle (set_max_dynamic_smem).
            kernel.resources = read_resources(&kernel.func)?;
            return Ok(kernel);
        }
        let module = self
            .ctx
            .load_module(Ptx::from_binary(output.module.cubin))?;
        let func = module.load_function(entry).map_err(|e| match e.0 {
            CUresult::CUDA_ERROR_NOT_FOUND => GpuError::MissingEntry {
                file: src.path.to_string(),
                entry: entry.to_string(),
            },
            _ => GpuError::from(e),
        })?;
        let kernel = Kernel {
            resources: read_resources(&func)?,
            func,
            name: entry.to_string(),
            ptxas: find_entry(&output.functions, entry).cloned(),
            arch: self.arch,
            module_key: output.key,
        };
        loaded.insert(memo_key, kernel.clone());
        Ok(kernel)
    }

    /// [`Gpu::kernel`] for a [`KernelVariant`].
    pub fn kernel_variant(&self, variant: &KernelVariant) -> Result<Kernel, GpuError> {
        let defines: Vec<(&str, String)> = variant
            .defines
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        self.kernel(&variant.source, variant.entry, &defines)
    }

    /// Copy `host` into a new device buffer on this `Gpu`'s stream.
    pub fn upload<T: DeviceElement>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Allocate `len` elements filled with `T::POISON`.
    pub fn alloc_poisoned<T: DeviceElement>(&self, len: usize) -> Result<CudaSlice<T>, GpuError> {
        // SAFETY: every byte is written below, before anyone can read the buffer.
        let mut buffer = unsafe { self.stream.alloc::<T>(len) }?;
        self.poison(&mut buffer)?;
        Ok(buffer)
    }

    /// Overwrite `buffer` with `T::POISON` (e.g. before re-running a kernel into it).
    pub fn poison<T: DeviceElement>(&self, buffer: &mut CudaSlice<T>) -> Result<(), GpuError> {
        if buffer.is_empty() {
            return Ok(());
        }
        match uniform_byte(&T::POISON) {
            Some(byte) => {
                let num_bytes = buffer.num_bytes();
                let (pointer, _record) = buffer.device_ptr_mut(&self.stream);
                // SAFETY: the pointer covers `num_bytes` bytes of a live allocation
                // on this stream, and the pattern is a valid `T` (POISON itself).
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        pointer,
                        byte,
                        num_bytes,
                        self.stream.cu_stream(),
                    )
                }?;
            }
            None => {
                let host = vec![T::POISON; buffer.len()];
                self.stream.memcpy_htod(&host, buffer)?;
            }
        }
        Ok(())
    }

    /// Copy `dev` to a new host vector; returns once the copy (and the work
    /// queued on the stream before it) is done.
    pub fn download<T: DeviceElement>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>, GpuError> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// Wait for all work on the stream; reports errors of earlier launches.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }

    /// Time `launch` with CUDA events: `warmup` untimed runs, then `iters` timed
    /// ones, each between its own pair of events (so the samples show the
    /// spread, not just a mean). A launch that enqueues several kernels is
    /// timed as a whole.
    pub fn time(
        &self,
        warmup: usize,
        iters: usize,
        mut launch: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<Timing, GpuError> {
        if iters == 0 {
            return Err(GpuError::InvalidArgument(
                "timing needs at least one iteration".into(),
            ));
        }
        for _ in 0..warmup {
            launch()?;
        }
        let timed = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..iters)
            .map(|_| Ok((self.ctx.new_event(timed)?, self.ctx.new_event(timed)?)))
            .collect::<Result<Vec<_>, DriverError>>()?;
        self.stream.synchronize()?;
        for (start, end) in &events {
            start.record(&self.stream)?;
            launch()?;
            end.record(&self.stream)?;
        }
        self.stream.synchronize()?;
        let samples = events
            .iter()
            .map(|(start, end)| Ok(f64::from(start.elapsed_ms(end)?)))
            .collect::<Result<Vec<_>, DriverError>>()?;
        Timing::from_samples(samples)
    }
}

impl Gpu {
    /// Record what `launch` enqueues on this `Gpu`'s stream into a CUDA graph
    /// (nothing runs until the graph is launched). Needs a stream other than
    /// the legacy default one ([`Gpu::from_stream`]) and, where buffers were
    /// made with cudarc's event tracking on, fails with the driver's capture
    /// error: see [`Gpu::from_stream`].
    pub fn capture(
        &self,
        launch: impl FnOnce() -> Result<(), GpuError>,
    ) -> Result<CudaGraph, GpuError> {
        if self.stream.cu_stream().is_null() {
            return Err(GpuError::InvalidArgument(
                "CUDA graphs cannot capture the legacy default stream: make the Gpu with \
                 Gpu::from_stream(ctx.new_stream()?)"
                    .into(),
            ));
        }
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let launched = launch();
        // End the capture whatever happened, so the stream is usable again.
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        graph?.ok_or_else(|| GpuError::Driver("the capture recorded no work".into()))
    }

    /// Time `steps` consecutive launches replayed from one CUDA graph: the
    /// graph is captured once, replayed `warmup` times, then `iters` times
    /// between CUDA events; the samples are per launch (each replay's time
    /// divided by `steps`), which is what a decode loop driven by graphs pays.
    pub fn time_graph(
        &self,
        warmup: usize,
        iters: usize,
        steps: usize,
        mut launch: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<Timing, GpuError> {
        if steps == 0 {
            return Err(GpuError::InvalidArgument(
                "a graph needs at least one launch".into(),
            ));
        }
        let graph = self.capture(|| (0..steps).try_for_each(|_| launch()))?;
        graph.upload()?;
        let timing = self.time(warmup, iters, || Ok(graph.launch()?))?;
        let per_step = timing.samples.iter().map(|ms| ms / steps as f64).collect();
        Timing::from_samples(per_step)
    }
}

/// `Some(b)` when every byte of `value` is `b`.
fn uniform_byte<T: DeviceRepr>(value: &T) -> Option<u8> {
    // SAFETY: DeviceRepr types are plain data; we only read size_of::<T>() bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    };
    let first = *bytes.first()?;
    bytes.iter().all(|b| *b == first).then_some(first)
}

/// `cuInit` / device errors that mean "no GPU here" rather than "broken".
fn classify_init_error(e: DriverError) -> GpuError {
    match e.0 {
        CUresult::CUDA_ERROR_NO_DEVICE | CUresult::CUDA_ERROR_INVALID_DEVICE => {
            GpuError::NoDevice(format!("{e:?}"))
        }
        CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
        | CUresult::CUDA_ERROR_STUB_LIBRARY
        | CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            GpuError::NoDriver(format!("{e:?}"))
        }
        _ => GpuError::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn poison_is_nan_and_a_uniform_byte() {
        assert!(f32::POISON.is_nan() && f64::POISON.is_nan());
        assert!(f16::POISON.is_nan() && bf16::POISON.is_nan());
        assert_eq!(uniform_byte(&f32::POISON), Some(0xff));
        assert_eq!(uniform_byte(&f64::POISON), Some(0xff));
        assert_eq!(uniform_byte(&f16::POISON), Some(0xff));
        assert_eq!(uniform_byte(&bf16::POISON), Some(0xff));
        assert_eq!(uniform_byte(&1.0f32), None);
    }

    #[test]
    fn without_a_driver_new_is_a_typed_error() {
        if driver_present() {
            eprintln!("SKIPPED without_a_driver_new_is_a_typed_error: this machine has libcuda");
            return;
        }
        match Gpu::new(0) {
            Err(e @ GpuError::NoDriver(_)) => assert!(e.is_unavailable()),
            Err(other) => panic!("expected NoDriver, got {other}"),
            Ok(_) => panic!("expected NoDriver, got a GPU"),
        }
    }
}
