//! Every citation in comments and docs points at something that exists (no GPU).
//!
//! Scans the comments of `.rs`, `.cu`, `.cuh`, `.sh` and `.toml` files and the
//! whole text of `.md` files in the workspace, and fails on:
//! - a repository path (`crates/...`, `kernels/...`, `docs/...`, `reference/...`,
//!   `benches/...`, `ci/...`, `fuzz/...`) that names no file or folder
//!   (`a/{b,c}.rs` is expanded; paths with `*` or `<placeholder>` are patterns
//!   and are skipped);
//! - a section citation `NAME.md §N[.M]` (also `§1.1, §2`) whose file under
//!   `docs/` has no heading numbered `N.` / `N.M`;
//! - a citation of the lowercase `design.md`, the design that used to live
//!   outside the repository (its successor is `docs/DESIGN.md`).
//!
//! Committed results (`benches/results/`) and test fixtures are records of a
//! past run and are not scanned; neither is this file (its fixtures are broken on
//! purpose).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level folders a citation may start with.
const ROOTS: [&str; 7] = [
    "crates/",
    "kernels/",
    "docs/",
    "reference/",
    "benches/",
    "ci/",
    "fuzz/",
];

/// Folders (relative to the workspace root) that are not scanned.
const SKIP_DIRS: [&str; 6] = [
    "target",
    "fuzz/target",
    "fuzz/corpus",
    "fuzz/artifacts",
    "benches/results",
    "crates/telemetry/tests/fixtures",
];

/// Files not scanned: this checker, whose fixtures are broken citations on purpose.
const SKIP_FILES: [&str; 1] = ["crates/verify/tests/doc_citations.rs"];

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The files to scan, relative to `root`, sorted.
fn scanned_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = std::fs::read_dir(root.join(&rel)).expect("reading the workspace");
        for entry in entries {
            let entry = entry.expect("reading the workspace");
            let name = entry.file_name().to_string_lossy().into_owned();
            let child = rel.join(&name);
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                let skipped = SKIP_DIRS.iter().any(|d| child == Path::new(d));
                // Hidden folders are tool state (.git, .venv-cuda, .gpu), except .ci.
                if !skipped && (!name.starts_with('.') || name == ".ci") {
                    stack.push(child);
                }
            } else if file_type.is_file()
                && comment_style(&child).is_some()
                && !SKIP_FILES.iter().any(|f| child == Path::new(f))
            {
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// Markdown: every line is prose.
    Prose,
    /// `//` comments (Rust, CUDA).
    Slashes,
    /// `#` comments (shell, TOML).
    Hash,
}

fn comment_style(path: &Path) -> Option<Style> {
    let name = path.file_name()?.to_str()?;
    let ext = name.rsplit_once('.').map(|(_, e)| e);
    match ext {
        Some("md") => Some(Style::Prose),
        Some("rs" | "cu" | "cuh") => Some(Style::Slashes),
        Some("sh" | "toml") => Some(Style::Hash),
        // The CI entry point has no extension.
        None if path == Path::new(".ci/run") => Some(Style::Hash),
        _ => None,
    }
}

/// The part of `line` that is comment (or all of it for prose).
fn comment_text(line: &str, style: Style) -> Option<&str> {
    match style {
        Style::Prose => Some(line),
        Style::Slashes => line.find("//").map(|i| &line[i + 2..]),
        Style::Hash => {
            // `#` inside a shell word (`$#`, `${#x}`) is rare enough in our scripts;
            // a `#!` line names an interpreter, not a file of ours.
            let i = line.find('#')?;
            (!line[i..].starts_with("#!")).then(|| &line[i + 1..])
        }
    }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '_' | '-' | '.' | '/' | '{' | '}' | ',' | '*' | '<' | '>')
}

/// Repository paths cited in `text`, as written (braces not yet expanded).
fn cited_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (start, _) in text.char_indices() {
        let rest = &text[start..];
        if !ROOTS.iter().any(|r| rest.starts_with(r)) {
            continue;
        }
        // A root must start a path, not continue one (`../../kernels/`, `a/docs/`,
        // `mydocs/`).
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '$' | '{')
        }) {
            continue;
        }
        let mut end = rest.len();
        let mut depth = 0usize;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth > 0 => depth -= 1,
                '}' => {
                    end = i;
                    break;
                }
                // A comma ends the path outside braces (`crates/a.rs, crates/b.rs`).
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                c if is_path_char(c) => {}
                _ => {
                    end = i;
                    break;
                }
            }
        }
        let path = rest[..end].trim_end_matches(['.', ',', ':']);
        found.push(path.to_string());
    }
    found
}

/// `a/{b,c}.rs` -> `a/b.rs`, `a/c.rs` (nested braces too).
fn expand_braces(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let mut depth = 0usize;
    let mut close = None;
    for (i, c) in path[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(open + i);
                    break;
                }
            }
            _ => {}
        }
    }
    let Some(close) = close else {
        return vec![path.to_string()];
    };
    let (head, body, tail) = (&path[..open], &path[open + 1..close], &path[close + 1..]);
    let mut alternatives = Vec::new();
    let mut depth = 0usize;
    let mut last = 0;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                alternatives.push(&body[last..i]);
                last = i + 1;
            }
            _ => {}
        }
    }
    alternatives.push(&body[last..]);
    alternatives
        .iter()
        .flat_map(|alt| expand_braces(&format!("{head}{alt}{tail}")))
        .collect()
}

/// Section citations in `text`: (`NAME.md`, `N.M`) pairs, e.g. from
/// `docs/DESIGN.md §1.1, §2`.
fn cited_sections(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut search = 0;
    while let Some(pos) = text[search..].find(".md §") {
        let at = search + pos;
        search = at + ".md §".len();
        let name_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
            .map_or(0, |i| i + 1);
        let doc = format!("{}.md", &text[name_start..at]);
        // `§1.1, §2` and `§1.1 and §2` cite several sections of the same file.
        let mut rest = &text[at + ".md ".len()..];
        while let Some(after) = rest.strip_prefix('§') {
            let number: String = after
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.').to_string();
            if number.is_empty() {
                break;
            }
            found.push((doc.clone(), number.clone()));
            rest = &after[number.len()..];
            rest = rest
                .strip_prefix(", ")
                .or_else(|| rest.strip_prefix(" and "))
                .or_else(|| rest.strip_prefix(" / "))
                .unwrap_or("");
        }
    }
    found
}

/// Section numbers of a markdown file: headings `## 2. Title` or `### 1.2 Title`.
fn section_numbers(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| {
            let title = line.trim_start_matches('#');
            if title.len() == line.len() {
                return None;
            }
            let number: String = title
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            (!number.is_empty()).then(|| number.to_string())
        })
        .collect()
}

/// A lowercase `design.md` that is not part of a longer name.
fn cites_old_design(text: &str) -> bool {
    text.match_indices("design.md").any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    })
}

fn problems_in(root: &Path, rel: &Path, text: &str) -> Vec<String> {
    let style = comment_style(rel).expect("scanned files have a style");
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let Some(comment) = comment_text(line, style) else {
            continue;
        };
        let at = format!("{}:{}", rel.display(), index + 1);
        if cites_old_design(comment) {
            problems.push(format!(
                "{at}: cites design.md, which is not in the repository (cite docs/DESIGN.md §N)"
            ));
        }
        for cited in cited_paths(comment) {
            for path in expand_braces(&cited) {
                if path.contains(['*', '<', '>', '{', '}']) {
                    continue;
                }
                if !root.join(&path).exists() {
                    problems.push(format!("{at}: cites `{path}`, which does not exist"));
                }
            }
        }
        for (doc, section) in cited_sections(comment) {
            if doc == "design.md" {
                continue; // reported above
            }
            let file = root.join("docs").join(&doc);
            let Ok(markdown) = std::fs::read_to_string(&file) else {
                problems.push(format!(
                    "{at}: cites {doc} §{section}, but there is no docs/{doc}"
                ));
                continue;
            };
            if !section_numbers(&markdown).contains(&section) {
                problems.push(format!(
                    "{at}: cites {doc} §{section}, which docs/{doc} does not have"
                ));
            }
        }
    }
    problems
}

#[test]
fn every_cited_path_and_section_exists() {
    let root = workspace_root();
    let files = scanned_files(&root);
    assert!(
        files.iter().any(|f| f == Path::new("docs/DESIGN.md"))
            && files.iter().any(|f| f.starts_with("kernels")),
        "the scan missed the docs or the kernels: {files:?}"
    );
    let mut problems = Vec::new();
    for rel in &files {
        // Non-UTF-8 files are not ours to cite from.
        if let Ok(text) = std::fs::read_to_string(root.join(rel)) {
            problems.extend(problems_in(&root, rel, &text));
        }
    }
    assert!(
        problems.is_empty(),
        "{} broken citation(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_design_has_the_sections_the_code_cites_most() {
    let design = std::fs::read_to_string(workspace_root().join("docs/DESIGN.md")).unwrap();
    let sections = section_numbers(&design);
    for s in ["1", "1.1", "1.2", "1.3", "1.4", "2", "3", "4", "5", "6"] {
        assert!(
            sections.contains(s),
            "docs/DESIGN.md has no §{s}: {sections:?}"
        );
    }
}

// The checker itself, on made-up text: it must find what is broken.

#[test]
fn finds_paths_and_expands_braces() {
    assert_eq!(
        cited_paths("see crates/a/src/cuda/{config,plan}.rs, and kernels/x.cu."),
        ["crates/a/src/cuda/{config,plan}.rs", "kernels/x.cu"]
    );
    assert_eq!(
        expand_braces("crates/a/{b,c/{d,e}}.rs"),
        ["crates/a/b.rs", "crates/a/c/d.rs", "crates/a/c/e.rs"]
    );
    // Not a citation: a root inside a longer path, or after `$`.
    assert!(cited_paths("\"/../../kernels/\" mydocs/x $docs/y").is_empty());
    assert_eq!(
        cited_paths("(`docs/TOLERANCES.md`)"),
        ["docs/TOLERANCES.md"]
    );
}

#[test]
fn finds_section_lists() {
    assert_eq!(
        cited_sections("docs/DESIGN.md §1.1, §2; FOO.md §3."),
        [
            ("DESIGN.md".to_string(), "1.1".to_string()),
            ("DESIGN.md".to_string(), "2".to_string()),
            ("FOO.md".to_string(), "3".to_string())
        ]
    );
    let numbers = section_numbers("# T\n## 1. The math\n### 1.2 SSD\n## Notes\n");
    assert_eq!(numbers.into_iter().collect::<Vec<_>>(), ["1", "1.2"]);
}

#[test]
fn reports_broken_citations() {
    let root = workspace_root();
    let text = "// docs/DESIGN.md §1.2 and kernels/no_such_kernel.cu\n\
                // DESIGN.md §99, design.md §6\n\
                let s = \"crates/not/in/a/comment.rs\";\n";
    let problems = problems_in(&root, Path::new("x.rs"), text);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("kernels/no_such_kernel.cu"),
        "{problems:#?}"
    );
    assert!(problems[1].contains("design.md"), "{problems:#?}");
    assert!(problems[2].contains("§99"), "{problems:#?}");
}
