//! One host, real processes: nats-server (JetStream), a gateway in ring mode, its bridge,
//! workers; clients are tungstenite. Push to a connection and to a user, rooms, presence
//! counts against the gateway's own, and workers killed mid-request (JetStream redelivery);
//! the bridge check (tuning/check-bridge.sh) against a healthy and a broken setup.

mod support;
use corelay::ring::msg::DataKind;
use corelay::sdk::group_id;
use corelay_nats::{Worker, WorkerConfig};
use std::time::Duration;
use support::*;

const GW: &str = "gw1";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn lib_worker(rt: &tokio::runtime::Runtime, nats: &str) -> Worker {
    rt.block_on(async {
        let c = corelay_nats::connect(nats, "test", 1024).await.unwrap();
        Worker::new(
            c,
            WorkerConfig {
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    })
}

fn stats(rt: &tokio::runtime::Runtime, w: &Worker) -> String {
    rt.block_on(async {
        let m = w
            .client()
            .request(format!("corelay.gw.{GW}.stats"), bytes::Bytes::new());
        tokio::time::timeout(Duration::from_secs(5), m)
            .await
            .unwrap()
            .unwrap()
    })
    .payload
    .iter()
    .map(|b| *b as char)
    .collect()
}

fn stat(line: &str, key: &str) -> u64 {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn push_rooms_and_presence_through_nats() {
    let dir = TempDir::new("loop");
    let gwbin = corelay_bin();
    let (_nats, port) = nats_server(&dir.0);
    let nats = format!("nats://127.0.0.1:{port}");
    let gw = gateway(&gwbin, &dir.0, "127.0.0.1", &[]);
    let _bridge = bridge(&gw.sock, GW, &nats, &["--lease-ms", "3000"], &[]);
    let _w = worker(&nats, &["--ack-wait-ms", "2000"], &[]);
    let rt = rt();
    let w = lib_worker(&rt, &nats);

    let mut alice = client(gw.addr, "/room/lobby?user=alice");
    let mut bob = client(gw.addr, "/room/lobby?user=bob");
    let mut carol = client(gw.addr, "/?user=carol");

    // Requests and replies, in order.
    for i in 0..50 {
        send(&mut alice, &format!("m{i}"));
    }
    for i in 0..50 {
        assert_eq!(recv(&mut alice), format!("m{i}"));
    }

    // Presence: each user once; this gateway's count equals the gateway's own.
    let alice_at = wait_for("alice in the registry", Duration::from_secs(10), || {
        let v = rt.block_on(w.registry().lookup("alice")).ok()?;
        (v.len() == 1).then(|| v[0].clone())
    });
    assert_eq!(alice_at.gw, GW);
    wait_for(
        "registry count == gateway count",
        Duration::from_secs(10),
        || {
            let reg = rt.block_on(w.registry().count(Some(GW))).ok()?;
            let total = rt.block_on(w.registry().count(None)).ok()?;
            let own = metric(gw.admin, "corelay_connections_open")?;
            (reg == 3 && total == 3 && own == 3.0).then_some(())
        },
    );

    // Push to a connection and to a user, from a backend that knows no host.
    rt.block_on(w.push_conn(&alice_at, DataKind::Text, b"to alice"))
        .unwrap();
    assert_eq!(recv(&mut alice), "to alice");
    assert_eq!(
        rt.block_on(w.push_user("carol", DataKind::Text, b"to carol"))
            .unwrap(),
        1
    );
    assert_eq!(recv(&mut carol), "to carol");
    assert_eq!(
        rt.block_on(w.push_user("nobody", DataKind::Text, b"x"))
            .unwrap(),
        0
    );

    // A room: members get a publish once; a non-member does not.
    rt.block_on(w.publish_room(group_id("lobby"), DataKind::Text, b"lobby news"))
        .unwrap();
    assert_eq!(recv(&mut alice), "lobby news");
    assert_eq!(recv(&mut bob), "lobby news");
    // Worker-side commands: bob pushes to carol, and publishes to the room.
    send(&mut bob, "user:carol:hello from bob");
    assert_eq!(recv(&mut carol), "hello from bob");
    send(&mut bob, "room:lobby:from bob");
    assert_eq!(recv(&mut alice), "from bob");
    assert_eq!(recv(&mut bob), "from bob");
    rt.block_on(w.push_user("carol", DataKind::Text, b"sentinel"))
        .unwrap();
    assert_eq!(recv(&mut carol), "sentinel", "carol is not in the lobby");
    assert_eq!(stat(&stats(&rt, &w), "rooms"), 1);

    // Logout on close; counts follow; the room subscription ends with its last member.
    bob.close(None).unwrap();
    let _ = bob.read();
    wait_for("bob logged out", Duration::from_secs(10), || {
        let v = rt.block_on(w.registry().lookup("bob")).ok()?;
        let n = rt.block_on(w.registry().count(Some(GW))).ok()?;
        (v.is_empty() && n == 2).then_some(())
    });
    // The gateway counts a connection until its close handshake has drained.
    wait_for(
        "gateway count == registry count",
        Duration::from_secs(30),
        || (metric(gw.admin, "corelay_connections_open")? == 2.0).then_some(()),
    );
    alice.close(None).unwrap();
    let _ = alice.read();
    wait_for("room unsubscribed", Duration::from_secs(10), || {
        (stat(&stats(&rt, &w), "rooms") == 0).then_some(())
    });
    // The gateway key carries the bridge's own counts (refreshed every lease/3).
    wait_for("gateway key", Duration::from_secs(10), || {
        let g = rt.block_on(w.registry().gateways()).ok()?;
        (g == vec![(GW.to_string(), 1, 1)]).then_some(())
    });
    // The Open goes through NATS to a worker, which decides; a refused connection (never
    // reported Closed by the gateway) leaves the bridge's own count too.
    assert_eq!(try_client(gw.addr, "/?reject=1").err(), Some(403));
    wait_for(
        "rejected connection closed",
        Duration::from_secs(30),
        || {
            let s = stats(&rt, &w);
            (stat(&s, "open") == 1 && metric(gw.admin, "corelay_connections_open")? == 1.0)
                .then_some(())
        },
    );
    // An invalid batch is refused as a whole with a reason.
    let err = rt.block_on(w.send_raw(GW, vec![1, 2, 3])).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn workers_killed_mid_request_lose_nothing() {
    let dir = TempDir::new("kill");
    let gwbin = corelay_bin();
    let (_nats, port) = nats_server(&dir.0);
    let nats = format!("nats://127.0.0.1:{port}");
    let gw = gateway(&gwbin, &dir.0, "127.0.0.1", &[]);
    let _bridge = bridge(&gw.sock, GW, &nats, &[], &[]);
    let log = |n: &str| dir.0.join(format!("{n}.log"));
    let la = log("a");
    // Worker A replies but never acks: killed after its replies reached the client.
    let mut a = worker(
        &nats,
        &[
            "--ack-wait-ms",
            "2000",
            "--hold-ack-ms",
            "600000",
            "--log",
            la.to_str().unwrap(),
        ],
        &[],
    );
    let mut c = client(gw.addr, "/");
    for i in 0..10 {
        send(&mut c, &format!("a{i}"));
    }
    for i in 0..10 {
        assert_eq!(recv(&mut c), format!("a{i}"));
    }
    a.kill9();
    // B gets every unacked event again (the Open and requests 1..=10), marked redelivered,
    // and answers again: the gateway drops those duplicate replies.
    let lb = log("b");
    let mut b = worker(&nats, &["--log", lb.to_str().unwrap()], &[]);
    wait_for(
        "redeliveries answered by B",
        Duration::from_secs(30),
        || {
            let l = worker_log(&lb);
            (1..=10u64)
                .all(|s| {
                    l.iter()
                        .any(|(w, _, _, seq, d)| w == "done" && *seq == s && *d >= 2)
                })
                .then_some(())
        },
    );
    send(&mut c, "end-a");
    assert_eq!(
        recv(&mut c),
        "end-a",
        "a duplicate reply reached the client"
    );
    b.kill9();

    // C takes requests and dies before answering them: D answers, in order, once.
    let lc = log("c");
    let mut cw = worker(
        &nats,
        &["--delay-ms", "600000", "--log", lc.to_str().unwrap()],
        &[],
    );
    for i in 0..5 {
        send(&mut c, &format!("c{i}"));
    }
    wait_for("C holds the requests", Duration::from_secs(20), || {
        (worker_log(&lc).iter().filter(|(w, ..)| w == "got").count() == 5).then_some(())
    });
    cw.kill9();
    let ld = log("d");
    let _d = worker(&nats, &["--log", ld.to_str().unwrap()], &[]);
    for i in 0..5 {
        assert_eq!(recv(&mut c), format!("c{i}"));
    }
    send(&mut c, "end-c");
    assert_eq!(recv(&mut c), "end-c");
    let l = worker_log(&ld);
    assert!(
        l.iter()
            .filter(|(w, _, _, s, d)| w == "done" && (12..=16).contains(s) && *d >= 2)
            .count()
            == 5,
        "{l:?}"
    );
}

/// A bridge that restarts adopts the connections of its gateway and subscribes again the
/// rooms they joined before it (kept in the registry as `r.<gw>.<conn>.<group>`).
#[test]
fn restarted_bridge_resubscribes_rooms() {
    let dir = TempDir::new("rejoin");
    let gwbin = corelay_bin();
    let (_nats, port) = nats_server(&dir.0);
    let nats = format!("nats://127.0.0.1:{port}");
    let gw = gateway(&gwbin, &dir.0, "127.0.0.1", &[]);
    let mut br = bridge(&gw.sock, GW, &nats, &["--lease-ms", "3000"], &[]);
    let _w = worker(&nats, &["--ack-wait-ms", "2000"], &[]);
    let rt = rt();
    let w = lib_worker(&rt, &nats);
    let lobby = group_id("lobby");

    let mut alice = client(gw.addr, "/room/lobby?user=alice");
    let mut carol = client(gw.addr, "/?user=carol");
    send(&mut alice, "hi");
    assert_eq!(recv(&mut alice), "hi");
    rt.block_on(w.publish_room(lobby, DataKind::Text, b"before"))
        .unwrap();
    assert_eq!(recv(&mut alice), "before");
    wait_for(
        "membership in the registry",
        Duration::from_secs(10),
        || {
            let m = rt.block_on(w.registry().memberships_of_gateway(GW)).ok()?;
            (m.len() == 1 && m[0].1 == lobby).then_some(())
        },
    );

    br.kill9();
    let _br2 = bridge(&gw.sock, GW, &nats, &["--lease-ms", "3000"], &[]);
    wait_for("room subscribed again", Duration::from_secs(20), || {
        let m = w
            .client()
            .request(format!("corelay.gw.{GW}.stats"), bytes::Bytes::new());
        let s = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), m).await });
        let s: String = s.ok()?.ok()?.payload.iter().map(|b| *b as char).collect();
        (stat(&s, "rooms") == 1).then_some(())
    });
    rt.block_on(w.publish_room(lobby, DataKind::Text, b"after"))
        .unwrap();
    assert_eq!(recv(&mut alice), "after");
    // Carol (no member) gets the next push, not the room message.
    assert_eq!(
        rt.block_on(w.push_user("carol", DataKind::Text, b"sentinel"))
            .unwrap(),
        1
    );
    assert_eq!(recv(&mut carol), "sentinel");

    // The adopted membership ends with its connection: unsubscribed, key removed.
    alice.close(None).unwrap();
    let _ = alice.read();
    wait_for("room left", Duration::from_secs(20), || {
        let m = rt.block_on(w.registry().memberships_of_gateway(GW)).ok()?;
        (m.is_empty() && stat(&stats(&rt, &w), "rooms") == 0).then_some(())
    });
}

/// Room publishes are at most once and not buffered across an outage: one made while NATS
/// is down is refused and counted; after NATS is back, rooms work again.
#[test]
fn room_publish_during_outage_is_counted() {
    let dir = TempDir::new("outage");
    let gwbin = corelay_bin();
    let port = free_port();
    let mut nats_proc = nats_server_on(&dir.0, port);
    let nats = format!("nats://127.0.0.1:{port}");
    let gw = gateway(&gwbin, &dir.0, "127.0.0.1", &[]);
    let _br = bridge(&gw.sock, GW, &nats, &[], &[]);
    let _w = worker(&nats, &["--ack-wait-ms", "2000"], &[]);
    let rt = rt();
    let w = lib_worker(&rt, &nats);
    let lobby = group_id("lobby");
    let mut alice = client(gw.addr, "/room/lobby");
    send(&mut alice, "hi");
    assert_eq!(recv(&mut alice), "hi");
    rt.block_on(w.publish_room(lobby, DataKind::Text, b"one"))
        .unwrap();
    assert_eq!(recv(&mut alice), "one");
    let dropped = |w: &Worker| {
        w.stats()
            .room_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(dropped(&w), 0);

    nats_proc.kill9();
    wait_for("worker sees NATS down", Duration::from_secs(20), || {
        (w.client().connection_state() != async_nats::connection::State::Connected).then_some(())
    });
    let err = rt
        .block_on(w.publish_room(lobby, DataKind::Text, b"lost"))
        .unwrap_err();
    assert!(err.to_string().contains("dropped"), "{err}");
    assert_eq!(dropped(&w), 1);

    let _nats2 = nats_server_on(&dir.0, port);
    wait_for("worker reconnected", Duration::from_secs(20), || {
        (w.client().connection_state() == async_nats::connection::State::Connected).then_some(())
    });
    // The bridge re-subscribes on reconnect; publish until a message arrives (bounded).
    let mut got = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        if rt
            .block_on(w.publish_room(lobby, DataKind::Text, format!("p{i}").as_bytes()))
            .is_ok()
        {
            if let Some(m) = try_recv(&mut alice, Duration::from_millis(300)) {
                got = Some(m);
                break;
            }
        }
    }
    let got = got.expect("rooms work again after NATS is back");
    assert!(got.starts_with('p'), "the dropped publish arrived: {got}");
    assert_ne!(got, "lost");
    // The client's connection stayed up throughout.
    send(&mut alice, "still here");
    loop {
        let m = recv(&mut alice);
        if m == "still here" {
            break;
        }
        assert!(m.starts_with('p'), "{m}");
    }
}

/// `tuning/check-bridge.sh`: all ok against a running bridge; each failure it is for is
/// reported with `FAIL` and exit 1 (replicas below the wanted count, a bridge that does not
/// answer, NATS unreachable).
#[test]
fn check_bridge_reports_health_and_failures() {
    let dir = TempDir::new("check");
    let gwbin = corelay_bin();
    let (mut nats_proc, port) = nats_server(&dir.0);
    let nats = format!("nats://127.0.0.1:{port}");
    let gw = gateway(&gwbin, &dir.0, "127.0.0.1", &[]);
    let _br = bridge(&gw.sock, GW, &nats, &["--lease-ms", "3000"], &[]);
    let rt = rt();
    // A plain client: a Worker would create the bucket with its own lease if first.
    let c = rt
        .block_on(corelay_nats::connect(&nats, "test", 64))
        .unwrap();
    wait_for("bridge answers", Duration::from_secs(20), || {
        let m = c.request(format!("corelay.gw.{GW}.stats"), bytes::Bytes::new());
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), m).await })
            .ok()?
            .ok()
    });
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tuning/check-bridge.sh");
    let sock = gw.sock.to_str().unwrap().to_string();
    let check = |args: &[&str]| {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            .env("BRIDGE", env!("CARGO_BIN_EXE_corelay-nats-bridge"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };

    let (code, out) = check(&["--nats", &nats, "--gateway-id", GW, "--attach", &sock]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(out.contains(&format!("ok   bridge {GW}: ")), "{out}");
    assert!(out.contains("ok   CORELAY_REQ: replicas 1"), "{out}");
    assert!(out.contains("lease (max_age) 3s"), "{out}");

    let (code, out) = check(&["--nats", &nats, "--replicas", "3"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL CORELAY_REQ: replicas 1 (want >= 3)"),
        "{out}"
    );

    let (code, out) = check(&["--nats", &nats, "--gateway-id", "gw9", "--attach", &sock]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL bridge gw9 does not answer"), "{out}");

    nats_proc.kill9();
    let (code, out) = check(&["--nats", &nats]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("FAIL connect to {nats}")), "{out}");
}
