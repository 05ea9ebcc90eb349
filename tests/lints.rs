//! Source-tree rules that review alone lets slip: every file in `src/` stays within
//! `MAX_LINES` lines (one job per file; split by job or move unit tests to a sibling
//! `*_tests.rs`) and opens with a `//!` line saying what it is for.

use std::path::{Path, PathBuf};

/// The most lines a file in `src/` may have.
const MAX_LINES: usize = 800;

/// What is wrong with one file (empty when nothing).
fn violations(path: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines = text.lines().count();
    if lines > MAX_LINES {
        out.push(format!(
            "{path}: {lines} lines (> {MAX_LINES}): split it by job, or move its unit tests to a sibling *_tests.rs"
        ));
    }
    if !text.starts_with("//!") {
        out.push(format!(
            "{path}: does not open with a `//!` line saying what the file is for"
        ));
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_is_short_and_says_what_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 50, "src/ not found: {} files", files.len());
    // The connection-process crate follows the same rules.
    rust_files(&root.join("connect/src"), &mut files);
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = f.strip_prefix(root).unwrap().display().to_string();
        bad.extend(violations(&rel, &text));
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let ok = format!("//! A file.\n{}", "x\n".repeat(MAX_LINES - 1));
    assert!(violations("a.rs", &ok).is_empty());
    let long = format!("{ok}x\n");
    assert_eq!(violations("a.rs", &long).len(), 1, "801 lines");
    assert_eq!(
        violations("b.rs", "/// An item doc, not a file doc.\n").len(),
        1
    );
    assert_eq!(
        violations("c.rs", "\n//! Not on the first line.\n").len(),
        1
    );
    assert_eq!(violations("d.rs", "").len(), 1);
}
