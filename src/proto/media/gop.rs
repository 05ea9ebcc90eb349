//! Live fan-out data structures over shared FLV tags ([`Bytes`], never copied per viewer): a
//! GOP cache that gives a new viewer the configuration and the last group of pictures so the
//! first frame shows at once, and a bounded per-viewer queue that, on overflow, skips to the
//! next keyframe instead of cutting a tag.

use std::collections::VecDeque;

use bytes::Bytes;

use super::flv::{FlvTag, TagType};

/// FLV file header (audio + video) and `PreviousTagSize0`: what an HTTP-FLV response starts with.
pub const FLV_FILE_HEADER: [u8; 13] = *b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00";

/// Bounds of a [`GopCache`] or [`ViewerQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of tags held.
    pub max_bytes: usize,
    /// Tags held.
    pub max_tags: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 20,
            max_tags: 4096,
        }
    }
}

/// What a tag is to the GOP cache and the viewer queues. A live tag is classified once, then
/// offered to every viewer with its class ([`ViewerQueue::push_classified`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Script data (onMetaData).
    Metadata,
    /// AVC/HEVC sequence header.
    VideoConfig,
    /// AAC sequence header.
    AudioConfig,
    /// Other configuration (enhanced-RTMP metadata, multichannel config...).
    Config,
    /// A video keyframe (a sync point).
    Key,
    /// Any other video frame.
    Frame,
    /// An audio frame.
    Audio,
}

/// The class of an FLV tag; `None` for a malformed tag or an unknown tag type.
pub fn classify(tag: &[u8]) -> Option<Class> {
    let t = FlvTag::parse(tag).ok()?;
    Some(match t.header.tag_type {
        TagType::Script => Class::Metadata,
        TagType::Video if t.is_sequence_header() => Class::VideoConfig,
        TagType::Audio if t.is_sequence_header() => Class::AudioConfig,
        _ if t.is_config() => Class::Config,
        TagType::Video if t.is_keyframe() => Class::Key,
        TagType::Video => Class::Frame,
        TagType::Audio => Class::Audio,
        TagType::Other(_) => return None,
    })
}

/// Start-up state of a live stream; see the module doc.
#[derive(Debug, Default)]
pub struct GopCache {
    limits: Limits,
    enabled: bool,
    metadata: Option<Bytes>,
    video_config: Option<Bytes>,
    audio_config: Option<Bytes>,
    gop: VecDeque<Bytes>,
    gop_bytes: usize,
    has_video: bool,
    /// The GOP outgrew the limits: nothing is kept until the next keyframe.
    overflowed: bool,
}

impl GopCache {
    /// A cache; with `enabled` false only metadata and sequence headers are kept (a new
    /// viewer then waits for the next keyframe).
    pub fn new(limits: Limits, enabled: bool) -> Self {
        Self {
            limits,
            enabled,
            ..Self::default()
        }
    }

    /// Records one tag of the stream (malformed tags are not kept).
    pub fn push(&mut self, tag: Bytes) {
        let Some(class) = classify(&tag) else { return };
        match class {
            Class::Metadata => self.metadata = Some(tag),
            Class::VideoConfig => {
                // Frames coded against older parameter sets must not follow the new ones.
                self.clear_gop();
                self.has_video = true;
                self.video_config = Some(tag);
            }
            Class::AudioConfig => self.audio_config = Some(tag),
            Class::Config => {}
            Class::Key if self.enabled => {
                self.clear_gop();
                self.overflowed = false;
                self.append(tag);
            }
            Class::Frame | Class::Audio | Class::Key if self.enabled => {
                if !self.has_video {
                    // Audio only: every frame is a sync point, keep a rolling window.
                    self.append(tag);
                    while self.over() {
                        self.pop_front();
                    }
                } else if !self.gop.is_empty() && !self.overflowed {
                    self.append(tag);
                    if self.over() {
                        self.clear_gop();
                        self.overflowed = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn over(&self) -> bool {
        self.gop_bytes > self.limits.max_bytes || self.gop.len() > self.limits.max_tags
    }

    fn append(&mut self, tag: Bytes) {
        self.gop_bytes += tag.len();
        self.gop.push_back(tag);
    }

    fn pop_front(&mut self) {
        if let Some(t) = self.gop.pop_front() {
            self.gop_bytes -= t.len();
        }
    }

    fn clear_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
    }

    /// Tags held in the GOP part.
    pub fn gop_len(&self) -> usize {
        self.gop.len()
    }

    /// Bytes held in the GOP part.
    pub fn gop_bytes(&self) -> usize {
        self.gop_bytes
    }

    /// What a new viewer gets first, in order: metadata, video and audio sequence headers,
    /// then the last GOP (starting with its keyframe). Prepend [`FLV_FILE_HEADER`] for HTTP-FLV.
    pub fn burst(&self) -> impl Iterator<Item = &Bytes> {
        self.metadata
            .iter()
            .chain(self.video_config.iter())
            .chain(self.audio_config.iter())
            .chain(self.gop.iter())
    }
}

/// A viewer's send queue. Bounded; on overflow the queued frames are dropped and the viewer
/// resumes at the next keyframe (configuration tags are always kept). Tags are whole: the one
/// being written stays with the writer, so a viewer never sees a cut tag.
#[derive(Debug, Default)]
pub struct ViewerQueue {
    limits: Limits,
    q: VecDeque<(Bytes, bool)>,
    bytes: usize,
    skipping: bool,
    has_video: bool,
    dropped: u64,
}

impl ViewerQueue {
    /// An empty queue.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Queues a tag; returns whether it was kept.
    pub fn push(&mut self, tag: Bytes) -> bool {
        let class = classify(&tag);
        self.push_classified(tag, class)
    }

    /// [`push`](Self::push) of a tag already classified (`classify(&tag)`): a stream's tag
    /// goes to thousands of queues and is parsed once.
    pub fn push_classified(&mut self, tag: Bytes, class: Option<Class>) -> bool {
        let Some(class) = class else {
            self.dropped += 1;
            return false;
        };
        let config = matches!(
            class,
            Class::Metadata | Class::VideoConfig | Class::AudioConfig | Class::Config
        );
        if class == Class::VideoConfig {
            self.has_video = true;
        }
        let sync = class == Class::Key || (!self.has_video && class == Class::Audio);
        if self.skipping && !config {
            if !sync {
                self.dropped += 1;
                return false;
            }
            self.skipping = false;
        }
        if self.bytes + tag.len() > self.limits.max_bytes || self.q.len() >= self.limits.max_tags {
            self.drop_frames();
            if !sync && !config {
                self.skipping = true;
                self.dropped += 1;
                return false;
            }
            if self.bytes + tag.len() > self.limits.max_bytes
                || self.q.len() >= self.limits.max_tags
            {
                // Configuration alone fills the queue: the viewer is hopeless; keep bounds.
                self.skipping = !config;
                self.dropped += 1;
                return false;
            }
        }
        self.bytes += tag.len();
        self.q.push_back((tag, config));
        true
    }

    /// Drop frames until the next keyframe (or, without video, the next audio frame): a
    /// viewer whose start-up burst carried no GOP must not begin with frames it cannot
    /// decode. Configuration tags are still kept.
    pub fn skip_to_keyframe(&mut self) {
        self.skipping = true;
    }

    /// Drops the queued frames, keeping configuration tags (the viewer jumps ahead to a
    /// keyframe it gets from elsewhere).
    pub fn drop_frames(&mut self) {
        let before = self.q.len();
        self.q.retain(|(_, c)| *c);
        self.dropped += (before - self.q.len()) as u64;
        self.bytes = self.q.iter().map(|(t, _)| t.len()).sum();
    }

    /// The next tag to write.
    pub fn pop(&mut self) -> Option<Bytes> {
        let (t, _) = self.q.pop_front()?;
        self.bytes -= t.len();
        Some(t)
    }

    /// Tags queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Dropping frames until the next keyframe (after an overflow).
    pub fn skipping(&self) -> bool {
        self.skipping
    }

    /// A video sequence header went through this queue.
    pub fn has_video(&self) -> bool {
        self.has_video
    }

    /// Tags dropped so far (overflow, skipping, malformed).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
#[path = "gop_tests.rs"]
mod tests;
