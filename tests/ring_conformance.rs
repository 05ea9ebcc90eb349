//! Conformance suite for the SPSC rings, run against both backings (heap and memfd/shm).
//!
//! Every test is written once as a generic function over a [`Pair`] factory and instantiated
//! for each backing by the `suite!` macro.

use std::os::fd::OwnedFd;

use corelay::ring::layout::{self, record_size, ring as rgh, RECORD_HEADER};
use corelay::ring::msg::{self, DataKind, ToBackend, ToGateway};
use corelay::ring::{BackendSide, BackingKind, Doorbells, GatewaySide, Region, RingError};

/// Two endpoints over one region. For shm the backend maps the memfd a second time (as a
/// separate process would).
struct Pair {
    gw: GatewaySide,
    be: BackendSide,
    bells: Doorbells,
    region: Region,
    fd: Option<OwnedFd>,
    _be_region: Option<Region>,
}

impl Pair {
    fn new(kind: BackingKind, cap_tb: u64, cap_tg: u64) -> Pair {
        let bells = Doorbells::new().unwrap();
        match kind {
            BackingKind::Heap => {
                let region = Region::create_heap(7, cap_tb, cap_tg).unwrap();
                let gw = region.gateway_side(&bells).unwrap();
                let be = region.backend_side(&bells).unwrap();
                Pair {
                    gw,
                    be,
                    bells,
                    region,
                    fd: None,
                    _be_region: None,
                }
            }
            BackingKind::Shm => {
                let (region, fd) = Region::create(7, cap_tb, cap_tg).unwrap();
                let gw = region.gateway_side(&bells).unwrap();
                let be_region = Region::attach(&fd).unwrap();
                assert_eq!(be_region.shard(), 7);
                let be = be_region.backend_side(&bells).unwrap();
                Pair {
                    gw,
                    be,
                    bells,
                    region,
                    fd: Some(fd),
                    _be_region: Some(be_region),
                }
            }
        }
    }

    /// Pointer to the `to_backend` ring header and data in the gateway's mapping.
    fn tb_hdr(&self) -> *mut u8 {
        // SAFETY: tb_offset is inside the mapping.
        unsafe {
            self.region
                .raw_base()
                .add(self.region.layout().tb_offset as usize)
        }
    }
    fn tb_data(&self) -> *mut u8 {
        // SAFETY: data follows the 384-byte ring header.
        unsafe { self.tb_hdr().add(layout::RING_HEADER_SIZE) }
    }
    fn poke_u64(&self, p: *mut u8, v: u64) {
        // SAFETY: tests only poke 8-aligned words inside the mapping.
        unsafe { (p as *mut u64).write_volatile(v.to_le()) }
    }
    fn poke_u32(&self, p: *mut u8, v: u32) {
        // SAFETY: as poke_u64.
        unsafe { (p as *mut u32).write_volatile(v.to_le()) }
    }
}

fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as usize * 31 + i * 7) as u8)
        .collect()
}

fn drain(be: &mut BackendSide) -> Vec<(u16, u16, u64, u64, Vec<u8>, u64)> {
    let mut out = Vec::new();
    while let Some(r) = be.rx.peek().unwrap() {
        out.push((r.kind, r.flags, r.conn, r.seq, r.payload.to_vec(), r.pos));
        be.rx.advance();
    }
    be.rx.commit();
    out
}

fn push_pop(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    assert!(p.be.rx.peek().unwrap().is_none());
    assert!(p
        .gw
        .tx
        .try_push(5, 3, 11, 1, &[b"hello", b" ", b"world"])
        .unwrap());
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(
        (r.kind, r.flags, r.conn, r.seq, r.payload),
        (5, 3, 11, 1, &b"hello world"[..])
    );
    assert_eq!(r.pos, 0);
    assert_eq!(r.end, record_size(11) as u64);
    // Peek again returns the same record.
    let again = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(again.seq, 1);
    p.be.rx.advance();
    assert!(p.be.rx.peek().unwrap().is_none());
    // Reverse direction.
    assert!(p.be.tx.try_push(9, 0, 2, 3, &[&[1, 2, 3]]).unwrap());
    let r = p.gw.rx.peek().unwrap().unwrap();
    assert_eq!(
        (r.kind, r.conn, r.seq, r.payload),
        (9, 2, 3, &[1u8, 2, 3][..])
    );
    // Empty payload.
    assert!(p.gw.tx.try_push(1, 0, 0, 2, &[]).unwrap());
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.payload.len(), 0);
    assert_eq!(r.end - r.pos, RECORD_HEADER as u64);
}

fn claim_and_fill(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    let mut slot = p.gw.tx.claim(100).unwrap().unwrap();
    assert_eq!(slot.len(), 100);
    slot.payload().copy_from_slice(&payload_for(1, 100));
    // Not visible before commit.
    assert!(!p.be.rx.has_data().unwrap());
    slot.commit(4, 0, 1, 1).unwrap();
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.payload, &payload_for(1, 100)[..]);
    p.be.rx.advance();
    // Abandoned claim leaves nothing behind.
    {
        let _slot = p.gw.tx.claim(50).unwrap().unwrap();
    }
    assert!(p.be.rx.peek().unwrap().is_none());
    // Reserved kinds are refused at commit.
    let slot = p.gw.tx.claim(0).unwrap().unwrap();
    assert_eq!(slot.commit(0, 0, 0, 0), Err(RingError::InvalidKind(0)));
    assert_eq!(
        p.gw.tx.try_push(0x8000, 0, 0, 0, &[]),
        Err(RingError::InvalidKind(0x8000))
    );
}

fn deferred_flush(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    for i in 0..5 {
        assert!(p
            .gw
            .tx
            .try_push_deferred(3, 0, 0, i, &[&[i as u8; 10]])
            .unwrap());
    }
    assert!(!p.be.rx.has_data().unwrap());
    p.gw.tx.flush();
    assert_eq!(drain(&mut p.be).len(), 5);
}

fn wrap_with_pad(k: BackingKind) {
    let cap = 1024u64;
    let mut p = Pair::new(k, cap, cap);
    // 3 records of 296 B (payload 272) = 888; 4th needs 296 > 136 left -> PAD + wrap.
    let mut seq = 0;
    for _ in 0..3 {
        seq += 1;
        assert!(p
            .gw
            .tx
            .try_push(2, 0, 0, seq, &[&payload_for(seq, 272)])
            .unwrap());
    }
    // Ring holds 888 uncommitted bytes; the 4th does not fit even after padding.
    assert!(!p
        .gw
        .tx
        .try_push(2, 0, 0, 99, &[&payload_for(99, 272)])
        .unwrap());
    let got = drain(&mut p.be);
    assert_eq!(got.len(), 3);
    // Now it fits after a PAD at 888.
    seq += 1;
    assert!(p
        .gw
        .tx
        .try_push(2, 0, 0, seq, &[&payload_for(seq, 272)])
        .unwrap());
    // SAFETY: offset 888 is 8-aligned inside the data area.
    let pad_first = unsafe { (p.tb_data().add(888) as *const u64).read_volatile() };
    assert_eq!((pad_first >> 32) as u16, layout::KIND_PAD);
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.seq, seq);
    assert_eq!(r.pos, cap, "record starts at the wrap point");
    assert_eq!(r.payload, &payload_for(seq, 272)[..]);
}

fn full_ring_claim_fails(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    let mut n = 0;
    while p.gw.tx.try_push(2, 0, 0, n, &[&[0u8; 40]]).unwrap() {
        n += 1;
    }
    assert_eq!(n, 1024 / record_size(40) as u64);
    assert!(p.gw.tx.claim(0).unwrap().is_none() || 1024 % record_size(40) as u64 >= 24);
    // Advancing without commit frees nothing (replay needs the bytes).
    while p.be.rx.peek().unwrap().is_some() {
        p.be.rx.advance();
    }
    assert!(!p.gw.tx.try_push(2, 0, 0, 100, &[&[0u8; 40]]).unwrap());
    p.be.rx.commit();
    assert!(p.gw.tx.try_push(2, 0, 0, 100, &[&[0u8; 40]]).unwrap());
}

fn exact_capacity(k: BackingKind) {
    let cap = 1024;
    let mut p = Pair::new(k, cap, cap);
    // 4 records of exactly 256 bytes fill the ring to the byte.
    let pl = 256 - RECORD_HEADER;
    for i in 0..4 {
        assert!(
            p.gw.tx
                .try_push(2, 0, 0, i, &[&payload_for(i, pl)])
                .unwrap(),
            "record {i}"
        );
    }
    assert!(p.gw.tx.claim(0).unwrap().is_none());
    assert_eq!(p.gw.tx.position(), cap);
    let got = drain(&mut p.be);
    assert_eq!(got.len(), 4);
    // The largest payload fills the whole ring when it is empty and at the wrap point.
    let max = p.gw.tx.max_payload();
    assert_eq!(max, cap as usize - RECORD_HEADER);
    assert!(matches!(
        p.gw.tx.claim(max + 1),
        Err(RingError::TooLarge { .. })
    ));
    assert!(p
        .gw
        .tx
        .try_push(2, 0, 0, 9, &[&payload_for(9, max)])
        .unwrap());
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.payload, &payload_for(9, max)[..]);
    p.be.rx.advance();
    p.be.rx.commit();
    // A max record when not at the wrap point: a PAD goes first, then it fits once drained.
    assert!(p.gw.tx.try_push(2, 0, 0, 10, &[&[1; 8]]).unwrap());
    drain(&mut p.be);
    assert!(!p
        .gw
        .tx
        .try_push(2, 0, 0, 11, &[&payload_for(11, max)])
        .unwrap());
    drain(&mut p.be); // consumes the PAD the failed push published
    assert!(p
        .gw
        .tx
        .try_push(2, 0, 0, 11, &[&payload_for(11, max)])
        .unwrap());
    let got = drain(&mut p.be);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].4, payload_for(11, max));
}

fn alignment_and_many_sizes(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next_seq = 0u64;
    let mut expect_seq = 0u64;
    for round in 0..20_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let len = (rng % 600) as usize;
        if p.gw
            .tx
            .try_push(
                2,
                (len % 2) as u16,
                round,
                next_seq,
                &[&payload_for(next_seq, len)],
            )
            .unwrap()
        {
            next_seq += 1;
        }
        if rng % 3 == 0 {
            while let Some(r) = p.be.rx.peek().unwrap() {
                assert_eq!(r.pos % 8, 0);
                assert_eq!(r.payload.as_ptr() as usize % 8, 0);
                assert_eq!(r.seq, expect_seq);
                assert_eq!(r.payload, &payload_for(r.seq, r.payload.len())[..]);
                expect_seq += 1;
                p.be.rx.advance();
            }
            p.be.rx.commit();
        }
    }
    drain(&mut p.be);
    assert!(next_seq > 1000);
}

fn committed_and_rewind(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    for i in 1..=5 {
        assert!(p
            .gw
            .tx
            .try_push(2, 0, 0, i, &[&payload_for(i, 16)])
            .unwrap());
    }
    let mut ends = Vec::new();
    for _ in 0..3 {
        let r = p.be.rx.peek().unwrap().unwrap();
        ends.push(r.end);
        p.be.rx.advance();
    }
    p.be.rx.commit_to(ends[1]).unwrap(); // seq 1, 2 handled
    assert_eq!(
        p.be.rx.commit_to(ends[2] + 8),
        Err(RingError::InvalidCommit(ends[2] + 8))
    );
    assert_eq!(p.be.rx.commit_to(3), Err(RingError::InvalidCommit(3)));
    p.be.rx.rewind_to_committed();
    let seqs: Vec<u64> = drain(&mut p.be).iter().map(|r| r.3).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    // Commits are visible to a new consumer (resume at committed).
    for i in 6..=8 {
        assert!(p
            .gw
            .tx
            .try_push(2, 0, 0, i, &[&payload_for(i, 16)])
            .unwrap());
    }
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.seq, 6);
    p.be.rx.advance();
    p.be.rx.commit(); // 6 handled, 7 and 8 not
    if let Some(fd) = &p.fd {
        let again = Region::attach(fd).unwrap();
        let mut be2 = again.backend_side(&p.bells).unwrap();
        let r = be2.rx.peek().unwrap().unwrap();
        assert_eq!(r.seq, 7);
    } else {
        assert_eq!(
            p.region.backend_side(&p.bells).unwrap_err(),
            RingError::EndpointTaken
        );
    }
}

fn expect_corrupt<T: std::fmt::Debug>(r: Result<T, RingError>) {
    match r {
        Err(RingError::Corrupt { .. }) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn corrupt_len_too_big(k: BackingKind) {
    let p = Pair::new(k, 1024, 1024);
    let mut p = p;
    assert!(p.gw.tx.try_push(2, 0, 0, 1, &[&[0u8; 8]]).unwrap());
    p.poke_u32(p.tb_data(), 5000);
    expect_corrupt(p.be.rx.peek());
    // len within capacity but past tail
    p.poke_u32(p.tb_data(), 200);
    expect_corrupt(p.be.rx.peek());
    // len u32::MAX
    p.poke_u32(p.tb_data(), u32::MAX);
    expect_corrupt(p.be.rx.peek());
}

fn corrupt_misaligned_tail(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    p.poke_u64(unsafe_add(p.tb_hdr(), rgh::TAIL), 13);
    expect_corrupt(p.be.rx.peek());
}

fn unsafe_add(p: *mut u8, off: usize) -> *mut u8 {
    // SAFETY: header offsets are inside the 384-byte ring header.
    unsafe { p.add(off) }
}

fn corrupt_tail_backwards(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    for i in 0..3 {
        assert!(p.gw.tx.try_push(2, 0, 0, i, &[&[0u8; 8]]).unwrap());
    }
    drain(&mut p.be);
    // head > tail
    p.poke_u64(unsafe_add(p.tb_hdr(), rgh::TAIL), 8);
    expect_corrupt(p.be.rx.peek());
    // tail too far ahead of committed
    p.poke_u64(unsafe_add(p.tb_hdr(), rgh::TAIL), 1u64 << 40);
    expect_corrupt(p.be.rx.peek());
}

fn corrupt_garbage_kind(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    assert!(p.gw.tx.try_push(2, 0, 0, 1, &[&[0u8; 8]]).unwrap());
    let first = 8u64 | (0x9000u64 << 32);
    p.poke_u64(p.tb_data(), first);
    expect_corrupt(p.be.rx.peek());
    // PAD whose skip would pass the tail.
    p.poke_u64(p.tb_data(), 0);
    expect_corrupt(p.be.rx.peek());
}

fn corrupt_record_across_wrap(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    // Move to offset 1000 using a record of 1000 bytes... use 976 payload = 1000 -> 1000 size.
    assert!(p.gw.tx.try_push(2, 0, 0, 1, &[&[0u8; 976]]).unwrap());
    drain(&mut p.be);
    assert!(p.gw.tx.try_push(2, 0, 0, 2, &[&[0u8; 100]]).unwrap()); // PAD at 1000, rec at 1024
                                                                    // Rewrite the PAD into a record claiming 100 bytes: would cross the wrap.
    p.poke_u64(unsafe_add(p.tb_data(), 1000), 100 | (2u64 << 32));
    expect_corrupt(p.be.rx.peek());
    // Non-PAD header with < 24 bytes to the end (offset 1000 has 24 left: make it 1016).
}

fn corrupt_committed_seen_by_producer(k: BackingKind) {
    let mut p = Pair::new(k, 1024, 1024);
    // Fill, so the producer must reload `committed`.
    while p.gw.tx.try_push(2, 0, 0, 0, &[&[0u8; 100]]).unwrap() {}
    // Hostile consumer claims to have committed beyond the tail.
    p.poke_u64(unsafe_add(p.tb_hdr(), rgh::COMMITTED), 1 << 20);
    expect_corrupt(p.gw.tx.claim(100).map(|s| s.is_some()));
    // Misaligned.
    p.poke_u64(unsafe_add(p.tb_hdr(), rgh::COMMITTED), 3);
    expect_corrupt(p.gw.tx.claim(100).map(|s| s.is_some()));
}

fn corrupt_on_attach(k: BackingKind) {
    let p = Pair::new(k, 1024, 1024);
    if let Some(fd) = &p.fd {
        p.poke_u64(unsafe_add(p.tb_hdr(), rgh::COMMITTED), 16);
        p.poke_u64(unsafe_add(p.tb_hdr(), rgh::TAIL), 8);
        let again = Region::attach(fd).unwrap();
        assert!(matches!(
            again.backend_side(&p.bells),
            Err(RingError::Corrupt { .. })
        ));
        // Region header garbage is refused at attach.
        p.poke_u64(p.region.raw_base(), 0xdead);
        assert!(Region::attach(fd).is_err());
        p.poke_u64(p.region.raw_base(), layout::REGION_MAGIC);
        p.poke_u64(
            unsafe_add(p.region.raw_base(), layout::region::TB_CAPACITY),
            1 << 20,
        );
        assert!(Region::attach(fd).is_err());
    }
}

fn random_garbage_never_panics(k: BackingKind) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let mut p = Pair::new(k, 1024, 1024);
        for i in 0..3 {
            let _ = p.gw.tx.try_push(2, 0, 0, i, &[&[7u8; 40]]);
        }
        // Scribble random words into data and the shared counters.
        for _ in 0..8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let off = (rng % 128) as usize * 8;
            p.poke_u64(unsafe_add(p.tb_data(), off), rng.rotate_left(17));
        }
        if rng % 4 == 0 {
            p.poke_u64(unsafe_add(p.tb_hdr(), rgh::TAIL), rng % 4096);
        }
        for _ in 0..10 {
            match p.be.rx.peek() {
                Ok(Some(r)) => {
                    assert!(r.payload.len() <= 1024);
                    let _ = ToBackend::from_record(&r);
                    p.be.rx.advance();
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn park_and_wake(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    assert!(p.be.rx.park().unwrap(), "empty ring parks");
    // Busy-less push: producer sees the flag and rings the eventfd exactly once.
    assert!(p.gw.tx.try_push(2, 0, 0, 1, &[b"x"]).unwrap());
    assert!(p
        .be
        .rx
        .data_bell()
        .wait(Some(std::time::Duration::from_secs(1)))
        .unwrap());
    p.be.rx.unpark();
    assert!(p
        .be
        .rx
        .wait(0, Some(std::time::Duration::from_millis(10)))
        .unwrap());
    drain(&mut p.be);
    // Not parked: no signal.
    assert!(p.gw.tx.try_push(2, 0, 0, 2, &[b"y"]).unwrap());
    assert!(!p.be.rx.data_bell().drain().unwrap());
    drain(&mut p.be);
    // Timed out wait with nothing to read.
    assert!(!p
        .be
        .rx
        .wait(10, Some(std::time::Duration::from_millis(5)))
        .unwrap());
    // Producer space parking: fill, park, consumer commit rings the space bell.
    while p.gw.tx.try_push(2, 0, 0, 3, &[&[0u8; 200]]).unwrap() {}
    assert!(p.gw.tx.park_for_space(200).unwrap());
    drain(&mut p.be);
    assert!(p
        .gw
        .tx
        .space_bell()
        .wait(Some(std::time::Duration::from_secs(1)))
        .unwrap());
    p.gw.tx.unpark();
    assert!(p
        .gw
        .tx
        .wait_for_space(200, Some(std::time::Duration::from_millis(10)))
        .unwrap());
}

fn messages_through_ring(k: BackingKind) {
    let mut p = Pair::new(k, 4096, 4096);
    let mut hb = Vec::new();
    let headers =
        msg::encode_headers(&[(b"origin", b"https://x"), (b"cookie", b"a=b")], &mut hb).unwrap();
    let open = ToBackend::Open {
        protocol: msg::Protocol::Ws,
        peer: msg::PeerAddr::Ip("10.1.2.3:4567".parse().unwrap()),
        path: b"/chat",
        query: b"room=1",
        headers,
    };
    assert!(msg::push(&mut p.gw.tx, 42, 1, &open).unwrap());
    let m = ToBackend::Message {
        data: DataKind::Binary,
        payload: b"\x00\x01",
    };
    assert!(msg::push(&mut p.gw.tx, 42, 2, &m).unwrap());
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(r.conn, 42);
    assert_eq!(ToBackend::from_record(&r).unwrap(), open);
    if let ToBackend::Open { headers, .. } = ToBackend::from_record(&r).unwrap() {
        let v: Vec<_> = headers.iter().collect();
        assert_eq!(
            v,
            vec![
                (&b"origin"[..], &b"https://x"[..]),
                (&b"cookie"[..], &b"a=b"[..])
            ]
        );
    }
    p.be.rx.advance();
    let r = p.be.rx.peek().unwrap().unwrap();
    assert_eq!(ToBackend::from_record(&r).unwrap(), m);
    p.be.rx.advance();
    let reply = ToGateway::Send {
        in_reply_to: Some(2),
        data: DataKind::Text,
        payload: b"ok",
    };
    assert!(msg::push(&mut p.be.tx, 42, 1, &reply).unwrap());
    let r = p.gw.rx.peek().unwrap().unwrap();
    assert_eq!(ToGateway::from_record(&r).unwrap(), reply);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod heap {
            $( #[test] fn $name() { super::$name(corelay::ring::BackingKind::Heap) } )*
        }
        mod shm {
            $( #[test] fn $name() { super::$name(corelay::ring::BackingKind::Shm) } )*
        }
    };
}

suite!(
    push_pop,
    claim_and_fill,
    deferred_flush,
    wrap_with_pad,
    full_ring_claim_fails,
    exact_capacity,
    alignment_and_many_sizes,
    committed_and_rewind,
    corrupt_len_too_big,
    corrupt_misaligned_tail,
    corrupt_tail_backwards,
    corrupt_garbage_kind,
    corrupt_record_across_wrap,
    corrupt_committed_seen_by_producer,
    corrupt_on_attach,
    random_garbage_never_panics,
    park_and_wake,
    messages_through_ring,
);

#[test]
fn region_create_validates_capacity() {
    assert!(Region::create_heap(0, 1000, 1024).is_err());
    assert!(Region::create_heap(0, 512, 1024).is_err());
    assert!(Region::create(0, 1024, 1 << 31).is_err());
    let r = Region::create_heap(3, 1024, 2048).unwrap();
    assert_eq!(r.size() % 4096, 0);
    assert_eq!(r.layout().tg_offset, 128 + 384 + 1024);
}

#[test]
fn eventfd_from_owned_rejects_other_fds() {
    let f = std::fs::File::open("/dev/null").unwrap();
    assert!(corelay::ring::EventFd::from_owned(OwnedFd::from(f)).is_err());
    let e = corelay::ring::EventFd::new().unwrap();
    let dup = e.try_clone_owned().unwrap();
    let e2 = corelay::ring::EventFd::from_owned(dup).unwrap();
    e2.signal().unwrap();
    assert!(e.drain().unwrap());
}
