//! The admin listener: `/metrics` (Prometheus), `/healthz` (alive), `/readyz` (configuration
//! loaded and every listener, HTTP, HTTPS and stream, accepting), `/status` (JSON) and `POST /reload`.
//! Never public by default (127.0.0.1:9090). Imports: control, runtime, metrics (and the
//! proxy's count of idle backend connections, handed over at startup).

mod sockets;
mod status;

use crate::control::Control;
use crate::metrics;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::proxy::IdleConnections;
use std::sync::Arc;

pub struct Admin {
    control: Arc<Control>,
    idle_upstream: IdleConnections,
}

impl Admin {
    pub fn new(control: Arc<Control>, idle_upstream: IdleConnections) -> Self {
        Admin {
            control,
            idle_upstream,
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

const TEXT: &str = "text/plain; charset=utf-8";

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => {
                status::refresh_backend_metrics(&self.control.state.load());
                metrics::get()
                    .upstream_idle_connections
                    .set(self.idle_upstream.count() as i64);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    metrics::get().render(),
                )
            }
            (Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n"),
            (Method::GET, "/readyz") => {
                let rt = self.control.state.load_full();
                match not_listening(rt.listeners()) {
                    None => reply(StatusCode::OK, TEXT, "ready\n"),
                    Some(addr) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        format!("not ready: {addr} is not accepting\n"),
                    ),
                }
            }
            (Method::GET, "/status") => {
                let body = status::status_json(&self.control.state.load(), &self.control.certs);
                reply(StatusCode::OK, "application/json", body)
            }
            (Method::POST, "/reload") => match self.control.reload().await {
                Ok(report) => reply(StatusCode::OK, TEXT, report.to_string()),
                Err(errors) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    TEXT,
                    format!("{errors}\n"),
                ),
            },
            (_, "/metrics" | "/healthz" | "/readyz" | "/status" | "/reload") => {
                reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: try /metrics, /healthz, /readyz, /status, POST /reload\n",
            ),
        }
    }
}

/// The first listener with no listening socket in the kernel's table. Read, not probed: a
/// probe connection would be proxied by a stream listener (an upstream dial per check).
fn not_listening(
    mut addrs: impl Iterator<Item = std::net::SocketAddr>,
) -> Option<std::net::SocketAddr> {
    let sockets = sockets::tcp_sockets();
    addrs.find(|a| !sockets.contains(&(*a, sockets::LISTEN)))
}
