//! The connection process end to end in network namespaces (tests/support/mod.rs): two
//! members of a meeting run `corelay join` / `corelay-connect join` in the client namespace
//! and exchange SFrame test media through an MMR, under each network condition of the issue:
//! nothing blocked → UDP; UDP 8801 dropped → TCP 8801; TCP 8801 dropped too → TLS 443; one
//! zone's controllers 200 ms away → the other zone; a slow UDP path (300 ms each way) → still
//! UDP; every controller blackholed → the faster tunnel after 5.5 s; only a proxy may leave →
//! TLS through the proxy; the MMR's UDP dropped on its way back mid-meeting → TCP on the same
//! MMR; the MMR killed mid-meeting → both members reconnect to the same new MMR. Media is
//! counted both ways in every case; the chosen rung and the time to first media are printed.
//!
//! Needs root, nftables and tinyproxy (tools/test.sh installs them); skipped otherwise
//! (fails under CI=true, where it must run).

mod support;
use corelay_connect::http::get_plain;
use corelay_connect::zone::choose;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::*;

const SECRET: &[u8] = b"connection-process test secret 0123456789";

struct Mmr {
    name: String,
    ip: &'static str,
    gw: Proc,
    backend: Proc,
}

struct Bed {
    net: Net,
    dir: TempDir,
    cert: PathBuf,
    connect: PathBuf,
    corelay: PathBuf,
    mmrs: Vec<Mmr>,
    _servers: Vec<Proc>,
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn start_mmr(
    net: &Net,
    bin: &Path,
    dir: &Path,
    name: &str,
    ip: &'static str,
    cert: &Path,
    key: &Path,
) -> Mmr {
    let sock = dir.join(format!("{name}.sock"));
    let secret = write(dir, "media.secret", &String::from_utf8_lossy(SECRET));
    let toml = format!(
        "[server]\nlisten = [\"{ip}:8080\"]\ntls_listen = [\"{ip}:443\"]\nadmin = \"{ip}:9100\"\nshards = 1\npin = false\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [media]\nsecret_file = \"{}\"\nudp_listen = \"{ip}:8801\"\ntcp_listen = \"{ip}:8801\"\ntls = true\n",
        sock.display(),
        cert.display(),
        key.display(),
        secret.display()
    );
    let cfg = write(dir, &format!("{name}.toml"), &toml);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let gw = Proc::spawn(
        name,
        net.exec(&net.d, bin)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("CORELAY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log),
    );
    wait_for(
        &format!("{name} attach socket"),
        Duration::from_secs(20),
        || sock.exists().then_some(()),
    );
    let backend = Proc::spawn(
        &format!("{name} backend"),
        std::process::Command::new(bin)
            .arg("backend")
            .arg("--attach")
            .arg(&sock)
            .env("CORELAY_LOG", "warn")
            .stdout(Stdio::null()),
    );
    let url = format!("http://{ip}:9100/metrics");
    wait_for(
        &format!("{name} backend attached"),
        Duration::from_secs(20),
        || {
            let (_, b) = net
                .in_ns(&net.d, || get_plain(&url, Duration::from_secs(1)))
                .ok()?;
            String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.starts_with("corelay_backends_attached") && l.trim_end().ends_with(" 1"))
                .then_some(())
        },
    );
    Mmr {
        name: name.into(),
        ip,
        gw,
        backend,
    }
}

fn setup() -> Bed {
    let net = Net::new();
    let dir = TempDir::new("netns");
    let (cert, key) = certificate(&dir.0);
    let bin = corelay_bin();
    let connect = PathBuf::from(env!("CARGO_BIN_EXE_corelay-connect"));
    let mut mmrs = Vec::new();
    for (zone, _, ips) in ZONES {
        for (i, ip) in ips.iter().enumerate() {
            mmrs.push(start_mmr(
                &net,
                &bin,
                &dir.0,
                &format!("{zone}-{}", i + 1),
                ip,
                &cert,
                &key,
            ));
        }
    }
    let mut servers = Vec::new();
    let d = &dir.0;
    let spawn = |servers: &mut Vec<Proc>, name: &str, sub: &str, cfg: &Path| {
        let log = std::fs::File::create(d.join(format!("{name}.log"))).unwrap();
        servers.push(Proc::spawn(
            name,
            net.exec(&net.d, &connect)
                .arg(sub)
                .arg("--config")
                .arg(cfg)
                .stdout(Stdio::null())
                .stderr(log),
        ));
    };
    for (zone, ctrls, ips) in ZONES {
        let mut mm = String::new();
        for (i, ip) in ips.iter().enumerate() {
            mm.push_str(&format!(
                "[[mmrs]]\nname = \"{zone}-{}\"\ncontrol = \"{ip}:443\"\nload = \"http://{ip}:9100/load\"\n",
                i + 1
            ));
        }
        for (i, c) in ctrls.iter().enumerate() {
            let body = format!(
                "zone = \"{zone}\"\nlisten = \"{c}:443\"\ncert = \"{}\"\nkey = \"{}\"\npoll_ms = 200\ndead_after_ms = 1500\n{mm}",
                cert.display(),
                key.display()
            );
            let cfg = write(d, &format!("zone-{zone}-{i}.toml"), &body);
            spawn(&mut servers, &format!("zone-{zone}-{i}"), "zone", &cfg);
        }
    }
    let zones: Vec<String> = ZONES
        .iter()
        .map(|(z, c, _)| {
            format!(
                "[[zones]]\nname = \"{z}\"\ncontrollers = [\"{}:443\", \"{}:443\"]\n",
                c[0], c[1]
            )
        })
        .collect();
    let lookup = format!(
        "listen = \"{LOOKUP}:443\"\ncert = \"{}\"\nkey = \"{}\"\ntunnels = [\"{}:443\", \"{}:443\"]\ndefault_zones = [\"us\"]\n{}\
         [[regions]]\ncidr = \"10.9.0.0/16\"\nzones = [\"eu\", \"us\"]\n",
        cert.display(),
        key.display(),
        TUNNELS[0],
        TUNNELS[1],
        zones.join("")
    );
    spawn(
        &mut servers,
        "lookup",
        "lookup",
        &write(d, "lookup.toml", &lookup),
    );
    let allow: Vec<String> = ZONES
        .iter()
        .flat_map(|(_, c, m)| c.iter().chain(m.iter()))
        .map(|ip| format!("\"{ip}\""))
        .collect();
    for (i, t) in TUNNELS.iter().enumerate() {
        let body = format!(
            "listen = \"{t}:443\"\ncert = \"{}\"\nkey = \"{}\"\nallow = [{}]\n",
            cert.display(),
            key.display(),
            allow.join(", ")
        );
        spawn(
            &mut servers,
            &format!("tunnel-{i}"),
            "tunnel",
            &write(d, &format!("tunnel-{i}.toml"), &body),
        );
    }
    let proxy = format!(
        "Port 3128\nListen {PROXY}\nTimeout 60\nMaxClients 64\nAllow 10.9.0.0/16\nConnectPort 443\nLogLevel Error\n"
    );
    let pcfg = write(d, "tinyproxy.conf", &proxy);
    servers.push(Proc::spawn(
        "tinyproxy",
        net.exec(&net.d, Path::new("tinyproxy"))
            .arg("-d")
            .arg("-c")
            .arg(&pcfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    ));
    // Every server answers before the cases start; the controllers have seen their MMRs.
    for (_, ctrls, _) in ZONES {
        for c in ctrls {
            wait_for(&format!("controller {c}"), Duration::from_secs(20), || {
                net.in_ns(&net.d, || std::net::TcpStream::connect((c, 443)).ok())
                    .map(|_| ())
            });
        }
    }
    for ip in [LOOKUP, TUNNELS[0], TUNNELS[1]] {
        wait_for(&format!("server {ip}"), Duration::from_secs(20), || {
            net.in_ns(&net.d, || std::net::TcpStream::connect((ip, 443)).ok())
                .map(|_| ())
        });
    }
    wait_for("tinyproxy", Duration::from_secs(20), || {
        net.in_ns(&net.d, || std::net::TcpStream::connect((PROXY, 3128)).ok())
            .map(|_| ())
    });
    let ms100 = Duration::from_millis(100);
    net.delay_relay(
        &format!("{}:443", RELAYS[0]),
        &format!("{}:443", ZONES[0].1[0]),
        ms100,
    );
    net.delay_relay(
        &format!("{}:443", RELAYS[1]),
        &format!("{}:443", ZONES[0].1[1]),
        ms100,
    );
    net.delay_relay(
        &format!("{}:443", RELAYS[2]),
        &format!("{}:443", TUNNELS[1]),
        ms100,
    );
    let ms300 = Duration::from_millis(300);
    for (i, mmr) in ZONES[0].2.iter().enumerate() {
        net.udp_delay_relay(
            &format!("{}:8801", RELAYS[3 + i]),
            &format!("{mmr}:8801"),
            ms300,
        );
    }
    // Every controller has seen each of its MMRs healthy.
    let tls = corelay_connect::net::client_config(&cert, &[]).unwrap();
    for (_, ctrls, _) in ZONES {
        for c in ctrls {
            let target = format!("{c}:443");
            wait_for(
                &format!("{c} sees its MMRs"),
                Duration::from_secs(20),
                || {
                    let body = net.in_ns(&net.d, || {
                        let route = corelay_connect::net::Route::Direct;
                        let mut s = corelay_connect::net::open_tls(
                            &route,
                            &tls,
                            &tls,
                            &target,
                            Duration::from_secs(2),
                        )
                        .ok()?;
                        corelay_connect::http::request(&mut s, "GET", c, "/status", b"").ok()
                    })?;
                    let v: Value = serde_json::from_slice(&body.1).ok()?;
                    v["mmrs"]
                        .as_array()?
                        .iter()
                        .all(|m| m["state"]["healthy"] == true)
                        .then_some(())
                },
            );
        }
    }
    Bed {
        net,
        dir,
        cert,
        connect,
        corelay: bin.clone(),
        mmrs,
        _servers: servers,
    }
}

/// Both members join `meeting` for `ms`; their reports.
fn join_pair(b: &Bed, meeting: &str, ms: u64, proxy: bool, during: impl FnOnce()) -> [Value; 2] {
    let mut kids = Vec::new();
    for member in [1u64, 2] {
        let report = b.dir.0.join(format!("{meeting}-{member}.json"));
        let _ = std::fs::remove_file(&report);
        let log = std::fs::File::create(b.dir.0.join(format!("{meeting}-{member}.log"))).unwrap();
        // Member 1 goes through `corelay join` (which runs corelay-connect beside it).
        let program = if member == 1 { &b.corelay } else { &b.connect };
        let mut cmd = b.net.exec(&b.net.c, program);
        cmd.args([
            "join",
            "--lookup",
            &format!("{LOOKUP}:443"),
            "--meeting",
            meeting,
        ])
        .args([
            "--member",
            &member.to_string(),
            "--duration-ms",
            &ms.to_string(),
        ])
        .arg("--ca")
        .arg(&b.cert)
        .arg("--report")
        .arg(&report)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdout(Stdio::null())
        .stderr(log);
        if proxy {
            cmd.env("HTTPS_PROXY", format!("http://{PROXY}:3128"));
        }
        kids.push((Proc::spawn(&format!("member {member}"), &mut cmd), report));
    }
    during();
    // A join gives up 30 s after its duration if nothing is ever admitted.
    let deadline = Instant::now() + Duration::from_millis(ms) + Duration::from_secs(45);
    kids.into_iter()
        .map(|(mut p, report)| {
            let st = wait_for(
                "join to finish",
                deadline.saturating_duration_since(Instant::now()),
                || p.child.try_wait().ok().flatten(),
            );
            let log = std::fs::read_to_string(report.with_extension("log")).unwrap_or_default();
            eprintln!("--- {} ({st}):\n{log}", report.display());
            let text = std::fs::read_to_string(&report)
                .unwrap_or_else(|e| panic!("{}: {e}\n{log}", report.display()));
            serde_json::from_str(&text).unwrap()
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

/// The last run of a report.
fn last_run(r: &Value) -> &Value {
    r["runs"].as_array().and_then(|a| a.last()).expect("no run")
}

/// Media flowed both ways and end to end: each member received (SFrame-decrypted) packets of
/// every type, none refused, never more than the other sent.
fn check_media(case: &str, rs: &[Value; 2]) {
    for (i, r) in rs.iter().enumerate() {
        let other = &rs[1 - i];
        for c in r["counters"].as_array().unwrap() {
            let media = c["media"].as_str().unwrap();
            let sent_by_other = other["counters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["media"] == media)
                .unwrap()["sent"]
                .as_u64()
                .unwrap();
            let (sent, recv) = (c["sent"].as_u64().unwrap(), c["received"].as_u64().unwrap());
            eprintln!(
                "{case}: member {} {media}: sent {sent} received {recv} (the other sent {sent_by_other}); rungs {:?}; time to first media {} ms",
                r["member"], r["rungs"], r["time_to_first_media_ms"]
            );
            assert!(
                sent > 0 && recv > 0,
                "{case}: member {} {media}: sent {sent} received {recv}",
                r["member"]
            );
            assert!(recv <= sent_by_other, "{case}: more received than sent");
            assert_eq!(c["rejected"], 0, "{case}: packets failed end-to-end checks");
        }
    }
}

fn rungs(r: &Value) -> Vec<String> {
    r["rungs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn all_on(case: &str, rs: &[Value; 2], rung: &str) {
    for r in rs {
        let want: Vec<String> = ["audio", "video"]
            .iter()
            .map(|m| format!("{m}={rung}"))
            .collect();
        assert_eq!(rungs(r), want, "{case}: member {}", r["member"]);
    }
}

#[test]
fn the_ladder_under_every_network_condition() {
    if let Some(why) = unavailable() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "connect netns test cannot run under CI: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let b = setup();
    let ctrls: Vec<&str> = ZONES
        .iter()
        .flat_map(|(_, c, _)| c.iter().copied())
        .collect();

    // Nothing blocked: UDP.
    let rs = join_pair(&b, "open", 3000, false, || {});
    all_on("open", &rs, "udp");
    check_media("open", &rs);
    for r in &rs {
        assert_eq!(last_run(r)["route"], "direct");
        assert_eq!(last_run(r)["zone"], "eu", "equal zones: the lookup's first");
    }

    // UDP 8801 dropped: TCP 8801.
    b.net.filter(&["udp dport 8801 drop"]);
    let rs = join_pair(&b, "no-udp", 3000, false, || {});
    all_on("no-udp", &rs, "tcp");
    check_media("no-udp", &rs);

    // TCP 8801 dropped too: TLS on 443.
    b.net
        .filter(&["udp dport 8801 drop", "tcp dport 8801 drop"]);
    let rs = join_pair(&b, "no-8801", 3000, false, || {});
    all_on("no-8801", &rs, "tls");
    check_media("no-8801", &rs);
    b.net.filter(&[]);

    // The eu controllers 200 ms away (100 ms each way): us.
    b.net.filter_far(
        &[],
        &[(ZONES[0].1[0], RELAYS[0]), (ZONES[0].1[1], RELAYS[1])],
    );
    let rs = join_pair(&b, "far-eu", 3000, false, || {});
    check_media("far-eu", &rs);
    for r in &rs {
        assert_eq!(last_run(r)["zone"], "us", "member {}", r["member"]);
        assert_eq!(last_run(r)["route"], "direct");
    }
    all_on("far-eu", &rs, "udp");

    // A slow UDP path is not taken for a blocked one: zone eu (the only one answering) is
    // 200 ms away (RTT) and UDP to its MMRs 300 ms each way, so the Binding request reaches
    // the MMR after the fixed 250 ms TCP delay; TCP to the MMR is fast. TCP waits two zone
    // round trips (400 ms): the UDP request binds first, TCP's is refused (409), UDP wins.
    // (With the fixed 250 ms alone, TCP binds first and this case fails.)
    let us = ZONES[1].1.join(", ");
    b.net.filter_nat(
        &[&format!("ip daddr {{ {us} }} drop")],
        &[(ZONES[0].1[0], RELAYS[0]), (ZONES[0].1[1], RELAYS[1])],
        &[(ZONES[0].2[0], RELAYS[3]), (ZONES[0].2[1], RELAYS[4])],
    );
    let rs = join_pair(&b, "slow-udp", 3000, false, || {});
    check_media("slow-udp", &rs);
    for r in &rs {
        assert_eq!(last_run(r)["zone"], "eu");
    }
    all_on("slow-udp", &rs, "udp");

    // Every controller blackholed, the second tunnel 200 ms away: the first tunnel, after 5.5 s.
    let set = ctrls.join(", ");
    b.net.filter_far(
        &[&format!("ip daddr {{ {set} }} drop")],
        &[(TUNNELS[1], RELAYS[2])],
    );
    let rs = join_pair(&b, "tunnel", 3000, false, || {});
    check_media("tunnel", &rs);
    for r in &rs {
        let run = last_run(r);
        assert_eq!(run["route"], "tunnel");
        assert_eq!(
            run["via"],
            format!("{}:443", TUNNELS[0]),
            "the slower tunnel was chosen"
        );
        let t = r["time_to_first_media_ms"].as_u64().unwrap();
        eprintln!("tunnel: member {} time to first media {t} ms", r["member"]);
        // Functional: the zone wait is 5.5 s; the upper bound is generous for a loaded host
        // (6.0 s unloaded).
        assert!((5500..10000).contains(&t), "time to first media {t} ms");
    }
    all_on("tunnel", &rs, "tls");

    // Only the proxy may leave: TLS through it.
    b.net.filter(&[
        "oifname \"lo\" accept",
        &format!("ip daddr {PROXY} tcp dport 3128 accept"),
        "drop",
    ]);
    let rs = join_pair(&b, "proxy", 3000, true, || {});
    check_media("proxy", &rs);
    for r in &rs {
        assert_eq!(last_run(r)["route"], "proxy");
    }
    all_on("proxy", &rs, "tls");
    b.net.filter(&[]);

    // The MMR's UDP dropped on its way back mid-meeting: the UDP connections die (keepalives
    // unanswered for 3 s) and both members run the ladder again. UDP's Binding request still
    // reaches the MMR and binds, so TCP and TLS are refused 409 in that run; the next run
    // avoids UDP and lands on TCP, on the same MMR.
    let meeting = "udp-dies";
    let eu = ["eu-1", "eu-2"];
    let host = ZONES[0].2[choose(meeting, &eu, &[true, true]).unwrap()];
    let load = format!("http://{host}:9100/load");
    let media_conns = || -> Option<u64> {
        let (_, body) = b
            .net
            .in_ns(&b.net.d, || get_plain(&load, Duration::from_secs(1)))
            .ok()?;
        let v: Value = serde_json::from_slice(&body).ok()?;
        Some(
            v["shards"]
                .as_array()?
                .iter()
                .filter_map(|s| s["media_connections"].as_u64())
                .sum(),
        )
    };
    let rs = join_pair(&b, meeting, 9000, false, || {
        wait_for("both members on UDP", Duration::from_secs(20), || {
            (media_conns()? >= 4).then_some(())
        });
        b.net.filter_in(&["udp sport 8801 drop"]);
        eprintln!("udp-dies: UDP from port 8801 dropped");
    });
    b.net.filter_in(&[]);
    check_media("udp-dies", &rs);
    all_on("udp-dies", &rs, "tcp");
    for r in &rs {
        let runs = r["runs"].as_array().unwrap();
        for m in runs[0]["media"].as_array().unwrap() {
            assert_eq!(m["rung"], "udp");
        }
        let ended = runs[0]["ended"].as_str().unwrap();
        assert!(ended.contains("UDP keepalives unanswered"), "{ended}");
        let last = last_run(r);
        assert!(
            last["why"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().starts_with("UDP avoided")),
            "member {}: {last}",
            r["member"]
        );
        assert_eq!(last["mmr"]["mmr"], runs[0]["mmr"]["mmr"]);
        assert!(
            last["received"].as_u64().unwrap() > 0,
            "no media after the reconnect"
        );
        eprintln!(
            "udp-dies: member {}: {ended}; then {:?} after {} runs",
            r["member"],
            r["rungs"],
            runs.len()
        );
    }

    // The MMR killed mid-meeting: both members reconnect to the same new MMR.
    let meeting = "failover";
    let eu = ["eu-1", "eu-2"];
    let first = choose(meeting, &eu, &[true, true]).unwrap();
    let next = eu[1 - first];
    let victim = b.mmrs.iter().find(|m| m.name == eu[first]).unwrap();
    let load = format!("http://{}:9100/load", victim.ip);
    let rs = join_pair(&b, meeting, 9000, false, || {
        // Both members' audio and video are on the victim: kill it (and its backend).
        wait_for(
            "both members on the first MMR",
            Duration::from_secs(20),
            || {
                let (_, body) = b
                    .net
                    .in_ns(&b.net.d, || get_plain(&load, Duration::from_secs(1)))
                    .ok()?;
                let v: Value = serde_json::from_slice(&body).ok()?;
                let n: u64 = v["shards"]
                    .as_array()?
                    .iter()
                    .filter_map(|s| s["media_connections"].as_u64())
                    .sum();
                (n >= 4).then_some(())
            },
        );
        eprintln!(
            "failover: killing {} at its 4 media connections",
            victim.name
        );
        victim.gw.signal_kill();
        victim.backend.signal_kill();
    });
    check_media("failover", &rs);
    for r in &rs {
        let runs = r["runs"].as_array().unwrap();
        assert!(runs.len() >= 2, "member {} did not reconnect", r["member"]);
        assert_eq!(runs[0]["mmr"]["mmr"], eu[first]);
        let last = last_run(r);
        assert_eq!(last["mmr"]["mmr"], next, "member {}", r["member"]);
        assert!(
            last["received"].as_u64().unwrap() > 0,
            "no media after the reconnect"
        );
        eprintln!(
            "failover: member {} moved {} -> {} after {} runs; received {} packets on the new MMR",
            r["member"],
            eu[first],
            next,
            runs.len(),
            last["received"]
        );
    }
}
