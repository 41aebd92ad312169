//! NVML sampling around a benchmark: SM and memory clocks, power, temperature,
//! throttle reasons, and energy from the card's total-energy counter.
//!
//! NVML is loaded at run time (`libnvidia-ml.so.1`); on a machine without it
//! [`NvmlMonitor::open`] returns [`TelemetryError::NvmlUnavailable`] and the
//! benchmark runs without telemetry. A run during which the card reported a
//! throttle reason other than "idle" or "applications clocks" is flagged
//! ([`throttled`]): its time may not be the kernel's.
//!
//! Snapshots are summarised by pure functions ([`RunTelemetry::from_snapshots`])
//! so the summary logic is tested without a GPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TelemetryError};

/// NVML's clock-event ("throttle") reason bits (nvml.h `nvmlClocksEventReason*`).
pub mod reason {
    /// The GPU is idle.
    pub const GPU_IDLE: u64 = 0x1;
    /// Clocks are held by the applications-clocks setting.
    pub const APPLICATIONS_CLOCKS_SETTING: u64 = 0x2;
    /// Software power cap: the card is at its power limit.
    pub const SW_POWER_CAP: u64 = 0x4;
    /// Hardware slowdown (power brake, thermal or power-supply signal).
    pub const HW_SLOWDOWN: u64 = 0x8;
    /// Sync boost: clocks held to match other GPUs.
    pub const SYNC_BOOST: u64 = 0x10;
    /// Software thermal slowdown.
    pub const SW_THERMAL_SLOWDOWN: u64 = 0x20;
    /// Hardware thermal slowdown.
    pub const HW_THERMAL_SLOWDOWN: u64 = 0x40;
    /// Hardware power-brake slowdown (an external signal).
    pub const HW_POWER_BRAKE_SLOWDOWN: u64 = 0x80;
    /// Clocks held by the display clock setting.
    pub const DISPLAY_CLOCK_SETTING: u64 = 0x100;

    /// Reasons that do not mean the card slowed a running kernel down.
    pub const BENIGN: u64 = GPU_IDLE | APPLICATIONS_CLOCKS_SETTING;

    /// Every reason bit and its name in reports.
    pub const NAMES: [(u64, &str); 9] = [
        (GPU_IDLE, "gpu_idle"),
        (APPLICATIONS_CLOCKS_SETTING, "applications_clocks_setting"),
        (SW_POWER_CAP, "sw_power_cap"),
        (HW_SLOWDOWN, "hw_slowdown"),
        (SYNC_BOOST, "sync_boost"),
        (SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
        (DISPLAY_CLOCK_SETTING, "display_clock_setting"),
    ];
}

/// Names of the reasons set in `bits` (unknown bits as hex).
pub fn reason_names(bits: u64) -> Vec<String> {
    let mut names: Vec<String> = reason::NAMES
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
    let known = reason::NAMES.iter().fold(0, |acc, (bit, _)| acc | bit);
    if bits & !known != 0 {
        names.push(format!("unknown_{:#x}", bits & !known));
    }
    names
}

/// True when `bits` holds a reason other than idle or applications clocks.
pub fn throttled(bits: u64) -> bool {
    bits & !reason::BENIGN != 0
}

/// One reading of the card.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Seconds since the measurement started.
    pub t_s: f64,
    /// SM clock, MHz.
    pub sm_clock_mhz: u32,
    /// Memory clock, MHz.
    pub mem_clock_mhz: u32,
    /// Board power draw, watts.
    pub power_w: f64,
    /// GPU temperature, degrees Celsius.
    pub temperature_c: u32,
    /// The total-energy counter (mJ since driver load), where the card has one.
    pub energy_mj: Option<u64>,
    /// The clock-event reason bits set at this reading ([`reason`]).
    pub throttle_bits: u64,
}

/// Static facts about the card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NvmlDeviceInfo {
    /// The card's name as NVML reports it.
    pub name: String,
    /// The driver version.
    pub driver_version: String,
    /// Enforced power limit, watts, where readable.
    pub power_limit_w: Option<f64>,
    /// Maximum SM clock, MHz, where readable.
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock, MHz, where readable.
    pub max_mem_clock_mhz: Option<u32>,
}

/// Minimum, median and maximum of a sampled quantity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Range {
    /// Smallest sample.
    pub min: f64,
    /// Median sample.
    pub median: f64,
    /// Largest sample.
    pub max: f64,
}

impl Range {
    fn of(mut values: Vec<f64>) -> Option<Range> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Some(Range {
            min: values[0],
            median,
            max: values[n - 1],
        })
    }
}

/// The card's state over one measured run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunTelemetry {
    /// Readings taken.
    pub samples: usize,
    /// Seconds from the first reading to the last.
    pub duration_s: f64,
    /// SM clock, MHz.
    pub sm_clock_mhz: Range,
    /// Memory clock, MHz.
    pub mem_clock_mhz: Range,
    /// Board power, watts.
    pub power_w: Range,
    /// Temperature, degrees Celsius.
    pub temperature_c: Range,
    /// Energy over the run: the counter's difference, or mean power x duration
    /// where the card has no counter (`energy_from_counter` says which).
    pub energy_j: f64,
    /// `energy_j` is the counter's difference (else mean power x duration).
    pub energy_from_counter: bool,
    /// Union of the reasons seen in any sample.
    pub throttle_reasons: Vec<String>,
    /// A reason other than idle / applications clocks was seen.
    pub throttled: bool,
}

impl RunTelemetry {
    /// Summarise snapshots taken during a run of `duration_s` seconds; `first` and
    /// `last` are the readings just before and after the run (for the energy counter).
    pub fn from_snapshots(
        first: &Snapshot,
        during: &[Snapshot],
        last: &Snapshot,
        duration_s: f64,
    ) -> Option<RunTelemetry> {
        // The readings just before and after bracket the run; a run shorter than
        // the sampling interval still gets those two.
        let all: Vec<&Snapshot> = std::iter::once(first)
            .chain(during.iter())
            .chain(std::iter::once(last))
            .collect();
        // Clocks and throttle reasons count only while the run is busy: the
        // bracketing readings may show the idle card.
        let busy: Vec<&Snapshot> = if during.is_empty() {
            all.clone()
        } else {
            during.iter().collect()
        };
        let pick = |f: &dyn Fn(&Snapshot) -> f64, set: &[&Snapshot]| {
            Range::of(set.iter().map(|s| f(s)).collect())
        };
        let bits = busy.iter().fold(0, |acc, s| acc | s.throttle_bits);
        let power = pick(&|s| s.power_w, &all)?;
        let (energy_j, energy_from_counter) = match (first.energy_mj, last.energy_mj) {
            (Some(a), Some(b)) if b >= a => ((b - a) as f64 / 1e3, true),
            _ => {
                let mean = all.iter().map(|s| s.power_w).sum::<f64>() / all.len() as f64;
                (mean * duration_s, false)
            }
        };
        Some(RunTelemetry {
            samples: all.len(),
            duration_s,
            sm_clock_mhz: pick(&|s| f64::from(s.sm_clock_mhz), &busy)?,
            mem_clock_mhz: pick(&|s| f64::from(s.mem_clock_mhz), &busy)?,
            power_w: power,
            temperature_c: pick(&|s| f64::from(s.temperature_c), &all)?,
            energy_j,
            energy_from_counter,
            throttle_reasons: reason_names(bits),
            throttled: throttled(bits),
        })
    }
}

/// An open NVML session on one device.
pub struct NvmlMonitor {
    nvml: Nvml,
    index: u32,
}

/// Library names tried in order: the versioned name is what the driver installs;
/// the bare name only exists with the development package.
const LIBRARY_NAMES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

fn nvml_error(e: nvml_wrapper::error::NvmlError) -> TelemetryError {
    TelemetryError::Nvml(e.to_string())
}

impl NvmlMonitor {
    /// Load NVML and check that device `index` answers.
    pub fn open(index: u32) -> Result<NvmlMonitor> {
        let mut failures = Vec::new();
        for name in LIBRARY_NAMES {
            match Nvml::builder().lib_path(std::ffi::OsStr::new(name)).init() {
                Ok(nvml) => {
                    let count = nvml.device_count().map_err(|e| {
                        TelemetryError::NvmlUnavailable(format!("{name}: device count: {e}"))
                    })?;
                    if index >= count {
                        return Err(TelemetryError::NvmlUnavailable(format!(
                            "device {index} requested, NVML sees {count}"
                        )));
                    }
                    return Ok(NvmlMonitor { nvml, index });
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        Err(TelemetryError::NvmlUnavailable(failures.join("; ")))
    }

    /// The card's static facts ([`TelemetryError::Nvml`] when a query fails).
    pub fn device_info(&self) -> Result<NvmlDeviceInfo> {
        let device = self.nvml.device_by_index(self.index).map_err(nvml_error)?;
        Ok(NvmlDeviceInfo {
            name: device.name().map_err(nvml_error)?,
            driver_version: self.nvml.sys_driver_version().map_err(nvml_error)?,
            power_limit_w: device
                .enforced_power_limit()
                .ok()
                .map(|mw| f64::from(mw) / 1e3),
            max_sm_clock_mhz: device.max_clock_info(Clock::SM).ok(),
            max_mem_clock_mhz: device.max_clock_info(Clock::Memory).ok(),
        })
    }

    /// Read the card now. Clocks, power and temperature must answer; the energy
    /// counter and throttle reasons are optional on some cards.
    pub fn snapshot(&self, since: Instant) -> Result<Snapshot> {
        let device = self.nvml.device_by_index(self.index).map_err(nvml_error)?;
        Ok(Snapshot {
            t_s: since.elapsed().as_secs_f64(),
            sm_clock_mhz: device.clock_info(Clock::SM).map_err(nvml_error)?,
            mem_clock_mhz: device.clock_info(Clock::Memory).map_err(nvml_error)?,
            power_w: f64::from(device.power_usage().map_err(nvml_error)?) / 1e3,
            temperature_c: device
                .temperature(TemperatureSensor::Gpu)
                .map_err(nvml_error)?,
            energy_mj: device.total_energy_consumption().ok(),
            throttle_bits: device
                .current_throttle_reasons()
                .map(|r| r.bits())
                .unwrap_or(0),
        })
    }

    /// Run `work` while a second thread samples the card every `interval`.
    /// The work's result is returned whatever happens to the telemetry.
    ///
    /// The energy counter is read immediately before and after `work`, so the
    /// energy and the duration cover the work alone (the other readings of the
    /// bracketing snapshots take milliseconds and stay outside).
    pub fn measure<R>(
        &self,
        interval: Duration,
        work: impl FnOnce() -> R,
    ) -> (R, Result<RunTelemetry>) {
        let start = Instant::now();
        let first = self.snapshot(start);
        let energy_now = || {
            self.nvml
                .device_by_index(self.index)
                .ok()
                .and_then(|d| d.total_energy_consumption().ok())
        };
        let energy_before = energy_now();
        let window = Instant::now();
        let stop = AtomicBool::new(false);
        let (result, during, duration_s, energy_after) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut taken = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    if let Ok(s) = self.snapshot(start) {
                        taken.push(s);
                    }
                    std::thread::sleep(interval);
                }
                taken
            });
            let result = work();
            let energy_after = energy_now();
            let duration_s = window.elapsed().as_secs_f64();
            stop.store(true, Ordering::Release);
            let during = sampler.join().unwrap_or_default();
            (result, during, duration_s, energy_after)
        });
        let telemetry = first.and_then(|mut first| {
            let mut last = self.snapshot(start)?;
            first.energy_mj = energy_before;
            last.energy_mj = energy_after;
            RunTelemetry::from_snapshots(&first, &during, &last, duration_s)
                .ok_or_else(|| TelemetryError::Nvml("no samples".into()))
        });
        (result, telemetry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t_s: f64, sm: u32, power_w: f64, energy_mj: Option<u64>, bits: u64) -> Snapshot {
        Snapshot {
            t_s,
            sm_clock_mhz: sm,
            mem_clock_mhz: 2619,
            power_w,
            temperature_c: 40 + sm / 1000,
            energy_mj,
            throttle_bits: bits,
        }
    }

    #[test]
    fn idle_and_app_clock_reasons_are_not_throttling() {
        assert!(!throttled(0));
        assert!(!throttled(
            reason::GPU_IDLE | reason::APPLICATIONS_CLOCKS_SETTING
        ));
        assert!(throttled(reason::SW_POWER_CAP));
        assert!(throttled(reason::GPU_IDLE | reason::HW_THERMAL_SLOWDOWN));
        assert_eq!(
            reason_names(reason::SW_POWER_CAP | 0x10000),
            ["sw_power_cap", "unknown_0x10000"]
        );
    }

    #[test]
    fn energy_comes_from_the_counter_and_clocks_from_busy_samples() {
        let first = snap(0.0, 345, 70.0, Some(1_000), reason::GPU_IDLE);
        let during = [
            snap(0.1, 1980, 500.0, Some(40_000), 0),
            snap(0.2, 1755, 690.0, Some(100_000), reason::SW_POWER_CAP),
            snap(0.3, 1980, 520.0, Some(150_000), 0),
        ];
        let last = snap(0.4, 1980, 300.0, Some(201_000), 0);
        let t = RunTelemetry::from_snapshots(&first, &during, &last, 0.4).unwrap();
        assert_eq!(t.samples, 5);
        assert!((t.energy_j - 200.0).abs() < 1e-9 && t.energy_from_counter);
        assert_eq!((t.sm_clock_mhz.min, t.sm_clock_mhz.max), (1755.0, 1980.0));
        assert_eq!(t.sm_clock_mhz.median, 1980.0);
        assert!(t.throttled);
        assert_eq!(t.throttle_reasons, ["sw_power_cap"]);
    }

    #[test]
    fn without_a_counter_energy_is_mean_power_times_time() {
        let first = snap(0.0, 1980, 100.0, None, 0);
        let last = snap(1.0, 1980, 300.0, None, 0);
        let t = RunTelemetry::from_snapshots(&first, &[], &last, 2.0).unwrap();
        assert!((t.energy_j - 400.0).abs() < 1e-9 && !t.energy_from_counter);
        assert!(!t.throttled);
    }

    #[test]
    fn absent_nvml_is_a_typed_error() {
        // On the device machine NVML is present; there the open must succeed.
        match NvmlMonitor::open(0) {
            Ok(m) => {
                let info = m
                    .device_info()
                    .expect("NVML opened, device info must answer");
                assert!(!info.name.is_empty());
            }
            Err(TelemetryError::NvmlUnavailable(reason)) => {
                eprintln!("SKIPPED absent_nvml_is_a_typed_error (no NVML here): {reason}");
            }
            Err(other) => panic!("expected NvmlUnavailable, got {other}"),
        }
    }
}
