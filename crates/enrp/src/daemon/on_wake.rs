//! A future polled only after it asked to be (issue 20).
//!
//! A connection task waits on its socket and on half a dozen rare events (idle, kill,
//! revocation, stop, its two timers) in one `select!`, which polls every branch each time
//! the task wakes: for a resolution, the rare branches cost as much as decoding it. Wrapped
//! in [`OnWake`], they are polled only when one of them was woken since (each wake-up of
//! the inner future is recorded before the task's own waker is called), as
//! `FuturesUnordered` polls only its woken futures.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// `F`, polled only when its own waker was called since it last returned `Pending` (and
/// the first time).
pub(super) struct OnWake<F> {
    inner: F,
    flag: Arc<Flag>,
    /// The waker `inner` is polled with: sets the flag, then wakes the task.
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    /// The waker of the task that polls the [`OnWake`], as of its last poll.
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Recorded before the task is woken: its next poll sees it.
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future + Unpin> OnWake<F> {
    pub(super) fn new(inner: F) -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Self { inner, flag, waker }
    }
}

impl<F: Future + Unpin> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        {
            // The task's waker first, so that a wake-up after the check below reaches it.
            let mut task = this
                .flag
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, pending (without waking) before.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        ready: &'a AtomicBool,
    }

    impl Future for Counted<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_its_wake_up() {
        let (polls, ready) = (AtomicUsize::new(0), AtomicBool::new(false));
        let mut gated = OnWake::new(Counted {
            polls: &polls,
            ready: &ready,
        });
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the first poll reaches it"
        );
        for _ in 0..10 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "not woken: not polled");
        // Its own waker: the task is woken and the next poll reaches it.
        ready.store(true, Ordering::Relaxed);
        gated.waker.wake_by_ref();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_timer_inside_fires_through_the_gate() {
        let slept = OnWake::new(Box::pin(tokio::time::sleep(
            std::time::Duration::from_millis(20),
        )));
        tokio::time::timeout(std::time::Duration::from_secs(10), slept)
            .await
            .expect("the sleep ended through the gate");
    }

    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
