//! A model of the libdispatch serial queues the binding uses: `dispatch_queue_create`,
//! `dispatch_async_f`, `dispatch_sync_f`, `dispatch_retain`, `dispatch_release`.
//!
//! Each queue is one thread running its work items in FIFO order, one at a time, as a serial
//! queue does (Apple's Dispatch reference: "Serial queues execute one task at a time in the
//! order in which they are added"). As in libdispatch, pending work keeps its queue alive after
//! the last `dispatch_release`. Queue objects are never freed (only their thread ends), so a
//! release too many is counted, not a crash.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicI64, AtomicIsize, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Sender, bounded, unbounded};

type Job = Box<dyn FnOnce() + Send>;

/// The object behind a `dispatch_queue_t` of this model.
#[derive(Debug)]
pub struct Queue {
    refs: AtomicIsize,
    tx: Mutex<Option<Sender<Job>>>,
}

static LIVE: AtomicI64 = AtomicI64::new(0);
static OVER_RELEASES: AtomicU64 = AtomicU64::new(0);
static FOREIGN: AtomicU64 = AtomicU64::new(0);
static ALL: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

thread_local! {
    /// The queue whose thread this is.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The dispatch accounting, for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchStats {
    /// Queues not yet released to death.
    pub live: i64,
    /// `dispatch_release` of a queue whose references were all gone.
    pub over_releases: u64,
    /// A pointer passed to a dispatch function that is no queue of this model.
    pub foreign: u64,
}

/// The current dispatch accounting.
pub fn stats() -> DispatchStats {
    DispatchStats {
        live: LIVE.load(Ordering::SeqCst),
        over_releases: OVER_RELEASES.load(Ordering::SeqCst),
        foreign: FOREIGN.load(Ordering::SeqCst),
    }
}

pub(crate) fn get(p: *mut c_void) -> Option<&'static Queue> {
    if p.is_null()
        || !lock(&ALL)
            .as_ref()
            .is_some_and(|s| s.contains(&(p as usize)))
    {
        FOREIGN.fetch_add(1, Ordering::SeqCst);
        return None;
    }
    // SAFETY: created by `Box::into_raw` in `dispatch_queue_create`, never freed.
    Some(unsafe { &*p.cast::<Queue>() })
}

/// Submits `job` to `queue`, keeping the queue alive until the job ran (the queue is retained
/// here and released on its own thread after the job). Returns false for a dead or foreign queue.
pub(crate) fn submit(queue: *mut c_void, job: Job) -> bool {
    let Some(q) = get(queue) else { return false };
    let tx = lock(&q.tx).clone();
    let Some(tx) = tx else {
        OVER_RELEASES.fetch_add(1, Ordering::SeqCst);
        return false;
    };
    // SAFETY: a live queue of this model.
    unsafe { dispatch_retain(queue) };
    let addr = queue as usize;
    let sent = tx.send(Box::new(move || {
        job();
        // SAFETY: the reference taken above.
        unsafe { dispatch_release(addr as *mut c_void) };
    }));
    sent.is_ok()
}

/// `dispatch_queue_t dispatch_queue_create(const char *label, dispatch_queue_attr_t attr);`
/// Every queue of the model is serial (`attr` NULL is `DISPATCH_QUEUE_SERIAL`, all the binding
/// asks for).
///
/// # Safety
///
/// `label` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dispatch_queue_create(
    label: *const c_char,
    _attr: *mut c_void,
) -> *mut c_void {
    let name = if label.is_null() {
        "dispatch-model".to_owned()
    } else {
        // SAFETY: NUL-terminated by the caller's contract.
        unsafe { CStr::from_ptr(label) }
            .to_string_lossy()
            .into_owned()
    };
    let (tx, rx) = unbounded::<Job>();
    let q = Box::into_raw(Box::new(Queue {
        refs: AtomicIsize::new(1),
        tx: Mutex::new(Some(tx)),
    }));
    let addr = q as usize;
    lock(&ALL).get_or_insert_with(HashSet::new).insert(addr);
    LIVE.fetch_add(1, Ordering::SeqCst);
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            CURRENT.set(addr);
            // Ends when the last reference is released and the pending work has run.
            for job in rx {
                job();
            }
        })
        .expect("spawn a dispatch queue thread");
    q.cast()
}

/// `void dispatch_retain(dispatch_object_t object);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dispatch_retain(object: *mut c_void) {
    if let Some(q) = get(object) {
        q.refs.fetch_add(1, Ordering::SeqCst);
    }
}

/// `void dispatch_release(dispatch_object_t object);`
///
/// # Safety
///
/// None beyond the C contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dispatch_release(object: *mut c_void) {
    let Some(q) = get(object) else { return };
    let before = q.refs.fetch_sub(1, Ordering::SeqCst);
    if before <= 0 {
        q.refs.fetch_add(1, Ordering::SeqCst);
        OVER_RELEASES.fetch_add(1, Ordering::SeqCst);
    } else if before == 1 {
        // No work is pending (it would hold a reference): the thread ends.
        lock(&q.tx).take();
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A context pointer crossing to the queue's thread.
struct Ctx(*mut c_void);
// SAFETY: the C contract of dispatch_*_f: the caller makes `context` usable on the queue.
unsafe impl Send for Ctx {}

/// `void dispatch_async_f(dispatch_queue_t queue, void *context, dispatch_function_t work);`
///
/// # Safety
///
/// `work(context)` must be sound to call on another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dispatch_async_f(
    queue: *mut c_void,
    context: *mut c_void,
    work: unsafe extern "C" fn(*mut c_void),
) {
    let ctx = Ctx(context);
    submit(
        queue,
        Box::new(move || {
            let ctx = ctx;
            // SAFETY: the caller's contract.
            unsafe { work(ctx.0) }
        }),
    );
}

/// `void dispatch_sync_f(dispatch_queue_t queue, void *context, dispatch_function_t work);`
/// Waits until `work` ran on the queue. Called from the queue's own thread it would deadlock,
/// as in libdispatch (which crashes there): the model aborts with a message instead.
///
/// # Safety
///
/// `work(context)` must be sound to call on another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dispatch_sync_f(
    queue: *mut c_void,
    context: *mut c_void,
    work: unsafe extern "C" fn(*mut c_void),
) {
    if CURRENT.get() == queue as usize {
        eprintln!("dispatch model: dispatch_sync_f on the current serial queue deadlocks");
        std::process::abort();
    }
    let (done_tx, done_rx) = bounded::<()>(1);
    let ctx = Ctx(context);
    let queued = submit(
        queue,
        Box::new(move || {
            let ctx = ctx;
            // SAFETY: the caller's contract.
            unsafe { work(ctx.0) };
            let _ = done_tx.send(());
        }),
    );
    if queued {
        let _ = done_rx.recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn serial_fifo_and_sync() {
        // SAFETY: the model's own API.
        let q = unsafe { dispatch_queue_create(c"t".as_ptr(), std::ptr::null_mut()) };
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let l = Arc::clone(&log);
            submit(q, Box::new(move || lock(&l).push(i)));
        }
        let n = Arc::new(AtomicUsize::new(0));
        extern "C" fn bump(c: *mut c_void) {
            // SAFETY: `c` is the `AtomicUsize` below, alive during the sync call.
            unsafe { &*c.cast::<AtomicUsize>() }.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: `n` outlives the synchronous call.
        unsafe { dispatch_sync_f(q, Arc::as_ptr(&n).cast_mut().cast(), bump) };
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(*lock(&log), (0..100).collect::<Vec<_>>());
        // SAFETY: our reference.
        unsafe { dispatch_release(q) };
        let before = stats().over_releases;
        // SAFETY: deliberately one release too many: counted, not a crash.
        unsafe { dispatch_release(q) };
        assert_eq!(stats().over_releases, before + 1);
    }
}
