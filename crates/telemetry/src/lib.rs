//! Telemetry: NVML sampling, HBM-traffic and roofline model, result records (issue 6).
