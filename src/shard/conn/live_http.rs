//! Live egress on the ws/wss listeners: `GET /live/NAME.flv` (HTTP-FLV, chunked),
//! `GET /live/NAME.m3u8` and `GET /live/NAME-SEQ.ts` (HLS), and the WebSocket upgrade on
//! `/live/NAME.flv` (FLV in binary messages). Each is authorized like an upgrade; HLS
//! requests are answered whole and the connection closes (`Connection: close`).

use super::live::{authorize, LiveConn, Request, Role};
use super::live_pump::Viewer;
use super::{CloseCause, Shard};
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

/// A request head that is not a WebSocket upgrade: serve it if it is a live GET. Returns
/// the bytes consumed, or `None` when it is not one (the caller refuses it as before).
pub(super) fn route_get(
    io: &mut Shard,
    h: &mut dyn Handler,
    id: ConnId,
    buf: &[u8],
) -> Option<usize> {
    io.live.as_ref().filter(|l| l.hub.config().http)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.method != Some("GET") {
        return None;
    }
    let (path, query) = match req.path?.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path?, ""),
    };
    let t = target(path)?;
    let (egress, name, segment) = match t {
        Target::Flv(n) => (LiveEgress::HttpFlv, n, None),
        Target::Playlist(n) => (LiveEgress::Hls, n, None),
        Target::Segment(n, s) => (LiveEgress::Hls, n, Some(s)),
    };
    let query = query.to_owned();
    start(io, h, id, egress, name, segment, None, &query);
    Some(head)
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
    start(io, h, id, LiveEgress::WsFlv, name, None, key, &query);
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
        let Some(stream) = hub.find_hls(&req.name) else {
            respond_status(io, id, 404);
            return false;
        };
        let body = match req.segment {
            None => stream
                .playlist()
                .map(|p| ("application/vnd.apple.mpegurl", bytes::Bytes::from(p))),
            Some(seq) => stream.segment(seq).map(|s| ("video/mp2t", s)),
        };
        let Some((ctype, body)) = body else {
            respond_status(io, id, 404);
            return false;
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n",
            body.len()
        );
        io.stage(id, |out| {
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&body);
        });
        stream.count_out((head.len() + body.len()) as u64);
        io.set_cause(id, CloseCause::Local, 1000);
        io.begin_drain(id);
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
    io.add_viewer(id, &stream);
    let cfg = hub.config();
    let mut v = Viewer::new(
        stream,
        req.egress,
        cfg.viewer_queue_bytes,
        Duration::from_millis(cfg.mw_latency_ms),
        join,
        req.at,
    );
    v.schedule();
    if let Some(l) = io.live.as_mut() {
        l.waiting.push(id);
    }
    if let Some(l) = io.live_conn(id) {
        l.role = Role::Viewer(Box::new(v));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

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
