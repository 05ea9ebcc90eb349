//! `corelay join`: runs the ladder, sends and receives test media until the duration ends,
//! reconnects with the same ladder when a transport dies, and reports what it chose and why.

use crate::ladder::{run, ssrc_of, udp_bound_unanswered, Plan, RunReport};
use crate::pump::{Counters, CountersReport, Pump};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The whole join.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Meeting.
    pub meeting: String,
    /// Member.
    pub member: u64,
    /// Every run of the ladder (the first, then one per reconnect).
    pub runs: Vec<RunReport>,
    /// First media connection admitted (ms after the start).
    pub time_to_first_media_ms: Option<u64>,
    /// The rung of the last run, per media type (`audio=udp`...).
    pub rungs: Vec<String>,
    /// Packets per media type.
    pub counters: Vec<CountersReport>,
    /// The MMR of the last run.
    pub mmr: Option<String>,
}

/// A join that never gets media admitted gives up this long after `duration`.
pub const MAX_SETUP: Duration = Duration::from_secs(30);

/// Joins and exchanges media for `duration` from the first admission (reconnects included);
/// gives up at `duration` + [`MAX_SETUP`] if nothing is ever admitted. `on_run` sees each
/// run's report as it ends.
pub fn join(
    p: &Plan,
    secret: &[u8],
    duration: Duration,
    mut on_run: impl FnMut(&RunReport),
) -> Result<Report, String> {
    let t0 = Instant::now();
    let give_up = t0 + duration + MAX_SETUP;
    // Set at the first admission: media then lasts `duration`.
    let mut end: Option<Instant> = None;
    let mut p = p.clone();
    let mut pending_why: Option<String> = None;
    let mut pumps = Vec::new();
    for m in &p.media {
        pumps.push((
            Pump::new(m, p.member, ssrc_of(p.member, m), secret)?,
            Counters::new(),
        ));
    }
    let mut runs = Vec::new();
    while Instant::now() < end.unwrap_or(give_up) {
        let mut rep = RunReport::default();
        rep.why.extend(pending_why.take());
        match run(&p, t0, &mut rep) {
            Err(e) => {
                rep.ended = Some(format!("failed: {e}"));
                if !p.avoid_udp && udp_bound_unanswered(&rep) {
                    // The MMR drops the binding when this run's control channel closes; the
                    // next run must not bind UDP again.
                    p.avoid_udp = true;
                    pending_why = Some(
                        "UDP avoided from now on: its Binding bound on the MMR but no answer came back (the other rungs were refused 409)".to_string(),
                    );
                }
                on_run(&rep);
                keep(&mut runs, rep);
                // Bounded retry pace: a dead MMR may still be listed for a moment.
                let left = end
                    .unwrap_or(give_up)
                    .saturating_duration_since(Instant::now());
                std::thread::sleep(Duration::from_millis(300).min(left));
            }
            Ok(session) => {
                let (s0, r0) = (totals(&pumps, true), totals(&pumps, false));
                let end = *end.get_or_insert_with(|| Instant::now() + duration);
                rep.ended = Some(serve(&p, session, &mut pumps, t0, end));
                rep.sent = totals(&pumps, true) - s0;
                rep.received = totals(&pumps, false) - r0;
                on_run(&rep);
                keep(&mut runs, rep);
            }
        }
    }
    let first = runs
        .iter()
        .flat_map(|r| &r.media)
        .filter_map(|m| m.admitted_ms)
        .min();
    let last_ok = runs
        .iter()
        .rev()
        .find(|r| r.media.iter().all(|m| m.rung.is_some()) && !r.media.is_empty());
    Ok(Report {
        meeting: p.meeting.clone(),
        member: p.member,
        time_to_first_media_ms: first,
        rungs: last_ok
            .map(|r| {
                r.media
                    .iter()
                    .map(|m| {
                        format!(
                            "{}={}",
                            m.media,
                            serde_json::to_value(m.rung)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        mmr: last_ok.and_then(|r| r.mmr.as_ref().map(|m| m.mmr.clone())),
        counters: pumps.iter().map(|(pm, c)| c.report(&pm.media)).collect(),
        runs,
    })
}

/// Runs kept in the report: the first and the latest (a join that keeps failing for hours
/// must not grow without bound).
const MAX_RUNS: usize = 256;

fn keep(runs: &mut Vec<RunReport>, rep: RunReport) {
    if runs.len() >= MAX_RUNS {
        runs.remove(1);
    }
    runs.push(rep);
}

/// Packets sent (`sent`) or received so far, every type.
fn totals(pumps: &[(Pump, Counters)], sent: bool) -> u64 {
    pumps
        .iter()
        .map(|(_, c)| if sent { &c.sent } else { &c.received })
        .map(|a| a.load(Ordering::Relaxed))
        .sum()
}

/// Runs media on every link until `end`; returns why the session ended.
fn serve(
    p: &Plan,
    s: crate::ladder::Session,
    pumps: &mut [(Pump, Counters)],
    t0: Instant,
    end: Instant,
) -> String {
    let stop = AtomicBool::new(false);
    let why = Mutex::new(None::<String>);
    let fail = |w: String| {
        let mut g = why.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert(w);
        stop.store(true, Ordering::Relaxed);
    };
    let mut control = s.control;
    let mut links = s.links;
    std::thread::scope(|sc| {
        for (pump, c) in pumps.iter_mut() {
            let Some(i) = links.iter().position(|(m, _)| *m == pump.media) else {
                continue;
            };
            let (media, mut link) = links.swap_remove(i);
            let (stop, fail) = (&stop, &fail);
            let dead = p.t.dead_after;
            sc.spawn(move || {
                if let Err(e) = pump.run(&mut link, c, t0, end, stop, dead) {
                    fail(format!("{media} transport died: {e}"));
                }
            });
        }
        // The control channel: its end ends the session (the MMR evicted us or died).
        let _ = control
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)));
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            match control.read() {
                Ok(Message::Close(f)) => fail(format!("control channel closed: {f:?}")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => fail(format!("control channel: {e}")),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // Leaving ends our media on the MMR at once (it evicts on the control channel's close).
    let _ = control.close(None);
    let _ = control.flush();
    let w = why.lock().unwrap_or_else(|e| e.into_inner()).take();
    w.unwrap_or_else(|| "duration reached".into())
}

/// The report for people.
pub fn human(r: &Report) -> String {
    let mut o = format!("meeting {} member {}\n", r.meeting, r.member);
    for (i, run) in r.runs.iter().enumerate() {
        o.push_str(&format!(
            "run {} at {} ms: route {}{} zone {} mmr {} control at {} ms, sent {} received {}\n",
            i + 1,
            run.started_ms,
            run.route,
            run.via
                .as_ref()
                .map(|v| format!(" via {v}"))
                .unwrap_or_default(),
            run.zone.as_deref().unwrap_or("-"),
            run.mmr.as_ref().map(|m| m.mmr.as_str()).unwrap_or("-"),
            run.control_ms.map(|m| m.to_string()).unwrap_or("-".into()),
            run.sent,
            run.received,
        ));
        for z in &run.zone_tests {
            match z.rtt_ms {
                Some(rtt) => o.push_str(&format!(
                    "  zone test {} {}: {rtt:.1} ms\n",
                    z.zone, z.controller
                )),
                None => o.push_str(&format!(
                    "  zone test {} {}: {}\n",
                    z.zone,
                    z.controller,
                    z.error.as_deref().unwrap_or("-")
                )),
            }
        }
        for t in &run.tunnel_pings {
            o.push_str(&format!(
                "  tunnel ping {}: {}\n",
                t.tunnel,
                t.answered_ms
                    .map(|m| format!("answered first after {m} ms"))
                    .unwrap_or("no answer first".into())
            ));
        }
        for w in &run.why {
            o.push_str(&format!("  why: {w}\n"));
        }
        for m in &run.media {
            o.push_str(&format!(
                "  {}: {:?} admitted at {:?} ms\n",
                m.media, m.rung, m.admitted_ms
            ));
            for a in &m.attempts {
                o.push_str(&format!(
                    "    {:?} started {:?} ms: {}\n",
                    a.rung, a.started_ms, a.outcome
                ));
            }
        }
        if let Some(e) = &run.ended {
            o.push_str(&format!("  ended: {e}\n"));
        }
    }
    o.push_str(&format!(
        "chosen: {} on {}\n",
        r.rungs.join(" "),
        r.mmr.as_deref().unwrap_or("-")
    ));
    o.push_str(&format!(
        "time to first media: {:?} ms\n",
        r.time_to_first_media_ms
    ));
    for c in &r.counters {
        o.push_str(&format!(
            "{}: sent {} received {} rejected {} first received at {:?} ms\n",
            c.media, c.sent, c.received, c.rejected, c.first_rx_ms
        ));
    }
    o
}
