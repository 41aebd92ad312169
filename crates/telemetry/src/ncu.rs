//! Measured DRAM traffic from Nsight Compute's CSV output.
//!
//! `ci/bench.sh` runs the benchmark binary once more, each case launched once,
//! under
//!
//! ```text
//! ncu --clock-control none --print-units base --csv \
//!     --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum <cmd>
//! ```
//!
//! and this module reads what it prints. Two layouts exist and both are read:
//! - the default "details" page: one row per (launch, metric) with the columns
//!   `"ID",...,"Kernel Name",...,"Metric Name","Metric Unit","Metric Value"`;
//! - `--page raw`: one row per launch, one column per metric, and a second
//!   header row of units.
//!
//! Lines that are not CSV records (`==PROF==` notes, the program's own output)
//! are skipped. Values may carry thousands separators (`"1,048,576"`); units are
//! scaled to base units (bytes and milliseconds) with SI prefixes (ncu's `Kbyte`
//! is 1000 bytes; `KiB` 1024), so `--print-units base` is not required.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, TelemetryError};

/// ncu's metric for DRAM bytes read.
pub const DRAM_READ: &str = "dram__bytes_read.sum";
/// ncu's metric for DRAM bytes written.
pub const DRAM_WRITE: &str = "dram__bytes_write.sum";
/// ncu's metric for the kernel's duration.
pub const DURATION: &str = "gpu__time_duration.sum";

/// The metrics `ci/bench.sh` asks ncu for.
pub const METRICS: [&str; 3] = [DRAM_READ, DRAM_WRITE, DURATION];

/// One profiled kernel launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NcuLaunch {
    /// ncu's launch ID (profiling order).
    pub id: u64,
    /// The kernel name as ncu printed it.
    pub kernel: String,
    /// Metric values in base units: bytes, milliseconds for times, raw otherwise.
    pub metrics: BTreeMap<String, f64>,
}

/// DRAM bytes of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DramBytes {
    /// Bytes read from DRAM.
    pub read: u64,
    /// Bytes written to DRAM.
    pub write: u64,
}

impl DramBytes {
    /// Read plus written.
    pub fn total(&self) -> u64 {
        self.read + self.write
    }
}

impl NcuLaunch {
    /// The kernel's entry name: ncu's name up to the parameter list, without a
    /// leading return type (`void k<T>(float*)` -> `k<T>`).
    pub fn entry_name(&self) -> &str {
        normalize_kernel_name(&self.kernel)
    }

    /// The launch's DRAM bytes, when ncu reported both metrics.
    pub fn dram(&self) -> Option<DramBytes> {
        let read = *self.metrics.get(DRAM_READ)?;
        let write = *self.metrics.get(DRAM_WRITE)?;
        Some(DramBytes {
            read: read.round() as u64,
            write: write.round() as u64,
        })
    }

    /// ncu's own kernel duration (with `--clock-control none`, at the card's clocks).
    pub fn duration_ms(&self) -> Option<f64> {
        self.metrics.get(DURATION).copied()
    }
}

/// `void k<T>(float*)` -> `k<T>`; `k` -> `k`.
pub fn normalize_kernel_name(name: &str) -> &str {
    let name = name.trim();
    let name = name.split('(').next().unwrap_or(name).trim();
    name.strip_prefix("void ").unwrap_or(name).trim()
}

/// Split one CSV record (RFC 4180 quoting: `""` is a quote inside a quoted field).
fn split_record(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return None; // an unterminated quote: not a record we can trust
    }
    if any {
        fields.push(field);
    }
    Some(fields)
}

/// Parse a metric value: `"1,048,576"` (thousands separators), `"9,5"` (a decimal
/// comma), `"2.5"`. `None` for `n/a` and other non-numbers.
pub fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let groups: Vec<&str> = t.split(',').collect();
    let thousands = groups.len() > 1
        && groups[1..].iter().enumerate().all(|(i, g)| {
            let digits = if i + 2 == groups.len() {
                g.split('.').next().unwrap_or("")
            } else {
                g
            };
            digits.len() == 3 && digits.chars().all(|c| c.is_ascii_digit())
        });
    let normalized = if thousands {
        t.replace(',', "")
    } else if groups.len() == 2 && !t.contains('.') {
        t.replace(',', ".")
    } else {
        t.to_string()
    };
    normalized.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The factor from `unit` to base units (bytes; milliseconds for times).
fn unit_scale(unit: &str) -> f64 {
    match unit.trim() {
        "Kbyte" | "KB" => 1e3,
        "Mbyte" | "MB" => 1e6,
        "Gbyte" | "GB" => 1e9,
        "Tbyte" | "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "nsecond" | "ns" => 1e-6,
        "usecond" | "us" => 1e-3,
        "msecond" | "ms" => 1.0,
        "second" | "s" => 1e3,
        _ => 1.0,
    }
}

fn column(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h.trim() == name)
}

/// Parse ncu's CSV (either layout). `source_name` names the input in errors.
pub fn parse_csv(text: &str, source_name: &str) -> Result<Vec<NcuLaunch>> {
    let records: Vec<(usize, Vec<String>)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.trim_start().starts_with('"'))
        .filter_map(|(i, line)| split_record(line).map(|r| (i + 1, r)))
        .collect();
    let header_at = records
        .iter()
        .position(|(_, r)| column(r, "Kernel Name").is_some())
        .ok_or_else(|| {
            TelemetryError::parse(
                source_name,
                "no CSV header with a \"Kernel Name\" column (was ncu run with --csv?)",
            )
        })?;
    let header = &records[header_at].1;
    let rows = &records[header_at + 1..];
    let launches = if column(header, "Metric Name").is_some() {
        parse_details(header, rows, source_name)?
    } else {
        parse_raw(header, rows, source_name)?
    };
    if launches.is_empty() {
        return Err(TelemetryError::parse(
            source_name,
            "the CSV has a header but no profiled launches",
        ));
    }
    Ok(launches)
}

fn field<'r>(row: &'r [String], index: usize, line: usize, source_name: &str) -> Result<&'r str> {
    row.get(index).map(String::as_str).ok_or_else(|| {
        TelemetryError::parse(
            source_name,
            format!(
                "line {line}: {} fields, expected more than {index}",
                row.len()
            ),
        )
    })
}

fn parse_id(text: &str, line: usize, source_name: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| {
        TelemetryError::parse(
            source_name,
            format!("line {line}: launch ID `{text}` is not a number"),
        )
    })
}

/// The details page: one row per (launch, metric).
fn parse_details(
    header: &[String],
    rows: &[(usize, Vec<String>)],
    source_name: &str,
) -> Result<Vec<NcuLaunch>> {
    let missing = |name: &str| {
        TelemetryError::parse(source_name, format!("the header has no \"{name}\" column"))
    };
    let id_col = column(header, "ID").ok_or_else(|| missing("ID"))?;
    let kernel_col = column(header, "Kernel Name").ok_or_else(|| missing("Kernel Name"))?;
    let name_col = column(header, "Metric Name").ok_or_else(|| missing("Metric Name"))?;
    let unit_col = column(header, "Metric Unit");
    let value_col = column(header, "Metric Value").ok_or_else(|| missing("Metric Value"))?;
    let mut by_id: BTreeMap<u64, NcuLaunch> = BTreeMap::new();
    for (line, row) in rows {
        if row == header {
            continue; // ncu repeats the header when several processes are profiled
        }
        let id = parse_id(field(row, id_col, *line, source_name)?, *line, source_name)?;
        let kernel = field(row, kernel_col, *line, source_name)?.to_string();
        let metric = field(row, name_col, *line, source_name)?.trim().to_string();
        let unit = match unit_col {
            Some(c) => field(row, c, *line, source_name)?,
            None => "",
        };
        let value = field(row, value_col, *line, source_name)?;
        let launch = by_id.entry(id).or_insert_with(|| NcuLaunch {
            id,
            kernel: kernel.clone(),
            metrics: BTreeMap::new(),
        });
        if launch.kernel != kernel {
            return Err(TelemetryError::parse(
                source_name,
                format!(
                    "line {line}: launch {id} is `{}` and `{kernel}`",
                    launch.kernel
                ),
            ));
        }
        if let Some(v) = parse_number(value) {
            launch.metrics.insert(metric, v * unit_scale(unit));
        }
    }
    Ok(by_id.into_values().collect())
}

/// The raw page: one row per launch, metrics as columns, a units row after the header.
fn parse_raw(
    header: &[String],
    rows: &[(usize, Vec<String>)],
    source_name: &str,
) -> Result<Vec<NcuLaunch>> {
    let id_col = column(header, "ID")
        .ok_or_else(|| TelemetryError::parse(source_name, "the header has no \"ID\" column"))?;
    let kernel_col = column(header, "Kernel Name").unwrap_or(0);
    let metric_cols: Vec<(usize, &str)> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.contains("__"))
        .map(|(i, h)| (i, h.trim()))
        .collect();
    let mut units: Vec<String> = vec![String::new(); header.len()];
    let mut launches = Vec::new();
    for (line, row) in rows {
        let id_text = field(row, id_col, *line, source_name)?;
        if id_text.trim().is_empty() {
            units = row.clone(); // the units row
            continue;
        }
        let mut launch = NcuLaunch {
            id: parse_id(id_text, *line, source_name)?,
            kernel: field(row, kernel_col, *line, source_name)?.to_string(),
            metrics: BTreeMap::new(),
        };
        for (c, name) in &metric_cols {
            let unit = units.get(*c).map_or("", String::as_str);
            if let Some(v) = row.get(*c).and_then(|t| parse_number(t)) {
                launch
                    .metrics
                    .insert(name.to_string(), v * unit_scale(unit));
            }
        }
        launches.push(launch);
    }
    launches.sort_by_key(|l| l.id);
    Ok(launches)
}

/// The kernels one benchmark case launches, in order, when run once under ncu
/// (written by the bench binary's `--ncu-manifest`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The result id the case records under.
    pub result_id: String,
    /// Entry names of the kernels it launches, in launch order.
    pub kernels: Vec<String>,
}

/// Measured DRAM bytes of one kernel of one case.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredKernel {
    /// The kernel's entry name.
    pub kernel: String,
    /// Its DRAM bytes, when ncu measured them.
    pub dram: Option<DramBytes>,
    /// Its duration under ncu (milliseconds; slowed by profiling, not a timing).
    pub duration_ms: Option<f64>,
}

/// Pair ncu's launches with the manifest, strictly in order: the bench binary
/// launches exactly the manifest's kernels, so any difference means the two do
/// not describe the same run and nothing is attached.
pub fn match_manifest(
    launches: &[NcuLaunch],
    manifest: &[ManifestEntry],
) -> Result<Vec<(String, Vec<MeasuredKernel>)>> {
    let expected: usize = manifest.iter().map(|e| e.kernels.len()).sum();
    if expected != launches.len() {
        return Err(TelemetryError::Mismatch(format!(
            "the manifest lists {expected} kernel launches, ncu profiled {}",
            launches.len()
        )));
    }
    let mut next = launches.iter();
    let mut out = Vec::with_capacity(manifest.len());
    for entry in manifest {
        let mut kernels = Vec::with_capacity(entry.kernels.len());
        for want in &entry.kernels {
            let launch = next
                .next()
                .ok_or_else(|| TelemetryError::Mismatch("ran out of ncu launches".to_string()))?;
            if launch.entry_name() != normalize_kernel_name(want) {
                return Err(TelemetryError::Mismatch(format!(
                    "{}: expected kernel `{want}`, ncu launch {} is `{}`",
                    entry.result_id, launch.id, launch.kernel
                )));
            }
            kernels.push(MeasuredKernel {
                kernel: want.clone(),
                dram: launch.dram(),
                duration_ms: launch.duration_ms(),
            });
        }
        out.push((entry.result_id.clone(), kernels));
    }
    Ok(out)
}

/// Attach ncu's measurements to the results of `set` named in `manifest`.
/// Returns how many results received measurements.
pub fn attach(
    set: &mut crate::record::ResultSet,
    launches: &[NcuLaunch],
    manifest: &[ManifestEntry],
) -> Result<usize> {
    let matched = match_manifest(launches, manifest)?;
    let mut attached = 0;
    for (id, measured) in matched {
        let Some(result) = set.results.iter_mut().find(|r| r.id == id) else {
            continue; // profiled but not timed (e.g. filtered out of the timed run)
        };
        // One record per launch (the bench runner's layout; a record may carry a
        // suffix such as `ssd_fused_fwd#prepass`): pair them in order.
        let per_launch = measured.len() == result.kernels.len()
            && measured
                .iter()
                .zip(&result.kernels)
                .all(|(m, k)| k.name == m.kernel || k.name.starts_with(&format!("{}#", m.kernel)));
        if per_launch {
            for (m, k) in measured.into_iter().zip(result.kernels.iter_mut()) {
                k.dram = m.dram;
                k.ncu_duration_ms = m.duration_ms;
            }
            result.refresh_measured_bytes();
            attached += 1;
            continue;
        }
        // Otherwise a kernel launched several times per call: its bytes and times add up.
        let mut sums: BTreeMap<String, (Option<DramBytes>, Option<f64>)> = BTreeMap::new();
        for m in measured {
            let entry = sums
                .entry(m.kernel)
                .or_insert((Some(DramBytes { read: 0, write: 0 }), Some(0.0)));
            entry.0 = entry.0.zip(m.dram).map(|(a, b)| DramBytes {
                read: a.read + b.read,
                write: a.write + b.write,
            });
            entry.1 = entry.1.zip(m.duration_ms).map(|(a, b)| a + b);
        }
        for (name, (dram, duration)) in sums {
            if let Some(k) = result.kernels.iter_mut().find(|k| k.name == name) {
                k.dram = dram;
                k.ncu_duration_ms = duration;
            }
        }
        result.refresh_measured_bytes();
        attached += 1;
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_with_separators_and_decimal_commas() {
        assert_eq!(parse_number("1,048,576"), Some(1_048_576.0));
        assert_eq!(parse_number("1,234.5"), Some(1234.5));
        assert_eq!(parse_number("9,5"), Some(9.5));
        assert_eq!(parse_number("268435456"), Some(268_435_456.0));
        assert_eq!(parse_number("n/a"), None);
        assert_eq!(parse_number(""), None);
    }

    #[test]
    fn records_keep_commas_and_quotes_inside_fields() {
        let r = split_record(r#""1","void k<int, 2>(float*)","a ""q"" b","3,5""#).unwrap();
        assert_eq!(r, ["1", "void k<int, 2>(float*)", "a \"q\" b", "3,5"]);
        assert!(split_record(r#""open"#).is_none());
    }

    #[test]
    fn kernel_names_are_normalized() {
        assert_eq!(
            normalize_kernel_name("mamba1_decode_bf16"),
            "mamba1_decode_bf16"
        );
        assert_eq!(
            normalize_kernel_name("void k<float>(float *, int)"),
            "k<float>"
        );
        assert_eq!(
            normalize_kernel_name("ssm_selftest_axpy(float*, const float*)"),
            "ssm_selftest_axpy"
        );
    }

    #[test]
    fn units_scale_to_bytes_and_milliseconds() {
        assert_eq!(unit_scale("Mbyte"), 1e6);
        assert_eq!(unit_scale("KiB"), 1024.0);
        assert_eq!(unit_scale("usecond"), 1e-3);
        assert_eq!(unit_scale("byte"), 1.0);
    }

    #[test]
    fn a_csv_without_header_is_an_error() {
        assert!(parse_csv("==PROF== nothing\n", "x").is_err());
    }
}
