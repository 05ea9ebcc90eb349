//! Authentication lives in the backend: the gateway forwards the upgrade request (path,
//! query, chosen headers) and completes or refuses the upgrade as told.
//! Clients present `?token=T` or `Authorization: Bearer T`; others get HTTP 401.
//!
//! ```sh
//! cargo run --example auth_backend -- --attach /tmp/corelay.sock --token s3cret
//! ```

use corelay::sdk::demo::has_token;
use corelay::sdk::{Backend, ConnId, Ctx, DataKind, OpenRequest, Service, Verdict};

struct Auth {
    token: String,
}

impl Service for Auth {
    fn on_open(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        if has_token(req, &self.token) {
            Verdict::Accept(None)
        } else {
            Verdict::Reject(401)
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, _conn: ConnId, kind: DataKind, payload: &[u8]) {
        ctx.reply(kind, payload);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let path = get("--attach").ok_or("usage: auth_backend --attach PATH [--token T]")?;
    let token = get("--token").unwrap_or_else(|| "secret".into());
    let mut backend = Backend::attach(&path)?;
    eprintln!("auth backend attached to {path}");
    backend.run(&mut Auth { token })?;
    Ok(())
}
