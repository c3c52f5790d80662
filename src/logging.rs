//! The process's log: `tracing` events, filtered by `RUST_LOG` (default `info`), written to
//! stderr the way nginx writes a buffered access log (`access_log ... buffer=64k flush=..`).
//!
//! A logging thread formats its line (tracing-subscriber's usual format, with the
//! timestamp's date and time of day formatted once a second, as nginx caches its time
//! strings) and appends it to one shared buffer: a lock, a copy, no allocation, no system
//! call and no wake-up. A writer thread writes the buffer out with one `write(2)` when it
//! holds [`FLUSH_BYTES`], or [`FLUSH_INTERVAL`] after the last write, whichever comes first.
//!
//! The access line, one per request, skips tracing's dispatch and field visitor: the node
//! formats it straight into the same buffer ([`write_access_line`]), after asking the
//! filter as any event does.
//!
//! Measured on the cached-GET path (benches/load.sh), tracing-appender's non-blocking
//! writer cost more than its formatting: a `Vec` per line, a channel send, and a wake-up of
//! its writer thread for nearly every line under load (its queue runs empty between lines).
//!
//! When the writer falls [`MAX_PENDING_BYTES`] behind (stderr blocked), lines are dropped,
//! not queued without bound, and a line saying how many is written once it catches up. The
//! guard returned by [`init`] writes out what is pending when dropped, at the end of `main`.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Pending bytes that make the writer thread write at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// The longest a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Pending bytes beyond which new lines are dropped (the writer is stuck).
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Installs the global subscriber. Keep the guard alive until the process ends.
pub fn init() -> std::io::Result<LogGuard> {
    let buffer = Arc::new(LogBuffer::default());
    let writer = {
        let buffer = buffer.clone();
        std::thread::Builder::new()
            .name("log writer".to_owned())
            .spawn(move || buffer.write_out(&mut std::io::stderr()))?
    };
    // A second init (never in the binary) keeps the first buffer.
    let _ = ACCESS_BUFFER.set(buffer.clone());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_timer(SecondCachedTime)
        .with_writer(BufferWriter(buffer.clone()))
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(LogGuard {
        buffer,
        writer: Some(writer),
    })
}

/// Writes out the pending lines and stops the writer thread when dropped.
pub struct LogGuard {
    buffer: Arc<LogBuffer>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.buffer.lock().closing = true;
        self.buffer.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Lines not yet written, shared by the threads that log and the writer thread.
#[derive(Default)]
struct LogBuffer {
    pending: Mutex<Pending>,
    /// Signalled when the buffer holds [`FLUSH_BYTES`] or the guard is dropped.
    wake: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines dropped since the last write, because the buffer was full.
    dropped: u64,
    closing: bool,
}

impl LogBuffer {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A thread that panicked while appending left at worst a partial line.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one formatted line (or drops it, when the writer is too far behind).
    fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() > MAX_PENDING_BYTES {
            pending.dropped += 1;
            return;
        }
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(line);
        let crossed = before < FLUSH_BYTES && pending.bytes.len() >= FLUSH_BYTES;
        drop(pending);
        if crossed {
            self.wake.notify_one();
        }
    }

    /// The writer thread: writes the buffer out when it is full enough, when lines have
    /// waited [`FLUSH_INTERVAL`], and once more when closing.
    fn write_out(&self, out: &mut impl Write) {
        let mut spare = Vec::with_capacity(FLUSH_BYTES);
        loop {
            let (dropped, closing) = {
                let mut pending = self.lock();
                if pending.bytes.len() < FLUSH_BYTES && !pending.closing {
                    pending = self
                        .wake
                        .wait_timeout(pending, FLUSH_INTERVAL)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                std::mem::swap(&mut pending.bytes, &mut spare);
                (std::mem::take(&mut pending.dropped), pending.closing)
            };
            // Nothing useful to do when stderr itself fails: the lines are lost.
            if !spare.is_empty() {
                let _ = out.write_all(&spare);
            }
            if dropped > 0 {
                let _ = writeln!(
                    out,
                    "WARN soundwave::logging: {dropped} log lines dropped: stderr did not keep up"
                );
            }
            let _ = out.flush();
            spare.clear();
            if closing {
                return;
            }
        }
    }
}

/// tracing-subscriber's writer: each event arrives as one whole line.
struct BufferWriter(Arc<LogBuffer>);

impl<'a> MakeWriter<'a> for BufferWriter {
    type Writer = &'a LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &LogBuffer {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// RFC 3339 UTC timestamps with microseconds (`2026-12-03T16:04:04.528789Z`, as
/// tracing-subscriber's default), whose date and time of day each thread formats once a
/// second.
struct SecondCachedTime;

thread_local! {
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for SecondCachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write_timestamp(w)
    }
}

/// The current time as [`SecondCachedTime`] writes it.
fn write_timestamp(w: &mut impl std::fmt::Write) -> std::fmt::Result {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let second = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            text.clear();
            format_second(text, second)?;
            *cached = second;
        }
        write!(w, "{text}.{:06}Z", now.subsec_micros())
    })
}

/// What the access line says about one request.
pub struct AccessLine<'a> {
    pub node: u64,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    /// Path and query, as the client sent them.
    pub path: &'a str,
    pub status: u16,
    pub latency_us: u64,
}

/// The buffer of the installed log, for [`write_access_line`].
static ACCESS_BUFFER: OnceLock<Arc<LogBuffer>> = OnceLock::new();

thread_local! {
    /// Each thread's access line being formatted, its capacity kept from line to line.
    static ACCESS_TEXT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes one access line (target `soundwave::access`, at `level`), in the format of the
/// other lines, straight into the log buffer. The caller has asked the filter
/// (`tracing::enabled!`), so `RUST_LOG` decides as for any event; what this skips is
/// tracing's dispatch and its field visitor, most of a line's cost on a cached read.
/// Without [`init`] (in-process benches and tests) nothing is written.
pub fn write_access_line(level: tracing::Level, line: &AccessLine<'_>) {
    append_formatted(|text| format_access_line(text, level, line));
}

/// Formats one line in this thread's reused text and appends it to the installed log's
/// buffer; without [`init`], nothing.
fn append_formatted(format: impl FnOnce(&mut String) -> std::fmt::Result) {
    let Some(buffer) = ACCESS_BUFFER.get() else {
        return;
    };
    ACCESS_TEXT.with_borrow_mut(|text| {
        text.clear();
        if format(text).is_ok() {
            buffer.append(text.as_bytes());
        }
    });
}

fn format_access_line(
    text: &mut String,
    level: tracing::Level,
    line: &AccessLine<'_>,
) -> std::fmt::Result {
    write_timestamp(text)?;
    write!(text, " {level:>5} soundwave::access: node={}", line.node)?;
    if let Some(client) = line.client {
        write!(text, " client={client}")?;
    }
    // The path is quoted and escaped, as tracing writes strings: a client cannot forge a
    // line or a field.
    writeln!(
        text,
        " method={} path={:?} status={} latency_us={}",
        line.method, line.path, line.status, line.latency_us
    )
}

/// The balancer's access line (target `soundwave::lb::access`, at info), formatted as
/// [`write_access_line`] formats the node's, when the filter lets it through.
pub fn write_lb_access_line(record: &lb::AccessRecord<'_>) {
    if tracing::enabled!(target: "soundwave::lb::access", tracing::Level::INFO) {
        append_formatted(|text| format_lb_access_line(text, record));
    }
}

fn format_lb_access_line(text: &mut String, record: &lb::AccessRecord<'_>) -> std::fmt::Result {
    write_timestamp(text)?;
    text.push_str("  INFO soundwave::lb::access:");
    if let Some(client) = record.client {
        write!(text, " client={client}")?;
    }
    write!(
        text,
        " method={} path={:?} status={} upstream={} attempts={} latency_us={} protocol={}",
        record.method,
        record.path,
        record.status,
        record.upstream,
        record.attempts,
        record.latency_us,
        record.protocol.as_str()
    )?;
    if let Some(error) = record.error {
        write!(text, " error={:?}", error.to_string())?;
    }
    text.push('\n');
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second, in UTC.
fn format_second(out: &mut String, unix_second: u64) -> std::fmt::Result {
    let at = i64::try_from(unix_second)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_format_as_rfc3339() {
        let mut text = String::new();
        format_second(&mut text, 1_796_314_244).unwrap();
        assert_eq!(text, "2026-12-03T16:10:44");
        text.clear();
        format_second(&mut text, 0).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00");
    }

    #[test]
    fn access_lines_read_as_the_other_lines() {
        let mut text = String::new();
        let line = AccessLine {
            node: 2,
            client: Some(IpAddr::from([10, 0, 0, 7])),
            method: "GET",
            path: "/api/products/?name=a\"b\n",
            status: 200,
            latency_us: 153,
        };
        format_access_line(&mut text, tracing::Level::INFO, &line).unwrap();
        let (timestamp, rest) = text.split_once(' ').unwrap();
        assert_eq!(timestamp.len(), "2026-12-03T16:04:04.528789Z".len());
        assert!(timestamp.ends_with('Z'));
        assert_eq!(
            rest,
            " INFO soundwave::access: node=2 client=10.0.0.7 method=GET \
             path=\"/api/products/?name=a\\\"b\\n\" status=200 latency_us=153\n"
        );
    }

    #[test]
    fn balancer_access_lines_read_as_the_other_lines() {
        let mut text = String::new();
        let error = "refused \"here\"\nand more";
        let record = lb::AccessRecord {
            method: "POST",
            path: "/api/orders/?x=1",
            status: 502,
            client: Some(IpAddr::from([10, 0, 0, 8])),
            upstream: "127.0.0.1:8001",
            attempts: 2,
            latency_us: 90,
            protocol: lb::Protocol::Http2Tls,
            error: Some(&error),
        };
        format_lb_access_line(&mut text, &record).unwrap();
        let (_, rest) = text.split_once(' ').unwrap();
        let expected = format!(
            " INFO soundwave::lb::access: client=10.0.0.8 method=POST path=\"/api/orders/?x=1\" \
             status=502 upstream=127.0.0.1:8001 attempts=2 latency_us=90 protocol=h2+tls \
             error={:?}\n",
            error
        );
        assert_eq!(rest, expected);
        assert_eq!(text.lines().count(), 1, "one line whatever the error says");
    }

    #[test]
    fn lines_are_written_in_order_and_all_when_closing() {
        let buffer = Arc::new(LogBuffer::default());
        let lines: Vec<String> = (0..5000).map(|i| format!("line {i}\n")).collect();
        for line in &lines {
            buffer.append(line.as_bytes());
        }
        buffer.lock().closing = true;
        let mut out = Vec::new();
        buffer.write_out(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), lines.concat());
    }

    #[test]
    fn a_full_buffer_drops_lines_and_says_how_many() {
        let buffer = LogBuffer::default();
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..(MAX_PENDING_BYTES / line.len() + 3) {
            buffer.append(&line);
        }
        buffer.lock().closing = true;
        let mut out = Vec::new();
        buffer.write_out(&mut out);
        assert_eq!(
            out.iter().filter(|&&b| b == b'x').count(),
            MAX_PENDING_BYTES
        );
        let tail = String::from_utf8_lossy(&out[MAX_PENDING_BYTES..]).into_owned();
        assert!(tail.contains("3 log lines dropped"), "{tail}");
    }
}
