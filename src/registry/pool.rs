//! A few worker threads over a list of jobs (blob downloads and uploads): the first failure
//! stops the others from starting new jobs and is returned.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{RegistryError, Result};

fn take<T>(m: Mutex<T>) -> T {
    m.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f(index, job)` for every job on `workers` threads; the results in job order.
pub fn run<T: Send, R: Send>(
    jobs: Vec<T>,
    workers: usize,
    f: impl Fn(usize, T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let failed: Mutex<Option<RegistryError>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let worker = || {
        while !stop.load(Ordering::Relaxed) {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
            let Some((i, job)) = next else { break };
            match f(i, job) {
                Ok(r) => results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, 8).min(n.max(1)) {
            s.spawn(worker);
        }
    });
    if let Some(e) = take(failed) {
        return Err(e);
    }
    Ok(take(results).into_iter().flatten().collect())
}

/// One progress bar per blob on a terminal, a line per finished blob otherwise, nothing
/// with `--quiet`.
pub struct Progress {
    bars: indicatif::MultiProgress,
    quiet: bool,
    plain: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        use std::io::IsTerminal;
        Progress {
            bars: indicatif::MultiProgress::new(),
            quiet,
            plain: !quiet && !std::io::stderr().is_terminal(),
        }
    }

    pub fn bar(&self, size: u64, label: &str) -> indicatif::ProgressBar {
        if self.quiet || self.plain {
            return indicatif::ProgressBar::hidden();
        }
        self.bars
            .add(crate::image::progress::bytes(size, label.to_owned()))
    }

    /// A message about a blob in progress (above the bars on a terminal).
    pub fn note(&self, bar: &indicatif::ProgressBar, msg: &str) {
        if self.plain {
            eprintln!("{msg}");
        } else if !self.quiet {
            bar.println(msg);
        }
    }

    /// A blob is done: `what` says how ("fetched", "pushed", "exists", "mounted").
    pub fn done(&self, bar: &indicatif::ProgressBar, label: &str, what: &str, bytes: u64) {
        bar.finish_and_clear();
        if self.plain {
            eprintln!("{label}: {what} ({bytes} bytes)");
        }
    }
}
