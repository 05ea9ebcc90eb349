//! The presence registry (the "Varys" role): which user is connected on which gateway, in a
//! JetStream KV bucket.
//!
//! Keys: `u.<user>.<gw>.<conn>` per logged-in connection, `r.<gw>.<conn>.<group>` per room
//! membership, `g.<gw>` per gateway (value: its open and logged-in connection counts,
//! `open=N logged_in=M`). The bucket keeps one
//! revision per key (`history = 1`) and its `max_age` is the **lease**: a bridge re-puts all
//! its keys every lease/3, so the keys of a gateway that died (or lost NATS) expire within
//! one lease. Logout removes the key's only message (a filtered stream purge), so a key
//! that is gone leaves no delete marker and the bucket holds exactly the live entries:
//! counts are one stream-info request with a subject filter. Lookups by user id take their
//! candidates from a local index fed by a watch ([`crate::user_index`]) and check each by a
//! direct get of its key.

use crate::envelope::ConnAddr;
use crate::subjects::{self, PRESENCE_BUCKET};
use crate::user_index::UserIndex;
use anyhow::{anyhow, Context as _};
use async_nats::jetstream::{self, kv, stream};

use futures_util::TryStreamExt;
use std::time::Duration;

/// A handle on the registry bucket.
#[derive(Clone)]
pub struct Registry {
    js: jetstream::Context,
    kv: kv::Store,
    stream: stream::Stream,
    /// Candidates for lookups by user id (workers; `None`: every lookup scans).
    index: Option<std::sync::Arc<UserIndex>>,
}

impl Registry {
    /// Opens the bucket, creating it with this `lease` and replica count if it is missing
    /// (an existing bucket keeps its own settings).
    pub async fn open(
        js: &jetstream::Context,
        lease: Duration,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        // The bucket's stream is created here with the settings a KV client would use
        // (`create_key_value` first asks for account info in a shape nats-server 2.9 does
        // not send).
        let cfg = stream::Config {
            name: format!("KV_{PRESENCE_BUCKET}"),
            subjects: vec![format!("$KV.{PRESENCE_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: lease,
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        // An existing bucket keeps its settings; of two creators racing, the loser uses the
        // winner's bucket.
        if js.get_stream(&cfg.name).await.is_err() {
            if let Err(e) = js.create_stream(cfg.clone()).await {
                js.get_stream(&cfg.name)
                    .await
                    .map_err(|_| anyhow!("presence bucket: {e}"))?;
            }
        }
        let kv = js
            .get_key_value(PRESENCE_BUCKET)
            .await
            .map_err(|e| anyhow!("presence bucket: {e}"))?;
        let stream = js
            .get_stream(format!("KV_{PRESENCE_BUCKET}"))
            .await
            .context("presence bucket stream")?;
        Ok(Registry {
            js: js.clone(),
            kv,
            stream,
            index: None,
        })
    }

    /// Starts a local index of the user keys (a KV watch of `u.>`) for fast lookups by user
    /// id (see [`Registry::lookup`]); for processes that look up, not for the bridge.
    pub async fn with_user_index(mut self) -> anyhow::Result<Self> {
        let lease = self.lease().await?;
        self.index = Some(UserIndex::start(self.kv.clone(), lease));
        Ok(self)
    }

    /// Whether lookups are answered from the local index (it has replayed the bucket).
    pub fn index_ready(&self) -> bool {
        self.index.as_ref().is_some_and(|i| i.is_ready())
    }

    /// The subject a key's messages are stored under.
    pub fn key_subject(key: &str) -> String {
        format!("$KV.{PRESENCE_BUCKET}.{key}")
    }

    /// The bucket's lease (`max_age`).
    pub async fn lease(&self) -> anyhow::Result<Duration> {
        let mut s = self.stream.clone();
        Ok(s.info().await?.config.max_age)
    }

    /// Puts `value` under `key` without waiting for the store's ack; await the returned
    /// future for it (the bridge keeps many in flight).
    pub async fn put_nowait(
        &self,
        key: &str,
        value: bytes::Bytes,
    ) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        Ok(self.js.publish(Self::key_subject(key), value).await?)
    }

    /// Logs `conn` in as `user` (and waits until stored).
    pub async fn login(&self, user: &str, conn: &ConnAddr) -> anyhow::Result<()> {
        check(user)?;
        self.kv
            .put(
                subjects::user_key(user, &conn.gw, conn.conn),
                bytes::Bytes::new(),
            )
            .await?;
        Ok(())
    }

    /// Removes a key (no delete marker is left).
    pub async fn remove(&self, key: &str) -> anyhow::Result<()> {
        self.stream.purge().filter(Self::key_subject(key)).await?;
        Ok(())
    }

    /// Logs `conn` out of `user`.
    pub async fn logout(&self, user: &str, conn: &ConnAddr) -> anyhow::Result<()> {
        check(user)?;
        self.remove(&subjects::user_key(user, &conn.gw, conn.conn))
            .await
    }

    /// Keys matching a filter (below the bucket prefix), e.g. `u.alice.*.*`.
    async fn keys(&self, filter: &str) -> anyhow::Result<Vec<String>> {
        let prefix = Self::key_subject("");
        let mut out = Vec::new();
        let mut it = self
            .stream
            .info_with_subjects(Self::key_subject(filter))
            .await?;
        while let Some((subject, _count)) = it.try_next().await? {
            if let Some(k) = subject.strip_prefix(&prefix) {
                out.push(k.to_string());
            }
        }
        Ok(out)
    }

    /// Every connection of `user`, on any gateway.
    ///
    /// With the local index ready: each candidate it holds is checked by a direct get of its
    /// literal key (removed and expired keys are not returned); a login is seen once the
    /// index's watch has delivered it. Otherwise: [`Registry::lookup_scan`].
    pub async fn lookup(&self, user: &str) -> anyhow::Result<Vec<ConnAddr>> {
        check(user)?;
        let Some(cands) = self.index.as_ref().and_then(|i| i.candidates(user)) else {
            return self.lookup_scan(user).await;
        };
        // The checks run concurrently: a user's connections cost one round trip, not one each.
        let checks = cands.into_iter().map(|a| async move {
            let key = Self::key_subject(&subjects::user_key(user, &a.gw, a.conn));
            match self
                .stream
                .direct_get_builder()
                .last_by_subject(key)
                .send()
                .await
            {
                Ok(_) => Ok(Some(a)),
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow!("registry lookup: {e}")),
            }
        });
        let mut v: Vec<ConnAddr> = futures_util::future::try_join_all(checks)
            .await?
            .into_iter()
            .flatten()
            .collect();
        v.sort();
        Ok(v)
    }

    /// Every connection of `user`, on any gateway, without the index.
    ///
    /// Direct gets with `next_by_subj` on `u.<user>.>`, from sequence 1 on, until none is left:
    /// each answers the next live key of this user (purged and expired keys are gone from the
    /// stream), so the result is the bucket's state as the answering replica holds it. Any
    /// replica answers (`allow_direct`), so a lookup can miss a login that replica has not yet
    /// applied (milliseconds behind the leader). A stream-info request with the same filter
    /// costs a scan of every subject on the leader (nats-server 2.9), see docs/benchmarks.md;
    /// this one a scan of the messages on one replica (still linear in the bucket's size).
    pub async fn lookup_scan(&self, user: &str) -> anyhow::Result<Vec<ConnAddr>> {
        check(user)?;
        let filter = Self::key_subject(&format!("u.{user}.>"));
        let prefix = Self::key_subject("");
        let mut v = Vec::new();
        let mut seq = 1;
        // Bounded: each answer's sequence is above the last one's; the cap keeps one lookup's
        // requests finite and is reported rather than truncating the answer.
        loop {
            if v.len() >= LOOKUP_MAX {
                return Err(anyhow!(
                    "registry lookup: {user} has over {LOOKUP_MAX} connections"
                ));
            }
            let m = match self
                .stream
                .direct_get_builder()
                .next_by_subject(filter.clone())
                .sequence(seq)
                .send()
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(anyhow!("registry lookup: {e}")),
            };
            if m.sequence < seq {
                return Err(anyhow!("registry lookup: sequence went back"));
            }
            let key = m.subject.strip_prefix(prefix.as_str()).unwrap_or_default();
            if let Some((u, a)) = parse_user_key(key) {
                if u == user {
                    v.push(a);
                }
            }
            seq = m.sequence + 1;
        }
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Logged-in connections on gateway `gw` (`None`: on every gateway).
    pub async fn count(&self, gw: Option<&str>) -> anyhow::Result<usize> {
        let filter = match gw {
            Some(gw) => {
                check(gw)?;
                format!("u.*.{gw}.*")
            }
            None => "u.>".to_string(),
        };
        Ok(self.keys(&filter).await?.len())
    }

    /// Logged-in connections of gateway `gw`, with their users.
    pub async fn keys_of_gateway(&self, gw: &str) -> anyhow::Result<Vec<(String, ConnAddr)>> {
        check(gw)?;
        Ok(self
            .keys(&format!("u.*.{gw}.*"))
            .await?
            .iter()
            .filter_map(|k| parse_user_key(k))
            .collect())
    }

    /// Room memberships of gateway `gw`'s connections, as `(conn, group)`.
    pub async fn memberships_of_gateway(&self, gw: &str) -> anyhow::Result<Vec<(u64, u64)>> {
        check(gw)?;
        Ok(self
            .keys(&format!("r.{gw}.*.*"))
            .await?
            .iter()
            .filter_map(|k| {
                let mut it = k.split('.').skip(2);
                Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
            })
            .collect())
    }

    /// Gateways whose key is live, with their own counts `(gw, open, logged_in)`.
    pub async fn gateways(&self) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let mut v = Vec::new();
        for k in self.keys("g.*").await? {
            let Some(gw) = k.strip_prefix("g.") else {
                continue;
            };
            let Some(val) = self.kv.get(&k).await? else {
                continue;
            };
            let (open, logged) = parse_gw_value(&val).unwrap_or((0, 0));
            v.push((gw.to_string(), open, logged));
        }
        v.sort();
        Ok(v)
    }
}

/// Connections of one user a lookup returns at most (a bound on the direct gets one lookup makes).
const LOOKUP_MAX: usize = 4096;

fn check(token: &str) -> anyhow::Result<()> {
    if subjects::valid_token(token) {
        Ok(())
    } else {
        Err(anyhow!(
            "invalid id {token:?}: 1..=128 bytes of [A-Za-z0-9_=-]"
        ))
    }
}

/// `u.<user>.<gw>.<conn>` → (user, address).
pub fn parse_user_key(k: &str) -> Option<(String, ConnAddr)> {
    let mut it = k.split('.');
    let (u, user, gw, conn) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if u != "u" || it.next().is_some() {
        return None;
    }
    Some((
        user.to_string(),
        ConnAddr {
            gw: gw.to_string(),
            conn: conn.parse().ok()?,
        },
    ))
}

/// The value of a gateway key.
pub fn gw_value(open: u64, logged_in: u64) -> String {
    format!("open={open} logged_in={logged_in}")
}

/// Parses [`gw_value`].
pub fn parse_gw_value(b: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(b).ok()?;
    let mut open = None;
    let mut logged = None;
    for part in s.split(' ') {
        match part.split_once('=')? {
            ("open", v) => open = v.parse().ok(),
            ("logged_in", v) => logged = v.parse().ok(),
            _ => {}
        }
    }
    Some((open?, logged?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_parse() {
        let (u, a) = parse_user_key("u.alice.gw2.77").unwrap();
        assert_eq!((u.as_str(), a.gw.as_str(), a.conn), ("alice", "gw2", 77));
        assert!(parse_user_key("u.alice.gw2").is_none());
        assert!(parse_user_key("u.alice.gw2.x").is_none());
        assert!(parse_user_key("g.gw2").is_none());
        assert_eq!(parse_gw_value(gw_value(5, 3).as_bytes()), Some((5, 3)));
        assert_eq!(parse_gw_value(b"open=1"), None);
    }
}
