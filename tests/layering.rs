//! The sans-IO and backend layers must never reach into the runtime. The compile-time check is
//! `cargo build --no-default-features --features sdk` (run by tools/test.sh); this test catches
//! imports by name, including ones a feature gate would hide.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
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
fn sans_io_layers_do_not_import_the_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "glommio",
        "io_uring",
        "crate::shard",
        "crate::config",
        "crate::metrics",
        "socket2",
        "rustls",
    ];
    let mut bad = Vec::new();
    for layer in ["proto", "ring", "sdk"] {
        let dir = root.join(layer);
        if !dir.exists() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for word in forbidden {
                    if code.contains(word) {
                        bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "runtime imports in sans-IO layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn proto_has_no_sockets_or_clocks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for word in [
            "std::net",
            "Instant::now",
            "SystemTime",
            "std::thread",
            "std::fs",
        ] {
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains(word),
                    "{}:{} uses {word}: {}",
                    f.display(),
                    i + 1,
                    line.trim()
                );
            }
        }
    }
}
