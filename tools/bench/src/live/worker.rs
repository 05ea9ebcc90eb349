//! The hidden `live-worker` subcommand: one process holding a share of the HTTP-FLV viewers in
//! one epoll loop, accounting each viewer's tags ([`super::acct`]) and reporting one JSON
//! [`Report`] on stdout at the end.
//!
//! Line protocol: the worker prints `ready` once every viewer has its FLV header (or
//! failed); stdin `window` starts the measured window, `end` ends it (the worker reports,
//! closes everything and exits). It also stops at its deadline or when stdin closes.

use super::acct::{Kind, Tag, Viewer};
use super::publish::mono_ns;
use super::report::{Hist, Report, ViewerResult};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

/// `live-worker` flags (set by `live-viewers`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerArgs {
    /// Server address (loopback).
    #[arg(long)]
    pub addr: SocketAddrV4,
    /// Request path, e.g. /live/bench.flv.
    #[arg(long)]
    pub path: String,
    /// Viewers to open.
    #[arg(long)]
    pub count: usize,
    /// Loopback source addresses to spread over (127.0.0.2 ...).
    #[arg(long, default_value_t = 1)]
    pub source_ips: usize,
    /// First source address index of this worker.
    #[arg(long, default_value_t = 0)]
    pub source_offset: usize,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 64)]
    pub max_pending: usize,
    /// Publication start (CLOCK_MONOTONIC ns) of the stream's timestamp 0.
    #[arg(long)]
    pub start_ns: u64,
    /// A viewer "got audio and video" if both came within this many seconds of its connect.
    #[arg(long)]
    pub av_secs: u64,
    /// Keeping up: newest video frame at most this old (ms after its publication) at the end.
    #[arg(long)]
    pub max_lag_ms: u64,
    /// A jump of video timestamps above this (ms) is a skip.
    #[arg(long)]
    pub gap_ms: u32,
    /// Seconds after which the worker stops by itself.
    #[arg(long)]
    pub deadline: u64,
}

/// Connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Connecting,
    Streaming,
    Dead,
}

struct Conn {
    fd: i32,
    st: St,
    acct: Viewer,
    r: ViewerResult,
    /// Window start snapshot: newest video timestamp and bytes then.
    w0: Option<(Option<u32>, u64)>,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Opens one non-blocking connection from `src`; the fd, or the errno.
fn connect(src: Ipv4Addr, dst: SocketAddrV4) -> Result<i32, i32> {
    // SAFETY: plain syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let one: libc::c_int = 1;
    let sa = sockaddr(SocketAddrV4::new(src, 0));
    let dsa = sockaddr(dst);
    // SAFETY: valid fd, option buffers and sockaddrs.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            4,
        );
        if libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) < 0
        {
            -1
        } else {
            libc::connect(
                fd,
                &dsa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        }
    };
    if r < 0 && errno() != libc::EINPROGRESS {
        let e = errno();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// Accounts one tag of a viewer.
fn on_tag(r: &mut ViewerResult, lat: &mut Hist, t: Tag, now: u64, a: &WorkerArgs, in_window: bool) {
    let since = now.saturating_sub(r.t_connect_ns);
    match t.kind {
        Kind::VideoConfig => r.video_config = true,
        Kind::AudioConfig => r.audio_config = true,
        Kind::Audio => {
            r.audio_frames += 1;
            if r.first_audio_ns == 0 {
                r.first_audio_ns = since.max(1);
            }
        }
        Kind::Video(key) => {
            r.video_frames += 1;
            if r.first_video_ns == 0 {
                r.first_video_ns = since.max(1);
                r.first_video_key = key;
            }
            if key && r.first_key_ns == 0 {
                r.first_key_ns = since.max(1);
            }
            if let Some(last) = r.last_vts {
                if in_window && t.ts > last.saturating_add(a.gap_ms) {
                    r.gaps += 1;
                }
            }
            r.last_vts = Some(t.ts);
            if in_window {
                // Published at start + ts; arrived now.
                let published = a.start_ns + u64::from(t.ts) * 1_000_000;
                lat.add(now.saturating_sub(published) / 1000);
            }
        }
        Kind::Other => {}
    }
}

/// Runs the worker (the process exits afterwards).
pub(crate) fn run(a: WorkerArgs) -> anyhow::Result<()> {
    crate::pool::raise_nofile();
    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    anyhow::ensure!(ep >= 0, "epoll_create1: {}", errno());
    // stdin (slot u64::MAX) carries the parent's commands.
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::MAX,
    };
    // SAFETY: valid fds and event.
    unsafe {
        libc::fcntl(0, libc::F_SETFL, libc::O_NONBLOCK);
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, 0, &mut ev);
    }
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: corelay-bench\r\nAccept: */*\r\n\r\n",
        a.path, a.addr
    );
    let deadline = mono_ns() + a.deadline * 1_000_000_000;
    let mut conns: Vec<Conn> = Vec::with_capacity(a.count);
    let mut failures = std::collections::BTreeMap::<String, u64>::new();
    let (mut pending, mut next, mut ready_sent, mut in_window) = (0usize, 0usize, false, false);
    let mut window_ns = (0u64, 0u64);
    let mut buf = vec![0u8; 256 << 10];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut cmd = Vec::new();
    let mut out = std::io::stdout();
    let mut ended = false;
    // Viewers with their FLV header, and viewers that failed before it.
    let (mut heads, mut failed) = (0usize, 0usize);
    let mut lat = Hist::default();
    while !ended && mono_ns() < deadline && !crate::worker::stopping() {
        while pending < a.max_pending && next < a.count {
            let src = crate::pool::source_ip((a.source_offset + next) % a.source_ips.max(1));
            next += 1;
            let t = mono_ns();
            match connect(src, a.addr) {
                Ok(fd) => {
                    let slot = conns.len();
                    let mut ev = libc::epoll_event {
                        events: (libc::EPOLLIN | libc::EPOLLOUT) as u32,
                        u64: slot as u64,
                    };
                    // SAFETY: valid fds and event.
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
                    conns.push(Conn {
                        fd,
                        st: St::Connecting,
                        acct: Viewer::new(),
                        r: ViewerResult {
                            t_connect_ns: t,
                            ..ViewerResult::default()
                        },
                        w0: None,
                    });
                    pending += 1;
                }
                Err(e) => {
                    failed += 1;
                    *failures.entry(format!("connect errno {e}")).or_default() += 1
                }
            }
        }
        if !ready_sent && next == a.count && heads + failed == a.count {
            ready_sent = true;
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        }
        // SAFETY: valid epoll fd and event buffer.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        let now = mono_ns();
        for e in events.iter().take(n.max(0) as usize) {
            let (bits, slot) = (e.events, e.u64);
            if slot == u64::MAX {
                let k = unsafe {
                    // SAFETY: valid buffer of the given length.
                    libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, 4096)
                };
                if k == 0 {
                    ended = true;
                }
                cmd.extend_from_slice(&buf[..k.max(0) as usize]);
                while let Some(p) = cmd.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = cmd.drain(..=p).collect();
                    match line.trim_ascii() {
                        b"window" => {
                            in_window = true;
                            window_ns.0 = now;
                            for c in conns.iter_mut() {
                                c.w0 = Some((c.r.last_vts, c.r.bytes));
                            }
                        }
                        b"end" => ended = true,
                        _ => {}
                    }
                }
                continue;
            }
            let c = &mut conns[slot as usize];
            if c.st == St::Connecting {
                let mut err: libc::c_int = 0;
                let mut len = 4u32;
                // SAFETY: valid fd and out buffers.
                unsafe {
                    libc::getsockopt(
                        c.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut err as *mut _ as *mut libc::c_void,
                        &mut len,
                    )
                };
                pending -= 1;
                if err != 0 || bits & libc::EPOLLOUT as u32 == 0 {
                    c.r.end = Some(format!("connect errno {err}"));
                    failed += 1;
                    c.st = St::Dead;
                    // SAFETY: our fd.
                    unsafe { libc::close(c.fd) };
                    continue;
                }
                // SAFETY: valid fd and buffer; a 100-byte request fits an empty socket buffer.
                let w =
                    unsafe { libc::write(c.fd, req.as_ptr() as *const libc::c_void, req.len()) };
                if w != req.len() as isize {
                    c.r.end = Some("request write".into());
                    failed += 1;
                    c.st = St::Dead;
                    // SAFETY: our fd.
                    unsafe { libc::close(c.fd) };
                    continue;
                }
                c.st = St::Streaming;
                let mut ev = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: slot,
                };
                // SAFETY: valid fds and event.
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, c.fd, &mut ev) };
                continue;
            }
            if c.st != St::Streaming {
                continue;
            }
            // SAFETY: valid fd and buffer.
            let k =
                unsafe { libc::recv(c.fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if k < 0 {
                let e = errno();
                if e == libc::EAGAIN || e == libc::EINTR {
                    continue;
                }
                c.r.end = Some(format!("recv errno {e}"));
            } else if k == 0 {
                c.r.end = Some("closed by server".into());
            } else {
                c.r.bytes += k as u64;
                let r = &mut c.r;
                let fed = c.acct.feed(&buf[..k as usize], &mut |t| {
                    on_tag(r, &mut lat, t, now, &a, in_window)
                });
                if let Err(b) = fed {
                    c.r.end = Some(format!("{b:?}"));
                } else if c.acct.ended() {
                    c.r.end = Some("response ended".into());
                }
                c.r.header_flags = c.acct.header_flags;
                if c.r.t_head_ns == 0 && c.acct.header_flags.is_some() {
                    c.r.t_head_ns = now;
                    heads += 1;
                }
            }
            if c.r.end.is_some() {
                failed += usize::from(c.r.t_head_ns == 0);
                c.st = St::Dead;
                // SAFETY: our fd.
                unsafe { libc::close(c.fd) };
            }
        }
    }
    window_ns.1 = mono_ns();
    let mut rep = Report {
        requested: a.count as u64,
        failures,
        latency_us: lat,
        ..Report::default()
    };
    if next < a.count {
        // Never started: every connect slot stayed taken by connects the server did not
        // complete (SYNs dropped by a full listen backlog are retried for minutes).
        rep.failures.insert(
            "not started (connects pending)".into(),
            (a.count - next) as u64,
        );
    }
    for c in conns.iter_mut() {
        if c.st != St::Dead {
            // SAFETY: our fd.
            unsafe { libc::close(c.fd) };
        }
        rep.add(&mut c.r, c.w0, window_ns, &a);
    }
    serde_json::to_writer(&mut out, &rep)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}
