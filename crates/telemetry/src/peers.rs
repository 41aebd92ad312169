//! Peer timings: mamba_ssm (and fla) timed by `ci/peers/peers.py` on the same
//! device in the same run as our kernels, imported into the run's result set so
//! reports and the README table show the ratio.
//!
//! The timing file (`"schema": "ssm-peer-timings"`, version 1) holds one entry
//! per (implementation, workload, pass) with the [`Problem`] in its serde form,
//! the peer's configuration and its median / p10 / p90. [`import`] turns each
//! entry into a [`BenchResult`] whose floor is at the given ceilings (the run's
//! own), through [`BenchResult::new`] like every other producer.
//!
//! Pairing ([`peer_for`]): a peer result belongs to one of ours when workload,
//! pass and dtype agree and the problems are equal once the SSD chunk length is
//! ignored (each implementation runs its own best chunk; the chunk changes the
//! MMA work of the model, not what is computed).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Result, TelemetryError};
use crate::problem::{Pass, Problem};
use crate::record::{BenchResult, Measurement, ResultSet, TimingMethod, TimingStats};
use crate::roofline::Ceilings;
use crate::traffic::backward_modelled;

/// The schema name a peer timing file declares.
pub const PEER_SCHEMA: &str = "ssm-peer-timings";
/// The newest peer-file version this build reads.
pub const PEER_SCHEMA_VERSION: u32 = 1;

/// A peer timing file as `ci/peers/peers.py` writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct PeerFile {
    /// Must be [`PEER_SCHEMA`].
    pub schema: String,
    /// At most [`PEER_SCHEMA_VERSION`].
    pub version: u32,
    /// The CUDA device name the peers ran on.
    pub device: String,
    #[serde(default)]
    /// When the file was written (Unix seconds; 0 when absent).
    pub created_unix_s: u64,
    /// Versions of torch, triton, mamba_ssm, fla, python.
    #[serde(default)]
    pub software: BTreeMap<String, String>,
    #[serde(default)]
    /// Free-text notes of the run.
    pub notes: Vec<String>,
    /// One entry per timed call.
    pub results: Vec<PeerEntry>,
}

/// One timed peer call.
#[derive(Clone, Debug, Deserialize)]
pub struct PeerEntry {
    /// `mamba_ssm.triton.mamba_chunk_scan_combined`, `mamba_ssm.cuda.selective_scan_fn`, ...
    pub implementation: String,
    /// The workload name, as ours use it (`M2-2.7B`, ...).
    pub workload: String,
    #[serde(default)]
    /// The pass timed (forward when absent).
    pub pass: Pass,
    /// The problem, as ours record it (results are compared only on equal problems).
    pub problem: Problem,
    #[serde(default)]
    /// The peer's own settings (block sizes, flags), kept for the record.
    pub config: BTreeMap<String, Value>,
    /// The timing summary.
    pub timing: PeerTiming,
    #[serde(default)]
    /// A note on this entry.
    pub note: Option<String>,
}

/// The peer's timing summary, in milliseconds.
#[derive(Clone, Debug, Deserialize)]
pub struct PeerTiming {
    /// `triton_do_bench_median` or `torch_cuda_events`.
    pub method: String,
    /// Median, ms.
    pub median_ms: f64,
    /// 10th percentile, ms.
    pub p10_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// Timed repetitions.
    pub samples: usize,
    /// Optional extremes and mean; when absent, p10 / p90 / median stand in
    /// (the run's notes say so).
    #[serde(default)]
    pub min_ms: Option<f64>,
    #[serde(default)]
    /// Slowest sample, ms.
    pub max_ms: Option<f64>,
    #[serde(default)]
    /// Mean, ms.
    pub mean_ms: Option<f64>,
}

fn method_of(name: &str, source_name: &str, at: &str) -> Result<TimingMethod> {
    if name.starts_with("triton_do_bench") {
        Ok(TimingMethod::TritonDoBench)
    } else if name == "torch_cuda_events" {
        Ok(TimingMethod::TorchCudaEvents)
    } else {
        Err(TelemetryError::parse(
            source_name,
            format!("{at}: timing method `{name}` is not `triton_do_bench_median` or `torch_cuda_events`"),
        ))
    }
}

fn stats(t: &PeerTiming, source_name: &str, at: &str) -> Result<TimingStats> {
    let method = method_of(&t.method, source_name, at)?;
    let ok = |x: f64| x.is_finite() && x > 0.0;
    let (min, max) = (t.min_ms.unwrap_or(t.p10_ms), t.max_ms.unwrap_or(t.p90_ms));
    if !(ok(t.median_ms) && ok(t.p10_ms) && ok(t.p90_ms) && ok(min) && ok(max))
        || !(min <= t.p10_ms
            && t.p10_ms <= t.median_ms
            && t.median_ms <= t.p90_ms
            && t.p90_ms <= max)
        || t.samples == 0
    {
        return Err(TelemetryError::parse(
            source_name,
            format!(
                "{at}: implausible timing (min {min} <= p10 {} <= median {} <= p90 {} <= max {max} ms, {} samples expected)",
                t.p10_ms, t.median_ms, t.p90_ms, t.samples
            ),
        ));
    }
    Ok(TimingStats {
        method,
        samples: t.samples,
        median_ms: t.median_ms,
        mean_ms: t.mean_ms.filter(|m| ok(*m)).unwrap_or(t.median_ms),
        min_ms: min,
        max_ms: max,
        p10_ms: t.p10_ms,
        p90_ms: t.p90_ms,
        spread: (t.p90_ms - t.p10_ms) / t.median_ms,
    })
}

/// Parse and check a peer timing file (schema, version, entries).
pub fn parse(text: &str, source_name: &str) -> Result<PeerFile> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| TelemetryError::parse(source_name, format!("not JSON: {e}")))?;
    let schema = value
        .get("schema")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = value.get("version").and_then(Value::as_u64).unwrap_or(0) as u32;
    if schema != PEER_SCHEMA || version != PEER_SCHEMA_VERSION {
        return Err(TelemetryError::Schema {
            source_name: source_name.to_string(),
            schema: schema.to_string(),
            version,
            expected: PEER_SCHEMA,
            max_version: PEER_SCHEMA_VERSION,
        });
    }
    let file: PeerFile = serde_json::from_value(value)
        .map_err(|e| TelemetryError::parse(source_name, e.to_string()))?;
    for (i, e) in file.results.iter().enumerate() {
        let at = format!("results[{i}] ({} {})", e.implementation, e.workload);
        if e.implementation.is_empty() || e.workload.is_empty() {
            return Err(TelemetryError::parse(
                source_name,
                format!("{at}: empty implementation or workload"),
            ));
        }
        if e.problem.tokens() == 0 {
            return Err(TelemetryError::parse(
                source_name,
                format!("{at}: the problem has no tokens (`{}`)", e.problem.label()),
            ));
        }
        if e.pass != Pass::Forward && !backward_modelled(&e.problem) {
            return Err(TelemetryError::parse(
                source_name,
                format!(
                    "{at}: pass `{}` of a `{}` problem: only the scan and SSD have a backward",
                    e.pass,
                    e.problem.op_name()
                ),
            ));
        }
        stats(&e.timing, source_name, &at)?;
    }
    Ok(file)
}

/// The peer results of `file` with floors at `ceilings`.
pub fn results(
    file: &PeerFile,
    source_name: &str,
    ceilings: &Ceilings,
) -> Result<Vec<BenchResult>> {
    let mut out: Vec<BenchResult> = Vec::with_capacity(file.results.len());
    for (i, e) in file.results.iter().enumerate() {
        let at = format!("results[{i}] ({} {})", e.implementation, e.workload);
        let timing = stats(&e.timing, source_name, &at)?;
        let m = Measurement::forward(&e.implementation, &e.workload, e.problem, timing, vec![]);
        let mut r = BenchResult::new(Measurement { pass: e.pass, ..m }, ceilings);
        r.config = e.config.clone();
        r.note = e.note.clone();
        if out.iter().any(|o| o.id == r.id) {
            return Err(TelemetryError::parse(
                source_name,
                format!("{at}: result id `{}` appears twice", r.id),
            ));
        }
        out.push(r);
    }
    Ok(out)
}

/// Parse a peer timing file and build its results with floors at `ceilings`
/// (the run's, so ours and the peer's share them). `source_name` names the
/// input in errors.
pub fn import(text: &str, source_name: &str, ceilings: &Ceilings) -> Result<Vec<BenchResult>> {
    results(&parse(text, source_name)?, source_name, ceilings)
}

/// Whether `r` is a peer's result (timed by the peer harness).
pub fn is_peer(r: &BenchResult) -> bool {
    r.timing.method.is_peer()
}

/// The problem with what pairing ignores (the SSD chunk length) normalised.
fn pairing_key(p: &Problem) -> Problem {
    match *p {
        Problem::Ssd(mut s) => {
            s.chunk_size = 0;
            Problem::Ssd(s)
        }
        other => other,
    }
}

/// The peer result paired with our result `ours` (same workload, pass, dtype and
/// problem up to the chunk length); with several (mamba_ssm and fla), the
/// fastest. `None` for a peer result or one without a peer.
pub fn peer_for<'s>(set: &'s ResultSet, ours: &BenchResult) -> Option<&'s BenchResult> {
    if is_peer(ours) {
        return None;
    }
    let key = pairing_key(&ours.problem);
    set.results
        .iter()
        .filter(|p| {
            is_peer(p)
                && p.workload == ours.workload
                && p.pass == ours.pass
                && p.problem.dtype() == ours.problem.dtype()
                && pairing_key(&p.problem) == key
        })
        .min_by(|a, b| a.timing.median_ms.total_cmp(&b.timing.median_ms))
}

/// Peer median / our median (above 1: ours is faster).
pub fn ratio(ours: &BenchResult, peer: &BenchResult) -> f64 {
    peer.timing.median_ms / ours.timing.median_ms
}

impl ResultSet {
    /// Add peer results (from [`import`], at this set's ceilings) to this set.
    /// An id already present gets `#2`, `#3`, ... on its implementation, and the
    /// run's notes say so and how many peers were added.
    pub fn add_peers(&mut self, rows: Vec<BenchResult>) {
        let count = rows.len();
        for mut r in rows {
            let base = r.implementation.clone();
            let mut n = 1;
            while self.get(&r.id).is_some() {
                n += 1;
                r.implementation = format!("{base}#{n}");
                r.id = crate::record::result_id_for(
                    &r.implementation,
                    &r.workload,
                    &r.problem,
                    r.pass,
                );
            }
            if n > 1 {
                self.run.notes.push(format!(
                    "peer {base} {}: id taken, renamed {}",
                    r.workload, r.implementation
                ));
            }
            self.results.push(r);
        }
        self.run.notes.push(format!(
            "{count} peer results (mamba_ssm / fla from ci/peers) at this set's ceilings"
        ));
    }

    /// Parse a peer file, check it came from this set's device, and add its results.
    pub fn add_peer_file(&mut self, text: &str, source_name: &str) -> Result<usize> {
        let file = parse(text, source_name)?;
        if file.device != self.device.name {
            return Err(TelemetryError::Mismatch(format!(
                "{source_name}: peers timed on `{}`, this result set on `{}`",
                file.device, self.device.name
            )));
        }
        let rows = results(&file, source_name, &self.ceilings)?;
        let n = rows.len();
        if !file.software.is_empty() {
            let sw: Vec<String> = file
                .software
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            self.run
                .notes
                .push(format!("peers ({source_name}): {}", sw.join(", ")));
        }
        self.run
            .notes
            .extend(file.notes.iter().map(|n| format!("peers: {n}")));
        self.add_peers(rows);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/peers/peers.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_fixture_imports_with_floors_at_the_given_ceilings() {
        let h200 = Ceilings::datasheet("NVIDIA H200");
        let rows = import(&fixture(), "peers.json", &h200).unwrap();
        assert_eq!(rows.len(), 5);
        let ssd = &rows[0];
        assert_eq!(
            ssd.id,
            "mamba_ssm.triton.mamba_chunk_scan_combined/M2-2.7B/bf16"
        );
        assert_eq!(ssd.timing.method, TimingMethod::TritonDoBench);
        assert_eq!(ssd.config["chunk_size"], 256);
        assert!((ssd.timing.spread - 0.02 / 0.691).abs() < 1e-9);
        // The floor is at the given ceilings: the H100's are slower, so its floor is longer.
        let h100 = import(
            &fixture(),
            "p",
            &Ceilings::datasheet("NVIDIA H100 80GB HBM3"),
        )
        .unwrap();
        assert!(h100[0].roofline.floor_ms > ssd.roofline.floor_ms);
        let fb = &rows[1];
        assert_eq!(fb.pass, Pass::ForwardBackward);
        assert!(fb.id.ends_with("/fwd+bwd"));
        assert!(fb.roofline.floor_ms > ssd.roofline.floor_ms);
        assert!(rows[4].note.as_deref().unwrap().contains("no D"));
    }

    #[test]
    fn bad_files_are_typed_errors_naming_the_entry() {
        let c = Ceilings::datasheet("NVIDIA H200");
        let text = fixture();
        let wrong = text.replace("\"ssm-peer-timings\"", "\"other\"");
        assert!(matches!(
            import(&wrong, "p", &c),
            Err(TelemetryError::Schema { .. })
        ));
        let slow_p10 = text.replace("\"p10_ms\": 0.681", "\"p10_ms\": 0.9");
        let e = import(&slow_p10, "p", &c).unwrap_err().to_string();
        assert!(e.contains("results[0]") && e.contains("implausible"), "{e}");
        let method = text.replace("\"triton_do_bench_median\"", "\"stopwatch\"");
        assert!(import(&method, "p", &c)
            .unwrap_err()
            .to_string()
            .contains("`stopwatch`"));
        let step_bwd = text.replace(
            "\"pass\": \"forward\", \"problem\": {\"op\": \"mamba2_step\"",
            "\"pass\": \"forward_backward\", \"problem\": {\"op\": \"mamba2_step\"",
        );
        assert_ne!(step_bwd, text);
        assert!(import(&step_bwd, "p", &c)
            .unwrap_err()
            .to_string()
            .contains("backward"));
        assert!(import("{", "p", &c).is_err());
    }

    #[test]
    fn peers_pair_with_ours_ignoring_the_chunk_length() {
        use crate::record::{DeviceInfo, RunInfo};
        let c = Ceilings::datasheet("NVIDIA H200");
        let device = DeviceInfo {
            name: "NVIDIA H200".into(),
            ..Default::default()
        };
        let mut set = ResultSet::new(RunInfo::default(), device, &c);
        let file = parse(&fixture(), "p").unwrap();
        let Problem::Ssd(mut ours_shape) = file.results[0].problem else {
            panic!("fixture entry 0 is SSD");
        };
        ours_shape.chunk_size = 64;
        let timing = TimingStats::from_samples(TimingMethod::CudaEvents, &[0.3455]).unwrap();
        let problem = Problem::Ssd(ours_shape);
        let m = Measurement::forward("mamba2-ssd.cuda", "M2-2.7B", problem, timing, vec![]);
        let ours = BenchResult::new(m, &c);
        set.results.push(ours.clone());
        assert_eq!(set.add_peer_file(&fixture(), "peers.json").unwrap(), 5);
        let peer = peer_for(&set, &ours).expect("paired");
        assert_eq!(
            peer.implementation,
            "mamba_ssm.triton.mamba_chunk_scan_combined"
        );
        assert_eq!(peer.pass, Pass::Forward);
        assert!((ratio(&ours, peer) - 2.0).abs() < 1e-12);
        assert!(peer_for(&set, peer).is_none(), "peers pair with ours only");
        assert!(set
            .run
            .notes
            .iter()
            .any(|n| n.contains("mamba_ssm 2.3.2.post1")));
        // Adding the same file again renames instead of duplicating ids.
        set.add_peer_file(&fixture(), "peers.json").unwrap();
        assert!(set
            .get("mamba_ssm.triton.mamba_chunk_scan_combined#2/M2-2.7B/bf16")
            .is_some());
        // Peers from another card are refused.
        let mut other = ResultSet::new(RunInfo::default(), DeviceInfo::default(), &c);
        let e = other
            .add_peer_file(&fixture(), "peers.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("NVIDIA H200"), "{e}");
    }
}
