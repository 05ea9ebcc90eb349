//! Memory held by one idle, established `TlsSession` (own test binary: it installs a counting
//! global allocator).
//!
//! Two numbers per case:
//! - Rust heap: bytes freed (through the global allocator) when the session is dropped, with
//!   the live allocations listed by size;
//! - malloc total: glibc's in-use bytes (`mallinfo2().uordblks`, chunk headers included)
//!   released by the drop — this also sees aws-lc's own C allocations (AEAD key contexts),
//!   which never pass through Rust's allocator. glibc's tcache and fastbins keep freed chunks
//!   counted as in use, so the test re-runs itself with
//!   `GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0`.
//!
//! The session is driven in memory by a rustls client: handshake, one echo, `shrink()`.
#![cfg(feature = "tls")]

mod tls_support;

use corelay::transport::{TlsAcceptor, TlsSession, TlsSettings};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use tls_support::*;

struct Counting;

const SLOTS: usize = 512;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    static TRACKED: RefCell<[(usize, usize); SLOTS]> = const { RefCell::new([(0, 0); SLOTS]) };
}

fn track_add(p: *mut u8, size: usize) {
    let _ = TRACKED.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            if let Some(slot) = t.iter_mut().find(|s| s.0 == 0) {
                *slot = (p as usize, size);
            }
        }
    });
}

fn track_remove(p: *mut u8) {
    let _ = TRACKED.try_with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            if let Some(slot) = t.iter_mut().find(|s| s.0 == p as usize) {
                *slot = (0, 0);
            }
        }
    });
}

fn tracking() -> bool {
    TRACK.try_with(|t| t.get()).unwrap_or(false)
}

// SAFETY: forwards to the system allocator; bookkeeping never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        let _ = LIVE.try_with(|c| c.set(c.get() + l.size() as isize));
        if tracking() && !p.is_null() {
            track_add(p, l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get() - l.size() as isize));
        track_remove(p);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            let _ = LIVE.try_with(|c| c.set(c.get() + n as isize - l.size() as isize));
            let was = IN_HOOK.try_with(|h| h.get()).unwrap_or(true);
            if !was {
                track_remove(p);
                if tracking() {
                    track_add(q, n);
                }
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.with(|c| c.get())
}

fn malloc_in_use() -> isize {
    // SAFETY: plain glibc query.
    unsafe { libc::mallinfo2() }.uordblks as isize
}

/// Run `f` with allocations tracked (only server-side calls are tracked).
fn tracked<R>(f: impl FnOnce() -> R) -> R {
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    r
}

struct Measured {
    rust: isize,
    malloc: isize,
    allocs: Vec<usize>,
}

fn measure(
    acceptor: &TlsAcceptor,
    ca: &rustls::pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
    shrink: bool,
) -> Measured {
    TRACKED.with(|t| *t.borrow_mut() = [(0, 0); SLOTS]);
    let cfg = client_config(std::slice::from_ref(ca), Some(version));
    let mut client = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut sess: TlsSession = tracked(|| acceptor.new_session());
    // Engine-owned buffers (not part of the session).
    let mut scratch = vec![0u8; 64 << 10];
    let mut leftover: Vec<u8> = Vec::new();
    let mut plain = Vec::with_capacity(4096);
    let mut out = Vec::with_capacity(16 << 10);
    let mut wire = Vec::new();

    let mut pump = |client: &mut rustls::ClientConnection,
                    sess: &mut TlsSession,
                    plain: &mut Vec<u8>,
                    out: &mut Vec<u8>| {
        for _ in 0..8 {
            wire.clear();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                let have = leftover.len();
                scratch[..have].copy_from_slice(&leftover);
                scratch[have..have + wire.len()].copy_from_slice(&wire);
                let total = have + wire.len();
                let used = tracked(|| sess.read_tls(&mut scratch[..total], plain, out)).unwrap();
                leftover.clear();
                leftover.extend_from_slice(&scratch[used..total]);
            }
            if !out.is_empty() {
                let mut r = &out[..];
                while !r.is_empty() {
                    client.read_tls(&mut r).unwrap();
                }
                client.process_new_packets().unwrap();
                out.clear();
            }
        }
    };
    pump(&mut client, &mut sess, &mut plain, &mut out);
    assert!(!client.is_handshaking() && !sess.is_handshaking());
    // Two echoes: a TLS 1.3 session leaves rustls after encrypting the first reply
    // (tls.rs `may_establish`), so the second one runs on the compact record layer.
    for _ in 0..2 {
        client.writer().write_all(b"ping over tls").unwrap();
        pump(&mut client, &mut sess, &mut plain, &mut out);
        assert_eq!(plain, b"ping over tls");
        tracked(|| sess.write_plain(&plain, &mut out)).unwrap();
        plain.clear();
        pump(&mut client, &mut sess, &mut plain, &mut out);
        let mut got = [0u8; 13];
        client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping over tls");
    }
    assert!(leftover.is_empty());
    let compact = !acceptor.settings().rustls_records;
    // The echo built both contexts (compact record layer only) and counts as activity once.
    assert_eq!(sess.holds_cipher_contexts(), compact);
    assert_eq!(sess.take_activity(), compact);
    assert!(!sess.take_activity());
    if shrink {
        assert_eq!(tracked(|| sess.shrink()), compact);
        assert!(!sess.holds_cipher_contexts());
        assert!(!sess.shrink(), "nothing left to release");
    }

    let allocs: Vec<usize> = TRACKED.with(|t| {
        let mut v: Vec<usize> = t
            .borrow()
            .iter()
            .filter(|s| s.0 != 0)
            .map(|s| s.1)
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    });
    let (r0, m0) = (live(), malloc_in_use());
    drop(sess);
    let (r1, m1) = (live(), malloc_in_use());
    Measured {
        rust: r0 - r1,
        malloc: m0 - m1,
        allocs,
    }
}

const CHILD: &str = "CORELAY_TLS_MEMORY_CHILD";

#[test]
fn idle_session_memory() {
    if std::env::var_os(CHILD).is_none() {
        // Re-run this test in a child whose malloc frees eagerly (see the module docs).
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "idle_session_memory",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env(
                "GLIBC_TUNABLES",
                "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0",
            )
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "child failed");
        return;
    }
    let dir = TempDir::new("mem");
    let g = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let (c, k) = write(&dir, "m", &g);
    let compact = TlsAcceptor::from_config(&TlsSettings {
        cert: c.clone(),
        key: k.clone(),
        ..TlsSettings::default()
    })
    .unwrap();
    let rustls_records = TlsAcceptor::from_config(&TlsSettings {
        cert: c,
        key: k,
        rustls_records: true,
        ..TlsSettings::default()
    })
    .unwrap();
    println!(
        "size_of::<TlsSession>() = {} (inline in the engine's record)",
        std::mem::size_of::<TlsSession>(),
    );
    // Warm-up (lazy statics, provider tables) so they are not attributed to a session.
    let _ = measure(&compact, &g.der, &rustls::version::TLS13, true);
    let _ = measure(&rustls_records, &g.der, &rustls::version::TLS13, true);
    let mut worst = 0;
    for (mode, acceptor) in [("compact", &compact), ("rustls_records", &rustls_records)] {
        for (name, v) in [
            ("TLS 1.3", &rustls::version::TLS13),
            ("TLS 1.2", &rustls::version::TLS12),
        ] {
            for shrink in [true, false] {
                let m = measure(acceptor, &g.der, v, shrink);
                println!(
                    "{mode:>14} {name} {}: Rust heap {:>5} B in {:>2} allocations {:?}; \
                     malloc in use (incl. aws-lc, chunk headers) {:>5} B",
                    if shrink {
                        "after shrink()"
                    } else {
                        "no shrink()   "
                    },
                    m.rust,
                    m.allocs.len(),
                    m.allocs,
                    m.malloc
                );
                if mode == "compact" && shrink {
                    worst = worst.max(m.rust).max(m.malloc);
                }
            }
        }
    }
    println!("idle established TlsSession after shrink(): at most {worst} B (target 2048)");
    assert!(worst <= 2048, "idle TLS session holds {worst} B > 2048");
}
