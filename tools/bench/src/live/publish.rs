//! `live-publish`: an RTMP publisher whose timing is known. It reads an FLV file (made once by
//! ffmpeg), then publishes its tags to one or more servers at once, each tag sent when
//! `start + timestamp` comes on CLOCK_MONOTONIC (`-re` pacing), looping the file with
//! continuing timestamps. `start` is written to a file, so viewers can tell how long after its
//! publication each tag reached them (the "added latency ingest → egress").

use anyhow::{bail, Context, Result};
use corelay::proto::media::flv::{Demuxer, FlvEvent, TagType};
use corelay::proto::rtmp::amf0::{Amf0Value, Reader, Writer};
use corelay::proto::rtmp::chunk::{
    ChunkDecoder, ChunkLimits, ChunkWriter, Message, MSG_AUDIO, MSG_COMMAND_AMF0, MSG_DATA_AMF0,
    MSG_SET_CHUNK_SIZE, MSG_VIDEO,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `live-publish` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PublishArgs {
    /// FLV file to publish (H.264 + AAC, e.g. made by ffmpeg from testsrc; see
    /// tools/bench/scripts/live_srs.sh).
    #[arg(long)]
    pub flv: PathBuf,
    /// RTMP URL to publish to, `rtmp://127.0.0.1:PORT/APP/NAME` (repeatable: every server gets
    /// every tag at the same moment).
    #[arg(long, required = true)]
    pub rtmp: Vec<String>,
    /// Where to write the publication start (CLOCK_MONOTONIC ns) once every server accepted
    /// the publish.
    #[arg(long)]
    pub clock_file: PathBuf,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub secs: u64,
}

/// CLOCK_MONOTONIC in ns (the same clock in every process of the host).
pub(crate) fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// One FLV tag of the file.
struct FileTag {
    type_id: u8,
    ts: u32,
    body: Vec<u8>,
    /// Metadata or a sequence header: sent once, not on every loop.
    config: bool,
}

fn load(path: &PathBuf) -> Result<(Vec<FileTag>, u32)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut d = Demuxer::new();
    let mut at = 0;
    let mut tags = Vec::new();
    loop {
        let (n, r) = d.decode(&data[at..]);
        match r.map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))? {
            Some(FlvEvent::Header(_)) => {}
            Some(FlvEvent::Tag(t)) => tags.push(FileTag {
                type_id: match t.header.tag_type {
                    TagType::Audio => MSG_AUDIO,
                    TagType::Video => MSG_VIDEO,
                    _ => MSG_DATA_AMF0,
                },
                ts: t.header.timestamp,
                body: t.body.to_vec(),
                config: t.is_config(),
            }),
            None => break,
        }
        at += n;
    }
    let vts: Vec<u32> = tags
        .iter()
        .filter(|t| t.type_id == MSG_VIDEO && !t.config)
        .map(|t| t.ts)
        .collect();
    if vts.len() < 2 {
        bail!("{}: fewer than two video frames", path.display());
    }
    // One loop lasts up to the last frame plus one frame interval.
    let period = vts[vts.len() - 1] + (vts[vts.len() - 1] - vts[vts.len() - 2]).max(1);
    Ok((tags, period))
}

/// A publishing RTMP client (blocking socket).
struct Client {
    s: TcpStream,
    dec: ChunkDecoder,
    w: ChunkWriter,
    rx: Vec<u8>,
    rx_len: usize,
    out: Vec<u8>,
    stream_id: u32,
}

impl Client {
    /// Handshake, connect, createStream, publish; returns once `NetStream.Publish.Start` came.
    fn publish(url: &str) -> Result<Client> {
        let rest = url
            .strip_prefix("rtmp://")
            .with_context(|| format!("{url}: not rtmp://"))?;
        let (host, path) = rest.split_once('/').context("rtmp URL without /APP/NAME")?;
        let (app, name) = path
            .rsplit_once('/')
            .context("rtmp URL without /APP/NAME")?;
        let addr: SocketAddr = host.parse().with_context(|| format!("{host}: IP:PORT"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "traffic only to 127.0.0.0/8: {addr}"
        );
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut c = Client {
            s,
            dec: ChunkDecoder::new(ChunkLimits::default()),
            w: ChunkWriter::default(),
            rx: vec![0; 64 << 10],
            rx_len: 0,
            out: Vec::new(),
            stream_id: 0,
        };
        // Simple handshake: C0 C1 (time 0, zero, filler), S0 S1 S2, C2 = S1.
        let mut c01 = vec![3u8; 1537];
        c01[1..9].fill(0);
        for (i, b) in c01[9..].iter_mut().enumerate() {
            *b = (i * 7 + 13) as u8;
        }
        c.s.write_all(&c01)?;
        let mut s012 = vec![0u8; 1 + 1536 * 2];
        c.s.read_exact(&mut s012)?;
        anyhow::ensure!(s012[0] == 3, "{url}: RTMP version {}", s012[0]);
        c.s.write_all(&s012[1..1537])?;
        c.w.set_chunk_size(60_000)?;
        c.send_now(2, MSG_SET_CHUNK_SIZE, 0, 0, &60_000u32.to_be_bytes())?;
        let tc_url = format!("rtmp://{host}/{app}");
        let mut b = Vec::new();
        Writer::new(&mut b)
            .string("connect")
            .number(1.0)
            .object()
            .key("app")
            .string(app)
            .key("type")
            .string("nonprivate")
            .key("flashVer")
            .string("FMLE/3.0 (compatible; corelay-bench)")
            .key("tcUrl")
            .string(&tc_url)
            .end();
        c.send_now(3, MSG_COMMAND_AMF0, 0, 0, &b)?;
        c.wait_result(1.0)?;
        for (cmd, txn) in [("releaseStream", 2.0), ("FCPublish", 3.0)] {
            b.clear();
            Writer::new(&mut b)
                .string(cmd)
                .number(txn)
                .null()
                .string(name);
            c.send_now(3, MSG_COMMAND_AMF0, 0, 0, &b)?;
        }
        b.clear();
        Writer::new(&mut b)
            .string("createStream")
            .number(4.0)
            .null();
        c.send_now(3, MSG_COMMAND_AMF0, 0, 0, &b)?;
        c.stream_id = c.wait_result(4.0)?.context("createStream: no stream id")? as u32;
        b.clear();
        Writer::new(&mut b)
            .string("publish")
            .number(5.0)
            .null()
            .string(name)
            .string("live");
        c.send_now(8, MSG_COMMAND_AMF0, c.stream_id, 0, &b)?;
        c.wait_status("NetStream.Publish.Start")?;
        c.s.set_nonblocking(true)?;
        Ok(c)
    }

    fn send_now(&mut self, csid: u32, t: u8, msid: u32, ts: u32, body: &[u8]) -> Result<()> {
        self.out.clear();
        self.w.write(&mut self.out, csid, t, msid, ts, body)?;
        self.s.write_all(&self.out)?;
        Ok(())
    }

    /// Next message (blocking, bounded by the read timeout).
    fn next(&mut self) -> Result<Message> {
        loop {
            let (n, r) = self.dec.decode(&self.rx[..self.rx_len]);
            self.rx.copy_within(n..self.rx_len, 0);
            self.rx_len -= n;
            if let Some(m) = r.map_err(|e| anyhow::anyhow!("RTMP from server: {e}"))? {
                return Ok(m);
            }
            let k = self.s.read(&mut self.rx[self.rx_len..])?;
            if k == 0 {
                bail!("server closed the RTMP connection");
            }
            self.rx_len += k;
        }
    }

    /// Waits for `_result` of transaction `txn`; returns its first number argument.
    fn wait_result(&mut self, txn: f64) -> Result<Option<f64>> {
        for _ in 0..64 {
            let m = self.next()?;
            if m.type_id != MSG_COMMAND_AMF0 {
                continue;
            }
            let v: Vec<Amf0Value<'_>> = Reader::new(m.body()).filter_map(|v| v.ok()).collect();
            let name = v.first().and_then(|v| v.as_str()).unwrap_or("");
            if v.get(1).and_then(|v| v.as_number()) == Some(txn) {
                if name == "_error" {
                    bail!("transaction {txn} refused: {v:?}");
                }
                if name == "_result" {
                    return Ok(v.iter().skip(2).find_map(|v| v.as_number()));
                }
            }
        }
        bail!("no _result for transaction {txn}")
    }

    fn wait_status(&mut self, code: &str) -> Result<()> {
        for _ in 0..64 {
            let m = self.next()?;
            if m.type_id != MSG_COMMAND_AMF0 {
                continue;
            }
            let v: Vec<Amf0Value<'_>> = Reader::new(m.body()).filter_map(|v| v.ok()).collect();
            if v.first().and_then(|v| v.as_str()) != Some("onStatus") {
                continue;
            }
            let got = v
                .iter()
                .find_map(|v| v.as_properties())
                .and_then(|p| p.get_str("code"))
                .unwrap_or("");
            if got == code {
                return Ok(());
            }
            bail!("publish refused: {got}");
        }
        bail!("no onStatus {code}")
    }

    /// Sends one media message without blocking forever (the socket is non-blocking now;
    /// a server that does not read for 10 s fails the run). Drains what the server sent.
    fn media(&mut self, t: u8, ts: u32, body: &[u8]) -> Result<()> {
        self.out.clear();
        let csid = if t == MSG_AUDIO { 4 } else { 6 };
        self.w
            .write(&mut self.out, csid, t, self.stream_id, ts, body)?;
        let mut at = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while at < self.out.len() {
            match self.s.write(&self.out[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    anyhow::ensure!(Instant::now() < deadline, "server stopped reading");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match self.s.read(&mut self.rx) {
                Ok(0) => bail!("server closed the RTMP connection"),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Runs the publisher until `secs` pass (or a server fails).
pub(crate) fn run(a: PublishArgs) -> Result<()> {
    let (tags, period) = load(&a.flv)?;
    let mut clients = Vec::new();
    for u in &a.rtmp {
        clients.push(Client::publish(u).with_context(|| format!("publishing to {u}"))?);
    }
    let start = mono_ns() + 50_000_000;
    std::fs::write(&a.clock_file, format!("{start}\n"))?;
    eprintln!(
        "publishing {} tags ({} ms a loop) to {} server(s); start {start}",
        tags.len(),
        period,
        clients.len()
    );
    let end = start + a.secs * 1_000_000_000;
    let (mut late, mut sent, mut worst) = (0u64, 0u64, 0u64);
    let mut meta = Vec::new();
    for lap in 0u32.. {
        for t in tags.iter().filter(|t| lap == 0 || !t.config) {
            let ts = t.ts + lap * period;
            let due = start + u64::from(ts) * 1_000_000;
            if due >= end {
                eprintln!(
                    "published {sent} tags; {late} sent > 5 ms late (worst {} ms)",
                    worst / 1_000_000
                );
                return Ok(());
            }
            let now = mono_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            } else {
                worst = worst.max(now - due);
                late += u64::from(now - due > 5_000_000);
            }
            let body: &[u8] = if t.type_id == MSG_DATA_AMF0 {
                // A publisher sends metadata as `@setDataFrame onMetaData {...}`.
                meta.clear();
                Writer::new(&mut meta).string("@setDataFrame");
                meta.extend_from_slice(&t.body);
                &meta
            } else {
                &t.body
            };
            for c in clients.iter_mut() {
                c.media(t.type_id, ts, body)?;
            }
            sent += 1;
            if sent % 1000 == 0 {
                // Progress for the run's log: a late publisher makes every viewer late.
                eprintln!(
                    "published {sent} tags; {late} sent > 5 ms late (worst {} ms)",
                    worst / 1_000_000
                );
            }
        }
    }
    Ok(())
}
