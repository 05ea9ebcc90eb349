//! C ABI over the Rust backend SDK (`corelay::sdk`): attach to a gateway, handle its events
//! with callbacks, answer through a `corelay_ctx`. The header `include/corelay_backend.h` is
//! generated from this file by cbindgen.
//!
//! Threading: a `corelay_backend` is used by one thread at a time. Callbacks run on the thread
//! that called `corelay_poll`/`corelay_run`; a `corelay_ctx` is valid only during the callback
//! that received it. Errors: functions return a `corelay_status` (0 = OK); the message of the
//! last error on this thread is `corelay_last_error()`.

#![allow(non_camel_case_types)]

use corelay::sdk::{self, Backend, ConnId, Ctx, DataKind, OpenRequest, PeerAddr, Service, Verdict};
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Result of every fallible call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum corelay_status {
    /// Success.
    Ok = 0,
    /// Attaching failed (socket, handshake, refused, bad region).
    Attach = -1,
    /// A ring is corrupt or misused: the backend must stop using it.
    Ring = -2,
    /// The gateway closed the attach socket (it exited): reattach or exit.
    GatewayGone = -3,
    /// An I/O error.
    Io = -4,
    /// A `CORELAY_*` environment variable is missing or invalid.
    Env = -5,
    /// An invalid argument (null pointer, bad UTF-8 path).
    Arg = -6,
    /// A panic inside the library (a bug): the backend is unusable.
    Panic = -7,
}

/// An attached backend (opaque).
pub struct corelay_backend {
    inner: Backend,
}

/// What a callback can act through (opaque; valid during the callback only).
pub struct corelay_ctx {
    _private: [u8; 0],
}

/// A request whose completion was put off with `corelay_defer`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct corelay_deferred {
    /// The connection.
    pub conn: u64,
    /// The request's sequence number.
    pub seq: u64,
}

/// A new connection's upgrade request (valid during `on_open` only). Strings are not
/// NUL-terminated: use the lengths.
#[repr(C)]
pub struct corelay_open_request {
    /// 0 WebSocket, 1 media, 2 live.
    pub protocol: u8,
    /// 0 unknown, 4 IPv4, 6 IPv6.
    pub family: u8,
    /// Client port.
    pub port: u16,
    /// Client address: IPv4 in the first 4 bytes, IPv6 in network byte order.
    pub addr: [u8; 16],
    /// Request path.
    pub path: *const u8,
    /// Length of `path`.
    pub path_len: usize,
    /// Query string without `?`.
    pub query: *const u8,
    /// Length of `query`.
    pub query_len: usize,
    /// Number of forwarded headers (see `corelay_open_header`).
    pub header_count: usize,
    headers: *const c_void,
}

/// Event callbacks. Any may be NULL (then: accept every connection; complete every message
/// with nothing; ignore closes). `user` is passed back unchanged.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct corelay_callbacks {
    /// Passed to every callback.
    pub user: *mut c_void,
    /// A client wants to connect: call `corelay_accept` or `corelay_reject` (default: accept).
    pub on_open: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            ctx: *mut corelay_ctx,
            conn: u64,
            req: *const corelay_open_request,
        ),
    >,
    /// A client message (`binary` 0 = UTF-8 text): answer with `corelay_reply`, complete
    /// with `corelay_done`, or put off with `corelay_defer`. Returning without any of these
    /// completes it with nothing.
    pub on_message: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            ctx: *mut corelay_ctx,
            conn: u64,
            binary: c_int,
            data: *const u8,
            len: usize,
        ),
    >,
    /// A connection is gone (WebSocket close code, 1006 if it dropped).
    pub on_closed: Option<
        unsafe extern "C" fn(
            user: *mut c_void,
            ctx: *mut corelay_ctx,
            conn: u64,
            code: u16,
            reason: *const u8,
            len: usize,
        ),
    >,
}

/// What `corelay_ctx` points at: the SDK context plus the open verdict being chosen.
struct CallCtx<'a, 'b> {
    ctx: &'a mut Ctx<'b>,
    verdict: Option<Verdict>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl std::fmt::Display) {
    let s = CString::new(msg.to_string().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = s);
}

fn status_of(e: &sdk::SdkError) -> corelay_status {
    set_error(e);
    match e {
        sdk::SdkError::Attach(_) => corelay_status::Attach,
        sdk::SdkError::Ring(_) => corelay_status::Ring,
        sdk::SdkError::GatewayGone => corelay_status::GatewayGone,
        sdk::SdkError::Io(_) => corelay_status::Io,
        sdk::SdkError::Env(_) => corelay_status::Env,
    }
}

/// Runs `f`, turning a panic into `corelay_status::Panic` (unwinding into C is undefined).
fn guard(f: impl FnOnce() -> corelay_status) -> corelay_status {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_error("panic inside libcorelay_backend");
        corelay_status::Panic
    })
}

/// The message of the last error on this thread (empty if none). Valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn corelay_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn attached(r: Result<Backend, sdk::SdkError>, out: *mut *mut corelay_backend) -> corelay_status {
    match r {
        Ok(b) => {
            let p = Box::into_raw(Box::new(corelay_backend { inner: b }));
            // SAFETY: the caller passed a valid out pointer (checked non-null before).
            unsafe { *out = p };
            corelay_status::Ok
        }
        Err(e) => status_of(&e),
    }
}

/// Attach to the gateway's socket `path` as a backend of `route` (0 = default route).
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to writable storage for the handle.
#[no_mangle]
pub unsafe extern "C" fn corelay_attach(
    path: *const c_char,
    route: u32,
    out: *mut *mut corelay_backend,
) -> corelay_status {
    if path.is_null() || out.is_null() {
        set_error("corelay_attach: null argument");
        return corelay_status::Arg;
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    let path = unsafe { CStr::from_ptr(path) };
    let Ok(path) = path.to_str() else {
        set_error("corelay_attach: path is not UTF-8");
        return corelay_status::Arg;
    };
    guard(|| attached(Backend::attach_route(path, route), out))
}

/// Attach as the environment says: `CORELAY_ATTACH` (socket path), `CORELAY_ROUTE`,
/// `CORELAY_HEARTBEAT_MS` (interval; the timeout announced is three intervals), retrying for
/// up to `retry_ms` while the gateway starts.
///
/// # Safety
/// `out` points to writable storage for the handle.
#[no_mangle]
pub unsafe extern "C" fn corelay_attach_env(
    retry_ms: u32,
    out: *mut *mut corelay_backend,
) -> corelay_status {
    if out.is_null() {
        set_error("corelay_attach_env: null argument");
        return corelay_status::Arg;
    }
    guard(|| {
        attached(
            Backend::attach_env(Duration::from_millis(retry_ms as u64)),
            out,
        )
    })
}

/// Detach (closes the attach socket: the gateway hands this backend's work to a successor)
/// and free the handle. NULL is ignored.
///
/// # Safety
/// `b` came from `corelay_attach*` and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn corelay_backend_free(b: *mut corelay_backend) {
    if !b.is_null() {
        // SAFETY: allocated by Box::into_raw in `attached`, freed once per the contract.
        drop(unsafe { Box::from_raw(b) });
    }
}

fn backend<'a>(b: *mut corelay_backend) -> Option<&'a mut Backend> {
    // SAFETY: callers pass a handle from `corelay_attach*` (or NULL, checked here).
    unsafe { b.as_mut() }.map(|b| &mut b.inner)
}

/// Number of gateway shards (one ring pair each); 0 for NULL.
///
/// # Safety
/// `b` is a live handle or NULL.
#[no_mangle]
pub unsafe extern "C" fn corelay_shards(b: *mut corelay_backend) -> usize {
    backend(b).map_or(0, |b| b.shards())
}

/// Announce a liveness policy (`corelay_run` then beats every `interval_ms`; a foreign loop
/// calls `corelay_send_heartbeat` itself).
///
/// # Safety
/// `b` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn corelay_set_heartbeat(
    b: *mut corelay_backend,
    interval_ms: u32,
    timeout_ms: u32,
) -> corelay_status {
    let Some(b) = backend(b) else {
        return corelay_status::Arg;
    };
    b.set_heartbeat(
        Duration::from_millis(interval_ms as u64),
        Duration::from_millis(timeout_ms as u64),
    );
    corelay_status::Ok
}

/// Send one heartbeat per shard now (no-op without a policy).
///
/// # Safety
/// `b` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn corelay_send_heartbeat(b: *mut corelay_backend) -> corelay_status {
    let Some(b) = backend(b) else {
        return corelay_status::Arg;
    };
    guard(|| match b.send_heartbeat() {
        Ok(()) => corelay_status::Ok,
        Err(e) => status_of(&e),
    })
}

/// How long `corelay_run` polls the rings before parking (0 = park at once, no idle CPU).
///
/// # Safety
/// `b` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn corelay_set_spin(b: *mut corelay_backend, spin_us: u32) -> corelay_status {
    let Some(b) = backend(b) else {
        return corelay_status::Arg;
    };
    b.set_spin(Duration::from_micros(spin_us as u64));
    corelay_status::Ok
}

/// File descriptors to watch for readability in a foreign event loop (one per shard, then
/// the attach socket: readable there means the gateway may be gone; `corelay_poll` tells).
/// Writes up to `cap` of them to `fds` and returns how many there are in all.
///
/// # Safety
/// `b` is a live handle; `fds` points to `cap` writable ints (may be NULL if `cap` is 0).
#[no_mangle]
pub unsafe extern "C" fn corelay_wake_fds(
    b: *mut corelay_backend,
    fds: *mut c_int,
    cap: usize,
) -> usize {
    let Some(b) = backend(b) else {
        return 0;
    };
    let v = b.wake_fds();
    if !fds.is_null() {
        for (i, fd) in v.iter().take(cap).enumerate() {
            // SAFETY: i < cap and the caller provides `cap` writable ints.
            unsafe { *fds.add(i) = *fd };
        }
    }
    v.len()
}

struct CService(corelay_callbacks);

fn as_c(c: &mut CallCtx<'_, '_>) -> *mut corelay_ctx {
    c as *mut CallCtx<'_, '_> as *mut corelay_ctx
}

impl Service for CService {
    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, req: &OpenRequest<'_>) -> Verdict {
        let Some(f) = self.0.on_open else {
            return Verdict::Accept(None);
        };
        let (family, port, addr) = match req.peer {
            PeerAddr::Ip(std::net::SocketAddr::V4(a)) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.ip().octets());
                (4, a.port(), b)
            }
            PeerAddr::Ip(std::net::SocketAddr::V6(a)) => (6, a.port(), a.ip().octets()),
            PeerAddr::Unknown => (0, 0, [0; 16]),
        };
        let r = corelay_open_request {
            protocol: req.protocol as u8,
            family,
            port,
            addr,
            path: req.path.as_ptr(),
            path_len: req.path.len(),
            query: req.query.as_ptr(),
            query_len: req.query.len(),
            header_count: req.headers.len(),
            headers: &req.headers as *const sdk::Headers<'_> as *const c_void,
        };
        let mut c = CallCtx { ctx, verdict: None };
        // SAFETY: the callback contract: `r` and the ctx live for the call.
        unsafe { f(self.0.user, as_c(&mut c), conn.0, &r) };
        c.verdict.unwrap_or(Verdict::Accept(None))
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, kind: DataKind, payload: &[u8]) {
        let Some(f) = self.0.on_message else { return };
        let mut c = CallCtx { ctx, verdict: None };
        let bin = c_int::from(kind == DataKind::Binary);
        // SAFETY: payload and ctx live for the call.
        unsafe {
            f(
                self.0.user,
                as_c(&mut c),
                conn.0,
                bin,
                payload.as_ptr(),
                payload.len(),
            )
        };
    }

    fn on_closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, code: u16, reason: &[u8]) {
        let Some(f) = self.0.on_closed else { return };
        let mut c = CallCtx { ctx, verdict: None };
        // SAFETY: reason and ctx live for the call.
        unsafe {
            f(
                self.0.user,
                as_c(&mut c),
                conn.0,
                code,
                reason.as_ptr(),
                reason.len(),
            )
        };
    }
}

/// Handle what is available now without blocking; `*handled` (if not NULL) gets the number
/// of records handled. 0 handled means every ring was empty and the backend is parked: sleep
/// until a `corelay_wake_fds` descriptor is readable, then call again. More than 0: call
/// again before sleeping.
///
/// # Safety
/// `b` is a live handle, `cbs` points to valid callbacks; `handled` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn corelay_poll(
    b: *mut corelay_backend,
    cbs: *const corelay_callbacks,
    handled: *mut usize,
) -> corelay_status {
    let Some(b) = backend(b) else {
        return corelay_status::Arg;
    };
    // SAFETY: valid or NULL per the contract.
    let Some(cbs) = (unsafe { cbs.as_ref() }) else {
        return corelay_status::Arg;
    };
    let mut s = CService(*cbs);
    guard(|| match b.poll(&mut s) {
        Ok(n) => {
            if !handled.is_null() {
                // SAFETY: non-null and writable per the contract.
                unsafe { *handled = n };
            }
            corelay_status::Ok
        }
        Err(e) => status_of(&e),
    })
}

/// Serve until the gateway goes away (`CORELAY_STATUS_GATEWAY_GONE`) or an error occurs:
/// polls, spins briefly when idle, parks on the doorbells, beats the heartbeat.
///
/// # Safety
/// `b` is a live handle, `cbs` points to valid callbacks.
#[no_mangle]
pub unsafe extern "C" fn corelay_run(
    b: *mut corelay_backend,
    cbs: *const corelay_callbacks,
) -> corelay_status {
    let Some(b) = backend(b) else {
        return corelay_status::Arg;
    };
    // SAFETY: valid or NULL per the contract.
    let Some(cbs) = (unsafe { cbs.as_ref() }) else {
        return corelay_status::Arg;
    };
    let mut s = CService(*cbs);
    guard(|| match b.run(&mut s) {
        Ok(()) => corelay_status::Ok,
        Err(e) => status_of(&e),
    })
}

/// Act outside a callback (complete deferred requests, push, publish): calls `f(user, ctx)`;
/// what it queued is published before this returns.
///
/// # Safety
/// `b` is a live handle; `f` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn corelay_with_ctx(
    b: *mut corelay_backend,
    f: Option<unsafe extern "C" fn(user: *mut c_void, ctx: *mut corelay_ctx)>,
    user: *mut c_void,
) -> corelay_status {
    let (Some(b), Some(f)) = (backend(b), f) else {
        return corelay_status::Arg;
    };
    guard(|| {
        let r = b.with_ctx(|ctx| {
            let mut c = CallCtx { ctx, verdict: None };
            // SAFETY: the ctx lives for the call.
            unsafe { f(user, as_c(&mut c)) };
        });
        match r {
            Ok(()) => corelay_status::Ok,
            Err(e) => status_of(&e),
        }
    })
}

fn ctx<'a>(c: *mut corelay_ctx) -> Option<&'a mut CallCtx<'a, 'a>> {
    // SAFETY: a `corelay_ctx` pointer is a `CallCtx` living for the callback (contract).
    unsafe { (c as *mut CallCtx<'a, 'a>).as_mut() }
}

fn bytes<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller provides `len` readable bytes at `p`.
    unsafe { std::slice::from_raw_parts(p, len) }
}

fn kind(binary: c_int) -> DataKind {
    if binary != 0 {
        DataKind::Binary
    } else {
        DataKind::Text
    }
}

/// Header `index` of an open request (name in lower case). Returns 0 and sets the four out
/// pointers, or -1 if `index` is out of range.
///
/// # Safety
/// `req` is the request passed to `on_open`, during that call; out pointers are writable.
#[no_mangle]
pub unsafe extern "C" fn corelay_open_header(
    req: *const corelay_open_request,
    index: usize,
    name: *mut *const u8,
    name_len: *mut usize,
    value: *mut *const u8,
    value_len: *mut usize,
) -> c_int {
    // SAFETY: valid during on_open per the contract.
    let Some(r) = (unsafe { req.as_ref() }) else {
        return -1;
    };
    // SAFETY: `headers` points at the Headers living for the on_open call.
    let h = unsafe { &*(r.headers as *const sdk::Headers<'_>) };
    let Some((n, v)) = h.iter().nth(index) else {
        return -1;
    };
    if name.is_null() || name_len.is_null() || value.is_null() || value_len.is_null() {
        return -1;
    }
    // SAFETY: non-null writable out pointers per the contract.
    unsafe {
        *name = n.as_ptr();
        *name_len = n.len();
        *value = v.as_ptr();
        *value_len = v.len();
    }
    0
}

/// In `on_open`: accept, confirming `subprotocol` (NULL/0 = none; it must be one the client
/// offered).
///
/// # Safety
/// `c` is the callback's ctx; `subprotocol` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_accept(c: *mut corelay_ctx, subprotocol: *const u8, len: usize) {
    if let Some(c) = ctx(c) {
        let p = bytes(subprotocol, len);
        let p = (!p.is_empty()).then(|| String::from_utf8_lossy(p).into_owned());
        c.verdict = Some(Verdict::Accept(p));
    }
}

/// In `on_open`: refuse with an HTTP status (e.g. 401, 403).
///
/// # Safety
/// `c` is the callback's ctx.
#[no_mangle]
pub unsafe extern "C" fn corelay_reject(c: *mut corelay_ctx, status: u16) {
    if let Some(c) = ctx(c) {
        c.verdict = Some(Verdict::Reject(status));
    }
}

/// In `on_message`: answer the request (delivered in request order; empty is a message).
///
/// # Safety
/// `c` is the callback's ctx; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_reply(
    c: *mut corelay_ctx,
    binary: c_int,
    data: *const u8,
    len: usize,
) {
    if let Some(c) = ctx(c) {
        c.ctx.reply(kind(binary), bytes(data, len));
    }
}

/// In `on_message`: complete the request without sending anything.
///
/// # Safety
/// `c` is the callback's ctx.
#[no_mangle]
pub unsafe extern "C" fn corelay_done(c: *mut corelay_ctx) {
    if let Some(c) = ctx(c) {
        c.ctx.done();
    }
}

/// In `on_message`: put off the completion; complete it later with `corelay_reply_to` /
/// `corelay_done_with`. Returns 0 and fills `out`, or -1 (nothing to defer).
///
/// # Safety
/// `c` is the callback's ctx; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn corelay_defer(c: *mut corelay_ctx, out: *mut corelay_deferred) -> c_int {
    let (Some(c), false) = (ctx(c), out.is_null()) else {
        return -1;
    };
    match c.ctx.defer() {
        Some(d) => {
            // SAFETY: non-null and writable per the contract.
            unsafe {
                *out = corelay_deferred {
                    conn: d.conn.0,
                    seq: d.seq,
                }
            };
            0
        }
        None => -1,
    }
}

fn deferred(d: corelay_deferred) -> sdk::Deferred {
    sdk::Deferred {
        conn: ConnId(d.conn),
        seq: d.seq,
    }
}

/// Answer a deferred request. Returns 0, or -1 if it was already completed.
///
/// # Safety
/// `c` is a callback's (or `corelay_with_ctx`'s) ctx; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_reply_to(
    c: *mut corelay_ctx,
    d: corelay_deferred,
    binary: c_int,
    data: *const u8,
    len: usize,
) -> c_int {
    let ok = ctx(c).is_some_and(|c| c.ctx.reply_to(deferred(d), kind(binary), bytes(data, len)));
    if ok {
        0
    } else {
        -1
    }
}

/// Complete a deferred request without a message. Returns 0, or -1 if already completed.
///
/// # Safety
/// `c` is a callback's (or `corelay_with_ctx`'s) ctx.
#[no_mangle]
pub unsafe extern "C" fn corelay_done_with(c: *mut corelay_ctx, d: corelay_deferred) -> c_int {
    if ctx(c).is_some_and(|c| c.ctx.done_with(deferred(d))) {
        0
    } else {
        -1
    }
}

/// Push a message to a connection now (outside the reply order).
///
/// # Safety
/// `c` is a live ctx; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_send(
    c: *mut corelay_ctx,
    conn: u64,
    binary: c_int,
    data: *const u8,
    len: usize,
) {
    if let Some(c) = ctx(c) {
        c.ctx.send(ConnId(conn), kind(binary), bytes(data, len));
    }
}

/// Close a connection with a WebSocket close code and reason.
///
/// # Safety
/// `c` is a live ctx; `reason` has `len` readable bytes (UTF-8).
#[no_mangle]
pub unsafe extern "C" fn corelay_close(
    c: *mut corelay_ctx,
    conn: u64,
    code: u16,
    reason: *const u8,
    len: usize,
) {
    if let Some(c) = ctx(c) {
        let r = String::from_utf8_lossy(bytes(reason, len));
        c.ctx.close(ConnId(conn), code, &r);
    }
}

/// Add a connection to a group.
///
/// # Safety
/// `c` is a live ctx.
#[no_mangle]
pub unsafe extern "C" fn corelay_join(c: *mut corelay_ctx, conn: u64, group: u64) {
    if let Some(c) = ctx(c) {
        c.ctx.join(ConnId(conn), group);
    }
}

/// Remove a connection from a group.
///
/// # Safety
/// `c` is a live ctx.
#[no_mangle]
pub unsafe extern "C" fn corelay_leave(c: *mut corelay_ctx, conn: u64, group: u64) {
    if let Some(c) = ctx(c) {
        c.ctx.leave(ConnId(conn), group);
    }
}

/// Send to every member of a group on every shard.
///
/// # Safety
/// `c` is a live ctx; `data` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_publish(
    c: *mut corelay_ctx,
    group: u64,
    binary: c_int,
    data: *const u8,
    len: usize,
) {
    if let Some(c) = ctx(c) {
        c.ctx.publish(group, kind(binary), bytes(data, len));
    }
}

/// The group id of a name (FNV-1a 64, the same in every SDK).
///
/// # Safety
/// `name` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn corelay_group_id(name: *const u8, len: usize) -> u64 {
    bytes(name, len)
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        })
}
