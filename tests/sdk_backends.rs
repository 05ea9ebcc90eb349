//! Backends in any language through `corelay backend-check`: the Rust SDK's contract
//! service, the C example (built here with the system compiler against the C ABI, through
//! its pkg-config file), the Go package (cgo over the static C library; its example built
//! with `go build`), and the Python package (installed into a venv) in its blocking and
//! asyncio modes, pure and over the C ABI, all pass; deliberately broken backends fail; the committed C header is
//! what cbindgen generates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// One check at a time: each runs a gateway and backends, and the heartbeat check times
/// liveness on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory the test binary was built into (holds debug/corelay).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_corelay"))
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `corelay backend-check [extra] -- backend...`: (passed, stdout).
fn check(backend: &[&str], extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelay"));
    cmd.arg("backend-check").args(extra).arg("--").args(backend);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run backend-check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}

fn assert_passes(backend: &[&str], env: &[(&str, &str)]) {
    let (ok, out) = check(backend, &[], env);
    assert!(ok, "backend-check failed for {backend:?}:\n{out}");
    assert!(out.contains("14 passed, 0 failed"), "{out}");
}

/// Builds the C library (static + shared); returns the directory holding both.
fn c_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = target_dir();
        run(Command::new(env!("CARGO"))
            .args(["build", "-p", "corelay-backend-c"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(root()));
        target.join("debug")
    })
    .clone()
}

/// Builds the C library and the C example through pkg-config.
fn c_example() -> PathBuf {
    let target = target_dir();
    let lib = c_lib();
    let pc_dir = target.join("sdk-c-pkgconfig");
    std::fs::create_dir_all(&pc_dir).unwrap();
    let pc = std::fs::read_to_string(root().join("sdk/c/corelay-backend.pc.in"))
        .unwrap()
        .replace("@PREFIX@", &root().display().to_string())
        .replace("@LIBDIR@", &lib.display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &root().join("sdk/c/include").display().to_string(),
        );
    std::fs::write(pc_dir.join("corelay-backend.pc"), pc).unwrap();
    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "--static", "corelay-backend"])
        .env("PKG_CONFIG_PATH", &pc_dir));
    let flags = String::from_utf8(flags.stdout).unwrap();
    let exe = target.join("echo_rooms_auth_c");
    // Static: the example must not need LD_LIBRARY_PATH. `-l:` picks the .a over the .so.
    let flags: Vec<String> = flags
        .split_whitespace()
        .map(|f| {
            if f == "-lcorelay_backend" {
                "-l:libcorelay_backend.a".into()
            } else {
                f.to_string()
            }
        })
        .collect();
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-o"])
        .arg(&exe)
        .arg(root().join("sdk/c/examples/echo_rooms_auth.c"))
        .args(&flags));
    exe
}

/// `go` with its caches inside the target directory and no network: the Go package has no
/// dependencies. The static library alone in a directory of its own, so cgo links it into
/// the binary (no LD_LIBRARY_PATH at run time).
fn go(args: &[&str]) -> Output {
    let target = target_dir();
    let lib_dir = target.join("sdk-go-lib");
    std::fs::create_dir_all(&lib_dir).unwrap();
    std::fs::copy(
        c_lib().join("libcorelay_backend.a"),
        lib_dir.join("libcorelay_backend.a"),
    )
    .unwrap();
    run(Command::new("go")
        .args(args)
        .current_dir(root().join("sdk/go"))
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "1")
        .env("CGO_LDFLAGS", format!("-L{}", lib_dir.display())))
}

/// A venv with the Python package installed from the repository (pip fetches setuptools
/// for the build; the package itself has no dependencies).
fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(install_python).clone()
}

fn install_python() -> PathBuf {
    let venv = target_dir().join("sdk-python-venv");
    let py = venv.join("bin/python3");
    if !py.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    }
    run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--force-reinstall",
        ])
        .arg(root().join("sdk/python")));
    py
}

fn example_py() -> String {
    root()
        .join("sdk/python/examples/check_backend.py")
        .display()
        .to_string()
}

#[test]
fn rust_sdk_contract_backend_passes() {
    let _one = serial();
    assert_passes(
        &[env!("CARGO_BIN_EXE_corelay"), "backend", "--contract"],
        &[],
    );
}

#[test]
fn c_example_passes() {
    let _one = serial();
    let exe = c_example();
    assert_passes(&[exe.to_str().unwrap()], &[]);
}

#[test]
fn go_example_passes() {
    let _one = serial();
    // The package's own tests (group ids, request helpers) over the linked library.
    go(&["test", "./..."]);
    let exe = target_dir().join("check_backend_go");
    go(&[
        "build",
        "-o",
        exe.to_str().unwrap(),
        "./examples/check_backend",
    ]);
    assert_passes(&[exe.to_str().unwrap()], &[]);
}

#[test]
fn python_package_passes_blocking_and_asyncio() {
    let _one = serial();
    let py = python();
    let py = py.to_str().unwrap();
    let ex = example_py();
    assert_passes(&[py, &ex], &[]);
    assert_passes(&[py, &ex, "--asyncio"], &[]);
}

/// `CORELAY_PY_IMPL=c`: the same package and example over the C ABI (ctypes on the shared
/// library), blocking and asyncio. A library path that does not exist fails the attach, so
/// the variable is what picks the implementation.
#[test]
fn python_package_over_the_c_abi_passes() {
    let _one = serial();
    let py = python();
    let py = py.to_str().unwrap();
    let ex = example_py();
    let so = c_lib().join("libcorelay_backend.so");
    let env = [
        ("CORELAY_PY_IMPL", "c"),
        ("CORELAY_BACKEND_LIB", so.to_str().unwrap()),
    ];
    assert_passes(&[py, &ex], &env);
    assert_passes(&[py, &ex, "--asyncio"], &env);
    let missing = target_dir().join("no-such-libcorelay_backend.so");
    let (ok, out) = check(
        &[py, &ex],
        &["--only", "attach"],
        &[
            ("CORELAY_PY_IMPL", "c"),
            ("CORELAY_BACKEND_LIB", missing.to_str().unwrap()),
        ],
    );
    assert!(!ok && out.contains("FAIL attach"), "{out}");
}

#[test]
fn broken_backends_fail_the_check() {
    let _one = serial();
    let py = python();
    let py = py.to_str().unwrap();
    let data = root().join("tests/data/sdk");
    // Never replies.
    let silent = data.join("silent_backend.py");
    let (ok, out) = check(&[py, silent.to_str().unwrap()], &["--only", "echo"], &[]);
    assert!(!ok && out.contains("FAIL echo"), "{out}");
    // Commits past a deferred request: a kill -9 loses it.
    let early = data.join("commit_early_backend.py");
    let (ok, out) = check(
        &[py, early.to_str().unwrap(), &example_py()],
        &["--only", "attach,kill9"],
        &[],
    );
    assert!(!ok && out.contains("FAIL kill9"), "{out}");
    assert!(out.contains("PASS attach"), "{out}");
    // Exits at once.
    let (ok, out) = check(&["false"], &["--only", "attach"], &[]);
    assert!(!ok && out.contains("FAIL attach"), "{out}");
}

#[test]
fn c_header_is_what_cbindgen_generates() {
    let out = target_dir().join("corelay_backend.h");
    let status = Command::new("cbindgen")
        .arg("--config")
        .arg(root().join("sdk/c/cbindgen.toml"))
        .arg("--output")
        .arg(&out)
        .arg(root().join("sdk/c"))
        .status()
        .expect("cbindgen (0.29.0; tools/test.sh installs it) must be on PATH");
    assert!(status.success());
    let fresh = std::fs::read_to_string(&out).unwrap();
    let committed =
        std::fs::read_to_string(root().join("sdk/c/include/corelay_backend.h")).unwrap();
    assert!(
        fresh == committed,
        "sdk/c/include/corelay_backend.h is stale: regenerate it with\n  cbindgen --config sdk/c/cbindgen.toml --output sdk/c/include/corelay_backend.h sdk/c"
    );
}
