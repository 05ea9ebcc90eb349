//! The WebSocket session rules over decoded events, sans-IO: what a message, a fragment, a
//! ping, a pong or the peer's close frame asks of the connection (RFC 6455 §5.4, §5.5), as
//! reactions the engine carries out.
//!
//! The session keeps no state of its own: whether our close frame went out is the
//! connection's lifecycle state (passed in as `open`), the bytes of a fragmented message
//! live in the engine's per-connection buffer (allocated only while one is in flight), and
//! its size limit is the [`Decoder`](super::Decoder)'s `max_message_size`.

use super::{DataKind, Event};

/// What one decoded event asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction<'a> {
    /// A whole message, borrowed from the input: hand it on.
    Message(DataKind, &'a [u8]),
    /// A piece of a fragmented message: append it to the message being assembled; when
    /// `complete`, that message (of `kind`) is then whole: hand it on.
    Fragment {
        /// The message's kind (from its first frame).
        kind: DataKind,
        /// The bytes to append.
        payload: &'a [u8],
        /// The message is whole with these bytes.
        complete: bool,
    },
    /// Answer with a Pong carrying this payload.
    Pong(&'a [u8]),
    /// The peer is alive and nothing is owed (a Pong; a Ping after our close frame).
    Alive,
    /// Data after our close frame: discarded (RFC 6455 §5.5.1).
    Discarded,
    /// The peer closed with `code` (1005: its frame had none). Echo `echo` as our close
    /// frame's payload unless ours went out already, then stop reading messages.
    PeerClosed {
        /// The peer's code.
        code: u16,
        /// Our answer (its code, no reason; empty when it sent none), if we owe one.
        echo: Option<CloseEcho>,
    },
}

/// The payload of the close frame that answers a peer's close: its code echoed, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseEcho {
    buf: [u8; 2],
    len: u8,
}

impl CloseEcho {
    /// The close frame payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// React to one decoded event. `open`: we have not sent our close frame. `assembling`: a
/// fragmented message is being assembled (some of its bytes are buffered).
#[inline]
pub fn receive(ev: Event<'_>, open: bool, assembling: bool) -> Reaction<'_> {
    match ev {
        Event::Data { .. } if !open => Reaction::Discarded,
        Event::Data {
            kind,
            payload,
            first,
            last,
        } => {
            if first && last && !assembling {
                Reaction::Message(kind, payload)
            } else {
                Reaction::Fragment {
                    kind,
                    payload,
                    complete: last,
                }
            }
        }
        Event::Ping(p) if open => Reaction::Pong(p),
        Event::Ping(_) | Event::Pong(_) => Reaction::Alive,
        Event::Close(frame) => {
            let code = frame.map_or(1005, |f| f.code);
            // A frame without a code is answered without one (§5.5.1).
            let echo = open.then(|| CloseEcho {
                buf: code.to_be_bytes(),
                len: if frame.is_some() { 2 } else { 0 },
            });
            Reaction::PeerClosed { code, echo }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::CloseFrame;

    fn data(payload: &[u8], first: bool, last: bool) -> Event<'_> {
        Event::Data {
            kind: DataKind::Text,
            payload,
            first,
            last,
        }
    }

    #[test]
    fn a_whole_frame_is_a_message_and_fragments_are_assembled() {
        assert_eq!(
            receive(data(b"hi", true, true), true, false),
            Reaction::Message(DataKind::Text, b"hi")
        );
        assert_eq!(
            receive(data(b"h", true, false), true, false),
            Reaction::Fragment {
                kind: DataKind::Text,
                payload: b"h",
                complete: false
            }
        );
        // The last chunk of a message whose first bytes are buffered completes it.
        assert_eq!(
            receive(data(b"i", true, true), true, true),
            Reaction::Fragment {
                kind: DataKind::Text,
                payload: b"i",
                complete: true
            }
        );
    }

    #[test]
    fn after_our_close_frame_data_is_discarded_and_pings_not_answered() {
        assert_eq!(
            receive(data(b"x", true, true), false, false),
            Reaction::Discarded
        );
        assert_eq!(
            receive(Event::Ping(b"p"), true, false),
            Reaction::Pong(b"p")
        );
        assert_eq!(receive(Event::Ping(b"p"), false, false), Reaction::Alive);
        assert_eq!(receive(Event::Pong(b""), true, false), Reaction::Alive);
    }

    #[test]
    fn the_peer_close_is_echoed_once_with_its_code() {
        let frame = Some(CloseFrame {
            code: 4001,
            reason: "bye",
        });
        let Reaction::PeerClosed {
            code,
            echo: Some(echo),
        } = receive(Event::Close(frame), true, false)
        else {
            panic!("an open session answers a close");
        };
        assert_eq!((code, echo.as_bytes()), (4001, &[0x0f, 0xa1][..]));
        // Our close frame went out first: nothing more is owed.
        assert_eq!(
            receive(Event::Close(frame), false, false),
            Reaction::PeerClosed {
                code: 4001,
                echo: None
            }
        );
        // No code in, no code out; reported as 1005.
        let Reaction::PeerClosed {
            code,
            echo: Some(echo),
        } = receive(Event::Close(None), true, false)
        else {
            panic!("an open session answers a close");
        };
        assert_eq!((code, echo.as_bytes()), (1005, &[][..]));
    }
}
