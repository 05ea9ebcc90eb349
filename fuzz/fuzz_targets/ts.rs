//! Fuzz target: TS framing with resync, packet/adaptation-field parsing, continuity tracking,
//! PSI section reassembly and PAT/PMT parsing on arbitrary bytes.
#![no_main]

use corelay::proto::media::ts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else { return };
    let mut framer = ts::Framer::new().with_confirmations(usize::from(c % 4));
    let mut cc = ts::ContinuityTracker::<4>::new();
    let mut asm = ts::SectionAssembler::new();
    let mut buf = rest;
    loop {
        let (n, r) = framer.decode(buf);
        assert!(n <= buf.len());
        if let Ok(Some(p)) = r {
            let _ = (p.adaptation_field(), p.payload(), p.random_access(), cc.check(&p));
            assert_eq!(p.as_bytes().len(), ts::PACKET_LEN);
            if let Ok(Some(s)) = asm.push(&p) {
                let _ = ts::Pat::new(s).map(|t| t.programs().count());
                let _ = ts::Pmt::new(s).map(|t| t.streams().count());
            }
            if p.payload_unit_start() {
                let _ = ts::Section::from_payload(p.payload());
            }
        }
        if n == 0 {
            break;
        }
        buf = &buf[n..];
    }
    let _ = ts::Section::parse(rest);
    let _ = ts::find_sync(rest, usize::from(c % 5));
});
