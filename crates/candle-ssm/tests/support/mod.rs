//! What the candle tests (`cpu_ops`, `gpu_candle`) share: closeness checks on
//! the CPU, gradients by name, random inputs of each op by role (`x, dt, A, B,
//! C, D, z, dt_bias`; the scan's `u, delta, ..., delta_bias`) and the ops and
//! their references with every option on.

#![allow(dead_code)]

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_ssm::{reference, SelectiveScan, SsdForward};

/// The SSD's argument names, in role order.
pub const SSD_NAMES: [&str; 8] = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias"];
/// The Mamba-1 scan's argument names, in role order.
pub const SCAN_NAMES: [&str; 8] = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"];

fn cpu(t: &Tensor) -> Result<Tensor> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F32)
}

/// `|got - want| <= tol * (1 + max|want|)` and finite, on the CPU, naming the tensor.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (got, want) = (cpu(got)?, cpu(want)?);
    let diff = (&got - &want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = 1.0 + want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(
        diff.is_finite() && diff <= tol * scale,
        "{name}: max |got - want| = {diff} > {tol} * {scale}"
    );
    Ok(())
}

/// `r` is an error whose message names the argument `arg` (in backquotes).
pub fn assert_error_names<T: std::fmt::Debug>(r: Result<T>, arg: &str) {
    let err = r.unwrap_err().to_string();
    assert!(err.contains(&format!("`{arg}`")), "{err}");
}

/// The gradient of `v`, or a panic naming it.
pub fn grad(g: &GradStore, v: &Var, name: &str) -> Tensor {
    g.get(v.as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {name}"))
        .clone()
}

/// Standard normal values times `s`, on the CPU.
pub fn randn(dims: &[usize], s: f64) -> Result<Tensor> {
    Tensor::randn(0f32, 1., dims, &Device::Cpu)? * s
}

/// A stable `A`: uniform in `[-1.5, -0.5]`.
pub fn negative_a(dims: &[usize]) -> Result<Tensor> {
    Tensor::rand(0.5f32, 1.5, dims, &Device::Cpu)?.neg()
}

/// Random SSD inputs by role on the CPU, `(b, L, H, P, G, N)`.
pub fn ssd_inputs(
    (b, l, h, p, g, n): (usize, usize, usize, usize, usize, usize),
) -> Result<Vec<Tensor>> {
    Ok(vec![
        randn(&[b, l, h, p], 1.0)?,
        randn(&[b, l, h], 0.5)?,
        negative_a(&[h])?,
        randn(&[b, l, g, n], 0.7)?,
        randn(&[b, l, g, n], 0.7)?,
        randn(&[h], 1.0)?,
        randn(&[b, l, h, p], 1.0)?,
        randn(&[h], 0.3)?,
    ])
}

/// Random Mamba-1 scan inputs by role on the CPU, `(b, D_in, L, G, N)`.
pub fn scan_inputs((b, d, l, g, n): (usize, usize, usize, usize, usize)) -> Result<Vec<Tensor>> {
    Ok(vec![
        randn(&[b, d, l], 1.0)?,
        randn(&[b, d, l], 0.5)?,
        negative_a(&[d, n])?,
        randn(&[b, g, n, l], 0.7)?,
        randn(&[b, g, n, l], 0.7)?,
        randn(&[d], 1.0)?,
        randn(&[b, d, l], 1.0)?,
        randn(&[d], 0.3)?,
    ])
}

/// `tensors` as variables on `dev` (copies when `dev` is not the CPU).
pub fn vars(dev: &Device, tensors: &[Tensor]) -> Result<Vec<Var>> {
    tensors
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect()
}

/// The SSD op with every option on (softplus included), chunks of `chunk`.
pub fn ssd_all(v: &[Var], chunk: usize) -> Result<Tensor> {
    SsdForward::new(&v[0], &v[1], &v[2], &v[3], &v[4])
        .d(&v[5])
        .z(&v[6])
        .dt_bias(&v[7])
        .dt_softplus(true)
        .chunk_size(chunk)
        .run()
}

/// The SSD op on `v`'s required inputs in bf16: `x`, `|dt|`, `B`, `C` rounded
/// to bf16, `A` as it is (f32), no options; the caller adds any and runs it.
/// `|dt|` keeps the step sizes positive without the softplus.
pub fn ssd_bf16(v: &[Var]) -> Result<SsdForward> {
    let bf = |v: &Var| v.as_tensor().to_dtype(DType::BF16);
    let dt = v[1].as_tensor().abs()?.to_dtype(DType::BF16)?;
    Ok(SsdForward::new(
        &bf(&v[0])?,
        &dt,
        &v[2],
        &bf(&v[3])?,
        &bf(&v[4])?,
    ))
}

/// A view of `t` with its values but not contiguous: `t` with dimensions `a`
/// and `b` swapped, made contiguous, and swapped back (strides, not a copy).
pub fn strided(t: &Tensor, a: usize, b: usize) -> Result<Tensor> {
    let view = t.transpose(a, b)?.contiguous()?.transpose(a, b)?;
    assert!(!view.is_contiguous(), "the view must not be contiguous");
    Ok(view)
}

/// The pure-candle SSD with every option on.
pub fn ssd_reference_all(v: &[Var]) -> Result<Tensor> {
    let o = [&v[5], &v[6], &v[7]].map(|t| Some(t.as_tensor()));
    reference::ssd(&v[0], &v[1], &v[2], &v[3], &v[4], o[0], o[1], o[2], true)
}

/// The scan op with every option on; `block` steps per CPU block if given.
pub fn scan_all(v: &[Var], block: Option<usize>) -> Result<Tensor> {
    let op = SelectiveScan::new(&v[0], &v[1], &v[2], &v[3], &v[4])
        .d(&v[5])
        .z(&v[6])
        .delta_bias(&v[7])
        .delta_softplus(true);
    match block {
        Some(steps) => op.block_len(steps).run(),
        None => op.run(),
    }
}

/// The pure-candle scan with every option on.
pub fn scan_reference_all(v: &[Var]) -> Result<Tensor> {
    let o = [&v[5], &v[6], &v[7]].map(|t| Some(t.as_tensor()));
    reference::selective_scan(&v[0], &v[1], &v[2], &v[3], &v[4], o[0], o[1], o[2], true)
}

/// The gradient of every input (`names`, role order) of `got` (over `got_vars`,
/// on the op's device) against those of `want` (over `want_vars`, on the CPU),
/// after one fixed random cotangent so that every output element matters.
pub fn assert_grads_close(
    label: &str,
    names: &[&str],
    (got, got_vars): (&Tensor, &[Var]),
    (want, want_vars): (&Tensor, &[Var]),
    tol: f32,
) -> Result<()> {
    let w = randn(got.dims(), 1.0)?;
    let g_got = got
        .mul(&w.to_device(got.device())?)?
        .sum_all()?
        .backward()?;
    let g_want = want.mul(&w)?.sum_all()?.backward()?;
    for (i, name) in names.iter().enumerate() {
        let gg = grad(&g_got, &got_vars[i], name);
        assert!(
            gg.device().same_device(got.device()),
            "d{name} is not on the op's device"
        );
        let want = grad(&g_want, &want_vars[i], name);
        assert_close(&format!("{label}d{name}"), &gg, &want, tol)?;
    }
    Ok(())
}

/// The gradients of the scalar losses `got` (over `got_vars`, on the op's
/// device) and `want` (over `want_vars`) with respect to the SSD inputs of the
/// roles `roles`, compared on the CPU as `{label}d{name}`.
pub fn assert_ssd_loss_grads_close(
    label: &str,
    roles: &[usize],
    (got, got_vars): (&Tensor, &[Var]),
    (want, want_vars): (&Tensor, &[Var]),
    tol: f32,
) -> Result<()> {
    let g_got = got.backward()?;
    let g_want = want.backward()?;
    for &i in roles {
        let name = SSD_NAMES[i];
        let (got, want) = (
            grad(&g_got, &got_vars[i], name),
            grad(&g_want, &want_vars[i], name),
        );
        assert_close(&format!("{label}d{name}"), &got, &want, tol)?;
    }
    Ok(())
}
