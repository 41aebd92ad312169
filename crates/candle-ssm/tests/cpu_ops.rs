//! The ops on CPU tensors against the pure-candle reference (crate::reference):
//! outputs and the gradients of every input, on small shapes.

mod support;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_ssm::{reference, Mamba1Step, Mamba2Step, SelectiveScan, SsdForward};
use support::{
    assert_close, assert_error_names, assert_grads_close, assert_ssd_loss_grads_close, scan_all,
    scan_inputs, scan_reference_all, ssd_all, ssd_bf16, ssd_inputs, ssd_reference_all, strided,
    vars, SCAN_NAMES, SSD_NAMES,
};

/// Random SSD inputs by role as CPU variables, `(b, L, H, P, G, N)`.
fn ssd_case(shape: (usize, usize, usize, usize, usize, usize)) -> Result<Vec<Var>> {
    vars(&Device::Cpu, &ssd_inputs(shape)?)
}

/// Random scan inputs by role as CPU variables, `(b, D_in, L, G, N)`.
fn scan_case(shape: (usize, usize, usize, usize, usize)) -> Result<Vec<Var>> {
    vars(&Device::Cpu, &scan_inputs(shape)?)
}

#[test]
fn ssd_forward_and_gradients_match_the_reference() -> Result<()> {
    // L = 13 with Q = 4: several chunks and a partial last one; G = 2 of H = 4.
    let k = ssd_case((2, 13, 4, 3, 2, 5))?;
    let got = ssd_all(&k, 4)?;
    let want = ssd_reference_all(&k)?;
    assert_close("out", &got, &want, 1e-4)?;
    assert_grads_close("", &SSD_NAMES, (&got, &k), (&want, &k), 1e-3)
}

#[test]
fn ssd_without_options_and_with_non_contiguous_input() -> Result<()> {
    let k = ssd_case((1, 9, 2, 4, 1, 3))?;
    // x as a transposed view: not contiguous, made contiguous by the op.
    let xt = strided(k[0].as_tensor(), 2, 3)?;
    let dt = k[1].as_tensor().abs()?;
    let got = SsdForward::new(&xt, &dt, &k[2], &k[3], &k[4])
        .chunk_size(3)
        .run()?;
    let want = reference::ssd(&xt, &dt, &k[2], &k[3], &k[4], None, None, None, false)?;
    assert_close("out", &got, &want, 1e-4)?;
    let (loss_got, loss_want) = (got.sum_all()?, want.sum_all()?);
    assert_ssd_loss_grads_close("", &[0, 2, 3, 4], (&loss_got, &k), (&loss_want, &k), 1e-3)
}

#[test]
fn ssd_in_bf16_is_close_to_the_f32_reference() -> Result<()> {
    let k = ssd_case((1, 8, 2, 4, 1, 4))?;
    let dt = k[1].as_tensor().abs()?;
    let got = ssd_bf16(&k)?.run()?;
    assert_eq!(got.dtype(), DType::BF16);
    let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
    let rounded = [&k[0], &k[3], &k[4]].map(|v| round(v.as_tensor()));
    let [x, b, c] = rounded;
    let want = reference::ssd(&x?, &round(&dt)?, &k[2], &b?, &c?, None, None, None, false)?;
    assert_close("out", &got, &want, 2e-2)
}

#[test]
fn ssd_shape_errors_name_the_tensor() -> Result<()> {
    let dev = Device::Cpu;
    let k = ssd_case((1, 4, 2, 2, 1, 2))?;
    let bad_b = Tensor::zeros((1, 4, 1, 3), DType::F32, &dev)?;
    assert_error_names(
        SsdForward::new(&k[0], &k[1], &k[2], &k[3], &bad_b).run(),
        "C",
    );
    let bad_dt = Tensor::zeros((1, 4, 2), DType::U32, &dev)?;
    assert_error_names(
        SsdForward::new(&k[0], &bad_dt, &k[2], &k[3], &k[4]).run(),
        "dt",
    );
    Ok(())
}

#[test]
fn scan_forward_and_gradients_match_the_reference() -> Result<()> {
    // L = 11 with blocks of 4: a partial last block; G = 2 of D_in = 6.
    let k = scan_case((2, 6, 11, 2, 5))?;
    let got = scan_all(&k, Some(4))?;
    let want = scan_reference_all(&k)?;
    assert_close("out", &got, &want, 1e-4)?;
    assert_grads_close("", &SCAN_NAMES, (&got, &k), (&want, &k), 1e-3)
}

#[test]
fn scan_shape_errors_name_the_tensor() -> Result<()> {
    let k = scan_case((1, 4, 5, 1, 3))?;
    let bad_a = Tensor::zeros((4, 2), DType::F32, &Device::Cpu)?;
    assert_error_names(
        SelectiveScan::new(&k[0], &k[1], &bad_a, &k[3], &k[4]).run(),
        "A",
    );
    Ok(())
}

/// The time dimension of a sequence tensor.
type TimeDim = fn(&Tensor) -> usize;

/// The inputs by role of token `t` (`A, D, dt_bias` as they are).
fn token(k: &[Var], time: TimeDim, t: usize) -> Result<Vec<Tensor>> {
    let seq = [true, true, false, true, true, false, true, false];
    k.iter()
        .zip(seq)
        .map(|(v, s)| {
            let x = v.as_tensor();
            match s {
                true => x.narrow(time(x), t, 1)?.squeeze(time(x)),
                false => Ok(x.clone()),
            }
        })
        .collect()
}

/// Decode steps from `state` over every token of `k`, each output equal to
/// that token of `want`; `step` runs one step on a token's inputs by role and
/// returns its output and next state.
fn steps_match_the_reference(
    k: &[Var],
    time: TimeDim,
    mut state: Tensor,
    want: &Tensor,
    step: impl Fn(&Tensor, &[Tensor]) -> Result<(Tensor, Tensor)>,
) -> Result<()> {
    for t in 0..want.dim(time(want))? {
        let (y, next) = step(&state, &token(k, time, t)?)?;
        let want_t = want.narrow(time(want), t, 1)?.squeeze(time(want))?;
        assert_close(&format!("out[{t}]"), &y, &want_t, 1e-5)?;
        state = next;
    }
    Ok(())
}

/// Two Mamba-2 decode steps from a zero state equal the first two tokens of
/// the reference SSD over the same inputs.
#[test]
fn mamba2_decode_steps_match_the_reference_recurrence() -> Result<()> {
    let (b, l, h, p, g, n) = (2, 2, 4, 3, 2, 5);
    let k = ssd_case((b, l, h, p, g, n))?;
    let state = Tensor::zeros((b, h, p, n), DType::F32, &Device::Cpu)?;
    // Token-major: time is dimension 1 of every sequence tensor.
    steps_match_the_reference(
        &k,
        |_| 1,
        state,
        &ssd_reference_all(&k)?,
        |s, i| {
            Mamba2Step::new(s, &i[0], &i[1], &i[2], &i[3], &i[4])
                .d(&i[5])
                .z(&i[6])
                .dt_bias(&i[7])
                .dt_softplus(true)
                .run()
        },
    )
}

/// As above for the Mamba-1 step against the reference scan.
#[test]
fn mamba1_decode_steps_match_the_reference_recurrence() -> Result<()> {
    let (b, d, l, g, n) = (2, 6, 2, 2, 4);
    let k = scan_case((b, d, l, g, n))?;
    let state = Tensor::zeros((b, d, n), DType::F32, &Device::Cpu)?;
    // Channel-major: time is the last dimension of every sequence tensor.
    let last: TimeDim = |x| x.rank() - 1;
    steps_match_the_reference(&k, last, state, &scan_reference_all(&k)?, |s, i| {
        Mamba1Step::new(s, &i[0], &i[1], &i[2], &i[3], &i[4])
            .d(&i[5])
            .z(&i[6])
            .dt_bias(&i[7])
            .dt_softplus(true)
            .run()
    })
}
