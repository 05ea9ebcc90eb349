//! Unit tests of the session state machine, driven by a scripted client.

use super::*;
use crate::proto::rtmp::amf0::Writer;
use crate::proto::rtmp::chunk::{ChunkWriter, MSG_SET_CHUNK_SIZE};

struct Client {
    w: ChunkWriter,
    wire: Vec<u8>,
}

impl Client {
    fn new() -> Self {
        let mut wire = vec![3u8];
        wire.extend_from_slice(&[0x11; 1536]);
        wire.extend_from_slice(&[0x22; 1536]); // C2
        Self {
            w: ChunkWriter::default(),
            wire,
        }
    }
    fn cmd(&mut self, sid: u32, f: impl FnOnce(&mut Writer<'_>)) -> &mut Self {
        let mut b = Vec::new();
        f(&mut Writer::new(&mut b));
        self.w
            .write(&mut self.wire, 3, MSG_COMMAND_AMF0, sid, 0, &b)
            .unwrap();
        self
    }
    fn connect(&mut self) -> &mut Self {
        self.cmd(0, |w| {
            w.string("connect")
                .number(1.0)
                .object()
                .key("app")
                .string("live")
                .key("tcUrl")
                .string("rtmp://127.0.0.1/live")
                .end();
        })
    }
    fn publish(&mut self, name: &str) -> &mut Self {
        self.cmd(0, |w| {
            w.string("releaseStream").number(2.0).null().string(name);
        })
        .cmd(0, |w| {
            w.string("createStream").number(3.0).null();
        })
        .cmd(1, |w| {
            w.string("publish")
                .number(0.0)
                .null()
                .string(name)
                .string("live");
        })
    }
}

/// Feeds `wire` in `step`-byte pieces; returns the events and whether an error ended it.
fn run(s: &mut RtmpSession, wire: &[u8], step: usize) -> (Vec<Event>, Option<RtmpError>) {
    let mut pending = Vec::new();
    let mut evs = Vec::new();
    for piece in wire.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (n, r) = s.poll(&pending);
            pending.drain(..n);
            match r {
                Ok(Some(e)) => evs.push(e),
                Ok(None) => break,
                Err(e) => return (evs, Some(e)),
            }
        }
    }
    (evs, None)
}

/// Decodes what the server sent after S0S1S2 into (type, stream id, first AMF string or body).
fn server_messages(s: &mut RtmpSession, hs: bool) -> Vec<(u8, u32, String)> {
    let out = s.pending_output().to_vec();
    s.advance_output(out.len());
    let body = if hs { &out[3073..] } else { &out[..] };
    let mut d = ChunkDecoder::default();
    if !hs {
        // The server switched to its configured chunk size after connect.
        let mut pre = Vec::new();
        ChunkWriter::default()
            .write(
                &mut pre,
                2,
                MSG_SET_CHUNK_SIZE,
                0,
                0,
                &4096u32.to_be_bytes(),
            )
            .unwrap();
        let (_, r) = d.decode(&pre);
        r.unwrap();
    }
    let mut at = 0;
    let mut v = Vec::new();
    loop {
        let (n, r) = d.decode(&body[at..]);
        at += n;
        let Some(m) = r.unwrap() else { break };
        let first = Reader::new(m.body())
            .filter_map(Result::ok)
            .filter_map(|x| {
                x.as_properties()
                    .and_then(|p| p.get_str("code"))
                    .or(x.as_str())
            })
            .collect::<Vec<_>>()
            .join(",");
        v.push((m.type_id, m.stream_id, first));
    }
    v
}

#[test]
fn publish_flow() {
    let mut c = Client::new();
    c.connect().publish("key?token=abc");
    let mut body = vec![0x17, 0, 0, 0, 0, 1, 2, 3];
    c.w.write(&mut c.wire, 6, MSG_VIDEO, 1, 40, &body).unwrap();
    for step in [1, 13, 4096] {
        let mut s = RtmpSession::new(SessionConfig::default());
        let (evs, err) = run(&mut s, &c.wire, step);
        // Media before accept_publish is a protocol error.
        assert_eq!(
            err,
            Some(RtmpError::Protocol("media on a stream not publishing"))
        );
        assert_eq!(
            evs,
            [
                Event::Connect {
                    app: "live".into(),
                    tc_url: "rtmp://127.0.0.1/live".into()
                },
                Event::Publish {
                    stream_id: 1,
                    stream_name: "key".into(),
                    query: "token=abc".into()
                },
            ]
        );
    }
    let mut s = RtmpSession::new(SessionConfig::default());
    let cut = c.wire.len() - 20;
    let (evs, err) = run(&mut s, &c.wire[..cut], 64);
    assert_eq!((evs.len(), err), (2, None));
    assert_eq!(&s.pending_output()[..1], &[3]);
    let msgs = server_messages(&mut s, true);
    let kinds: Vec<_> = msgs.iter().map(|m| m.2.as_str()).collect();
    assert_eq!(kinds[..3], ["", "", ""], "{msgs:?}"); // ack size, bandwidth, chunk size
    assert_eq!(msgs[2].0, MSG_SET_CHUNK_SIZE);
    assert!(
        kinds[3].contains("NetConnection.Connect.Success"),
        "{kinds:?}"
    );
    assert_eq!(kinds[4], "_result"); // releaseStream
    assert_eq!(kinds[5], "_result"); // createStream
    s.accept_publish().unwrap();
    assert!(s.accept_publish().is_err());
    let msgs = server_messages(&mut s, false);
    assert!(msgs
        .iter()
        .any(|m| m.2.contains("NetStream.Publish.Start") && m.1 == 1));
    assert!(msgs.iter().any(|m| m.2.starts_with("onFCPublish")));
    let (evs, err) = run(&mut s, &c.wire[cut..], 7);
    assert_eq!(err, None);
    let Event::Media {
        kind,
        timestamp,
        tag,
    } = &evs[0]
    else {
        panic!("{evs:?}")
    };
    assert_eq!((*kind, *timestamp), (MediaKind::Video, 40));
    body.extend_from_slice(&(11 + 8u32).to_be_bytes());
    assert_eq!(&tag[11..], &body[..]);
    assert_eq!(tag[0], 9);
    // deleteStream ends the publication; close reports once.
    let mut more = Client {
        w: c.w,
        wire: Vec::new(),
    };
    more.cmd(0, |w| {
        w.string("deleteStream").number(4.0).null().number(1.0);
    });
    more.cmd(0, |w| {
        w.string("FCUnpublish").number(5.0).null().string("key");
    });
    let (evs, _) = run(&mut s, &more.wire, 100);
    assert_eq!(evs, [Event::DeleteStream { stream_id: 1 }]);
    // Nothing answers FCUnpublish or deleteStream (the publisher is closing).
    assert!(s.pending_output().is_empty());
    assert_eq!(s.close(), Some(Event::Closed { publishing: None }));
    assert_eq!(s.close(), None);
}

#[test]
fn refuse_publish_and_close_while_publishing() {
    let mut c = Client::new();
    c.connect().publish("bad");
    let mut s = RtmpSession::new(SessionConfig::default());
    run(&mut s, &c.wire, 4096);
    server_messages(&mut s, true);
    s.refuse_publish("no such key").unwrap();
    let msgs = server_messages(&mut s, false);
    assert!(msgs[0].2.contains("NetStream.Publish.BadName"), "{msgs:?}");

    let mut s = RtmpSession::new(SessionConfig::default());
    run(&mut s, &c.wire, 4096);
    s.accept_publish().unwrap();
    assert_eq!(
        s.close(),
        Some(Event::Closed {
            publishing: Some("bad".into())
        })
    );
    assert!(s.is_closed());
}

#[test]
fn play_flow_sends_tags() {
    let mut c = Client::new();
    c.connect()
        .cmd(0, |w| {
            w.string("createStream").number(2.0).null();
        })
        .cmd(1, |w| {
            w.string("play")
                .number(0.0)
                .null()
                .string("cam")
                .number(-2000.0);
        });
    let mut s = RtmpSession::new(SessionConfig::default());
    let (evs, err) = run(&mut s, &c.wire, 4096);
    assert_eq!(err, None);
    assert_eq!(
        evs[1],
        Event::Play {
            stream_id: 1,
            stream_name: "cam".into(),
            query: String::new()
        }
    );
    assert!(s.send_tag(&[9; 20]).is_err());
    s.accept_play().unwrap();
    server_messages(&mut s, true);
    let mut tag = vec![0u8; 5000 + 15];
    crate::proto::media::flv::write_tag(
        &mut tag,
        crate::proto::media::flv::TagType::Video,
        0x0200_0001,
        &[7u8; 5000],
    )
    .unwrap();
    s.send_tag(&tag).unwrap();
    let out = s.pending_output().to_vec();
    let mut d = ChunkDecoder::default();
    let mut pre = Vec::new();
    ChunkWriter::default()
        .write(
            &mut pre,
            2,
            MSG_SET_CHUNK_SIZE,
            0,
            0,
            &4096u32.to_be_bytes(),
        )
        .unwrap();
    pre.extend_from_slice(&out);
    let (_, r) = d.decode(&pre);
    r.unwrap();
    let (_, r) = d.decode(&pre[d.bytes_received() as usize..]);
    let m = r.unwrap().unwrap();
    assert_eq!(
        (m.type_id, m.stream_id, m.timestamp),
        (MSG_VIDEO, 1, 0x0200_0001)
    );
    assert_eq!(m.body(), &[7u8; 5000][..]);
    s.end_play().unwrap();
}

#[test]
fn protocol_errors() {
    // Command before connect.
    let mut c = Client::new();
    c.cmd(0, |w| {
        w.string("createStream").number(2.0).null();
    });
    let (_, err) = run(
        &mut RtmpSession::new(SessionConfig::default()),
        &c.wire,
        4096,
    );
    assert_eq!(err, Some(RtmpError::Protocol("command before connect")));
    // Publish on a stream never created.
    let mut c = Client::new();
    c.connect().cmd(5, |w| {
        w.string("publish").number(0.0).null().string("x");
    });
    let (_, err) = run(
        &mut RtmpSession::new(SessionConfig::default()),
        &c.wire,
        4096,
    );
    assert!(matches!(err, Some(RtmpError::Protocol(_))));
    // Wrong version.
    let (_, err) = run(
        &mut RtmpSession::new(SessionConfig::default()),
        &[6; 1537],
        4096,
    );
    assert_eq!(err, Some(RtmpError::BadVersion(6)));
}

#[test]
fn backpressure_and_acks() {
    let mut c = Client::new();
    c.connect();
    let mut b = Vec::new();
    ChunkWriter::default()
        .write(&mut b, 2, MSG_WINDOW_ACK_SIZE, 0, 0, &100u32.to_be_bytes())
        .unwrap();
    c.wire.extend_from_slice(&b);
    for _ in 0..10 {
        c.cmd(0, |w| {
            w.string("releaseStream")
                .number(9.0)
                .null()
                .string("padding-padding-padding");
        });
    }
    let cfg = SessionConfig {
        max_output: 10,
        ..SessionConfig::default()
    };
    let mut s = RtmpSession::new(cfg);
    // Output above the cap: nothing more is consumed until it is drained.
    let (n, r) = s.poll(&c.wire);
    assert_eq!((n, r), (1537, Ok(None)));
    assert_eq!(s.poll(&c.wire[n..]), (0, Ok(None)));
    s.advance_output(usize::MAX);
    let mut at = n;
    let mut acks = 0;
    while at < c.wire.len() {
        let (n, r) = s.poll(&c.wire[at..]);
        r.unwrap();
        at += n;
        acks += server_messages(&mut s, false)
            .iter()
            .filter(|m| m.0 == crate::proto::rtmp::chunk::MSG_ACK)
            .count();
    }
    assert!(acks >= 3, "{acks}");
}
