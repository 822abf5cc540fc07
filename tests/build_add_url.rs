//! ADD of a URL, against a small HTTP server on 127.0.0.1 started by the test (and stopped
//! when it ends, even on failure): fetched as docker does (mode 0600, never extracted), the
//! content part of the cache key, `--checksum` checked, and one-line errors for a refused
//! connection, an HTTP error and a wrong checksum.

mod build_env;
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use build_env::{Env, outcomes, sha};

/// Serves `/file.txt` (its content settable) and `/t.tar`; 404 for anything else.
struct Server {
    port: u16,
    file: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn respond(mut s: TcpStream, file: &Mutex<Vec<u8>>, tar: &[u8]) {
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    if r.read_line(&mut line).is_err() {
        return;
    }
    // The headers, up to the empty line.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/file.txt" => ("200 OK", file.lock().unwrap().clone()),
        "/t.tar" => ("200 OK", tar.to_vec()),
        _ => ("404 Not Found", b"no\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body);
}

impl Server {
    fn start() -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let file = Arc::new(Mutex::new(b"hello url\n".to_vec()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "inside", &b"i"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let (f, st) = (file.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    respond(s, &f, &tar);
                }
            }
        });
        Server {
            port,
            file,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}/{p}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn add_of_a_url_fetches_checks_and_caches() {
    let Some(env) = Env::new() else { return };
    env.base("alpine");
    let srv = Server::start();
    let df = format!(
        "FROM alpine\nADD {} /f.txt\nADD {} /d/\nADD --checksum={} {} /checked\n\
         CMD [\"sh\", \"-c\", \"stat -c '%n %a %u' /f.txt /d/t.tar; cat /f.txt /checked\"]\n",
        srv.url("file.txt"),
        srv.url("t.tar"),
        sha(b"hello url\n"),
        srv.url("file.txt"),
    );
    let ctx = env.context("url", &[("Dockerfile", &df)]);
    env.build_ok(&ctx, &["-t", "url"]);
    // Mode 0600, root's; the tar is a file, not extracted.
    assert_eq!(
        env.run_ok("url", &[]),
        "/f.txt 600 0\n/d/t.tar 600 0\nhello url\nhello url\n"
    );
    let (_, err) = env.build_ok(&ctx, &["-t", "url"]);
    assert!(outcomes(&err).iter().all(|(_, o)| *o == "CACHED"), "{err}");
    // New content at the URL: that ADD runs again (and the checksum no longer matches).
    *srv.file.lock().unwrap() = b"changed\n".to_vec();
    let o = env.build(&ctx, &["-t", "url"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let ran = outcomes(&err);
    assert!(
        ran.iter().all(|(_, o)| *o == "DONE") && ran.len() == 2,
        "{err}"
    );
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("strata: Dockerfile:4: ADD "), "{err}");
    assert!(last.contains("checksum mismatch"), "{err}");
    env.assert_clean();
}

#[test]
fn add_of_a_bad_url_is_a_one_line_error() {
    let Some(env) = Env::new() else { return };
    env.base("alpine");
    let srv = Server::start();
    // A port nothing listens on: bound, then closed.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = format!("http://127.0.0.1:{closed}/x");
    for (src, flags, needle) in [
        (refused.clone(), "", "connection refused"),
        (srv.url("missing"), "", "HTTP 404"),
        (
            srv.url("file.txt"),
            "--checksum=sha256:abc ",
            "expected sha256:",
        ),
    ] {
        let df = format!("FROM alpine\nADD {flags}{src} /x\n");
        let ctx = env.context("bad", &[("Dockerfile", &df)]);
        let o = env.build(&ctx, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(last.starts_with("strata: Dockerfile:2: ADD "), "{err}");
        assert!(last.contains(needle), "{needle}: {err}");
    }
    // COPY takes no URL.
    let df = format!("FROM alpine\nCOPY {} /x\n", srv.url("file.txt"));
    let ctx = env.context("copy-url", &[("Dockerfile", &df)]);
    let o = env.build(&ctx, &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("taken only by ADD"));
    env.assert_clean();
}
