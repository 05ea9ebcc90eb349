//! HLS from FLV tags: a segmenter that cuts MPEG-TS segments (via [`super::remux::TsMuxer`])
//! on keyframes once a target duration is reached, keeps a sliding window of them in memory as
//! shared [`Bytes`], and writes the matching m3u8 playlist.

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;

use super::flv::FlvTag;
use super::remux::{Pushed, RemuxError, TsMuxer};

/// Segmenter settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlsConfig {
    /// A segment is cut at the first keyframe at least this long after its start (ms).
    pub target_duration_ms: u32,
    /// Segments kept and listed.
    pub window: usize,
    /// A segment growing past this (no keyframe for too long) is cut anyway.
    pub max_segment_bytes: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            target_duration_ms: 2000,
            window: 6,
            max_segment_bytes: 32 << 20,
        }
    }
}

/// One finished segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Media sequence number.
    pub sequence: u64,
    /// Duration in ms (next segment's start − this one's, or last frame + its spacing).
    pub duration_ms: u32,
    /// TS packets, starting with PAT and PMT.
    pub data: Bytes,
    /// Timestamps (and possibly codec parameters) restart here: a new publisher took over.
    /// The playlist puts `#EXT-X-DISCONTINUITY` before it.
    pub discontinuity: bool,
}

/// Cuts and keeps segments; see the module doc.
#[derive(Debug)]
pub struct HlsSegmenter {
    cfg: HlsConfig,
    mux: TsMuxer,
    current: Vec<u8>,
    /// First and last frame timestamps of the current segment.
    span: Option<(u32, u32)>,
    last_delta: u32,
    next_sequence: u64,
    segments: VecDeque<Segment>,
    /// The next segment starts after a discontinuity.
    discontinuity_pending: bool,
    /// Discontinuities of segments that left the window (`#EXT-X-DISCONTINUITY-SEQUENCE`).
    discontinuities_gone: u64,
}

impl HlsSegmenter {
    /// An empty segmenter.
    pub fn new(cfg: HlsConfig) -> Self {
        Self {
            cfg,
            mux: TsMuxer::new(),
            current: Vec::new(),
            span: None,
            last_delta: 0,
            next_sequence: 0,
            segments: VecDeque::new(),
            discontinuity_pending: false,
            discontinuities_gone: 0,
        }
    }

    /// Feeds one FLV tag. Returns the sequence number of a segment completed by it.
    pub fn push_tag(&mut self, tag: &[u8]) -> Result<Option<u64>, RemuxError> {
        let t = FlvTag::parse(tag)?;
        let ts = t.header.timestamp;
        let video_stream = self.mux.has_video();
        let is_video = t.header.tag_type == super::flv::TagType::Video;
        // Would this tag start a segment? Keyframes do; audio does in audio-only streams.
        let starts = !t.is_sequence_header()
            && if video_stream {
                is_video && t.is_keyframe()
            } else {
                t.header.tag_type == super::flv::TagType::Audio
            };
        let mut done = None;
        if let Some((first, _)) = self.span {
            let long = ts.wrapping_sub(first) >= self.cfg.target_duration_ms;
            if (starts && long) || self.current.len() >= self.cfg.max_segment_bytes {
                done = self.cut(Some(ts));
            }
        }
        if self.span.is_none() && !starts {
            // Before the first keyframe nothing is written (segments start decodable), but
            // sequence headers still configure the muxer.
            if t.is_sequence_header() {
                self.mux.push_tag(tag, &mut self.current)?;
                self.current.clear();
            }
            return Ok(done);
        }
        if self.span.is_none() {
            self.mux.write_psi(&mut self.current)?;
        }
        let at = self.current.len();
        match self.mux.push_tag(tag, &mut self.current) {
            Ok(Pushed::Video { .. } | Pushed::Audio) => {
                let (first, last) = self.span.unwrap_or((ts, ts));
                if ts > last {
                    self.last_delta = ts - last;
                }
                self.span = Some((first, last.max(ts)));
            }
            Ok(_) => {}
            Err(e) => {
                self.current.truncate(at);
                return Err(e);
            }
        }
        if self.span.is_none() {
            // Only configuration so far: keep waiting for a frame that starts the segment.
            self.current.clear();
        }
        Ok(done)
    }

    /// Closes the current segment (the stream ended). Returns its sequence number.
    pub fn finish(&mut self) -> Option<u64> {
        self.cut(None)
    }

    /// The source changes (a new publisher: its timestamps restart): closes the current
    /// segment, and the next one is marked as a discontinuity (when one came before it).
    /// Returns the sequence number of the segment closed.
    pub fn discontinue(&mut self) -> Option<u64> {
        let done = self.cut(None);
        self.discontinuity_pending = self.next_sequence > 0;
        done
    }

    fn cut(&mut self, next_start: Option<u32>) -> Option<u64> {
        let (first, last) = self.span.take()?;
        let end = next_start.unwrap_or(last.wrapping_add(self.last_delta));
        let seq = self.next_sequence;
        self.next_sequence += 1;
        let data = Bytes::from(std::mem::take(&mut self.current));
        self.segments.push_back(Segment {
            sequence: seq,
            duration_ms: end.wrapping_sub(first),
            data,
            discontinuity: std::mem::take(&mut self.discontinuity_pending),
        });
        while self.segments.len() > self.cfg.window.max(1) {
            if let Some(gone) = self.segments.pop_front() {
                self.discontinuities_gone += u64::from(gone.discontinuity);
            }
        }
        Some(seq)
    }

    /// Segments in the window, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    /// The segment with this sequence number, if still in the window.
    pub fn segment(&self, sequence: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.sequence == sequence)
    }

    /// Writes the playlist: segment URIs are `{prefix}{sequence}.ts`; `ended` appends
    /// `#EXT-X-ENDLIST`.
    pub fn playlist(&self, prefix: &str, ended: bool, out: &mut String) {
        write_playlist(
            self.segments.iter(),
            self.discontinuities_gone,
            prefix,
            ended,
            self.cfg.target_duration_ms,
            out,
        );
    }
}

/// Writes an m3u8 media playlist for `segments`. `EXT-X-TARGETDURATION` is the longest
/// segment rounded up (RFC 8216 §4.3.3.1), at least the target. `discontinuities_gone`:
/// discontinuities of segments no longer listed.
///
/// A discontinuity is the boundary between two segments: it is written as
/// `#EXT-X-DISCONTINUITY` before a listed segment that has one before it in the list; when
/// the segment before it left the window, the boundary left with it and is counted in
/// `#EXT-X-DISCONTINUITY-SEQUENCE` instead (RFC 8216 §6.2.2), so every segment keeps its
/// discontinuity sequence number from one playlist to the next.
pub fn write_playlist<'a>(
    segments: impl Iterator<Item = &'a Segment> + Clone,
    discontinuities_gone: u64,
    prefix: &str,
    ended: bool,
    target_ms: u32,
    out: &mut String,
) {
    let longest = segments
        .clone()
        .map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(target_ms);
    let head = segments.clone().next();
    let first = head.map_or(0, |s| s.sequence);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
        longest.div_ceil(1000)
    );
    let dseq = discontinuities_gone + head.map_or(0, |s| u64::from(s.discontinuity));
    if dseq > 0 {
        let _ = writeln!(out, "#EXT-X-DISCONTINUITY-SEQUENCE:{dseq}");
    }
    for (i, s) in segments.enumerate() {
        if s.discontinuity && i > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = write!(
            out,
            "#EXTINF:{}.{:03},\n{prefix}{}.ts\n",
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            s.sequence
        );
    }
    if ended {
        out.push_str("#EXT-X-ENDLIST\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::media::flv::{write_tag, TagType};

    fn tag(tt: TagType, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; body.len() + 15];
        write_tag(&mut t, tt, ts, body).unwrap();
        t
    }

    #[test]
    fn audio_only_segments_slide() {
        let mut h = HlsSegmenter::new(HlsConfig {
            target_duration_ms: 100,
            window: 2,
            ..HlsConfig::default()
        });
        // Frames before the AAC config are not written; segments start at the first frame.
        assert_eq!(h.push_tag(&tag(TagType::Audio, 0, &[0xAF, 1, 1])), Ok(None));
        assert_eq!(
            h.push_tag(&tag(TagType::Audio, 0, &[0xAF, 0, 0x12, 0x10])),
            Ok(None)
        );
        let mut done = Vec::new();
        for i in 0..20u32 {
            done.extend(
                h.push_tag(&tag(TagType::Audio, 10 + i * 23, &[0xAF, 1, 0x21, 0x42]))
                    .unwrap(),
            );
        }
        done.extend(h.finish());
        assert_eq!(done, [0, 1, 2, 3]);
        let segs: Vec<_> = h.segments().map(|s| (s.sequence, s.duration_ms)).collect();
        // 5 frames (115 ms) per segment; the last holds 5 frames + the spacing estimate.
        assert_eq!(segs, [(2, 115), (3, 115)]);
        assert!(h.segment(1).is_none());
        let first =
            crate::proto::media::ts::TsPacket::parse(&h.segment(3).unwrap().data[..188]).unwrap();
        assert_eq!(first.pid(), crate::proto::media::ts::PAT_PID);
        let mut p = String::new();
        h.playlist("a", false, &mut p);
        assert!(
            p.contains("#EXT-X-MEDIA-SEQUENCE:2\n#EXTINF:0.115,\na2.ts\n"),
            "{p}"
        );
        assert!(!p.contains("ENDLIST"));
    }

    #[test]
    fn a_new_source_is_a_discontinuity_then_a_discontinuity_sequence() {
        let mut h = HlsSegmenter::new(HlsConfig {
            target_duration_ms: 100,
            window: 3,
            ..HlsConfig::default()
        });
        let config = tag(TagType::Audio, 0, &[0xAF, 0, 0x12, 0x10]);
        let frames = |h: &mut HlsSegmenter, from: u32, n: u32| {
            for i in 0..n {
                let t = tag(TagType::Audio, from + i * 23, &[0xAF, 1, 0x21, 0x42]);
                h.push_tag(&t).unwrap();
            }
        };
        // Nothing before it: a first source is no discontinuity.
        assert_eq!(h.discontinue(), None);
        h.push_tag(&config).unwrap();
        frames(&mut h, 0, 10); // segment 0 done, 1 open
        assert_eq!(h.discontinue(), Some(1));
        // The new source's timestamps restart.
        h.push_tag(&config).unwrap();
        frames(&mut h, 0, 10); // segment 2 done, 3 open
        let list = |h: &HlsSegmenter| {
            let mut p = String::new();
            h.playlist("a", false, &mut p);
            p
        };
        let p = list(&h);
        assert!(
            p.contains(
                "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:0.115,\na0.ts\n#EXTINF:0.115,\na1.ts\n\
                        #EXT-X-DISCONTINUITY\n#EXTINF:0.115,\na2.ts\n"
            ),
            "{p}"
        );
        assert!(!p.contains("DISCONTINUITY-SEQUENCE"), "{p}");
        frames(&mut h, 230, 5); // segment 3 done: 0 leaves, 1 2 3 listed
        assert!(list(&h).contains("a1.ts\n#EXT-X-DISCONTINUITY\n#EXTINF:0.115,\na2.ts"));
        frames(&mut h, 345, 5); // segment 4: 2 is first; the boundary before it left with 1
        let p = list(&h);
        assert!(
            p.contains("#EXT-X-MEDIA-SEQUENCE:2\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n#EXTINF"),
            "{p}"
        );
        assert!(!p.contains("#EXT-X-DISCONTINUITY\n"), "{p}");
        frames(&mut h, 460, 5); // segment 5: 2 left too, the count stays
        let p = list(&h);
        assert!(p.contains("#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-DISCONTINUITY-SEQUENCE:1\n"));
        assert!(!p.contains("#EXT-X-DISCONTINUITY\n"), "{p}");
    }

    #[test]
    fn video_waits_for_keyframe() {
        let mut h = HlsSegmenter::new(HlsConfig::default());
        let seq = [
            0x17, 0, 0, 0, 0, 1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 0x42, 1, 0, 2, 0x68,
            0xCE,
        ];
        h.push_tag(&tag(TagType::Video, 0, &seq)).unwrap();
        h.push_tag(&tag(
            TagType::Video,
            0,
            &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41],
        ))
        .unwrap();
        assert_eq!(h.finish(), None);
        h.push_tag(&tag(
            TagType::Video,
            40,
            &[0x17, 1, 0, 0, 0, 0, 0, 0, 1, 0x65],
        ))
        .unwrap();
        assert_eq!(h.finish(), Some(0));
        let data = &h.segment(0).unwrap().data;
        // PAT, PMT, then the IDR's PES with random access.
        assert!(crate::proto::media::ts::TsPacket::parse(&data[376..564])
            .unwrap()
            .random_access());
    }

    #[test]
    fn playlist_format() {
        let segs = [
            Segment {
                sequence: 7,
                duration_ms: 2000,
                data: Bytes::new(),
                discontinuity: false,
            },
            Segment {
                sequence: 8,
                duration_ms: 2040,
                data: Bytes::new(),
                discontinuity: false,
            },
        ];
        let mut s = String::new();
        write_playlist(segs.iter(), 0, "live-", true, 2000, &mut s);
        assert_eq!(
            s,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n#EXT-X-MEDIA-SEQUENCE:7\n\
             #EXTINF:2.000,\nlive-7.ts\n#EXTINF:2.040,\nlive-8.ts\n#EXT-X-ENDLIST\n"
        );
    }
}
