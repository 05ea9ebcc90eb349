//! TLS termination costs, server side only, no sockets: a rustls client and a `TlsSession`
//! exchange bytes in memory; only the server's calls are timed (`iter_custom`).
//!
//! - handshakes: full (ECDSA P-256 and RSA-2048 certificates) and resumed (TLS 1.3 ticket);
//! - records: decrypt (`read_tls`) and encrypt (`write_plain`) of 1 KiB and 16 KiB messages,
//!   for the compact record layer (warm, and cold = after `shrink()`) and rustls's own.
//!
//! Run: `cargo bench --bench tls` (docs/benchmarks.md, "TLS").

use corelay::transport::{TlsAcceptor, TlsSession, TlsSettings};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::pki_types::CertificateDer;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixture {
    acceptor: TlsAcceptor,
    rustls_acceptor: TlsAcceptor,
    ca: CertificateDer<'static>,
    _dir: std::path::PathBuf,
}

fn fixture(rsa: bool) -> Fixture {
    let alg = if rsa {
        &rcgen::PKCS_RSA_SHA256
    } else {
        &rcgen::PKCS_ECDSA_P256_SHA256
    };
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let dir = std::env::temp_dir().join(format!("corelay-tls-bench-{}-{rsa}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let settings = TlsSettings {
        cert: c,
        key: k,
        ..TlsSettings::default()
    };
    let acceptor = TlsAcceptor::from_config(&settings).unwrap();
    let rustls_acceptor = TlsAcceptor::from_config(&TlsSettings {
        rustls_records: true,
        ..settings
    })
    .unwrap();
    Fixture {
        acceptor,
        rustls_acceptor,
        ca: cert.der().clone(),
        _dir: dir,
    }
}

fn client_config(ca: &CertificateDer<'static>, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(cfg)
}

/// Engine-side buffers.
#[derive(Default)]
struct Bufs {
    leftover: Vec<u8>,
    scratch: Vec<u8>,
    plain: Vec<u8>,
    out: Vec<u8>,
    wire: Vec<u8>,
}

/// Move bytes both ways until quiet; returns the time spent in server calls.
fn pump(c: &mut rustls::ClientConnection, s: &mut TlsSession, b: &mut Bufs) -> Duration {
    let mut server = Duration::ZERO;
    for _ in 0..8 {
        b.wire.clear();
        while c.wants_write() {
            c.write_tls(&mut b.wire).unwrap();
        }
        if !b.wire.is_empty() {
            b.scratch.clear();
            b.scratch.extend_from_slice(&b.leftover);
            b.scratch.extend_from_slice(&b.wire);
            let t = Instant::now();
            let used = s
                .read_tls(&mut b.scratch, &mut b.plain, &mut b.out)
                .unwrap();
            server += t.elapsed();
            b.leftover.clear();
            b.leftover.extend_from_slice(&b.scratch[used..]);
        }
        if b.out.is_empty() && b.wire.is_empty() {
            break;
        }
        if !b.out.is_empty() {
            let mut r = &b.out[..];
            while !r.is_empty() {
                c.read_tls(&mut r).unwrap();
            }
            c.process_new_packets().unwrap();
            b.out.clear();
        }
    }
    server
}

fn handshakes(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("tls_handshake_server");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, rsa) in [("ecdsa_p256", false), ("rsa2048", true)] {
        let fx = fixture(rsa);
        let full = client_config(&fx.ca, false);
        g.bench_function(BenchmarkId::new("full_tls13", name), |bn| {
            bn.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut b = Bufs::default();
                for _ in 0..iters {
                    let mut c = rustls::ClientConnection::new(
                        full.clone(),
                        "localhost".try_into().unwrap(),
                    )
                    .unwrap();
                    let t = Instant::now();
                    let mut s = fx.acceptor.new_session();
                    total += t.elapsed();
                    total += pump(&mut c, &mut s, &mut b);
                    assert!(!s.is_handshaking() && !c.is_handshaking());
                }
                total
            })
        });
        let resuming = client_config(&fx.ca, true);
        g.bench_function(BenchmarkId::new("resumed_tls13_ticket", name), |bn| {
            let mut b = Bufs::default();
            // Seed the client's ticket store.
            let mut c =
                rustls::ClientConnection::new(resuming.clone(), "localhost".try_into().unwrap())
                    .unwrap();
            let mut s = fx.acceptor.new_session();
            pump(&mut c, &mut s, &mut b);
            bn.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut c = rustls::ClientConnection::new(
                        resuming.clone(),
                        "localhost".try_into().unwrap(),
                    )
                    .unwrap();
                    let t = Instant::now();
                    let mut s = fx.acceptor.new_session();
                    total += t.elapsed();
                    total += pump(&mut c, &mut s, &mut b);
                    assert!(s.resumed(), "expected a resumed handshake");
                }
                total
            })
        });
    }
    g.finish();
}

fn established(
    fx: &Fixture,
    acceptor: &TlsAcceptor,
) -> (rustls::ClientConnection, TlsSession, Bufs) {
    let cfg = client_config(&fx.ca, false);
    let mut c = rustls::ClientConnection::new(cfg, "localhost".try_into().unwrap()).unwrap();
    let mut s = acceptor.new_session();
    let mut b = Bufs::default();
    pump(&mut c, &mut s, &mut b);
    (c, s, b)
}

fn records(cr: &mut Criterion) {
    let fx = fixture(false);
    let mut g = cr.benchmark_group("tls_records_server");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for size in [1024usize, 16 * 1024] {
        let msg = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        for (mode, acceptor, cold) in [
            ("compact", &fx.acceptor, false),
            ("compact_cold", &fx.acceptor, true),
            ("rustls", &fx.rustls_acceptor, false),
        ] {
            g.bench_function(BenchmarkId::new(format!("encrypt_{mode}"), size), |bn| {
                let (_c, mut s, mut b) = established(&fx, acceptor);
                bn.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if cold {
                            s.shrink();
                        }
                        b.out.clear();
                        let t = Instant::now();
                        s.write_plain(&msg, &mut b.out).unwrap();
                        total += t.elapsed();
                    }
                    total
                })
            });
            g.bench_function(BenchmarkId::new(format!("decrypt_{mode}"), size), |bn| {
                let (mut c, mut s, mut b) = established(&fx, acceptor);
                bn.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        c.writer().write_all(&msg).unwrap();
                        b.wire.clear();
                        while c.wants_write() {
                            c.write_tls(&mut b.wire).unwrap();
                        }
                        if cold {
                            s.shrink();
                        }
                        b.plain.clear();
                        let t = Instant::now();
                        let used = s.read_tls(&mut b.wire, &mut b.plain, &mut b.out).unwrap();
                        total += t.elapsed();
                        assert_eq!((used, b.plain.len()), (b.wire.len(), size));
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, handshakes, records);
criterion_main!(benches);
