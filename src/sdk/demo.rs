//! The demo service started by `corelay demo`: chat rooms on `/room/NAME` (every message is
//! published to the room), `/whoami` (every message is answered with what the backend was told
//! about the connection), media sessions on `/media/SESSION` (the control channel: the member
//! is admitted at once; text `leave` evicts its media, `join` admits it again), echo on every
//! other path, and optional token authentication.

use super::{group_id, ConnId, Ctx, DataKind, OpenRequest, PeerAddr, Service, Verdict};
use crate::proto::media::MediaKind;

/// Rooms + echo (+ token check when `token` is set).
#[derive(Debug, Default)]
pub struct DemoService {
    /// If set, clients must present `?token=...` or `Authorization: Bearer ...`.
    pub token: Option<String>,
    /// If set, echoed replies are prefixed with it (tells backends apart in tests and demos).
    pub tag: Option<String>,
    rooms: std::collections::HashMap<ConnId, u64>,
    /// `/whoami` connections: the description of what their `Open` carried.
    whoami: std::collections::HashMap<ConnId, String>,
    /// `/media/SESSION` control channels and their admission.
    media: std::collections::HashMap<ConnId, Admission>,
}

/// A demo media admission, parsed from the control channel's query: `member=ID`,
/// `media=audio,video` (the types it may use; default both), `audio=SSRC`, `video=SSRC`,
/// `content=SSRC` (what it may send).
#[derive(Debug, Clone)]
struct Admission {
    session: u64,
    member: u64,
    media: Vec<MediaKind>,
    streams: Vec<(u32, MediaKind)>,
}

impl Admission {
    fn parse(session: &str, req: &OpenRequest<'_>) -> Option<Self> {
        let member = req.query_param("member")?.parse().ok()?;
        let kinds = [
            ("audio", MediaKind::Audio),
            ("video", MediaKind::Video),
            ("content", MediaKind::Content),
        ];
        let media = match req.query_param("media") {
            Some(list) => list
                .split(',')
                .map(|n| kinds.iter().find(|(k, _)| *k == n).map(|(_, v)| *v))
                .collect::<Option<Vec<_>>>()?,
            None => vec![MediaKind::Audio, MediaKind::Video],
        };
        let mut streams = Vec::new();
        for (name, k) in kinds {
            if let Some(v) = req.query_param(name) {
                streams.push((v.parse().ok()?, k));
            }
        }
        Some(Self {
            session: group_id(session),
            member,
            media,
            streams,
        })
    }

    fn admit(&self, ctx: &mut Ctx<'_>, conn: ConnId) -> bool {
        ctx.admit(conn, self.session, self.member, &self.media, &self.streams)
            .is_ok()
    }
}

impl DemoService {
    /// A demo service; `token` enables authentication.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token,
            tag: None,
            rooms: Default::default(),
            whoami: Default::default(),
            media: Default::default(),
        }
    }
}

/// Whether the request carries `token` (query `token=` or `Authorization: Bearer`).
pub fn has_token(req: &OpenRequest<'_>, token: &str) -> bool {
    let bearer = req
        .header("authorization")
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .is_some_and(|v| v == token.as_bytes());
    bearer || req.query_param("token") == Some(token)
}

impl Service for DemoService {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        if let Some(t) = &self.token {
            if !has_token(req, t) {
                return Verdict::Reject(401);
            }
        }
        if let Some(room) = req.path.strip_prefix("/room/").filter(|r| !r.is_empty()) {
            let g = group_id(room);
            self.rooms.insert(conn, g);
            // Joining before the accept is fine: the gateway knows the connection already.
            ctx.join(conn, g);
            return Verdict::Accept(None);
        }
        if let Some(session) = req.path.strip_prefix("/media/").filter(|r| !r.is_empty()) {
            let Some(a) = Admission::parse(session, req) else {
                return Verdict::Reject(400);
            };
            // Admitting before the accept is fine: the gateway sends the credentials once
            // the channel is open.
            if !a.admit(ctx, conn) {
                return Verdict::Reject(400);
            }
            self.media.insert(conn, a);
            return Verdict::Accept(None);
        }
        if req.path == "/whoami" {
            self.whoami.insert(conn, describe(req));
        }
        Verdict::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        if let Some(w) = self.whoami.get(&conn) {
            return ctx.reply(DataKind::Text, w.as_bytes());
        }
        if let Some(a) = self.media.get(&conn) {
            match payload {
                b"leave" => ctx.evict(conn),
                b"join" => {
                    a.admit(ctx, conn);
                }
                _ => {}
            }
            return ctx.done();
        }
        match self.rooms.get(&conn) {
            Some(&g) => {
                ctx.publish(g, kind, payload);
                // The sender gets the publish like every member; no reply of its own.
                ctx.done();
            }
            None => match &self.tag {
                Some(t) => {
                    let mut v = t.as_bytes().to_vec();
                    v.extend_from_slice(payload);
                    ctx.reply(kind, &v);
                }
                None => ctx.reply(kind, payload),
            },
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _code: u16, _reason: &[u8]) {
        self.rooms.remove(&conn);
        self.whoami.remove(&conn);
        self.media.remove(&conn);
    }
}

/// `protocol=ws peer=IP:PORT headers=name:value,...` (lossy UTF-8).
fn describe(req: &OpenRequest<'_>) -> String {
    let peer = match req.peer {
        PeerAddr::Ip(a) => a.to_string(),
        PeerAddr::Unknown => "unknown".into(),
    };
    let headers: Vec<String> = req
        .headers
        .iter()
        .map(|(n, v)| {
            format!(
                "{}:{}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(v)
            )
        })
        .collect();
    format!(
        "protocol={:?} peer={peer} headers={}",
        req.protocol,
        headers.join(",")
    )
}
