//! The services of one shard: one [`Handler`] per service, indexed by the service id that
//! each listener carries and each connection records. The shard loop calls a connection's
//! events on its own service's handler, and marks which service is running
//! ([`Shard::caller`]) so that a handler acts on its own connections only.

use super::conn::Shard;
use super::control::ControlMsg;
use super::handler::{Handler, HandlerStats};

/// The handlers of one shard, by service id (at most 255: [`super::conn::ENGINE`] is taken).
pub struct Services {
    handlers: Vec<Box<dyn Handler>>,
}

impl Services {
    /// The shard's handlers; service `i` is `handlers[i]`.
    pub fn new(mut handlers: Vec<Box<dyn Handler>>) -> Self {
        handlers.truncate(super::conn::ENGINE as usize);
        Self { handlers }
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// Run `f` on the handler of `service`, with the shard marked as running that service
    /// (restored afterwards, so calls nest). `None` when there is no such service.
    pub fn call<R>(
        &mut self,
        io: &mut Shard,
        service: u8,
        f: impl FnOnce(&mut dyn Handler, &mut Shard) -> R,
    ) -> Option<R> {
        let h = self.handlers.get_mut(service as usize)?;
        let prev = std::mem::replace(&mut io.caller, service);
        let r = f(h.as_mut(), io);
        io.caller = prev;
        Some(r)
    }

    /// Run `f` on every service's handler in turn (round ends, shutdown).
    pub fn each(&mut self, io: &mut Shard, mut f: impl FnMut(&mut dyn Handler, &mut Shard)) {
        for i in 0..self.handlers.len() {
            self.call(io, i as u8, &mut f);
        }
    }

    /// Offer a control message to each service in turn until one takes it; one nobody takes
    /// is dropped (e.g. a hub event on a shard whose listeners serve only echo).
    pub fn control(&mut self, io: &mut Shard, msg: ControlMsg) {
        let mut msg = Some(msg);
        for i in 0..self.handlers.len() {
            let Some(m) = msg.take() else { return };
            msg = self
                .call(io, i as u8, |h, io| h.on_control(io, m))
                .flatten();
        }
        if msg.is_some() {
            tracing::debug!(shard = io.shard, "control message no service took: dropped");
        }
    }

    /// Every service's figures combined: counters and gauges add up; ready when all are.
    pub fn stats(&self) -> HandlerStats {
        let mut all = HandlerStats {
            ready: true,
            ..HandlerStats::default()
        };
        for h in &self.handlers {
            all.merge(&h.stats());
        }
        all
    }
}
