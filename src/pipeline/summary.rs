//! The table printed at the end of a build: every step with its id, image, status, exit
//! status and duration, then the images pushed with their digests.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Never started: the build stopped first, or what it waits for failed.
    NotRun,
    Success,
    Failure,
    /// Failed, and `allowFailure` / `allowExitCodes` said that is fine.
    AllowedFailure,
    Timeout,
    /// Stopped because another step failed (or the build was interrupted).
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::NotRun => "NOT RUN",
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
            Status::AllowedFailure => "FAILURE (allowed)",
            Status::Timeout => "TIMEOUT",
            Status::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct StepResult {
    pub id: Option<String>,
    pub image: String,
    pub status: Status,
    pub exit: Option<i32>,
    pub duration: Option<Duration>,
}

impl StepResult {
    pub fn new(id: Option<String>, image: String) -> StepResult {
        StepResult {
            id,
            image,
            status: Status::NotRun,
            exit: None,
            duration: None,
        }
    }

    pub fn finish(&mut self, status: Status, exit: Option<i32>, d: Duration) {
        self.status = status;
        self.exit = exit;
        self.duration = Some(d);
    }
}

#[derive(Clone, Debug)]
pub struct Pushed {
    pub image: String,
    /// Where it went (after `--registry-map`); None when not pushed.
    pub dest: Option<String>,
    pub digest: String,
}

impl Pushed {
    pub fn done(image: &str, dest: &str, digest: &str) -> Pushed {
        Pushed {
            image: image.to_owned(),
            dest: Some(dest.to_owned()),
            digest: digest.to_owned(),
        }
    }

    pub fn skipped(image: &str) -> Pushed {
        Pushed {
            image: image.to_owned(),
            dest: None,
            digest: String::new(),
        }
    }
}

fn row(cols: &[String], widths: &[usize]) -> String {
    let mut s = String::new();
    for (c, w) in cols.iter().zip(widths) {
        let _ = write!(s, "{c:<w$}  ");
    }
    s.trim_end().to_owned()
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    let mut out = row(&head, &widths) + "\n";
    for r in rows {
        out += &row(r, &widths);
        out.push('\n');
    }
    out
}

pub fn render(steps: &[StepResult], pushed: &[Pushed]) -> String {
    let rows: Vec<Vec<String>> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vec![
                format!("#{i}"),
                s.id.clone().unwrap_or_else(|| "-".into()),
                s.image.clone(),
                s.status.as_str().into(),
                s.exit.map_or("-".into(), |c| c.to_string()),
                s.duration
                    .map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64())),
            ]
        })
        .collect();
    let mut out = table(
        &["STEP", "ID", "IMAGE", "STATUS", "EXIT", "DURATION"],
        &rows,
    );
    if !pushed.is_empty() {
        let rows: Vec<Vec<String>> = pushed
            .iter()
            .map(|p| {
                vec![
                    p.image.clone(),
                    p.dest
                        .clone()
                        .unwrap_or_else(|| "not pushed (--no-push)".into()),
                    p.digest.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out += &table(&["IMAGE", "PUSHED TO", "DIGEST"], &rows);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_up() {
        let mut a = StepResult::new(Some("build".into()), "gcr.io/cloud-builders/docker".into());
        a.finish(Status::Success, Some(0), Duration::from_millis(1500));
        let b = StepResult::new(None, "busybox".into());
        let t = render(
            &[a, b],
            &[Pushed::done(
                "gcr.io/p/q",
                "127.0.0.1:5000/p/q",
                "sha256:ab",
            )],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("STEP  ID     IMAGE"), "{t}");
        assert!(
            lines[1].contains("SUCCESS") && lines[1].contains("1.50s"),
            "{t}"
        );
        assert!(lines[2].contains("NOT RUN"), "{t}");
        assert!(lines[5].contains("sha256:ab"), "{t}");
    }
}
