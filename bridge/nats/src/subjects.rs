//! Every subject, stream and bucket name (docs/scale-out.md "Subjects").

/// JetStream work-queue stream holding connection events until a worker acks them.
pub const REQ_STREAM: &str = "CORELAY_REQ";
/// The subjects of [`REQ_STREAM`].
pub const REQ_ALL: &str = "corelay.req.>";
/// Presence registry: a JetStream KV bucket whose `max_age` is the lease.
pub const PRESENCE_BUCKET: &str = "corelay_presence";

/// Events (Open, Message, Closed) of gateway `gw`'s connections for route `route`.
pub fn req(route: u32, gw: &str) -> String {
    format!("corelay.req.{route}.{gw}")
}

/// Filter of the durable consumer that the workers of `route` share.
pub fn req_filter(route: u32) -> String {
    format!("corelay.req.{route}.*")
}

/// Name of that durable consumer.
pub fn req_consumer(route: u32) -> String {
    format!("route-{route}")
}

/// Where gateway `gw`'s bridge takes completions, pushes, joins, logins (requests: the
/// bridge answers once the record is in the gateway's ring).
pub fn gw_in(gw: &str) -> String {
    format!("corelay.gw.{gw}.in")
}

/// A room (ring group id in decimal): every bridge with a local member subscribes.
pub fn room(group: u64) -> String {
    format!("corelay.room.{group}")
}

/// Registry key of one logged-in connection.
pub fn user_key(user: &str, gw: &str, conn: u64) -> String {
    format!("u.{user}.{gw}.{conn}")
}

/// Registry key of one room membership: connection `conn` of gateway `gw` is a member of
/// group `group` (a restarted bridge re-subscribes the rooms of connections it adopts).
pub fn member_key(gw: &str, conn: u64, group: u64) -> String {
    format!("r.{gw}.{conn}.{group}")
}

/// Registry key of a gateway (its own count of connections; refreshed with the lease).
pub fn gw_key(gw: &str) -> String {
    format!("g.{gw}")
}

/// A subject/key token we accept from outside: 1..=128 bytes of `[A-Za-z0-9_=-]` (no `.`,
/// `*`, `>` or spaces, which would change what a subject matches).
pub fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(valid_token("alice_01-x="));
        for bad in ["", "a.b", "a*", ">", "a b", "é"] {
            assert!(!valid_token(bad), "{bad}");
        }
        assert!(!valid_token(&"a".repeat(129)));
        assert_eq!(req(0, "gw1"), "corelay.req.0.gw1");
        assert_eq!(user_key("alice", "gw1", 7), "u.alice.gw1.7");
        assert_eq!(member_key("gw1", 7, 42), "r.gw1.7.42");
    }
}
