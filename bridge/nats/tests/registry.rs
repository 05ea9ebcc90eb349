//! The presence registry against a real nats-server: a lookup by user id returns exactly the
//! live keys of that user among thousands of others (login, logout, and a gateway whose keys
//! are no longer refreshed and expire with the lease), and the counts agree.

mod support;
use corelay_nats::{ConnAddr, Registry};
use std::time::{Duration, Instant};
use support::*;

/// Short lease so that expiry is observed quickly; refreshes come every lease/3 like the
/// bridge's.
const LEASE: Duration = Duration::from_secs(3);

fn addr(gw: &str, conn: u64) -> ConnAddr {
    ConnAddr {
        gw: gw.to_string(),
        conn,
    }
}

#[test]
fn lookup_is_exact_through_login_logout_and_expiry() {
    let dir = TempDir::new("registry");
    let (_nats, port) = nats_server(&dir.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = rt.block_on(async {
        let c = corelay_nats::connect(&format!("nats://127.0.0.1:{port}"), "test", 4096)
            .await
            .unwrap();
        Registry::open(&async_nats::jetstream::new(c), LEASE, 1)
            .await
            .unwrap()
            .with_user_index()
            .await
            .unwrap()
    });

    // Live gateways' keys: 3000 other users (some whose id shares a prefix with the users
    // looked up), their room memberships and the gateway keys; all refreshed every lease/3.
    let mut live: Vec<String> = Vec::new();
    for i in 0..3000u64 {
        let gw = ["gw1", "gw2"][i as usize % 2];
        live.push(format!("u.user{i}.{gw}.{i}"));
        live.push(format!("r.{gw}.{i}.77"));
    }
    for k in ["u.al.gw1.9001", "u.alice-2.gw2.9002", "u.alicea.gw1.9003"] {
        live.push(k.to_string());
    }
    live.push("g.gw1".into());
    live.push("g.gw2".into());
    let refresher = {
        let reg = reg.clone();
        let live = live.clone();
        rt.spawn(async move {
            loop {
                // In batches: the JetStream context bounds the acks in flight.
                for batch in live.chunks(500) {
                    let mut acks = Vec::new();
                    for k in batch {
                        acks.push(reg.put_nowait(k, bytes::Bytes::new()).await.unwrap());
                    }
                    for a in acks {
                        a.await.unwrap();
                    }
                }
                tokio::time::sleep(LEASE / 3).await;
            }
        })
    };
    wait_for("live keys stored", Duration::from_secs(30), || {
        (rt.block_on(reg.count(None)).ok()? == 3003).then_some(())
    });
    wait_for("index replayed", Duration::from_secs(30), || {
        reg.index_ready().then_some(())
    });

    // Every answer is checked against the scan (exact on a single server); a login reaches
    // the index through its watch, so answers after a login are awaited (bounded).
    let lookup = |u: &str| {
        let v = rt.block_on(reg.lookup(u)).unwrap();
        assert_eq!(
            v,
            rt.block_on(reg.lookup_scan(u)).unwrap(),
            "index vs scan for {u}"
        );
        v
    };
    let await_lookup = |u: &str, want: Vec<ConnAddr>| {
        wait_for(&format!("lookup {u}"), Duration::from_secs(10), || {
            (rt.block_on(reg.lookup(u)).ok()? == want).then_some(())
        });
        assert_eq!(lookup(u), want);
    };
    assert_eq!(lookup("alice"), vec![]);
    assert_eq!(lookup("user1234"), vec![addr("gw1", 1234)]);
    assert_eq!(lookup("al"), vec![addr("gw1", 9001)]);
    assert!(rt.block_on(reg.lookup("a.b")).is_err(), "not a valid id");

    // Login: alice on two gateways; dave on a gateway that then dies (never refreshed).
    rt.block_on(reg.login("alice", &addr("gw2", 5))).unwrap();
    rt.block_on(reg.login("alice", &addr("gw1", 6))).unwrap();
    rt.block_on(reg.login("dave", &addr("gw3", 7))).unwrap();
    let died = Instant::now();
    await_lookup("alice", vec![addr("gw1", 6), addr("gw2", 5)]);
    await_lookup("dave", vec![addr("gw3", 7)]);
    // Other users with a prefix of "alice" or "alice" as a prefix are not hers.
    assert_eq!(lookup("alice-2"), vec![addr("gw2", 9002)]);
    assert_eq!(lookup("alicea"), vec![addr("gw1", 9003)]);

    // Logout of one of alice's connections (a purge, which the index's watch does not see):
    // the check of each candidate drops it at once; the other stays.
    rt.block_on(reg.logout("alice", &addr("gw2", 5))).unwrap();
    assert_eq!(lookup("alice"), vec![addr("gw1", 6)]);

    // gw3 died: its key expires within the lease (not before); alice's (refreshed below)
    // and every refreshed key stay.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alice_refresh = {
        let reg = reg.clone();
        let stop = stop.clone();
        rt.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                reg.login("alice", &addr("gw1", 6)).await.unwrap();
                tokio::time::sleep(LEASE / 3).await;
            }
        })
    };
    wait_for("gw3's key expired", LEASE * 5, || {
        lookup("dave").is_empty().then_some(())
    });
    assert!(died.elapsed() >= LEASE, "expired before the lease");
    assert_eq!(lookup("alice"), vec![addr("gw1", 6)]);
    assert_eq!(rt.block_on(reg.count(Some("gw3"))).unwrap(), 0);
    assert_eq!(rt.block_on(reg.count(None)).unwrap(), 3004);

    // Logout of the last connection: alice is gone.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(alice_refresh).unwrap();
    rt.block_on(reg.logout("alice", &addr("gw1", 6))).unwrap();
    assert_eq!(lookup("alice"), vec![]);
    assert_eq!(lookup("user2999"), vec![addr("gw2", 2999)]);
    refresher.abort();
}
