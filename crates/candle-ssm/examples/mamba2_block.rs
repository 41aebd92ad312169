//! A small Mamba-2 block on candle, with `candle_ssm::SsdForward` as its SSD:
//! in-projection, causal depthwise conv + SiLU, the SSD (with the gate
//! `y * silu(z)` fused into it), RMSNorm, out-projection, residual.
//!
//! 1. Checks the block's output and the gradients of all its weights against
//!    the same block with `candle_ssm::reference::ssd` (plain candle ops) on
//!    the CPU and, built with `--features cuda` and a GPU present, on the GPU
//!    (weights copied from the CPU ones, so the CPU and GPU outputs are
//!    compared with each other too).
//! 2. Trains a one-block model with AdamW on a synthetic delay task (predict
//!    the token `delay` steps back, further than the conv reaches, so the
//!    SSD's state must carry it) and prints the loss, which falls from
//!    ln(vocab).
//!
//! The log is printed and, when `SSM_RESULTS_DIR` is set, written to
//! `$SSM_RESULTS_DIR/candle-mamba2-block.log`. Exit status 1 when a check fails
//! or the loss does not fall.
//!
//! ```text
//! cargo run --release -p candle-ssm --example mamba2_block                   # CPU
//! cargo run --release -p candle-ssm --features cuda --example mamba2_block   # CPU + GPU
//! options: --steps N (300)  --train-on cpu|cuda (cuda when there is one)  --seed S
//! ```

use std::fmt::Write as _;
use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var, D};
use candle_ssm::{reference, SsdForward};

/// Sizes of the block.
#[derive(Clone, Copy, Debug)]
struct Config {
    vocab: usize,
    d_model: usize,
    d_inner: usize,
    heads: usize,
    groups: usize,
    d_state: usize,
    conv: usize,
}

impl Config {
    fn head_dim(&self) -> usize {
        self.d_inner / self.heads
    }
    /// Channels the conv sees: x, B, C.
    fn conv_dim(&self) -> usize {
        self.d_inner + 2 * self.groups * self.d_state
    }
    /// In-projection outputs: z, xBC, dt.
    fn d_in_proj(&self) -> usize {
        self.d_inner + self.conv_dim() + self.heads
    }
}

/// The weights, as trainable variables.
struct Block {
    cfg: Config,
    embed: Var,    // (V, d_model)
    in_proj: Var,  // (d_in_proj, d_model)
    conv_w: Var,   // (conv_dim, K)
    conv_b: Var,   // (conv_dim)
    dt_bias: Var,  // (H)
    a_log: Var,    // (H)
    d: Var,        // (H)
    norm_w: Var,   // (d_inner)
    out_proj: Var, // (d_model, d_inner)
    head: Var,     // (V, d_model)
}

/// Which SSD the block runs.
#[derive(Clone, Copy, PartialEq)]
enum Ssd {
    /// `candle_ssm::SsdForward` (our kernels).
    Op,
    /// `candle_ssm::reference::ssd` (plain candle ops).
    Reference,
}

impl Block {
    /// Random weights from `rng` (on the CPU: candle's CPU generator cannot be
    /// seeded, and the same weights are wanted on every device).
    fn new(cfg: Config, rng: &mut Rng) -> Result<Self> {
        let dev = &Device::Cpu;
        let mut r =
            |dims: &[usize], s: f32| -> Result<Var> { Var::from_tensor(&rng.normal(dims, s)?) };
        let h = cfg.heads;
        let embed = r(&[cfg.vocab, cfg.d_model], 1.0)?;
        let in_proj = r(
            &[cfg.d_in_proj(), cfg.d_model],
            (cfg.d_model as f32).powf(-0.5),
        )?;
        let conv_w = r(&[cfg.conv_dim(), cfg.conv], 0.5)?;
        let out_proj = r(&[cfg.d_model, cfg.d_inner], (cfg.d_inner as f32).powf(-0.5))?;
        let head = r(&[cfg.vocab, cfg.d_model], (cfg.d_model as f32).powf(-0.5))?;
        // dt_bias = softplus^-1(dt) for dt in [0.01, 0.1] (Mamba-2's init).
        let dt = rng.uniform(&[h], 0.01f32.ln(), 0.1f32.ln())?.exp()?;
        let dt_bias = (dt.exp()? - 1.0)?.log()?;
        Ok(Block {
            cfg,
            embed,
            in_proj,
            conv_w,
            conv_b: Var::zeros(cfg.conv_dim(), DType::F32, dev)?,
            dt_bias: Var::from_tensor(&dt_bias)?,
            // A = -exp(a_log) in [-1, -16]: Mamba-2's init range.
            a_log: Var::from_tensor(&rng.uniform(&[h], 0.0, 16f32.ln())?)?,
            d: Var::ones(h, DType::F32, dev)?,
            norm_w: Var::ones(cfg.d_inner, DType::F32, dev)?,
            out_proj,
            head,
        })
    }

    fn vars(&self) -> Vec<(&'static str, &Var)> {
        vec![
            ("embed", &self.embed),
            ("in_proj", &self.in_proj),
            ("conv_w", &self.conv_w),
            ("conv_b", &self.conv_b),
            ("dt_bias", &self.dt_bias),
            ("a_log", &self.a_log),
            ("D", &self.d),
            ("norm_w", &self.norm_w),
            ("out_proj", &self.out_proj),
            ("head", &self.head),
        ]
    }

    /// The same weights on `dev`.
    fn to_device(&self, dev: &Device) -> Result<Self> {
        let m = |v: &Var| Var::from_tensor(&v.as_tensor().to_device(dev)?);
        Ok(Block {
            cfg: self.cfg,
            embed: m(&self.embed)?,
            in_proj: m(&self.in_proj)?,
            conv_w: m(&self.conv_w)?,
            conv_b: m(&self.conv_b)?,
            dt_bias: m(&self.dt_bias)?,
            a_log: m(&self.a_log)?,
            d: m(&self.d)?,
            norm_w: m(&self.norm_w)?,
            out_proj: m(&self.out_proj)?,
            head: m(&self.head)?,
        })
    }

    /// Logits `(b, L, V)` for tokens `(b, L)` (u32).
    fn forward(&self, tokens: &Tensor, ssd: Ssd) -> Result<Tensor> {
        let c = self.cfg;
        let (b, l) = tokens.dims2()?;
        let (h, p, g, n) = (c.heads, c.head_dim(), c.groups, c.d_state);
        let u = self
            .embed
            .as_tensor()
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, l, c.d_model))?;
        // In-projection: (b, L, d_in_proj) = u W^T.
        let proj = u.broadcast_matmul(&self.in_proj.as_tensor().t()?)?;
        let z = proj.narrow(2, 0, c.d_inner)?;
        let xbc = proj.narrow(2, c.d_inner, c.conv_dim())?;
        let dt = proj.narrow(2, c.d_inner + c.conv_dim(), h)?;
        let xbc = causal_depthwise_conv(&xbc, self.conv_w.as_tensor(), self.conv_b.as_tensor())?
            .silu()?;
        let x = xbc.narrow(2, 0, c.d_inner)?.reshape((b, l, h, p))?;
        let bm = xbc.narrow(2, c.d_inner, g * n)?.reshape((b, l, g, n))?;
        let cm = xbc
            .narrow(2, c.d_inner + g * n, g * n)?
            .reshape((b, l, g, n))?;
        let z = z.reshape((b, l, h, p))?;
        let a = self.a_log.as_tensor().exp()?.neg()?;
        let (dt_bias, d) = (self.dt_bias.as_tensor(), self.d.as_tensor());
        let y = match ssd {
            Ssd::Op => SsdForward::new(&x, &dt, &a, &bm, &cm)
                .d(d)
                .z(&z)
                .dt_bias(dt_bias)
                .dt_softplus(true)
                .chunk_size(16)
                .run()?,
            Ssd::Reference => reference::ssd(
                &x,
                &dt,
                &a,
                &bm,
                &cm,
                Some(d),
                Some(&z),
                Some(dt_bias),
                true,
            )?,
        };
        let y = rms_norm(&y.reshape((b, l, c.d_inner))?, self.norm_w.as_tensor())?;
        let h_out = (u + y.broadcast_matmul(&self.out_proj.as_tensor().t()?)?)?;
        h_out.broadcast_matmul(&self.head.as_tensor().t()?)
    }
}

/// Depthwise causal conv along L: `out[t, c] = bias[c] + sum_k w[c, k] x[t - K + 1 + k, c]`,
/// zero before the start. `x: (b, L, C)`, `w: (C, K)`.
fn causal_depthwise_conv(x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, l, ch) = x.dims3()?;
    let k = w.dim(1)?;
    let padded = Tensor::cat(
        &[&Tensor::zeros((b, k - 1, ch), x.dtype(), x.device())?, x],
        1,
    )?;
    let mut out = bias
        .reshape((1, 1, ch))?
        .broadcast_as((b, l, ch))?
        .contiguous()?;
    for j in 0..k {
        let tap = w.narrow(1, j, 1)?.reshape((1, 1, ch))?;
        out = (out + padded.narrow(1, j, l)?.broadcast_mul(&tap)?)?;
    }
    Ok(out)
}

fn rms_norm(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + 1e-5)?.sqrt()?)?.broadcast_mul(w)
}

/// Mean cross-entropy of `logits (b, L, V)` against `targets (b, L)` (u32).
fn cross_entropy(logits: &Tensor, targets: &Tensor, vocab: usize) -> Result<Tensor> {
    let logits = logits.reshape(((), vocab))?;
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &m)?;
    let logp = logits.broadcast_sub(&lse)?;
    let picked = logp.gather(&targets.flatten_all()?.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// xorshift64*: a deterministic random stream without another dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u32() as f32 + 0.5) / 4_294_967_296.0
    }
    fn uniform(&mut self, dims: &[usize], lo: f32, hi: f32) -> Result<Tensor> {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * self.unit()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }
    /// Normal(0, scale^2), by Box-Muller.
    fn normal(&mut self, dims: &[usize], scale: f32) -> Result<Tensor> {
        let n = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2) = (self.unit(), self.unit());
                scale * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }
}

/// A batch of the delay task: random tokens; the target at `t` is the token
/// at `t - delay` (0 before the start).
fn delay_batch(
    rng: &mut Rng,
    b: usize,
    l: usize,
    vocab: usize,
    delay: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let input: Vec<u32> = (0..b * l)
        .map(|_| 1 + rng.next_u32() % (vocab as u32 - 1))
        .collect();
    let target: Vec<u32> = (0..b * l)
        .map(|i| {
            let t = i % l;
            if t >= delay {
                input[i - delay]
            } else {
                0
            }
        })
        .collect();
    Ok((
        Tensor::from_vec(input, (b, l), dev)?,
        Tensor::from_vec(target, (b, l), dev)?,
    ))
}

/// AdamW (decoupled weight decay), the update of torch.optim.AdamW.
struct AdamW {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i32,
    moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    fn new(vars: &[(&'static str, &Var)], lr: f64) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            step: 0,
            moments,
        })
    }

    fn step(&mut self, vars: &[(&'static str, &Var)], grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c1 = 1.0 - self.beta1.powi(self.step);
        let c2 = 1.0 - self.beta2.powi(self.step);
        for ((_, var), (m, v)) in vars.iter().zip(self.moments.iter_mut()) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            *m = ((m.clone() * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            *v = ((v.clone() * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = ((m.clone() / c1)? / ((v.clone() / c2)?.sqrt()? + self.eps)?)?;
            let w = var.as_tensor();
            let decayed = (w * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

/// The log: printed as it is written, kept for `$SSM_RESULTS_DIR`.
struct Log(String);

impl Log {
    fn line(&mut self, s: impl AsRef<str>) {
        println!("{}", s.as_ref());
        let _ = writeln!(self.0, "{}", s.as_ref());
    }
}

fn max_rel(got: &Tensor, want: &Tensor) -> Result<f32> {
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let diff = (got - &want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-6))
}

/// Output and every weight gradient of the op block vs the reference block on
/// the block's device; `Ok(worst relative error)`.
fn check(
    block: &Block,
    tokens: &Tensor,
    targets: &Tensor,
    log: &mut Log,
    what: &str,
) -> Result<(f32, Tensor)> {
    let vocab = block.cfg.vocab;
    let t0 = Instant::now();
    let got = block.forward(tokens, Ssd::Op)?;
    let g_got = cross_entropy(&got, targets, vocab)?.backward()?;
    let t_op = t0.elapsed();
    let t0 = Instant::now();
    let want = block.forward(tokens, Ssd::Reference)?;
    let g_want = cross_entropy(&want, targets, vocab)?.backward()?;
    let t_ref = t0.elapsed();
    let mut worst = max_rel(&got, &want)?;
    log.line(format!(
        "{what}: logits max|op - reference| / max|reference| = {worst:.2e} (op fwd+bwd {:.1} ms, reference {:.1} ms)",
        t_op.as_secs_f64() * 1e3,
        t_ref.as_secs_f64() * 1e3
    ));
    let mut parts = Vec::new();
    for (name, v) in block.vars() {
        let (Some(a), Some(b)) = (g_got.get(v.as_tensor()), g_want.get(v.as_tensor())) else {
            candle_core::bail!("{what}: no gradient for {name}");
        };
        let e = max_rel(a, b)?;
        parts.push(format!("{name} {e:.1e}"));
        worst = worst.max(e);
    }
    log.line(format!(
        "{what}: gradients (relative to max|reference|): {}",
        parts.join(", ")
    ));
    Ok((worst, got))
}

fn main() -> Result<()> {
    let mut steps = 300usize;
    let mut seed = 7u64;
    let mut train_on: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--steps" => steps = args.next().and_then(|v| v.parse().ok()).unwrap_or(steps),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--train-on" => train_on = args.next(),
            other => {
                eprintln!("mamba2_block: unknown argument {other} (--steps N, --seed S, --train-on cpu|cuda)");
                std::process::exit(2);
            }
        }
    }
    let mut log = Log(String::new());
    let ok = run(steps, seed, train_on.as_deref(), &mut log)?;
    if let Ok(dir) = std::env::var("SSM_RESULTS_DIR") {
        let path = std::path::Path::new(&dir).join("candle-mamba2-block.log");
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, &log.0)) {
            eprintln!("mamba2_block: writing {}: {e}", path.display());
        } else {
            println!("log written to {}", path.display());
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// The GPU, when built with `cuda` and one is present.
fn gpu(log: &mut Log) -> Option<Device> {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => {
                let e = e.to_string();
                let first = e.lines().next().unwrap_or("");
                log.line(format!("GPU: none ({first}); CPU only"))
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    log.line("GPU: not built with --features cuda; CPU only");
    None
}

fn run(steps: usize, seed: u64, train_on: Option<&str>, log: &mut Log) -> Result<bool> {
    let cfg = Config {
        vocab: 8,
        d_model: 32,
        d_inner: 64,
        heads: 4,
        groups: 1,
        d_state: 16,
        conv: 4,
    };
    let (batch, seqlen, delay) = (16usize, 64usize, 6usize);
    log.line(format!(
        "candle-ssm mamba2_block: {cfg:?}, P = {}, batch {batch}, L = {seqlen}, delay task (delay {delay} > conv reach {})",
        cfg.head_dim(),
        cfg.conv - 1
    ));
    let cpu = Device::Cpu;
    let mut rng = Rng::new(seed);
    let mut ok = true;
    // Tolerance of the checks: f32 chunked SSD vs the sequential recurrence,
    // then RMSNorm and matmuls; the chunked algorithm reorders sums.
    let tol = 2e-3f32;

    // 1. The checks, on small shapes, CPU then GPU.
    let block = Block::new(cfg, &mut rng)?;
    let (tokens, targets) = delay_batch(&mut rng, 2, 24, cfg.vocab, delay, &cpu)?;
    let (worst, cpu_logits) = check(&block, &tokens, &targets, log, "CPU")?;
    if worst > tol {
        log.line(format!("CPU check FAILED: {worst:.2e} > {tol:.0e}"));
        ok = false;
    }
    let gpu = gpu(log);
    if gpu.is_none() && std::env::var("SSM_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        log.line("SSM_REQUIRE_GPU=1 and no GPU: FAILED");
        ok = false;
    }
    if let Some(dev) = &gpu {
        let gblock = block.to_device(dev)?;
        let (gt, gtg) = (tokens.to_device(dev)?, targets.to_device(dev)?);
        let (worst, gpu_logits) = check(&gblock, &gt, &gtg, log, "GPU")?;
        let cross = max_rel(&gpu_logits, &cpu_logits)?;
        log.line(format!("GPU vs CPU (both our op): logits {cross:.2e}"));
        if worst.max(cross) > tol {
            log.line(format!(
                "GPU check FAILED: {:.2e} > {tol:.0e}",
                worst.max(cross)
            ));
            ok = false;
        }
    }

    // 2. Training.
    let dev = match (train_on, &gpu) {
        (Some("cpu"), _) | (None, None) => cpu.clone(),
        (Some("cuda"), Some(d)) | (None, Some(d)) => d.clone(),
        (Some(other), _) => candle_core::bail!("--train-on {other}: cpu, or cuda with a GPU"),
    };
    let model = Block::new(cfg, &mut rng)?.to_device(&dev)?;
    let vars = model.vars();
    let mut opt = AdamW::new(&vars, 3e-3)?;
    log.line(format!(
        "training on {:?}: {steps} steps of AdamW (lr 3e-3, weight decay 0.01), loss at start ~ ln({}) = {:.3}",
        dev.location(),
        cfg.vocab,
        (cfg.vocab as f64).ln()
    ));
    let t0 = Instant::now();
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    let mut window = Vec::new();
    for step in 1..=steps {
        let (x, y) = delay_batch(&mut rng, batch, seqlen, cfg.vocab, delay, &dev)?;
        let logits = model.forward(&x, Ssd::Op)?;
        let loss = cross_entropy(&logits, &y, cfg.vocab)?;
        let grads = loss.backward()?;
        opt.step(&vars, &grads)?;
        let l = loss.to_scalar::<f32>()?;
        if !l.is_finite() {
            log.line(format!("step {step}: loss {l}: FAILED (not finite)"));
            return Ok(false);
        }
        if step == 1 {
            first = l;
        }
        window.push(l);
        if step % 25 == 0 || step == 1 || step == steps {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            log.line(format!(
                "step {step:4}  loss {l:.4}  (mean of the last {} {mean:.4})  {:.1} s",
                window.len(),
                t0.elapsed().as_secs_f64()
            ));
            last = mean;
            window.clear();
        }
    }
    let per_step = t0.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    let falling = last < 0.7 * first;
    log.line(format!(
        "loss {first:.4} -> {last:.4} in {steps} steps ({per_step:.1} ms/step): {}",
        if falling {
            "falling"
        } else {
            "NOT falling (FAILED)"
        }
    ));
    ok &= falling;
    log.line(if ok {
        "mamba2_block: OK"
    } else {
        "mamba2_block: FAILED"
    });
    Ok(ok)
}
