//! The README's status table is generated from a committed result set: the text
//! between `<!-- status-table: PATH -->` and `<!-- /status-table -->` must equal
//! `ssm-results readme-table PATH` (PATH relative to the workspace root), so the
//! headline numbers cannot drift from the measurements.

use std::path::PathBuf;

use ssm_telemetry::cli::readme_table;
use ssm_telemetry::ResultSet;

const OPEN: &str = "<!-- status-table: ";
const CLOSE: &str = "<!-- /status-table -->";

#[test]
fn the_readme_status_table_is_generated_from_its_result_set() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let start = readme
        .find(OPEN)
        .expect("README.md has a `<!-- status-table: PATH -->` marker");
    let rest = &readme[start + OPEN.len()..];
    let (path, rest) = rest
        .split_once(" -->")
        .expect("the marker closes with ` -->`");
    let end = rest
        .find(CLOSE)
        .expect("README.md closes the status table with `<!-- /status-table -->`");
    let table = rest[..end].trim();
    let set = ResultSet::read(&root.join(path.trim()))
        .unwrap_or_else(|e| panic!("the status table's result set: {e}"));
    let expected = readme_table(&set);
    assert_eq!(
        table,
        expected.trim(),
        "README.md's status table differs from `cargo run -p ssm-telemetry --bin ssm-results -- readme-table {}`: paste its output between the markers",
        path.trim()
    );
}
