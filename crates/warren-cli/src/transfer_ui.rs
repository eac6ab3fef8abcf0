//! How transfers look on the command line: progress bars or JSON lines, sizes for people, QR
//! codes, and a verified fetch with its summary (used by `warren receive`, with or without a
//! library).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren::P2P;
use warren_transfer::{Progress, ReceiveOptions};

use crate::output::json_line;

/// Receives `hash` from `providers` into `out` with progress, and prints the summary.
pub async fn fetch(
    p2p: &P2P,
    hash: warren_transfer::Hash,
    providers: &[warren::RemoteIdentity],
    out: &std::path::Path,
    json: bool,
) -> anyhow::Result<warren_transfer::Summary> {
    let started = Instant::now();
    let report = Reporter::new(json);
    let options = ReceiveOptions { out: out.to_path_buf(), config: Default::default() };
    let result = warren_transfer::receive(p2p, hash, providers, options, {
        let report = report.clone();
        move |progress| report.report(progress)
    })
    .await;
    report.finish();
    let summary = result?;
    let secs = started.elapsed().as_secs_f64();
    let fetched: u64 = summary.fetched.values().sum();
    if json {
        json_line(&serde_json::json!({
            "event": "done",
            "files": summary.files,
            "bytes": summary.total,
            "kept": summary.kept,
            "fetched": fetched,
            "asked_again": summary.asked_again,
            "secs": secs,
        }));
    } else {
        let resumed =
            if summary.kept > 0 { format!(" ({} were already here)", human(summary.kept)) } else { String::new() };
        println!(
            "received {} file(s), {}{resumed} into {}, verified, in {:.1} s ({}/s)",
            summary.files,
            human(summary.total),
            out.display(),
            secs,
            human((fetched as f64 / secs.max(1e-3)) as u64)
        );
    }
    Ok(summary)
}

/// Progress as a bar on a terminal, JSON lines with `--json` (at most 20 a second), a line a
/// second otherwise.
#[derive(Clone)]
struct Reporter {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last: Arc<Mutex<Instant>>,
}

impl Reporter {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self { json, bar, last: Arc::new(Mutex::new(Instant::now() - Duration::from_secs(10))) }
    }

    fn report(&self, progress: &Progress) {
        if let Progress::Bytes { .. } = progress {
            let mut last = self.last.lock().expect("reporter lock");
            if self.bar.is_none() && last.elapsed() < Duration::from_millis(if self.json { 50 } else { 1000 }) {
                return;
            }
            *last = Instant::now();
        }
        if self.json {
            let line = match progress {
                Progress::Started { files, total, kept } => {
                    serde_json::json!({ "event": "started", "files": files, "bytes": total, "kept": kept })
                }
                Progress::Bytes { done, total } => {
                    serde_json::json!({ "event": "progress", "done": done, "total": total })
                }
                Progress::FileDone { path, size } => serde_json::json!({ "event": "file", "path": path, "size": size }),
                Progress::ProviderFailed { provider, error } => {
                    serde_json::json!({ "event": "provider_failed", "provider": provider, "error": error })
                }
            };
            return json_line(&line);
        }
        match (&self.bar, progress) {
            (Some(bar), Progress::Started { total, kept, files }) => {
                bar.set_length(*total);
                bar.set_position(*kept);
                bar.set_message(format!("{files} file(s)"));
            }
            (Some(bar), Progress::Bytes { done, .. }) => bar.set_position(*done),
            (Some(bar), Progress::FileDone { path, .. }) => bar.set_message(path.clone()),
            (Some(bar), Progress::ProviderFailed { provider, error }) => bar.println(format!("{provider}: {error}")),
            (None, Progress::Started { files, total, kept }) => {
                eprintln!("receiving {files} file(s), {} ({} already here)", human(*total), human(*kept))
            }
            (None, Progress::Bytes { done, total }) => eprintln!("{} of {}", human(*done), human(*total)),
            (None, Progress::FileDone { .. }) => {}
            (None, Progress::ProviderFailed { provider, error }) => eprintln!("{provider}: {error}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes for people: KiB, MiB, GiB.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// The ticket as a QR code of terminal half-blocks.
pub fn print_qr(text: &str) {
    match qrcode::QrCode::new(text.to_uppercase().as_bytes()) {
        Ok(code) => {
            let image = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            println!("{image}\n");
        }
        Err(error) => tracing::debug!(%error, "no QR code"),
    }
}
