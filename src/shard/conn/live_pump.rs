//! A viewer's output: its bounded queue of shared tags (skip to the next keyframe on
//! overflow, closed when it stays behind), and merged writes: several tags in one `writev`
//! straight from the shared buffers on plain connections (a tag is never copied per viewer),
//! sealed into TLS records on TLS ones, chunked into RTMP messages for RTMP players.

use super::live::{LiveShard, Role};
use super::{CloseCause, Shard, F_WRITE_BLOCKED};
use crate::live::taglog::{frame_header, Framing, TagLog};
use crate::live::Stream;
use crate::proto::media::gop::{classify, Class, Limits, ViewerQueue};
use crate::proto::ws::{self, OpCode};
use crate::shard::conn_table::ConnId;
use crate::shard::handler::LiveEgress;
use bytes::{Bytes, BytesMut};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One merged write carries at most this many tags...
const BATCH_TAGS: usize = 64;
/// ...or about this many bytes.
const BATCH_BYTES: usize = 512 << 10;
/// Queued bytes that go out without waiting for the latency budget.
pub(super) const MW_FLUSH_BYTES: usize = 256 << 10;
/// A viewer's arena for the small headers of its writes (HTTP chunk sizes, WebSocket frame
/// headers): one allocation serves dozens of them instead of one each.
const HDR_ARENA: usize = 128;

/// A viewer of a stream on this shard. Its live tags are read from the shard's log of the
/// stream ([`TagLog`]) at its cursor; its own queue holds only the start-up burst and the
/// configuration tags it must not lose when it skips ahead.
pub(crate) struct Viewer {
    stream: Arc<Stream>,
    egress: LiveEgress,
    /// The burst (metadata, sequence headers, the cached GOP) and configuration kept across
    /// skips: written before anything from the log.
    pre: ViewerQueue,
    /// The next tag of the shard's log this viewer takes.
    cursor: u64,
    /// Log frames are dropped until a sync point (no GOP in the burst, or fell behind).
    skipping: bool,
    /// Backlog (bytes) above which the viewer skips ahead to the next keyframe.
    limit: u64,
    max_skips: u32,
    /// The merged write in flight: its parts, the first unsent part and the offset in it.
    parts: Vec<Bytes>,
    /// Where the headers in `parts` are cut from (see [`HDR_ARENA`]).
    hdrs: BytesMut,
    part: usize,
    off: usize,
    /// When the oldest unsent tag was queued (merged-write latency budget).
    since: Option<Instant>,
    mw: Duration,
    /// Overflows since the viewer was last caught up.
    skips_in_row: u32,
    ttfb_from: Option<Instant>,
    ending: bool,
    slow: bool,
    /// On the shard's timed list (`LiveShard::waiting`) with a deadline.
    scheduled: bool,
    /// On the shard's list for this round (`LiveShard::urgent`).
    urgent: bool,
    /// Write now, whatever the latency budget (the socket just drained).
    forced: bool,
    /// On its stream's list of caught-up viewers (`ShardStream::idle`).
    pub(super) idle_listed: bool,
    /// A plain (not TLS) HTTP-FLV or WebSocket-FLV viewer: it may send from the log's splice
    /// file of this framing.
    framing: Option<Framing>,
    /// Its position in that file when in the middle of a tag's framed bytes.
    fpos: Option<u64>,
}

/// Which of the shard's lists a viewer goes on to be written (see [`Viewer::schedule`]).
pub(super) enum Slot {
    /// This round.
    Now,
    /// When its latency budget is spent.
    At(Instant),
}

/// What the shard's log of a stream told a viewer when a keyframe arrived.
pub(super) enum Lag {
    /// Within its budget (or not concerned).
    Fine,
    /// Skipped ahead to the keyframe.
    Skipped,
    /// Skipped `max_skips` times without catching up: it must be closed.
    Hopeless,
}

impl Viewer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        stream: Arc<Stream>,
        egress: LiveEgress,
        queue_bytes: usize,
        max_skips: u32,
        mw: Duration,
        join: crate::live::Join,
        at: Instant,
    ) -> Self {
        let mut pre = ViewerQueue::new(Limits {
            max_bytes: queue_bytes,
            max_tags: Limits::default().max_tags,
        });
        // Without a cached GOP (`gop_cache = false`, or a GOP too big to cache) the burst is
        // configuration only: live frames are dropped until the next keyframe.
        let mut has_key = false;
        for t in join.burst {
            let class = classify(&t);
            has_key |= class == Some(Class::Key);
            pre.push_classified(t, class);
        }
        Self {
            stream,
            egress,
            pre,
            cursor: join.start_seq,
            skipping: !has_key,
            limit: queue_bytes as u64,
            max_skips,
            parts: Vec::new(),
            hdrs: BytesMut::new(),
            part: 0,
            off: 0,
            since: Some(at),
            mw,
            skips_in_row: 0,
            ttfb_from: Some(at),
            ending: false,
            slow: false,
            scheduled: false,
            urgent: false,
            forced: true,
            idle_listed: false,
            framing: None,
            fpos: None,
        }
    }

    pub(super) fn egress(&self) -> LiveEgress {
        self.egress
    }

    pub(super) fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// A plain-socket viewer: the framing it could send from a splice file.
    pub(super) fn set_plain(&mut self) -> Option<Framing> {
        self.framing = match self.egress {
            LiveEgress::HttpFlv => Some(Framing::HttpChunk),
            LiveEgress::WsFlv => Some(Framing::WsBinary),
            _ => None,
        };
        self.framing
    }

    /// On no list (not waiting for a deadline, a round or its stream's next tag) and not
    /// finished: nothing would ever write it.
    pub(super) fn stranded(&self) -> bool {
        !self.urgent && !self.scheduled && !self.idle_listed && !self.forced
    }

    /// The next sequence number it takes from the log.
    pub(super) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether the burst carried video configuration (the shard's log may not have seen it).
    pub(super) fn has_video(&self) -> bool {
        self.pre.has_video()
    }

    /// Nothing left to write: whatever it skipped before, it keeps up now; it waits on its
    /// stream's idle list for the next tag.
    fn caught_up(&mut self, live: Option<&mut LiveShard>, id: ConnId) {
        self.skips_in_row = 0;
        self.since = None;
        if !std::mem::replace(&mut self.idle_listed, true) {
            if let Some(s) = live.and_then(|l| l.streams.get_mut(&self.stream.id)) {
                s.idle.push(id);
            }
        }
    }

    /// A tag reached the log while this viewer was caught up: its latency budget starts.
    pub(super) fn woken(&mut self, now: Instant) {
        self.idle_listed = false;
        if self.since.is_none() {
            self.since = Some(now);
        }
    }

    /// Keyframe `key` was appended to `log`: a viewer more than its budget behind skips to
    /// it (keeping the configuration it would have passed).
    pub(super) fn on_keyframe(&mut self, log: &TagLog, key: u64) -> Lag {
        if self.ending || self.slow || key < self.cursor {
            return Lag::Fine;
        }
        if self.cursor >= log.first_seq() {
            if self.pre.bytes() as u64 + log.between(self.cursor, key) <= self.limit {
                return Lag::Fine;
            }
            // The tag being sent is finished from its own bytes, never cut.
            self.detach(log);
            self.pre.drop_frames();
            for s in self.cursor..key {
                if let Some(e) = log.get(s).filter(|e| e.is_config()) {
                    self.pre.push_classified(e.tag.clone(), e.class);
                }
            }
        } else {
            self.pre.drop_frames();
            self.catch_lost(log);
        }
        self.cursor = key;
        self.skipping = false;
        self.skipped()
    }

    /// Moves the rest of a tag half sent from the splice file into the write in flight, so
    /// the cursor can move elsewhere.
    fn detach(&mut self, log: &TagLog) {
        let (Some(p), Some(f)) = (self.fpos.take(), self.framing) else {
            return;
        };
        let Some((e, s)) = log.get(self.cursor).and_then(|e| Some((e, e.span(f)?))) else {
            // Fell off the log mid-tag: it cannot be finished.
            self.slow = true;
            return;
        };
        let mut hdr = [0u8; 20];
        let (n, trailer) = frame_header(f, e.tag.len(), &mut hdr);
        self.parts.clear();
        self.part = 0;
        self.off = 0;
        let h = self.header(&hdr[..n]);
        self.parts.push(h);
        self.parts.push(e.tag.clone());
        if !trailer.is_empty() {
            self.parts.push(Bytes::from_static(trailer));
        }
        self.advance(p.saturating_sub(s.off) as usize);
        self.cursor += 1;
    }

    /// What to send from the splice file: `(from, to)` offsets, when this viewer can (a
    /// plain socket, nothing of its own queued, not skipping, the log's file holding its next
    /// tag). A viewer in the middle of a tag always continues from the file.
    fn splice_range(&mut self, log: &TagLog) -> Option<(Framing, u64, u64)> {
        let f = self.framing?;
        log.file(f)?;
        if self.fpos.is_none() && (!self.pre.is_empty() || self.skipping) {
            return None;
        }
        let Some(span) = log.get(self.cursor).and_then(|e| e.span(f)) else {
            if self.fpos.take().is_some() {
                // Fell off the log mid-tag: it cannot be finished.
                self.slow = true;
            }
            return None;
        };
        let from = self.fpos.unwrap_or(span.off);
        let to = log.run_end(f, self.cursor, BATCH_BYTES as u64)?;
        Some((f, from, to))
    }

    /// The splice file was sent up to `pos`: the cursor moves past the tags wholly sent.
    fn advance_file(&mut self, log: &TagLog, f: Framing, pos: u64) {
        while let Some(e) = log.get(self.cursor) {
            match e.span(f) {
                Some(s) if s.end() <= pos => self.cursor += 1,
                None if e.class.is_none() => self.cursor += 1,
                _ => break,
            }
        }
        self.fpos = match log.get(self.cursor).and_then(|e| e.span(f)) {
            Some(s) if pos > s.off => Some(pos),
            _ => None,
        };
    }

    /// The configuration tags that fell off the log's front before this viewer read them.
    fn catch_lost(&mut self, log: &TagLog) {
        let lost: Vec<Bytes> = log.lost_config(self.cursor).cloned().collect();
        for t in lost {
            let class = classify(&t);
            self.pre.push_classified(t, class);
        }
    }

    fn skipped(&mut self) -> Lag {
        self.stream.count_skip();
        self.skips_in_row += 1;
        if self.skips_in_row >= self.max_skips {
            self.slow = true;
            return Lag::Hopeless;
        }
        Lag::Skipped
    }

    /// The stream ended: write what is queued, then end the response.
    pub(super) fn end(&mut self) {
        self.ending = true;
        self.forced = true;
    }

    /// Write without waiting for the latency budget.
    pub(super) fn force(&mut self) {
        self.forced = true;
    }

    /// Marks the viewer for a write: on this round's list when it must write now (or its
    /// budget is already spent), else on the timed list at the end of its latency budget.
    /// `None`: already on that list, or nothing to write (the next tag schedules it).
    pub(super) fn schedule(&mut self, now: Instant) -> Option<Slot> {
        if !self.must_write() {
            // A deadline is only taken from a set `since`: `since` changes only after a write,
            // which takes the viewer off the timed list, so its entry's deadline stays true.
            let at = self.since? + self.mw;
            if at > now {
                return (!std::mem::replace(&mut self.scheduled, true)).then_some(Slot::At(at));
            }
        }
        (!std::mem::replace(&mut self.urgent, true)).then_some(Slot::Now)
    }

    fn must_write(&self) -> bool {
        self.forced || self.ending || self.slow || self.mw.is_zero()
    }

    fn due(&self, now: Instant) -> bool {
        self.must_write() || self.since.is_some_and(|t| now.duration_since(t) >= self.mw)
    }

    /// Nothing in flight, nothing queued, nothing left in the log for it.
    fn idle(&self, log: Option<&TagLog>) -> bool {
        self.fpos.is_none()
            && self.part >= self.parts.len()
            && self.pre.is_empty()
            && log.is_none_or(|l| self.cursor >= l.next_seq())
    }

    /// Take the next merged write into `parts`: the viewer's own queue first, then the log.
    fn fill(&mut self, log: Option<&TagLog>) {
        self.parts.clear();
        self.part = 0;
        self.off = 0;
        if let Some(l) = log {
            if self.cursor < l.first_seq() && !self.ending {
                // Fell off the log's front (it is bounded whatever the viewers do).
                self.pre.drop_frames();
                self.catch_lost(l);
                self.cursor = l.first_seq();
                self.skipping = true;
                let _ = self.skipped();
            }
        }
        let http = self.egress == LiveEgress::HttpFlv;
        if http {
            // One HTTP chunk per merged write: its size line goes here once it is known.
            self.parts.push(Bytes::new());
        }
        let (mut bytes, mut tags) = (0, 0);
        while tags < BATCH_TAGS && bytes < BATCH_BYTES {
            let t = match self.pre.pop() {
                Some(t) => t,
                None => match log.and_then(|l| self.next_live(l)) {
                    Some(t) => t,
                    None => break,
                },
            };
            bytes += t.len();
            tags += 1;
            if self.egress == LiveEgress::WsFlv {
                // One binary message per tag, as flv.js / mpegts.js take them.
                let mut hdr = [0u8; ws::MAX_HEADER_LEN];
                let n = ws::write_header(&mut hdr, true, OpCode::Binary, t.len(), None);
                let h = self.header(&hdr[..n]);
                self.parts.push(h);
            }
            self.parts.push(t);
        }
        if tags == 0 {
            self.parts.clear();
            return;
        }
        if http {
            let mut line = [0u8; 20];
            let mut w = &mut line[..];
            // Cannot fail: 16 hex digits and CRLF fit.
            let _ = write!(w, "{bytes:x}\r\n");
            let n = 20 - w.len();
            self.parts[0] = self.header(&line[..n]);
            self.parts.push(Bytes::from_static(b"\r\n"));
        }
    }

    /// The next tag of the log this viewer sends (frames before a sync point are passed
    /// over while it skips; malformed tags never go out).
    fn next_live(&mut self, log: &TagLog) -> Option<Bytes> {
        while let Some(e) = log.get(self.cursor) {
            self.cursor += 1;
            if e.class.is_none() {
                continue;
            }
            if self.skipping && !e.is_config() {
                if !log.is_sync(e.class) {
                    continue;
                }
                self.skipping = false;
            }
            return Some(e.tag.clone());
        }
        None
    }

    /// `b` as shared bytes cut from the viewer's header arena.
    fn header(&mut self, b: &[u8]) -> Bytes {
        if self.hdrs.capacity() - self.hdrs.len() < b.len() {
            // Reuses the arena in place once every header cut from it is gone.
            self.hdrs.reserve(HDR_ARENA.max(b.len()));
        }
        self.hdrs.extend_from_slice(b);
        self.hdrs.split().freeze()
    }

    /// `n` bytes of the write in flight went out.
    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.part < self.parts.len() {
            let left = self.parts[self.part].len() - self.off;
            if n >= left {
                n -= left;
                self.part += 1;
                self.off = 0;
            } else {
                self.off += n;
                n = 0;
            }
        }
    }
}

/// Write the viewers on this round's list and those on the timed list whose latency budget
/// is spent. The timed list is in deadline order, so a round touches only the viewers it
/// writes, not every viewer holding tags (8,000 viewers, a round every few ms).
pub(super) fn pump_waiting(io: &mut Shard) {
    let Some(live) = io.live.as_mut() else {
        return;
    };
    let now = Instant::now();
    let mut batch = std::mem::take(&mut live.spare);
    batch.append(&mut live.urgent);
    while let Some(&(at, id)) = live.waiting.front() {
        if at > now {
            break;
        }
        live.waiting.pop_front();
        batch.push(id);
    }
    let mut again = Vec::new();
    for &id in &batch {
        let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) else {
            continue;
        };
        // Listed twice (written already this round), or an early deadline left behind by a
        // write that caught up since: its current entry comes later.
        if !(v.urgent || v.scheduled && v.due(now)) {
            continue;
        }
        v.scheduled = false;
        v.urgent = false;
        v.forced = false;
        if write_viewer(io, id) {
            if let Some(Role::Viewer(v)) = io.live_conn(id).map(|l| &mut l.role) {
                v.urgent = true;
                again.push(id);
            }
        }
    }
    if let Some(live) = io.live.as_mut() {
        live.urgent.append(&mut again);
        batch.clear();
        live.spare = batch;
    }
}

/// Write what `id` has queued as far as the socket takes it. Returns true when it must be
/// called again next round (TLS / RTMP output was staged and more waits).
fn write_viewer(io: &mut Shard, id: ConnId) -> bool {
    loop {
        let Some(c) = io.conns.get_mut(id) else {
            return false;
        };
        if !c.life.is_open() {
            return false;
        }
        let write_blocked = c.flags & F_WRITE_BLOCKED != 0;
        let staged = c.tx_queued() > 0;
        let tls = c.transport.is_tls();
        let fd = c.fd.as_raw_fd();
        let Some(l) = c.extra.as_mut().and_then(|x| x.live.as_deref_mut()) else {
            return false;
        };
        let Role::Viewer(v) = &mut l.role else {
            return false;
        };
        if v.slow {
            // Stayed behind: dropped without a goodbye (its socket is full anyway).
            io.abort(id, 1008, CloseCause::SlowConsumer);
            return false;
        }
        if write_blocked {
            // EPOLLOUT brings it back (`live_writable`).
            return false;
        }
        if staged {
            // The engine's own output (a response head, a batch sealed into TLS records) is
            // still on its way out, e.g. a send in flight on the data ring, which completes in
            // a later round without any EPOLLOUT: try again next round, behind it.
            return true;
        }
        let sid = v.stream.id;
        let log = io
            .live
            .as_deref()
            .and_then(|l| l.streams.get(&sid))
            .map(|s| &s.log);
        if v.part >= v.parts.len() && !tls {
            if let Some((f, from, to)) = log.and_then(|l| v.splice_range(l)) {
                let Some(l) = log else { return false };
                let Some(file) = l.file(f) else { return false };
                if let Some(at) = v.ttfb_from.take() {
                    v.stream.count_ttfb(at.elapsed().as_micros() as u64);
                }
                let n = match file.send(fd, from, (to - from) as usize) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.flags |= F_WRITE_BLOCKED;
                        return false;
                    }
                    Err(_) => {
                        io.abort(id, 1006, CloseCause::Reset);
                        return false;
                    }
                };
                v.advance_file(l, f, from + n as u64);
                v.stream.count_out(n as u64);
                io.metrics.bytes_out += n as u64;
                c.life.on_input(io.now);
                if n == 0 {
                    c.flags |= F_WRITE_BLOCKED;
                    return false;
                }
                // A short `sendfile` does not mean a full socket (it can stop at a page of
                // its internal pipe with room left, and then no EPOLLOUT would come): go on
                // until it sends all or says EAGAIN.
                continue;
            }
        }
        if v.fpos.is_some() || v.slow {
            // Half a tag sent from a file it can no longer read (it fell off the log's
            // front): the stream cannot be continued; closed at the top of the loop.
            v.fpos = None;
            v.slow = true;
            continue;
        }
        if v.part >= v.parts.len() {
            v.fill(log);
        }
        if v.part >= v.parts.len() {
            // Caught up: whatever it skipped before, it keeps up now. The next tag of the
            // stream wakes it (`ShardStream::idle`).
            let ending = v.ending;
            if !ending {
                v.caught_up(io.live.as_deref_mut(), id);
            }
            if ending {
                finish(io, id);
            }
            return false;
        }
        let stream = v.stream.clone();
        if let Some(from) = v.ttfb_from.take() {
            stream.count_ttfb(from.elapsed().as_micros() as u64);
        }
        if v.egress == LiveEgress::Rtmp || tls {
            // Staged: sealed into TLS records, or chunked into RTMP messages (copies that
            // the protocol needs anyway). One batch per round; the flush writes it.
            let parts = std::mem::take(&mut v.parts);
            let (start, off) = (v.part, v.off);
            v.part = 0;
            v.off = 0;
            let more = !v.pre.is_empty() || log.is_some_and(|l| v.cursor < l.next_seq());
            let mut out = 0;
            if let Some(s) = l.rtmp.as_deref_mut() {
                for p in &parts[start..] {
                    // A tag the session cannot chunk (not audio/video/data) is skipped.
                    let _ = s.send_tag(p);
                }
                let o = s.pending_output();
                out = o.len();
                let o = o.to_vec();
                s.advance_output(out);
                io.stage(id, |b| b.extend_from_slice(&o));
            } else {
                io.stage(id, |b| {
                    for (i, p) in parts[start..].iter().enumerate() {
                        let p = if i == 0 { &p[off..] } else { &p[..] };
                        out += p.len();
                        b.extend_from_slice(p);
                    }
                });
            }
            stream.count_out(out as u64);
            if let Some(c) = io.conns.get_mut(id) {
                c.life.on_input(io.now);
            }
            // Keep the list's allocation for the next batch. (The connection's fields, not
            // `live_conn`: `io.live` is borrowed below.)
            let role = io
                .conns
                .get_mut(id)
                .and_then(|c| c.extra.as_mut())
                .and_then(|x| x.live.as_deref_mut())
                .map(|l| &mut l.role);
            let Some(Role::Viewer(v)) = role else {
                return false;
            };
            let mut parts = parts;
            parts.clear();
            v.parts = parts;
            if more || v.ending {
                // Next round: the rest, or the end of the response after what was staged.
                return true;
            }
            // Caught up as far as the log goes: the next tag wakes it.
            v.caught_up(io.live.as_deref_mut(), id);
            return false;
        }
        let n = match writev(fd, &v.parts[v.part..], v.off) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.flags |= F_WRITE_BLOCKED;
                return false;
            }
            Err(_) => {
                io.abort(id, 1006, CloseCause::Reset);
                return false;
            }
        };
        v.advance(n);
        let idle = v.idle(log);
        let blocked = v.part < v.parts.len();
        stream.count_out(n as u64);
        io.metrics.bytes_out += n as u64;
        // Output taken counts as a sign of life: a viewer sends nothing.
        c.life.on_input(io.now);
        if blocked {
            c.flags |= F_WRITE_BLOCKED;
            return false;
        }
        if idle {
            continue; // may finish an ended stream
        }
    }
}

/// The stream ended and everything went out: end the response.
fn finish(io: &mut Shard, id: ConnId) {
    let Some(l) = io.live_conn(id) else { return };
    let egress = match &l.role {
        Role::Viewer(v) => v.egress,
        _ => return,
    };
    match egress {
        LiveEgress::WsFlv => io.close_for(id, 1000, "stream ended", CloseCause::Local),
        LiveEgress::HttpFlv => {
            io.set_cause(id, CloseCause::Local, 1000);
            io.stage(id, |b| b.extend_from_slice(b"0\r\n\r\n"));
            io.begin_drain(id);
        }
        LiveEgress::Rtmp => {
            if let Some(s) = l.rtmp.as_deref_mut() {
                let _ = s.end_play();
                let o = s.pending_output().to_vec();
                s.advance_output(o.len());
                io.stage(id, |b| b.extend_from_slice(&o));
            }
            io.set_cause(id, CloseCause::Local, 1000);
            io.begin_drain(id);
        }
        LiveEgress::Hls => {}
    }
}

/// `writev(2)` of `parts`, the first starting at `off`.
fn writev(fd: i32, parts: &[Bytes], off: usize) -> io::Result<usize> {
    let mut iov: [libc::iovec; 2 * BATCH_TAGS + 2] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2 * BATCH_TAGS + 2];
    let mut n = 0;
    for (i, p) in parts.iter().enumerate().take(iov.len()) {
        let s = if i == 0 {
            &p[off.min(p.len())..]
        } else {
            &p[..]
        };
        iov[n] = libc::iovec {
            iov_base: s.as_ptr() as *mut libc::c_void,
            iov_len: s.len(),
        };
        n += 1;
    }
    loop {
        // sendmsg, not writev: MSG_NOSIGNAL (a reset viewer must not raise SIGPIPE).
        let msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: iov.as_mut_ptr(),
            msg_iovlen: n,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        // SAFETY: msg points at `n` initialised iovecs over live buffers.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
