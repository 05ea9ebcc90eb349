//! The checks, in the order they run. Each one drives the backend through the gateway and
//! compares what a WebSocket client sees with docs/backend-check.md.

use super::client::{upgrade, Client, Msg, Upgrade};
use super::{signal, stop, Env, MAX_MESSAGE, ROUTE_ID};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// A check: Ok, or what went wrong.
pub(crate) type Check = fn(&mut Env) -> Result<(), String>;

pub(crate) const ALL: &[(&str, &str, Check)] = &[
    (
        "attach",
        "attaches (route 0) and serves every shard",
        attach,
    ),
    ("echo", "text and binary echo, 200 pipelined in order", echo),
    (
        "empty",
        "empty text and binary messages are messages",
        empty,
    ),
    ("large", "messages up to the 1 MiB limit, intact", large),
    (
        "open",
        "Open -> Reject 403 / 401, Accept with a token",
        open,
    ),
    (
        "subprotocol",
        "Accept confirms an offered subprotocol",
        subprotocol,
    ),
    (
        "order",
        "replies in request order under out-of-order completion",
        order,
    ),
    ("push", "a push (Send without in_reply_to) arrives", push),
    (
        "closed",
        "Closed is delivered; the backend's Close reaches the client",
        closed,
    ),
    ("groups", "join / publish / leave across shards", groups),
    (
        "route",
        "a backend of route 7 gets the keyed messages",
        route,
    ),
    (
        "heartbeat",
        "heartbeats: a stopped backend gets no new connections",
        heartbeat,
    ),
    (
        "garbage",
        "a peer writing garbage is cut off; gateway and backend go on",
        garbage,
    ),
    (
        "kill9",
        "kill -9 and restart: every reply exactly once, in order",
        kill9,
    ),
];

fn ws(env: &Env, path: &str) -> Result<Client, String> {
    Client::open(env.ws, path)
}

fn attach(env: &mut Env) -> Result<(), String> {
    env.start_backend().map_err(|e| format!("{e:#}"))?;
    env.wait_attached(1, Duration::from_secs(15))?;
    // One connection per shard at least: the gateway spreads accepts over its shards.
    for i in 0..4 * env.shards {
        ws(env, "/")?.roundtrip(&format!("shard probe {i}"))?;
    }
    Ok(())
}

fn echo(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    c.roundtrip("hello")?;
    c.roundtrip("héllo ✓ 𝄞")?;
    let bin = Msg::Binary(vec![0, 1, 2, 0xff, 0, 0x80]);
    c.send(&bin)?;
    c.expect(&bin, "binary echo")?;
    let msgs: Vec<Msg> = (0..200)
        .map(|i| match i % 3 {
            0 => Msg::Binary(format!("b{i}").into_bytes()),
            _ => Msg::Text(format!("t{i}")),
        })
        .collect();
    for m in &msgs {
        c.queue(m)?;
    }
    c.flush()?;
    for (i, m) in msgs.iter().enumerate() {
        c.expect(m, &format!("pipelined reply {i}"))?;
    }
    Ok(())
}

fn empty(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    for m in [
        Msg::text(""),
        Msg::Binary(Vec::new()),
        Msg::text("after"),
        Msg::Binary(Vec::new()),
    ] {
        c.send(&m)?;
        c.expect(&m, "empty message echo")?;
    }
    Ok(())
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ salt)
        .collect()
}

fn large(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    c.set_timeout(Duration::from_secs(20));
    // One at a time at the limit (a client that writes several MiB without reading could
    // fill both directions' socket buffers).
    for (n, len) in [MAX_MESSAGE, MAX_MESSAGE - 1, MAX_MESSAGE / 2 + 3, 65_536, 1]
        .into_iter()
        .enumerate()
    {
        let m = Msg::Binary(pattern(len, n as u8));
        c.send(&m)?;
        c.expect(&m, &format!("{len}-byte binary echo"))?;
    }
    let t = Msg::Text("ü".repeat(MAX_MESSAGE / 2));
    c.send(&t)?;
    c.expect(&t, "1 MiB text echo")?;
    // Mixed sizes pipelined: records wrap around the ring at every offset.
    let msgs: Vec<Msg> = (0..40)
        .map(|i| Msg::Binary(pattern((i * 7919) % 60_000, i as u8)))
        .collect();
    for m in &msgs {
        c.queue(m)?;
    }
    c.flush()?;
    for (i, m) in msgs.iter().enumerate() {
        c.expect(m, &format!("pipelined mixed-size reply {i}"))?;
    }
    Ok(())
}

fn expect_status(env: &Env, path: &str, h: &[(&str, &str)], want: u16) -> Result<(), String> {
    match upgrade(env.ws, path, h, Duration::from_secs(10))? {
        Upgrade::Refused(s) if s == want => Ok(()),
        Upgrade::Refused(s) => Err(format!("{path} {h:?}: HTTP {s}, expected {want}")),
        Upgrade::Open(_) => Err(format!("{path} {h:?}: accepted (101), expected {want}")),
    }
}

fn open(env: &mut Env) -> Result<(), String> {
    expect_status(env, "/deny", &[], 403)?;
    expect_status(env, "/auth", &[], 401)?;
    expect_status(env, "/auth?token=wrong", &[], 401)?;
    expect_status(env, "/auth", &[("authorization", "Bearer nope")], 401)?;
    ws(env, "/auth?x=1&token=letmein")?.roundtrip("in by query")?;
    match upgrade(
        env.ws,
        "/auth",
        &[("authorization", "Bearer letmein")],
        Duration::from_secs(10),
    )? {
        Upgrade::Open(mut c) => c.roundtrip("in by header"),
        Upgrade::Refused(s) => Err(format!("/auth with Bearer letmein: HTTP {s}")),
    }
}

fn subprotocol(env: &mut Env) -> Result<(), String> {
    let offer = [("sec-websocket-protocol", "other, check.v1")];
    match upgrade(env.ws, "/proto", &offer, Duration::from_secs(10))? {
        Upgrade::Open(mut c) if c.protocol.as_deref() == Some("check.v1") => c.roundtrip("p")?,
        Upgrade::Open(c) => return Err(format!("/proto: confirmed {:?}", c.protocol)),
        Upgrade::Refused(s) => return Err(format!("/proto: HTTP {s}")),
    }
    let mut c = ws(env, "/proto")?;
    if c.protocol.is_some() {
        return Err(format!(
            "/proto without an offer confirmed {:?}",
            c.protocol
        ));
    }
    c.roundtrip("q")
}

fn order(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    // `hold:X` is completed only after the connection's next message: its reply is written
    // to the ring after the later one's, and must still reach the client first.
    for m in ["hold:a", "b", "hold:x", "hold:y", "z"] {
        c.queue(&Msg::text(m))?;
    }
    c.flush()?;
    for want in ["a", "b", "x", "y", "z"] {
        c.expect(&Msg::text(want), "reply after out-of-order completion")?;
    }
    let sent: Vec<String> = (0..60)
        .map(|i| match i % 3 {
            0 => format!("hold:h{i}"),
            _ => format!("e{i}"),
        })
        .collect();
    for m in &sent {
        c.queue(&Msg::text(m))?;
    }
    c.flush()?;
    for m in &sent {
        let want = m.strip_prefix("hold:").unwrap_or(m);
        c.expect(&Msg::text(want), "pipelined reply with holds")?;
    }
    Ok(())
}

fn push(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    c.text("push:p1")?;
    c.expect(&Msg::text("p1"), "the push")?;
    c.expect(&Msg::text("pushed"), "the reply after the push")
}

fn count(c: &mut Client) -> Result<usize, String> {
    c.text("count")?;
    match c.recv() {
        Msg::Text(t) => t.parse().map_err(|_| format!("count: got {t:?}")),
        m => Err(format!("count: got {}", m.show())),
    }
}

/// Polls `count` until it equals `want` (bounded).
fn wait_count(c: &mut Client, want: usize, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = count(c)?;
        if n == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: count stays {n}, expected {want}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn closed(env: &mut Env) -> Result<(), String> {
    let mut c1 = ws(env, "/")?;
    // Connections of earlier checks may still be closing: take a stable baseline.
    let mut n = count(&mut c1)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let m = count(&mut c1)?;
        if m == n || Instant::now() > deadline {
            break;
        }
        n = m;
    }
    let more: Vec<Client> = (0..3).map(|_| ws(env, "/")).collect::<Result<_, _>>()?;
    wait_count(&mut c1, n + 3, "after 3 opens")?;
    for c in more {
        c.close();
    }
    wait_count(&mut c1, n, "after 3 client closes (Closed delivered?)")?;
    // A dropped TCP connection is a Closed too (code 1006).
    drop(ws(env, "/")?);
    wait_count(&mut c1, n, "after a dropped connection")?;
    let mut c3 = ws(env, "/")?;
    c3.text("close")?;
    c3.expect(&Msg::Close(Some(4000)), "the backend's Close")
}

fn groups(env: &mut Env) -> Result<(), String> {
    // Enough members that they land on different shards.
    let mut m: Vec<Client> = (0..4).map(|_| ws(env, "/")).collect::<Result<_, _>>()?;
    for c in m.iter_mut() {
        c.text("join:g1")?;
        c.expect(&Msg::text("joined:g1"), "join reply")?;
    }
    m[0].text("pub:g1:hi all")?;
    for c in m.iter_mut() {
        c.expect(&Msg::text("hi all"), "publish to every member")?;
    }
    m[1].text("leave:g1")?;
    m[1].expect(&Msg::text("left:g1"), "leave reply")?;
    m[2].text("pub:g1:again")?;
    for (i, c) in m.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        c.expect(&Msg::text("again"), &format!("publish to member {i}"))?;
    }
    // The one that left gets its own echo next, not the publish.
    m[1].roundtrip("probe")
}

fn route(env: &mut Env) -> Result<(), String> {
    let other = env
        .spawn_backend(ROUTE_ID, "r7:", false)
        .map_err(|e| format!("{e:#}"))?;
    env.extra.push(other);
    env.wait_attached(2, Duration::from_secs(15))?;
    let mut c = ws(env, "/")?;
    let keyed = r#"{"ns":"check","n":1}"#;
    c.text(keyed)?;
    c.expect(
        &Msg::text(&format!("r7:{keyed}")),
        "keyed message via route 7",
    )?;
    c.roundtrip("unkeyed")?;
    c.text(r#"{"ns":"other"}"#)?;
    c.expect(
        &Msg::text(r#"{"ns":"other"}"#),
        "unknown key stays on route 0",
    )?;
    if let Some(o) = env.extra.pop() {
        stop(o, Duration::from_secs(5));
    }
    env.wait_attached(1, Duration::from_secs(10))
}

/// Opens a connection and sends `x`: Some(reply) or None if the upgrade or reply timed out.
fn probe(env: &Env, t: Duration) -> Option<Msg> {
    let mut c = Client::open_timeout(env.ws, "/", t).ok()?;
    c.text("x").ok()?;
    match c.recv() {
        Msg::Timeout => None,
        m => Some(m),
    }
}

fn heartbeat(env: &mut Env) -> Result<(), String> {
    // A decoy backend without a heartbeat (the Rust SDK's contract service).
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let decoy = std::process::Command::new(exe)
        .args(["backend", "--contract"])
        .env(corelay::sdk::env::ATTACH, &env.sock)
        .env(corelay::sdk::env::TAG, "decoy:")
        .env_remove(corelay::sdk::env::HEARTBEAT_MS)
        .env_remove(corelay::sdk::env::ROUTE)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the decoy: {e}"))?;
    env.extra.push(decoy);
    env.wait_attached(2, Duration::from_secs(15))?;
    let r = heartbeat_phases(env);
    if let Some(b) = &env.backend {
        signal(b, Signal::SIGCONT);
    }
    if let Some(d) = env.extra.pop() {
        stop(d, Duration::from_secs(5));
    }
    r?;
    env.wait_attached(1, Duration::from_secs(10))
}

fn heartbeat_phases(env: &mut Env) -> Result<(), String> {
    let (mut ours, mut decoy) = (0, 0);
    for _ in 0..12 {
        match probe(env, Duration::from_secs(5)) {
            Some(Msg::Text(t)) if t == "x" => ours += 1,
            Some(Msg::Text(t)) if t == "decoy:x" => decoy += 1,
            other => return Err(format!("both running: got {other:?}")),
        }
    }
    if ours == 0 || decoy == 0 {
        return Err(format!(
            "new connections not spread: backend {ours}, decoy {decoy}"
        ));
    }
    let b = env.backend.as_ref().ok_or("no backend")?;
    signal(b, Signal::SIGSTOP);
    // Once its heartbeat timeout (3 intervals) passed, every new connection goes to the
    // decoy. A backend that announced no heartbeat keeps getting half of them.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut streak = 0;
    while streak < 8 {
        if Instant::now() > deadline {
            return Err(
                "a stopped backend kept getting new connections (no heartbeat policy announced?)"
                    .into(),
            );
        }
        match probe(env, Duration::from_secs(1)) {
            Some(Msg::Text(t)) if t == "decoy:x" => streak += 1,
            _ => streak = 0,
        }
    }
    let b = env.backend.as_ref().ok_or("no backend")?;
    signal(b, Signal::SIGCONT);
    // Beating again: it gets new connections again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(Msg::Text(t)) = probe(env, Duration::from_secs(2)) {
            if t == "x" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(
                "the resumed backend got no new connection (heartbeats not resumed?)".into(),
            );
        }
    }
}

fn garbage(env: &mut Env) -> Result<(), String> {
    use corelay::ring::msg::{self, ToBackend};
    let mut before = ws(env, "/")?;
    before.roundtrip("before")?;
    let stream = std::os::unix::net::UnixStream::connect(&env.sock)
        .map_err(|e| format!("rogue connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let att = corelay::ring::attach::handshake_route(&stream, 0)
        .map_err(|e| format!("rogue attach: {e}"))?;
    env.wait_attached(2, Duration::from_secs(10))?;
    for s in &att.shards {
        let mut side = s.backend_side().map_err(|e| format!("rogue rings: {e}"))?;
        // A gateway -> backend kind in the backend -> gateway ring: a protocol violation.
        let bad = ToBackend::Closed {
            code: 1000,
            reason: b"garbage",
        };
        msg::push(&mut side.tx, 1, 0, &bad).map_err(|e| format!("rogue push: {e:?}"))?;
        side.tx.flush();
    }
    let mut b = [0u8; 64];
    match std::io::Read::read(&mut &stream, &mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => {
            return Err(format!(
                "rogue: the gateway sent {n} bytes instead of cutting it off"
            ))
        }
        Err(e) => return Err(format!("rogue was not cut off: {e}")),
    }
    env.wait_attached(1, Duration::from_secs(10))?;
    before.roundtrip("after")?;
    ws(env, "/")?.roundtrip("new after")
}

fn kill9(env: &mut Env) -> Result<(), String> {
    let mut c = ws(env, "/")?;
    let mut other = ws(env, "/")?;
    c.set_timeout(Duration::from_secs(20));
    let want = |i: usize| Msg::Text(format!("k{i}"));
    for i in 0..100 {
        c.queue(&want(i))?;
    }
    // k100 stays uncompleted until k101 arrives: the backend must not commit past it.
    // `holdack` pushes "held" once it deferred the request, so the kill comes after that.
    c.queue(&Msg::text("holdack:k100"))?;
    c.flush()?;
    for i in 0..100 {
        c.expect(&want(i), &format!("reply {i} before the kill"))?;
    }
    c.expect(&Msg::text("held"), "the push acknowledging holdack:k100")?;
    // A reply to a request sent after the ack was published after the backend finished the
    // batch that deferred k100 (and committed what it meant to commit).
    other.roundtrip("sync")?;
    let mut b = env.backend.take().ok_or("no backend")?;
    let _ = b.kill();
    let _ = b.wait();
    // Requests made while no backend runs wait in the ring; so does a new connection.
    for i in 101..300 {
        c.queue(&want(i))?;
    }
    c.flush()?;
    let addr = env.ws;
    let waiting = std::thread::spawn(move || -> Result<(), String> {
        let mut c2 = Client::open_timeout(addr, "/", Duration::from_secs(30))?;
        c2.roundtrip("opened during the outage")
    });
    env.start_backend().map_err(|e| format!("{e:#}"))?;
    env.wait_attached(1, Duration::from_secs(15))?;
    // The uncommitted holdack:k100 is delivered again, so it is acknowledged again.
    c.expect(
        &Msg::text("held"),
        "holdack:k100 delivered again after the restart",
    )?;
    for i in 100..300 {
        c.expect(&want(i), &format!("reply {i} after the restart"))?;
    }
    // Nothing duplicated: the next message's reply comes next.
    c.roundtrip("end")?;
    waiting
        .join()
        .map_err(|_| "outage client panicked".to_string())?
}
