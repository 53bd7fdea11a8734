//! The access log: one line per request, in `combined` or `json` format, to stdout or a file.
//!
//! Requests only hand an [`Entry`] to a bounded channel; a writer thread formats and writes it
//! through a buffer, flushing when idle. If the writer cannot keep up, lines are dropped and
//! counted (`gatehouse_access_log_dropped_total`) rather than slowing requests down. A leaf:
//! imports metrics only.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Combined,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: Target,
    pub format: Format,
}

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub client_ip: Option<IpAddr>,
    pub host: String,
    pub method: String,
    pub uri: String,
    pub protocol: &'static str,
    pub status: u16,
    pub bytes_sent: usize,
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub request_id: String,
    pub route: String,
    pub tls: Option<String>,
    pub referer: String,
    pub user_agent: String,
}

const QUEUE: usize = 65_536;

/// A live access log. The writer thread starts with the first line, so a configuration that
/// is only checked never opens the file.
pub struct AccessLog {
    pub config: AccessLogConfig,
    tx: OnceLock<SyncSender<Entry>>,
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    pub fn new(config: AccessLogConfig) -> Self {
        AccessLog {
            config,
            tx: OnceLock::new(),
            reopen: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Queue one line; never blocks.
    pub fn log(&self, entry: Entry) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let (cfg, reopen) = (self.config.clone(), self.reopen.clone());
            let spawned = std::thread::Builder::new()
                .name("gatehouse-access-log".into())
                .spawn(move || writer(cfg, rx, reopen));
            if let Err(e) = spawned {
                log::error!("cannot start the access log writer: {e}");
            }
            tx
        });
        match tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                crate::metrics::get().access_log_dropped.inc();
            }
        }
    }

    /// Reopen the file at the next line (after logrotate moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

fn open(target: &Target) -> Box<dyn Write + Send> {
    match target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(p) => match OpenOptions::new().create(true).append(true).open(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                log::error!(
                    "cannot open access log {}: {e}; writing it to stderr",
                    p.display()
                );
                Box::new(std::io::stderr())
            }
        },
    }
}

/// The writer thread: ends when every sender (every runtime using this log) is gone.
fn writer(cfg: AccessLogConfig, rx: Receiver<Entry>, reopen: Arc<AtomicBool>) {
    let mut out = BufWriter::with_capacity(64 * 1024, open(&cfg.target));
    let mut line = String::with_capacity(512);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(entry) => {
                if reopen.swap(false, Ordering::Relaxed) {
                    let _ = out.flush();
                    out = BufWriter::with_capacity(64 * 1024, open(&cfg.target));
                }
                line.clear();
                format_entry(&mut line, &entry, cfg.format);
                line.push('\n');
                if let Err(e) = out.write_all(line.as_bytes()) {
                    log::error!("access log write failed: {e}");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = out.flush();
}

/// Format one entry (no newline).
pub fn format_entry(out: &mut String, e: &Entry, format: Format) {
    match format {
        Format::Combined => combined(out, e),
        Format::Json => json(out, e),
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// nginx `combined`, then gatehouse's fields: duration, upstream, upstream time, request id,
/// route, host, TLS version.
fn combined(out: &mut String, e: &Entry) {
    use std::fmt::Write;
    let ip = e
        .client_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    let time = httpdate_clf(e.time);
    let _ = write!(
        out,
        "{ip} - - [{time}] \"{} {} {}\" {} {} \"{}\" \"{}\" {:.3} {} {} {} {} {} {}",
        e.method,
        e.uri.escape_debug(),
        e.protocol,
        e.status,
        e.bytes_sent,
        dash(&e.referer).escape_debug(),
        dash(&e.user_agent).escape_debug(),
        e.duration.as_secs_f64(),
        e.upstream
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
        e.upstream_time
            .map_or_else(|| "-".to_string(), |d| format!("{:.3}", d.as_secs_f64())),
        dash(&e.request_id),
        dash(&e.route),
        dash(&e.host),
        e.tls.as_deref().unwrap_or("-"),
    );
}

fn json(out: &mut String, e: &Entry) {
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(e.time).to_string(),
        "client_ip": e.client_ip.map(|i| i.to_string()),
        "host": e.host,
        "method": e.method,
        "uri": e.uri,
        "protocol": e.protocol,
        "status": e.status,
        "bytes_sent": e.bytes_sent,
        "duration_ms": e.duration.as_secs_f64() * 1000.0,
        "upstream": e.upstream.map(|a| a.to_string()),
        "upstream_time_ms": e.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        "request_id": e.request_id,
        "route": e.route,
        "tls": e.tls,
        "referer": e.referer,
        "user_agent": e.user_agent,
    });
    out.push_str(&v.to_string());
}

/// `10/Oct/2000:13:55:36 +0000` (Common Log Format time, UTC).
fn httpdate_clf(t: SystemTime) -> String {
    let rfc = humantime::format_rfc3339_seconds(t).to_string(); // 2000-10-10T13:55:36Z
    let month = |m: &str| match m {
        "01" => "Jan",
        "02" => "Feb",
        "03" => "Mar",
        "04" => "Apr",
        "05" => "May",
        "06" => "Jun",
        "07" => "Jul",
        "08" => "Aug",
        "09" => "Sep",
        "10" => "Oct",
        "11" => "Nov",
        _ => "Dec",
    };
    match (
        rfc.get(0..4),
        rfc.get(5..7),
        rfc.get(8..10),
        rfc.get(11..19),
    ) {
        (Some(y), Some(m), Some(d), Some(hms)) => format!("{d}/{}/{y}:{hms} +0000", month(m)),
        _ => rfc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136),
            client_ip: Some("10.0.0.1".parse().unwrap()),
            host: "a.com".into(),
            method: "GET".into(),
            uri: "/x?y=\"1\"".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes_sent: 12,
            duration: Duration::from_millis(1500),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
            upstream_time: Some(Duration::from_millis(3)),
            request_id: "abc".into(),
            route: "api/a.com/".into(),
            tls: None,
            referer: String::new(),
            user_agent: "curl/8".into(),
        }
    }

    #[test]
    fn combined_line() {
        let mut s = String::new();
        format_entry(&mut s, &entry(), Format::Combined);
        assert_eq!(
            s,
            "10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /x?y=\\\"1\\\" HTTP/1.1\" 200 12 \"-\" \"curl/8\" 1.500 127.0.0.1:9000 0.003 abc api/a.com/ a.com -"
        );
    }

    #[test]
    fn json_line() {
        let mut s = String::new();
        format_entry(&mut s, &entry(), Format::Json);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/x?y=\"1\"");
        assert_eq!(v["time"], "2000-10-10T13:55:36.000Z");
        assert_eq!(v["upstream"], "127.0.0.1:9000");
    }
}
