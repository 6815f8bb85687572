//! Holding back the signals that would stop the helper halfway through changing GPUs.
//!
//! `apply | head -1` (SIGPIPE once head has gone), a dropped ssh session (SIGHUP), Ctrl-C
//! (SIGINT) and a plain `kill` (SIGTERM) must not end `apply` between two NVML calls: a GPU
//! with half its leaves serves neither the old nor the new configuration. [`Held`] blocks them
//! while it lives; on release the ones that arrived are taken off, so they do not end the
//! process after the change either, and named, so apply can say it finished first.

use std::mem::MaybeUninit;

/// The signals held, with their names.
const HELD: [(libc::c_int, &str); 4] =
    [(libc::SIGPIPE, "SIGPIPE"), (libc::SIGHUP, "SIGHUP"), (libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")];

/// SIGPIPE, SIGHUP, SIGINT and SIGTERM blocked in the calling thread (the helper has only one)
/// until [`Held::release`] or drop.
#[derive(Debug)]
pub struct Held {
    old: Option<libc::sigset_t>,
}

fn held_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset gets that initialised set
    // and valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for (sig, _) in HELD {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

impl Held {
    /// Blocks the signals. Should that fail (it cannot with valid arguments), nothing is held
    /// and the change runs as it would without.
    pub fn new() -> Held {
        let set = held_set();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set` is an initialised signal set and `old` room for one, which
        // pthread_sigmask fills on success.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) };
        // SAFETY: on success pthread_sigmask has written the previous mask.
        Held { old: (rc == 0).then(|| unsafe { old.assume_init() }) }
    }

    /// Takes off the held signals that arrived, restores the previous mask and returns their
    /// names.
    pub fn release(mut self) -> Vec<&'static str> {
        self.take()
    }

    fn take(&mut self) -> Vec<&'static str> {
        let Some(old) = self.old.take() else { return Vec::new() };
        let mut arrived = Vec::new();
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        for (sig, name) in HELD {
            let mut one = MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: `one` is initialised by sigemptyset before sigaddset and sigtimedwait
            // read it; a null siginfo pointer is allowed; the timeout is a valid timespec.
            let got = unsafe {
                libc::sigemptyset(one.as_mut_ptr());
                libc::sigaddset(one.as_mut_ptr(), sig);
                libc::sigtimedwait(one.as_ptr(), std::ptr::null_mut(), &zero)
            };
            if got == sig {
                arrived.push(name);
            }
        }
        // SAFETY: `old` is the mask pthread_sigmask returned in `new`; no old mask is asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        arrived
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.take();
    }
}

/// From now on a write to a closed pipe fails (EPIPE) instead of ending the process: for `apply`,
/// whose report matters less than finishing, and whose unwritten report std still flushes at exit.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN; the helper has no other threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_signals_are_taken_off_and_named_not_fatal() {
        let held = Held::new();
        for (sig, _) in HELD {
            // SAFETY: raise sends the signal to this thread, which blocks it.
            assert_eq!(unsafe { libc::raise(sig) }, 0);
        }
        // Without the hold SIGHUP, SIGINT and SIGTERM would have ended the test process.
        assert_eq!(held.release(), ["SIGPIPE", "SIGHUP", "SIGINT", "SIGTERM"]);
        assert_eq!(Held::new().release(), Vec::<&str>::new(), "nothing left pending");
    }
}
