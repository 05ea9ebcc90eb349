//! Randomised two-thread stress of the head/tail/committed/parked protocol: millions of
//! records of random sizes, content and sequence checked, the consumer parking aggressively
//! on its eventfd and the producer parking for space. Bounded by a watchdog.
//!
//! `CORELAY_STRESS_N` overrides the record count (default 2,000,000 per configuration in release, 300,000 in debug builds).

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use corelay::ring::{Doorbells, Region};

fn fill(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn run(shm: bool, cap: u64, max_len: u64, n: u64, producer_naps: bool) {
    let bells = Doorbells::new().unwrap();
    let (region, _fd) = if shm {
        let (r, fd) = Region::create(0, cap, 1024).unwrap();
        (r, Some(fd))
    } else {
        (Region::create_heap(0, cap, 1024).unwrap(), None)
    };
    let gw = region.gateway_side(&bells).unwrap();
    let be = region.backend_side(&bells).unwrap();
    let (done_tx, done_rx) = mpsc::channel();

    let mut tx = gw.tx;
    let prod = thread::spawn(move || {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut sum = 0u64;
        let mut seq = 0u64;
        while seq < n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % max_len) as usize;
            let mut slot = loop {
                if let Some(s) = tx.claim(len).unwrap() {
                    break s;
                }
                assert!(
                    tx.wait_for_space(len, Some(Duration::from_secs(10)))
                        .unwrap(),
                    "producer starved"
                );
            };
            fill(seq, slot.payload());
            sum = sum.wrapping_add(checksum(slot.payload()));
            if rng % 7 == 0 {
                slot.commit_deferred(2, (len & 1) as u16, len as u64, seq)
                    .unwrap();
            } else {
                slot.commit(2, (len & 1) as u16, len as u64, seq).unwrap();
            }
            if rng % 16 == 0 {
                tx.flush();
            }
            seq += 1;
            if producer_naps && seq % 20_000 == 0 {
                tx.flush();
                thread::sleep(Duration::from_micros(200));
            }
        }
        tx.flush();
        sum
    });

    let mut rx = be.rx;
    let cons = thread::spawn(move || {
        let mut expect = 0u64;
        let mut sum = 0u64;
        let mut scratch = vec![0u8; max_len as usize];
        let mut since_commit = 0;
        while expect < n {
            match rx.peek().unwrap() {
                Some(r) => {
                    assert_eq!(r.seq, expect, "loss or duplicate");
                    assert_eq!(r.kind, 2);
                    assert_eq!(r.conn, r.payload.len() as u64);
                    assert_eq!(r.flags, (r.payload.len() & 1) as u16);
                    fill(r.seq, &mut scratch[..r.payload.len()]);
                    assert_eq!(
                        r.payload,
                        &scratch[..r.payload.len()],
                        "content of seq {}",
                        r.seq
                    );
                    sum = sum.wrapping_add(checksum(r.payload));
                    expect += 1;
                    rx.advance();
                    since_commit += 1;
                    if since_commit == 8 {
                        rx.commit();
                        since_commit = 0;
                    }
                }
                None => {
                    rx.commit();
                    since_commit = 0;
                    // Park aggressively: no spinning at all.
                    assert!(
                        rx.wait(0, Some(Duration::from_secs(10))).unwrap(),
                        "consumer starved"
                    );
                }
            }
        }
        rx.commit();
        assert!(rx.peek().unwrap().is_none(), "extra records");
        sum
    });
    thread::spawn(move || {
        let a = prod.join();
        let b = cons.join();
        let _ = done_tx.send((a, b));
    });
    let (a, b) = done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("deadlock: stress test timed out");
    let (a, b) = (a.expect("producer panicked"), b.expect("consumer panicked"));
    assert_eq!(a, b, "checksum mismatch");
}

fn n() -> u64 {
    std::env::var("CORELAY_STRESS_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            300_000
        } else {
            2_000_000
        })
}

#[test]
fn stress_heap_small_ring_parking() {
    run(false, 4096, 300, n(), true);
}

#[test]
fn stress_shm_medium_ring() {
    run(true, 64 * 1024, 2000, n(), true);
}

#[test]
fn stress_shm_tiny_records_no_naps() {
    run(true, 1024, 64, n(), false);
}
