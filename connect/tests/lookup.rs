//! The lookup example with a MaxMind database: the test writes a GeoIP2-Country `.mmdb` itself
//! (a small writer of the MaxMind DB format, below), starts `corelay-connect lookup` with it and
//! asks with curl from three loopback source addresses: one whose country has a row, one whose
//! country has none but whose continent has, one the database does not know (the CIDR table).

mod support;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// A value of the MaxMind DB data section.
enum V {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, V)>),
    Arr(Vec<V>),
}

/// Control byte(s): type in the top 3 bits (0 + an extension byte for types above 7), then
/// the size, with 1..3 extension bytes for sizes from 29 on.
fn control(out: &mut Vec<u8>, typ: u8, size: usize) {
    let (t, ext) = if typ <= 7 {
        (typ, None)
    } else {
        (0, Some(typ - 7))
    };
    let (s5, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65821) as u32).to_be_bytes()[1..].to_vec())
    };
    out.push(t << 5 | s5);
    out.extend(ext);
    out.extend(extra);
}

fn uint(out: &mut Vec<u8>, typ: u8, v: u64) {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count();
    control(out, typ, 8 - skip);
    out.extend(&b[skip..]);
}

fn encode(out: &mut Vec<u8>, v: &V) {
    match v {
        V::Str(s) => {
            control(out, 2, s.len());
            out.extend(s.as_bytes());
        }
        V::U16(n) => uint(out, 5, *n as u64),
        V::U32(n) => uint(out, 6, *n as u64),
        V::U64(n) => uint(out, 9, *n),
        V::Map(kv) => {
            control(out, 7, kv.len());
            for (k, v) in kv {
                encode(out, &V::Str(k.to_string()));
                encode(out, v);
            }
        }
        V::Arr(a) => {
            control(out, 11, a.len());
            for v in a {
                encode(out, v);
            }
        }
    }
}

/// An IPv4 GeoIP2-Country database: each (network, prefix, country, continent) gets a record.
fn mmdb(nets: &[([u8; 4], u8, &str, &str)]) -> Vec<u8> {
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut data = Vec::new();
    let mut nodes = vec![[Rec::Empty; 2]];
    for (net, len, country, continent) in nets {
        let off = data.len();
        let rec = V::Map(vec![
            (
                "continent",
                V::Map(vec![("code", V::Str(continent.to_string()))]),
            ),
            (
                "country",
                V::Map(vec![("iso_code", V::Str(country.to_string()))]),
            ),
        ]);
        encode(&mut data, &rec);
        let ip = u32::from_be_bytes(*net);
        let mut node = 0;
        for i in 0..*len as u32 {
            let bit = ((ip >> (31 - i)) & 1) as usize;
            if i + 1 == *len as u32 {
                nodes[node][bit] = Rec::Data(off);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(n) => n,
                _ => {
                    nodes.push([Rec::Empty; 2]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n);
                    n
                }
            };
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            // 24-bit records: a node index, "no data" (= node count), or a data pointer
            // (node count + 16 + offset in the data section).
            let v = match r {
                Rec::Node(i) => *i,
                Rec::Empty => count,
                Rec::Data(off) => count + 16 + off,
            } as u32;
            out.extend(&v.to_be_bytes()[1..]);
        }
    }
    out.extend([0u8; 16]);
    out.extend(&data);
    out.extend(b"\xab\xcd\xefMaxMind.com");
    let meta = V::Map(vec![
        ("binary_format_major_version", V::U16(2)),
        ("binary_format_minor_version", V::U16(0)),
        ("build_epoch", V::U64(1_700_000_000)),
        ("database_type", V::Str("GeoLite2-Country".into())),
        (
            "description",
            V::Map(vec![("en", V::Str("corelay lookup test".into()))]),
        ),
        ("ip_version", V::U16(4)),
        ("languages", V::Arr(vec![V::Str("en".into())])),
        ("node_count", V::U32(count as u32)),
        ("record_size", V::U16(24)),
    ]);
    encode(&mut out, &meta);
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let c = params.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.join("c.crt"), dir.join("c.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    (cert, keyf)
}

/// `GET /meeting/m` from source address `from`: (region, zone names).
fn ask(cert: &Path, port: u16, from: &str, extra: &[&str]) -> (String, Vec<String>, String) {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5", "--interface", from, "--cacert"])
        .arg(cert)
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/meeting/m"))
        .stdin(Stdio::null())
        .output()
        .expect("curl (tools/test.sh installs it)");
    assert!(out.status.success(), "curl from {from}: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let zones = v["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["name"].as_str().unwrap().to_string())
        .collect();
    (
        v["region"].as_str().unwrap().to_string(),
        zones,
        v["client"].as_str().unwrap().to_string(),
    )
}

#[test]
fn maxmind_country_then_continent_then_cidr_table() {
    let dir = TempDir::new("lookup-mmdb");
    let (cert, key) = self_signed(&dir.0);
    let db = dir.0.join("geo.mmdb");
    std::fs::write(
        &db,
        mmdb(&[
            ([127, 0, 0, 1], 32, "DE", "EU"),
            ([127, 0, 0, 2], 32, "FR", "EU"),
            ([127, 0, 0, 4], 32, "JP", "AS"),
        ]),
    )
    .unwrap();
    // The reader we configure accepts the file (and finds what the lookup will look for).
    let r = corelay_connect::lookup::GeoDb::open(&db).unwrap();
    assert_eq!(
        r.locate("127.0.0.2".parse().unwrap()),
        (Some("FR".into()), Some("EU".into()))
    );
    assert_eq!(r.locate("127.0.0.3".parse().unwrap()), (None, None));

    let port = free_port();
    let cfg = dir.0.join("lookup.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\nmaxmind = \"{}\"\n\
             default_zones = [\"us\"]\n\
             [[zones]]\nname = \"eu\"\ncontrollers = [\"10.0.0.1:443\"]\n\
             [[zones]]\nname = \"de\"\ncontrollers = [\"10.0.0.2:443\"]\n\
             [[zones]]\nname = \"us\"\ncontrollers = [\"10.0.0.3:443\"]\n\
             [[countries]]\ncode = \"DE\"\nzones = [\"de\", \"eu\"]\n\
             [[continents]]\ncode = \"EU\"\nzones = [\"eu\", \"de\"]\n\
             [[regions]]\ncidr = \"127.0.0.0/8\"\nzones = [\"us\", \"eu\"]\n",
            cert.display(),
            key.display(),
            db.display()
        ),
    )
    .unwrap();
    let lookup = Proc::spawn(
        "lookup",
        Command::new(env!("CARGO_BIN_EXE_corelay-connect"))
            .arg("lookup")
            .arg("--config")
            .arg(&cfg),
    );
    wait_for("lookup listening", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    let (region, zones, client) = ask(&cert, port, "127.0.0.1", &[]);
    assert_eq!(
        (region.as_str(), client.as_str()),
        ("country:DE", "127.0.0.1")
    );
    assert_eq!(zones, ["de", "eu"]);
    let (region, zones, _) = ask(&cert, port, "127.0.0.2", &[]);
    assert_eq!(region, "continent:EU");
    assert_eq!(zones, ["eu", "de"]);
    // Not in the database: the CIDR table.
    let (region, zones, _) = ask(&cert, port, "127.0.0.3", &[]);
    assert_eq!(region, "127.0.0.0/8");
    assert_eq!(zones, ["us", "eu"]);
    // In the database, but neither its country nor its continent has a row: the CIDR table.
    let (region, _, _) = ask(&cert, port, "127.0.0.4", &[]);
    assert_eq!(region, "127.0.0.0/8");

    // 200 keep-alive clients at once (our client library's TLS), each asking twice: the
    // service holds them on its one event-loop thread.
    use corelay_connect::net::{client_config, open, tls_over, Route};
    let tls = client_config(&cert, &[]).unwrap();
    let target = format!("127.0.0.1:{port}");
    let mut conns: Vec<_> = (0..200)
        .map(|_| {
            let c = open(&Route::Direct, &tls, &target, Duration::from_secs(10)).unwrap();
            c.set_timeout(Some(Duration::from_secs(10))).unwrap();
            tls_over(c, "127.0.0.1", &tls).unwrap()
        })
        .collect();
    for _ in 0..2 {
        for c in &mut conns {
            let (code, body) =
                corelay_connect::http::request(c, "GET", "x", "/meeting/m", b"").unwrap();
            assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", lookup.child.id())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        threads <= 2,
        "the lookup runs {threads} threads for 200 clients"
    );
}

#[test]
fn a_corrupt_database_is_refused_at_start() {
    let dir = TempDir::new("lookup-bad-mmdb");
    let db = dir.0.join("bad.mmdb");
    std::fs::write(&db, b"not a maxmind database").unwrap();
    assert!(corelay_connect::lookup::GeoDb::open(&db).is_err());
    // Truncated after the metadata marker: no panic, an error.
    let mut good = mmdb(&[([10, 0, 0, 0], 8, "DE", "EU")]);
    let cut = good.len() - 20;
    good.truncate(cut);
    std::fs::write(&db, &good).unwrap();
    assert!(corelay_connect::lookup::GeoDb::open(&db).is_err());
}
