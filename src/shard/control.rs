//! Typed control-path messages: what the main thread and the backend hub hand a shard's
//! handler through the shard's inbox ([`GatewayHandle::deliver`](super::GatewayHandle::deliver)
//! → [`Handler::on_control`](super::handler::Handler::on_control)).
//!
//! The payloads are ring halves (the `ring` layer sits below the engine); the engine only
//! carries them to the handler, it never looks inside.

use crate::ring::{Consumer, Doorbells, GatewaySide};

/// One control message for a shard's handler.
pub enum ControlMsg {
    /// From the backend hub: a slot's rings, attaches and detaches.
    Hub(HubEvent),
}

/// Messages from the hub to a shard's handler (delivered through the shard's control inbox).
pub enum HubEvent {
    /// A slot's rings for this shard exist; the shard owns the gateway side from now on.
    SlotReady {
        /// Slot number.
        slot: u8,
        /// Route id served by the slot's backends (0 = default).
        route: u32,
        /// The gateway's producer (to_backend) and consumer (to_gateway).
        side: Box<GatewaySide>,
        /// The region's doorbells (the shard registers two of them in its epoll set).
        bells: Doorbells,
    },
    /// A backend process took the slot.
    Attached {
        /// Slot number.
        slot: u8,
        /// The backend's pid.
        pid: i32,
    },
    /// The slot's backend went away. With `takeover`, another backend of the same route is
    /// attached: the shard hands it what the slot's `to_backend` ring still holds (read with
    /// this consumer, from `committed`) and rebinds the slot's connections to it, then reports
    /// `HubShared::handed_over` (backend plane). Without, the messages wait in the rings for the next backend.
    Detached {
        /// Slot number.
        slot: u8,
        /// The successor slot and a consumer of this shard's `to_backend` ring of `slot`.
        takeover: Option<(u8, Box<Consumer>)>,
    },
}
