//! Operator commands that talk to a running gatehouse: `reload` and `upgrade`, and the pid
//! file. Used by the CLI; imports config and runtime.

use crate::config;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Write this process's pid (foreground runs; a daemon's pid file is written by Pingora).
pub fn write_pid_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read pid file {}: {e}; is gatehouse running?",
            path.display()
        )
    })?;
    text.trim().parse().map_err(|_| {
        format!(
            "pid file {} holds {:?}, not a pid",
            path.display(),
            text.trim()
        )
    })
}

/// Whether `pid` runs: it exists and is not a zombie waiting for its parent to reap it.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

/// Pingora keeps the old process's listeners open this long after handing them over, so the
/// new process is surely accepting before the old one stops.
const PINGORA_CLOSE_DELAY: Duration = Duration::from_secs(5);

fn signal(pid: i32, sig: libc::c_int) -> Result<(), String> {
    // SAFETY: sending a signal to a pid has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// `POST /reload` on the admin listener: (status, body).
fn post_reload(admin: SocketAddr) -> Result<(u16, String), String> {
    let err = |e: std::io::Error| format!("admin listener {admin}: {e}");
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(err)?;
    s.write_all(b"POST /reload HTTP/1.1\r\nHost: gatehouse\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(err)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Validate the file, then have the running gatehouse reload it: through the admin listener
/// (which reports the outcome), or with SIGHUP when the admin listener is off.
pub fn reload(path: &Path) -> Result<String, String> {
    let refused = |body: &str| {
        format!(
            "{body}{}: reload rejected; the running configuration stays",
            path.display()
        )
    };
    let local = config::load_runtime(path, None);
    // The running process validates again, logs and counts the outcome; ask it even when the
    // file is broken here, so that a refused reload is visible in its log and metrics.
    let admin = match &local {
        Ok(rt) => rt.admin,
        Err(_) => admin_of(path),
    };
    let Some(admin) = admin else {
        let rt = local.map_err(|e| refused(&format!("{e}\n")))?;
        let pid = read_pid(&rt.server.pid_file)?;
        signal(pid, libc::SIGHUP)?;
        return Ok(format!(
            "sent SIGHUP to gatehouse (pid {pid}); see its log for the outcome\n"
        ));
    };
    match (post_reload(admin), local) {
        (Ok((200, body)), _) => Ok(body),
        (Ok((_, body)), _) => Err(refused(&body)),
        (Err(e), Err(errors)) => Err(refused(&format!("{errors}\n({e})\n"))),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// The admin address of a file that does not compile: read leniently from the main file.
fn admin_of(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).ok()?;
    match doc.get("admin").and_then(|a| a.as_str()) {
        Some("off") => None,
        Some(a) => a.parse().ok(),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
    }
}

/// Zero-downtime binary upgrade: start `exe run --upgrade --daemon`, which waits on the upgrade
/// socket; tell the running process (SIGQUIT) to hand its listening sockets over and drain;
/// wait for the old process to exit.
pub fn upgrade(path: &Path, exe: &Path) -> Result<String, String> {
    let rt = config::load_runtime(path, None)
        .map_err(|e| format!("{e}\n{}: not upgraded", path.display()))?;
    let s = &rt.server;
    let old = read_pid(&s.pid_file)?;
    if !alive(old) {
        return Err(format!(
            "pid {old} from {} is not running",
            s.pid_file.display()
        ));
    }
    let _ = std::fs::remove_file(&s.upgrade_sock);
    let mut child = Command::new(exe)
        .args(["run", "--upgrade", "--daemon", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        // The daemon logs to stderr (or server.error_log); holding our stdout open would keep
        // whoever reads it waiting.
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let listening = wait_until(Duration::from_secs(10), || {
        s.upgrade_sock.exists() || matches!(child.try_wait(), Ok(Some(_)))
    });
    if !listening || !s.upgrade_sock.exists() {
        let _ = child.kill();
        return Err(
            "the new process did not open the upgrade socket; the old one keeps serving".into(),
        );
    }
    signal(old, libc::SIGQUIT)?;
    // The new process exits (forking its daemon) once it holds the sockets.
    let handed = wait_until(Duration::from_secs(15), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    match child.try_wait() {
        Ok(Some(st)) if st.success() => {}
        _ if !handed => return Err("the new process did not take the sockets over in 15 s".into()),
        other => return Err(format!("the new process failed: {other:?}")),
    }
    let drain = PINGORA_CLOSE_DELAY + s.grace_period + s.shutdown_timeout + Duration::from_secs(5);
    if !wait_until(drain, || !alive(old)) {
        return Err(format!(
            "the old process (pid {old}) is still running after {drain:?}"
        ));
    }
    let new = read_pid(&s.pid_file).map_or_else(|_| "?".to_string(), |p| p.to_string());
    Ok(format!(
        "upgraded: pid {old} handed its sockets to pid {new} and exited\n"
    ))
}
