//! The ops on candle CUDA tensors against the pure-candle reference and the
//! CPU op (feature `cuda`; without a GPU each test prints `SKIPPED` and
//! passes, unless `SSM_REQUIRE_GPU=1`, which the device script sets).
//!
//! Inputs are made on the CPU, copied to the GPU, and every comparison is
//! done on the CPU: outputs and the gradients of every input, on small shapes
//! with a partial last chunk.

#![cfg(feature = "cuda")]

mod support;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_ssm::{reference, Mamba1Step, Mamba2Step, SsdForward};
use support::{
    assert_close, assert_error_names, assert_grads_close, assert_ssd_loss_grads_close, negative_a,
    randn, scan_all, scan_inputs, scan_reference_all, ssd_all, ssd_bf16, ssd_inputs,
    ssd_reference_all, strided, vars, SCAN_NAMES, SSD_NAMES,
};

/// The GPU, or `None` after a loud `SKIPPED` line (a failure with
/// `SSM_REQUIRE_GPU=1`).
fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("SSM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: no GPU ({e}) and SSM_REQUIRE_GPU=1");
            }
            eprintln!("SKIPPED {test}: no CUDA device ({e})");
            None
        }
    }
}

/// `tensors` on the CPU as variables, and the same values on `dev`.
fn pair(dev: &Device, tensors: &[Tensor]) -> Result<(Vec<Var>, Vec<Var>)> {
    Ok((vars(&Device::Cpu, tensors)?, vars(dev, tensors)?))
}

#[test]
fn gpu_ssd_forward_and_gradients_match_the_reference_and_the_cpu_op() -> Result<()> {
    let Some(dev) = gpu_or_skip("gpu_ssd_forward_and_gradients_match_the_reference_and_the_cpu_op")
    else {
        return Ok(());
    };
    // L = 77: a partial last chunk for every chunk size; G = 2 of H = 4;
    // P = 16 and then P = 64, N = 32 (f32 inputs run the SIMT forward; the
    // tensor-core kernel takes f16/bf16, see the bf16 test).
    for shape in [(2, 77, 4, 16, 2, 16), (1, 130, 2, 64, 1, 32)] {
        ssd_case_matches(&dev, shape)?;
    }
    Ok(())
}

fn ssd_case_matches(dev: &Device, shape: (usize, usize, usize, usize, usize, usize)) -> Result<()> {
    let (c, k) = pair(dev, &ssd_inputs(shape)?)?;
    let got = ssd_all(&k, 16)?;
    assert!(got.device().is_cuda());
    let want = ssd_reference_all(&c)?;
    assert_close(&format!("{shape:?} out vs reference"), &got, &want, 1e-4)?;
    assert_close(
        &format!("{shape:?} out vs CPU op"),
        &got,
        &ssd_all(&c, 16)?,
        1e-4,
    )?;
    let label = format!("{shape:?} ");
    assert_grads_close(&label, &SSD_NAMES, (&got, &k), (&want, &c), 1e-3)
}

#[test]
fn gpu_ssd_reads_views_with_offsets_and_makes_strided_inputs_contiguous() -> Result<()> {
    let Some(dev) =
        gpu_or_skip("gpu_ssd_reads_views_with_offsets_and_makes_strided_inputs_contiguous")
    else {
        return Ok(());
    };
    let (b, l, h, p, g, n) = (1, 40, 2, 16, 1, 16);
    let (c, k) = pair(&dev, &ssd_inputs((b, l, h, p, g, n))?)?;
    // x as the middle batch row of a larger tensor: contiguous, offset into
    // its storage (the kernels must read from the offset, not the start).
    let big = Tensor::randn(0f32, 1., (3, l, h, p), &Device::Cpu)?;
    let x_cpu = big.narrow(0, 1, 1)?;
    let x_dev = big.to_device(&dev)?.narrow(0, 1, 1)?;
    assert!(x_dev.is_contiguous());
    assert_ne!(x_dev.layout().start_offset(), 0);
    // B transposed twice over (L, N): a strided view, which the op copies (a
    // candle op). (Over (G, N) it stayed contiguous: G = 1 here, and a dimension
    // of size 1 has no stride that matters, as the H200 run showed.)
    let b_dev = strided(k[3].as_tensor(), 1, 3)?;
    let dt = k[1].as_tensor().abs()?;
    let got = SsdForward::new(&x_dev, &dt, &k[2], &b_dev, &k[4]).run()?;
    let want = reference::ssd(
        &x_cpu,
        &c[1].as_tensor().abs()?,
        &c[2],
        &c[3],
        &c[4],
        None,
        None,
        None,
        false,
    )?;
    assert_close("out", &got, &want, 1e-4)?;
    let (loss_got, loss_want) = (got.sum_all()?, want.sum_all()?);
    assert_ssd_loss_grads_close("", &[2, 3, 4], (&loss_got, &k), (&loss_want, &c), 1e-3)
}

#[test]
fn gpu_ssd_in_bf16_is_close_to_the_f32_reference() -> Result<()> {
    let Some(dev) = gpu_or_skip("gpu_ssd_in_bf16_is_close_to_the_f32_reference") else {
        return Ok(());
    };
    let (c, k) = pair(&dev, &ssd_inputs((2, 64, 4, 32, 1, 32))?)?;
    let got = ssd_bf16(&k)?.d(&k[5]).run()?;
    assert_eq!(got.dtype(), DType::BF16);
    let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    let want = reference::ssd(
        &round(c[0].as_tensor())?,
        &round(&c[1].as_tensor().abs()?)?,
        &c[2],
        &round(c[3].as_tensor())?,
        &round(c[4].as_tensor())?,
        Some(&c[5]),
        None,
        None,
        false,
    )?;
    assert_close("out", &got, &want, 2e-2)?;
    // The bf16 backward runs too: gradients close to the f32 reference's on
    // the same rounded inputs (the bf16 ones are rounded once more).
    let (loss_got, loss_want) = (got.to_dtype(DType::F32)?.sum_all()?, want.sum_all()?);
    let roles = [0, 2, 3, 4, 5]; // x, A, B, C, D
    assert_ssd_loss_grads_close("bf16 ", &roles, (&loss_got, &k), (&loss_want, &c), 5e-2)
}

#[test]
fn gpu_ssd_mixed_devices_are_a_clear_error() -> Result<()> {
    let Some(dev) = gpu_or_skip("gpu_ssd_mixed_devices_are_a_clear_error") else {
        return Ok(());
    };
    let (c, k) = pair(&dev, &ssd_inputs((1, 8, 2, 16, 1, 16))?)?;
    assert_error_names(
        SsdForward::new(&k[0], &k[1], &k[2], &c[3], &k[4]).run(),
        "B",
    );
    Ok(())
}

#[test]
fn gpu_scan_forward_and_gradients_match_the_reference_and_the_cpu_op() -> Result<()> {
    let Some(dev) =
        gpu_or_skip("gpu_scan_forward_and_gradients_match_the_reference_and_the_cpu_op")
    else {
        return Ok(());
    };
    let (c, k) = pair(&dev, &scan_inputs((2, 64, 77, 2, 16))?)?;
    let got = scan_all(&k, None)?;
    assert!(got.device().is_cuda());
    let want = scan_reference_all(&c)?;
    assert_close("out vs reference", &got, &want, 1e-4)?;
    assert_close("out vs CPU op", &got, &scan_all(&c, None)?, 1e-4)?;
    assert_grads_close("", &SCAN_NAMES, (&got, &k), (&want, &c), 1e-3)
}

#[test]
fn gpu_decode_steps_match_the_cpu_ops_and_leave_the_input_state_alone() -> Result<()> {
    let Some(dev) =
        gpu_or_skip("gpu_decode_steps_match_the_cpu_ops_and_leave_the_input_state_alone")
    else {
        return Ok(());
    };
    // Mamba-2: b = 3, H = 4, P = 16, G = 2, N = 32, from a random state.
    let (b, h, p, g, n) = (3, 4, 16, 2, 32);
    let (c, k) = pair(
        &dev,
        &[
            randn(&[b, h, p, n], 1.0)?,
            randn(&[b, h, p], 1.0)?,
            randn(&[b, h], 0.5)?,
            negative_a(&[h])?,
            randn(&[b, g, n], 0.7)?,
            randn(&[b, g, n], 0.7)?,
            randn(&[h, p], 1.0)?,
            randn(&[b, h, p], 1.0)?,
            randn(&[h], 0.3)?,
        ],
    )?;
    let step2 = |v: &[Var]| {
        Mamba2Step::new(&v[0], &v[1], &v[2], &v[3], &v[4], &v[5])
            .d(&v[6])
            .z(&v[7])
            .dt_bias(&v[8])
            .dt_softplus(true)
            .run()
    };
    let (y, s) = step2(&k)?;
    let (y_cpu, s_cpu) = step2(&c)?;
    assert!(y.device().is_cuda() && s.device().is_cuda());
    assert_close("mamba2 out", &y, &y_cpu, 1e-5)?;
    assert_close("mamba2 state", &s, &s_cpu, 1e-5)?;
    assert_close("mamba2 input state unchanged", &k[0], &c[0], 0.0)?;

    // Mamba-1: b = 3, D_in = 64, G = 1, N = 16, bf16 inputs.
    let (b, d, g, n) = (3, 64, 1, 16);
    let (c, k) = pair(
        &dev,
        &[
            randn(&[b, d, n], 1.0)?,
            randn(&[b, d], 1.0)?,
            randn(&[b, d], 0.5)?,
            negative_a(&[d, n])?,
            randn(&[b, g, n], 0.7)?,
            randn(&[b, g, n], 0.7)?,
            randn(&[d], 1.0)?,
            randn(&[b, d], 1.0)?,
            randn(&[d], 0.3)?,
        ],
    )?;
    let step1 = |v: &[Var]| -> Result<(Tensor, Tensor)> {
        let bf = |i: usize| v[i].as_tensor().to_dtype(DType::BF16);
        Mamba1Step::new(&v[0], &bf(1)?, &bf(2)?, &v[3], &bf(4)?, &bf(5)?)
            .d(&v[6])
            .z(&bf(7)?)
            .dt_bias(&v[8])
            .dt_softplus(true)
            .run()
    };
    let (y, s) = step1(&k)?;
    let (y_cpu, s_cpu) = step1(&c)?;
    assert_eq!(y.dtype(), DType::BF16);
    // Both round the same f32 values to bf16 once: the difference is at most
    // one bf16 rounding of the output.
    assert_close("mamba1 out", &y, &y_cpu, 1e-2)?;
    assert_close("mamba1 state", &s, &s_cpu, 1e-5)?;
    Ok(())
}
