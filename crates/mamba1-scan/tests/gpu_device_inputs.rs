//! The scan as upstream code calls it (issue 16): on the caller's stream, on
//! views into larger allocations, captured in a CUDA graph, and with hostile
//! device-resident `cu_seqlens`, which the kernel must reject without reading
//! or writing out of bounds (the device run also executes this binary under
//! compute-sanitizer memcheck: `SANITIZE_TESTS='*gpu_device_inputs'`).
//! Skips loudly without a GPU (`SSM_REQUIRE_GPU=1` turns the skip into a
//! failure).

use std::sync::Arc;

use mamba1_scan::cuda::{
    selective_scan_backward_cuda, selective_scan_cuda, ScanBuffers, ScanBwdPlan, ScanGradBuffers,
    ScanPlan, ScanProblem, ScanViews,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ssm_core::mamba1::{BcInput, Mamba1Dims, SelectiveScanParams};
use ssm_core::SsmError;
use ssm_gpu::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use ssm_gpu::cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, Gpu};

/// Host inputs of one varlen scan with every option, f32.
struct Inputs {
    dims: Mamba1Dims,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    z: Vec<f32>,
    bias: Vec<f32>,
    h0: Vec<f32>,
    cu: Vec<i64>,
}

impl Inputs {
    fn new(lengths: &[usize], d_inner: usize, d_state: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seqlen: usize = lengths.iter().sum();
        let dims = Mamba1Dims::new(1, d_inner, d_state, seqlen);
        let mut v = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let io = d_inner * seqlen;
        let mut cu = vec![0i64];
        for &l in lengths {
            cu.push(cu.last().unwrap() + l as i64);
        }
        Inputs {
            dims,
            u: v(io, -1.0, 1.0),
            delta: v(io, -3.0, 0.5),
            a: v(d_inner * d_state, -2.0, -0.1),
            b: v(d_state * seqlen, -1.0, 1.0),
            c: v(d_state * seqlen, -1.0, 1.0),
            d: v(d_inner, -1.0, 1.0),
            z: v(io, -1.0, 1.0),
            bias: v(d_inner, -1.0, 0.5),
            h0: v(lengths.len() * d_inner * d_state, -1.0, 1.0),
            cu,
        }
    }

    fn params(&self) -> SelectiveScanParams<'_, f32> {
        let mut p = SelectiveScanParams::new(
            self.dims,
            &self.u,
            &self.delta,
            &self.a,
            BcInput::Grouped {
                groups: 1,
                data: &self.b,
            },
            BcInput::Grouped {
                groups: 1,
                data: &self.c,
            },
        );
        p.d = Some(&self.d);
        p.z = Some(&self.z);
        p.delta_bias = Some(&self.bias);
        p.delta_softplus = true;
        p.initial_states = Some(&self.h0);
        p.cu_seqlens = Some(&self.cu);
        p.return_final_states = true;
        p
    }
}

/// The offset of every tensor inside its allocation in the views test.
const PAD: usize = 16;

fn poison_outputs(gpu: &Gpu, bufs: &mut ScanBuffers<f32>) {
    gpu.poison(&mut bufs.out).unwrap();
    if let Some(s) = bufs.final_states.as_mut() {
        gpu.poison(s).unwrap();
    }
}

#[test]
fn hostile_device_cu_seqlens_become_a_typed_error_and_touch_nothing_out_of_bounds() {
    let Some(gpu) = test_gpu_or_skip("hostile_device_cu_seqlens") else {
        return;
    };
    let inputs = Inputs::new(&[40, 0, 97, 63], 48, 16, 1);
    let params = inputs.params();
    let l = inputs.dims.seqlen as i64;
    let problem = ScanProblem::of(&params).unwrap();
    let plan = ScanPlan::new(&gpu, &problem, Default::default()).unwrap();
    let mut bufs = ScanBuffers::upload(&gpu, &params).unwrap();
    let hostile: Vec<(&str, Vec<i64>)> = vec![
        ("past the end", vec![0, 40, 40, 300, l]),
        ("negative", vec![0, -5, 40, 137, l]),
        ("decreasing", vec![0, 120, 40, 137, l]),
        ("first not 0", vec![7, 40, 40, 137, l]),
        ("last not L", vec![0, 40, 40, 137, l - 1]),
        ("last past L", vec![0, 40, 40, 137, l + 1000]),
        ("extremes", vec![i64::MIN, i64::MAX, 0, i64::MAX, i64::MIN]),
        ("all L", vec![l; 5]),
    ];
    for (what, cu) in &hostile {
        poison_outputs(&gpu, &mut bufs);
        gpu.stream()
            .memcpy_htod(cu, bufs.cu_seqlens.as_mut().unwrap())
            .unwrap();
        plan.launch(&gpu, &mut bufs).unwrap();
        gpu.synchronize().unwrap();
        match plan.take_device_error(&gpu) {
            Err(SsmError::CuSeqlens { reason }) => {
                eprintln!("{what:>12}: {cu:?} rejected: {reason}")
            }
            other => panic!("{what}: {cu:?} must be rejected, got {other:?}"),
        }
        // The error is read once: the word is clear again.
        plan.take_device_error(&gpu).unwrap();
    }
    // The same plan and buffers with the true offsets: the host entry point's answer.
    poison_outputs(&gpu, &mut bufs);
    gpu.stream()
        .memcpy_htod(&inputs.cu, bufs.cu_seqlens.as_mut().unwrap())
        .unwrap();
    plan.launch(&gpu, &mut bufs).unwrap();
    plan.take_device_error(&gpu).unwrap();
    let want = selective_scan_cuda(&gpu, &params).unwrap();
    assert_eq!(bits(&gpu.download(&bufs.out).unwrap()), bits(&want.out));
}

/// The same hostile offsets given to the backward, whose checkpoint slots are
/// also placed by `cu_seqlens`: rejected on the device, a typed error after the
/// launch, nothing out of bounds (memcheck runs this binary too).
#[test]
fn hostile_device_cu_seqlens_in_the_backward_become_a_typed_error() {
    let Some(gpu) = test_gpu_or_skip("hostile_device_cu_seqlens_backward") else {
        return;
    };
    let inputs = Inputs::new(&[40, 0, 97, 63], 48, 16, 2);
    let params = inputs.params();
    let l = inputs.dims.seqlen as i64;
    let problem = ScanProblem::of(&params).unwrap();
    let plan = ScanBwdPlan::new(&gpu, &problem).unwrap();
    let mut fwd = ScanBuffers::upload(&gpu, &params).unwrap();
    let io = inputs.u.len();
    let d_out_host: Vec<f32> = (0..io)
        .map(|i| ((i * 7919) % 17) as f32 / 17.0 - 0.5)
        .collect();
    let d_final_host = vec![0.25f32; inputs.h0.len()];
    let d_out = gpu.upload(&d_out_host).unwrap();
    let d_final = gpu.upload(&d_final_host).unwrap();
    let mut grads = ScanGradBuffers::alloc(&gpu, &problem).unwrap();
    let mut ws = plan.workspace(&gpu).unwrap();
    for cu in [
        vec![0, 40, 40, 300, l],
        vec![0, -5, 40, 137, l],
        vec![0, 120, 40, 137, l],
        vec![7, 40, 40, 137, l - 1],
        vec![i64::MIN, i64::MAX, 0, i64::MAX, i64::MIN],
    ] {
        gpu.stream()
            .memcpy_htod(&cu, fwd.cu_seqlens.as_mut().unwrap())
            .unwrap();
        plan.launch(&gpu, &fwd, &d_out, Some(&d_final), &mut grads, &mut ws)
            .unwrap();
        match plan.take_device_error(&gpu) {
            Err(SsmError::CuSeqlens { reason }) => eprintln!("backward {cu:?} rejected: {reason}"),
            other => panic!("backward: {cu:?} must be rejected, got {other:?}"),
        }
        plan.take_device_error(&gpu).unwrap();
    }
    // True offsets on the same plan: the host entry point's gradients, bit for bit.
    gpu.stream()
        .memcpy_htod(&inputs.cu, fwd.cu_seqlens.as_mut().unwrap())
        .unwrap();
    let mut ws = plan.workspace(&gpu).unwrap();
    plan.launch(&gpu, &fwd, &d_out, Some(&d_final), &mut grads, &mut ws)
        .unwrap();
    plan.take_device_error(&gpu).unwrap();
    let want =
        selective_scan_backward_cuda(&gpu, &params, &d_out_host, Some(&d_final_host)).unwrap();
    assert_eq!(bits(&gpu.download(&grads.du).unwrap()), bits(&want.du));
    assert_eq!(bits(&gpu.download(&grads.db).unwrap()), bits(&want.db));
    assert_eq!(bits(&gpu.download(&grads.da).unwrap()), bits(&want.da));
}

#[test]
fn launches_on_the_callers_stream_and_views_with_offsets() {
    let Some(reference_gpu) = test_gpu_or_skip("callers_stream_and_views") else {
        return;
    };
    let inputs = Inputs::new(&[33, 70, 1, 56], 64, 16, 2);
    let params = inputs.params();
    let want = selective_scan_cuda(&reference_gpu, &params).unwrap();

    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let gpu = Gpu::from_stream(stream.clone()).unwrap();
    assert_eq!(gpu.context_id(), reference_gpu.context_id());
    let problem = ScanProblem::of(&params).unwrap();
    let plan = ScanPlan::new(&gpu, &problem, Default::default()).unwrap();

    // Each tensor sits at an odd offset inside a larger allocation.
    let padded = Padded::new(&stream, &inputs);
    let (io, states) = (inputs.u.len(), inputs.h0.len());
    let mut out = stream.alloc_zeros::<f32>(io + 2 * PAD).unwrap();
    let mut fin = stream.alloc_zeros::<f32>(states + 2 * PAD).unwrap();
    let views = padded.views(&mut out, &mut fin);
    plan.launch_views(&gpu, views).unwrap();
    stream.synchronize().unwrap();
    plan.take_device_error(&gpu).unwrap();
    let out_host = stream.clone_dtoh(&out).unwrap();
    assert_eq!(bits(&out_host[PAD..PAD + io]), bits(&want.out));
    // Nothing outside the views was written.
    assert!(out_host[..PAD]
        .iter()
        .chain(&out_host[PAD + io..])
        .all(|&x| x == 0.0));
    let fin_host = stream.clone_dtoh(&fin).unwrap();
    assert_eq!(
        bits(&fin_host[PAD..PAD + states]),
        bits(want.final_states.as_ref().unwrap())
    );

    // A view of the wrong length is a typed error naming the tensor.
    let mut short = padded.views(&mut out, &mut fin);
    short.u = padded.u_delta().0.slice(PAD..PAD + io - 1);
    match plan.launch_views(&gpu, short) {
        Err(SsmError::Shape { arg: "u", .. }) => {}
        other => panic!("a short `u` view must be rejected, got {other:?}"),
    }

    // A view one element off a 16-byte boundary is a typed error too (the
    // kernel's row accesses are 16 bytes wide), refused before any launch.
    let mut misaligned = padded.views(&mut out, &mut fin);
    misaligned.delta = padded.u_delta().1.slice(PAD + 1..PAD + 1 + io);
    match plan.launch_views(&gpu, misaligned) {
        Err(SsmError::Dimension {
            arg: "delta",
            reason,
        }) => {
            eprintln!("misaligned `delta` rejected: {reason}")
        }
        other => panic!("a misaligned `delta` view must be rejected, got {other:?}"),
    }
    stream.synchronize().unwrap();
}

#[test]
fn a_scan_captured_in_a_cuda_graph_replays_bit_identically() {
    let Some(reference_gpu) = test_gpu_or_skip("scan_graph_capture") else {
        return;
    };
    let inputs = Inputs::new(&[100, 28], 32, 16, 3);
    let params = inputs.params();
    let want = selective_scan_cuda(&reference_gpu, &params).unwrap();

    let ctx = CudaContext::new(0).unwrap();
    // One stream does all the work: without this, cudarc makes every launch
    // wait on events recorded before the capture, which the driver refuses.
    // SAFETY: every buffer of this test is used on `stream` only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let gpu = Gpu::from_stream(stream.clone()).unwrap();
    let problem = ScanProblem::of(&params).unwrap();
    let plan = ScanPlan::new(&gpu, &problem, Default::default()).unwrap();
    let mut bufs = ScanBuffers::upload(&gpu, &params).unwrap();
    stream.synchronize().unwrap();

    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    plan.launch(&gpu, &mut bufs).unwrap();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture recorded the launch");
    for replay in 0..3 {
        poison_outputs(&gpu, &mut bufs);
        graph.launch().unwrap();
        stream.synchronize().unwrap();
        plan.take_device_error(&gpu).unwrap();
        let out = gpu.download(&bufs.out).unwrap();
        assert_eq!(bits(&out), bits(&want.out), "replay {replay}");
    }
    drop(graph);
    let _keep_alive: Arc<_> = ctx;
}

/// Every input of an [`Inputs`] on the device at offset [`PAD`] inside a larger
/// allocation (NaN around the values, -1 around the offsets): `u, delta, A, B,
/// C, D, z, delta_bias, h0` in that order, and `cu_seqlens`.
struct Padded([CudaSlice<f32>; 9], CudaSlice<i64>);

impl Padded {
    fn new(stream: &Arc<CudaStream>, i: &Inputs) -> Self {
        let pad = |host: &Vec<f32>| -> CudaSlice<f32> {
            let mut v = vec![f32::NAN; PAD];
            v.extend_from_slice(host);
            v.extend(std::iter::repeat_n(f32::NAN, PAD));
            stream.clone_htod(&v).unwrap()
        };
        let host = [&i.u, &i.delta, &i.a, &i.b, &i.c, &i.d, &i.z, &i.bias, &i.h0];
        let mut cu = vec![-1i64; PAD];
        cu.extend_from_slice(&i.cu);
        Padded(host.map(pad), stream.clone_htod(&cu).unwrap())
    }

    /// The padded `u` and `delta`, for views of the wrong length or alignment.
    fn u_delta(&self) -> (&CudaSlice<f32>, &CudaSlice<f32>) {
        (&self.0[0], &self.0[1])
    }

    /// Views of every input, and of `out` and `fin` (padded alike), of the
    /// true lengths: what a caller holding larger allocations passes.
    fn views<'a>(
        &'a self,
        out: &'a mut CudaSlice<f32>,
        fin: &'a mut CudaSlice<f32>,
    ) -> ScanViews<'a, f32> {
        let [u, delta, a, b, c, d, z, bias, h0] =
            self.0.each_ref().map(|x| x.slice(PAD..x.len() - PAD));
        let (out_len, fin_len) = (out.len() - PAD, fin.len() - PAD);
        ScanViews {
            u,
            delta,
            a,
            b,
            c,
            d: Some(d),
            z: Some(z),
            delta_bias: Some(bias),
            initial_states: Some(h0),
            cu_seqlens: Some(self.1.slice(PAD..)),
            out: out.slice_mut(PAD..out_len),
            final_states: Some(fin.slice_mut(PAD..fin_len)),
        }
    }
}

fn bits<T: DeviceElement>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}
