//! The zone controller (`corelay zone`): follows its zone's MMRs through their admin `/load`,
//! answers the clients' network test (`POST /test` echoes, `GET /test` answers at once) and
//! `GET /mmr?meeting=M` with a sticky choice by rendezvous hashing over the healthy,
//! non-draining MMRs (docs/connection-process.md says why).

use crate::http::{get_plain, read_request, respond, serve_tls, TlsStream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `corelay zone --config FILE` (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone name (in answers).
    pub zone: String,
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// How often each MMR's `/load` is fetched.
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// An MMR whose last good `/load` is older than this is dead.
    #[serde(default = "default_dead")]
    pub dead_after_ms: u64,
    /// The zone's MMRs.
    pub mmrs: Vec<MmrEntry>,
}

fn default_poll() -> u64 {
    500
}
fn default_dead() -> u64 {
    1500
}

/// One MMR of the zone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MmrEntry {
    /// Stable name: the hash input, so every controller must use the same names.
    pub name: String,
    /// Its wss listener (`host:port`): the control channel and the TLS media rung.
    pub control: String,
    /// Host of its media ports (UDP/TCP 8801); default: the host of `control`.
    #[serde(default)]
    pub media_host: Option<String>,
    /// Its admin `/load` URL (`http://host:port/load`).
    pub load: String,
}

/// What `GET /mmr` answers.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MmrAnswer {
    /// Zone name.
    pub zone: String,
    /// Meeting asked for.
    pub meeting: String,
    /// The chosen MMR's name.
    pub mmr: String,
    /// Its wss `host:port`.
    pub control: String,
    /// Host of its media ports.
    pub media_host: String,
    /// Healthy, non-draining MMRs it was chosen among.
    pub candidates: usize,
}

/// What the controller knows of one MMR.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MmrState {
    /// When its `/load` last answered (not serialized).
    #[serde(skip)]
    pub last_ok: Option<Instant>,
    /// It answered within `dead_after_ms`.
    pub healthy: bool,
    /// Its `/load` says `"draining": true`.
    pub draining: bool,
    /// Its `load_score` (0..=1).
    pub load_score: f64,
    /// Media connections it holds.
    pub media_connections: u64,
}

/// The rendezvous (highest random weight) score of `mmr` for `meeting`: the first 8 bytes of
/// SHA-256 over both names. Every controller computes the same scores from the same names.
pub fn hrw_score(meeting: &str, mmr: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(b"corelay-hrw\0");
    h.update(meeting.as_bytes());
    h.update([0u8]);
    h.update(mmr.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The index of the MMR with the highest score among those `usable`.
pub fn choose(meeting: &str, names: &[&str], usable: &[bool]) -> Option<usize> {
    names
        .iter()
        .enumerate()
        .filter(|(i, _)| usable.get(*i).copied().unwrap_or(false))
        .max_by_key(|(_, n)| (hrw_score(meeting, n), **n))
        .map(|(i, _)| i)
}

/// Parses the fields of `/load` the controller uses.
fn parse_load(body: &[u8]) -> Option<(f64, bool, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let score = v.get("load_score")?.as_f64()?;
    let draining = v.get("draining").and_then(|d| d.as_bool()).unwrap_or(false);
    let media = v
        .get("shards")
        .and_then(|s| s.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.get("media_connections")?.as_u64())
                .sum()
        })
        .unwrap_or(0);
    Some((score, draining, media))
}

/// The controller's shared state.
pub struct Controller {
    cfg: ZoneConfig,
    state: Mutex<Vec<MmrState>>,
}

impl Controller {
    /// A controller with every MMR unknown (unhealthy until its first `/load`).
    pub fn new(cfg: ZoneConfig) -> Arc<Self> {
        let n = cfg.mmrs.len();
        Arc::new(Controller {
            cfg,
            state: Mutex::new(vec![MmrState::default(); n]),
        })
    }

    fn poll_once(&self, i: usize) {
        // Half the dead time: a slow answer is retried before the MMR counts as dead.
        let timeout = Duration::from_millis((self.cfg.dead_after_ms / 2).clamp(100, 5000));
        let got = get_plain(&self.cfg.mmrs[i].load, timeout)
            .ok()
            .filter(|(c, _)| *c == 200)
            .and_then(|(_, b)| parse_load(&b));
        let dead = Duration::from_millis(self.cfg.dead_after_ms);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut st[i];
        if let Some((score, draining, media)) = got {
            s.last_ok = Some(Instant::now());
            (s.load_score, s.draining, s.media_connections) = (score, draining, media);
        }
        s.healthy = s.last_ok.is_some_and(|t| t.elapsed() < dead);
    }

    /// Polls every MMR every `poll_ms`, one thread per MMR (a dead one's timeouts do not delay
    /// the others).
    pub fn spawn_pollers(self: &Arc<Self>) {
        for i in 0..self.cfg.mmrs.len() {
            let me = self.clone();
            std::thread::spawn(move || loop {
                let t = Instant::now();
                me.poll_once(i);
                let period = Duration::from_millis(me.cfg.poll_ms);
                std::thread::sleep(period.saturating_sub(t.elapsed()));
            });
        }
    }

    /// The MMR for `meeting`, if any is healthy and not draining.
    pub fn mmr_for(&self, meeting: &str) -> Option<MmrAnswer> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let dead = Duration::from_millis(self.cfg.dead_after_ms);
        let usable: Vec<bool> = st
            .iter()
            .map(|s| s.last_ok.is_some_and(|t| t.elapsed() < dead) && !s.draining)
            .collect();
        let names: Vec<&str> = self.cfg.mmrs.iter().map(|m| m.name.as_str()).collect();
        let i = choose(meeting, &names, &usable)?;
        let m = &self.cfg.mmrs[i];
        Some(MmrAnswer {
            zone: self.cfg.zone.clone(),
            meeting: meeting.to_string(),
            mmr: m.name.clone(),
            control: m.control.clone(),
            media_host: m
                .media_host
                .clone()
                .unwrap_or_else(|| crate::net::host_of(&m.control).to_string()),
            candidates: usable.iter().filter(|u| **u).count(),
        })
    }

    fn status(&self) -> serde_json::Value {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mmrs: Vec<_> = self
            .cfg
            .mmrs
            .iter()
            .zip(st.iter())
            .map(|(m, s)| serde_json::json!({"name": m.name, "state": s}))
            .collect();
        serde_json::json!({"zone": self.cfg.zone, "mmrs": mmrs})
    }

    fn serve(&self, mut s: TlsStream) {
        while let Ok(Some(req)) = read_request(&mut s) {
            let r = match (req.method.as_str(), req.path()) {
                // The network test: the client times these round trips.
                ("POST", "/test") => respond(&mut s, 200, "application/octet-stream", &req.body),
                ("GET", "/test") => respond(&mut s, 200, "text/plain", self.cfg.zone.as_bytes()),
                ("GET", "/mmr") => match req.query("meeting").filter(|m| !m.is_empty()) {
                    None => respond(&mut s, 400, "text/plain", b"meeting= missing\n"),
                    Some(m) => match self.mmr_for(m) {
                        Some(a) => {
                            let body = serde_json::to_vec(&a).unwrap_or_default();
                            respond(&mut s, 200, "application/json", &body)
                        }
                        None => respond(&mut s, 503, "text/plain", b"no healthy MMR\n"),
                    },
                },
                ("GET", "/status") => {
                    let body = self.status().to_string();
                    respond(&mut s, 200, "application/json", body.as_bytes())
                }
                _ => respond(&mut s, 404, "text/plain", b"not found\n"),
            };
            if r.is_err() {
                return;
            }
        }
    }
}

/// Serves the controller forever.
pub fn run(cfg: ZoneConfig) -> std::io::Result<()> {
    let tls = crate::net::server_config(&cfg.cert, &cfg.key)?;
    let l = TcpListener::bind(cfg.listen)?;
    eprintln!(
        "zone {} controller on https://{}",
        cfg.zone,
        l.local_addr()?
    );
    let c = Controller::new(cfg);
    c.spawn_pollers();
    serve_tls(l, tls, 4096, Duration::from_secs(10), move |s, _| {
        c.serve(s)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_sticky_and_moves_only_the_dead_mmrs_meetings() {
        let names = ["a1", "a2", "a3"];
        let all = [true, true, true];
        let before: Vec<_> = (0..300)
            .map(|m| choose(&format!("m{m}"), &names, &all).unwrap())
            .collect();
        // Spread: every MMR gets some meetings.
        for i in 0..3 {
            assert!(before.iter().filter(|c| **c == i).count() > 50);
        }
        // a2 dies: only its meetings move, each to the same new place on every controller.
        let without = [true, false, true];
        for (m, b) in before.iter().enumerate() {
            let after = choose(&format!("m{m}"), &names, &without).unwrap();
            if *b != 1 {
                assert_eq!(after, *b);
            } else {
                assert_ne!(after, 1);
            }
        }
        assert_eq!(choose("m", &names, &[false, false, false]), None);
    }

    #[test]
    fn load_fields() {
        let b = br#"{"connections":3,"load_score":0.25,"draining":true,"shards":[{"media_connections":2},{"media_connections":1}]}"#;
        assert_eq!(parse_load(b), Some((0.25, true, 3)));
        assert_eq!(parse_load(br#"{"connections":3}"#), None);
    }
}
