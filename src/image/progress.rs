//! Progress on a terminal (bytes per blob, layers done); nothing is drawn when stderr is
//! not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar for one blob, labelled like "layer 2/5 sha256:0123abcd".
pub fn bytes(total: u64, label: String) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:32} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label);
    pb
}
