//! Slot choice: the table of backend slots a shard knows, and which slot serves a new
//! connection (healthy attached slots of the default route in turn) or a message carrying a
//! route key (`backend.route_field` → `backend.routes`, sticky per connection).

use crate::config::BackendConfig;
use crate::ring::{Doorbells, GatewaySide};
use crate::shard::conn_table::ConnId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

type Set<T> = HashSet<T, ahash::RandomState>;
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// One backend slot's rings on this shard, and what the shard knows of its backend.
pub(super) struct Slot {
    pub(super) route: u32,
    pub(super) side: GatewaySide,
    pub(super) bells: Doorbells,
    pub(super) attached: bool,
    /// Parked waiting for ring space (the backend rings `to_backend_space`).
    pub(super) space_parked: bool,
    pub(super) heartbeat: Option<(Duration, Instant)>,
    /// Doorbells are in the shard's epoll set.
    pub(super) registered: bool,
}

/// The slots of one shard and the routing rules.
pub(super) struct Router {
    pub(super) slots: Vec<Option<Slot>>,
    /// Slots whose rings were retired (corrupt): never used again.
    pub(super) dead: Set<u8>,
    next_rr: usize,
    route_field: String,
    routes: Map<Vec<u8>, u32>,
}

impl Router {
    pub(super) fn new(cfg: &BackendConfig) -> Self {
        Self {
            slots: Vec::new(),
            dead: Set::default(),
            next_rr: 0,
            route_field: cfg.route_field.clone(),
            routes: cfg
                .routes
                .iter()
                .map(|(k, &v)| (k.as_bytes().to_vec(), v))
                .collect(),
        }
    }

    /// Whether messages are routed by a key in their payload (`backend.route_field` set).
    pub(super) fn keyed(&self) -> bool {
        !self.route_field.is_empty()
    }

    /// Pick a slot for a new connection: attached and healthy slots in turn; with none, the
    /// first usable slot (its messages wait there for a backend).
    pub(super) fn pick_slot(&mut self) -> Option<u8> {
        let now = Instant::now();
        let usable: Vec<u8> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let alive = s
                    .heartbeat
                    .is_none_or(|(t, last)| now.duration_since(last) < t);
                (s.attached && alive && s.route == 0).then_some(i as u8)
            })
            .collect();
        if !usable.is_empty() {
            self.next_rr = self.next_rr.wrapping_add(1);
            return Some(usable[self.next_rr % usable.len()]);
        }
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.route == 0))
            .map(|i| i as u8)
    }

    /// The slot for a message with a route key: one of the route's slots, the same for every
    /// message of the connection (chosen by its id).
    pub(super) fn keyed_slot(&self, conn: ConnId, payload: &[u8]) -> Option<u8> {
        let key = crate::proto::route_key::json_field(payload, &self.route_field)?;
        let route = *self.routes.get(key)?;
        // Slots with a backend first: a slot whose backend left (and was handed over) gets
        // keyed messages only when no backend of the route is attached.
        let live = self.slots.iter().enumerate().any(|(i, s)| {
            s.as_ref().is_some_and(|s| s.route == route && s.attached)
                && !self.dead.contains(&(i as u8))
        });
        let serves = |(i, s): &(usize, &Option<Slot>)| {
            s.as_ref()
                .is_some_and(|s| s.route == route && (s.attached || !live))
                && !self.dead.contains(&(*i as u8))
        };
        // Counted, then picked: no allocation per keyed message.
        let n = self.slots.iter().enumerate().filter(serves).count();
        if n == 0 {
            return None;
        }
        let h = conn.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .filter(serves)
            .nth(h as usize % n)?;
        Some(i as u8)
    }
}
