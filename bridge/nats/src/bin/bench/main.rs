//! `corelay-nats-bench`: the price of a host boundary (docs/benchmarks.md "Scale-out on
//! NATS"). Plain loopback processes: a three-node NATS cluster (JetStream, replicas 3),
//! three gateway "hosts" (gateway + bridge, each bridge on its own NATS node), two
//! `corelay-nats-worker`s, and a fourth gateway with a backend attached directly to its
//! rings (the one-host reference). Clients are `clients` subprocesses of this binary.
//!
//! Measured in one run, each NATS figure next to its ring figure:
//! 1. push to a connection: a burst (msgs/s, latency under load) and a paced series
//!    (latency), from the publisher's call to the WebSocket client's receipt;
//! 2. a room with `--members` members (over three gateways vs on one): delivery rate and
//!    latency to the last member, paced and burst;
//! 3. user lookups: the presence registry in JetStream KV vs the backend's own table.
//!
//! ```sh
//! corelay-nats-bench run [--members 10000] [--push-n 20000] ...   # see --help
//! ```

mod clients;
mod procs;
mod ring;
mod run;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corelay-nats-bench",
    about = "corelay scale-out on NATS vs one host"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// The whole comparison.
    Run(run::RunArgs),
    /// Internal: one client process (driven over stdin/stdout).
    Clients {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        src_lo: u8,
        #[arg(long, default_value_t = 1)]
        src_hi: u8,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::Run(a) => run::run(a),
        Mode::Clients {
            addr,
            path,
            first,
            count,
            src_lo,
            src_hi,
        } => {
            anyhow::ensure!(src_lo >= 1 && src_lo <= src_hi, "bad source range");
            clients::run(clients::ClientArgs {
                addr,
                path,
                first,
                count,
                src_lo,
                src_hi,
            })
        }
    }
}
