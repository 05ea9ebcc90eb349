//! Scale-out across hosts: three gateway hosts, two backend hosts and a three-node NATS
//! cluster (JetStream, replicas 3), each host its own network namespace on one switch
//! (tests/support/netns.rs). The test process is a host too: its clients reach each gateway
//! over a front link, its backend handle reaches NATS over the back network.
//!
//! In order: push to users on every host; a room with members on all three hosts (each
//! receives once); a backend host killed under load (nothing lost, no duplicate reaches a
//! client); a NATS node killed and restarted, then another (the clients' connections stay
//! up, pushes and requests go on); a partitioned gateway host heals (its events wait in its
//! ring, its registry entries expire and come back, pushes resume); a gateway host killed
//! (its registry entries expire within the lease). The registry's counts per gateway and in
//! total are checked against the gateways' own at the start, after the heal and after the
//! kill.
//!
//! Needs root; skipped otherwise (fails under CI=true, where it must run).

mod support;
use corelay::ring::msg::DataKind;
use corelay::sdk::group_id;
use corelay_nats::{Worker, WorkerConfig};
use std::time::{Duration, Instant};
use support::netns::{Topology, NATS_URLS};
use support::*;

const LEASE: Duration = Duration::from_secs(3);

fn nats_node(net: &Topology, dir: &std::path::Path, i: usize) -> Proc {
    let me = format!("10.77.0.1{i}");
    let routes: Vec<String> = (1..=3)
        .filter(|j| *j != i)
        .map(|j| format!("nats://10.77.0.1{j}:6222"))
        .collect();
    let log = std::fs::File::create(dir.join(format!("n{i}.log"))).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(&net.on(&format!("n{i}"))[1..])
        .arg(nats_server_bin())
        .args([
            "-n",
            &format!("n{i}"),
            "-a",
            &me,
            "-p",
            "4222",
            "-js",
            "-sd",
        ])
        .arg(dir.join(format!("n{i}")))
        .args(["--cluster_name", "corelay", "--cluster"])
        .arg(format!("nats://{me}:6222"))
        .arg("--routes")
        .arg(routes.join(","))
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let p = Proc::spawn(&format!("nats n{i}"), &mut cmd);
    wait_for(&format!("nats n{i}"), Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(
            &format!("{me}:4222").parse().unwrap(),
            Duration::from_secs(1),
        )
        .ok()
    });
    p
}

fn stats(rt: &tokio::runtime::Runtime, w: &Worker, gw: &str) -> Option<String> {
    let m = w
        .client()
        .request(format!("corelay.gw.{gw}.stats"), bytes::Bytes::new());
    let m = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(2), m).await })
        .ok()?
        .ok()?;
    Some(m.payload.iter().map(|b| *b as char).collect())
}

fn stat(line: &str, key: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The registry's counts against the gateways' own: for every gateway in `live`, its
/// logged-in entries, and the open and logged-in counts in its `g.<gw>` key, equal the
/// gateway's `corelay_connections_open` (every test client logs in); the total equals their
/// sum and no other gateway has a key. `Some` once all hold, with the counts.
fn counts_match(
    rt: &tokio::runtime::Runtime,
    w: &Worker,
    live: &[(&str, std::net::SocketAddr)],
) -> Option<Vec<usize>> {
    let reg = w.registry();
    let keys = rt.block_on(reg.gateways()).ok()?;
    let mut own_counts = Vec::new();
    for (gw, admin) in live {
        let own = metric(*admin, "corelay_connections_open")? as usize;
        let n = rt.block_on(reg.count(Some(gw))).ok()?;
        let g = keys.iter().find(|(g, ..)| g == gw)?;
        if n != own || g.1 as usize != own || g.2 as usize != own {
            return None;
        }
        own_counts.push(own);
    }
    let total = rt.block_on(reg.count(None)).ok()?;
    (total == own_counts.iter().sum::<usize>() && keys.len() == live.len()).then_some(own_counts)
}

/// Reads until `want`; anything else must start with one of `skip` (late copies of
/// earlier retries or probes).
fn recv_until(ws: &mut Ws, want: &str, skip: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {want}");
        let Some(m) = try_recv(ws, Duration::from_millis(500)) else {
            continue;
        };
        if m == want {
            return;
        }
        assert!(
            skip.iter().any(|p| m.starts_with(p)),
            "unexpected {m:?} while waiting for {want:?}"
        );
    }
}

/// Pushes `tag-N` to `user` until one push is confirmed (NATS may be electing leaders), and
/// sees it arrive; returns the tag prefix for [`recv_until`].
fn push_until_confirmed(
    rt: &tokio::runtime::Runtime,
    w: &Worker,
    user: &str,
    ws: &mut Ws,
    tag: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert!(Instant::now() < deadline, "no confirmed push to {user}");
        let msg = format!("{tag}-{n}");
        if let Ok(1) = rt.block_on(w.push_user(user, DataKind::Text, msg.as_bytes())) {
            recv_until(ws, &msg, &[tag]);
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_hosts_over_a_nats_cluster() {
    if let Some(why) = support::netns::unavailable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "network-namespace test cannot run under CI: {why}"
        );
        eprintln!("skipping three_hosts_over_a_nats_cluster: {why}");
        return;
    }
    let gwbin = corelay_bin();
    let dir = TempDir::new("netns");
    // Declared first, dropped last: processes are killed before their namespaces go.
    let net = Topology::new();
    net.enter("t");
    let mut nodes: Vec<Option<Proc>> = (1..=3).map(|i| Some(nats_node(&net, &dir.0, i))).collect();

    let lease_ms = LEASE.as_millis().to_string();
    let bridge_args = ["--lease-ms", &lease_ms, "--replicas", "3"];
    let mut gws = Vec::new();
    let mut bridges = Vec::new();
    for i in 1..=3 {
        let host = format!("gw{i}");
        let on = net.on(&host);
        let on: Vec<&str> = on.iter().map(String::as_str).collect();
        let gw = gateway(&gwbin, &dir.0, &format!("10.78.{i}.2"), &on);
        bridges.push(Some(bridge(&gw.sock, &host, NATS_URLS, &bridge_args, &on)));
        gws.push(gw);
    }
    let on_be = net.on("be");
    let on_be: Vec<&str> = on_be.iter().map(String::as_str).collect();
    let worker_args = [
        "--replicas",
        "3",
        "--lease-ms",
        &lease_ms,
        "--ack-wait-ms",
        "2000",
    ];
    // w2 on the second backend host; the first (be) gets w1 in step 3, and dies.
    let on_be2 = net.on("be2");
    let on_be2: Vec<&str> = on_be2.iter().map(String::as_str).collect();
    let w2log = dir.0.join("w2.log");
    let mut w2_args = worker_args.to_vec();
    w2_args.extend(["--log", w2log.to_str().unwrap()]);
    let _w2 = worker(NATS_URLS, &w2_args, &on_be2);

    // The test's own backend handle, on host t (its runtime's threads start there too).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(corelay_nats::connect(NATS_URLS, "test", 4096))
        .unwrap();
    let w = wait_for("JetStream cluster ready", Duration::from_secs(60), || {
        rt.block_on(Worker::new(
            client.clone(),
            WorkerConfig {
                replicas: 3,
                lease: LEASE,
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        ))
        .ok()
    });

    // Clients: on every host a room member u<i> and a non-member v<i>.
    let mut members = Vec::new();
    let mut others = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let i = i + 1;
        let mut m = client_retry(gw.addr, &format!("/room/all?user=u{i}"));
        send(&mut m, "hello");
        assert_eq!(recv(&mut m), "hello");
        members.push(m);
        others.push(client_retry(gw.addr, &format!("/?user=v{i}")));
    }
    for i in 1..=3 {
        let gw = format!("gw{i}");
        wait_for(
            "registry entries of every host",
            Duration::from_secs(30),
            || {
                let v = rt.block_on(w.registry().lookup(&format!("u{i}"))).ok()?;
                let n = rt.block_on(w.registry().count(Some(&gw))).ok()?;
                (v.len() == 1 && v[0].gw == gw && n == 2).then_some(())
            },
        );
    }
    let hosts: Vec<(String, std::net::SocketAddr)> = gws
        .iter()
        .enumerate()
        .map(|(i, g)| (format!("gw{}", i + 1), g.admin))
        .collect();
    let hosts: Vec<(&str, std::net::SocketAddr)> =
        hosts.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let counts = wait_for(
        "registry counts == the gateways' own counts",
        Duration::from_secs(30),
        || counts_match(&rt, &w, &hosts),
    );
    assert_eq!(counts, [2, 2, 2]);

    // 1. Push to users on every host, from a backend that knows no host.
    for i in 1..=3 {
        let msg = format!("push to u{i}");
        assert_eq!(
            rt.block_on(w.push_user(&format!("u{i}"), DataKind::Text, msg.as_bytes()))
                .unwrap(),
            1
        );
        assert_eq!(recv(&mut members[i - 1]), msg);
        let msg = format!("push to v{i}");
        assert_eq!(
            rt.block_on(w.push_user(&format!("v{i}"), DataKind::Text, msg.as_bytes()))
                .unwrap(),
            1
        );
        assert_eq!(recv(&mut others[i - 1]), msg);
    }

    // 2. A room with a member on each host. Interest reaches the other cluster nodes
    // asynchronously: probe until every member got one, then each message arrives once.
    let all = group_id("all");
    let mut probed = [false; 3];
    let deadline = Instant::now() + Duration::from_secs(30);
    while probed.iter().any(|p| !p) {
        assert!(
            Instant::now() < deadline,
            "room interest never reached {probed:?}"
        );
        rt.block_on(w.publish_room(all, DataKind::Text, b"probe"))
            .unwrap();
        for (i, m) in members.iter_mut().enumerate() {
            if !probed[i] && try_recv(m, Duration::from_millis(200)).is_some() {
                probed[i] = true;
            }
        }
    }
    for k in 1..=2 {
        let msg = format!("room message {k}");
        rt.block_on(w.publish_room(all, DataKind::Text, msg.as_bytes()))
            .unwrap();
        for m in members.iter_mut() {
            // Probes may still be in flight before the first; nothing else may come.
            if k == 1 {
                recv_until(m, &msg, &["probe"]);
            } else {
                assert_eq!(recv(m), msg, "a room message arrived twice");
            }
        }
    }
    for (i, o) in others.iter_mut().enumerate() {
        let msg = format!("sentinel v{}", i + 1);
        rt.block_on(w.push_user(&format!("v{}", i + 1), DataKind::Text, msg.as_bytes()))
            .unwrap();
        assert_eq!(recv(o), msg, "a non-member got a room message");
    }

    // 3. A backend host killed under load: w1, the only worker on host be, replies but
    // never acks; mid-load the host dies (its back link cut first, so no FIN or RST reaches
    // NATS, then w1 killed). Every event w1 took is redelivered to w2 on be2 after
    // ack_wait; the gateway drops the duplicate replies: each client sees each reply once,
    // in order.
    let w1log = dir.0.join("w1.log");
    let mut w1_args = worker_args.to_vec();
    w1_args.extend(["--hold-ack-ms", "600000", "--log", w1log.to_str().unwrap()]);
    let mut w1 = worker(NATS_URLS, &w1_args, &on_be);
    wait_for("w1 pulling", Duration::from_secs(30), || {
        // Requests until w1 answered one (it pulls once it is up).
        send(&mut members[0], "warm");
        assert_eq!(recv(&mut members[0]), "warm");
        std::fs::read_to_string(&w1log)
            .ok()
            .filter(|l| l.contains("done"))
    });
    const N: usize = 300;
    for c in members.iter_mut().take(2) {
        for k in 0..N {
            send(c, &format!("load {k}"));
        }
    }
    for k in 0..N {
        assert_eq!(recv(&mut members[0]), format!("load {k}"));
        if k == N / 3 {
            net.partition("be");
            w1.kill9();
        }
    }
    for k in 0..N {
        assert_eq!(recv(&mut members[1]), format!("load {k}"));
    }
    wait_for(
        "w1's events redelivered to w2",
        Duration::from_secs(30),
        || {
            let held: Vec<_> = worker_log(&w1log)
                .into_iter()
                .filter(|(what, ..)| what == "done")
                .collect();
            let again = worker_log(&w2log);
            (!held.is_empty()
                && held.iter().all(|(_, gw, conn, seq, _)| {
                    again.iter().any(|(what, g, c, s, d)| {
                        what == "done" && g == gw && c == conn && s == seq && *d >= 2
                    })
                }))
            .then_some(())
        },
    );
    for c in members.iter_mut().take(2) {
        send(c, "end of load");
        assert_eq!(recv(c), "end of load", "a duplicate reply reached a client");
    }

    // 4. A NATS node killed, restarted, then another: the clients' connections stay up,
    // pushes and requests go on (JetStream R3 keeps a quorum of two).
    for (round, node) in [0usize, 1].into_iter().enumerate() {
        nodes[node] = None; // SIGKILL
        for (i, m) in members.iter_mut().enumerate() {
            push_until_confirmed(&rt, &w, &format!("u{}", i + 1), m, &format!("down{round}"));
            send(m, "request while a node is down");
            recv_until(
                m,
                "request while a node is down",
                &[&format!("down{round}")],
            );
        }
        nodes[node] = Some(nats_node(&net, &dir.0, node + 1));
        // Back in the cluster: JetStream answers through the restarted node alone.
        let url = format!("nats://10.77.0.1{}:4222", node + 1);
        wait_for(
            "restarted node serves JetStream",
            Duration::from_secs(60),
            || {
                rt.block_on(async {
                    let c = async_nats::connect(&url).await.ok()?;
                    let js = async_nats::jetstream::new(c);
                    let r = corelay_nats::Registry::open(&js, LEASE, 3).await.ok()?;
                    r.count(None).await.ok()
                })
            },
        );
    }
    for (i, m) in members.iter_mut().enumerate() {
        push_until_confirmed(&rt, &w, &format!("u{}", i + 1), m, "restarted");
    }

    // 5. gw2's host partitioned from the back network, then healed. Its clients stay
    // connected (front link); a request made meanwhile waits in its ring; its registry
    // entries expire, come back after the heal; pushes resume.
    net.partition("gw2");
    send(&mut members[1], "sent during the partition");
    wait_for(
        "gw2's entries expired",
        LEASE * 4 + Duration::from_secs(20),
        || {
            let n = rt.block_on(w.registry().count(Some("gw2"))).ok()?;
            (n == 0).then_some(())
        },
    );
    assert_eq!(rt.block_on(w.registry().lookup("u1")).unwrap().len(), 1);
    net.heal("gw2");
    recv_until(&mut members[1], "sent during the partition", &[]);
    wait_for("gw2's entries back", Duration::from_secs(60), || {
        let n = rt.block_on(w.registry().count(Some("gw2"))).ok()?;
        (n == 2).then_some(())
    });
    push_until_confirmed(&rt, &w, "u2", &mut members[1], "healed");
    push_until_confirmed(&rt, &w, "v2", &mut others[1], "healed");
    let counts = wait_for(
        "counts match again after the heal",
        Duration::from_secs(30),
        || counts_match(&rt, &w, &hosts),
    );
    assert_eq!(counts, [2, 2, 2]);

    // 6. gw3's host killed: its entries (logins, memberships, gateway key) expire within
    // the lease; the others stay.
    let killed = Instant::now();
    bridges[2] = None;
    gws[2].proc.kill9();
    let gone = wait_for("gw3's entries expired", LEASE * 4, || {
        let n = rt.block_on(w.registry().count(Some("gw3"))).ok()?;
        let m = rt
            .block_on(w.registry().memberships_of_gateway("gw3"))
            .ok()?;
        let g = rt.block_on(w.registry().gateways()).ok()?;
        (n == 0 && m.is_empty() && !g.iter().any(|(gw, ..)| gw == "gw3")).then(|| killed.elapsed())
    });
    eprintln!(
        "gw3's registry entries expired {gone:?} after its host was killed (lease {LEASE:?})"
    );
    // Refreshed at most lease/3 before the kill, so gone within the lease, plus the
    // server's expiry pass (it runs about once a second).
    assert!(gone <= LEASE + Duration::from_millis(1500), "took {gone:?}");
    let counts = wait_for(
        "gw1 and gw2's counts and the total after gw3's death",
        Duration::from_secs(10),
        || counts_match(&rt, &w, &hosts[..2]),
    );
    assert_eq!(counts, [2, 2]);
    for (i, m) in members.iter_mut().enumerate().take(2) {
        send(m, "still here");
        assert_eq!(recv(m), "still here", "client on gw{} noticed", i + 1);
    }
    assert!(stats(&rt, &w, "gw1").is_some_and(|s| stat(&s, "rooms") == Some(1)));
}

/// The worker decides the upgrade: while JetStream is still settling the first try can time
/// out at the gateway (handshake_ms), so retry a few times.
fn client_retry(addr: std::net::SocketAddr, path: &str) -> Ws {
    wait_for("client accepted", Duration::from_secs(60), || {
        try_client(addr, path).ok()
    })
}
