//! The stall watchdog: a process-level thread that wakes a shard found asleep with work
//! pending (see [`spawn_stall_watchdog`]).

use super::control_block::Control;
use super::reactor;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

extern "C" fn wake_signal(_: libc::c_int) {}

/// Whether thread `tid` of this process is runnable or running (`R` in its /proc stat).
fn thread_runnable(tid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return false;
    };
    // "tid (comm) S ...": the comm may contain spaces and parentheses; the state follows
    // the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        == Some('R')
}

/// The signal the stall watchdog uses to interrupt a shard's sleep (no-op handler).
const STALL_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A process-level thread that rescues shards asleep while work is pending.
///
/// A shard sleeps in glommio's `io_uring_enter` until its wake eventfd is read or a timer
/// fires. The 1.2M density run showed (2 of 70 processes, under heavy load) a shard asleep
/// with a full accept queue that never woke again, timers included. Whatever loses that
/// wake-up, this thread notices "no progress for two checks while the epoll set has
/// readiness", writes the shard's wake eventfd and interrupts its sleep with a no-op signal
/// (glommio treats EINTR as a normal wake-up and re-runs its loop). Each rescue is logged and
/// counted (`corelay_stall_rescues_total`).
pub(super) fn spawn_stall_watchdog(controls: Vec<Arc<Control>>) -> io::Result<()> {
    // SAFETY: installs a handler that does nothing (async-signal-safe); no SA_RESTART, so a
    // blocking io_uring_enter returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(STALL_SIGNAL, &sa, std::ptr::null_mut());
    }
    std::thread::Builder::new()
        .name("corelay-watchdog".into())
        .spawn(move || {
            let mut last: Vec<(u64, u32)> = vec![(0, 0); controls.len()];
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if controls.iter().all(|c| c.shutdown.load(Ordering::Relaxed)) {
                    return;
                }
                for (i, c) in controls.iter().enumerate() {
                    let p = c.progress.load(Ordering::Relaxed);
                    let epfd = c.epfd.load(Ordering::Relaxed);
                    let (prev, idle_checks) = last[i];
                    let stuck = p == prev && epfd >= 0 && reactor::pending(epfd);
                    last[i] = (p, if stuck { idle_checks + 1 } else { 0 });
                    if last[i].1 < 2 {
                        continue;
                    }
                    last[i].1 = 0;
                    // A runnable shard that made no progress is starved of CPU (an
                    // overloaded host), not asleep: waking it changes nothing.
                    if thread_runnable(c.tid.load(Ordering::Relaxed)) {
                        tracing::debug!(shard = i, "shard starved of CPU with work pending");
                        continue;
                    }
                    c.rescues.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(shard = i, "shard asleep with work pending: waking it");
                    let one: u64 = 1;
                    let wake = c.wake_fd.load(Ordering::Relaxed);
                    // SAFETY: writes 8 bytes to the shard's wake eventfd (open while it runs);
                    // pthread_kill targets the shard thread, alive while its fds are set.
                    unsafe {
                        libc::write(wake, (&one as *const u64).cast(), 8);
                        libc::pthread_kill(
                            c.thread.load(Ordering::Relaxed) as libc::pthread_t,
                            STALL_SIGNAL,
                        );
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod watchdog_tests {
    use super::thread_runnable;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn tells_a_running_thread_from_a_sleeping_one() {
        // SAFETY: gettid has no preconditions.
        assert!(thread_runnable(unsafe { libc::gettid() }));
        let tid = Arc::new(AtomicI32::new(0));
        let t2 = tid.clone();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            // SAFETY: as above.
            t2.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let _ = wait.recv(); // blocks (sleeping) until released
        });
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        // It may still be runnable for a moment on a loaded host; it must be seen asleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while thread_runnable(tid.load(Ordering::SeqCst)) {
            assert!(std::time::Instant::now() < deadline, "never seen asleep");
            std::thread::sleep(Duration::from_millis(10));
        }
        release.send(()).unwrap();
        h.join().unwrap();
        assert!(!thread_runnable(-1), "unknown thread: not runnable");
    }
}
