//! `corelay-nats-bench clients`: one process holding many WebSocket client connections,
//! recording when each timestamped message arrives (driven by the coordinator over
//! stdin/stdout).
//!
//! Payloads the coordinator sends are `k=<id> t=<CLOCK_MONOTONIC ns>`; the clock is the
//! machine's, so a receipt in this process minus `t` is the end-to-end latency. Anything
//! else (`probe`) only marks the connection as reached.
//!
//! Commands on stdin, one per line:
//! - `probed`: prints `probed N` (connections that have received anything so far);
//! - `expect TOTAL TIMEOUT_MS`: waits until TOTAL timestamped messages arrived since the last
//!   report (or the timeout), then prints `got N`, `h VALUE COUNT` lines (latency histogram,
//!   ns), `k ID COUNT LAST_NS` lines (per message: receipts and the last one), `end`; resets;
//! - `quit`: exits (connections are dropped).

use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// CLOCK_MONOTONIC in ns (the same clock in every process of the machine).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Parses `k=<id> t=<ns>`.
pub(crate) fn parse_stamp(p: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let (k, t) = s.split_once(' ')?;
    Some((
        k.strip_prefix("k=")?.parse().ok()?,
        t.strip_prefix("t=")?.parse().ok()?,
    ))
}

struct Stats {
    hist: Histogram<u64>,
    per_k: HashMap<u64, (u64, u64)>,
    total: u64,
    reached: usize,
}

/// What one client-process run is given.
pub(crate) struct ClientArgs {
    pub(crate) addr: SocketAddr,
    /// Path of connection `i` is `path` with `{i}` replaced by `first + i`.
    pub(crate) path: String,
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// Source addresses 127.0.0.<src_lo..=src_hi>, round robin.
    pub(crate) src_lo: u8,
    pub(crate) src_hi: u8,
}

pub(crate) fn run(a: ClientArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(main(a))
}

async fn main(a: ClientArgs) -> anyhow::Result<()> {
    let stats = Arc::new(Mutex::new(Stats {
        hist: Histogram::new(3)?,
        per_k: HashMap::new(),
        total: 0,
        reached: 0,
    }));
    // Connect with a bounded number of handshakes in flight (the upgrade goes through a
    // backend, possibly on another host, before it completes).
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut pending = Vec::with_capacity(a.count);
    for i in 0..a.count {
        let permit = sem.clone().acquire_owned().await?;
        let span = u32::from(a.src_hi - a.src_lo) + 1;
        let src = IpAddr::from([127, 0, 0, a.src_lo + (i as u32 % span) as u8]);
        let path = a.path.replace("{i}", &(a.first + i).to_string());
        let addr = a.addr;
        pending.push(tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(90), connect(src, addr, &path)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("upgrade of {path} timed out")),
            }
        }));
    }
    let mut conns = Vec::with_capacity(a.count);
    for p in pending {
        conns.push(p.await??);
    }
    for (s, rest) in conns {
        let st = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = read_frames(s, rest, st).await {
                eprintln!("clients: connection ended: {e}");
            }
        });
    }
    println!("ready {}", a.count);
    // Commands from a plain thread (stdin is blocking) into the runtime.
    let (ltx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for l in std::io::stdin().lines() {
            let Ok(l) = l else { break };
            if ltx.blocking_send(l).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let v: Vec<&str> = line.split_whitespace().collect();
        match v.as_slice() {
            ["probed"] => println!("probed {}", stats.lock().unwrap().reached),
            ["expect", total, ms] => {
                let total: u64 = total.parse()?;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(ms.parse()?);
                while stats.lock().unwrap().total < total && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut s = stats.lock().unwrap();
                let mut out = format!("got {}\n", s.total);
                for v in s.hist.iter_recorded() {
                    out += &format!("h {} {}\n", v.value_iterated_to(), v.count_at_value());
                }
                for (k, (n, last)) in &s.per_k {
                    out += &format!("k {k} {n} {last}\n");
                }
                out += "end";
                println!("{out}");
                s.hist.reset();
                s.per_k.clear();
                s.total = 0;
            }
            ["quit"] => break,
            _ => eprintln!("clients: unknown command {line:?}"),
        }
    }
    Ok(())
}

/// TCP connect from `src`, WebSocket upgrade; returns the stream and bytes read past the
/// response head.
async fn connect(
    src: IpAddr,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed during the upgrade of {path}");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            anyhow::ensure!(
                buf.starts_with(b"HTTP/1.1 101"),
                "upgrade of {path} refused: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(40)])
            );
            return Ok((s, buf[end + 4..].to_vec()));
        }
        anyhow::ensure!(buf.len() < 8192, "response head too long");
    }
}

/// Reads server frames (unmasked) until close; records timestamped text/binary messages,
/// answers pings.
async fn read_frames(
    mut s: TcpStream,
    mut buf: Vec<u8>,
    st: Arc<Mutex<Stats>>,
) -> anyhow::Result<()> {
    const MAX: usize = 1 << 20; // the bench's payloads are tiny; refuse anything huge
    let mut chunk = vec![0u8; 16 * 1024];
    let mut reached = false;
    loop {
        // Parse every complete frame in `buf`.
        let mut off = 0;
        loop {
            let b = &buf[off..];
            if b.len() < 2 {
                break;
            }
            let op = b[0] & 0x0f;
            let (len, hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => {
                    let l = u64::from_be_bytes(b[2..10].try_into()?);
                    (usize::try_from(l).unwrap_or(usize::MAX), 10)
                }
                126 | 127 => break,
                l => (l as usize, 2),
            };
            anyhow::ensure!(len <= MAX && b[1] & 0x80 == 0, "bad frame");
            if b.len() < hdr + len {
                break;
            }
            let payload = &b[hdr..hdr + len];
            match op {
                1 | 2 => {
                    let now = now_ns();
                    let mut g = st.lock().unwrap();
                    if !reached {
                        reached = true;
                        g.reached += 1;
                    }
                    if let Some((k, t)) = parse_stamp(payload) {
                        let _ = g.hist.record(now.saturating_sub(t).max(1));
                        let e = g.per_k.entry(k).or_insert((0, 0));
                        e.0 += 1;
                        e.1 = e.1.max(now);
                        g.total += 1;
                    }
                }
                9 => {
                    // Pong with the same payload, masked with a zero key (payload unchanged).
                    let mut f = vec![0x8a, 0x80 | len as u8, 0, 0, 0, 0];
                    anyhow::ensure!(len <= 125, "bad ping");
                    f.extend_from_slice(payload);
                    s.write_all(&f).await?;
                }
                8 => return Ok(()),
                _ => {}
            }
            off += hdr + len;
        }
        buf.drain(..off);
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
