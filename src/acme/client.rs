//! The HTTP client under instant-acme: hyper + rustls (system roots, or the configured CA),
//! TCP_NODELAY on (instant-acme's own client leaves Nagle on, which costs ~40 ms per request
//! on loopback), and a memory of the last `Retry-After` the CA sent with an error, so that a
//! rate-limited order waits as long as the CA asked rather than our own backoff.

use bytes::Bytes;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// Where the CA's `Retry-After` answers end up; shared by the client and the ACME loop.
#[derive(Default, Clone)]
pub struct RetryAfter(Arc<Mutex<Option<SystemTime>>>);

impl RetryAfter {
    /// How long the CA asked us to wait with its last error, if it asked; forgets it.
    pub fn take(&self) -> Option<Duration> {
        let at = self.0.lock().ok()?.take()?;
        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
    }

    /// Forget anything recorded (before an attempt, so an old answer never applies twice).
    pub fn clear(&self) {
        let _ = self.take();
    }

    fn record(&self, rsp: &BytesResponse) {
        if !(rsp.parts.status.is_client_error() || rsp.parts.status.is_server_error()) {
            return;
        }
        let Some(at) = rsp
            .parts
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after)
        else {
            return;
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(at);
        }
    }
}

/// `Retry-After: <seconds>` or `Retry-After: <HTTP-date>` (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(secs) => SystemTime::now().checked_add(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

pub struct Http {
    inner: Inner,
    retry_after: RetryAfter,
}

impl Http {
    /// A client trusting `ca` (a PEM bundle) if given, else the system's roots.
    pub fn new(ca: Option<&Path>, retry_after: RetryAfter) -> Result<Http, String> {
        let builder = HttpsConnectorBuilder::new();
        let builder = match ca {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read CA bundle {}: {e}", ca.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile_certs(&pem) {
                    roots
                        .add(cert)
                        .map_err(|e| format!("CA bundle {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("CA bundle {} holds no certificate", ca.display()));
                }
                builder.with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
                )
            }
            None => builder
                .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
                .map_err(|e| format!("cannot load the system's root certificates: {e}"))?,
        };
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = builder
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        Ok(Http {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            retry_after,
        })
    }
}

/// The certificates of a PEM bundle (anything else in it is skipped).
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let fut = self.inner.request(req);
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let rsp = BytesResponse::from(fut.await.map_err(|e| Error::Other(Box::new(e)))?);
            retry_after.record(&rsp);
            Ok(rsp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::now();
        let at = parse_retry_after(" 120 ").unwrap();
        let d = at.duration_since(now).unwrap();
        assert!(d >= Duration::from_secs(119) && d <= Duration::from_secs(121));
        let at = parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(httpdate::fmt_http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(parse_retry_after("soon").is_none());
        assert!(parse_retry_after("-5").is_none());
    }
}
