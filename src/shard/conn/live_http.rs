//! Live egress on the ws/wss listeners: `GET /live/NAME.flv` (HTTP-FLV, chunked),
//! `GET /live/NAME.m3u8` and `GET /live/NAME-SEQ.ts` (HLS), and the WebSocket upgrade on
//! `/live/NAME.flv` (FLV in binary messages). Each is authorized like an upgrade. HLS
//! responses are whole (`Content-Length`) and the connection is kept alive for more
//! requests of the same stream (HTTP/1.1 keep-alive, answered in order; see `process_hls`).

use super::live::{authorize, HlsConn, LiveConn, Request, Role};
use super::live_pump::Viewer;
use super::{CloseCause, Shard, F_READ_PAUSED};
use crate::proto::handshake;
use crate::proto::media::gop::FLV_FILE_HEADER;
use crate::proto::ws::DataKind;
use crate::shard::conn_table::ConnId;
use crate::shard::handler::{Handler, LiveAction, LiveEgress};
use std::time::{Duration, Instant};

/// What a `/live/...` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// `/live/NAME.flv`
    Flv(String),
    /// `/live/NAME.m3u8`
    Playlist(String),
    /// `/live/NAME-SEQ.ts`
    Segment(String, u64),
}

/// Parse a live path; `None` for anything else.
pub(super) fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/live/")?;
    let t = if let Some(n) = rest.strip_suffix(".flv") {
        Target::Flv(n.to_owned())
    } else if let Some(n) = rest.strip_suffix(".m3u8") {
        Target::Playlist(n.to_owned())
    } else {
        let (n, seq) = rest.strip_suffix(".ts")?.rsplit_once('-')?;
        if seq.is_empty() || seq.len() > 19 || !seq.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        Target::Segment(n.to_owned(), seq.parse().ok()?)
    };
    let name = match &t {
        Target::Flv(n) | Target::Playlist(n) | Target::Segment(n, _) => n,
    };
    crate::live::valid_name(name).then_some(t)
}

/// A complete live GET request head.
struct Get {
    target: Target,
    query: String,
    /// The client lets the connection stay open after the response: HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`; and no body (a GET
    /// with one cannot be framed safely, so its connection closes after the response).
    keep: bool,
    /// Bytes of the head.
    head: usize,
}

/// What the start of a buffer holds.
enum Head {
    /// Not a complete head yet.
    Partial,
    Get(Get),
    /// Malformed, not a GET, or not a live path.
    Other,
}

fn parse_get(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let Some(full) = req.path.filter(|_| req.method == Some("GET")) else {
        return Head::Other;
    };
    let (path, query) = full.split_once('?').unwrap_or((full, ""));
    let Some(target) = target(path) else {
        return Head::Other;
    };
    let (mut close, mut keep_alive, mut body) = (false, false, false);
    for h in req.headers.iter() {
        let value = h.value.trim_ascii();
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&c| c == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && value != b"0")
        {
            body = true;
        }
    }
    let keep = !close && !body && (req.version == Some(1) || keep_alive);
    Head::Get(Get {
        target,
        query: query.to_owned(),
        keep,
        head,
    })
}

/// Whether HLS connections may be kept alive at all now.
fn keepalive_on(io: &Shard) -> bool {
    !io.shutting_down
        && io
            .live
            .as_ref()
            .is_some_and(|l| l.hub.config().hls_keepalive_ms > 0)
}

/// A request head that is not a WebSocket upgrade: serve it if it is a live GET. Returns
/// the bytes of its head, or `None` when it is not one (the caller refuses it as before).
pub(super) fn route_get(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    buf: &[u8],
) -> Option<usize> {
    io.live.as_ref().filter(|l| l.hub.config().http)?;
    let Head::Get(g) = parse_get(buf) else {
        return None;
    };
    let (egress, name, segment) = match g.target {
        Target::Flv(n) => (LiveEgress::HttpFlv, n, None),
        Target::Playlist(n) => (LiveEgress::Hls, n, None),
        Target::Segment(n, s) => (LiveEgress::Hls, n, Some(s)),
    };
    // An unauthorized connection's earlier answers (404s) must have left before it may
    // keep asking: what it can make the gateway hold stays one response.
    let idle = io.conns.get(id).is_some_and(|c| c.tx_queued() == 0);
    let keep = g.keep && egress == LiveEgress::Hls && idle && keepalive_on(io);
    start(io, h, id, egress, name, segment, None, &g.query, keep);
    Some(g.head)
}

/// A WebSocket upgrade on a live path: a WebSocket-FLV viewer. `None`: not a live path.
pub(super) fn route_upgrade(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    req: &handshake::Request<'_>,
) -> Option<()> {
    io.live.as_ref().filter(|l| l.hub.config().http)?;
    let Target::Flv(name) = target(req.path())? else {
        return None;
    };
    let key = <[u8; 24]>::try_from(req.key()).ok();
    let query = req.query().unwrap_or("").to_owned();
    start(io, h, id, LiveEgress::WsFlv, name, None, key, &query, false);
    Some(())
}

#[allow(clippy::too_many_arguments)]
fn start(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    egress: LiveEgress,
    name: String,
    segment: Option<u64>,
    ws_key: Option<[u8; 24]>,
    query: &str,
    keep_alive: bool,
) {
    let exists = io
        .live
        .as_ref()
        .and_then(|l| {
            if egress == LiveEgress::Hls {
                l.hub.find_hls(&name)
            } else {
                l.hub.find(&name)
            }
        })
        .is_some();
    if !exists && keep_alive {
        // Nothing to authorize: no such stream (yet). The connection stays an unauthorized
        // one (its handshake deadline runs on) and may ask again.
        write_response(io, id, 404, None, true);
        return;
    }
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    c.extra().live = Some(Box::new(LiveConn {
        rtmp: None,
        role: Role::Idle,
    }));
    if !exists {
        // Nothing to authorize: no such stream.
        respond_status(io, id, 404);
        return;
    }
    let req = Request {
        action: LiveAction::Play,
        egress,
        name,
        segment,
        ws_key,
        at: Instant::now(),
        keep_alive,
    };
    authorize(io, h, id, req, query);
}

/// Answer with a bodiless status and close.
pub(super) fn respond_status(io: &mut Shard, id: ConnId, status: u16) {
    let mut buf = [0u8; 256];
    if let Ok(n) = handshake::write_status(&mut buf, status, &[]) {
        io.stage(id, |out| out.extend_from_slice(&buf[..n]));
    }
    io.set_cause(id, CloseCause::Rejected, 0);
    io.begin_drain(id);
}

const FLV_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\n\
Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n\
Connection: close\r\n\r\n";

/// The play was allowed: join the stream and start the response.
pub(super) fn accepted(io: &mut Shard, id: ConnId, req: Request) -> bool {
    let Some(hub) = io.live.as_ref().map(|l| l.hub.clone()) else {
        return false;
    };
    if req.egress == LiveEgress::Hls {
        if !req.keep_alive {
            return answer(io, id, &req.name, req.segment, false);
        }
        // Authorized once for this stream: the connection is open from now on and answers
        // the stream's requests until it closes (one `Closed` then).
        let now = io.now;
        let Some(c) = io.conns.get_mut(id) else {
            return false;
        };
        c.life.open(now);
        io.metrics.handshakes_ok += 1;
        if let Some(l) = io.live_conn(id) {
            l.role = Role::Hls(Box::new(HlsConn {
                name: req.name.clone(),
                served: 0,
                last: Instant::now(),
            }));
        }
        if let Some(l) = io.live.as_mut() {
            l.hls.push(id);
        }
        answer(io, id, &req.name, req.segment, true);
        return true;
    }
    let Some(stream) = hub.find(&req.name) else {
        respond_status(io, id, 404);
        return false;
    };
    let Some(join) = stream.join(io.shard) else {
        respond_status(io, id, 404);
        return false;
    };
    let now = io.now;
    let Some(c) = io.conns.get_mut(id) else {
        stream.leave(io.shard);
        return false;
    };
    c.life.open(now);
    io.metrics.handshakes_ok += 1;
    match req.egress {
        LiveEgress::WsFlv => {
            let key = req.ws_key.unwrap_or([b'A'; 24]);
            io.stage(id, |out| super::open::write_101(out, &key, None));
            let _ = io.send(id, DataKind::Binary, &FLV_FILE_HEADER);
        }
        _ => io.stage(id, |out| {
            out.extend_from_slice(FLV_HEAD);
            out.extend_from_slice(format!("{:x}\r\n", FLV_FILE_HEADER.len()).as_bytes());
            out.extend_from_slice(&FLV_FILE_HEADER);
            out.extend_from_slice(b"\r\n");
        }),
    }
    let cfg = hub.config();
    let mut v = Viewer::new(
        stream,
        req.egress,
        cfg.viewer_queue_bytes,
        cfg.max_skips_in_row,
        Duration::from_millis(cfg.mw_latency_ms),
        join,
        req.at,
    );
    io.add_viewer(id, &mut v);
    let slot = v.schedule(Instant::now());
    if let Some(l) = io.live.as_mut() {
        l.put(id, slot);
    }
    if let Some(l) = io.live_conn(id) {
        l.role = Role::Viewer(Box::new(v));
    }
    true
}

/// An HLS response: `status` with `body` (content type, bytes) or none; `keep` says
/// whether the connection stays open after it.
fn write_response(
    io: &mut Shard,
    id: ConnId,
    status: u16,
    body: Option<(&str, &bytes::Bytes)>,
    keep: bool,
) -> usize {
    let reason = if status == 200 { "OK" } else { "Not Found" };
    let (ctype, len) = body.map_or(("", 0), |(t, b)| (t, b.len()));
    let ctype = if ctype.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ctype}\r\n")
    };
    let connection = if keep { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n{ctype}Content-Length: {len}\r\n\
         Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\n\
         Connection: {connection}\r\n\r\n"
    );
    io.stage(id, |out| {
        out.extend_from_slice(head.as_bytes());
        if let Some((_, b)) = body {
            out.extend_from_slice(b);
        }
    });
    head.len() + len
}

/// Answer an HLS request of `name` (its playlist, or segment `segment`) on `id`; `keep`:
/// the client lets the connection stay open. A kept connection counts the request and
/// closes after `hls_keepalive_requests` of them. Returns whether it stays open.
fn answer(io: &mut Shard, id: ConnId, name: &str, segment: Option<u64>, keep: bool) -> bool {
    let Some(hub) = io.live.as_ref().map(|l| l.hub.clone()) else {
        return false;
    };
    let max = hub.config().hls_keepalive_requests;
    let mut keep = keep && keepalive_on(io);
    if keep {
        match io.live_conn(id).map(|l| &mut l.role) {
            Some(Role::Hls(c)) => {
                c.served = c.served.saturating_add(1);
                c.last = Instant::now();
                keep = c.served < max;
            }
            _ => keep = false,
        }
    }
    let stream = hub.find_hls(name);
    let body = stream.as_ref().and_then(|s| match segment {
        None => s
            .playlist()
            .map(|p| ("application/vnd.apple.mpegurl", bytes::Bytes::from(p))),
        Some(seq) => s.segment(seq).map(|b| ("video/mp2t", b)),
    });
    match (body, stream) {
        (Some((ctype, body)), Some(stream)) => {
            let n = write_response(io, id, 200, Some((ctype, &body)), keep);
            stream.count_out(n as u64);
            if !keep {
                io.set_cause(id, CloseCause::Local, 1000);
                io.begin_drain(id);
            }
        }
        _ if keep => {
            write_response(io, id, 404, None, true);
        }
        _ => {
            // The first request of a connection that closes: refused as before; a kept
            // connection's last request: answered, then it closes normally.
            if io.live_conn(id).is_some_and(|l| l.is_hls()) {
                write_response(io, id, 404, None, false);
                io.set_cause(id, CloseCause::Local, 1000);
                io.begin_drain(id);
            } else {
                respond_status(io, id, 404);
            }
        }
    }
    keep
}

/// Requests a kept-alive HLS connection handles per turn before the others get theirs.
const PIPELINE_TURN: usize = 8;

/// Input of a kept-alive HLS connection: its next requests, answered in order. Only
/// requests for the stream it was authorized for are answered; anything else (another
/// stream, another method or path, a malformed or oversized head) ends the connection
/// after the responses so far, unanswered: HTTP clients retry a request that got no
/// response on a new connection (RFC 9112 §9.3.1), which is authorized on its own.
///
/// Bounded: a request is answered only once the previous responses have left (the
/// transmit queue is empty; otherwise reading pauses until the socket drains,
/// `hls_writable`), at most `PIPELINE_TURN` per turn, and an incomplete head may not
/// exceed the handshake's header limit. Returns the bytes consumed.
pub(super) fn process_hls(io: &mut Shard, id: ConnId, buf: &mut [u8]) -> usize {
    let max_head = io.settings.handshake.max_header_bytes;
    let mut off = 0;
    for _ in 0..PIPELINE_TURN {
        let Some(c) = io.conns.get_mut(id) else {
            return buf.len();
        };
        if !c.life.is_open() {
            return buf.len();
        }
        if off == buf.len() {
            return off;
        }
        if c.tx_queued() > 0 {
            c.flags |= F_READ_PAUSED;
            return off;
        }
        let Some(Role::Hls(conn)) = c
            .extra
            .as_mut()
            .and_then(|x| x.live.as_deref_mut())
            .map(|l| &mut l.role)
        else {
            return buf.len();
        };
        let (name, segment, g) = match parse_get(&buf[off..]) {
            Head::Partial if buf.len() - off < max_head => return off,
            Head::Get(g) => match &g.target {
                Target::Playlist(n) if *n == conn.name => (n.clone(), None, g),
                Target::Segment(n, s) if *n == conn.name => (n.clone(), Some(*s), g),
                _ => return end_hls(io, id, buf.len()),
            },
            _ => return end_hls(io, id, buf.len()),
        };
        off += g.head;
        if !answer(io, id, &name, segment, g.keep) {
            return buf.len();
        }
    }
    if off < buf.len() {
        // More requests are buffered: after this round's output went out.
        io.schedule_ready(id);
    }
    off
}

/// End a kept-alive HLS connection after what it was sent so far.
fn end_hls(io: &mut Shard, id: ConnId, consumed: usize) -> usize {
    io.set_cause(id, CloseCause::Local, 1000);
    io.begin_drain(id);
    consumed
}

/// The socket of `id` took output: a kept-alive HLS connection paused behind its responses
/// reads its next requests once they are all out.
pub(super) fn hls_writable(io: &mut Shard, id: ConnId) {
    let Some(c) = io.conns.get_mut(id) else {
        return;
    };
    if c.tx_queued() > 0 || c.flags & F_READ_PAUSED == 0 || !c.life.is_open() {
        return;
    }
    let Some(Role::Hls(conn)) = c
        .extra
        .as_mut()
        .and_then(|x| x.live.as_deref_mut())
        .map(|l| &mut l.role)
    else {
        return;
    };
    conn.last = Instant::now();
    c.flags &= !F_READ_PAUSED;
    io.schedule_ready(id);
}

/// The tick: kept-alive HLS connections idle (no request, nothing left to send) for
/// `hls_keepalive_ms` close.
pub(super) fn hls_idle_sweep(io: &mut Shard) {
    let Some((mut ids, limit)) = io.live.as_mut().map(|l| {
        let ms = l.hub.config().hls_keepalive_ms;
        (std::mem::take(&mut l.hls), Duration::from_millis(ms))
    }) else {
        return;
    };
    let now = Instant::now();
    ids.retain(|&id| {
        let Some(c) = io.conns.get_mut(id) else {
            return false;
        };
        let sending = c.tx_queued() > 0;
        if !c.life.is_open() {
            return false;
        }
        let Some(Role::Hls(conn)) = c
            .extra
            .as_mut()
            .and_then(|x| x.live.as_deref_mut())
            .map(|l| &mut l.role)
        else {
            return false;
        };
        if sending {
            conn.last = now;
        }
        if now.saturating_duration_since(conn.last) < limit {
            return true;
        }
        io.metrics.idle_closes += 1;
        io.set_cause(id, CloseCause::IdleTimeout, 1000);
        io.begin_drain(id);
        false
    });
    if let Some(l) = io.live.as_mut() {
        ids.append(&mut l.hls);
        l.hls = ids;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_rules() {
        let keep = |req: &str| match parse_get(req.as_bytes()) {
            Head::Get(g) => Some(g.keep),
            _ => None,
        };
        assert_eq!(
            keep("GET /live/a.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            keep("GET /live/a-1.ts HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n"),
            Some(false)
        );
        assert_eq!(keep("GET /live/a.m3u8 HTTP/1.0\r\n\r\n"), Some(false));
        assert_eq!(
            keep("GET /live/a.m3u8 HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            keep("GET /live/a.m3u8 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            Some(false)
        );
        assert_eq!(
            keep("GET /live/a.m3u8 HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            keep("GET /live/a.m3u8 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(false)
        );
        assert!(matches!(
            parse_get(b"GET /live/a.m3u8 HTTP/1.1\r\nHo"),
            Head::Partial
        ));
        assert!(matches!(
            parse_get(b"POST /live/a.m3u8 HTTP/1.1\r\n\r\n"),
            Head::Other
        ));
        assert!(matches!(
            parse_get(b"GET /other HTTP/1.1\r\n\r\n"),
            Head::Other
        ));
        match parse_get(b"GET /live/a.m3u8?token=t HTTP/1.1\r\n\r\nGET /live/b") {
            Head::Get(g) => {
                assert_eq!((g.query.as_str(), g.head), ("token=t", 37));
                assert_eq!(g.target, Target::Playlist("a".into()));
            }
            _ => panic!("not parsed"),
        }
    }

    #[test]
    fn live_paths() {
        assert_eq!(target("/live/cam.flv"), Some(Target::Flv("cam".into())));
        assert_eq!(
            target("/live/a-b.m3u8"),
            Some(Target::Playlist("a-b".into()))
        );
        assert_eq!(
            target("/live/a-b-12.ts"),
            Some(Target::Segment("a-b".into(), 12))
        );
        for bad in [
            "/live/.flv",
            "/live/x/y.flv",
            "/live/cam",
            "/live/cam-.ts",
            "/live/cam-1x.ts",
            "/live/cam-99999999999999999999.ts",
            "/other/cam.flv",
            "/live/..flv",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }
}
