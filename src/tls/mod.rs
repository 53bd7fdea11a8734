//! TLS termination: listener settings (Mozilla presets, ALPN h2/http1.1), the certificate store
//! and the handshake callback that reads it. Imports: metrics; nothing of config or proxy.

pub mod cert;
pub mod store;

pub use cert::{CertKey, Source};
pub use store::{CertStore, Pick};

use async_trait::async_trait;
use openssl::ssl::{select_next_proto, AlpnError, NameType, SslVersion};
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{TlsAccept, TlsAcceptCallbacks};
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use std::any::Any;
use std::sync::Arc;

/// Mozilla's server-side TLS configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 and 1.3 with forward-secret AEAD ciphers (the default).
    Intermediate,
    /// TLS 1.0 and up with legacy ciphers, for very old clients.
    Old,
}

const OLD_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:\
ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:\
AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA:\
DES-CBC3-SHA:@SECLEVEL=0";

/// Settings for one HTTPS listener: the preset, h2 + http/1.1 by ALPN, certificates from
/// `store` chosen per SNI at handshake time.
pub fn listener_settings(
    store: Arc<CertStore>,
    preset: Preset,
    http: bool,
) -> pingora::Result<TlsSettings> {
    let callbacks: TlsAcceptCallbacks = Box::new(SniCallback { store });
    let mut settings = TlsSettings::with_callbacks(callbacks)?;
    let tls_err = |e: openssl::error::ErrorStack| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            format!("TLS preset: {e}"),
        )
    };
    match preset {
        Preset::Modern => settings
            .set_min_proto_version(Some(SslVersion::TLS1_3))
            .map_err(tls_err)?,
        Preset::Intermediate => settings
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(tls_err)?,
        Preset::Old => {
            settings
                .set_min_proto_version(Some(SslVersion::TLS1))
                .map_err(tls_err)?;
            settings.set_cipher_list(OLD_CIPHERS).map_err(tls_err)?;
        }
    }
    // Pingora's `enable_h2()` with one addition: `acme-tls/1`, which only ACME validators
    // offer (RFC 8737), so that TLS-ALPN-01 can be answered on this listener.
    // Stream listeners (`http: false`) carry raw bytes: no HTTP protocol is negotiated.
    let protocols: &'static [u8] = if http { H2_H1 } else { b"" };
    settings.set_alpn_select_callback(move |_, offered| {
        select_next_proto(ACME_TLS_ALPN, offered)
            .or_else(|| select_next_proto(protocols, offered))
            .ok_or(AlpnError::NOACK)
    });
    Ok(settings)
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes, in wire format.
const ACME_TLS_ALPN: &[u8] = b"\x0aacme-tls/1";
const H2_H1: &[u8] = b"\x02h2\x08http/1.1";

fn install(ssl: &mut TlsRef, cert: &CertKey, sni: Option<&str>, m: &crate::metrics::Metrics) {
    let installed = ext::ssl_use_certificate(ssl, &cert.chain[0])
        .and_then(|()| ext::ssl_use_private_key(ssl, &cert.key))
        .and_then(|()| {
            cert.chain[1..]
                .iter()
                .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
        });
    if let Err(e) = installed {
        log::error!("TLS: cannot use the certificate for {sni:?}: {e}");
        m.tls_handshake_errors.inc();
    }
}

struct SniCallback {
    store: Arc<CertStore>,
}

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let sni = ssl
            .servername(NameType::HOST_NAME)
            .map(str::to_ascii_lowercase);
        let m = crate::metrics::get();
        if ssl.selected_alpn_protocol() == Some(&ACME_TLS_ALPN[1..]) {
            // A TLS-ALPN-01 validation: answer with the validation certificate, or with none
            // at all (the handshake fails, as RFC 8737 asks) when no order waits on this name.
            let challenge = sni.as_deref().and_then(|n| self.store.challenge(n));
            log::info!(
                "TLS: acme-tls/1 validation handshake for {sni:?} ({})",
                if challenge.is_some() {
                    "answered"
                } else {
                    "no order waits on it"
                }
            );
            if let Some(cert) = challenge {
                install(ssl, &cert, sni.as_deref(), m);
            }
            return;
        }
        let (cert, pick) = self.store.pick(sni.as_deref());
        m.tls_certificate_picks
            .with_label_values(&[pick.as_str()])
            .inc();
        if pick == Pick::Fallback {
            log::info!(
                "TLS: no certificate for {:?}, answering with the self-signed fallback",
                sni
            );
        }
        install(ssl, &cert, sni.as_deref(), m);
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        crate::metrics::get()
            .tls_handshakes
            .with_label_values(&[ssl.version_str()])
            .inc();
        None
    }
}
