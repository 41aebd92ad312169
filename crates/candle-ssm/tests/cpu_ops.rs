//! The ops on CPU tensors against the pure-candle reference (crate::reference):
//! outputs and the gradients of every input, on small shapes.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_ssm::{reference, Mamba1Step, Mamba2Step, SelectiveScan, SsdForward};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    a.to_dtype(DType::F32)?
        .sub(&b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

fn max_abs(a: &Tensor) -> Result<f32> {
    a.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// `|got - want| <= tol * (1 + max|want|)`, with the tensor named on failure.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let diff = max_abs_diff(got, want)?;
    let scale = 1.0 + max_abs(want)?;
    assert!(
        diff <= tol * scale,
        "{name}: max |got - want| = {diff} > {tol} * {scale}"
    );
    Ok(())
}

fn grad_of(g: &GradStore, v: &Var, name: &str) -> Tensor {
    g.get(v.as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {name}"))
        .clone()
}

struct SsdCase {
    x: Var,
    dt: Var,
    a: Var,
    b: Var,
    c: Var,
    d: Var,
    z: Var,
    dt_bias: Var,
}

fn ssd_case(
    dev: &Device,
    (b, l, h, p, g, n): (usize, usize, usize, usize, usize, usize),
) -> Result<SsdCase> {
    let r = |dims: &[usize], s: f64| -> Result<Var> {
        Var::from_tensor(&(Tensor::randn(0f32, 1., dims, dev)? * s)?)
    };
    Ok(SsdCase {
        x: r(&[b, l, h, p], 1.0)?,
        dt: r(&[b, l, h], 0.5)?,
        a: Var::from_tensor(&(Tensor::rand(0.5f32, 1.5, h, dev)?.neg()?))?,
        b: r(&[b, l, g, n], 0.7)?,
        c: r(&[b, l, g, n], 0.7)?,
        d: r(&[h], 1.0)?,
        z: r(&[b, l, h, p], 1.0)?,
        dt_bias: r(&[h], 0.3)?,
    })
}

#[test]
fn ssd_forward_and_gradients_match_the_reference() -> Result<()> {
    let dev = Device::Cpu;
    // L = 13 with Q = 4: several chunks and a partial last one; G = 2 of H = 4.
    let k = ssd_case(&dev, (2, 13, 4, 3, 2, 5))?;
    let got = SsdForward::new(&k.x, &k.dt, &k.a, &k.b, &k.c)
        .d(&k.d)
        .z(&k.z)
        .dt_bias(&k.dt_bias)
        .dt_softplus(true)
        .chunk_size(4)
        .run()?;
    let want = reference::ssd(
        &k.x,
        &k.dt,
        &k.a,
        &k.b,
        &k.c,
        Some(&k.d),
        Some(&k.z),
        Some(&k.dt_bias),
        true,
    )?;
    assert_close("out", &got, &want, 1e-4)?;

    // A fixed random cotangent, so that every output element matters.
    let w = Tensor::randn(0f32, 1., got.dims(), &dev)?;
    let g_got = got.mul(&w)?.sum_all()?.backward()?;
    let g_want = want.mul(&w)?.sum_all()?.backward()?;
    for (name, v) in [
        ("x", &k.x),
        ("dt", &k.dt),
        ("A", &k.a),
        ("B", &k.b),
        ("C", &k.c),
        ("D", &k.d),
        ("z", &k.z),
        ("dt_bias", &k.dt_bias),
    ] {
        assert_close(
            &format!("d{name}"),
            &grad_of(&g_got, v, name),
            &grad_of(&g_want, v, name),
            1e-3,
        )?;
    }
    Ok(())
}

#[test]
fn ssd_without_options_and_with_non_contiguous_input() -> Result<()> {
    let dev = Device::Cpu;
    let k = ssd_case(&dev, (1, 9, 2, 4, 1, 3))?;
    // x as a transposed view: not contiguous, made contiguous by the op.
    let xt =
        k.x.as_tensor()
            .transpose(2, 3)?
            .contiguous()?
            .transpose(2, 3)?;
    assert!(!xt.is_contiguous());
    let dt = k.dt.as_tensor().abs()?;
    let got = SsdForward::new(&xt, &dt, &k.a, &k.b, &k.c)
        .chunk_size(3)
        .run()?;
    let want = reference::ssd(&xt, &dt, &k.a, &k.b, &k.c, None, None, None, false)?;
    assert_close("out", &got, &want, 1e-4)?;
    let g_got = got.sum_all()?.backward()?;
    let g_want = want.sum_all()?.backward()?;
    for (name, v) in [("x", &k.x), ("A", &k.a), ("B", &k.b), ("C", &k.c)] {
        assert_close(
            &format!("d{name}"),
            &grad_of(&g_got, v, name),
            &grad_of(&g_want, v, name),
            1e-3,
        )?;
    }
    Ok(())
}

#[test]
fn ssd_in_bf16_is_close_to_the_f32_reference() -> Result<()> {
    let dev = Device::Cpu;
    let k = ssd_case(&dev, (1, 8, 2, 4, 1, 4))?;
    let bf = |v: &Var| v.as_tensor().to_dtype(DType::BF16);
    let dt = k.dt.as_tensor().abs()?;
    let got = SsdForward::new(
        &bf(&k.x)?,
        &dt.to_dtype(DType::BF16)?,
        &k.a,
        &bf(&k.b)?,
        &bf(&k.c)?,
    )
    .run()?;
    assert_eq!(got.dtype(), DType::BF16);
    let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    let want = reference::ssd(
        &round(k.x.as_tensor())?,
        &round(&dt)?,
        &k.a,
        &round(k.b.as_tensor())?,
        &round(k.c.as_tensor())?,
        None,
        None,
        None,
        false,
    )?;
    assert_close("out", &got, &want, 2e-2)
}

#[test]
fn ssd_shape_errors_name_the_tensor() -> Result<()> {
    let dev = Device::Cpu;
    let k = ssd_case(&dev, (1, 4, 2, 2, 1, 2))?;
    let bad_b = Tensor::zeros((1, 4, 1, 3), DType::F32, &dev)?;
    let err = SsdForward::new(&k.x, &k.dt, &k.a, &k.b, &bad_b)
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("`C`"), "{err}");
    let bad_dt = Tensor::zeros((1, 4, 2), DType::U32, &dev)?;
    let err = SsdForward::new(&k.x, &bad_dt, &k.a, &k.b, &k.c)
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("`dt`"), "{err}");
    Ok(())
}

struct ScanCase {
    u: Var,
    delta: Var,
    a: Var,
    b: Var,
    c: Var,
    d: Var,
    z: Var,
    delta_bias: Var,
}

fn scan_case(
    dev: &Device,
    (b, d, l, g, n): (usize, usize, usize, usize, usize),
) -> Result<ScanCase> {
    let r = |dims: &[usize], s: f64| -> Result<Var> {
        Var::from_tensor(&(Tensor::randn(0f32, 1., dims, dev)? * s)?)
    };
    Ok(ScanCase {
        u: r(&[b, d, l], 1.0)?,
        delta: r(&[b, d, l], 0.5)?,
        a: Var::from_tensor(&(Tensor::rand(0.5f32, 1.5, (d, n), dev)?.neg()?))?,
        b: r(&[b, g, n, l], 0.7)?,
        c: r(&[b, g, n, l], 0.7)?,
        d: r(&[d], 1.0)?,
        z: r(&[b, d, l], 1.0)?,
        delta_bias: r(&[d], 0.3)?,
    })
}

#[test]
fn scan_forward_and_gradients_match_the_reference() -> Result<()> {
    let dev = Device::Cpu;
    // L = 11 with blocks of 4: a partial last block; G = 2 of D_in = 6.
    let k = scan_case(&dev, (2, 6, 11, 2, 5))?;
    let got = SelectiveScan::new(&k.u, &k.delta, &k.a, &k.b, &k.c)
        .d(&k.d)
        .z(&k.z)
        .delta_bias(&k.delta_bias)
        .delta_softplus(true)
        .block_len(4)
        .run()?;
    let want = reference::selective_scan(
        &k.u,
        &k.delta,
        &k.a,
        &k.b,
        &k.c,
        Some(&k.d),
        Some(&k.z),
        Some(&k.delta_bias),
        true,
    )?;
    assert_close("out", &got, &want, 1e-4)?;
    let w = Tensor::randn(0f32, 1., got.dims(), &dev)?;
    let g_got = got.mul(&w)?.sum_all()?.backward()?;
    let g_want = want.mul(&w)?.sum_all()?.backward()?;
    for (name, v) in [
        ("u", &k.u),
        ("delta", &k.delta),
        ("A", &k.a),
        ("B", &k.b),
        ("C", &k.c),
        ("D", &k.d),
        ("z", &k.z),
        ("delta_bias", &k.delta_bias),
    ] {
        assert_close(
            &format!("d{name}"),
            &grad_of(&g_got, v, name),
            &grad_of(&g_want, v, name),
            1e-3,
        )?;
    }
    Ok(())
}

#[test]
fn scan_shape_errors_name_the_tensor() -> Result<()> {
    let dev = Device::Cpu;
    let k = scan_case(&dev, (1, 4, 5, 1, 3))?;
    let bad_a = Tensor::zeros((4, 2), DType::F32, &dev)?;
    let err = SelectiveScan::new(&k.u, &k.delta, &bad_a, &k.b, &k.c)
        .run()
        .unwrap_err();
    assert!(err.to_string().contains("`A`"), "{err}");
    Ok(())
}

/// Two Mamba-2 decode steps from a zero state equal the first two tokens of
/// the reference SSD over the same inputs.
#[test]
fn mamba2_decode_steps_match_the_reference_recurrence() -> Result<()> {
    let dev = Device::Cpu;
    let (b, l, h, p, g, n) = (2, 2, 4, 3, 2, 5);
    let k = ssd_case(&dev, (b, l, h, p, g, n))?;
    let want = reference::ssd(
        &k.x,
        &k.dt,
        &k.a,
        &k.b,
        &k.c,
        Some(&k.d),
        Some(&k.z),
        Some(&k.dt_bias),
        true,
    )?;
    let at = |v: &Var, t: usize| v.as_tensor().narrow(1, t, 1).and_then(|x| x.squeeze(1));
    let mut state = Tensor::zeros((b, h, p, n), DType::F32, &dev)?;
    for t in 0..l {
        let (y, next) = Mamba2Step::new(
            &state,
            &at(&k.x, t)?,
            &at(&k.dt, t)?,
            &k.a,
            &at(&k.b, t)?,
            &at(&k.c, t)?,
        )
        .d(&k.d)
        .z(&at(&k.z, t)?)
        .dt_bias(&k.dt_bias)
        .dt_softplus(true)
        .run()?;
        assert_close(
            &format!("out[{t}]"),
            &y,
            &want.narrow(1, t, 1)?.squeeze(1)?,
            1e-5,
        )?;
        state = next;
    }
    Ok(())
}

/// As above for the Mamba-1 step against the reference scan.
#[test]
fn mamba1_decode_steps_match_the_reference_recurrence() -> Result<()> {
    let dev = Device::Cpu;
    let (b, d, l, g, n) = (2, 6, 2, 2, 4);
    let k = scan_case(&dev, (b, d, l, g, n))?;
    let want = reference::selective_scan(
        &k.u,
        &k.delta,
        &k.a,
        &k.b,
        &k.c,
        Some(&k.d),
        Some(&k.z),
        Some(&k.delta_bias),
        true,
    )?;
    let last = |v: &Var, t: usize| {
        let x = v.as_tensor();
        x.narrow(x.rank() - 1, t, 1)
            .and_then(|y| y.squeeze(x.rank() - 1))
    };
    let mut state = Tensor::zeros((b, d, n), DType::F32, &dev)?;
    for t in 0..l {
        let (y, next) = Mamba1Step::new(
            &state,
            &last(&k.u, t)?,
            &last(&k.delta, t)?,
            &k.a,
            &last(&k.b, t)?,
            &last(&k.c, t)?,
        )
        .d(&k.d)
        .z(&last(&k.z, t)?)
        .dt_bias(&k.delta_bias)
        .dt_softplus(true)
        .run()?;
        assert_close(
            &format!("out[{t}]"),
            &y,
            &want.narrow(2, t, 1)?.squeeze(2)?,
            1e-5,
        )?;
        state = next;
    }
    Ok(())
}
