//! The ops on CPU tensors against the pure-candle reference (crate::reference):
//! outputs and the gradients of every input, on small shapes.

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_ssm::{reference, SsdForward};

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
