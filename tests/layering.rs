//! The layers of `src/` import only downwards, as docs/architecture.md draws them.
//!
//! The allowed-imports table is parsed from docs/architecture.md (so the document and the
//! code cannot drift apart), then every `crate::x` / `corelay::x` path and every `super::`
//! chain that climbs to the crate root, in every file of every layer, is checked against it.
//! The compile-time half (sans-IO layers build without the runtime) is
//! `cargo build --no-default-features --features sdk --lib`, run by tools/test.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

struct Layer {
    name: String,
    modules: Vec<String>,
    allowed: BTreeSet<String>,
    sans_io: bool,
}

/// The rows between the `layering-table` markers of docs/architecture.md.
fn layers() -> Vec<Layer> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let start = doc
        .find("<!-- layering-table")
        .expect("docs/architecture.md has no layering-table marker");
    let end = doc[start..]
        .find("<!-- /layering-table -->")
        .expect("layering-table is not closed")
        + start;
    let ticked = |cell: &str| -> Vec<String> {
        cell.split(',')
            .map(|s| s.trim().trim_matches('`').to_string())
            .filter(|s| !s.is_empty() && s != "—")
            .collect()
    };
    let mut out = Vec::new();
    for line in doc[start..end].lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() != 4 || cells[0].trim() == "Layer" || cells[0].contains("---") {
            continue;
        }
        out.push(Layer {
            name: cells[0].trim().to_string(),
            modules: ticked(cells[1]),
            allowed: ticked(cells[2]).into_iter().collect(),
            sans_io: match cells[3].trim() {
                "yes" => true,
                "no" => false,
                other => panic!("Sans-IO column must be yes/no, got {other:?}"),
            },
        });
    }
    assert!(
        out.len() >= 5,
        "layering table not parsed: {} rows",
        out.len()
    );
    out
}

/// Source with comments and string/char literals blanked (so prose and messages that
/// mention a path are not imports). Line structure is kept for error positions.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && !prev_ident(b, i)
        {
            // A raw string `r"…"` / `r#"…"#` (also after `b`): ends at `"` plus the hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A char literal (`'"'`, `'\''`): copied blank so a quote in it starts nothing.
            let mut j = i + 1;
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                } else if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            // Multi-byte UTF-8 is copied whole (only ASCII is ever inspected).
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Whether the `r` at `i` is inside an identifier rather than a raw-string prefix (`r"`,
/// `br"`).
fn prev_ident(b: &[u8], i: usize) -> bool {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let k = if i > 0 && b[i - 1] == b'b' { i - 1 } else { i };
    k > 0 && is_ident(b[k - 1])
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules named right after `prefix` (`crate::x`, `crate::{x, y::z}`).
fn roots_after<'a>(code: &'a str, prefix: &str) -> Vec<(usize, &'a str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find(prefix) {
        let at = from + k;
        from = at + prefix.len();
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue; // e.g. `$crate::` or `mycrate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        item_start = false;
                        out.push((line, ident_at(&group[j..])));
                    }
                    _ => {}
                }
            }
        } else {
            out.push((line, ident_at(rest)));
        }
    }
    out
}

/// Top-level modules reached by `super::` chains long enough to climb out of the file's
/// own module (`depth` = how many modules deep the file is: `src/x/mod.rs` is 1).
fn roots_via_super(code: &str, depth: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = code[from..].find("super::") {
        let at = from + k;
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            from = at + 7;
            continue;
        }
        let mut n = 0;
        let mut p = at;
        while code[p..].starts_with("super::") {
            n += 1;
            p += 7;
        }
        from = p;
        if n >= depth {
            let line = code[..at].matches('\n').count() + 1;
            out.push((line, ident_at(&code[p..]).to_string()));
        }
    }
    out
}

/// Modules a file is nested in: `src/shard/conn/close.rs` → 3, `src/shard/mod.rs` → 1.
fn module_depth(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).unwrap();
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// The top-level modules of the crate: directories and files of `src/` (plus `bin`).
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() || (p.extension().is_some_and(|x| x == "rs") && name != "lib") {
            out.insert(name);
        }
    }
    out
}

/// Every violation of the table in the sources under `src`.
fn violations(src: &Path, layers: &[Layer]) -> Vec<String> {
    let mut owner: BTreeMap<&str, &Layer> = BTreeMap::new();
    for l in layers {
        for m in &l.modules {
            assert!(
                owner.insert(m, l).is_none(),
                "module `{m}` is in two layers of docs/architecture.md"
            );
        }
    }
    let known: BTreeSet<String> = top_level_modules(src);
    let mut bad = Vec::new();
    for m in &known {
        if !owner.contains_key(m.as_str()) {
            bad.push(format!(
                "src/{m}: module in no layer of docs/architecture.md"
            ));
        }
    }
    for l in layers {
        for m in &l.modules {
            let dir = src.join(m);
            let mut files = Vec::new();
            if dir.is_dir() {
                rust_files(&dir, &mut files);
            } else if src.join(format!("{m}.rs")).exists() {
                files.push(src.join(format!("{m}.rs")));
            }
            for f in files {
                let code = code_only(&std::fs::read_to_string(&f).unwrap());
                let shown = f.strip_prefix(src).unwrap().display().to_string();
                let mut used: Vec<(usize, String)> = Vec::new();
                // Binaries are crates of their own: they reach the library as `corelay::`.
                let prefix = if m == "bin" { "corelay::" } else { "crate::" };
                for (line, r) in roots_after(&code, prefix) {
                    used.push((line, r.to_string()));
                }
                if m != "bin" {
                    used.extend(roots_via_super(&code, module_depth(src, &f)));
                }
                for (line, target) in used {
                    if !known.contains(&target) || l.modules.contains(&target) {
                        continue;
                    }
                    if !l.allowed.contains(&target) {
                        bad.push(format!(
                            "src/{shown}:{line}: layer `{}` imports `{target}`, which it may not",
                            l.name
                        ));
                    }
                }
                if l.sans_io {
                    for word in ["glommio", "io_uring", "socket2", "rustls"] {
                        for (i, text) in code.lines().enumerate() {
                            if text.contains(word) {
                                bad.push(format!(
                                    "src/{shown}:{}: sans-IO layer `{}` names `{word}`",
                                    i + 1,
                                    l.name
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn every_layer_imports_only_what_docs_architecture_allows() {
    let src = root().join("src");
    let bad = violations(&src, &layers());
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_allowed_graph_has_no_cycle() {
    let layers = layers();
    let layer_of: BTreeMap<&str, &str> = layers
        .iter()
        .flat_map(|l| l.modules.iter().map(move |m| (m.as_str(), l.name.as_str())))
        .collect();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in &layers {
        let e = edges.entry(l.name.as_str()).or_default();
        for m in &l.allowed {
            let to = layer_of
                .get(m.as_str())
                .unwrap_or_else(|| panic!("layer `{}` may import unknown module `{m}`", l.name));
            assert_ne!(*to, l.name, "layer `{}` lists itself", l.name);
            e.insert(to);
        }
    }
    // Kahn: peel layers with no remaining outgoing edge; a cycle leaves some behind.
    let mut left = edges.clone();
    loop {
        let done: Vec<&str> = left
            .iter()
            .filter(|(_, out)| out.iter().all(|t| !left.contains_key(t)))
            .map(|(n, _)| *n)
            .collect();
        if done.is_empty() {
            break;
        }
        for n in done {
            left.remove(n);
        }
    }
    assert!(
        left.is_empty(),
        "import cycle among layers: {:?}",
        left.keys()
    );
}

#[test]
fn sans_io_layers_are_compiled_without_the_runtime_feature() {
    // lib.rs must not gate a sans-IO layer behind `runtime` (the sdk build would lose it), and
    // must gate every other layer (or the sdk build would pull in glommio).
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let lines: Vec<&str> = lib.lines().map(str::trim).collect();
    for l in layers() {
        for m in l.modules.iter().filter(|m| *m != "bin") {
            let decl = format!("pub mod {m};");
            let i = lines
                .iter()
                .position(|x| *x == decl)
                .unwrap_or_else(|| panic!("src/lib.rs does not declare `{decl}`"));
            let gated = i > 0 && lines[i - 1] == "#[cfg(feature = \"runtime\")]";
            assert_eq!(
                gated, !l.sans_io,
                "`{m}` (layer `{}`): runtime gate in src/lib.rs does not match Sans-IO = {}",
                l.name, l.sans_io
            );
        }
    }
}

#[test]
fn an_upward_import_is_caught() {
    // The checker itself: a scratch `src/` whose engine names the backend plane, once as a
    // `crate::` path, once in a `use crate::{…}` group and once by climbing with `super::`.
    let dir = std::env::temp_dir().join(format!("corelay-layering-{}", std::process::id()));
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&dir);
    for m in ["proto", "shard/conn", "backend"] {
        std::fs::create_dir_all(src.join(m)).unwrap();
    }
    std::fs::write(src.join("proto/mod.rs"), "//! p\n").unwrap();
    std::fs::write(src.join("backend/mod.rs"), "//! b\nuse crate::shard::X;\n").unwrap();
    std::fs::write(
        src.join("shard/mod.rs"),
        "//! s\n// crate::backend in a comment is fine\nuse crate::backend::RingHandler;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("shard/conn/close.rs"),
        "//! c\nuse crate::{proto::X, backend::hub::Hub};\nuse super::super::super::backend::Y;\nfn f() { let _ = \"crate::backend\"; }\n",
    )
    .unwrap();
    let layer = |name: &str, m: &str, allowed: &[&str]| Layer {
        name: name.into(),
        modules: vec![m.into()],
        allowed: allowed.iter().map(|s| s.to_string()).collect(),
        sans_io: false,
    };
    let table = [
        layer("proto", "proto", &[]),
        layer("engine", "shard", &["proto"]),
        layer("backend", "backend", &["proto", "shard"]),
    ];
    let bad = violations(&src, &table);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lines: Vec<&str> = bad.iter().map(|s| s.split(": ").next().unwrap()).collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "src/shard/conn/close.rs:2",
            "src/shard/conn/close.rs:3",
            "src/shard/mod.rs:3"
        ],
        "{bad:#?}"
    );
}

#[test]
fn proto_has_no_sockets_or_clocks() {
    let mut files = Vec::new();
    rust_files(&root().join("src/proto"), &mut files);
    for f in files {
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for word in [
            "std::net",
            "Instant::now",
            "SystemTime",
            "std::thread",
            "std::fs",
        ] {
            for (i, line) in code.lines().enumerate() {
                assert!(
                    !line.contains(word),
                    "{}:{} uses {word}: {}",
                    f.display(),
                    i + 1,
                    line.trim()
                );
            }
        }
    }
}

#[test]
fn every_source_file_opens_with_its_job() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} does not open with a `//!` line saying what the module is for",
            f.display()
        );
    }
}
