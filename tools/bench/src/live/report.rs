//! What `live-viewers` reports: each viewer's observations ([`ViewerResult`]), folded into a
//! summable per-worker [`Report`] that the parent merges.

use super::worker::WorkerArgs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one viewer saw (times in ns; `first_*` relative to its connect, 0 = never).
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewerResult {
    pub t_connect_ns: u64,
    /// When the FLV header arrived (absolute).
    pub t_head_ns: u64,
    pub first_video_ns: u64,
    pub first_video_key: bool,
    pub first_key_ns: u64,
    pub first_audio_ns: u64,
    pub video_config: bool,
    pub audio_config: bool,
    pub audio_frames: u64,
    pub video_frames: u64,
    pub last_vts: Option<u32>,
    /// Video timestamp jumps above `--gap-ms` inside the window (skipped frames).
    pub gaps: u64,
    pub bytes: u64,
    pub header_flags: Option<(bool, bool)>,
    /// Why the response ended before the run did.
    pub end: Option<String>,
}

/// A histogram of µs values: 100 µs buckets below 100 ms, 1 ms below 10 s, 100 ms above.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Hist(BTreeMap<u64, u64>);

impl Hist {
    pub(crate) fn add(&mut self, us: u64) {
        let q = match us {
            0..=99_999 => 100,
            100_000..=9_999_999 => 1000,
            _ => 100_000,
        };
        *self.0.entry(us / q * q).or_default() += 1;
    }

    fn merge(&mut self, o: &Hist) {
        for (k, v) in &o.0 {
            *self.0.entry(*k).or_default() += v;
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// The bucket (lower bound, ms) holding quantile `q`; NaN when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return f64::NAN;
        }
        let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (k, v) in &self.0 {
            seen += v;
            if seen >= rank {
                return *k as f64 / 1000.0;
            }
        }
        f64::NAN
    }
}

/// Summable results of a set of viewers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    pub requested: u64,
    /// Connects that failed, by cause.
    pub failures: BTreeMap<String, u64>,
    /// Viewers that got a `200` and the FLV header.
    pub connected: u64,
    /// Viewers whose response ended before the run's end, by cause.
    pub ended_early: BTreeMap<String, u64>,
    /// Connect → first coded video frame complete.
    pub ttff_us: Hist,
    /// Connect → first keyframe complete.
    pub ttkf_us: Hist,
    /// Viewers whose first coded video frame was a keyframe / was not.
    pub first_frame_key: u64,
    pub first_frame_not_key: u64,
    /// Viewers with a coded audio and a coded video frame within `--av-secs` of connecting.
    pub av_within: u64,
    /// Connected viewers that got no coded audio frame at all / no AAC sequence header / an
    /// FLV header without the audio flag / no coded video frame.
    pub no_audio: u64,
    pub no_audio_config: u64,
    pub header_no_audio: u64,
    pub no_video: u64,
    /// Viewers still streaming at the end, whose newest video frame was at most
    /// `--max-lag-ms` old, whose video advanced ≥ 90% of the window, without a skip in it.
    pub keeping_up: u64,
    /// Age of the newest video frame at the window's end (ms after its publication).
    pub lag_us: Hist,
    /// Viewers with at least one skip (video timestamp jump) in the window, and the skips.
    pub skipped_viewers: u64,
    pub skips: u64,
    /// Publication → arrival of every video frame in the window (all viewers).
    pub latency_us: Hist,
    /// Bytes received by all viewers in the window, and the lowest of one viewer.
    pub window_bytes: u64,
    pub min_viewer_bytes: Option<u64>,
    /// Window length (s), as the worker saw it.
    pub window_secs: f64,
}

impl Report {
    /// Folds one viewer in; `w0` is its snapshot at the window start, `win` the window.
    pub(crate) fn add(
        &mut self,
        r: &mut ViewerResult,
        w0: Option<(Option<u32>, u64)>,
        win: (u64, u64),
        a: &WorkerArgs,
    ) {
        if r.header_flags.is_none() {
            if let Some(e) = r.end.take() {
                *self.failures.entry(e).or_default() += 1;
            } else if r.t_connect_ns != 0 {
                *self.failures.entry("no FLV header".into()).or_default() += 1;
            }
            return;
        }
        self.connected += 1;
        if let Some(e) = &r.end {
            *self.ended_early.entry(e.clone()).or_default() += 1;
        }
        if r.first_video_ns > 0 {
            self.ttff_us.add(r.first_video_ns / 1000);
            if r.first_video_key {
                self.first_frame_key += 1;
            } else {
                self.first_frame_not_key += 1;
            }
        }
        if r.first_key_ns > 0 {
            self.ttkf_us.add(r.first_key_ns / 1000);
        }
        let within = a.av_secs * 1_000_000_000;
        if r.first_audio_ns > 0
            && r.first_audio_ns <= within
            && r.first_video_ns > 0
            && r.first_video_ns <= within
        {
            self.av_within += 1;
        }
        self.no_audio += u64::from(r.audio_frames == 0);
        self.no_audio_config += u64::from(!r.audio_config);
        self.header_no_audio += u64::from(r.header_flags.is_some_and(|f| !f.0));
        self.no_video += u64::from(r.video_frames == 0);
        self.skipped_viewers += u64::from(r.gaps > 0);
        self.skips += r.gaps;
        self.window_secs = (win.1.saturating_sub(win.0)) as f64 / 1e9;
        let Some((vts0, bytes0)) = w0 else { return };
        let got = r.bytes - bytes0;
        self.window_bytes += got;
        self.min_viewer_bytes = Some(self.min_viewer_bytes.map_or(got, |m| m.min(got)));
        let Some(last) = r.last_vts else { return };
        let published = a.start_ns + u64::from(last) * 1_000_000;
        let lag = win.1.saturating_sub(published);
        self.lag_us.add(lag / 1000);
        let advanced = u64::from(last.saturating_sub(vts0.unwrap_or(0))) * 1_000_000;
        if r.end.is_none()
            && lag <= a.max_lag_ms * 1_000_000
            && advanced * 10 >= (win.1 - win.0) * 9
            && r.gaps == 0
        {
            self.keeping_up += 1;
        }
    }

    /// Adds another worker's report.
    pub(crate) fn merge(&mut self, o: &Report) {
        self.requested += o.requested;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.ended_early {
            *self.ended_early.entry(k.clone()).or_default() += v;
        }
        self.connected += o.connected;
        self.ttff_us.merge(&o.ttff_us);
        self.ttkf_us.merge(&o.ttkf_us);
        self.first_frame_key += o.first_frame_key;
        self.first_frame_not_key += o.first_frame_not_key;
        self.av_within += o.av_within;
        self.no_audio += o.no_audio;
        self.no_audio_config += o.no_audio_config;
        self.header_no_audio += o.header_no_audio;
        self.no_video += o.no_video;
        self.keeping_up += o.keeping_up;
        self.lag_us.merge(&o.lag_us);
        self.skipped_viewers += o.skipped_viewers;
        self.skips += o.skips;
        self.latency_us.merge(&o.latency_us);
        self.window_bytes += o.window_bytes;
        self.min_viewer_bytes = match (self.min_viewer_bytes, o.min_viewer_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.window_secs = self.window_secs.max(o.window_secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_right_bucket() {
        let mut h = Hist::default();
        for us in [50, 150, 250, 120_500, 12_345_678] {
            h.add(us);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile_ms(0.2), 0.0);
        assert_eq!(h.quantile_ms(0.5), 0.2);
        assert_eq!(h.quantile_ms(0.8), 120.0);
        assert_eq!(h.quantile_ms(1.0), 12_300.0);
        let mut m = Hist::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!((m.count(), m.quantile_ms(0.5)), (10, 0.2));
        assert!(Hist::default().quantile_ms(0.5).is_nan());
    }
}
