//! Tests for the host tuning kit in `tuning/` (check.sh, apply.sh, irq-affinity.sh, units).
//!
//! They run unprivileged or as root, in a container or not, and never change the host: apply.sh
//! only ever writes a fake sysctl tree (`CORELAY_SYSCTL_ROOT`) or, when `unshare -rn` works, the
//! sysctls of a brand-new user+network namespace that disappears with the test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn script(name: &str) -> PathBuf {
    root().join("tuning").join(name)
}

/// A fresh, unique temp dir (std only), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "corelay-tuning-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `bash SCRIPT ARGS` from the repo root with the tuning env vars cleared, then `env` set.
fn run(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name))
        .args(args)
        .current_dir(root())
        .env_remove("CORELAY_SYSCTL_ROOT")
        .env_remove("CORELAY_ETC_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run bash");
    eprintln!(
        "$ {name} {}\n--- stdout\n{}--- stderr\n{}--- exit {:?}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The sysctls apply.sh may raise (mirror of APPLY_KEYS in tuning/lib.sh).
const APPLY_KEYS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_mem",
    "net.netfilter.nf_conntrack_max",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_syncookies",
    "vm.max_map_count",
];

fn key_path(base: &Path, key: &str) -> PathBuf {
    base.join(key.replace('.', "/"))
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Reads KEYS under BASE; missing/unreadable entries are recorded as None.
fn snapshot(base: &Path, keys: &[&str]) -> BTreeMap<String, Option<String>> {
    keys.iter()
        .map(|k| {
            (
                k.to_string(),
                fs::read_to_string(key_path(base, k)).ok().map(|v| norm(&v)),
            )
        })
        .collect()
}

/// A fake /proc/sys with every apply key at a low value, except one that is already higher
/// than any recommendation (must never be lowered).
fn fake_sysctl_root(dir: &Path) -> BTreeMap<&'static str, &'static str> {
    let vals: BTreeMap<&str, &str> = [
        ("fs.file-max", "100000"),
        ("fs.nr_open", "1048576"),
        ("net.core.somaxconn", "128"),
        ("net.ipv4.tcp_max_syn_backlog", "1024"),
        ("net.core.netdev_max_backlog", "1000"),
        ("net.ipv4.tcp_mem", "10\t20\t30"),
        ("net.netfilter.nf_conntrack_max", "65536"),
        ("net.ipv4.tcp_max_tw_buckets", "99999999"),
        ("net.ipv4.tcp_syncookies", "0"),
        ("vm.max_map_count", "65530"),
        ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
        ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
    ]
    .into_iter()
    .collect();
    for (k, v) in &vals {
        let p = key_path(dir, k);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, format!("{v}\n")).unwrap();
    }
    vals
}

fn read_key(base: &Path, key: &str) -> String {
    norm(&fs::read_to_string(key_path(base, key)).unwrap())
}

/// Every setting named in the brief, as check.sh names its rows.
const CHECK_NAMES: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "nofile soft (this shell)",
    "nofile hard (this shell)",
    "memlock (this shell, KiB)",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.core.rmem_default",
    "net.core.wmem_default",
    "vm.max_map_count",
    "memory (",
    "net.netfilter.nf_conntrack_max",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_keepalive_time",
    "irqbalance",
    "NIC queue IRQs",
    "RPS/XPS masks",
    "transparent_hugepage",
    "cpu governor",
    "kernel.pid_max",
];

const STATUSES: &[&str] = &["OK", "WARN", "FAIL", "N/A"];

/// Parses check.sh's table: name -> (current, recommended, status). Columns are fixed-width,
/// located from the header line.
fn parse_check(out: &str) -> BTreeMap<String, (String, String, String)> {
    let header = out
        .lines()
        .find(|l| l.starts_with("SETTING "))
        .expect("header line SETTING CURRENT RECOMMENDED STATUS WHY");
    let col = |name: &str| {
        header
            .find(name)
            .unwrap_or_else(|| panic!("column {name} in header"))
    };
    let (c_cur, c_rec, c_st, c_why) = (
        col("CURRENT"),
        col("RECOMMENDED"),
        col("STATUS"),
        col("WHY"),
    );
    assert!(
        c_cur < c_rec && c_rec < c_st && c_st < c_why,
        "column order: {header}"
    );
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in out.lines() {
        if line.starts_with("SETTING ") {
            in_table = true;
            continue;
        }
        if !in_table || line.trim().is_empty() {
            if in_table {
                break;
            }
            continue;
        }
        // A value wider than its column pushes the rest right: split on the status token instead.
        let st = STATUSES
            .iter()
            .filter_map(|s| line.find(&format!(" {s} ")).map(|i| (i, *s)))
            .min()
            .unwrap_or_else(|| panic!("row without OK/WARN/FAIL/N/A status: {line}"));
        let name = line[..c_cur.min(line.len())].trim().to_string();
        let cur = line[c_cur..c_rec.min(st.0)].trim().to_string();
        let rec = line[c_rec.min(st.0)..st.0].trim().to_string();
        let why = line[st.0 + st.1.len() + 2..].trim();
        assert!(!why.is_empty(), "row without a why: {line}");
        assert!(
            !cur.is_empty() && !rec.is_empty(),
            "row without current/recommended: {line}"
        );
        rows.insert(name, (cur, rec, st.1.to_string()));
    }
    rows
}

#[test]
fn check_lists_every_setting_with_current_and_recommended() {
    let out = run("check.sh", &["--connections", "1000000"], &[]);
    let code = out.status.code().expect("exit code");
    assert!(code == 0 || code == 1, "check.sh exit code {code}");
    let text = stdout(&out);
    let rows = parse_check(&text);
    for want in CHECK_NAMES {
        assert!(
            rows.keys().any(|k| k.starts_with(want)),
            "check.sh does not list {want}"
        );
    }
    let fails = rows.values().filter(|r| r.2 == "FAIL").count();
    assert_eq!(
        code == 1,
        fails > 0,
        "exit code {code} vs {fails} FAIL rows"
    );
    // Missing/unreadable entries say n/a with a reason rather than failing the run.
    for (name, (cur, _, st)) in &rows {
        if cur == "n/a" {
            assert!(st == "N/A" || st == "FAIL", "{name}: n/a must be N/A");
        }
    }

    let json = run("check.sh", &["--connections", "1000000", "--json"], &[]);
    assert_eq!(json.status.code(), out.status.code());
    let j = stdout(&json);
    assert!(j.trim_start().starts_with('{') && j.trim_end().ends_with('}'));
    assert!(j.contains("\"checks\"") && j.contains("\"recommended\"") && j.contains("\"current\""));
    for want in [
        "fs.file-max",
        "net.ipv4.tcp_mem",
        "transparent_hugepage",
        "cpu governor",
    ] {
        assert!(
            j.contains(&format!("\"name\": \"{want}")),
            "json lacks {want}"
        );
    }
}

#[test]
fn check_math_scales_with_connections_and_handles_missing_entries() {
    let tmp = TempDir::new("check");
    fake_sysctl_root(tmp.path());
    let env = [("CORELAY_SYSCTL_ROOT", tmp.path())];

    let one = run("check.sh", &["--connections", "1000000"], &env);
    let r1 = parse_check(&stdout(&one));
    // 100000 < 1M x 1.1 + 64k: FAIL, and the exit code says so.
    assert_eq!(
        r1["fs.file-max"],
        ("100000".into(), ">= 1165536".into(), "FAIL".into())
    );
    assert_eq!(one.status.code(), Some(1));
    assert_eq!(r1["net.core.somaxconn"].0, "128");
    assert_eq!(r1["net.ipv4.tcp_mem"].1, ">= 750000 1000000 1500000");
    // Entries absent from the fake tree are n/a with a reason, not errors.
    assert_eq!(r1["net.ipv4.tcp_keepalive_time"].0, "n/a");
    assert_eq!(r1["net.ipv4.tcp_keepalive_time"].2, "N/A");

    let three = run("check.sh", &["--connections", "3000000"], &env);
    let r3 = parse_check(&stdout(&three));
    assert_eq!(r3["fs.file-max"].1, ">= 3365536");
    assert_eq!(r3["net.ipv4.tcp_mem"].1, ">= 2250000 3000000 4500000");
    assert_eq!(r3["net.netfilter.nf_conntrack_max"].1, ">= 3815536");

    // 3M over 4 processes: each needs 750k + headroom fds, so nr_open 1048576 is enough.
    let four = run(
        "check.sh",
        &["--connections", "3000000", "--processes", "4"],
        &env,
    );
    let r4 = parse_check(&stdout(&four));
    assert_eq!(r4["fs.nr_open"].2, "OK");
    let single = &r3["fs.nr_open"];
    assert_eq!(
        single.2, "FAIL",
        "3M fds in one process cannot fit nr_open 1048576"
    );

    let bad = run("check.sh", &["--connections", "abc"], &env);
    assert_eq!(bad.status.code(), Some(2));
}

/// Plan/output lines apply.sh may print, in their documented formats.
fn assert_apply_line_format(line: &str) {
    let ok = if let Some(rest) = line.strip_prefix("would set ") {
        let (key, change) = rest.split_once(": ").expect("would set KEY: OLD -> NEW");
        let (old, new) = change.split_once(" -> ").expect("OLD -> NEW");
        !key.contains(' ') && !old.is_empty() && !new.is_empty()
    } else {
        ["keep ", "skip ", "note ", "dry run: ", "would write "]
            .iter()
            .any(|p| line.starts_with(p))
    };
    assert!(ok, "unexpected apply.sh line: {line:?}");
}

#[test]
fn apply_dry_run_changes_nothing_on_this_host() {
    let proc_sys = Path::new("/proc/sys");
    let before = snapshot(proc_sys, APPLY_KEYS);
    let out = run("apply.sh", &["--connections", "1000000", "--dry-run"], &[]);
    let after = snapshot(proc_sys, APPLY_KEYS);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(before, after, "apply.sh --dry-run changed a sysctl");
    let text = stdout(&out);
    for line in text.lines() {
        assert_apply_line_format(line);
    }
    assert!(text
        .lines()
        .any(|l| l.starts_with("dry run: ") && l.ends_with("nothing changed")));
    // Every planned change is a real raise of a value that is readable now.
    for line in text.lines().filter(|l| l.starts_with("would set ")) {
        let key = line["would set ".len()..].split(':').next().unwrap();
        assert!(
            before.get(key).map(|v| v.is_some()).unwrap_or(false),
            "planned {key} unreadable"
        );
    }
}

#[test]
fn apply_dry_run_on_fake_root_prints_exact_plan_and_writes_nothing() {
    let tmp = TempDir::new("dry");
    let sys = tmp.path().join("sys");
    let etc = tmp.path().join("etc");
    fake_sysctl_root(&sys);
    let before = snapshot(&sys, APPLY_KEYS);
    let env = [
        ("CORELAY_SYSCTL_ROOT", sys.as_path()),
        ("CORELAY_ETC_DIR", etc.as_path()),
    ];
    let out = run("apply.sh", &["--dry-run", "--persist"], &env);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    text.lines().for_each(assert_apply_line_format);
    for want in [
        "would set net.core.somaxconn: 128 -> 65535",
        "would set fs.file-max: 100000 -> 1165536",
        "would set net.ipv4.tcp_mem: 10 20 30 -> 750000 1000000 1500000",
        "would set net.ipv4.tcp_syncookies: 0 -> 1",
        "keep net.ipv4.tcp_max_tw_buckets: 99999999 (recommended 1000000)",
    ] {
        assert!(
            text.lines().any(|l| l == want),
            "missing plan line {want:?}"
        );
    }
    assert_eq!(before, snapshot(&sys, APPLY_KEYS));
    assert!(!etc.exists(), "--dry-run --persist wrote files");
}

#[test]
fn apply_fake_root_raises_writes_revert_is_idempotent_and_reverts() {
    let tmp = TempDir::new("apply");
    let sys = tmp.path().join("sys");
    let etc = tmp.path().join("etc");
    let orig = fake_sysctl_root(&sys);
    let original = snapshot(&sys, APPLY_KEYS);
    let revert = tmp.path().join("revert.conf");
    let env = [
        ("CORELAY_SYSCTL_ROOT", sys.as_path()),
        ("CORELAY_ETC_DIR", etc.as_path()),
    ];
    let rf = revert.to_str().unwrap();

    let out = run(
        "apply.sh",
        &["--connections", "1000000", "--revert-file", rf, "--persist"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_key(&sys, "net.core.somaxconn"), "65535");
    assert_eq!(read_key(&sys, "net.ipv4.tcp_max_syn_backlog"), "65535");
    assert_eq!(read_key(&sys, "net.core.netdev_max_backlog"), "16384");
    assert_eq!(read_key(&sys, "fs.file-max"), "1165536");
    assert_eq!(read_key(&sys, "net.ipv4.tcp_mem"), "750000 1000000 1500000");
    assert_eq!(read_key(&sys, "net.netfilter.nf_conntrack_max"), "1315536");
    assert_eq!(read_key(&sys, "net.ipv4.tcp_syncookies"), "1");
    assert_eq!(read_key(&sys, "vm.max_map_count"), "262144");
    // Never lowered; check-only settings untouched.
    assert_eq!(read_key(&sys, "net.ipv4.tcp_max_tw_buckets"), "99999999");
    assert_eq!(read_key(&sys, "fs.nr_open"), "1048576");
    assert_eq!(
        read_key(&sys, "net.ipv4.tcp_rmem"),
        norm(orig["net.ipv4.tcp_rmem"])
    );
    assert!(stdout(&out)
        .lines()
        .any(|l| l == "set net.core.somaxconn: 128 -> 65535"));

    // The revert file holds the previous values in sysctl.conf format.
    let rev = fs::read_to_string(&revert).expect("revert file written");
    for line in [
        "net.core.somaxconn = 128",
        "fs.file-max = 100000",
        "net.ipv4.tcp_mem = 10 20 30",
        "net.ipv4.tcp_syncookies = 0",
    ] {
        assert!(
            rev.lines().any(|l| l == line),
            "revert file lacks {line:?}:\n{rev}"
        );
    }
    assert!(
        !rev.contains("tcp_max_tw_buckets"),
        "unchanged keys need no revert entry"
    );
    let sysctl_d = etc.join("sysctl.d/90-corelay.conf");
    let limits_d = etc.join("security/limits.d/90-corelay.conf");
    let persisted = fs::read_to_string(&sysctl_d).expect("--persist sysctl.d file");
    assert!(persisted.lines().any(|l| l == "net.core.somaxconn = 65535"));
    assert!(persisted
        .lines()
        .any(|l| l == "net.ipv4.tcp_max_tw_buckets = 99999999"));
    let limits = fs::read_to_string(&limits_d).expect("--persist limits.d file");
    assert!(limits.contains("nofile  1048576") && limits.contains("memlock unlimited"));

    // Second run: nothing to change, no new revert file.
    let raised = snapshot(&sys, APPLY_KEYS);
    let rev2 = tmp.path().join("revert2.conf");
    let again = run("apply.sh", &["--revert-file", rev2.to_str().unwrap()], &env);
    assert_eq!(again.status.code(), Some(0));
    assert!(stdout(&again).contains("nothing to change"));
    assert!(!stdout(&again).lines().any(|l| l.starts_with("set ")));
    assert_eq!(raised, snapshot(&sys, APPLY_KEYS));
    assert!(!rev2.exists());
    // An existing revert file is never overwritten (it may hold the originals).
    fs::write(key_path(&sys, "net.core.somaxconn"), "100\n").unwrap();
    let clobber = run("apply.sh", &["--revert-file", rf], &env);
    assert_eq!(clobber.status.code(), Some(2));
    assert_eq!(fs::read_to_string(&revert).unwrap(), rev);
    fs::write(key_path(&sys, "net.core.somaxconn"), "65535\n").unwrap();

    // --revert --dry-run changes nothing; --revert restores the originals and removes persist files.
    let dry = run("apply.sh", &["--revert", rf, "--dry-run"], &env);
    assert_eq!(dry.status.code(), Some(0));
    assert!(stdout(&dry)
        .lines()
        .any(|l| l == "would restore net.core.somaxconn: 65535 -> 128"));
    assert_eq!(raised, snapshot(&sys, APPLY_KEYS));
    let back = run("apply.sh", &["--revert", rf], &env);
    assert_eq!(back.status.code(), Some(0));
    assert_eq!(original, snapshot(&sys, APPLY_KEYS));
    assert!(
        !sysctl_d.exists() && !limits_d.exists(),
        "revert removes the persist files"
    );
}

#[test]
fn apply_in_new_user_and_network_namespace() {
    // Real, namespaced net.* sysctls; the namespace vanishes with the child. Skips if not allowed.
    let probe = Command::new("unshare").args(["-rn", "true"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "SKIP apply_in_new_user_and_network_namespace: `unshare -rn true` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("SKIP apply_in_new_user_and_network_namespace: no unshare: {e}");
            return;
        }
    }
    let outer_ns = fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let outer_somax = fs::read_to_string("/proc/sys/net/core/somaxconn").ok();
    let tmp = TempDir::new("netns");
    let rev = tmp.path().join("ns-revert.conf");
    let apply = script("apply.sh");
    // Guard: refuse to apply unless we are really in a different network namespace.
    let body = r#"
set -eu
inner=$(readlink /proc/self/ns/net)
[ "$inner" != "$OUTER_NS" ] || { echo "SAME_NETNS"; exit 99; }
k=/proc/sys/net/core/somaxconn
echo "before=$(cat $k)"
bash "$APPLY" --only net.core.somaxconn,net.ipv4.tcp_max_syn_backlog --revert-file "$REV" || echo "apply_rc=$?"
echo "after=$(cat $k)"
echo "syn_after=$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog)"
bash "$APPLY" --only net.core.somaxconn,net.ipv4.tcp_max_syn_backlog --revert-file "$REV.2" | grep -q "nothing to change" && echo "idempotent=yes"
bash "$APPLY" --revert "$REV" || echo "revert_rc=$?"
echo "reverted=$(cat $k)"
"#;
    let out = Command::new("unshare")
        .args(["-rn", "bash", "-c", body])
        .env("OUTER_NS", &outer_ns)
        .env("APPLY", &apply)
        .env("REV", &rev)
        .env_remove("CORELAY_SYSCTL_ROOT")
        .output()
        .expect("unshare");
    let text = stdout(&out);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        !text.contains("SAME_NETNS"),
        "unshare -n did not give a new network namespace"
    );
    if text.contains("apply_rc=") && String::from_utf8_lossy(&out.stderr).contains("cannot write") {
        println!("SKIP apply_in_new_user_and_network_namespace: namespace root may not write net.core.somaxconn here");
        return;
    }
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in output:\n{text}"))
            .trim()
            .to_string()
    };
    let before: u64 = get("before").parse().unwrap();
    let after: u64 = get("after").parse().unwrap();
    assert_eq!(
        after,
        before.max(65535),
        "somaxconn raised inside the namespace"
    );
    assert!(get("syn_after").parse::<u64>().unwrap() >= 65535);
    assert_eq!(get("idempotent"), "yes");
    assert_eq!(
        get("reverted").parse::<u64>().unwrap(),
        before,
        "--revert restored somaxconn"
    );
    // And the host's own namespace never saw any of it.
    assert_eq!(
        fs::read_to_string("/proc/sys/net/core/somaxconn").ok(),
        outer_somax
    );
}

#[test]
fn irq_affinity_is_a_safe_noop_on_loopback() {
    let out = run("irq-affinity.sh", &["--dry-run", "lo"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("nothing to do"));
    let missing = run(
        "irq-affinity.sh",
        &["--dry-run", "corelay-no-such-if0"],
        &[],
    );
    assert_eq!(missing.status.code(), Some(2));
    // Physical NICs: the dry-run plan only uses the documented line formats and writes nothing.
    if let Ok(rd) = fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().join("device").exists() {
                continue;
            }
            let o = run("irq-affinity.sh", &["--dry-run", &name], &[]);
            assert_eq!(o.status.code(), Some(0));
            for l in stdout(&o).lines() {
                assert!(
                    [
                        "would set ",
                        "keep ",
                        "skip ",
                        "dry run: ",
                        &format!("{name}: ")
                    ]
                    .iter()
                    .any(|p| l.starts_with(p)),
                    "unexpected irq-affinity line {l:?}"
                );
            }
        }
    }
}

#[test]
fn units_and_config_files_carry_the_required_settings() {
    let unit = fs::read_to_string(script("corelay.service")).unwrap();
    for want in [
        "ExecStart=/usr/local/bin/corelay run --config /etc/corelay/corelay.toml",
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "CPUAffinity=",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/run/corelay",
        "RuntimeDirectory=corelay",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(want)),
            "corelay.service lacks {want}"
        );
    }
    let tmpl = fs::read_to_string(script("corelay@.service")).unwrap();
    assert!(tmpl.contains("--config /etc/corelay/%i.toml"));
    assert!(tmpl.contains("LimitNOFILE=") && tmpl.contains("CPUAffinity"));
    // sysctl.conf: every apply key is there with a value at least the 1M recommendation.
    let tmp = TempDir::new("sysctlconf");
    let sys = tmp.path().join("sys");
    let conf = fs::read_to_string(script("sysctl.conf")).unwrap();
    for line in conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("bad sysctl.conf line {line}"));
        let p = key_path(&sys, k.trim().trim_start_matches('-'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{}\n", v.trim())).unwrap();
    }
    for k in APPLY_KEYS {
        assert!(key_path(&sys, k).exists(), "sysctl.conf lacks {k}");
    }
    let out = run(
        "apply.sh",
        &["--dry-run"],
        &[("CORELAY_SYSCTL_ROOT", sys.as_path())],
    );
    assert!(
        !stdout(&out).contains("would set"),
        "tuning/sysctl.conf is below the 1M recommendation"
    );
    let limits = fs::read_to_string(script("limits.conf")).unwrap();
    assert!(limits.contains("nofile") && limits.contains("memlock"));
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    match Command::new("shellcheck").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            println!("SKIP shell_scripts_are_shellcheck_clean: shellcheck not installed (apt-get install -y shellcheck)");
            return;
        }
    }
    let mut scripts: Vec<String> = fs::read_dir(root().join("tuning"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh"))
        .map(|n| format!("tuning/{n}"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 4, "{scripts:?}");
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The optional CPU-latency unit: its command writes 0 and keeps the file open in the
/// process that stays (the QoS request ends when the fd closes). Run against a temp file.
#[test]
fn cpu_latency_unit_holds_the_request_open() {
    let unit = fs::read_to_string(script("corelay-cpu-latency.service")).unwrap();
    let cmd = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -c '"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -c '...'");
    assert!(cmd.contains("/dev/cpu_dma_latency") && cmd.contains("sleep infinity"));
    let tmp = TempDir::new("cpulat");
    let target = tmp.path().join("cpu_dma_latency");
    fs::write(&target, "").unwrap();
    let cmd = cmd
        .replace("/dev/cpu_dma_latency", target.to_str().unwrap())
        .replace("sleep infinity", "sleep 20");
    let mut child = Command::new("/bin/sh").arg("-c").arg(&cmd).spawn().unwrap();
    let fd_dir = format!("/proc/{}/fd", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let held = loop {
        let exe = fs::read_link(format!("/proc/{}/exe", child.id())).unwrap_or_default();
        let open = fs::read_dir(&fd_dir)
            .map(|d| {
                d.flatten()
                    .any(|e| fs::read_link(e.path()).is_ok_and(|p| p == target))
            })
            .unwrap_or(false);
        if open && exe.to_string_lossy().ends_with("sleep") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(held, "the long-lived process does not hold the file open");
    assert_eq!(fs::read_to_string(&target).unwrap(), "0");
}
