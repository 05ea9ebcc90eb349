//! Test media for `corelay join`: synthetic frames, end-to-end encrypted with SFrame (RFC 9605)
//! per sender, the frame-marking byte (keyframe flag) in our RTP header extension and in
//! SFrame's authenticated metadata; received frames are decrypted and counted.

use crate::media::Link;
use corelay::proto::media::keyframe::FrameMarking;
use corelay::proto::media::rtp::{ExtensionElement, ExtensionSpec, RtpPacket, RtpWriter};
use serde::Serialize;
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use sframe::CipherSuite;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The frame-marking extension's id in our RTP packets.
pub const FRAME_MARKING_ID: u8 = 4;
/// Every test payload starts with this (checked after decryption).
pub const MAGIC: &str = "corelay test media ";
/// Senders whose keys a receiver keeps at most (a bound on what peers can make it derive).
const MAX_SENDERS: usize = 256;

/// Counters of one media type, shared across reconnects.
#[derive(Default, Debug)]
pub struct Counters {
    /// Packets sent.
    pub sent: AtomicU64,
    /// Packets received, decrypted and checked.
    pub received: AtomicU64,
    /// Packets received that failed SFrame authentication or the payload check.
    pub rejected: AtomicU64,
    /// First packet received (ms since the join began; `u64::MAX`: none yet).
    pub first_rx_ms: AtomicU64,
}

impl Counters {
    /// Fresh counters.
    pub fn new() -> Self {
        Counters {
            first_rx_ms: AtomicU64::new(u64::MAX),
            ..Default::default()
        }
    }
}

/// A snapshot of [`Counters`].
#[derive(Clone, Debug, Serialize)]
pub struct CountersReport {
    /// `audio`, `video`.
    pub media: String,
    /// Packets sent.
    pub sent: u64,
    /// Packets received and decrypted.
    pub received: u64,
    /// Packets refused end to end.
    pub rejected: u64,
    /// First packet received, ms after the start.
    pub first_rx_ms: Option<u64>,
}

impl Counters {
    /// A snapshot for the report.
    pub fn report(&self, media: &str) -> CountersReport {
        let f = self.first_rx_ms.load(Ordering::Relaxed);
        CountersReport {
            media: media.into(),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            first_rx_ms: (f != u64::MAX).then_some(f),
        }
    }
}

/// One media type's sender and receiver state (kept across reconnects: the SFrame counter
/// must never repeat under one key).
pub struct Pump {
    /// `audio` or `video`.
    pub media: String,
    ssrc: u32,
    seq: u16,
    frame: u32,
    interval: Duration,
    size: usize,
    keyframe_every: u32,
    enc: EncryptionKey,
    counter: MonotonicCounter,
    secret: Vec<u8>,
    keys: HashMap<u64, DecryptionKey>,
}

/// The SFrame key id of a member's stream of `media`: distinct per sender, so no two senders
/// share a key and counter space.
pub fn key_id(member: u64, media: &str) -> u64 {
    member.wrapping_mul(4) + if media == "audio" { 0 } else { 1 }
}

impl Pump {
    /// A pump for `media` of `member`, with the meeting's end-to-end secret.
    pub fn new(media: &str, member: u64, ssrc: u32, secret: &[u8]) -> Result<Self, String> {
        let enc =
            EncryptionKey::derive_from(CipherSuite::AesGcm128Sha256, key_id(member, media), secret)
                .map_err(|e| format!("SFrame key: {e}"))?;
        let (interval, size, keyframe_every) = match media {
            "audio" => (Duration::from_millis(20), 160, 1),
            _ => (Duration::from_millis(40), 900, 25),
        };
        Ok(Pump {
            media: media.into(),
            ssrc,
            seq: 0,
            frame: 0,
            interval,
            size,
            keyframe_every,
            enc,
            counter: MonotonicCounter::default(),
            secret: secret.to_vec(),
            keys: HashMap::new(),
        })
    }

    fn next_packet(&mut self) -> Result<Vec<u8>, String> {
        let marking = FrameMarking {
            keyframe_start: self.frame % self.keyframe_every == 0,
            end_of_frame: true,
            layer: 0,
        }
        .to_byte();
        let mut frame = format!(
            "{MAGIC}{} ssrc {} frame {} ",
            self.media, self.ssrc, self.frame
        )
        .into_bytes();
        frame.resize(self.size, b'.');
        let mut ebuf = Vec::new();
        let ef = MediaFrameView::try_with_meta_data(&mut self.counter, &frame, &[marking])
            .map_err(|e| e.to_string())?
            .encrypt_into(&self.enc, &mut ebuf)
            .map_err(|e| e.to_string())?;
        let els = [ExtensionElement {
            id: FRAME_MARKING_ID,
            data: &[marking],
        }];
        let payload = ef.sframe_cipher_text();
        let mut wire = vec![0u8; payload.len() + 64];
        let clock = if self.media == "audio" { 960 } else { 3600 };
        let n = RtpWriter {
            payload_type: if self.media == "audio" { 111 } else { 96 },
            sequence: self.seq,
            timestamp: self.frame.wrapping_mul(clock),
            ssrc: self.ssrc,
            marker: true,
            extension: Some(ExtensionSpec::OneByte(&els)),
            payload,
            ..Default::default()
        }
        .write(&mut wire)
        .map_err(|e| format!("{e:?}"))?;
        wire.truncate(n);
        self.seq = self.seq.wrapping_add(1);
        self.frame = self.frame.wrapping_add(1);
        Ok(wire)
    }

    /// Decrypts and checks a received packet: `true` when it is another member's test media.
    fn accept(&mut self, pkt: &[u8]) -> bool {
        let Ok(p) = RtpPacket::parse(pkt) else {
            return false;
        };
        let Some(m) = FrameMarking::read(&p, FRAME_MARKING_ID) else {
            return false;
        };
        let m = [m.to_byte()];
        let payload = p.payload();
        let Ok(ef) = EncryptedFrameView::try_with_meta_data(&payload, &m) else {
            return false;
        };
        let kid = ef.header().key_id();
        if !self.keys.contains_key(&kid) {
            if self.keys.len() >= MAX_SENDERS {
                return false;
            }
            match DecryptionKey::derive_from(CipherSuite::AesGcm128Sha256, kid, &self.secret) {
                Ok(k) => self.keys.insert(kid, k),
                Err(_) => return false,
            };
        }
        let mut out = Vec::new();
        match ef.decrypt_into(&self.keys[&kid], &mut out) {
            Ok(f) => f.payload().starts_with(MAGIC.as_bytes()),
            Err(_) => false,
        }
    }

    /// Sends and receives on `link` until `until` or `stop`; `Err(why)` when the link dies.
    pub fn run(
        &mut self,
        link: &mut Link,
        c: &Counters,
        t0: Instant,
        until: Instant,
        stop: &AtomicBool,
        dead_after: Duration,
    ) -> Result<(), String> {
        let mut next_send = Instant::now();
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_send {
                let pkt = self.next_packet()?;
                link.send(&pkt).map_err(|e| format!("send: {e}"))?;
                c.sent.fetch_add(1, Ordering::Relaxed);
                next_send += self.interval;
                // Behind by more than a second (a stalled link): do not burst to catch up.
                if next_send + Duration::from_secs(1) < Instant::now() {
                    next_send = Instant::now();
                }
            }
            let wake = next_send.min(until);
            match link.recv(wake, dead_after) {
                Ok(Some(p)) => {
                    if self.accept(&p) {
                        if c.received.fetch_add(1, Ordering::Relaxed) == 0 {
                            let _ = c.first_rx_ms.compare_exchange(
                                u64::MAX,
                                t0.elapsed().as_millis() as u64,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                    } else {
                        c.rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
        Ok(())
    }
}
