//! The host platform's clock: `CLOCK_MONOTONIC` for the time and a helper
//! thread that plays the comparator. It sleeps until the deadline and then
//! raises the timer PD's IRQ by writing the IRQ's eventfd, exactly as the
//! launcher's device models raise theirs.
//!
//! Why a thread and not a timerfd: the pd host runtime polls only the
//! descriptors the launcher gives it and offers no way to add one, so a
//! timerfd would need a second event loop. The IRQ's eventfd is already in
//! that loop, so firing it keeps the PD's code path identical to hardware
//! (notified -> IRQ channel -> ack). An eventfd write is an edge, hence
//! [`Trigger::Edge`]. The clock is `CLOCK_MONOTONIC` so `GET_TIME` values
//! can be compared with the launcher's own clock (`tools demo` timelines).

use super::{Clock, ClockError, Trigger};
use rustix::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // CLOCK_MONOTONIC is never negative.
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nsecs = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

#[derive(Debug, Default)]
struct Comparator {
    deadline: Option<u64>,
    stop: bool,
    fired: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Comparator>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Comparator> {
        // The thread never panics while holding the lock; if it did, the
        // data (a deadline) is still meaningful.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `CLOCK_MONOTONIC` plus a comparator thread raising an eventfd.
#[derive(Debug)]
pub struct HostClock {
    shared: Arc<Shared>,
}

impl HostClock {
    /// The clock for the timer PD: raises the `<irq>` with id `irq` that the
    /// launcher gave this process (found in its configuration, see
    /// `pd::host`).
    pub fn for_pd_irq(irq: pd::Channel) -> Result<Self, ClockError> {
        let text = std::env::var(pd::host::CONFIG_ENV).map_err(|_| ClockError::HostConfig)?;
        let cfg = pd::host::HostConfig::decode(&text).map_err(|_| ClockError::HostConfig)?;
        let raise = cfg
            .irqs
            .iter()
            .find(|i| i.id == irq.index() as u64)
            .ok_or(ClockError::NoHostIrq(irq.index()))?
            .raise;
        // SAFETY: the pd host runtime owns this eventfd for the life of the
        // process (it never closes an IRQ's descriptor), and writing 8 bytes
        // to an eventfd is what raising the IRQ means.
        Ok(unsafe { Self::raising(raise) })
    }

    /// A clock whose comparator writes 1 to the eventfd `fd` when it fires.
    ///
    /// # Safety
    /// `fd` must stay open until this clock is dropped (its thread writes it).
    pub unsafe fn raising(fd: RawFd) -> Self {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || comparator_thread(&s, fd));
        HostClock { shared }
    }

    /// How many times the comparator fired.
    pub fn fired(&self) -> u64 {
        self.shared.lock().fired
    }
}

fn comparator_thread(s: &Shared, fd: RawFd) {
    let mut st = s.lock();
    loop {
        if st.stop {
            return;
        }
        st = match st.deadline {
            None => s.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(d) => {
                let now = monotonic_ns();
                if now >= d {
                    // One-shot: the comparator is spent once it fires.
                    st.deadline = None;
                    st.fired += 1;
                    // SAFETY: `raising`'s contract keeps fd open while the
                    // clock lives, and `stop` is checked under this lock
                    // before every write.
                    let efd = unsafe { BorrowedFd::borrow_raw(fd) };
                    // EAGAIN (counter at its maximum) still means raised.
                    let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
                    st
                } else {
                    s.wake
                        .wait_timeout(st, Duration::from_nanos(d - now))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            }
        };
    }
}

impl Drop for HostClock {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

impl Clock for HostClock {
    const TRIGGER: Trigger = Trigger::Edge;

    fn now_ns(&mut self) -> u64 {
        monotonic_ns()
    }

    fn program(&mut self, deadline: Option<u64>) {
        self.shared.lock().deadline = deadline;
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
    use rustix::fd::{AsFd, AsRawFd, OwnedFd};

    /// Wait (bounded) for the eventfd to be raised; returns its count.
    fn wait_raised(fd: &OwnedFd, timeout_ms: i32) -> Option<u64> {
        let mut p = [PollFd::new(fd, PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: i64::from(timeout_ms / 1000),
            tv_nsec: i64::from(timeout_ms % 1000) * 1_000_000,
        };
        match poll(&mut p, Some(&ts)) {
            Ok(n) if n > 0 => {
                let mut b = [0u8; 8];
                rustix::io::read(fd.as_fd(), &mut b).ok()?;
                Some(u64::from_ne_bytes(b))
            }
            _ => None,
        }
    }

    #[test]
    fn fires_once_at_the_deadline() {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        // SAFETY: `fd` outlives the clock (dropped at the end of the test,
        // after `clock`, declared later).
        let mut clock = unsafe { HostClock::raising(fd.as_raw_fd()) };
        let start = clock.now_ns();
        let deadline = start + 20_000_000;
        clock.program(Some(deadline));
        assert_eq!(wait_raised(&fd, 5_000), Some(1));
        // Raised no earlier than the deadline.
        assert!(clock.now_ns() >= deadline);
        assert_eq!(clock.fired(), 1);
        // One-shot: nothing more without a new deadline.
        assert_eq!(wait_raised(&fd, 50), None);
    }

    #[test]
    fn disarm_and_replace() {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        // SAFETY: as above.
        let mut clock = unsafe { HostClock::raising(fd.as_raw_fd()) };
        let now = clock.now_ns();
        clock.program(Some(now + 30_000_000));
        clock.program(None);
        assert_eq!(wait_raised(&fd, 100), None);
        assert_eq!(clock.fired(), 0);
        // A deadline in the past fires at once.
        clock.program(Some(now));
        assert_eq!(wait_raised(&fd, 5_000), Some(1));
    }
}
