//! Runs a checked config: steps start as soon as what they wait for is done, at most `jobs`
//! at a time; their output is streamed with Cloud Build's `Step #N - "id": ` prefix and kept
//! per step; the first failure stops the build (SIGTERM to the running steps, SIGKILL after
//! the grace period), and `images:` are pushed only when every step succeeded.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::PipelineError;
use super::config::Checked;
use super::dag::{Dag, State};
use super::docker::RegistryMap;
use super::plan::{self, Cmd, Ctx};
use super::summary::{Pushed, Status, StepResult};
use super::workspace::RunDir;

/// Exit status of a build stopped by a step's or the build's timeout (as timeout(1) does).
pub const TIMEOUT_EXIT: i32 = 124;
/// Exit status of a build stopped by SIGINT/SIGTERM/SIGHUP.
pub const INTERRUPTED_EXIT: i32 = 130;
const POLL: Duration = Duration::from_millis(20);

pub struct RunOptions {
    /// strata's own binary.
    pub exe: PathBuf,
    pub store_root: Option<PathBuf>,
    pub run_dir: PathBuf,
    pub jobs: usize,
    pub map: RegistryMap,
    pub no_push: bool,
    pub keep_workspace: bool,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Every substitution's value (built-ins and user ones), for `automapSubstitutions`.
    pub values: BTreeMap<String, String>,
}

pub struct Outcome {
    pub steps: Vec<StepResult>,
    pub pushed: Vec<Pushed>,
    /// 0, or the failing step's exit status.
    pub exit: i32,
    /// One line saying why the build failed.
    pub failure: Option<String>,
    pub run_dir: PathBuf,
    /// Removing the workspace failed (the build's result stands).
    pub cleanup_error: Option<String>,
}

/// Whether `strata SUB...` exists in this binary (`strata help SUB` is a clap error if not).
pub fn has_subcommand(exe: &Path, sub: &str) -> bool {
    Command::new(exe)
        .arg("help")
        .args(sub.split(' '))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn prefix(i: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("Step #{i} - {id:?}: "),
        None => format!("Step #{i}: "),
    }
}

/// Our stdout, one whole line at a time, shared by every step's log threads.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Copies a child's pipe to our stdout, prefixed, and to the step's log, as is.
fn pump(pipe: impl Read + Send + 'static, prefix: String, log: Arc<Mutex<File>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&buf);
            }
            let text = String::from_utf8_lossy(&buf);
            say(&format!("{prefix}{}", text.trim_end_matches('\n')));
            buf.clear();
        }
    })
}

fn exit_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// A step being run: its current process and what it still has to do.
struct Running {
    child: Child,
    queue: VecDeque<Cmd>,
    started: Instant,
    deadline: Option<Instant>,
    /// When to SIGKILL, once it has been told to stop.
    kill_at: Option<Instant>,
    timed_out: bool,
    cancelled: bool,
    log: Arc<Mutex<File>>,
    pumps: Vec<JoinHandle<()>>,
}

impl Running {
    fn stop(&mut self, grace: Duration) {
        if self.kill_at.is_none() {
            signal(&self.child, rustix::process::Signal::TERM);
            self.kill_at = Some(Instant::now() + grace);
        }
    }

    fn join_pumps(&mut self) {
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }
}

struct Runner<'a> {
    checked: &'a Checked,
    opts: &'a RunOptions,
    rd: &'a RunDir,
    dag: Dag,
    running: BTreeMap<usize, Running>,
    results: Vec<StepResult>,
    failure: Option<(i32, String)>,
    stop: Arc<AtomicBool>,
    has: &'a dyn Fn(&str) -> bool,
}

/// Runs the whole build. Steps' containers are children of strata's own binary.
pub fn run(checked: &Checked, opts: &RunOptions, source: &Path) -> Result<Outcome, PipelineError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| PipelineError::Io {
            step: "installing the signal handler",
            path: PathBuf::new(),
            source: e,
        })?;
    }
    let cache: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());
    let has = |sub: &str| -> bool {
        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(sub.to_owned())
            .or_insert_with(|| has_subcommand(&opts.exe, sub))
    };
    let c = &checked.config;
    if !c.images.is_empty() && !opts.no_push && !has("push") {
        return Err(PipelineError::Missing {
            step: "images:".into(),
            sub: "push".into(),
        });
    }
    for (i, s) in c.steps.iter().enumerate() {
        plan::precheck(s, i, opts.no_push, &has)?;
    }
    let rd = RunDir::create(&opts.run_dir, source)?;
    let mut r = Runner {
        checked,
        opts,
        rd: &rd,
        dag: Dag::new(checked.deps.clone()),
        running: BTreeMap::new(),
        results: c
            .steps
            .iter()
            .map(|s| StepResult::new(s.id.clone(), s.name.clone()))
            .collect(),
        failure: None,
        stop,
        has: &has,
    };
    let build_deadline = Instant::now() + checked.build_timeout;
    r.schedule(build_deadline);
    let mut pushed = Vec::new();
    if r.failure.is_none() {
        pushed = r.push_images();
    }
    let (exit, failure) = match r.failure.take() {
        Some((code, why)) => (code, Some(why)),
        None => (0, None),
    };
    let steps = std::mem::take(&mut r.results);
    drop(r);
    let cleanup_error = if opts.keep_workspace {
        None
    } else {
        rd.clean().err().map(|e| e.to_string())
    };
    Ok(Outcome {
        steps,
        pushed,
        exit,
        failure,
        run_dir: rd.root.clone(),
        cleanup_error,
    })
}

impl Runner<'_> {
    fn ctx(&self) -> Ctx<'_> {
        let o = &self.checked.config.options;
        Ctx {
            rd: self.rd,
            global_env: &o.env,
            global_volumes: &o.volumes,
            values: &self.opts.values,
            automap: o.automap_substitutions,
            map: &self.opts.map,
            no_push: self.opts.no_push,
            has: self.has,
        }
    }

    fn label(&self, i: usize) -> String {
        let s = &self.checked.config.steps[i];
        match &s.id {
            Some(id) => format!("Step #{i} - {id:?}"),
            None => format!("Step #{i}"),
        }
    }

    /// The first failure decides the exit status and the message; the others stop.
    fn fail(&mut self, code: i32, why: String) {
        if self.failure.is_none() {
            say(&format!("ERROR: {why}"));
            self.failure = Some((code, why));
        }
        let grace = self.opts.grace;
        for r in self.running.values_mut() {
            if r.kill_at.is_none() {
                r.cancelled = true;
            }
            r.stop(grace);
        }
    }

    fn schedule(&mut self, build_deadline: Instant) {
        loop {
            if self.stop.load(Ordering::Relaxed) && self.failure.is_none() {
                self.fail(INTERRUPTED_EXIT, "interrupted: stopping every step".into());
            }
            if Instant::now() > build_deadline && self.failure.is_none() {
                let t = self.checked.build_timeout.as_secs_f64();
                self.fail(TIMEOUT_EXIT, format!("build timed out after {t}s"));
            }
            if self.failure.is_none() {
                let room = self.opts.jobs.saturating_sub(self.running.len());
                for i in self.dag.ready(room) {
                    self.start(i);
                }
            }
            self.poll();
            if self.running.is_empty() && (self.failure.is_some() || self.dag.finished()) {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn start(&mut self, i: usize) {
        self.dag.set(i, State::Running);
        say(&format!("Starting {}", self.label(i)));
        let step = &self.checked.config.steps[i];
        let started = Instant::now();
        let setup = self.rd.log_file(i).and_then(|log| {
            let cmds = plan::plan(step, i, &self.ctx())?;
            Ok((Arc::new(Mutex::new(log)), cmds))
        });
        let (log, cmds) = match setup {
            Ok(x) => x,
            Err(e) => return self.setup_failed(i, started, e.to_string()),
        };
        let mut queue: VecDeque<Cmd> = cmds.into();
        match self.next_process(i, &mut queue) {
            Ok(Some(child)) => {
                let mut run = Running {
                    child,
                    queue,
                    started,
                    deadline: self.checked.step_timeouts[i].map(|t| started + t),
                    kill_at: None,
                    timed_out: false,
                    cancelled: false,
                    log,
                    pumps: Vec::new(),
                };
                self.attach(i, &mut run);
                self.running.insert(i, run);
            }
            Ok(None) => self.finish(i, started, Ok(0), false),
            Err(e) => self.setup_failed(i, started, e),
        }
    }

    fn setup_failed(&mut self, i: usize, started: Instant, why: String) {
        say(&format!(
            "{}{why}",
            prefix(i, self.checked.config.steps[i].id.as_deref())
        ));
        self.results[i].finish(Status::Failure, None, started.elapsed());
        self.dag.set(i, State::Failed);
        let label = self.checked.config.steps[i].label(i);
        self.fail(1, format!("build {label} could not start: {why}"));
    }

    /// Starts the next process of a step's queue, doing the in-process items on the way;
    /// None when nothing is left.
    fn next_process(&self, i: usize, queue: &mut VecDeque<Cmd>) -> Result<Option<Child>, String> {
        let pre = prefix(i, self.checked.config.steps[i].id.as_deref());
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Cmd::Skip(note) => say(&format!("{pre}{note}")),
                Cmd::EnsureImage(name) => {
                    for c in self.ensure_image(&name)?.into_iter().rev() {
                        queue.push_front(c);
                    }
                }
                Cmd::Strata(args) => return self.spawn(&args).map(Some),
            }
        }
        Ok(None)
    }

    fn spawn(&self, args: &[OsString]) -> Result<Child, String> {
        let mut c = Command::new(&self.opts.exe);
        if let Some(root) = &self.opts.store_root {
            c.arg("--root").arg(root);
        }
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.opts.exe.display()))
    }

    fn attach(&self, i: usize, run: &mut Running) {
        let pre = prefix(i, self.checked.config.steps[i].id.as_deref());
        if let Some(o) = run.child.stdout.take() {
            run.pumps.push(pump(o, pre.clone(), Arc::clone(&run.log)));
        }
        if let Some(e) = run.child.stderr.take() {
            run.pumps.push(pump(e, pre, Arc::clone(&run.log)));
        }
    }

    /// Nothing when the image is in the store; else a pull (through the registry map) and,
    /// when the mapped name differs, a tag back to the name the config uses.
    fn ensure_image(&self, name: &str) -> Result<Vec<Cmd>, String> {
        let root = self
            .opts
            .store_root
            .clone()
            .unwrap_or_else(crate::image::Store::default_root);
        let store = crate::image::Store::open(&root).map_err(|e| e.to_string())?;
        if store.get(name).is_ok() {
            return Ok(Vec::new());
        }
        if !(self.has)("pull") {
            return Err(format!(
                "image {name} is not in the store ({}), and this strata has no `strata pull` yet: import or build it first",
                root.display()
            ));
        }
        let mapped = self.opts.map.map(name);
        let from = mapped.clone().unwrap_or_else(|| name.to_owned());
        let mut cmds = vec![Cmd::Strata(vec!["pull".into(), from.clone().into()])];
        if mapped.is_some() {
            if !(self.has)("image tag") {
                return Err("pulling through --registry-map needs `strata image tag`".into());
            }
            cmds.push(Cmd::Strata(vec![
                "image".into(),
                "tag".into(),
                from.into(),
                name.into(),
            ]));
        }
        Ok(cmds)
    }

    fn poll(&mut self) {
        let now = Instant::now();
        let grace = self.opts.grace;
        let mut done = Vec::new();
        for (&i, r) in self.running.iter_mut() {
            if r.deadline.is_some_and(|d| now > d) && !r.timed_out {
                r.timed_out = true;
                r.stop(grace);
            }
            if r.kill_at.is_some_and(|k| now > k) {
                signal(&r.child, rustix::process::Signal::KILL);
            }
            match r.child.try_wait() {
                Ok(Some(st)) => done.push((i, Ok(exit_code(st)))),
                Ok(None) => {}
                Err(e) => done.push((i, Err(format!("waiting for the step: {e}")))),
            }
        }
        for (i, res) in done {
            self.exited(i, res);
        }
    }

    /// A step's process ended: run its next command, or finish it.
    fn exited(&mut self, i: usize, res: Result<i32, String>) {
        let Some(mut r) = self.running.remove(&i) else {
            return;
        };
        r.join_pumps();
        let stopping = r.kill_at.is_some();
        if res == Ok(0) && !stopping && !r.queue.is_empty() {
            match self.next_process(i, &mut r.queue) {
                Ok(Some(child)) => {
                    r.child = child;
                    self.attach(i, &mut r);
                    self.running.insert(i, r);
                    return;
                }
                Ok(None) => {}
                Err(e) => return self.setup_failed(i, r.started, e),
            }
        }
        if r.cancelled {
            self.results[i].finish(Status::Cancelled, res.ok(), r.started.elapsed());
            self.dag.set(i, State::Failed);
            return;
        }
        self.finish(i, r.started, res, r.timed_out);
    }

    fn finish(&mut self, i: usize, started: Instant, res: Result<i32, String>, timed_out: bool) {
        let step = &self.checked.config.steps[i];
        let elapsed = started.elapsed();
        let label = step.label(i);
        let code = match res {
            Ok(c) => c,
            Err(e) => return self.setup_failed(i, started, e),
        };
        if timed_out {
            let t = self.checked.step_timeouts[i].map_or(0.0, |t| t.as_secs_f64());
            self.results[i].finish(Status::Timeout, Some(code), elapsed);
            self.dag.set(i, State::Failed);
            return self.fail(TIMEOUT_EXIT, format!("build {label} timed out after {t}s"));
        }
        let allowed = if step.allow_exit_codes.is_empty() {
            step.allow_failure
        } else {
            step.allow_exit_codes.contains(&code)
        };
        say(&format!("Finished {} (exit status {code})", self.label(i)));
        if code == 0 {
            self.results[i].finish(Status::Success, Some(0), elapsed);
            self.dag.set(i, State::Done);
        } else if allowed {
            self.results[i].finish(Status::AllowedFailure, Some(code), elapsed);
            self.dag.set(i, State::Done);
        } else {
            self.results[i].finish(Status::Failure, Some(code), elapsed);
            self.dag.set(i, State::Failed);
            let name = &step.name;
            self.fail(
                code,
                format!("build {label} ({name}) failed: exit status {code}"),
            );
        }
    }

    /// Pushes `images:` one after the other; the first failure stops the rest.
    fn push_images(&mut self) -> Vec<Pushed> {
        let images = &self.checked.config.images;
        let mut out = Vec::new();
        for (n, image) in images.iter().enumerate() {
            if self.opts.no_push {
                out.push(Pushed::skipped(image));
                continue;
            }
            if self.failure.is_some() {
                break;
            }
            let dest = self.opts.map.map(image).unwrap_or_else(|| image.clone());
            say(&format!("Pushing {image} to {dest}"));
            let digest_file = self.rd.digest_file(n);
            let args = plan::push_args(&self.opts.map, image, Some(&digest_file));
            match self.push_one(&args) {
                Ok(0) => {
                    let digest = std::fs::read_to_string(&digest_file)
                        .map(|d| d.trim().to_owned())
                        .unwrap_or_default();
                    out.push(Pushed::done(image, &dest, &digest));
                }
                Ok(code) => self.fail(code, format!("pushing {image}: exit status {code}")),
                Err(e) => self.fail(1, format!("pushing {image}: {e}")),
            }
        }
        out
    }

    fn push_one(&self, args: &[OsString]) -> Result<i32, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.rd.logs.join("push.log"))
            .map_err(|e| e.to_string())?;
        let log = Arc::new(Mutex::new(log));
        let mut child = self.spawn(args)?;
        let mut pumps = Vec::new();
        if let Some(o) = child.stdout.take() {
            pumps.push(pump(o, "PUSH: ".into(), Arc::clone(&log)));
        }
        if let Some(e) = child.stderr.take() {
            pumps.push(pump(e, "PUSH: ".into(), Arc::clone(&log)));
        }
        let st = child.wait().map_err(|e| e.to_string())?;
        for p in pumps {
            let _ = p.join();
        }
        Ok(exit_code(st))
    }
}
