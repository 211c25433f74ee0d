//! The process log: its filter, its format, and where the access log goes.
//!
//! - The filter follows the `RUST_LOG` convention (`info`,
//!   `portier=debug,portier::access=off`...); `PORTIER_LOG` is an alias that
//!   wins when both are set. The default is `info`, which includes the
//!   access log (target `portier::access`).
//! - Lines go to standard output, as text or JSON (`--log-format`).
//! - With `server.access_log = "FILE"` the access lines are appended to that
//!   file instead; SIGUSR1 reopens it (logrotate's `postrotate`), and a
//!   reload that names another file switches to it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

use crate::manifest::AccessLog;

/// The target of access log lines.
pub const ACCESS_TARGET: &str = "portier::access";

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `key=value` text, one line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the process's subscriber. Call once, first thing.
pub fn init(format: Format) {
    let directives = std::env::var("PORTIER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("warning: ignoring the log filter {directives:?} ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    #[cfg(feature = "otlp")]
    if let Some(otel) = crate::otel::layer() {
        return init_with(format, filter, ansi, otel);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Writers)
        .with_ansi(ansi);
    match format {
        Format::Text => builder.init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}

/// [`init`] with trace export: each layer with its own filter, so the log
/// filter decides the lines and the exporter's filter which spans exist.
#[cfg(feature = "otlp")]
fn init_with(
    format: Format,
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    otel: impl tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Writers)
        .with_ansi(ansi);
    let fmt = match format {
        Format::Text => fmt.with_filter(filter).boxed(),
        Format::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(vec![fmt, otel.boxed()])
        .init();
}

/// The access log file, when the manifest names one.
struct AccessFile {
    path: Option<PathBuf>,
    file: Option<File>,
}

static ACCESS: Mutex<AccessFile> = Mutex::new(AccessFile {
    path: None,
    file: None,
});

/// Whether access lines go to a file (read on every line: no lock otherwise).
static TO_FILE: AtomicBool = AtomicBool::new(false);

fn access() -> MutexGuard<'static, AccessFile> {
    ACCESS.lock().unwrap_or_else(|p| p.into_inner())
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Send access lines where `log` says (at start and on every reload).
/// A file that cannot be opened is an error, and nothing changes.
pub fn set_access_log(log: &AccessLog) -> io::Result<()> {
    prepare_access_log(log)?.install();
    Ok(())
}

/// An access log destination, opened but not yet in use: a reload opens
/// the new file before it builds the pipeline, and installs it after.
#[derive(Debug)]
pub struct PreparedAccessLog {
    to: Option<(PathBuf, Option<File>)>,
}

/// Open what `log` names (a file already open at that path is kept).
pub fn prepare_access_log(log: &AccessLog) -> io::Result<PreparedAccessLog> {
    let to = match log {
        AccessLog::File(path) => {
            let open_now = {
                let a = access();
                a.path.as_deref() == Some(path.as_path()) && a.file.is_some()
            };
            let file = if open_now {
                None
            } else {
                Some(open(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                })?)
            };
            Some((path.clone(), file))
        }
        AccessLog::Off | AccessLog::Process => None,
    };
    Ok(PreparedAccessLog { to })
}

impl PreparedAccessLog {
    /// Make it where access lines go.
    pub fn install(self) {
        let mut a = access();
        match self.to {
            Some((path, file)) => {
                if let Some(f) = file {
                    a.file = Some(f);
                }
                a.path = Some(path);
                TO_FILE.store(true, Relaxed);
            }
            None => {
                a.path = None;
                a.file = None;
                TO_FILE.store(false, Relaxed);
            }
        }
    }
}

/// Reopen the access log file at its path (after logrotate moved it).
pub fn reopen_access_log() {
    let mut a = access();
    let Some(path) = a.path.clone() else { return };
    match open(&path) {
        Ok(f) => {
            a.file = Some(f);
            drop(a);
            tracing::info!(file = %path.display(), "access log reopened");
        }
        Err(e) => {
            drop(a);
            // The old file (renamed) keeps receiving lines: nothing is lost.
            tracing::error!(file = %path.display(), error = %e, "cannot reopen the access log; still writing to the old file");
        }
    }
}

/// Reopen the access log on every SIGUSR1, forever.
pub async fn reopen_on_sigusr1() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1; the access log is not reopened by signal");
        return;
    };
    while usr1.recv().await.is_some() {
        reopen_access_log();
    }
}

/// `line` without its ANSI escape sequences (`ESC [ ... letter`): the
/// formatter colours lines when standard output is a terminal, and one
/// writer serves both destinations.
fn without_ansi(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut bytes = line.iter().copied();
    while let Some(b) = bytes.next() {
        if b != 0x1b {
            out.push(b);
            continue;
        }
        // Skip `[`, parameters, and the final byte (a letter).
        for c in bytes.by_ref() {
            if c.is_ascii_alphabetic() {
                break;
            }
        }
    }
    out
}

/// Where each line goes: access lines to the access file when there is
/// one, everything else to standard output.
struct Writers;

/// One line's destination.
enum LineWriter {
    Stdout(io::Stdout),
    Access,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Stdout(s) => s.write(buf),
            LineWriter::Access => match &mut access().file {
                Some(f) => f.write(buf),
                None => io::stdout().write(buf),
            },
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // A line is written whole under one lock: lines never interleave.
        match self {
            LineWriter::Stdout(s) => s.write_all(buf),
            LineWriter::Access => match &mut access().file {
                // Colours are for a terminal: a file gets plain text.
                Some(f) if buf.contains(&0x1b) => f.write_all(&without_ansi(buf)),
                Some(f) => f.write_all(buf),
                None => io::stdout().write_all(buf),
            },
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LineWriter::Stdout(s) => s.flush(),
            LineWriter::Access => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for Writers {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Stdout(io::stdout())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        if meta.target() == ACCESS_TARGET && TO_FILE.load(Relaxed) {
            LineWriter::Access
        } else {
            LineWriter::Stdout(io::stdout())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::without_ansi;

    #[test]
    fn colour_codes_do_not_reach_the_access_log_file() {
        let coloured = b"\x1b[2m2026-12-02\x1b[0m \x1b[32m INFO\x1b[0m \x1b[3mstatus\x1b[0m\x1b[2m=\x1b[0m200\n";
        assert_eq!(without_ansi(coloured), b"2026-12-02  INFO status=200\n");
        assert_eq!(without_ansi(b"plain=1\n"), b"plain=1\n");
    }
}
