//! The connection process (docs/connection-process.md): the client ladder (lookup, zone test,
//! MMR, control channel, media transport race, proxy, tunnels, reconnect, report) and the
//! servers it talks to besides the MMRs: the zone controller, the lookup example, the tunnel.

pub mod http;
pub mod join;
pub mod ladder;
pub mod lookup;
pub mod media;
pub mod net;
pub mod pump;
pub mod server;
pub mod tunnel;
pub mod zone;
