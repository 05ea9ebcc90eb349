//! A shard's log of one stream's live tags, read by all of the shard's viewers of that stream
//! through their own cursor (a sequence number). A tag is appended once per shard, classified
//! once, and never queued per viewer: a viewer's backlog is the log between its cursor and the
//! head, measured in O(1) from cumulative byte offsets. The log forgets what no viewer still
//! needs (`trim`) and is bounded in bytes whatever the viewers do (`max_bytes`): a viewer whose
//! cursor fell off the front resumes at a sync point with the latest configuration tags
//! ([`TagLog::lost_config`]).
//!
//! With many plain-socket viewers of one egress framing, the log also keeps the framed bytes
//! in a [`SpliceFile`] (HTTP chunks or WebSocket binary messages, one per tag), which viewers
//! send with `sendfile` from their position in it: see `splice_file`.

use std::collections::VecDeque;
use std::io::Write;

use bytes::Bytes;

use super::splice_file::SpliceFile;
use crate::proto::media::gop::Class;
use crate::proto::ws::{self, OpCode};

/// How a tag is framed in a splice file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One HTTP/1.1 chunk per tag (HTTP-FLV).
    HttpChunk = 0,
    /// One WebSocket binary message per tag (WebSocket-FLV).
    WsBinary = 1,
}

/// A tag's place in a splice file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of its first framed byte.
    pub off: u64,
    /// Framed length (header, tag, trailer).
    pub len: u32,
    /// Length of the header before the tag.
    pub hdr: u8,
}

impl Span {
    /// Offset after its last byte.
    pub fn end(&self) -> u64 {
        self.off + self.len as u64
    }
}

/// The header and trailer of `tag_len` bytes framed as `f`; returns the header length.
pub fn frame_header(f: Framing, tag_len: usize, hdr: &mut [u8; 20]) -> (usize, &'static [u8]) {
    match f {
        Framing::HttpChunk => {
            let mut w = &mut hdr[..];
            // Cannot fail: 16 hex digits and CRLF fit.
            let _ = write!(w, "{tag_len:x}\r\n");
            (20 - w.len(), b"\r\n")
        }
        Framing::WsBinary => (
            ws::write_header(hdr, true, OpCode::Binary, tag_len, None),
            b"",
        ),
    }
}

/// One tag of the log.
#[derive(Debug)]
pub struct Entry {
    /// The tag (shared, never copied).
    pub tag: Bytes,
    /// Its class (`None`: malformed, never sent).
    pub class: Option<Class>,
    /// Bytes of the stream before this tag (cumulative offset).
    start: u64,
    /// Where it is in each splice file (`None`: not there).
    spans: [Option<Span>; 2],
}

impl Entry {
    /// Where it is in the splice file of `f`.
    pub fn span(&self, f: Framing) -> Option<Span> {
        self.spans[f as usize]
    }

    /// Configuration (metadata, sequence headers): kept through skips.
    pub fn is_config(&self) -> bool {
        matches!(
            self.class,
            Some(Class::Metadata | Class::VideoConfig | Class::AudioConfig | Class::Config)
        )
    }
}

/// See the module doc.
#[derive(Debug)]
pub struct TagLog {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]` (of the next tag when empty).
    first: u64,
    /// Cumulative bytes after the last entry.
    end: u64,
    max_bytes: u64,
    /// A tag was pushed (an empty log accepts any sequence number first).
    started: bool,
    has_video: bool,
    /// The newest metadata, video and audio configuration, with their sequence numbers.
    config: [Option<(u64, Bytes)>; 3],
    /// The framed tags, per [`Framing`], once enabled (`enable`).
    files: [Option<SpliceFile>; 2],
    /// A file's append failed: later tags are not in it (viewers take them from the log).
    broken: [bool; 2],
}

/// What [`TagLog::push`] did with a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Appended,
    /// Older than the head (already delivered): ignored.
    Stale,
    /// A gap before it: the log restarted at it (viewers behind resume at a sync point).
    Restarted,
}

impl TagLog {
    /// An empty log holding at most `max_bytes` of tags.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            first: 0,
            end: 0,
            max_bytes: max_bytes as u64,
            started: false,
            has_video: false,
            config: [None, None, None],
            files: [None, None],
            broken: [false, false],
        }
    }

    /// The sequence number the next tag should have.
    pub fn next_seq(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// The oldest sequence number still held.
    pub fn first_seq(&self) -> u64 {
        self.first
    }

    /// Whether the stream carries video (a video configuration or frame went through).
    pub fn has_video(&self) -> bool {
        self.has_video
    }

    /// Sets whether the stream carries video (from a joining viewer's burst, which may hold
    /// the sequence header this log never saw).
    pub fn note_video(&mut self) {
        self.has_video = true;
    }

    /// Whether a tag of `class` is a point a viewer may start or resume at.
    pub fn is_sync(&self, class: Option<Class>) -> bool {
        class == Some(Class::Key) || (!self.has_video && class == Some(Class::Audio))
    }

    /// Appends tag `seq` of the stream.
    pub fn push(&mut self, seq: u64, tag: Bytes, class: Option<Class>) -> Pushed {
        let mut r = Pushed::Appended;
        if self.started {
            if seq < self.next_seq() {
                return Pushed::Stale;
            }
            if seq > self.next_seq() {
                self.entries.clear();
                r = Pushed::Restarted;
            }
        }
        self.started = true;
        if self.entries.is_empty() {
            self.first = seq;
        }
        if let Some(Class::VideoConfig | Class::Key | Class::Frame) = class {
            self.has_video = true;
        }
        let slot = match class {
            Some(Class::Metadata) => Some(0),
            Some(Class::VideoConfig) => Some(1),
            Some(Class::AudioConfig) => Some(2),
            _ => None,
        };
        if let Some(i) = slot {
            self.config[i] = Some((seq, tag.clone()));
        }
        let start = self.end;
        self.end += tag.len() as u64;
        let mut spans = [None, None];
        if class.is_some() {
            for f in [Framing::HttpChunk, Framing::WsBinary] {
                spans[f as usize] = self.append_framed(f, &tag);
            }
        }
        self.entries.push_back(Entry {
            tag,
            class,
            start,
            spans,
        });
        while self.bytes() > self.max_bytes && self.entries.len() > 1 {
            self.pop_front();
        }
        r
    }

    fn append_framed(&mut self, f: Framing, tag: &[u8]) -> Option<Span> {
        let i = f as usize;
        if self.broken[i] {
            return None;
        }
        let file = self.files[i].as_mut()?;
        let mut hdr = [0u8; 20];
        let (n, trailer) = frame_header(f, tag.len(), &mut hdr);
        match file.append(&[&hdr[..n], tag, trailer]) {
            Ok(off) => Some(Span {
                off,
                len: (n + tag.len() + trailer.len()) as u32,
                hdr: n as u8,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "live: splice file append failed; copying instead");
                self.broken[i] = true;
                None
            }
        }
    }

    /// Keeps the tags from now on framed as `f` in a splice file too (for `sendfile`);
    /// false if the file cannot be made (viewers then copy from the log).
    pub fn enable(&mut self, f: Framing) -> bool {
        let i = f as usize;
        if self.files[i].is_some() {
            return true;
        }
        match SpliceFile::new() {
            Ok(file) => {
                self.files[i] = Some(file);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "live: no splice file; copying instead");
                false
            }
        }
    }

    /// The splice file of `f`, if enabled.
    pub fn file(&self, f: Framing) -> Option<&SpliceFile> {
        self.files[f as usize].as_ref()
    }

    /// From tag `seq` (in the file of `f`) on, the end offset of the run of tags that lie
    /// back to back in that file, stopping once `max` bytes are covered.
    pub fn run_end(&self, f: Framing, seq: u64, max: u64) -> Option<u64> {
        let i = f as usize;
        let first = self.get(seq)?.spans[i]?;
        let mut end = first.end();
        for e in self
            .entries
            .range(usize::try_from(seq - self.first).ok()? + 1..)
        {
            if end - first.off >= max {
                break;
            }
            match e.spans[i] {
                Some(s) if s.off == end => end = s.end(),
                // Malformed: never framed, never sent.
                None if e.class.is_none() => {}
                _ => break,
            }
        }
        Some(end)
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.first += 1;
            self.release_before(&e);
        }
    }

    /// The files' pages wholly before what follows `gone` are no longer needed.
    fn release_before(&mut self, gone: &Entry) {
        for i in 0..2 {
            if let (Some(f), Some(s)) = (self.files[i].as_mut(), gone.spans[i]) {
                f.release(s.end());
            }
        }
    }

    /// Bytes of the stream this log has taken since it began (only grows).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.entries.front().map_or(0, |e| self.end - e.start)
    }

    /// Tags held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tag `seq`, if held.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        let i = seq.checked_sub(self.first)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// Bytes from `seq` to the head (a viewer's backlog); all of the log when `seq` fell off
    /// its front.
    pub fn backlog(&self, seq: u64) -> u64 {
        match self.get(seq) {
            Some(e) => self.end - e.start,
            None if seq < self.first => self.bytes(),
            None => 0,
        }
    }

    /// Bytes from `from` up to (not including) `to`.
    pub fn between(&self, from: u64, to: u64) -> u64 {
        let at = |s: u64| self.get(s).map_or(self.end, |e| e.start);
        at(to).saturating_sub(self.get(from).map_or(self.end, |e| e.start))
    }

    /// Forgets the tags before `seq` (no viewer needs them).
    ///
    /// A viewer in the middle of a tag's framed bytes has its cursor on that tag, so the pages
    /// it still reads are kept.
    pub fn trim(&mut self, seq: u64) {
        while self.first < seq && !self.entries.is_empty() {
            self.pop_front();
        }
    }

    /// The configuration tags a viewer at `cursor` missed because they fell off the front,
    /// oldest first.
    pub fn lost_config(&self, cursor: u64) -> impl Iterator<Item = &Bytes> {
        let first = self.first;
        self.config
            .iter()
            .flatten()
            .filter(move |(s, _)| *s >= cursor && *s < first)
            .map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn appends_in_order_and_measures_backlogs() {
        let mut l = TagLog::new(1 << 20);
        assert_eq!(l.push(5, t(10), Some(Class::Key)), Pushed::Appended);
        assert_eq!(l.push(6, t(20), Some(Class::Frame)), Pushed::Appended);
        assert_eq!(l.push(7, t(30), Some(Class::Audio)), Pushed::Appended);
        assert_eq!(l.first_seq(), 5);
        assert_eq!(l.next_seq(), 8);
        assert_eq!(l.backlog(5), 60);
        assert_eq!(l.backlog(7), 30);
        assert_eq!(l.backlog(8), 0);
        assert_eq!(l.between(5, 7), 30);
        assert_eq!(l.between(6, 8), 50);
        assert_eq!(l.get(6).map(|e| e.tag.len()), Some(20));
        assert!(l.get(8).is_none() && l.get(4).is_none());
        assert!(l.has_video());
    }

    #[test]
    fn stale_tags_are_ignored_and_gaps_restart() {
        let mut l = TagLog::new(1 << 20);
        l.push(1, t(1), Some(Class::Audio));
        l.push(2, t(1), Some(Class::Audio));
        assert_eq!(l.push(2, t(1), Some(Class::Audio)), Pushed::Stale);
        assert_eq!(l.push(0, t(1), Some(Class::Audio)), Pushed::Stale);
        assert_eq!(l.push(9, t(4), Some(Class::Audio)), Pushed::Restarted);
        assert_eq!((l.first_seq(), l.len(), l.bytes()), (9, 1, 4));
        // A viewer at 3 fell off the front: its backlog is what is held.
        assert_eq!(l.backlog(3), 4);
    }

    #[test]
    fn bounded_in_bytes_and_remembers_lost_configuration() {
        let mut l = TagLog::new(100);
        l.push(0, t(5), Some(Class::Metadata));
        l.push(1, t(5), Some(Class::VideoConfig));
        for s in 2..40 {
            l.push(s, t(10), Some(Class::Frame));
        }
        assert!(l.bytes() <= 100);
        assert!(l.first_seq() > 1);
        assert_eq!(l.lost_config(0).count(), 2);
        assert_eq!(l.lost_config(1).count(), 1);
        assert_eq!(l.lost_config(l.first_seq()).count(), 0);
        // One tag bigger than the bound is still held (a viewer must be able to get it).
        l.push(40, t(500), Some(Class::Key));
        assert_eq!((l.len(), l.first_seq()), (1, 40));
    }

    #[test]
    fn trim_forgets_what_no_viewer_needs() {
        let mut l = TagLog::new(1 << 20);
        for s in 0..10 {
            l.push(s, t(1), Some(Class::Audio));
        }
        l.trim(7);
        assert_eq!((l.first_seq(), l.len()), (7, 3));
        l.trim(100);
        assert!(l.is_empty());
        assert_eq!(l.next_seq(), 10);
        assert_eq!(l.push(9, t(1), Some(Class::Audio)), Pushed::Stale);
        // Audio only: every audio frame is a sync point.
        assert!(l.is_sync(Some(Class::Audio)));
        assert_eq!(l.push(10, t(1), Some(Class::Key)), Pushed::Appended);
        assert!(!l.is_sync(Some(Class::Audio)) && l.is_sync(Some(Class::Key)));
    }

    #[test]
    fn framed_tags_lie_back_to_back_in_the_splice_file() {
        let mut l = TagLog::new(1 << 20);
        l.push(0, t(100), Some(Class::Key));
        // Tags before the file was enabled are not in it.
        assert!(l.enable(Framing::HttpChunk));
        l.push(1, t(300), Some(Class::Frame));
        l.push(2, t(7), None); // malformed: never framed
        l.push(3, t(20), Some(Class::Audio));
        assert!(l.get(0).unwrap().span(Framing::HttpChunk).is_none());
        assert!(l.get(1).unwrap().span(Framing::WsBinary).is_none());
        let a = l.get(1).unwrap().span(Framing::HttpChunk).unwrap();
        let b = l.get(3).unwrap().span(Framing::HttpChunk).unwrap();
        // "12c\r\n" + 300 + "\r\n", then "14\r\n" + 20 + "\r\n".
        assert_eq!((a.off, a.len, a.hdr), (0, 307, 5));
        assert_eq!((b.off, b.len, b.hdr), (307, 26, 4));
        assert_eq!(l.run_end(Framing::HttpChunk, 1, 1 << 20), Some(333));
        assert_eq!(l.run_end(Framing::HttpChunk, 1, 100), Some(307));
        assert_eq!(l.run_end(Framing::HttpChunk, 0, 1 << 20), None);
        assert_eq!(l.file(Framing::HttpChunk).unwrap().end(), 333);
        let mut h = [0u8; 20];
        let (n, trailer) = frame_header(Framing::WsBinary, 300, &mut h);
        assert_eq!((&h[..n], trailer), (&[0x82, 126, 1, 44][..], &b""[..]));
    }
}
