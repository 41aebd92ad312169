//! Running a case on the GPU through each kernel crate's device-resident entry
//! point: compile once, upload once, then launch as often as the timer wants
//! with no host copies in the timed region.
//!
//! Entry points used:
//! - `mamba1_scan::cuda::{ScanPlan, ScanBuffers}` (forward scan);
//! - `mamba2_ssd::cuda::{SsdPlan, SsdDeviceInputs, SsdDeviceOutputs}` (SSD);
//! - `mamba2_ssd::cuda::backward::{SsdBwdPlan, SsdGradBuffers, SsdBwdWorkspace}`
//!   (SSD backward, after the forward for forward+backward cases);
//! - `ssm_gpu::decode::{DecodeKernel, launch_decode_step}` with each family's
//!   `decode_cuda::DeviceStepArgs` (decode);
//! - `ssm_gpu::selftest` (`ssm_selftest_axpy`, a streaming kernel: the card's
//!   bandwidth and a known answer for the telemetry path).
//!
//! Small problems fit in the 50 MB L2 and would be timed from cache: inputs
//! rotate over enough buffer sets ("slots") that together they cover 4x the
//! L2, so every timed call reads from HBM as a real layer would.

use half::{bf16, f16};
use mamba1_scan::decode_cuda::Mamba1Decode;
use mamba2_ssd::decode_cuda::Mamba2Decode;
use ssm_core::decode::StepInputs;
use ssm_core::Element;
use ssm_core::{DType, Result, SsmError};
use ssm_gpu::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use ssm_gpu::decode::{
    launch_decode_step_state, DecodeFamily, DecodeKernel, DeviceStepInputs, StepArgs,
};
use ssm_gpu::{DeviceElement, Gpu, KernelResources, PtxasFunction};
use ssm_telemetry::problem::{Pass, Problem, SkipKind, StreamShape};
use ssm_telemetry::sram::LaunchShape;
use ssm_telemetry::traffic::cost_of;

use ssm_telemetry::record::Verification;

use crate::check::{
    verify_scan, verify_scan_backward, verify_ssd, verify_ssd_backward, verify_step_stored,
    StepShape,
};
use crate::inputs::{fill, Dist, Mamba1Host, SsdHost, StepHost};
use crate::suite::{Backend, Case};

/// A kernel one call launches, with what is needed for its SRAM record.
#[derive(Clone, Debug)]
pub struct LaunchedKernel {
    /// The record's name: the entry point, with `#role` when one call launches the
    /// same entry point in two roles (SSD's state-only prepass).
    pub name: String,
    /// The entry point as the driver and ncu know it.
    pub entry: String,
    pub resources: KernelResources,
    pub ptxas: Option<PtxasFunction>,
    pub launch: LaunchShape,
}

/// A case ready to launch on the GPU.
pub trait GpuWork {
    /// Enqueue one call (asynchronous), on the next slot.
    fn launch(&mut self, gpu: &Gpu) -> Result<()>;
    /// The kernels one call launches, in launch order (for ncu's manifest).
    fn kernels(&self) -> Vec<LaunchedKernel>;
    /// Non-finite output elements after the calls so far (poisoned NaN outputs
    /// that a kernel left unwritten count here).
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize>;
    /// Run the first call (slot 0, from the uploaded state, outputs poisoned)
    /// and check it against the f64 oracle on the case's own inputs
    /// ([`crate::check`]). Called once, before any other launch.
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification>;
}

/// Buffer sets needed so that `bytes_per_call` rotated over them covers 4x L2.
pub fn rotation_slots(l2_bytes: usize, bytes_per_call: u64) -> usize {
    let cover = 4 * l2_bytes as u64;
    (cover.div_ceil(bytes_per_call.max(1)) as usize).clamp(1, 64)
}

fn count_bad<T: DeviceElement>(gpu: &Gpu, buf: &CudaSlice<T>) -> Result<usize> {
    Ok(gpu
        .download(buf)?
        .iter()
        .filter(|v| !v.to_f64().is_finite())
        .count())
}

/// A call's output and (when returned) final states, on the host, for the check.
type HostOutputs<T> = (Vec<T>, Option<Vec<f32>>);

fn download_outputs<T: DeviceElement>(
    gpu: &Gpu,
    out: &CudaSlice<T>,
    final_states: Option<&CudaSlice<f32>>,
) -> Result<HostOutputs<T>> {
    let states = download_opt(gpu, final_states)?;
    Ok((gpu.download(out)?, states))
}

/// An optional buffer (a gradient or state the call may not produce) on the host.
fn download_opt<T: DeviceElement>(gpu: &Gpu, buf: Option<&CudaSlice<T>>) -> Result<Option<Vec<T>>> {
    Ok(buf.map(|b| gpu.download(b)).transpose()?)
}

/// The slot of the next call: calls rotate through the `slots` buffer sets
/// (module docs: so that each reads from HBM, not L2).
fn next_slot(next: &mut usize, slots: usize) -> usize {
    let slot = *next % slots;
    *next += 1;
    slot
}

fn unsupported(what: String) -> SsmError {
    SsmError::Unsupported {
        implementation: "ssm-benches GPU runner",
        what,
    }
}

/// Compile, upload and allocate `case` on `gpu`. `Unsupported` means the
/// kernel does not handle this shape (the runner reports it as skipped).
pub fn prepare(gpu: &Gpu, case: &Case, seed: u64) -> Result<Box<dyn GpuWork>> {
    if case.backend != Backend::Cuda {
        return Err(unsupported(format!("{:?} cases on the GPU", case.backend)));
    }
    let l2 = gpu.l2_cache_bytes()? as usize;
    let slots = rotation_slots(l2, cost_of(&case.problem, case.pass).bytes());
    match case.problem.dtype() {
        DType::F32 => prepare_typed::<f32>(gpu, case, seed, slots),
        DType::F16 => prepare_typed::<f16>(gpu, case, seed, slots),
        DType::Bf16 => prepare_typed::<bf16>(gpu, case, seed, slots),
        DType::F64 => Err(unsupported("f64 inputs".into())),
    }
}

/// The kernel label of the tiling a decode case launches by default at its
/// batch (`mamba2.decode.bf16.n128.r4w4cs` at b <= 8), or `None` for other
/// problems.
pub fn decode_default_label(case: &Case) -> Option<String> {
    fn label<F: StepFamily>(s: &F::Shape, dtype: DType) -> Option<String> {
        let t = F::tiling_for_batch(dtype, F::batch_of(s));
        ssm_gpu::decode::decode_variant::<F>(dtype, F::d_state(s), t)
            .ok()
            .map(|v| v.label)
    }
    match case.problem {
        Problem::Mamba1Step(s) => label::<Mamba1Decode>(&s, case.problem.dtype()),
        Problem::Mamba2Step(s) => label::<Mamba2Decode>(&s, case.problem.dtype()),
        _ => None,
    }
}

/// A decode case once per tiling its family's `candidates()` lists (the
/// default first), each labelled with its tiling: what `bench_decode_graph
/// --tilings` compares. Other problems are `Unsupported`.
pub fn prepare_decode_tilings(
    gpu: &Gpu,
    case: &Case,
    seed: u64,
) -> Result<Vec<(String, Box<dyn GpuWork>)>> {
    let l2 = gpu.l2_cache_bytes()? as usize;
    let slots = rotation_slots(l2, cost_of(&case.problem, case.pass).bytes());
    fn all<F: StepFamily, T: DeviceElement>(
        gpu: &Gpu,
        s: &F::Shape,
        seed: u64,
        slots: usize,
    ) -> Result<Vec<(String, Box<dyn GpuWork>)>> {
        // The tiling launched at this batch first, then the other candidates.
        let default = F::tiling_for_batch(T::DTYPE, F::batch_of(s));
        let mut tilings = vec![default];
        tilings.extend(F::candidates().into_iter().filter(|&t| t != default));
        tilings
            .into_iter()
            .map(|t| {
                let (work, registers) = step_work_for::<F, T>(gpu, s, seed, slots, t)?;
                let variant = ssm_gpu::decode::decode_variant::<F>(T::DTYPE, F::d_state(s), t)?;
                let label = format!(
                    "{} ({} registers){} {t:?}",
                    variant.label,
                    registers,
                    if t == default {
                        " [default at this batch]"
                    } else {
                        ""
                    }
                );
                Ok((label, work))
            })
            .collect()
    }
    match (case.problem, case.problem.dtype()) {
        (Problem::Mamba1Step(s), DType::F32) => all::<Mamba1Decode, f32>(gpu, &s, seed, slots),
        (Problem::Mamba1Step(s), DType::Bf16) => all::<Mamba1Decode, bf16>(gpu, &s, seed, slots),
        (Problem::Mamba1Step(s), DType::F16) => all::<Mamba1Decode, f16>(gpu, &s, seed, slots),
        (Problem::Mamba2Step(s), DType::F32) => all::<Mamba2Decode, f32>(gpu, &s, seed, slots),
        (Problem::Mamba2Step(s), DType::Bf16) => all::<Mamba2Decode, bf16>(gpu, &s, seed, slots),
        (Problem::Mamba2Step(s), DType::F16) => all::<Mamba2Decode, f16>(gpu, &s, seed, slots),
        _ => Err(unsupported(format!("tilings of {}", case.id()))),
    }
}

/// A decode step of family `F` with `tiling`, its state buffer of the type the
/// tiling stores the state in (f32, bf16 or f16), and the kernel's registers.
fn step_work_for<F: StepFamily, T: DeviceElement>(
    gpu: &Gpu,
    s: &F::Shape,
    seed: u64,
    slots: usize,
    tiling: F::Tiling,
) -> Result<(Box<dyn GpuWork>, usize)> {
    let geometry = F::geometry(F::d_state(s), T::DTYPE, tiling)?;
    fn boxed<F: StepFamily, T: DeviceElement, S: DeviceElement>(
        w: StepWork<F, T, S>,
    ) -> (Box<dyn GpuWork>, usize) {
        let registers = w.kernel.kernel().resources.registers as usize;
        (Box::new(w), registers)
    }
    Ok(match F::block(&geometry).state_dtype {
        DType::Bf16 => boxed(StepWork::<F, T, bf16>::new(gpu, s, seed, slots, tiling)?),
        DType::F16 => boxed(StepWork::<F, T, f16>::new(gpu, s, seed, slots, tiling)?),
        _ => boxed(StepWork::<F, T, f32>::new(gpu, s, seed, slots, tiling)?),
    })
}

/// A decode case with the tiling its family launches at its batch, the state
/// cache stored as `state_dtype` (f32: what [`prepare`] builds; bf16 / f16:
/// Mamba-2's v6), and that kernel's label: what `bench_decode_graph
/// --state-dtypes` times side by side. Other problems are `Unsupported`, and so
/// is a 16-bit state for Mamba-1.
pub fn prepare_decode_state(
    gpu: &Gpu,
    case: &Case,
    seed: u64,
    state_dtype: DType,
) -> Result<(String, Box<dyn GpuWork>)> {
    let l2 = gpu.l2_cache_bytes()? as usize;
    let slots = rotation_slots(l2, cost_of(&case.problem, case.pass).bytes());
    fn one<F: StepFamily, T: DeviceElement>(
        gpu: &Gpu,
        s: &F::Shape,
        seed: u64,
        slots: usize,
        state_dtype: DType,
    ) -> Result<(String, Box<dyn GpuWork>)> {
        let t = F::with_state_dtype(F::tiling_for_batch(T::DTYPE, F::batch_of(s)), state_dtype);
        let label = ssm_gpu::decode::decode_variant::<F>(T::DTYPE, F::d_state(s), t)?.label;
        Ok((label, step_work_for::<F, T>(gpu, s, seed, slots, t)?.0))
    }
    match (case.problem, case.problem.dtype()) {
        (Problem::Mamba1Step(s), DType::F32) => {
            one::<Mamba1Decode, f32>(gpu, &s, seed, slots, state_dtype)
        }
        (Problem::Mamba1Step(s), DType::Bf16) => {
            one::<Mamba1Decode, bf16>(gpu, &s, seed, slots, state_dtype)
        }
        (Problem::Mamba1Step(s), DType::F16) => {
            one::<Mamba1Decode, f16>(gpu, &s, seed, slots, state_dtype)
        }
        (Problem::Mamba2Step(s), DType::F32) => {
            one::<Mamba2Decode, f32>(gpu, &s, seed, slots, state_dtype)
        }
        (Problem::Mamba2Step(s), DType::Bf16) => {
            one::<Mamba2Decode, bf16>(gpu, &s, seed, slots, state_dtype)
        }
        (Problem::Mamba2Step(s), DType::F16) => {
            one::<Mamba2Decode, f16>(gpu, &s, seed, slots, state_dtype)
        }
        _ => Err(unsupported(format!("a decode state for {}", case.id()))),
    }
}

fn prepare_typed<T: DeviceElement>(
    gpu: &Gpu,
    case: &Case,
    seed: u64,
    slots: usize,
) -> Result<Box<dyn GpuWork>> {
    Ok(match case.problem {
        Problem::Mamba1Scan(s) if case.pass != Pass::Forward => Box::new(ScanBwdWork::<T>::new(
            gpu,
            Mamba1Host::generate(&s, seed),
            case.pass,
            case.scan_bwd,
            slots,
            seed,
        )?),
        Problem::Mamba1Scan(s) => Box::new(ScanWork::<T>::new(
            gpu,
            Mamba1Host::generate(&s, seed),
            slots,
        )?),
        Problem::Ssd(s) if case.pass != Pass::Forward => Box::new(SsdBwdWork::<T>::new(
            gpu,
            SsdHost::generate(&s, seed),
            case.ssd_options(),
            case.pass,
            case.bwd_tensor_cores,
            slots,
            seed,
        )?),
        Problem::Ssd(s) => Box::new(SsdWork::<T>::new(
            gpu,
            SsdHost::generate(&s, seed),
            case.ssd_options(),
            slots,
        )?),
        Problem::Mamba1Step(s) => Box::new(StepWork::<Mamba1Decode, T, f32>::new(
            gpu,
            &s,
            seed,
            slots,
            Mamba1Decode::tiling_for_batch(T::DTYPE, s.batch),
        )?),
        Problem::Mamba2Step(s) => Box::new(StepWork::<Mamba2Decode, T, f32>::new(
            gpu,
            &s,
            seed,
            slots,
            Mamba2Decode::tiling_for_batch(T::DTYPE, s.batch),
        )?),
        Problem::Stream(s) => Box::new(StreamWork::new(gpu, &s, seed)?),
    })
}

fn launched(kernel: &ssm_gpu::Kernel, threads: u32, dynamic_smem_bytes: u32) -> LaunchedKernel {
    LaunchedKernel {
        name: kernel.name.clone(),
        entry: kernel.name.clone(),
        resources: kernel.resources,
        ptxas: kernel.ptxas.clone(),
        launch: LaunchShape {
            threads_per_block: threads,
            dynamic_smem_bytes,
        },
    }
}

// ------------------------------------------------------------------ Mamba-1 scan

/// The one kernel a scan forward plan launches.
fn scan_forward_kernel(plan: &mamba1_scan::cuda::ScanPlan) -> LaunchedKernel {
    launched(
        &plan.kernel,
        plan.config.threads as u32,
        plan.config.smem_bytes() as u32,
    )
}

struct ScanWork<T> {
    /// The inputs every slot holds (the oracle's inputs for [`GpuWork::verify`]).
    host: Mamba1Host<T>,
    plan: mamba1_scan::cuda::ScanPlan,
    bufs: Vec<mamba1_scan::cuda::ScanBuffers<T>>,
    next: usize,
}

impl<T: DeviceElement> ScanWork<T> {
    fn new(gpu: &Gpu, host: Mamba1Host<T>, slots: usize) -> Result<Self> {
        let params = host.params();
        let problem = mamba1_scan::cuda::ScanProblem::of(&params)?;
        let plan = mamba1_scan::cuda::ScanPlan::new(gpu, &problem, Default::default())?;
        let bufs = (0..slots)
            .map(|_| mamba1_scan::cuda::ScanBuffers::upload(gpu, &params))
            .collect::<Result<Vec<_>>>()?;
        Ok(ScanWork {
            host,
            plan,
            bufs,
            next: 0,
        })
    }
}

impl<T: DeviceElement> GpuWork for ScanWork<T> {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let slot = next_slot(&mut self.next, self.bufs.len());
        self.plan.launch(gpu, &mut self.bufs[slot])
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        vec![scan_forward_kernel(&self.plan)]
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        count_bad(gpu, &self.bufs[0].out)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        self.next = 0;
        self.launch(gpu)?;
        let slot = &self.bufs[0];
        let (out, states) = download_outputs(gpu, &slot.out, slot.final_states.as_ref())?;
        verify_scan(&self.host, &out, states.as_deref())
    }
}

// ------------------------------------------------------------------ Mamba-1 scan backward

/// One slot of the backward: the forward's inputs (and outputs, written by a
/// forward+backward call), the incoming gradient and the gradients.
struct ScanBwdSlot<T> {
    fwd: mamba1_scan::cuda::ScanBuffers<T>,
    d_out: CudaSlice<T>,
    grads: mamba1_scan::cuda::ScanGradBuffers<T>,
}

struct ScanBwdWork<T> {
    host: Mamba1Host<T>,
    d_out: Vec<T>,
    /// The forward, for [`Pass::ForwardBackward`].
    fwd: Option<mamba1_scan::cuda::ScanPlan>,
    bwd: mamba1_scan::cuda::ScanBwdPlan,
    /// Scratch shared by the slots (calls run one after another on the stream).
    ws: mamba1_scan::cuda::ScanBwdWorkspace,
    slots: Vec<ScanBwdSlot<T>>,
    next: usize,
}

impl<T: DeviceElement> ScanBwdWork<T> {
    fn new(
        gpu: &Gpu,
        host: Mamba1Host<T>,
        pass: Pass,
        options: mamba1_scan::cuda::BwdOptions,
        slots: usize,
        seed: u64,
    ) -> Result<Self> {
        let params = host.params();
        let problem = mamba1_scan::cuda::ScanProblem::of(&params)?;
        let bwd = mamba1_scan::cuda::ScanBwdPlan::with_options(gpu, &problem, options)?;
        // With forward checkpoints the forward is the training one (it writes them).
        let forward = |gpu: &Gpu| -> Result<mamba1_scan::cuda::ScanPlan> {
            if options.forward_checkpoints {
                mamba1_scan::cuda::ScanPlan::for_training(gpu, &problem, Default::default(), &bwd)
            } else {
                mamba1_scan::cuda::ScanPlan::new(gpu, &problem, Default::default())
            }
        };
        let fwd = match pass {
            Pass::ForwardBackward => Some(forward(gpu)?),
            _ => None,
        };
        let mut ws = bwd.workspace(gpu)?;
        let d_out: Vec<T> = fill(problem.io_len(), seed + 101, Dist::Normal);
        let mut slots = (0..slots)
            .map(|_| {
                Ok(ScanBwdSlot {
                    fwd: mamba1_scan::cuda::ScanBuffers::upload(gpu, &params)?,
                    d_out: gpu.upload(&d_out)?,
                    grads: mamba1_scan::cuda::ScanGradBuffers::alloc(gpu, &problem)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The backward alone with forward checkpoints: the training forward runs
        // once here (every slot holds the same inputs, so its checkpoints serve all).
        if pass == Pass::Backward && options.forward_checkpoints {
            if let Some(slot) = slots.first_mut() {
                let plan = forward(gpu)?;
                plan.launch_training(gpu, &mut slot.fwd, &mut ws)?;
                // Synchronises: the plan is dropped only after its launch ran.
                plan.take_device_error(gpu)?;
            }
        }
        Ok(ScanBwdWork {
            host,
            d_out,
            fwd,
            bwd,
            ws,
            slots,
            next: 0,
        })
    }
}

impl<T: DeviceElement> GpuWork for ScanBwdWork<T> {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let k = next_slot(&mut self.next, self.slots.len());
        let slot = &mut self.slots[k];
        if let Some(fwd) = &self.fwd {
            if self.bwd.config.forward_checkpoints {
                fwd.launch_training(gpu, &mut slot.fwd, &mut self.ws)?;
            } else {
                fwd.launch(gpu, &mut slot.fwd)?;
            }
        }
        self.bwd.launch(
            gpu,
            &slot.fwd,
            &slot.d_out,
            None,
            &mut slot.grads,
            &mut self.ws,
        )
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        let mut kernels = Vec::new();
        if let Some(fwd) = &self.fwd {
            kernels.push(scan_forward_kernel(fwd));
        }
        for (kernel, threads, smem) in self.bwd.kernels() {
            kernels.push(launched(kernel, threads, smem));
        }
        kernels
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        let g = &self.slots[0].grads;
        Ok(count_bad(gpu, &g.du)? + count_bad(gpu, &g.ddelta)? + count_bad(gpu, &g.db)?)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        self.next = 0;
        self.launch(gpu)?;
        let g = &self.slots[0].grads;
        let du = gpu.download(&g.du)?;
        let ddelta = gpu.download(&g.ddelta)?;
        let dz = download_opt(gpu, g.dz.as_ref())?;
        let dh0 = download_opt(gpu, g.dinitial_states.as_ref())?;
        verify_scan_backward(
            &self.host,
            &self.d_out,
            &du,
            &ddelta,
            dz.as_deref(),
            dh0.as_deref(),
        )
    }
}

// ------------------------------------------------------------------ SSD

/// The kernels an SSD forward plan launches, in the launch order of
/// `SsdPlan::launch`: the C·Bᵀ pre-kernel and the prepass when the plan has
/// them, then the main kernel.
fn ssd_forward_kernels(plan: &mamba2_ssd::cuda::SsdPlan) -> Vec<LaunchedKernel> {
    let config = plan.config();
    let mut kernels = Vec::new();
    if let Some(k) = plan.chunk_cb_kernel() {
        let threads = mamba2_ssd::cuda::plan::CHUNK_CB_THREADS;
        let mut cb = launched(k, threads, config.chunk_cb_smem_bytes() as u32);
        cb.name += "#chunk_cb";
        kernels.push(cb);
    }
    if let Some(k) = plan.prepass_kernel() {
        let mut prepass = launched(k, config.threads(), config.smem_bytes(true) as u32);
        prepass.name += "#prepass";
        kernels.push(prepass);
    }
    kernels.push(launched(
        plan.main_kernel(),
        config.threads(),
        config.smem_bytes(false) as u32,
    ));
    kernels
}

struct SsdWork<T> {
    /// The inputs every slot holds (the oracle's inputs for [`GpuWork::verify`]).
    host: SsdHost<T>,
    plan: mamba2_ssd::cuda::SsdPlan,
    inputs: Vec<mamba2_ssd::cuda::SsdDeviceInputs<T>>,
    outputs: Vec<mamba2_ssd::cuda::SsdDeviceOutputs<T>>,
    next: usize,
}

impl<T: DeviceElement> SsdWork<T> {
    fn new(
        gpu: &Gpu,
        host: SsdHost<T>,
        options: mamba2_ssd::cuda::CudaOptions,
        slots: usize,
    ) -> Result<Self> {
        let params = host.params();
        let opts = mamba2_ssd::cuda::CudaOptions {
            chunk_size: host.shape.chunk_size,
            ..options
        };
        let plan = mamba2_ssd::cuda::SsdPlan::new(gpu, &params, &opts)?;
        let inputs = (0..slots)
            .map(|_| mamba2_ssd::cuda::SsdDeviceInputs::upload(gpu, &params))
            .collect::<Result<Vec<_>>>()?;
        let outputs = (0..slots)
            .map(|_| plan.alloc_outputs::<T>(gpu))
            .collect::<Result<Vec<_>>>()?;
        Ok(SsdWork {
            host,
            plan,
            inputs,
            outputs,
            next: 0,
        })
    }
}

impl<T: DeviceElement> GpuWork for SsdWork<T> {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let slot = next_slot(&mut self.next, self.inputs.len());
        self.plan
            .launch(gpu, &self.inputs[slot], &mut self.outputs[slot])
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        ssd_forward_kernels(&self.plan)
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        count_bad(gpu, &self.outputs[0].out)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        self.next = 0;
        self.launch(gpu)?;
        let slot = &self.outputs[0];
        let (out, states) = download_outputs(gpu, &slot.out, slot.final_states.as_ref())?;
        verify_ssd(&self.host, &out, states.as_deref())
    }
}

// ------------------------------------------------------------------ SSD backward

/// The SSD backward (`mamba2_ssd::cuda::backward::SsdBwdPlan`, chunk = the
/// problem's), alone or after its forward ([`Pass::ForwardBackward`]: the
/// forward's plan with the case's options, then the backward, in one call).
/// The forward saves nothing for the backward (it recomputes the chunk
/// states), so the two share only the inputs.
struct SsdBwdWork<T> {
    host: SsdHost<T>,
    d_out: Vec<T>,
    fwd: Option<mamba2_ssd::cuda::SsdPlan>,
    bwd: mamba2_ssd::cuda::backward::SsdBwdPlan,
    /// Scratch shared by the slots (calls run one after another on the stream).
    ws: mamba2_ssd::cuda::backward::SsdBwdWorkspace,
    inputs: Vec<mamba2_ssd::cuda::SsdDeviceInputs<T>>,
    outputs: Vec<mamba2_ssd::cuda::SsdDeviceOutputs<T>>,
    d_outs: Vec<CudaSlice<T>>,
    grads: Vec<mamba2_ssd::cuda::backward::SsdGradBuffers<T>>,
    next: usize,
}

impl<T: DeviceElement> SsdBwdWork<T> {
    fn new(
        gpu: &Gpu,
        host: SsdHost<T>,
        options: mamba2_ssd::cuda::CudaOptions,
        pass: Pass,
        tensor_cores: bool,
        slots: usize,
        seed: u64,
    ) -> Result<Self> {
        let params = host.params();
        let chunk = host.shape.chunk_size;
        let fwd = match pass {
            Pass::ForwardBackward => Some(mamba2_ssd::cuda::SsdPlan::new(
                gpu,
                &params,
                &mamba2_ssd::cuda::CudaOptions {
                    chunk_size: chunk,
                    ..options
                },
            )?),
            _ => None,
        };
        // The timed problems return no final states: no d_final_states.
        let bwd = mamba2_ssd::cuda::backward::SsdBwdPlan::new_with(
            gpu,
            &params,
            false,
            chunk,
            tensor_cores,
        )?;
        let ws = bwd.workspace(gpu)?;
        let d_out: Vec<T> = fill(params.x.len(), seed + 101, Dist::Normal);
        let inputs = (0..slots)
            .map(|_| mamba2_ssd::cuda::SsdDeviceInputs::upload(gpu, &params))
            .collect::<Result<Vec<_>>>()?;
        let outputs = match &fwd {
            Some(f) => (0..slots)
                .map(|_| f.alloc_outputs::<T>(gpu))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let d_outs = (0..slots)
            .map(|_| gpu.upload(&d_out).map_err(SsmError::from))
            .collect::<Result<Vec<_>>>()?;
        let grads = (0..slots)
            .map(|_| bwd.alloc_grads::<T>(gpu))
            .collect::<Result<Vec<_>>>()?;
        Ok(SsdBwdWork {
            host,
            d_out,
            fwd,
            bwd,
            ws,
            inputs,
            outputs,
            d_outs,
            grads,
            next: 0,
        })
    }
}

impl<T: DeviceElement> GpuWork for SsdBwdWork<T> {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let k = next_slot(&mut self.next, self.inputs.len());
        if let Some(fwd) = &self.fwd {
            fwd.launch(gpu, &self.inputs[k], &mut self.outputs[k])?;
        }
        self.bwd.launch(
            gpu,
            &self.inputs[k],
            &self.d_outs[k],
            None,
            &mut self.grads[k],
            &mut self.ws,
        )
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        let mut kernels = self
            .fwd
            .as_ref()
            .map(ssd_forward_kernels)
            .unwrap_or_default();
        for k in self.bwd.kernels() {
            kernels.push(launched(k, mamba2_ssd::cuda::backward::BWD_THREADS, 0));
        }
        kernels
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        let g = &self.grads[0];
        Ok(count_bad(gpu, &g.dx)?
            + count_bad(gpu, &g.ddt)?
            + count_bad(gpu, &g.db)?
            + count_bad(gpu, &g.dc)?)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        self.next = 0;
        self.launch(gpu)?;
        let g = &self.grads[0];
        let dx = gpu.download(&g.dx)?;
        let ddt = gpu.download(&g.ddt)?;
        let dz = download_opt(gpu, g.dz.as_ref())?;
        let dinit = download_opt(gpu, g.dinitial_states.as_ref())?;
        verify_ssd_backward(
            &self.host,
            &self.d_out,
            &dx,
            &ddt,
            dz.as_deref(),
            dinit.as_deref(),
        )
    }
}

// ------------------------------------------------------------------ decode steps

/// Device copies of a decode step's tensors, `slots` sets side by side; the
/// state cache stored as `S`.
struct StepBuffers<T, S> {
    inputs: StepInputs<CudaSlice<T>, CudaSlice<f32>, CudaSlice<i64>>,
    state: CudaSlice<S>,
    out: CudaSlice<T>,
}

/// Upload `slots` copies of `host` (each slot its own tensors and state rows),
/// the state rounded to `S` (`host.state` is already representable in it).
fn upload_step<T: DeviceElement, S: DeviceElement>(
    gpu: &Gpu,
    host: &StepHost<T>,
    slots: usize,
    out_len: usize,
) -> Result<StepBuffers<T, S>> {
    let state: Vec<S> = host.state.iter().map(|&v| S::from_f32(v)).collect();
    let rep = |v: &[T]| -> Vec<T> { v.repeat(slots) };
    let rep32 = |v: &[f32]| -> Vec<f32> { v.repeat(slots) };
    let opt = |v: &[f32]| (!v.is_empty()).then(|| gpu.upload(&rep32(v))).transpose();
    Ok(StepBuffers {
        inputs: StepInputs {
            x: gpu.upload(&rep(&host.x))?,
            dt: gpu.upload(&rep(&host.dt))?,
            a: gpu.upload(&rep32(&host.a))?,
            b: gpu.upload(&rep(&host.b))?,
            c: gpu.upload(&rep(&host.c))?,
            d: opt(&host.d)?,
            z: (!host.z.is_empty())
                .then(|| gpu.upload(&rep(&host.z)))
                .transpose()?,
            dt_bias: opt(&host.dt_bias)?,
            state_batch_indices: None,
        },
        state: gpu.upload(&state.repeat(slots))?,
        out: gpu.alloc_poisoned::<T>(slots * out_len)?,
    })
}

/// The `s`-th of `slots` equal parts of a buffer's index range.
fn part(len: usize, slots: usize, s: usize) -> std::ops::Range<usize> {
    let n = len / slots;
    s * n..(s + 1) * n
}

/// What the decode bench needs of a family besides its launcher: its shape, its
/// host problem and the device arguments of one slot.
trait StepFamily: DecodeFamily {
    type Shape: Copy + 'static;
    fn host<T: Element>(s: &Self::Shape, seed: u64) -> StepHost<T>;
    fn d_state(s: &Self::Shape) -> usize;
    /// The batch of the case (it picks the default tiling).
    fn batch_of(s: &Self::Shape) -> usize;
    /// Output elements of one slot.
    fn out_len(s: &Self::Shape) -> usize;
    fn args<'v, T>(s: &Self::Shape, inputs: DeviceStepInputs<'v, T>) -> StepArgs<'v, Self, T>;
    fn step_shape(s: &Self::Shape) -> StepShape<'_>;
}

impl StepFamily for mamba1_scan::decode_cuda::Mamba1Decode {
    type Shape = ssm_telemetry::problem::Mamba1StepShape;
    fn host<T: Element>(s: &Self::Shape, seed: u64) -> StepHost<T> {
        StepHost::mamba1(s, seed)
    }
    fn d_state(s: &Self::Shape) -> usize {
        s.d_state
    }
    fn batch_of(s: &Self::Shape) -> usize {
        s.batch
    }
    fn out_len(s: &Self::Shape) -> usize {
        s.batch * s.d_inner
    }
    fn args<'v, T>(s: &Self::Shape, inputs: DeviceStepInputs<'v, T>) -> StepArgs<'v, Self, T> {
        mamba1_scan::decode_cuda::DeviceStepArgs {
            dims: ssm_core::decode::Mamba1StepDims {
                batch: s.batch,
                d_inner: s.d_inner,
                d_state: s.d_state,
                groups: s.groups,
                cache_rows: s.batch,
            },
            inputs,
            options: mamba1_scan::decode_cuda::StepOptions {
                dt_softplus: s.softplus,
            },
        }
    }
    fn step_shape(s: &Self::Shape) -> StepShape<'_> {
        StepShape::Mamba1(s)
    }
}

impl StepFamily for mamba2_ssd::decode_cuda::Mamba2Decode {
    type Shape = ssm_telemetry::problem::Mamba2StepShape;
    fn host<T: Element>(s: &Self::Shape, seed: u64) -> StepHost<T> {
        StepHost::mamba2(s, seed)
    }
    fn d_state(s: &Self::Shape) -> usize {
        s.d_state
    }
    fn batch_of(s: &Self::Shape) -> usize {
        s.batch
    }
    fn out_len(s: &Self::Shape) -> usize {
        s.batch * s.heads * s.head_dim
    }
    fn args<'v, T>(s: &Self::Shape, inputs: DeviceStepInputs<'v, T>) -> StepArgs<'v, Self, T> {
        mamba2_ssd::decode_cuda::DeviceStepArgs {
            dims: ssm_core::decode::Mamba2StepDims {
                batch: s.batch,
                heads: s.heads,
                head_dim: s.head_dim,
                d_state: s.d_state,
                groups: s.groups,
                cache_rows: s.batch,
            },
            inputs,
            options: mamba2_ssd::decode_cuda::StepOptions {
                // No D leaves the flag unread.
                d_per_head_dim: s.d == SkipKind::PerHeadDim,
                dt_softplus: s.softplus,
                dt_limit: ssm_core::mamba2::NO_DT_LIMIT,
            },
        }
    }
    fn step_shape(s: &Self::Shape) -> StepShape<'_> {
        StepShape::Mamba2(s)
    }
}

/// A decode step of either family, through
/// `ssm_gpu::decode::launch_decode_step_state`, the state cache stored as `S`
/// (f32, or Mamba-2's bf16 / f16 of v6).
struct StepWork<F: StepFamily, T, S> {
    /// Slot 0's inputs and initial state (the oracle's, for [`GpuWork::verify`];
    /// rounded to `S`, so both start from the same state).
    host: StepHost<T>,
    shape: F::Shape,
    kernel: DecodeKernel<F, T>,
    threads: u32,
    bufs: StepBuffers<T, S>,
    slots: usize,
    next: usize,
}

impl<F: StepFamily, T: DeviceElement, S: DeviceElement> StepWork<F, T, S> {
    fn new(gpu: &Gpu, s: &F::Shape, seed: u64, slots: usize, tiling: F::Tiling) -> Result<Self> {
        let kernel = DecodeKernel::<F, T>::new(gpu, F::d_state(s), tiling)?;
        let mut host = F::host::<T>(s, seed);
        for v in &mut host.state {
            *v = S::from_f32(*v).to_f32();
        }
        Ok(StepWork {
            threads: 32 * F::block(kernel.geometry()).warps as u32,
            kernel,
            bufs: upload_step(gpu, &host, slots, F::out_len(s))?,
            host,
            shape: *s,
            slots,
            next: 0,
        })
    }
}

impl<F: StepFamily, T: DeviceElement, S: DeviceElement> GpuWork for StepWork<F, T, S> {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let (k, b) = (self.slots, &mut self.bufs);
        let s = next_slot(&mut self.next, k);
        let inputs = b.inputs.as_ref().map(
            |v| v.slice(part(v.len(), k, s)),
            |v| v.slice(part(v.len(), k, s)),
            |v| v.slice(part(v.len(), k, s)),
        );
        let args = F::args(&self.shape, inputs);
        let state_range = part(b.state.len(), k, s);
        let out_range = part(b.out.len(), k, s);
        launch_decode_step_state(
            gpu,
            &self.kernel,
            &args,
            &mut b.state.slice_mut(state_range),
            &mut b.out.slice_mut(out_range),
        )
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        vec![launched(self.kernel.kernel(), self.threads, 0)]
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        count_bad(gpu, &self.bufs.out)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        self.next = 0;
        self.launch(gpu)?;
        let (k, b) = (self.slots, &self.bufs);
        let out = gpu.download(&b.out)?[part(b.out.len(), k, 0)].to_vec();
        let state: Vec<f32> = gpu.download(&b.state)?[part(b.state.len(), k, 0)]
            .iter()
            .map(|v| v.to_f32())
            .collect();
        verify_step_stored(
            &self.host,
            F::step_shape(&self.shape),
            &out,
            &state,
            S::DTYPE,
        )
    }
}

// ------------------------------------------------------------------ stream (self-test axpy)

const STREAM_THREADS: u32 = 256;

struct StreamWork {
    kernel: ssm_gpu::Kernel,
    out: CudaSlice<f32>,
    x: CudaSlice<f32>,
    y: CudaSlice<bf16>,
    n: i64,
    blocks: u32,
}

impl StreamWork {
    fn new(gpu: &Gpu, s: &StreamShape, seed: u64) -> Result<Self> {
        // The axpy reads an f32 and a bf16 and writes an f32 per element.
        if (s.read_bytes_per_element, s.write_bytes_per_element) != (6, 4) {
            return Err(unsupported(format!(
                "a stream of {} + {} bytes per element (the self-test axpy moves 6 + 4)",
                s.read_bytes_per_element, s.write_bytes_per_element
            )));
        }
        let kernel = gpu.kernel(
            &ssm_gpu::selftest::SELFTEST_SOURCE,
            "ssm_selftest_axpy",
            &[("SELFTEST_SCALE", "2.0f".into())],
        )?;
        let sms = gpu.multiprocessor_count()?;
        let blocks = (s.elements as u64)
            .div_ceil(u64::from(STREAM_THREADS))
            .min(u64::from(sms) * 16) as u32;
        Ok(StreamWork {
            out: gpu.alloc_poisoned::<f32>(s.elements)?,
            x: gpu.upload(&fill::<f32>(s.elements, seed, Dist::Normal))?,
            y: gpu.upload(&fill::<bf16>(s.elements, seed + 1, Dist::Normal))?,
            n: s.elements as i64,
            kernel,
            blocks,
        })
    }
}

impl GpuWork for StreamWork {
    fn launch(&mut self, gpu: &Gpu) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (STREAM_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `ssm_selftest_axpy(float* out, const float* x, const bf16* y, long long n)`
        // with three buffers of exactly `n` elements; the kernel is grid-stride
        // and bounds-checked on `n`.
        unsafe {
            gpu.stream()
                .launch_builder(&self.kernel.func)
                .arg(&mut self.out)
                .arg(&self.x)
                .arg(&self.y)
                .arg(&self.n)
                .launch(cfg)
        }
        .map_err(|e| SsmError::Backend(format!("ssm_selftest_axpy: {e:?}")))?;
        Ok(())
    }
    fn kernels(&self) -> Vec<LaunchedKernel> {
        vec![launched(&self.kernel, STREAM_THREADS, 0)]
    }
    fn bad_outputs(&self, gpu: &Gpu) -> Result<usize> {
        count_bad(gpu, &self.out)
    }
    fn verify(&mut self, gpu: &Gpu) -> Result<Verification> {
        // A known answer: out = SELFTEST_SCALE * x + y (the axpy's definition).
        self.launch(gpu)?;
        let (out, x, y) = (
            gpu.download(&self.out)?,
            gpu.download(&self.x)?,
            gpu.download(&self.y)?,
        );
        let got: Vec<f64> = out.iter().map(|v| f64::from(*v)).collect();
        let want: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(x, y)| f64::from(2.0f32.mul_add(*x, y.to_f32())))
            .collect();
        let c = ssm_core::tolerance::compare(&got, &want);
        let budget = 1e-6;
        Ok(Verification {
            reference: "known answer 2x + y".into(),
            sampled: "all elements".into(),
            rel_l2: c.rel_l2,
            max_abs: c.max_abs,
            budget,
            state_rel_l2: None,
            state_budget: None,
            passed: c.passes(budget) && c.non_finite == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_covers_four_l2_caches() {
        let l2 = 50 << 20;
        assert_eq!(rotation_slots(l2, 1 << 30), 1);
        assert_eq!(rotation_slots(l2, 50 << 20), 4);
        assert_eq!(rotation_slots(l2, 1), 64, "capped");
        assert_eq!(part(12, 3, 2), 8..12);
    }
}
