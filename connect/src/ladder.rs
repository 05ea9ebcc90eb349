//! The connection ladder: meeting lookup → zone test against every controller → MMR from
//! the chosen zone's controller → control channel (wss) → one media connection per type
//! (staggered race of UDP, TCP, TLS 443); through a proxy straight to TLS; through the first
//! tunnel to answer when no controller answers in time. Each run is reported.

use crate::http::request;
use crate::lookup::{LookupAnswer, ZoneEntry};
use crate::media::{race, AttemptReport, Cred, Link, Rung, Step, Target, TlsConfigs};
use crate::net::{host_of, open_tls, Conn, Route};
use crate::zone::MmrAnswer;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// Controllers (and tunnels) probed at most in one run, each on its own thread.
pub const MAX_PROBES: usize = 32;

/// Every rung's timeout and delay.
#[derive(Clone, Debug, Serialize)]
pub struct Timeouts {
    /// The lookup request.
    pub lookup: Duration,
    /// How long the zone test waits for any controller before trying tunnels (5.5 s).
    pub zone_wait: Duration,
    /// Once one controller answered, how much longer the others may take.
    pub zone_grace: Duration,
    /// Zones whose test RTT is within this of the best count as equal; the lookup's order
    /// decides between them (members of a meeting converge, noise does not flap the choice).
    pub zone_tolerance: Duration,
    /// Each tunnel ping.
    pub tunnel_ping: Duration,
    /// The MMR request to a controller.
    pub mmr: Duration,
    /// Control channel: connect, handshake and the credentials notice.
    pub control: Duration,
    /// UDP admission.
    pub udp: Duration,
    /// TCP starts this long after UDP (at least; twice the zone RTT if that is longer).
    pub tcp_delay: Duration,
    /// TCP admission.
    pub tcp: Duration,
    /// TLS starts this long after TCP.
    pub tls_delay: Duration,
    /// TLS admission.
    pub tls: Duration,
    /// A media connection silent this long (UDP keepalives unanswered) is dead.
    pub dead_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Timeouts {
            lookup: ms(3000),
            zone_wait: ms(5500),
            zone_grace: ms(1000),
            zone_tolerance: ms(20),
            tunnel_ping: ms(3000),
            mmr: ms(3000),
            control: ms(4000),
            udp: ms(2000),
            tcp_delay: ms(250),
            tcp: ms(2000),
            tls_delay: ms(250),
            tls: ms(4000),
            dead_after: ms(3000),
        }
    }
}

/// What one run of the ladder needs.
#[derive(Clone)]
pub struct Plan {
    /// Lookup service `host:port`.
    pub lookup: String,
    /// Meeting id.
    pub meeting: String,
    /// Member id.
    pub member: u64,
    /// Media types (`audio`, `video`).
    pub media: Vec<String>,
    /// HTTP CONNECT proxy, if any.
    pub proxy: Option<String>,
    /// TLS settings.
    pub tls: TlsConfigs,
    /// Timeouts.
    pub t: Timeouts,
    /// Do not try UDP: set by the join after a run where UDP's Binding request bound on the
    /// MMR but no answer came back (every other rung was then refused 409).
    pub avoid_udp: bool,
}

/// One controller's network test.
#[derive(Clone, Debug, Serialize)]
pub struct ZoneProbe {
    /// Zone.
    pub zone: String,
    /// Controller.
    pub controller: String,
    /// Median round trip of the test requests (ms, fractional).
    pub rtt_ms: Option<f64>,
    /// Why it has no result.
    pub error: Option<String>,
}

/// One tunnel ping.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelProbe {
    /// Tunnel.
    pub tunnel: String,
    /// Time to the answer (ms) when it came first or at all before the choice.
    pub answered_ms: Option<u64>,
}

/// The media connection chosen for a type.
#[derive(Clone, Debug, Serialize)]
pub struct MediaChoice {
    /// `audio`, `video`.
    pub media: String,
    /// The winning rung, if any.
    pub rung: Option<Rung>,
    /// Admitted at (ms after the join began).
    pub admitted_ms: Option<u64>,
    /// Every attempt of the race.
    pub attempts: Vec<AttemptReport>,
}

/// One run of the ladder.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    /// Started at (ms after the join began).
    pub started_ms: u64,
    /// `direct`, `proxy`, `tunnel`.
    pub route: String,
    /// The proxy or tunnel used.
    pub via: Option<String>,
    /// Lookup answered at (ms after the run began).
    pub lookup_ms: Option<u64>,
    /// The lookup's region for this client.
    pub region: Option<String>,
    /// Zone tests.
    pub zone_tests: Vec<ZoneProbe>,
    /// Tunnel pings (only when no controller answered).
    pub tunnel_pings: Vec<TunnelProbe>,
    /// Chosen zone.
    pub zone: Option<String>,
    /// Why that zone.
    pub why: Vec<String>,
    /// The MMR the controller gave.
    pub mmr: Option<MmrAnswer>,
    /// Controller that answered it.
    pub controller: Option<String>,
    /// Control channel open and notice read at (ms after the join began).
    pub control_ms: Option<u64>,
    /// Per media type.
    pub media: Vec<MediaChoice>,
    /// Why the run failed or ended.
    pub ended: Option<String>,
    /// Packets sent during this run (every media type).
    pub sent: u64,
    /// Packets received and decrypted during this run.
    pub received: u64,
}

/// A connected run: the control channel and one link per media type.
pub struct Session {
    /// The control channel.
    pub control: WebSocket<Conn>,
    /// `(media, link)`.
    pub links: Vec<(String, Link)>,
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// HTTPS GET over a fresh connection along `route`.
fn https_get(
    p: &Plan,
    route: &Route,
    target: &str,
    path: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut c = open_tls(route, &p.tls.plain, &p.tls.plain, target, timeout)
        .map_err(|e| format!("{target}: {e}"))?;
    let (code, body) = request(&mut c, "GET", host_of(target), path, b"")
        .map_err(|e| format!("{target}{path}: {e}"))?;
    if code != 200 {
        return Err(format!("{target}{path}: status {code}"));
    }
    Ok(body)
}

/// TLS connect, then three echo round trips: the median RTT in ms.
fn network_test(p: &Plan, route: &Route, ctrl: &str, timeout: Duration) -> Result<f64, String> {
    let mut c =
        open_tls(route, &p.tls.plain, &p.tls.plain, ctrl, timeout).map_err(|e| e.to_string())?;
    let mut rtts = Vec::new();
    let payload = [0x5au8; 256];
    for _ in 0..3 {
        let t = Instant::now();
        let (code, body) =
            request(&mut c, "POST", host_of(ctrl), "/test", &payload).map_err(|e| e.to_string())?;
        if code != 200 || body != payload {
            return Err(format!("bad echo (status {code})"));
        }
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    Ok(rtts[1])
}

/// Tests every controller in parallel; returns the probes (unanswered ones marked).
fn zone_test(p: &Plan, route: &Route, la: &LookupAnswer) -> Vec<ZoneProbe> {
    let (tx, rx) = mpsc::channel();
    let mut probes = Vec::new();
    // The lookup answer is bounded (1 MiB) but could still list thousands: test the first.
    let all = la
        .zones
        .iter()
        .flat_map(|z| z.controllers.iter().map(move |c| (z, c)));
    for (z, c) in all.take(MAX_PROBES) {
        probes.push(ZoneProbe {
            zone: z.name.clone(),
            controller: c.clone(),
            rtt_ms: None,
            error: Some("no answer in time".into()),
        });
        let (p, route, c, tx, i) = (
            p.clone(),
            route.clone(),
            c.clone(),
            tx.clone(),
            probes.len() - 1,
        );
        std::thread::spawn(move || {
            let _ = tx.send((i, network_test(&p, &route, &c, p.t.zone_wait)));
        });
    }
    drop(tx);
    let mut deadline = Instant::now() + p.t.zone_wait;
    let mut answered = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok((i, r)) = rx.recv_timeout(left) else {
            break;
        };
        match r {
            Ok(rtt) => {
                probes[i].rtt_ms = Some(rtt);
                probes[i].error = None;
                if !answered {
                    answered = true;
                    deadline = deadline.min(Instant::now() + p.t.zone_grace);
                }
            }
            Err(e) => probes[i].error = Some(e),
        }
    }
    probes
}

/// Pings every tunnel; the first to answer.
fn tunnel_race(p: &Plan, tunnels: &[String], rep: &mut RunReport) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    let tunnels = &tunnels[..tunnels.len().min(MAX_PROBES)];
    for tun in tunnels {
        let (p, tun, tx) = (p.clone(), tun.clone(), tx.clone());
        std::thread::spawn(move || {
            let ok = https_get(&p, &Route::Direct, &tun, "/ping", p.t.tunnel_ping).is_ok();
            let _ = tx.send((tun, ok, ms_since(t)));
        });
    }
    drop(tx);
    rep.tunnel_pings = tunnels
        .iter()
        .map(|t| TunnelProbe {
            tunnel: t.clone(),
            answered_ms: None,
        })
        .collect();
    let deadline = t + p.t.tunnel_ping;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok((tun, ok, at)) = rx.recv_timeout(left) else {
            break;
        };
        if ok {
            if let Some(pr) = rep.tunnel_pings.iter_mut().find(|x| x.tunnel == tun) {
                pr.answered_ms = Some(at);
            }
            return Some(tun);
        }
    }
    None
}

/// The credentials notice.
fn parse_notice(text: &str, mmr: &MmrAnswer) -> Result<(Target, Vec<Cred>), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("notice: {e}"))?;
    if v["type"] != "media-credentials" {
        return Err(format!("unexpected control message {text:.80}"));
    }
    let port = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_u64())
            .and_then(|x| u16::try_from(x).ok())
    };
    let target = Target {
        media_host: mmr.media_host.clone(),
        control: mmr.control.clone(),
        udp_port: port("udp_port"),
        tcp_port: port("tcp_port"),
        tls_alpn: v.get("tls_alpn").and_then(|x| x.as_str()).map(String::from),
        tunnel_path: v
            .get("tunnel_path")
            .and_then(|x| x.as_str())
            .unwrap_or("/media")
            .to_string(),
    };
    let mut creds = Vec::new();
    for c in v["credentials"]
        .as_array()
        .ok_or("notice without credentials")?
    {
        let key = URL_SAFE_NO_PAD
            .decode(c["key"].as_str().unwrap_or(""))
            .map_err(|e| format!("key: {e}"))?;
        creds.push(Cred {
            media: c["media"].as_str().unwrap_or("").to_string(),
            token: c["token"].as_str().unwrap_or("").to_string(),
            key: key.try_into().map_err(|_| "key is not 32 bytes")?,
        });
    }
    Ok((target, creds))
}

/// The lookup's first zone whose best controller is within `tol_ms` of the fastest probe;
/// `best` holds the answered probes, fastest first.
fn pick_zone<'a>(
    best: &[&'a ZoneProbe],
    zones: &[ZoneEntry],
    tol_ms: f64,
) -> Option<&'a ZoneProbe> {
    let f = best.first()?.rtt_ms?;
    zones.iter().find_map(|z| {
        best.iter()
            .find(|b| b.zone == z.name && b.rtt_ms.is_some_and(|r| r <= f + tol_ms))
            .copied()
    })
}

/// Whether a failed run shows UDP bound on the MMR without its answer reaching us: a type's
/// UDP attempt got no answer while a later rung of that type was refused 409 (already bound).
pub fn udp_bound_unanswered(rep: &RunReport) -> bool {
    rep.media.iter().any(|m| {
        m.rung.is_none()
            && m.attempts
                .iter()
                .any(|a| a.rung == Rung::Udp && a.outcome.contains("no STUN answer"))
            && m.attempts
                .iter()
                .any(|a| a.rung != Rung::Udp && a.outcome.contains("STUN error 409"))
    })
}

/// The SSRC a member sends `media` with (what the control channel asks to own).
pub fn ssrc_of(member: u64, media: &str) -> u32 {
    (member as u32).wrapping_mul(16) + if media == "audio" { 1 } else { 2 }
}

/// Opens the control channel and reads the credentials notice.
fn control(
    p: &Plan,
    route: &Route,
    mmr: &MmrAnswer,
) -> Result<(WebSocket<Conn>, Target, Vec<Cred>), String> {
    let conn = open_tls(route, &p.tls.plain, &p.tls.plain, &mmr.control, p.t.control)
        .map_err(|e| format!("control {}: {e}", mmr.control))?;
    conn.set_timeout(Some(p.t.control))
        .map_err(|e| e.to_string())?;
    let mut q = format!("member={}&media={}", p.member, p.media.join(","));
    for m in &p.media {
        q.push_str(&format!("&{m}={}", ssrc_of(p.member, m)));
    }
    let url = format!("wss://{}/media/{}?{q}", mmr.control, p.meeting);
    let (mut ws, _) = tungstenite::client::client_with_config(
        url.as_str(),
        conn,
        Some(crate::media::ws_config()),
    )
    .map_err(|e| format!("control handshake: {e}"))?;
    loop {
        match ws.read().map_err(|e| format!("control: {e}"))? {
            Message::Text(t) => {
                let (target, creds) = parse_notice(t.as_str(), mmr)?;
                return Ok((ws, target, creds));
            }
            Message::Close(f) => return Err(format!("control closed: {f:?}")),
            _ => {}
        }
    }
}

/// The race plan for one media type.
fn plan_for(p: &Plan, route: &Route, target: &Target, zone_rtt: Option<f64>) -> Vec<Step> {
    let tls_rung = if target.tls_alpn.is_some() {
        Rung::Tls
    } else {
        Rung::WssTunnel
    };
    if *route != Route::Direct {
        return vec![Step {
            rung: tls_rung,
            delay: Duration::ZERO,
            timeout: p.t.tls,
        }];
    }
    // A slow path answers UDP slowly too: TCP waits at least two zone round trips so that a
    // UDP answer still on its way is not mistaken for UDP being blocked.
    let rtt2 = Duration::from_secs_f64(zone_rtt.unwrap_or(0.0) * 2.0 / 1000.0);
    let tcp_at = p.t.tcp_delay.max(rtt2);
    let mut plan = Vec::new();
    if target.udp_port.is_some() && !p.avoid_udp {
        plan.push(Step {
            rung: Rung::Udp,
            delay: Duration::ZERO,
            timeout: p.t.udp,
        });
    }
    if target.tcp_port.is_some() {
        plan.push(Step {
            rung: Rung::Tcp,
            delay: tcp_at,
            timeout: p.t.tcp,
        });
    }
    plan.push(Step {
        rung: tls_rung,
        delay: tcp_at + p.t.tls_delay,
        timeout: p.t.tls,
    });
    // Without a UDP rung (or TCP) the first rung offered starts at once.
    let first = plan[0].delay;
    for s in &mut plan {
        s.delay -= first;
    }
    plan
}

/// One run of the whole ladder. On failure the report says where it stopped.
pub fn run(p: &Plan, t0: Instant, rep: &mut RunReport) -> Result<Session, String> {
    rep.started_ms = ms_since(t0);
    let tr = Instant::now();
    let mut route = p.proxy.clone().map(Route::Proxy).unwrap_or(Route::Direct);
    if let Some(px) = &p.proxy {
        rep.why.push(format!(
            "proxy {px} configured (HTTPS_PROXY): everything goes through it, media over TLS"
        ));
    }
    rep.route = route.name().into();
    rep.via = p.proxy.clone();
    let body = https_get(
        p,
        &route,
        &p.lookup,
        &format!("/meeting/{}", p.meeting),
        p.t.lookup,
    )?;
    let la: LookupAnswer =
        serde_json::from_slice(&body).map_err(|e| format!("lookup answer: {e}"))?;
    rep.lookup_ms = Some(ms_since(tr));
    rep.region = Some(la.region.clone());
    rep.zone_tests = zone_test(p, &route, &la);
    let mut best: Vec<&ZoneProbe> = rep
        .zone_tests
        .iter()
        .filter(|z| z.rtt_ms.is_some())
        .collect();
    best.sort_by(|a, b| {
        a.rtt_ms
            .unwrap_or(f64::MAX)
            .total_cmp(&b.rtt_ms.unwrap_or(f64::MAX))
    });
    let tol = p.t.zone_tolerance.as_secs_f64() * 1000.0;
    let fastest = best.first().and_then(|b| b.rtt_ms);
    let pick = pick_zone(&best, &la.zones, tol);
    let (zone, controllers, zone_rtt) = match pick {
        Some(b) => {
            let why = if b.rtt_ms == fastest {
                format!(
                    "zone {} answered the network test fastest ({:.1} ms via {})",
                    b.zone,
                    b.rtt_ms.unwrap_or(0.0),
                    b.controller
                )
            } else {
                format!(
                    "zone {} ({:.1} ms via {}) is within {} ms of the fastest ({:.1} ms) and first in the lookup's order",
                    b.zone,
                    b.rtt_ms.unwrap_or(0.0),
                    b.controller,
                    p.t.zone_tolerance.as_millis(),
                    fastest.unwrap_or(0.0)
                )
            };
            rep.why.push(why);
            let order: Vec<String> = best
                .iter()
                .filter(|x| x.zone == b.zone)
                .map(|x| x.controller.clone())
                .collect();
            (b.zone.clone(), order, b.rtt_ms)
        }
        None => {
            rep.why.push(format!(
                "no zone controller answered within {} ms: trying the tunnels",
                p.t.zone_wait.as_millis()
            ));
            let tun = tunnel_race(p, &la.tunnels, rep).ok_or("no tunnel answered")?;
            rep.why
                .push(format!("tunnel {tun} answered its ping first"));
            let z = la.zones.first().ok_or("the lookup gave no zone")?;
            rep.why.push(format!(
                "zone {} is the lookup's first for this client",
                z.name
            ));
            route = Route::Tunnel(tun.clone());
            rep.route = route.name().into();
            rep.via = Some(tun);
            (z.name.clone(), z.controllers.clone(), None)
        }
    };
    rep.zone = Some(zone);
    let mut mmr = None;
    for c in &controllers {
        match https_get(
            p,
            &route,
            c,
            &format!("/mmr?meeting={}", p.meeting),
            p.t.mmr,
        ) {
            Ok(b) => {
                let a: MmrAnswer =
                    serde_json::from_slice(&b).map_err(|e| format!("mmr answer: {e}"))?;
                rep.controller = Some(c.clone());
                mmr = Some(a);
                break;
            }
            Err(e) => rep.why.push(format!("controller {c}: {e}")),
        }
    }
    let mmr = mmr.ok_or("no controller of the zone gave an MMR")?;
    rep.mmr = Some(mmr.clone());
    let (ws, target, creds) = control(p, &route, &mmr)?;
    rep.control_ms = Some(ms_since(t0));
    // Every media type races at once, each on its own thread.
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = creds
            .iter()
            .map(|c| {
                let (route, target) = (&route, &target);
                s.spawn(move || {
                    let plan = plan_for(p, route, target, zone_rtt);
                    let (w, a) = race(&plan, target, c, route, &p.tls);
                    (c.media.clone(), w, a, ms_since(t0))
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut links = Vec::new();
    for (media, w, attempts, at) in results {
        let rung = w.as_ref().map(|(r, _)| *r);
        rep.media.push(MediaChoice {
            media: media.clone(),
            rung,
            admitted_ms: rung.map(|_| at),
            attempts,
        });
        match w {
            Some((_, l)) => links.push((media, l)),
            None => return Err(format!("{media}: no rung was admitted")),
        }
    }
    Ok(Session { control: ws, links })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cfg = std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        Plan {
            lookup: "l:443".into(),
            meeting: "m".into(),
            member: 1,
            media: vec!["audio".into()],
            proxy: None,
            tls: TlsConfigs {
                plain: cfg.clone(),
                media: cfg,
            },
            t: Timeouts::default(),
            avoid_udp: false,
        }
    }

    fn target(udp: bool, tcp: bool, alpn: bool) -> Target {
        Target {
            media_host: "h".into(),
            control: "h:443".into(),
            udp_port: udp.then_some(8801),
            tcp_port: tcp.then_some(8801),
            tls_alpn: alpn.then(|| "corelay-media".into()),
            tunnel_path: "/media".into(),
        }
    }

    fn steps(v: &[Step]) -> Vec<(Rung, u64)> {
        v.iter()
            .map(|s| (s.rung, s.delay.as_millis() as u64))
            .collect()
    }

    #[test]
    fn race_plans() {
        let p = plan();
        let t = target(true, true, true);
        // Fast path: the fixed delays.
        let d = plan_for(&p, &Route::Direct, &t, Some(1.0));
        assert_eq!(
            steps(&d),
            [(Rung::Udp, 0), (Rung::Tcp, 250), (Rung::Tls, 500)]
        );
        // Slow path: TCP waits two zone round trips.
        let d = plan_for(&p, &Route::Direct, &t, Some(200.0));
        assert_eq!(
            steps(&d),
            [(Rung::Udp, 0), (Rung::Tcp, 400), (Rung::Tls, 650)]
        );
        // A proxy or tunnel: TLS only, at once.
        let d = plan_for(&p, &Route::Proxy("p:3128".into()), &t, Some(1.0));
        assert_eq!(steps(&d), [(Rung::Tls, 0)]);
        // No ALPN rung: the WebSocket tunnel is the 443 rung; no UDP: TCP at once.
        let d = plan_for(&p, &Route::Direct, &target(false, true, false), None);
        assert_eq!(steps(&d), [(Rung::Tcp, 0), (Rung::WssTunnel, 250)]);
        let d = plan_for(&p, &Route::Direct, &target(false, false, false), None);
        assert_eq!(steps(&d), [(Rung::WssTunnel, 0)]);
        // UDP avoided after it bound without answers: TCP first, at once.
        let avoid = Plan {
            avoid_udp: true,
            ..plan()
        };
        let d = plan_for(&avoid, &Route::Direct, &t, Some(1.0));
        assert_eq!(steps(&d), [(Rung::Tcp, 0), (Rung::Tls, 250)]);
    }

    #[test]
    fn zone_choice_prefers_lookup_order_among_equals() {
        let probe = |zone: &str, rtt: f64| ZoneProbe {
            zone: zone.into(),
            controller: format!("{zone}:443"),
            rtt_ms: Some(rtt),
            error: None,
        };
        let zones: Vec<ZoneEntry> = ["eu", "us"]
            .iter()
            .map(|n| ZoneEntry {
                name: n.to_string(),
                controllers: vec![],
            })
            .collect();
        let (eu, us) = (probe("eu", 12.0), probe("us", 3.0));
        // Within 20 ms: the lookup's first.
        assert_eq!(pick_zone(&[&us, &eu], &zones, 20.0).unwrap().zone, "eu");
        // Beyond: the fastest.
        let far = probe("eu", 200.0);
        assert_eq!(pick_zone(&[&us, &far], &zones, 20.0).unwrap().zone, "us");
        assert!(pick_zone(&[], &zones, 20.0).is_none());
    }

    #[test]
    fn notice_as_documented() {
        // docs/media.md, with real-sized values.
        let key = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let text = format!(
            r#"{{"type":"media-credentials","session":"7","member":"2","expires":1767225600,"udp_port":8801,"tcp_port":8801,"tunnel_path":"/media","tls_alpn":"corelay-media","credentials":[{{"media":"audio","token":"{}","key":"{key}"}},{{"media":"video","token":"t","key":"{key}"}}]}}"#,
            "a".repeat(58)
        );
        let mmr = MmrAnswer {
            zone: "z".into(),
            meeting: "m".into(),
            mmr: "a".into(),
            control: "h:443".into(),
            media_host: "h".into(),
            candidates: 1,
            reason: "first".into(),
        };
        let (t, creds) = parse_notice(&text, &mmr).unwrap();
        assert_eq!((t.udp_port, t.tcp_port), (Some(8801), Some(8801)));
        assert_eq!(t.tls_alpn.as_deref(), Some("corelay-media"));
        assert_eq!(creds.len(), 2);
        assert_eq!(
            (creds[0].media.as_str(), creds[0].key),
            ("audio", [7u8; 32])
        );
        // Without the optional transports.
        let old = text
            .replace(r#""tcp_port":8801,"#, "")
            .replace(r#","tls_alpn":"corelay-media""#, "");
        let (t, _) = parse_notice(&old, &mmr).unwrap();
        assert_eq!((t.tcp_port, t.tls_alpn), (None, None));
        assert!(parse_notice(r#"{"type":"other"}"#, &mmr).is_err());
        assert!(parse_notice("not json", &mmr).is_err());
    }
}
