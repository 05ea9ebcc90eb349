//! The connection lifecycle, sans-IO: the one writer of a connection's state, deadlines and
//! close cause/code. The engine feeds it inputs (bytes seen, open decided, close asked, a
//! wheel entry due) and acts on what it answers; it does no I/O and is tested without sockets.
//!
//! States (RFC 6455 §4, §7): `Handshake` → (`AwaitOpen` →) `Open` → `Closing` → `Draining`,
//! with `Draining` also reachable from every state (refusal, failure, peer close). The
//! `Opened` mark is set by the one transition into `Open`. The end is reported once: by
//! [`Lifecycle::report`] when the close begins (the `REPORTED` mark), else by
//! [`Lifecycle::ended`] at removal, which consumes the lifecycle.
//!
//! Layout: 12 bytes inside the connection record (the idle-record budget). Two tick fields
//! serve two meanings each, decided by the state; only this module reads them raw.

use super::close::CloseCause;
use crate::shard::timers::Tick;

/// Connection lifecycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnState {
    /// Waiting for a complete upgrade request.
    Handshake = 0,
    /// Upgrade request valid; the handler (backend) has not decided yet.
    AwaitOpen = 1,
    /// WebSocket open.
    Open = 2,
    /// We sent a close frame and wait for the peer's.
    Closing = 3,
    /// Flushing what is queued, then half-closing and discarding input until EOF.
    Draining = 4,
}

const STATE_MASK: u8 = 0x07;
/// The handler was told the connection ended (at the start of its close, not at removal).
const REPORTED: u8 = 0x08;
/// The upgrade completed (close codes are counted for these).
const OPENED: u8 = 0x10;
/// The handler knows of the connection (it accepted or left pending the upgrade): its end
/// is reported to it.
const ANNOUNCED: u8 = 0x20;
/// We sent a ping and have heard nothing since.
const PING_OUT: u8 = 0x40;

/// The timeouts the lifecycle enforces, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Allowed for the upgrade (request and open decision).
    pub handshake: Tick,
    /// Silence before a server ping (0 = no pings).
    pub ping: Tick,
    /// Silence before closing.
    pub idle: Tick,
    /// Allowed for a close handshake or drain.
    pub close: Tick,
}

impl Timing {
    /// The earliest keepalive deadline (ping or idle) a connection can have once it is open.
    pub fn first_check(&self) -> Tick {
        let ping = if self.ping > 0 { self.ping } else { Tick::MAX };
        ping.min(self.idle).max(1)
    }
}

/// What the engine must do for a wheel entry of this connection that came round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Not the deadline entry: the connection's second entry, the TLS shrink check.
    ShrinkCheck,
    /// Nothing due: schedule the entry at this tick, then report where it landed with
    /// [`Lifecycle::entry_at`].
    Reschedule(Tick),
    /// Send a ping, schedule the entry at this tick (the idle deadline) and report it.
    Ping(Tick),
    /// Silent past the idle timeout: start the close handshake (1001).
    IdleTimeout,
    /// Remove the connection now for this cause (handshake or close timeout).
    Expired(CloseCause),
}

/// What closing asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseStep {
    /// Open until now: send a close frame; the close deadline is set.
    SendCloseFrame,
    /// Not open yet: nothing to hand-shake, remove the connection.
    Remove,
    /// Already closing or draining: nothing to do.
    Nothing,
}

/// How a connection ended: what its close event and metrics need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The close code sent or received, 1006 when there was none.
    pub code: u16,
    /// The first cause recorded, else the cause of the removal.
    pub cause: CloseCause,
    /// It was open at some point.
    pub opened: bool,
    /// The handler knew of it and was not told yet: a close event is owed.
    pub announced: bool,
}

/// One connection's lifecycle (12 bytes).
#[derive(Debug)]
pub struct Lifecycle {
    /// The state (low bits) and the marks `OPENED`, `ANNOUNCED`, `PING_OUT`.
    bits: u8,
    cause: Option<CloseCause>,
    close_code: u16,
    /// Open and closing: tick of the last input. Handshake states: the handshake deadline.
    last_rx: Tick,
    /// Closing states: the close deadline. Otherwise: the tick the deadline entry sits at
    /// in the wheel, which tells it from the shrink check entry.
    deadline: Tick,
}

impl Lifecycle {
    /// A connection admitted at `now`; its handshake deadline is `now + t.handshake`. The
    /// engine schedules the first wheel entry at [`Lifecycle::first_entry`].
    pub fn new(now: Tick, t: &Timing) -> Self {
        let deadline = now.saturating_add(t.handshake);
        Lifecycle {
            bits: ConnState::Handshake as u8,
            cause: None,
            close_code: 0,
            last_rx: deadline,
            deadline,
        }
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> ConnState {
        match self.bits & STATE_MASK {
            0 => ConnState::Handshake,
            1 => ConnState::AwaitOpen,
            2 => ConnState::Open,
            3 => ConnState::Closing,
            _ => ConnState::Draining,
        }
    }

    #[inline]
    fn set_state(&mut self, s: ConnState) {
        self.bits = (self.bits & !STATE_MASK) | s as u8;
    }

    /// Whether messages flow (open, not closing).
    #[inline]
    pub fn is_open(&self) -> bool {
        self.state() == ConnState::Open
    }

    /// Whether the upgrade is still undecided (request or decision pending).
    #[inline]
    pub fn in_handshake(&self) -> bool {
        matches!(self.state(), ConnState::Handshake | ConnState::AwaitOpen)
    }

    /// Whether the connection completed its upgrade at some point.
    pub fn was_opened(&self) -> bool {
        self.bits & OPENED != 0
    }

    /// Where the first wheel entry goes: no later than the first keepalive deadline the
    /// connection can have once open (its entry is not moved when it opens).
    pub fn first_entry(&self, now: Tick, t: &Timing) -> Tick {
        self.last_rx.min(now.saturating_add(t.first_check()))
    }

    /// The wheel put the deadline entry at `at`: remember it (while open or handshaking;
    /// in the closing states the field is the close deadline).
    pub fn entry_at(&mut self, at: Tick) {
        if matches!(
            self.state(),
            ConnState::Open | ConnState::Handshake | ConnState::AwaitOpen
        ) {
            self.deadline = at;
        }
    }

    /// Input arrived at `now`: it is alive (an outstanding ping is answered). The handshake
    /// deadline is not extended by input.
    pub fn on_input(&mut self, now: Tick) {
        if !self.in_handshake() {
            self.last_rx = now;
        }
        self.bits &= !PING_OUT;
    }

    /// The handler now knows of the connection (accepted or left the upgrade pending).
    pub fn announce(&mut self) {
        self.bits |= ANNOUNCED;
    }

    /// The request is valid and the handler decides later.
    pub fn await_open(&mut self) {
        if self.state() == ConnState::Handshake {
            self.set_state(ConnState::AwaitOpen);
        }
    }

    /// The upgrade completed at `now`. Returns false (nothing changes) unless the upgrade
    /// was pending: the `Opened` transition happens once.
    pub fn open(&mut self, now: Tick) -> bool {
        if !self.in_handshake() {
            return false;
        }
        self.set_state(ConnState::Open);
        self.bits |= OPENED;
        self.last_rx = now;
        true
    }

    /// Record why the connection is ending and with which code, unless already recorded
    /// (the first cause wins: a slow consumer whose close then times out ended for being
    /// slow). Code 0 records no code.
    pub fn record(&mut self, cause: CloseCause, code: u16) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        if self.close_code == 0 {
            self.close_code = code;
        }
    }

    /// Start closing with `code` for `cause`.
    pub fn close(&mut self, now: Tick, t: &Timing, code: u16, cause: CloseCause) -> CloseStep {
        self.record(cause, code);
        match self.state() {
            ConnState::Open => {
                self.set_state(ConnState::Closing);
                self.deadline = now.saturating_add(t.close);
                CloseStep::SendCloseFrame
            }
            ConnState::Handshake | ConnState::AwaitOpen => CloseStep::Remove,
            ConnState::Closing | ConnState::Draining => CloseStep::Nothing,
        }
    }

    /// Stop reading messages: flush, half-close, wait for EOF until `now + t.close`.
    pub fn drain(&mut self, now: Tick, t: &Timing) {
        self.set_state(ConnState::Draining);
        self.deadline = now.saturating_add(t.close);
    }

    /// A wheel entry of this connection came round at `now`. `shrink_armed`: the engine has
    /// a second entry pending (the TLS shrink check).
    pub fn due(&mut self, now: Tick, t: &Timing, shrink_armed: bool) -> Due {
        let state = self.state();
        if state == ConnState::Open && now < self.deadline && shrink_armed {
            return Due::ShrinkCheck;
        }
        let pinging = t.ping > 0 && self.bits & PING_OUT == 0;
        let next = match state {
            ConnState::Open if pinging => self.last_rx.saturating_add(t.ping),
            ConnState::Open => self.last_rx.saturating_add(t.idle),
            ConnState::Handshake | ConnState::AwaitOpen => self.last_rx,
            ConnState::Closing | ConnState::Draining => self.deadline,
        };
        if now < next {
            // Still in the handshake: look again by the first keepalive deadline, in case
            // it opens meanwhile (its entry is not moved when it does).
            return Due::Reschedule(if self.in_handshake() {
                next.min(now.saturating_add(t.first_check()))
            } else {
                next
            });
        }
        match state {
            ConnState::Handshake | ConnState::AwaitOpen => Due::Expired(CloseCause::OpenTimeout),
            ConnState::Open if pinging => {
                self.bits |= PING_OUT;
                Due::Ping(self.last_rx.saturating_add(t.idle))
            }
            ConnState::Open => Due::IdleTimeout,
            ConnState::Closing | ConnState::Draining => Due::Expired(CloseCause::CloseTimeout),
        }
    }

    /// The connection stopped carrying messages (its close began, or it is being removed):
    /// the code and cause to report to the handler, once, if the handler knew of it.
    /// `fallback` is the cause when none was recorded.
    pub fn report(&mut self, fallback: CloseCause) -> Option<(u16, CloseCause)> {
        if self.bits & ANNOUNCED == 0 || self.bits & REPORTED != 0 {
            return None;
        }
        self.bits |= REPORTED;
        let code = match self.close_code {
            0 => 1006,
            c => c,
        };
        Some((code, self.cause.unwrap_or(fallback)))
    }

    /// The close deadline (meaningful in `Closing` and `Draining`).
    pub fn close_deadline(&self) -> Tick {
        self.deadline
    }

    /// The connection is removed for `cause`: how it ended. Consumes the lifecycle, so a
    /// connection ends once.
    pub fn ended(self, cause: CloseCause) -> Ended {
        Ended {
            code: match self.close_code {
                0 => 1006,
                c => c,
            },
            cause: self.cause.unwrap_or(cause),
            opened: self.bits & OPENED != 0,
            announced: self.bits & ANNOUNCED != 0 && self.bits & REPORTED == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        handshake: 50,
        ping: 100,
        idle: 300,
        close: 20,
    };

    fn opened_at(now: Tick) -> Lifecycle {
        let mut l = Lifecycle::new(0, &T);
        l.announce();
        assert!(l.open(now));
        l
    }

    #[test]
    fn record_stays_twelve_bytes() {
        assert_eq!(std::mem::size_of::<Lifecycle>(), 12);
    }

    #[test]
    fn handshake_times_out_at_its_deadline_not_extended_by_input() {
        let mut l = Lifecycle::new(10, &T);
        assert_eq!(l.first_entry(10, &T), 60); // min(10 + 50, 10 + 100)
        l.on_input(40);
        assert_eq!(l.due(59, &T, false), Due::Reschedule(60));
        assert_eq!(l.due(60, &T, false), Due::Expired(CloseCause::OpenTimeout));
        let ended = l.ended(CloseCause::OpenTimeout);
        assert!(!ended.opened && !ended.announced);
        assert_eq!(ended.code, 1006);
    }

    #[test]
    fn handshake_recheck_comes_no_later_than_the_first_keepalive() {
        let t = Timing {
            handshake: 1000,
            ..T
        };
        let mut l = Lifecycle::new(0, &t);
        assert_eq!(l.first_entry(0, &t), 100);
        assert_eq!(l.due(100, &t, false), Due::Reschedule(200));
    }

    #[test]
    fn opens_once() {
        let mut l = Lifecycle::new(0, &T);
        l.await_open();
        assert_eq!(l.state(), ConnState::AwaitOpen);
        assert!(l.open(5));
        assert!(l.was_opened());
        assert!(!l.open(6), "a second open is no transition");
        l.drain(7, &T);
        assert!(!l.open(8), "nor is an open after the end began");
        assert_eq!(l.state(), ConnState::Draining);
    }

    #[test]
    fn keepalive_pings_then_idles_out() {
        let mut l = opened_at(0);
        l.entry_at(100);
        assert_eq!(l.due(100, &T, false), Due::Ping(300));
        l.entry_at(300);
        assert_eq!(l.due(299, &T, false), Due::Reschedule(300));
        assert_eq!(l.due(300, &T, false), Due::IdleTimeout);
        assert_eq!(
            l.close(300, &T, 1001, CloseCause::IdleTimeout),
            CloseStep::SendCloseFrame
        );
        assert_eq!(l.due(319, &T, false), Due::Reschedule(320));
        assert_eq!(
            l.due(320, &T, false),
            Due::Expired(CloseCause::CloseTimeout)
        );
        let e = l.ended(CloseCause::CloseTimeout);
        assert_eq!(
            (e.code, e.cause, e.opened, e.announced),
            (1001, CloseCause::IdleTimeout, true, true)
        );
    }

    #[test]
    fn input_answers_the_ping_and_moves_the_deadline() {
        let mut l = opened_at(0);
        assert_eq!(l.due(100, &T, false), Due::Ping(300));
        l.on_input(150);
        // The ping is answered: the next deadline is a ping again, from the last input.
        assert_eq!(l.due(200, &T, false), Due::Reschedule(250));
        assert_eq!(l.due(250, &T, false), Due::Ping(450));
    }

    #[test]
    fn without_pings_idle_is_the_only_keepalive() {
        let t = Timing { ping: 0, ..T };
        let mut l = Lifecycle::new(0, &t);
        assert_eq!(t.first_check(), 300);
        assert!(l.open(0));
        assert_eq!(l.due(299, &t, false), Due::Reschedule(300));
        assert_eq!(l.due(300, &t, false), Due::IdleTimeout);
    }

    #[test]
    fn an_early_entry_while_shrink_armed_is_the_shrink_check() {
        let mut l = opened_at(0);
        l.entry_at(100);
        assert_eq!(l.due(30, &T, true), Due::ShrinkCheck);
        assert_eq!(l.due(30, &T, false), Due::Reschedule(100));
        assert_eq!(l.due(100, &T, true), Due::Ping(300));
    }

    #[test]
    fn closing_twice_sends_one_close_frame_and_keeps_the_first_cause() {
        let mut l = opened_at(0);
        assert_eq!(
            l.close(10, &T, 1008, CloseCause::SlowConsumer),
            CloseStep::SendCloseFrame
        );
        assert_eq!(l.close(11, &T, 1000, CloseCause::Local), CloseStep::Nothing);
        l.record(CloseCause::Peer, 1000);
        let e = l.ended(CloseCause::Reset);
        assert_eq!((e.code, e.cause), (1008, CloseCause::SlowConsumer));
    }

    #[test]
    fn closing_before_open_removes() {
        let mut l = Lifecycle::new(0, &T);
        l.await_open();
        assert_eq!(
            l.close(1, &T, 1001, CloseCause::Shutdown),
            CloseStep::Remove
        );
        let e = l.ended(CloseCause::Reset);
        assert_eq!(
            (e.code, e.cause, e.opened),
            (1001, CloseCause::Shutdown, false)
        );
    }

    #[test]
    fn a_drain_ends_at_the_close_deadline_and_ignores_entry_moves() {
        let mut l = opened_at(0);
        l.drain(40, &T);
        l.entry_at(45); // e.g. a stale report: the close deadline stays
        assert_eq!(l.due(59, &T, false), Due::Reschedule(60));
        assert_eq!(l.due(60, &T, false), Due::Expired(CloseCause::CloseTimeout));
        // A cause recorded without a code keeps 1006 as the code.
        l.record(CloseCause::Tls, 0);
        assert_eq!(l.ended(CloseCause::Reset).code, 1006);
    }
}
