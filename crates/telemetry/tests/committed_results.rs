//! Every committed result set under `benches/results/` is in the current schema
//! (the old producers' files were converted once and their reader removed):
//! each reads, is version 2, and its floors are at its own recorded ceilings.

use std::path::{Path, PathBuf};

use ssm_telemetry::record::SCHEMA_VERSION;
use ssm_telemetry::roofline::Floor;
use ssm_telemetry::traffic::cost_of;
use ssm_telemetry::ResultSet;

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

#[test]
fn committed_result_sets_are_version_2_at_their_own_ceilings() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../benches/results");
    let mut files = Vec::new();
    json_files(&root, &mut files);
    let mut sets = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if !text.contains("\"schema\": \"ssm-bench-results\"") {
            continue;
        }
        let set = ResultSet::read(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            text.contains(&format!("\"version\": {SCHEMA_VERSION}")),
            "{} is not version {SCHEMA_VERSION}",
            f.display()
        );
        for r in &set.results {
            let floor = Floor::of(&cost_of(&r.problem, r.pass), &set.ceilings);
            assert!(
                (floor.floor_ms - r.roofline.floor_ms).abs() <= 1e-9 * floor.floor_ms.max(1.0),
                "{} {}: floor {} recorded, {} at the set's ceilings",
                f.display(),
                r.id,
                r.roofline.floor_ms,
                floor.floor_ms
            );
        }
        sets += 1;
    }
    assert!(
        sets >= 40,
        "only {sets} result sets found under benches/results"
    );
}
