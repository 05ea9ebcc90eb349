//! corelay-bench: load tool for corelay (density, echo, storm, fanout). Linux only; traffic
//! only to 127.0.0.0/8. Every mode is bounded in time and stops by itself.

mod compare;
mod cores;
mod cpu;
mod density;
mod echo;
mod live;
mod media;
mod mem;
mod multi;
mod peer;
mod plot;
mod pool;
mod slab;
mod tls;
mod trace;
mod worker;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::Path;

#[derive(Parser)]
#[command(
    name = "corelay-bench",
    version,
    about = "Load tool for corelay: idle-connection density, echo throughput/latency, reconnect storms, room fan-out",
    long_about = "Load tool for corelay over real sockets, using corelay's own WebSocket codec.\n\
    Traffic goes only to 127.0.0.0/8 (the URL is checked); every run is bounded in time.\n\
    Large runs spread connections over worker processes (each under its RLIMIT_NOFILE) and over\n\
    loopback source addresses 127.0.0.2, 127.0.0.3, ... (--source-ips)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold many idle connections (ramped in steps) and measure memory per connection; at the
    /// end every connection must answer a ping, then all are closed with a close handshake.
    Density(density::DensityArgs),
    /// Echo throughput and round-trip latency (timestamp in each message).
    Echo(echo::EchoArgs),
    /// Open C connections, drop them all at once, reconnect all at once: time until all are back.
    Storm(density::StormArgs),
    /// Room fan-out: members join ws://HOST:PORT/room/NAME, one member publishes text messages,
    /// every member should receive each one; measures deliveries/s and latency.
    ///
    /// NEEDS THE CHAT ROOM BACKEND behind the gateway (ring mode); it does not work against
    /// `corelay run --echo` (the echo handler answers only the sender: deliveries = published).
    Fanout(echo::FanoutArgs),
    /// Comparison echo server on a single-threaded tokio runtime: fastwebsockets or
    /// tokio-tungstenite (pin it with taskset). Prints `listening on ws://ADDR/` when ready.
    ServePeer(peer::PeerArgs),
    /// corelay beside other servers: each pinned to --server-cpu, this load on --client-cpu,
    /// every scenario's server CPU µs per echoed message (median of --runs) and, with a tracer,
    /// system calls per message; prints one markdown table.
    Compare(compare::CompareArgs),
    /// Kernel memory (slab objects, MemAvailable) per idle socket armed with epoll, io_uring
    /// multishot poll or io_uring multishot recv (root; loopback pairs).
    SlabProbe(slab::SlabArgs),
    /// RTMP publisher with known timing: publishes an FLV file's tags (looped, `-re` pacing)
    /// to one or more servers at once and writes its start time for `live-viewers`.
    LivePublish(live::publish::PublishArgs),
    /// N HTTP-FLV viewers of one live stream: connects, time to first frame, audio and video,
    /// keeping up with the live edge, added latency, and the server's CPU and RSS per viewer.
    LiveViewers(live::ViewersArgs),
    /// Internal: one live viewer worker process (spawned by live-viewers).
    #[command(hide = true)]
    LiveWorker(live::worker::WorkerArgs),
    /// Media router: one publisher to N receivers (UDP or the WebSocket tunnel) through a
    /// gateway it starts; forwarded packets per gateway CPU-second, latency, RSS.
    Media(media::MediaArgs),
    /// The loopback limit of `sendmmsg` alone: 1,200-byte datagrams to loopback sockets.
    SendmmsgProbe(media::ProbeArgs),
    /// Internal: one worker process (spawned by density/storm).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn write_json<T: serde::Serialize>(path: Option<&Path>, v: &T) -> Result<()> {
    if let Some(p) = path {
        let f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        serde_json::to_writer_pretty(f, v)?;
        eprintln!("result written to {}", p.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Worker(a) => worker::run(a),
        Cmd::LiveWorker(a) => {
            worker::install_signals();
            live::worker::run(a)
        }
        Cmd::LivePublish(a) => live::publish::run(a),
        Cmd::LiveViewers(a) => {
            let json = a.json.clone();
            let r = live::viewers(a, command)?;
            write_json(json.as_deref(), &r)?;
            println!("{}", live::summary(&r));
            Ok(())
        }
        Cmd::Media(a) => media::run(a),
        Cmd::SendmmsgProbe(a) => media::probe(a),
        Cmd::ServePeer(a) => peer::run(a),
        Cmd::Compare(a) => {
            worker::install_signals();
            let json = a.json.clone();
            let r = compare::run(a, command)?;
            write_json(json.as_deref(), &r)?;
            print!("{}", compare::table(&r));
            Ok(())
        }
        Cmd::SlabProbe(a) => {
            let json = a.json.clone();
            let r = slab::run(a)?;
            write_json(json.as_deref(), &r)?;
            print!("{}", slab::table(&r));
            Ok(())
        }
        Cmd::Density(a) => {
            worker::install_signals();
            let (json, plot) = (a.json.clone(), a.plot.clone());
            let r = density::run(a, command)?;
            write_json(json.as_deref(), &r)?;
            if let Some(p) = plot {
                plot::density(
                    &p,
                    &r.steps,
                    "corelay idle connections: memory per connection",
                )?;
                eprintln!("plot written to {}", p.display());
            }
            println!(
                "density: held {} ({} requested), ping answered {}/{}, closed clean {}; last step: user {:.0} B/conn (anon {:.0}), kernel {:.0} B/conn per end",
                r.steps.last().map_or(0, |s| s.held),
                r.steps.last().map_or(0, |s| s.target),
                r.ping_answered,
                r.ping_total,
                r.closed_clean,
                r.steps.last().map_or(0.0, |s| s.user_bytes_per_conn),
                r.steps.last().map_or(0.0, |s| s.user_anon_bytes_per_conn),
                r.steps.last().map_or(0.0, |s| s.kernel_bytes_per_conn),
            );
            if !r.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Echo(a) => {
            let (json, plot) = (a.json.clone(), a.plot.clone());
            let r = echo::run(a, command)?;
            write_json(json.as_deref(), &r)?;
            if let Some(p) = plot {
                plot::latency(
                    &p,
                    &r.histogram,
                    &format!(
                        "echo round trip: {} conns, {} B, inflight {}, p50 {:.0} µs p99 {:.0} µs",
                        r.connections, r.size, r.inflight, r.latency.p50_us, r.latency.p99_us
                    ),
                )?;
                eprintln!("plot written to {}", p.display());
            }
            println!(
                "echo: {:.0} msg/s, p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
                r.msgs_per_sec, r.latency.p50_us, r.latency.p99_us, r.latency.p999_us
            );
            Ok(())
        }
        Cmd::Storm(a) => {
            worker::install_signals();
            let json = a.json.clone();
            let r = density::storm(a, command)?;
            write_json(json.as_deref(), &r)?;
            println!(
                "storm: {} reconnected in {:.2}s ({:.0}/s), failures {}",
                r.reconnected,
                r.reconnect_secs,
                r.accept_rate,
                multi::fmt_map(&r.failures)
            );
            if !r.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Fanout(a) => {
            let json = a.json.clone();
            let r = echo::fanout(a, command)?;
            write_json(json.as_deref(), &r)?;
            println!(
                "fanout: {} deliveries/s, p50 {:.1} µs, p99 {:.1} µs",
                r.deliveries_per_sec as u64, r.latency.p50_us, r.latency.p99_us
            );
            Ok(())
        }
    }
}
