//! The smallest backend: answers every message with itself.
//!
//! ```sh
//! corelay run --config corelay.toml            # backend.mode = "ring"
//! cargo run --example echo_backend -- --attach /tmp/corelay.sock
//! ```

use corelay::sdk::{Backend, ConnId, Ctx, DataKind, Service};

struct Echo;

impl Service for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, _conn: ConnId, kind: DataKind, payload: &[u8]) {
        ctx.reply(kind, payload);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = attach_arg()?;
    let mut backend = Backend::attach(&path)?;
    eprintln!(
        "echo backend attached to {path} ({} shards)",
        backend.shards()
    );
    backend.run(&mut Echo)?;
    Ok(())
}

/// `--attach PATH` (the gateway's backend.attach_socket).
fn attach_arg() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--attach"), Some(p)) => Ok(p),
        _ => Err("usage: echo_backend --attach PATH".into()),
    }
}
