//! The demo service started by `corelay demo`: chat rooms on `/room/NAME` (every message is
//! published to the room), `/whoami` (every message is answered with what the backend was told
//! about the connection), echo on every other path, and optional token authentication.

use super::{group_id, ConnId, Ctx, DataKind, OpenRequest, PeerAddr, Service, Verdict};

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
}

impl DemoService {
    /// A demo service; `token` enables authentication.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token,
            tag: None,
            rooms: Default::default(),
            whoami: Default::default(),
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
        if req.path == "/whoami" {
            self.whoami.insert(conn, describe(req));
        }
        Verdict::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        if let Some(w) = self.whoami.get(&conn) {
            return ctx.reply(DataKind::Text, w.as_bytes());
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
