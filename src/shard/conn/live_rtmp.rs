//! RTMP (and RTMPS) connections: the protocol layer of a connection from an RTMP listener.
//! Plaintext in → [`RtmpSession`] events: `publish` and `play` are authorized like an
//! upgrade (`live::authorize`), a publisher's media tags go to its stream in the hub, a
//! player becomes a viewer whose tags the session chunks. The session's answers are staged
//! as the connection's output.

use super::live::{authorize, LiveConn, Request, Role};
use super::live_pump::Viewer;
use super::{CloseCause, ConnState, Shard};
use crate::live::PublishError;
use crate::proto::rtmp::session::{Event, SessionConfig};
use crate::proto::rtmp::RtmpSession;
use crate::shard::conn_table::ConnId;
use crate::shard::handler::{Handler, LiveAction, LiveEgress};
use std::time::{Duration, Instant};

/// A new RTMP session for a connection of an RTMP listener.
pub(super) fn new_conn(id_seed: u64) -> LiveConn {
    LiveConn::rtmp(RtmpSession::new(SessionConfig {
        seed: id_seed ^ 0x9E37_79B9_7F4A_7C15,
        ..SessionConfig::default()
    }))
}

/// Stage what the session has to send.
fn flush_session(io: &mut Shard, id: ConnId) {
    let Some(s) = io.live_conn(id).and_then(|l| l.rtmp.as_deref_mut()) else {
        return;
    };
    if s.pending_output().is_empty() {
        return;
    }
    let o = s.pending_output().to_vec();
    s.advance_output(o.len());
    io.stage(id, |b| b.extend_from_slice(&o));
}

/// Feed plaintext to the session; returns how much it consumed (the rest is kept).
pub(super) fn process(io: &mut Shard, h: &mut dyn Handler, id: ConnId, buf: &[u8]) -> usize {
    let mut off = 0;
    loop {
        match io.conns.get(id).map(|c| c.life.state()) {
            Some(ConnState::Handshake | ConnState::Open) => {}
            Some(ConnState::AwaitOpen) => break,
            _ => return buf.len(),
        }
        let Some(l) = io.live_conn(id) else {
            return buf.len();
        };
        let Some(s) = l.rtmp.as_deref_mut() else {
            return buf.len();
        };
        let (n, r) = s.poll(&buf[off..]);
        off += n;
        let ev = match r {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(?id, error = %e, "RTMP session failed");
                flush_session(io, id);
                io.set_cause(id, CloseCause::Protocol, 1002);
                io.begin_drain(id);
                return buf.len();
            }
        };
        on_event(io, h, id, ev);
        flush_session(io, id);
    }
    flush_session(io, id);
    off
}

fn on_event(io: &mut Shard, h: &mut dyn Handler, id: ConnId, ev: Event) {
    match ev {
        Event::Media { tag, .. } => {
            let Some(l) = io.live_conn(id) else { return };
            if let Role::Publisher(stream) = &l.role {
                let stream = stream.clone();
                if let Some(live) = io.live.as_ref() {
                    live.hub.push(&stream, id.0, tag);
                }
            }
        }
        Event::Publish {
            stream_name, query, ..
        } => {
            let busy = io
                .live
                .as_ref()
                .and_then(|l| l.hub.find(&stream_name))
                .is_some_and(|s| s.stats().publishing);
            if busy || !crate::live::valid_name(&stream_name) {
                refuse(io, id, LiveAction::Publish, "stream already published");
                return;
            }
            let req = request(LiveAction::Publish, stream_name);
            authorize(io, h, id, req, &query);
        }
        Event::Play {
            stream_name, query, ..
        } => {
            let exists = io
                .live
                .as_ref()
                .and_then(|l| l.hub.find(&stream_name))
                .is_some();
            if !exists {
                refuse(io, id, LiveAction::Play, "no such stream");
                return;
            }
            let req = request(LiveAction::Play, stream_name);
            authorize(io, h, id, req, &query);
        }
        Event::DeleteStream { .. } => {
            // The publication or playback ended; the connection may stay (and close soon).
            let Some(l) = io.live_conn(id) else { return };
            let role = std::mem::replace(&mut l.role, Role::Idle);
            let rtmp = l.rtmp.take();
            io.live_removed(id, LiveConn { rtmp: None, role });
            if let Some(l) = io.live_conn(id) {
                l.rtmp = rtmp;
            }
        }
        Event::Connect { .. } | Event::Closed { .. } => {}
    }
}

fn request(action: LiveAction, name: String) -> Request {
    Request {
        action,
        egress: LiveEgress::Rtmp,
        name,
        segment: None,
        ws_key: None,
        at: Instant::now(),
        keep_alive: false,
    }
}

/// Answer a refused publish or play and close once the answer is out.
pub(super) fn refuse(io: &mut Shard, id: ConnId, action: LiveAction, why: &str) {
    if let Some(s) = io.live_conn(id).and_then(|l| l.rtmp.as_deref_mut()) {
        let _ = match action {
            LiveAction::Publish => s.refuse_publish(why),
            LiveAction::Play => s.refuse_play(why),
        };
    }
    flush_session(io, id);
    io.set_cause(id, CloseCause::Rejected, 0);
    io.begin_drain(id);
}

/// The publish or play was allowed: claim the stream or join it.
pub(super) fn accepted(io: &mut Shard, id: ConnId, req: Request) -> bool {
    let Some(live) = io.live.as_ref() else {
        return false;
    };
    let hub = live.hub.clone();
    let role = match req.action {
        LiveAction::Publish => match hub.publish(&req.name, id.0) {
            Ok(stream) => {
                if let Some(s) = io.live_conn(id).and_then(|l| l.rtmp.as_deref_mut()) {
                    let _ = s.accept_publish();
                }
                Role::Publisher(stream)
            }
            Err(e) => {
                let why = match e {
                    PublishError::Busy => "stream already published",
                    PublishError::BadName => "invalid stream name",
                };
                refuse(io, id, req.action, why);
                return false;
            }
        },
        LiveAction::Play => {
            let Some((stream, join)) = hub
                .find(&req.name)
                .and_then(|s| s.join(io.shard).map(|j| (s, j)))
            else {
                refuse(io, id, req.action, "no such stream");
                return false;
            };
            if let Some(s) = io.live_conn(id).and_then(|l| l.rtmp.as_deref_mut()) {
                let _ = s.accept_play();
            }
            let cfg = hub.config();
            let mut v = Viewer::new(
                stream,
                LiveEgress::Rtmp,
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
            Role::Viewer(Box::new(v))
        }
    };
    flush_session(io, id);
    let now = io.now;
    let Some(c) = io.conns.get_mut(id) else {
        return false;
    };
    c.life.open(now);
    io.metrics.handshakes_ok += 1;
    if let Some(l) = io.live_conn(id) {
        l.role = role;
    }
    true
}
