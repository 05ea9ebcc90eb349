//! The backend behaviour that `corelay backend-check` drives (docs/backend-check.md), in Rust:
//! `corelay backend --contract`. The C example (sdk/c/examples) and the Python example
//! (sdk/python/examples) implement the same contract.

use super::{group_id, ConnId, Ctx, DataKind, Deferred, OpenRequest, Service, Verdict};
use std::collections::{HashMap, HashSet};

/// The token `/auth` requires (`?token=` or `Authorization: Bearer`).
pub const TOKEN: &str = "letmein";
/// The subprotocol `/proto` confirms when the client offers it.
pub const SUBPROTOCOL: &str = "check.v1";

/// The contract service. `tag` (env `CORELAY_TAG`) prefixes echoed replies.
#[derive(Debug, Default)]
pub struct CheckService {
    /// Prefix of echoed replies (tells backends apart).
    pub tag: String,
    open: HashSet<ConnId>,
    /// Per connection: the request put off by `hold:X`, and X.
    held: HashMap<ConnId, (Deferred, Vec<u8>)>,
}

impl CheckService {
    /// A contract service whose echoes carry `tag` in front.
    pub fn new(tag: String) -> Self {
        Self {
            tag,
            ..Default::default()
        }
    }
}

/// Whether a comma-separated `Sec-WebSocket-Protocol` value offers `want`.
fn offers(value: &[u8], want: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|p| p.trim_ascii() == want.as_bytes())
}

impl Service for CheckService {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        let verdict = match req.path {
            "/deny" => Verdict::Reject(403),
            "/auth" if !super::demo::has_token(req, TOKEN) => Verdict::Reject(401),
            "/proto"
                if req
                    .header("sec-websocket-protocol")
                    .is_some_and(|v| offers(v, SUBPROTOCOL)) =>
            {
                Verdict::Accept(Some(SUBPROTOCOL.into()))
            }
            _ => Verdict::Accept(None),
        };
        if matches!(verdict, Verdict::Accept(_)) {
            self.open.insert(conn);
        }
        verdict
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        let earlier = self.held.remove(&conn);
        let text = match kind {
            DataKind::Text => std::str::from_utf8(payload).ok(),
            DataKind::Binary => None,
        };
        match text {
            Some("count") => ctx.reply(DataKind::Text, self.open.len().to_string().as_bytes()),
            Some("close") => {
                ctx.close(conn, 4000, "bye");
                ctx.done();
            }
            Some(t) if t.starts_with("hold:") || t.starts_with("holdack:") => {
                let (x, ack) = match t.strip_prefix("hold:") {
                    Some(x) => (x, false),
                    None => (&t[8..], true),
                };
                if let Some(d) = ctx.defer() {
                    self.held.insert(conn, (d, x.as_bytes().to_vec()));
                    if ack {
                        // Pushed at once: tells the checker the request is now deferred.
                        ctx.send(conn, DataKind::Text, b"held");
                    }
                }
            }
            Some(t) if t.starts_with("join:") => {
                ctx.join(conn, group_id(&t[5..]));
                ctx.reply(DataKind::Text, format!("joined:{}", &t[5..]).as_bytes());
            }
            Some(t) if t.starts_with("leave:") => {
                ctx.leave(conn, group_id(&t[6..]));
                ctx.reply(DataKind::Text, format!("left:{}", &t[6..]).as_bytes());
            }
            Some(t) if t.starts_with("pub:") => match t[4..].split_once(':') {
                Some((room, m)) => {
                    ctx.publish(group_id(room), DataKind::Text, m.as_bytes());
                    ctx.done();
                }
                None => ctx.reply(kind, payload),
            },
            Some(t) if t.starts_with("push:") => {
                ctx.send(conn, DataKind::Text, &t.as_bytes()[5..]);
                ctx.reply(DataKind::Text, b"pushed");
            }
            _ => {
                let mut v = Vec::with_capacity(self.tag.len() + payload.len());
                v.extend_from_slice(self.tag.as_bytes());
                v.extend_from_slice(payload);
                ctx.reply(kind, &v);
            }
        }
        // The held request completes after this later one: out of order on purpose.
        if let Some((d, x)) = earlier {
            ctx.reply_to(d, DataKind::Text, &x);
        }
    }

    fn on_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, _code: u16, _reason: &[u8]) {
        self.open.remove(&conn);
        if let Some((d, _)) = self.held.remove(&conn) {
            ctx.done_with(d);
        }
    }
}
