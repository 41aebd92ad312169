//! The SSD forward as upstream code calls it (issue 16): a plan built from
//! shapes alone, launched on the caller's stream on views into larger
//! allocations, and captured in a CUDA graph; each answer bit-identical to
//! the host entry point's. Skips loudly without a GPU (`SSM_REQUIRE_GPU=1`
//! turns the skip into a failure).

mod cpu_support;

use cpu_support::{dims, Case, Options};
use mamba2_ssd::cuda::{
    ssd_forward_cuda, CudaOptions, SsdFeatures, SsdInputViews, SsdOutputViews, SsdPlan,
};
use std::sync::Arc;

use ssm_core::SsmError;
use ssm_gpu::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use ssm_gpu::cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView};
use ssm_gpu::{test_gpu_or_skip, DeviceElement, Gpu};

/// The offset of every tensor inside its allocation.
const PAD: usize = 16;

/// `host` at offset `PAD` of an allocation with NaN on both sides.
fn padded<T: DeviceElement>(stream: &Arc<CudaStream>, host: &[T]) -> CudaSlice<T> {
    let mut v = vec![T::POISON; PAD];
    v.extend_from_slice(host);
    v.extend(std::iter::repeat_n(T::POISON, PAD));
    stream.clone_htod(&v).unwrap()
}

fn view<T>(x: &CudaSlice<T>, len: usize) -> CudaView<'_, T> {
    x.slice(PAD..PAD + len)
}

fn bits<T: DeviceElement>(x: &[T]) -> Vec<u64> {
    x.iter().map(|v| v.to_f64().to_bits()).collect()
}

#[test]
fn a_shape_only_plan_on_the_callers_stream_and_offset_views() {
    let Some(reference_gpu) = test_gpu_or_skip("ssd_callers_stream_and_views") else {
        return;
    };
    let opts = Options {
        cu_seqlens: Some(vec![0, 70, 70, 201, 333]),
        ..Options::all()
    };
    let case = Case::new(dims(1, 333, 4, 64, 64, 2), opts, 7);
    let r = case.rounded::<half::bf16>();
    let p = case.params(&r);
    let want = ssd_forward_cuda(&reference_gpu, &p).unwrap();

    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.new_stream().unwrap();
    let gpu = Gpu::from_stream(stream.clone()).unwrap();
    let plan = SsdPlan::for_shapes(
        &gpu,
        ssm_core::DType::Bf16,
        p.dims,
        SsdFeatures::of(&p),
        p.dt_limit,
        p.cu_seqlens,
        &CudaOptions::default(),
    )
    .unwrap();
    let (x, dt, a, b, c) = (
        padded(&stream, p.x),
        padded(&stream, p.dt),
        padded(&stream, p.a),
        padded(&stream, p.b),
        padded(&stream, p.c),
    );
    let dt_bias = padded(&stream, p.dt_bias.unwrap());
    let d = padded(&stream, p.d.as_ref().unwrap().data());
    let z = padded(&stream, p.z.unwrap());
    let h0 = padded(&stream, p.initial_states.unwrap());
    let io = p.x.len();
    let states = want.final_states.as_ref().unwrap().len();
    let mut out = padded(&stream, &vec![half::bf16::ZERO; io]);
    let mut fin = padded(&stream, &vec![0.0f32; states]);
    // The input views with `x` starting `x_shift` elements past its place.
    let input_views = |x_shift: usize| SsdInputViews {
        x: x.slice(PAD + x_shift..PAD + x_shift + io),
        dt: view(&dt, p.dt.len()),
        a: view(&a, p.a.len()),
        b: view(&b, p.b.len()),
        c: view(&c, p.c.len()),
        dt_bias: Some(view(&dt_bias, p.dt_bias.unwrap().len())),
        d: Some(view(&d, p.d.as_ref().unwrap().data().len())),
        z: Some(view(&z, io)),
        initial_states: Some(view(&h0, p.initial_states.unwrap().len())),
    };
    let inputs = input_views(0);
    let outputs = SsdOutputViews {
        out: out.slice_mut(PAD..PAD + io),
        final_states: Some(fin.slice_mut(PAD..PAD + states)),
    };
    plan.launch_views(&gpu, &inputs, outputs).unwrap();
    stream.synchronize().unwrap();
    let out_host = stream.clone_dtoh(&out).unwrap();
    assert_eq!(bits(&out_host[PAD..PAD + io]), bits(&want.out));
    // Nothing outside the views was written: the padding is still the poison.
    assert!(out_host[..PAD]
        .iter()
        .chain(&out_host[PAD + io..])
        .all(|v| v.to_bits() == half::bf16::POISON.to_bits()));
    let fin_host = stream.clone_dtoh(&fin).unwrap();
    assert_eq!(
        bits(&fin_host[PAD..PAD + states]),
        bits(want.final_states.as_ref().unwrap())
    );

    // A view of the wrong length is a typed error naming the tensor.
    let short = SsdInputViews {
        dt: dt.slice(PAD..PAD + p.dt.len() - 1),
        ..inputs
    };
    let outputs = SsdOutputViews {
        out: out.slice_mut(PAD..PAD + io),
        final_states: Some(fin.slice_mut(PAD..PAD + states)),
    };
    match plan.launch_views(&gpu, &short, outputs) {
        Err(SsmError::Dimension { arg: "dt", .. }) => {}
        other => panic!("a short `dt` view must be rejected, got {other:?}"),
    }

    // A view one element off a 16-byte boundary is a typed error too (the
    // kernels' loads are 16 bytes wide), refused before anything is enqueued.
    let misaligned = input_views(1);
    let outputs = SsdOutputViews {
        out: out.slice_mut(PAD..PAD + io),
        final_states: Some(fin.slice_mut(PAD..PAD + states)),
    };
    match plan.launch_views(&gpu, &misaligned, outputs) {
        Err(SsmError::Dimension { arg: "x", reason }) => {
            eprintln!("misaligned `x` rejected: {reason}")
        }
        other => panic!("a misaligned `x` view must be rejected, got {other:?}"),
    }
    stream.synchronize().unwrap();
}

#[test]
fn an_ssd_forward_captured_in_a_cuda_graph_replays_bit_identically() {
    let Some(reference_gpu) = test_gpu_or_skip("ssd_graph_capture") else {
        return;
    };
    // Long enough that sequences are split into segments: the prepass, the
    // C B^T pre-kernel and the main kernel are all captured.
    let case = Case::new(dims(2, 1500, 8, 64, 128, 1), Options::all(), 8);
    let r = case.rounded::<half::bf16>();
    let p = case.params(&r);
    let want = ssd_forward_cuda(&reference_gpu, &p).unwrap();

    let ctx = CudaContext::new(0).unwrap();
    // SAFETY: every buffer of this test is used on `stream` only, so cudarc's
    // cross-stream events (which a capture cannot wait on) are not needed.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let gpu = Gpu::from_stream(stream.clone()).unwrap();
    let plan = SsdPlan::new(&gpu, &p, &CudaOptions::default()).unwrap();
    let inputs = mamba2_ssd::cuda::SsdDeviceInputs::upload(&gpu, &p).unwrap();
    let mut outputs = plan.alloc_outputs::<half::bf16>(&gpu).unwrap();
    stream.synchronize().unwrap();
    eprintln!("captured plan: {}", plan.describe());

    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    plan.launch(&gpu, &inputs, &mut outputs).unwrap();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture recorded the launches");
    for replay in 0..3 {
        gpu.poison(&mut outputs.out).unwrap();
        graph.launch().unwrap();
        let out = gpu.download(&outputs.out).unwrap();
        assert_eq!(bits(&out), bits(&want.out), "replay {replay}");
    }
}
