//! `corelay backend-check -- COMMAND...`: a conformance suite for backends in any language.
//! Starts a real gateway (this binary, `corelay run`, as a child process), starts the backend
//! with `CORELAY_ATTACH` / `CORELAY_ROUTE` / `CORELAY_HEARTBEAT_MS` / `CORELAY_TAG` set, and
//! drives it with a WebSocket client through the gateway. The behaviour every checked backend
//! implements is docs/backend-check.md.

mod checks;
mod client;

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `corelay backend-check`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Gateway shards (a backend must serve one ring pair per shard).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Heartbeat interval the backend is asked to announce (CORELAY_HEARTBEAT_MS).
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u32,
    /// Run only the checks whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Show the gateway's and the backend's output (else shown only for failing checks).
    #[arg(long, short)]
    verbose: bool,
    /// The command that starts the backend, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The largest message the gateway under test accepts (and so the largest echo checked).
pub(crate) const MAX_MESSAGE: usize = 1 << 20;
/// The route id and key (`{"ns":"check"}`) of the routing check.
pub(crate) const ROUTE_ID: u32 = 7;

/// Lines printed by a child process, kept for failure reports.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn follow(&self, r: impl std::io::Read + Send + 'static, prefix: &'static str, echo: bool) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{prefix}{l}");
                }
                let mut v = lines.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: a chatty child must not grow the checker without limit.
                if v.len() >= 10_000 {
                    v.drain(..5_000);
                }
                v.push(format!("{prefix}{l}"));
            }
        });
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v[v.len().saturating_sub(n)..].to_vec()
    }

    fn find(&self, needle: &str) -> Option<String> {
        let v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().find(|l| l.contains(needle)).cloned()
    }
}

/// The world a check runs in.
pub(crate) struct Env {
    pub(crate) ws: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) sock: PathBuf,
    pub(crate) shards: usize,
    pub(crate) heartbeat_ms: u32,
    command: Vec<String>,
    gateway: Option<Child>,
    /// The backend under test (None while it is down, e.g. during the kill -9 check).
    pub(crate) backend: Option<Child>,
    /// Other backends a check started (stopped at the end).
    pub(crate) extra: Vec<Child>,
    pub(crate) log: Log,
    verbose: bool,
    dir: PathBuf,
}

impl Env {
    /// Spawns the backend command with the attach environment; `route`/`tag` override.
    pub(crate) fn spawn_backend(&self, route: u32, tag: &str, heartbeat: bool) -> Result<Child> {
        let (prog, args) = self
            .command
            .split_first()
            .context("empty backend command")?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env(corelay::sdk::env::ATTACH, &self.sock)
            .env(corelay::sdk::env::ROUTE, route.to_string())
            .env(corelay::sdk::env::TAG, tag)
            .env_remove(corelay::sdk::env::HEARTBEAT_MS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if heartbeat {
            cmd.env(
                corelay::sdk::env::HEARTBEAT_MS,
                self.heartbeat_ms.to_string(),
            );
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting the backend {prog:?}"))?;
        let p = if tag.is_empty() {
            "[backend] "
        } else {
            "[other backend] "
        };
        if let Some(o) = child.stdout.take() {
            self.log.follow(o, p, self.verbose);
        }
        if let Some(e) = child.stderr.take() {
            self.log.follow(e, p, self.verbose);
        }
        Ok(child)
    }

    /// Starts the backend under test (route 0, heartbeat on, no tag).
    pub(crate) fn start_backend(&mut self) -> Result<()> {
        self.backend = Some(self.spawn_backend(0, "", true)?);
        Ok(())
    }

    /// `corelay_backends_attached` (one per shard per attached backend).
    pub(crate) fn attached(&self) -> Result<f64, String> {
        client::metric(self.admin, "corelay_backends_attached")
    }

    /// Polls until `corelay_backends_attached == n * shards` (bounded).
    pub(crate) fn wait_attached(&mut self, n: usize, within: Duration) -> Result<(), String> {
        let want = (n * self.shards) as f64;
        let deadline = Instant::now() + within;
        loop {
            let v = self.attached()?;
            if v == want {
                return Ok(());
            }
            self.alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "corelay_backends_attached = {v}, expected {want} ({n} backend(s) x {} shards) within {within:?}",
                    self.shards
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both the gateway and the backend under test (when it should run) are still running.
    pub(crate) fn alive(&mut self) -> Result<(), String> {
        if let Some(st) = self.gateway_gone() {
            return Err(format!("the gateway exited: {st}"));
        }
        if let Some(b) = &mut self.backend {
            if let Ok(Some(st)) = b.try_wait() {
                return Err(format!("the backend exited: {st}"));
            }
        }
        Ok(())
    }

    fn gateway_gone(&mut self) -> Option<std::process::ExitStatus> {
        self.gateway.as_mut()?.try_wait().ok().flatten()
    }
}

/// Sends `sig` to a child.
pub(crate) fn signal(c: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`; reaps it.
pub(crate) fn stop(mut c: Child, grace: Duration) {
    signal(&c, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

fn start_gateway(
    args: &Args,
    dir: &std::path::Path,
    log: &Log,
) -> Result<(Child, SocketAddr, SocketAddr)> {
    let sock = dir.join("attach.sock");
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nshards = {}\npin = false\n\
         [limits]\nmax_message_bytes = {MAX_MESSAGE}\n\
         [backend]\nmode = \"ring\"\nattach_socket = \"{}\"\nring_bytes = {}\n\
         route_field = \"ns\"\nroutes = {{ check = {ROUTE_ID} }}\n",
        args.shards,
        sock.display(),
        4 * MAX_MESSAGE,
    );
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, toml).context("writing the gateway configuration")?;
    let exe = std::env::current_exe().context("locating the corelay binary")?;
    let mut gw = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("CORELAY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the gateway")?;
    if let Some(e) = gw.stderr.take() {
        log.follow(e, "[gateway] ", args.verbose);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr_after = |needle: &str| -> Option<SocketAddr> {
        let line = log.find(needle)?;
        let rest = line.split(needle).nth(1)?;
        rest.split('/').next()?.parse().ok()
    };
    loop {
        if let (Some(ws), Some(admin)) = (
            addr_after("listening on ws://"),
            addr_after("admin on http://"),
        ) {
            return Ok((gw, ws, admin));
        }
        if let Ok(Some(st)) = gw.try_wait() {
            bail!(
                "the gateway exited at start ({st}):\n{}",
                log.tail(20).join("\n")
            );
        }
        if Instant::now() > deadline {
            let _ = gw.kill();
            bail!("the gateway did not start within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the suite; exits non-zero when a check fails.
pub(crate) fn main(args: Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "corelay-backend-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).context("creating a temporary directory")?;
    let log = Log::default();
    let (gateway, ws, admin) = start_gateway(&args, &dir, &log)?;
    let mut env = Env {
        ws,
        admin,
        sock: dir.join("attach.sock"),
        shards: args.shards,
        heartbeat_ms: args.heartbeat_ms,
        command: args.command.clone(),
        gateway: Some(gateway),
        backend: None,
        extra: Vec::new(),
        log,
        verbose: args.verbose,
        dir,
    };
    println!(
        "backend-check: gateway ws://{ws}/ ({} shards), backend: {}",
        args.shards,
        args.command.join(" ")
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, what, check) in checks::ALL {
        if !args.only.is_empty() && !args.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        // Every check but `attach` needs a running backend; start one if a check left none.
        if *name != "attach" && env.backend.is_none() {
            let r = env.start_backend().map_err(|e| format!("{e:#}"));
            if let Err(e) = r.and_then(|_| env.wait_attached(1, Duration::from_secs(10))) {
                println!("FAIL {name:<12} {what}: backend did not start: {e}");
                failed += 1;
                continue;
            }
        }
        let lines_before = env.log.0.lock().map_or(0, |v| v.len());
        let t = Instant::now();
        let r = check(&mut env).and_then(|_| env.alive());
        // Backends a failed check left behind would skew the next checks' counts.
        for c in env.extra.drain(..) {
            stop(c, Duration::from_secs(5));
        }
        match r {
            Ok(()) => {
                passed += 1;
                println!("PASS {name:<12} {what} ({} ms)", t.elapsed().as_millis());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name:<12} {what}: {e}");
                if !env.verbose {
                    let n = env.log.0.lock().map_or(0, |v| v.len()) - lines_before;
                    for l in env.log.tail(n.min(30)) {
                        println!("     | {l}");
                    }
                }
                if let Some(st) = env.gateway_gone() {
                    println!("     the gateway died ({st}): stopping");
                    break;
                }
            }
        }
    }
    for c in env.extra.drain(..) {
        stop(c, Duration::from_secs(2));
    }
    if let Some(b) = env.backend.take() {
        stop(b, Duration::from_secs(2));
    }
    if let Some(g) = env.gateway.take() {
        stop(g, Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&env.dir);
    println!("backend-check: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
