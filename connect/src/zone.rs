//! The zone controller (`corelay zone`): follows its zone's MMRs through their admin `/load`,
//! answers the clients' network test (`POST /test` echoes, `GET /test` answers at once) and
//! `GET /mmr?meeting=M` with a sticky, load-aware choice: weighted rendezvous hashing over the
//! healthy, non-draining MMRs (weights: their configured capacity), where an MMR above the
//! high-water mark takes no new meeting but keeps the meetings it holds (asked through its
//! admin `/session?id=`); docs/connection-process.md says why.

use crate::http::{get_plain, respond, Request};
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
    /// An MMR whose `load_score` is at or above this takes no new meeting (it keeps those it
    /// holds). Above 1: load is ignored.
    #[serde(default = "default_high_water")]
    pub high_water: f64,
    /// The zone's MMRs.
    pub mmrs: Vec<MmrEntry>,
}

impl ZoneConfig {
    /// What serde cannot check: capacities and the high-water mark are positive numbers, and
    /// names are unique (they are the hash input).
    pub fn check(&self) -> Result<(), String> {
        if !(self.high_water.is_finite() && self.high_water > 0.0) {
            return Err(format!("high_water must be > 0 (is {})", self.high_water));
        }
        for (i, m) in self.mmrs.iter().enumerate() {
            if !(m.capacity.is_finite() && m.capacity > 0.0) {
                return Err(format!("mmrs {:?}: capacity must be > 0", m.name));
            }
            if self.mmrs[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("mmrs {:?}: name used twice", m.name));
            }
        }
        Ok(())
    }
}

fn default_high_water() -> f64 {
    0.85
}
fn default_capacity() -> f64 {
    1.0
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
    /// Its admin `/load` URL (`http://host:port/load`); `/session?id=` is asked beside it.
    pub load: String,
    /// Relative capacity: the rendezvous weight (an MMR of capacity 2 gets twice the meetings
    /// of one of capacity 1). Every controller of the zone must have the same capacities.
    #[serde(default = "default_capacity")]
    pub capacity: f64,
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
    /// Why this one: `first` (first usable in the meeting's order below the high-water mark),
    /// `holds` (above the mark but already holding the meeting), `all-full` (every usable MMR
    /// is above the mark: the first usable in the order).
    #[serde(default)]
    pub reason: String,
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

/// The weighted rendezvous score (Schindelhauer and Schomaker's logarithmic method):
/// `weight / -ln(u)` with `u` the hash mapped into (0, 1). For one meeting the MMR with the
/// highest score wins, and MMR i wins with probability `weight_i / sum(weights)`; equal weights
/// order exactly as the raw hash does.
pub fn weighted_score(meeting: &str, mmr: &str, weight: f64) -> f64 {
    // 53 bits (an f64's mantissa) plus half a step: never 0 or 1, so ln(u) is finite and < 0.
    let u = ((hrw_score(meeting, mmr) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight.max(0.0) / -u.ln()
}

/// The MMRs in the meeting's preference order (highest score first; ties by name).
pub fn order(meeting: &str, names: &[&str], weights: &[f64]) -> Vec<usize> {
    let mut v: Vec<(f64, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let w = weights.get(i).copied().unwrap_or(1.0);
            (weighted_score(meeting, n, w), i)
        })
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(names[b.1].cmp(names[a.1])));
    v.into_iter().map(|(_, i)| i).collect()
}

/// The index of the MMR with the highest (unweighted) score among those `usable`.
pub fn choose(meeting: &str, names: &[&str], usable: &[bool]) -> Option<usize> {
    order(meeting, names, &vec![1.0; names.len()])
        .into_iter()
        .find(|i| usable.get(*i).copied().unwrap_or(false))
}

/// Walks `order`: the first usable MMR below the high-water mark (`full[i]` false), unless an
/// earlier usable one is full but `holds` the meeting already (it stays there). Every usable
/// one full: the first usable. Both controllers of a zone walk the same order over the same
/// observations, so they agree without talking.
pub fn place(
    order: &[usize],
    usable: &[bool],
    full: &[bool],
    mut holds: impl FnMut(usize) -> bool,
) -> Option<(usize, &'static str)> {
    let mut first = None;
    for &i in order {
        if !usable.get(i).copied().unwrap_or(false) {
            continue;
        }
        first.get_or_insert(i);
        if !full.get(i).copied().unwrap_or(false) {
            return Some((i, "first"));
        }
        if holds(i) {
            return Some((i, "holds"));
        }
    }
    first.map(|i| (i, "all-full"))
}

/// The admin `/session?id=` URL beside a `/load` URL.
fn session_url(load: &str, id: u64) -> String {
    let base = load.strip_suffix("/load").unwrap_or(load);
    format!("{base}/session?id={id}")
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

    /// Whether MMR `i` has members of `meeting` now (its admin `/session?id=`, the session id
    /// being the meeting name's FNV-1a hash as the SDK's `group_id` makes it). No answer
    /// counts as no.
    fn holds(&self, i: usize, meeting: &str) -> bool {
        let url = session_url(&self.cfg.mmrs[i].load, corelay::sdk::group_id(meeting));
        let timeout = Duration::from_millis((self.cfg.dead_after_ms / 2).clamp(100, 5000));
        get_plain(&url, timeout)
            .ok()
            .filter(|(c, _)| *c == 200)
            .and_then(|(_, b)| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("members")?.as_u64())
            .is_some_and(|n| n > 0)
    }

    /// The MMR for `meeting`, if any is healthy and not draining.
    pub fn mmr_for(&self, meeting: &str) -> Option<MmrAnswer> {
        let (usable, full): (Vec<bool>, Vec<bool>) = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let dead = Duration::from_millis(self.cfg.dead_after_ms);
            st.iter()
                .map(|s| {
                    let ok = s.last_ok.is_some_and(|t| t.elapsed() < dead) && !s.draining;
                    (ok, s.load_score >= self.cfg.high_water)
                })
                .unzip()
        };
        let names: Vec<&str> = self.cfg.mmrs.iter().map(|m| m.name.as_str()).collect();
        let weights: Vec<f64> = self.cfg.mmrs.iter().map(|m| m.capacity).collect();
        let ord = order(meeting, &names, &weights);
        // The lock is not held here: `holds` asks the MMR over the network.
        let (i, reason) = place(&ord, &usable, &full, |i| self.holds(i, meeting))?;
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
            reason: reason.to_string(),
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

    /// The answer to one request (the bytes of the HTTP response).
    fn answer(&self, req: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = match (req.method.as_str(), req.path()) {
            // The network test: the client times these round trips.
            ("POST", "/test") => respond(&mut out, 200, "application/octet-stream", &req.body),
            ("GET", "/test") => respond(&mut out, 200, "text/plain", self.cfg.zone.as_bytes()),
            ("GET", "/mmr") => match req.query("meeting").filter(|m| !m.is_empty()) {
                None => respond(&mut out, 400, "text/plain", b"meeting= missing\n"),
                Some(m) => match self.mmr_for(m) {
                    Some(a) => {
                        let body = serde_json::to_vec(&a).unwrap_or_default();
                        respond(&mut out, 200, "application/json", &body)
                    }
                    None => respond(&mut out, 503, "text/plain", b"no healthy MMR\n"),
                },
            },
            ("GET", "/status") => {
                let body = self.status().to_string();
                respond(&mut out, 200, "application/json", body.as_bytes())
            }
            _ => respond(&mut out, 404, "text/plain", b"not found\n"),
        };
        out
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
    let opts = crate::server::Options {
        max_connections: 16384,
        idle: Duration::from_secs(10),
        proxy_from: Vec::new(),
        // `/mmr` may ask an MMR's `/session` over the network.
        blocking: true,
    };
    crate::server::serve(l, tls, opts, move |req, _| c.answer(req))
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
    fn weights_share_meetings_and_full_mmrs_keep_only_what_they_hold() {
        let names = ["a", "b"];
        let n = 4000;
        let on_b = (0..n)
            .filter(|m| order(&format!("m{m}"), &names, &[1.0, 3.0])[0] == 1)
            .count();
        // b has 3/4 of the weight: expect 3000 of 4000 (a 5-sigma band is about +-140).
        assert!((2800..3200).contains(&on_b), "{on_b}");
        // Equal weights order like the raw hash.
        for m in 0..200 {
            let m = format!("m{m}");
            let raw = if hrw_score(&m, "a") > hrw_score(&m, "b") {
                0
            } else {
                1
            };
            assert_eq!(order(&m, &names, &[1.0, 1.0])[0], raw);
        }
        let ord = [1, 0, 2];
        let all = [true; 3];
        assert_eq!(place(&ord, &all, &[false; 3], |_| true), Some((1, "first")));
        // 1 full: kept only if it holds the meeting.
        let full = [false, true, false];
        assert_eq!(place(&ord, &all, &full, |_| false), Some((0, "first")));
        assert_eq!(place(&ord, &all, &full, |i| i == 1), Some((1, "holds")));
        // A dead MMR is not asked.
        assert_eq!(
            place(&ord, &[true, false, true], &full, |_| panic!("asked")),
            Some((0, "first"))
        );
        assert_eq!(
            place(&ord, &all, &[true; 3], |_| false),
            Some((1, "all-full"))
        );
        assert_eq!(place(&ord, &[false; 3], &[false; 3], |_| true), None);
        assert_eq!(session_url("http://h:1/load", 7), "http://h:1/session?id=7");
    }

    #[test]
    fn config_checks() {
        let base = "zone = \"z\"\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\n";
        let m = |n: &str, extra: &str| {
            format!(
                "[[mmrs]]\nname = \"{n}\"\ncontrol = \"h:1\"\nload = \"http://h:2/load\"\n{extra}"
            )
        };
        let cfg = |t: String| toml::from_str::<ZoneConfig>(&t).unwrap().check();
        assert_eq!(
            cfg(format!(
                "{base}{}{}",
                m("a", ""),
                m("b", "capacity = 2.5\n")
            )),
            Ok(())
        );
        assert!(cfg(format!("{base}{}", m("a", "capacity = 0.0\n"))).is_err());
        assert!(cfg(format!("{base}{}{}", m("a", ""), m("a", ""))).is_err());
        assert!(cfg(format!("high_water = 0.0\n{base}{}", m("a", ""))).is_err());
    }

    #[test]
    fn load_fields() {
        let b = br#"{"connections":3,"load_score":0.25,"draining":true,"shards":[{"media_connections":2},{"media_connections":1}]}"#;
        assert_eq!(parse_load(b), Some((0.25, true, 3)));
        assert_eq!(parse_load(br#"{"connections":3}"#), None);
    }
}
