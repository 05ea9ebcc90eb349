//! Kernel TLS probe (docs/tls.md, "kTLS"): after a rustls handshake on a loopback
//! connection, hand the traffic keys to the kernel (`TCP_ULP "tls"` + `TLS_TX`/`TLS_RX`) and
//! exchange plaintext through the socket while the peer speaks TLS.
//!
//! If the kernel has no TLS ULP (CONFIG_TLS off, module absent) the test prints the evidence
//! and passes: the handover design does not depend on it (see docs/tls.md).
#![cfg(feature = "tls")]

mod tls_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tls_support::*;

const TCP_ULP: libc::c_int = 31;
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_1_3_VERSION: u16 = 0x0304;
const TLS_CIPHER_AES_GCM_128: u16 = 51;

/// `struct tls12_crypto_info_aes_gcm_128` (linux/tls.h).
#[repr(C)]
struct CryptoInfoAesGcm128 {
    version: u16,
    cipher_type: u16,
    iv: [u8; 8],
    key: [u8; 16],
    salt: [u8; 4],
    rec_seq: [u8; 8],
}

fn set_ulp(fd: i32) -> std::io::Result<()> {
    // SAFETY: valid fd, pointer/length to a live buffer.
    let r = unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, TCP_ULP, c"tls".as_ptr().cast(), 3) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_keys(
    fd: i32,
    dir: libc::c_int,
    seq: u64,
    s: &rustls::ConnectionTrafficSecrets,
) -> std::io::Result<()> {
    let rustls::ConnectionTrafficSecrets::Aes128Gcm { key, iv } = s else {
        return Err(std::io::Error::other("demo covers AES-128-GCM only"));
    };
    let iv = iv.as_ref();
    let mut info = CryptoInfoAesGcm128 {
        version: TLS_1_3_VERSION,
        cipher_type: TLS_CIPHER_AES_GCM_128,
        iv: [0; 8],
        key: [0; 16],
        salt: [0; 4],
        rec_seq: seq.to_be_bytes(),
    };
    info.salt.copy_from_slice(&iv[..4]);
    info.iv.copy_from_slice(&iv[4..12]);
    info.key.copy_from_slice(key.as_ref());
    // SAFETY: valid fd; `info` is a live repr(C) struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_TLS,
            dir,
            (&info as *const CryptoInfoAesGcm128).cast(),
            std::mem::size_of::<CryptoInfoAesGcm128>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn evidence() -> String {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let config = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_TLS[ =]'",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "kernel {}; tcp_available_ulp = {:?}; /proc/config.gz: {:?}; /lib/modules present: {}",
        release.trim(),
        ulps.trim(),
        config,
        std::path::Path::new("/lib/modules").exists()
    )
}

#[test]
fn ktls_after_rustls_handshake() {
    // 1. Can this kernel attach the TLS ULP at all?
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    if let Err(e) = set_ulp(s.as_raw_fd()) {
        println!(
            "kTLS UNAVAILABLE: setsockopt(TCP_ULP, \"tls\") = {e} (errno {:?}); {}",
            e.raw_os_error(),
            evidence()
        );
        return;
    }
    drop((c, s));
    println!("kTLS: TCP_ULP \"tls\" accepted; {}", evidence());

    // 2. rustls handshake (TLS 1.3, AES-128-GCM, no tickets so nothing is pending after it).
    let g = generate(&["localhost"], KeyKind::EcdsaP256, false);
    let certs = vec![g.der.clone()];
    let key_der: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(g.key_pem.as_bytes()).unwrap();
    let mut scfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .unwrap();
    scfg.enable_secret_extraction = true;
    scfg.send_tls13_tickets = 0;
    let ccfg = client_config_full(
        std::slice::from_ref(&g.der),
        Some(&rustls::version::TLS13),
        false,
        Some(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut c = connect(addr, &ccfg, "localhost").unwrap();
        let mut got = [0u8; 13];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"kernel speaks");
        c.write_all(b"client speaks").unwrap();
        c.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    let (mut sock, _) = l.accept().unwrap();
    let mut conn = rustls::ServerConnection::new(Arc::new(scfg)).unwrap();
    while conn.is_handshaking() || conn.wants_write() {
        conn.complete_io(&mut sock).unwrap();
    }
    let secrets = conn.dangerous_extract_secrets().unwrap();
    let fd = sock.as_raw_fd();
    set_ulp(fd).unwrap();
    set_keys(fd, TLS_TX, secrets.tx.0, &secrets.tx.1).expect("TLS_TX");
    set_keys(fd, TLS_RX, secrets.rx.0, &secrets.rx.1).expect("TLS_RX");
    // 3. Plaintext through the socket; the kernel does the records.
    sock.write_all(b"kernel speaks").unwrap();
    let mut got = [0u8; 13];
    sock.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"client speaks");
    client.join().unwrap();
    println!("kTLS TX+RX worked after a rustls handshake");
}
