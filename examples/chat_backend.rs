//! Chat rooms with fan-out in the gateway: a client connecting to `/room/NAME` joins the
//! group `group_id(NAME)`; each message it sends is published to the group once per shard,
//! and the gateway delivers it to every member.
//!
//! ```sh
//! cargo run --example chat_backend -- --attach /tmp/corelay.sock
//! ```

use corelay::sdk::{group_id, Backend, ConnId, Ctx, DataKind, OpenRequest, Service, Verdict};
use std::collections::HashMap;

#[derive(Default)]
struct Chat {
    room_of: HashMap<ConnId, u64>,
}

impl Service for Chat {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        let Some(room) = req.path.strip_prefix("/room/").filter(|r| !r.is_empty()) else {
            return Verdict::Reject(404);
        };
        let g = group_id(room);
        ctx.join(conn, g);
        self.room_of.insert(conn, g);
        Verdict::Accept(None)
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        if let Some(&g) = self.room_of.get(&conn) {
            ctx.publish(g, kind, payload);
        }
    }

    fn on_closed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _code: u16, _reason: &[u8]) {
        // The gateway drops the membership itself; forget our side.
        self.room_of.remove(&conn);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--attach"), Some(p)) => p,
        _ => return Err("usage: chat_backend --attach PATH".into()),
    };
    let mut backend = Backend::attach(&path)?;
    eprintln!("chat backend attached to {path}");
    backend.run(&mut Chat::default())?;
    Ok(())
}
