//! [`Ctx`]: what a service can do while handling an event (or between events, through
//! [`Backend::with_ctx`](super::Backend::with_ctx)).

use super::{ConnId, DataKind, SdkError};
use crate::proto::media::MediaKind;
use crate::ring::msg::{self, RingMsg, ToGateway};
use crate::ring::Producer;
use std::time::Duration;

/// A request whose completion was put off with [`Ctx::defer`]: complete it later with
/// [`Ctx::reply_to`] or [`Ctx::done_with`], from any later callback or from
/// [`Backend::with_ctx`](super::Backend::with_ctx).
///
/// Until it is completed the SDK does not commit past its record, so a backend killed
/// meanwhile loses nothing: its successor receives the request again (and the records after
/// it, whose replies the gateway then drops as duplicates). The flip side: the gateway can
/// reuse no ring space behind a deferred request, so complete them promptly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Deferred {
    /// The connection that made the request.
    pub conn: ConnId,
    /// The request's seq (what the reply names in `in_reply_to`).
    pub seq: u64,
}

/// A deferred request and where its record starts in its shard's `to_backend` ring.
#[derive(Clone, Copy, Debug)]
pub(super) struct Held {
    pub(super) d: Deferred,
    pub(super) pos: u64,
}

/// What a service can do while handling an event.
pub struct Ctx<'a> {
    pub(super) txs: &'a mut [Producer],
    /// Per shard: the deferred requests not yet completed.
    pub(super) held: &'a mut [Vec<Held>],
    /// The request being handled: connection, seq, ring position of its record.
    pub(super) current: Option<(ConnId, u64, u64)>,
    pub(super) outcome: Outcome,
    pub(super) error: Option<SdkError>,
}

/// How the request being handled was completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet: the SDK completes it with `Done` when the handler returns.
    Pending,
    /// Answered with a message ([`Ctx::reply`]).
    Replied,
    /// Completed without a message ([`Ctx::done`]).
    Done,
    /// Put off with [`Ctx::defer`]: completed later, by [`Ctx::reply_to`] or [`Ctx::done_with`].
    Deferred,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(txs: &'a mut [Producer], held: &'a mut [Vec<Held>]) -> Self {
        Ctx {
            txs,
            held,
            current: None,
            outcome: Outcome::Pending,
            error: None,
        }
    }

    pub(super) fn push(&mut self, shard: usize, conn: ConnId, seq: u64, m: &ToGateway<'_>) {
        if self.error.is_some() {
            return;
        }
        let Some(tx) = self.txs.get_mut(shard) else {
            return;
        };
        loop {
            match msg::push(tx, conn.0, seq, m) {
                Ok(true) => return,
                Ok(false) => {
                    // The gateway drains its ring continuously; wait for room.
                    tx.flush();
                    if let Err(e) = tx.wait_for_space(
                        m.encoded_len().unwrap_or(0),
                        Some(Duration::from_millis(100)),
                    ) {
                        self.error = Some(e.into());
                        return;
                    }
                }
                Err(msg::PushError::Ring(e)) => {
                    self.error = Some(e.into());
                    return;
                }
                Err(msg::PushError::Msg(_)) => return,
            }
        }
    }

    /// Answer the request being handled (in [`Service::on_message`]): delivered to the client
    /// after the answers to its earlier requests, whatever its length (an empty message is a
    /// message). Only the first completion counts: a later reply is sent as a push
    /// ([`Ctx::send`]).
    pub fn reply(&mut self, kind: DataKind, payload: &[u8]) {
        let Some((conn, seq, _)) = self.current else {
            return;
        };
        if self.outcome != Outcome::Pending {
            return self.send(conn, kind, payload);
        }
        self.outcome = Outcome::Replied;
        let m = ToGateway::Send {
            in_reply_to: Some(seq),
            data: kind,
            payload,
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Complete the request being handled without sending anything to the client (e.g. the
    /// message was published to a room): the answers to later requests no longer wait for it.
    /// Does nothing if it is already completed.
    pub fn done(&mut self) {
        let Some((conn, seq, _)) = self.current else {
            return;
        };
        if self.outcome != Outcome::Pending {
            return;
        }
        self.outcome = Outcome::Done;
        let m = ToGateway::Done { in_reply_to: seq };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Put off the completion of the request being handled: the handler returns without
    /// answering, and the returned [`Deferred`] is completed later with [`Ctx::reply_to`] or
    /// [`Ctx::done_with`]. Answers to the connection's later requests wait for it (the gateway
    /// delivers replies in request order), whatever order they are completed in.
    /// `None` if there is no request being handled or it is already completed.
    pub fn defer(&mut self) -> Option<Deferred> {
        let (conn, seq, pos) = self.current?;
        if self.outcome != Outcome::Pending {
            return None;
        }
        self.outcome = Outcome::Deferred;
        let d = Deferred { conn, seq };
        self.held
            .get_mut(conn.shard() as usize)?
            .push(Held { d, pos });
        Some(d)
    }

    fn release(&mut self, d: Deferred) -> bool {
        let Some(list) = self.held.get_mut(d.conn.shard() as usize) else {
            return false;
        };
        match list.iter().position(|h| h.d == d) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Answer a deferred request; `false` (and nothing sent) if it was already completed.
    pub fn reply_to(&mut self, d: Deferred, kind: DataKind, payload: &[u8]) -> bool {
        if !self.release(d) {
            return false;
        }
        let m = ToGateway::Send {
            in_reply_to: Some(d.seq),
            data: kind,
            payload,
        };
        self.push(d.conn.shard() as usize, d.conn, 0, &m);
        true
    }

    /// Complete a deferred request without sending anything; `false` if it was already
    /// completed.
    pub fn done_with(&mut self, d: Deferred) -> bool {
        if !self.release(d) {
            return false;
        }
        let m = ToGateway::Done { in_reply_to: d.seq };
        self.push(d.conn.shard() as usize, d.conn, 0, &m);
        true
    }

    /// How the request being handled has been completed so far.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Send a message to any connection now (not ordered with replies).
    pub fn send(&mut self, conn: ConnId, kind: DataKind, payload: &[u8]) {
        let m = ToGateway::Send {
            in_reply_to: None,
            data: kind,
            payload,
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Close a connection with a WebSocket close code.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        let m = ToGateway::Close {
            code,
            reason: reason.as_bytes(),
        };
        self.push(conn.shard() as usize, conn, 0, &m);
    }

    /// Add a connection to a group.
    pub fn join(&mut self, conn: ConnId, group: u64) {
        self.push(conn.shard() as usize, conn, 0, &ToGateway::Join { group });
    }

    /// Remove a connection from a group.
    pub fn leave(&mut self, conn: ConnId, group: u64) {
        self.push(conn.shard() as usize, conn, 0, &ToGateway::Leave { group });
    }

    /// Admit a connection (an accepted control channel) to media session `session` as
    /// `member`, allowed the media types `media` and to send `streams` (`(ssrc, type)`, at
    /// most [`msg::MAX_ADMIT_STREAMS`]). The gateway sends the member its media credentials
    /// on that connection (docs/media.md "Engine"). A second admission replaces the first.
    /// Fails (sends nothing) on a list too long or with a type outside `media`.
    pub fn admit(
        &mut self,
        conn: ConnId,
        session: u64,
        member: u64,
        media: &[MediaKind],
        streams: &[(u32, MediaKind)],
    ) -> Result<(), msg::MsgError> {
        let mask = media.iter().fold(0, |m, k| m | msg::media_bit(*k));
        if streams.iter().any(|(_, k)| mask & msg::media_bit(*k) == 0) {
            return Err(msg::MsgError::Invalid("admit.stream media"));
        }
        let mut buf = Vec::with_capacity(streams.len() * 5);
        let streams = msg::encode_streams(streams, &mut buf)?;
        let m = ToGateway::Admit {
            session,
            member,
            media: mask,
            streams,
        };
        self.push(conn.shard() as usize, conn, 0, &m);
        Ok(())
    }

    /// End the media of the member admitted on `conn` (its control channel stays open).
    pub fn evict(&mut self, conn: ConnId) {
        self.push(conn.shard() as usize, conn, 0, &ToGateway::Evict);
    }

    /// Send to every member of a group, on every shard (one record per shard; the gateway
    /// fans out).
    pub fn publish(&mut self, group: u64, kind: DataKind, payload: &[u8]) {
        let m = ToGateway::Publish {
            group,
            data: kind,
            payload,
        };
        for shard in 0..self.txs.len() {
            self.push(shard, ConnId(0), 0, &m);
        }
    }
}
