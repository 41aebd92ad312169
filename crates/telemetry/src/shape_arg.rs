//! The `--shape`, `--options` and `--dtype` arguments that `ssmk verify` and
//! `ssmk bench` take for a problem the user types, parsed into a [`Problem`]:
//!
//! ```text
//! ssd   --shape b=2,L=4097,H=24,P=64,N=96,G=3   --options all|none|z,D,bias,...
//! scan  --shape b=4,D=5120,N=16,L=4096,G=1      (G=const: constant B and C)
//! m1-step --shape b=256,D=5120,N=16,G=1
//! m2-step --shape b=256,H=80,P=64,N=128,G=1
//! ```
//!
//! Keys are the letters of docs/DESIGN.md's notation (case-insensitive: `l=4097`
//! works too); a missing, repeated or unknown key, or a value that is not a
//! whole number, is an error that lists the keys the operation takes.

use ssm_core::DType;

use crate::problem::{
    Mamba1ScanShape, Mamba1StepShape, Mamba2StepShape, Problem, SkipKind, SsdShape,
};

/// The operations a `--shape` can describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeOp {
    /// The Mamba-2 SSD forward.
    Ssd,
    /// The Mamba-1 selective scan.
    Scan,
    /// A Mamba-1 decode step.
    Mamba1Step,
    /// A Mamba-2 decode step.
    Mamba2Step,
}

impl ShapeOp {
    /// Shape keys: required ones, then ones with a default (and the default).
    fn keys(
        self,
    ) -> (
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    ) {
        match self {
            ShapeOp::Ssd => (&["b", "L", "H", "P", "N"], &[("G", "1")]),
            ShapeOp::Scan => (&["b", "D", "N", "L"], &[("G", "1")]),
            ShapeOp::Mamba1Step => (&["b", "D", "N"], &[("G", "1")]),
            ShapeOp::Mamba2Step => (&["b", "H", "P", "N"], &[("G", "1")]),
        }
    }

    /// The names `--options` takes for this operation.
    pub fn option_names(self) -> &'static [&'static str] {
        match self {
            // D: per head, Dp: per head and head-dim column; s0: initial states.
            ShapeOp::Ssd => &["z", "D", "Dp", "bias", "softplus", "s0", "final"],
            ShapeOp::Scan => &["z", "D", "bias", "softplus", "h0", "final"],
            ShapeOp::Mamba1Step => &["z", "D", "bias", "softplus"],
            ShapeOp::Mamba2Step => &["z", "D", "Dp", "bias", "softplus"],
        }
    }

    /// `ssd`, `scan`, `m1-step` or `m2-step`: the word the CLI uses.
    pub fn name(self) -> &'static str {
        match self {
            ShapeOp::Ssd => "ssd",
            ShapeOp::Scan => "scan",
            ShapeOp::Mamba1Step => "m1-step",
            ShapeOp::Mamba2Step => "m2-step",
        }
    }

    fn key_list(self) -> String {
        let (required, optional) = self.keys();
        let mut all: Vec<String> = required.iter().map(|k| k.to_string()).collect();
        all.extend(optional.iter().map(|(k, d)| format!("{k} (default {d})")));
        all.join(", ")
    }
}

/// Parse `shape` (`k=v,k=v,...`), `options` (`all`, `none` or a comma list) and the
/// element type into the [`Problem`] of `op`. `chunk_size` is the SSD's chunk
/// length (it sets the MMA work the roofline counts; ignored by other ops).
pub fn parse_problem(
    op: ShapeOp,
    shape: &str,
    options: &str,
    dtype: DType,
    chunk_size: usize,
) -> Result<Problem, String> {
    let values = parse_shape(op, shape)?;
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
    };
    let num = |k: &'static str| -> Result<usize, String> {
        let v = get(k).unwrap_or("");
        v.parse::<usize>().map_err(|_| {
            format!(
                "--shape: {k}={v} is not a whole number (keys for {}: {})",
                op.name(),
                op.key_list()
            )
        })
    };
    let on = parse_options(op, options)?;
    let has = |name: &str| on.contains(&name);
    let skip = if has("Dp") {
        SkipKind::PerHeadDim
    } else if has("D") {
        SkipKind::PerHead
    } else {
        SkipKind::None
    };
    Ok(match op {
        ShapeOp::Ssd => Problem::Ssd(SsdShape {
            batch: num("b")?,
            seqlen: num("L")?,
            heads: num("H")?,
            head_dim: num("P")?,
            d_state: num("N")?,
            groups: num("G")?,
            chunk_size,
            dtype,
            z: has("z"),
            d: skip,
            dt_bias: has("bias"),
            softplus: has("softplus"),
            initial_states: has("s0"),
            final_states: has("final"),
        }),
        ShapeOp::Scan => Problem::Mamba1Scan(Mamba1ScanShape {
            batch: num("b")?,
            d_inner: num("D")?,
            d_state: num("N")?,
            seqlen: num("L")?,
            groups: match get("G") {
                Some(g) if g.eq_ignore_ascii_case("const") => None,
                _ => Some(num("G")?),
            },
            dtype,
            z: has("z"),
            d: has("D"),
            delta_bias: has("bias"),
            softplus: has("softplus"),
            initial_states: has("h0"),
            final_states: has("final"),
        }),
        ShapeOp::Mamba1Step => Problem::Mamba1Step(Mamba1StepShape {
            batch: num("b")?,
            d_inner: num("D")?,
            d_state: num("N")?,
            groups: num("G")?,
            dtype,
            z: has("z"),
            d: has("D"),
            dt_bias: has("bias"),
            softplus: has("softplus"),
        }),
        ShapeOp::Mamba2Step => Problem::Mamba2Step(Mamba2StepShape {
            batch: num("b")?,
            heads: num("H")?,
            head_dim: num("P")?,
            d_state: num("N")?,
            groups: num("G")?,
            dtype,
            z: has("z"),
            d: skip,
            dt_bias: has("bias"),
            softplus: has("softplus"),
        }),
    })
}

/// `k=v` pairs with canonical key names, every required key present, defaults
/// filled in.
fn parse_shape(op: ShapeOp, shape: &str) -> Result<Vec<(&'static str, String)>, String> {
    let (required, optional) = op.keys();
    let known = || {
        required
            .iter()
            .copied()
            .chain(optional.iter().map(|(k, _)| *k))
    };
    let mut values: Vec<(&'static str, String)> = Vec::new();
    for part in shape.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // One `=` per pair: `b=2 D=8` is two pairs missing their comma.
        let pair = part.split_once('=').filter(|(_, v)| !v.contains('='));
        let Some((key, value)) = pair else {
            return Err(format!(
                "--shape: `{part}` is not key=value (pairs are comma-separated; keys for {}: {})",
                op.name(),
                op.key_list()
            ));
        };
        let key = key.trim();
        let Some(canonical) = known().find(|k| k.eq_ignore_ascii_case(key)) else {
            return Err(format!(
                "--shape: unknown key `{key}` for {} (keys: {})",
                op.name(),
                op.key_list()
            ));
        };
        if values.iter().any(|(k, _)| *k == canonical) {
            return Err(format!("--shape: {canonical} given twice"));
        }
        values.push((canonical, value.trim().to_string()));
    }
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| !values.iter().any(|(v, _)| v == k))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "--shape: {} missing {} (keys: {})",
            op.name(),
            missing.join(", "),
            op.key_list()
        ));
    }
    for (k, default) in optional {
        if !values.iter().any(|(v, _)| v == k) {
            values.push((k, default.to_string()));
        }
    }
    Ok(values)
}

/// The option names switched on: `all`, `none`/empty, or a comma list.
fn parse_options(op: ShapeOp, options: &str) -> Result<Vec<&'static str>, String> {
    let names = op.option_names();
    let trimmed = options.trim();
    if trimmed.eq_ignore_ascii_case("all") {
        // `all` means the per-head D (Dp is the alternative skip shape).
        return Ok(names.iter().copied().filter(|n| *n != "Dp").collect());
    }
    if trimmed.is_empty() || trimmed.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut on = Vec::new();
    for word in trimmed.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        // Exact names first (D and Dp differ by case only from d/dp), then any case.
        let found = names
            .iter()
            .find(|n| **n == word)
            .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(word)));
        match found {
            Some(n) if !on.contains(n) => on.push(*n),
            Some(n) => return Err(format!("--options: {n} given twice")),
            None => {
                return Err(format!(
                    "--options: unknown option `{word}` for {} (all, none, or a comma list of: {})",
                    op.name(),
                    names.join(", ")
                ))
            }
        }
    }
    if on.contains(&"D") && on.contains(&"Dp") {
        return Err("--options: D (per head) and Dp (per head and P) exclude each other".into());
    }
    Ok(on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_13_shape_parses() {
        let p = parse_problem(
            ShapeOp::Ssd,
            "b=2,L=4097,H=24,P=64,N=96,G=3",
            "all",
            DType::Bf16,
            128,
        )
        .unwrap();
        let Problem::Ssd(s) = p else { panic!("{p:?}") };
        assert_eq!(
            (
                s.batch,
                s.seqlen,
                s.heads,
                s.head_dim,
                s.d_state,
                s.groups,
                s.chunk_size
            ),
            (2, 4097, 24, 64, 96, 3, 128)
        );
        assert!(s.z && s.dt_bias && s.softplus && s.initial_states && s.final_states);
        assert_eq!(s.d, SkipKind::PerHead);
        assert_eq!(s.dtype, DType::Bf16);
    }

    #[test]
    fn keys_are_case_insensitive_and_groups_default_to_one() {
        let p = parse_problem(
            ShapeOp::Scan,
            "b=1, d=64, n=16, l=100",
            "z,Softplus",
            DType::F32,
            64,
        )
        .unwrap();
        let Problem::Mamba1Scan(s) = p else {
            panic!("{p:?}")
        };
        assert_eq!(
            (s.batch, s.d_inner, s.d_state, s.seqlen, s.groups),
            (1, 64, 16, 100, Some(1))
        );
        assert!(s.z && s.softplus && !s.d && !s.final_states);
        let c = parse_problem(
            ShapeOp::Scan,
            "b=1,D=8,N=4,L=9,G=const",
            "none",
            DType::F32,
            64,
        );
        assert!(matches!(c, Ok(Problem::Mamba1Scan(s)) if s.groups.is_none()));
        let m2 = parse_problem(
            ShapeOp::Mamba2Step,
            "b=4,H=8,P=64,N=128",
            "Dp,z",
            DType::F16,
            64,
        );
        assert!(matches!(m2, Ok(Problem::Mamba2Step(s)) if s.d == SkipKind::PerHeadDim && s.z));
    }

    #[test]
    fn errors_name_the_key_and_list_the_valid_ones() {
        let err = |op, shape: &str, options: &str| {
            parse_problem(op, shape, options, DType::F32, 64).unwrap_err()
        };
        let e = err(ShapeOp::Ssd, "b=2,L=8,H=2,P=4,N=8,Q=3", "");
        assert!(
            e.contains("unknown key `Q`") && e.contains("b, L, H, P, N, G (default 1)"),
            "{e}"
        );
        let e = err(ShapeOp::Ssd, "b=2,L=8,H=2,P=4", "");
        assert!(e.contains("missing N"), "{e}");
        let e = err(ShapeOp::Ssd, "b=2,L=x,H=2,P=4,N=8", "");
        assert!(e.contains("L=x is not a whole number"), "{e}");
        let e = err(ShapeOp::Ssd, "b=2,b=3,L=8,H=2,P=4,N=8", "");
        assert!(e.contains("b given twice"), "{e}");
        let e = err(ShapeOp::Mamba1Step, "b=2,D=8,N=4", "s0");
        assert!(
            e.contains("unknown option `s0`") && e.contains("z, D, bias, softplus"),
            "{e}"
        );
        let e = err(ShapeOp::Ssd, "b=2,L=8,H=2,P=4,N=8", "D,Dp");
        assert!(e.contains("exclude each other"), "{e}");
        let e = err(ShapeOp::Scan, "b=2 D=8", "");
        assert!(e.contains("not key=value"), "{e}");
    }
}
