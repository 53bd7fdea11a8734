//! One certificate chain with its key: loading PEM files, checking that the key matches, and
//! reading the names and expiry a certificate carries.

use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a certificate came from (shown in `/status` and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(String),
    Acme,
    Fallback,
}

pub struct CertKey {
    /// Leaf first, then intermediates.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Lower-case DNS names (SAN, else CN), wildcards as `*.example.com`.
    pub names: Vec<String>,
    pub not_after: SystemTime,
    pub source: Source,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CertKey {
    /// Parse a PEM chain and PEM key; the key must belong to the leaf.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], source: Source) -> Result<CertKey, String> {
        let chain =
            X509::stack_from_pem(chain_pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
        let leaf = chain.first().ok_or("no PEM certificate in the file")?;
        let key = PKey::private_key_from_pem(key_pem)
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        let public = leaf
            .public_key()
            .map_err(|e| format!("unreadable public key: {e}"))?;
        if !public.public_eq(&key) {
            return Err("the key does not match the certificate".into());
        }
        let names = names_of(leaf);
        let not_after = expiry(leaf)?;
        Ok(CertKey {
            chain,
            key,
            names,
            not_after,
            source,
        })
    }

    pub fn from_files(cert: &Path, key: &Path) -> Result<CertKey, String> {
        let c = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        let k = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        CertKey::from_pem(&c, &k, Source::File(cert.display().to_string()))
    }

    pub fn expired(&self) -> bool {
        self.not_after <= SystemTime::now()
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// A self-signed certificate, so a handshake for an unknown name still completes (and
    /// ACME can bootstrap).
    pub fn self_signed(names: &[String]) -> Result<CertKey, String> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
        let cert = ck.cert.pem();
        let key = ck.key_pair.serialize_pem();
        CertKey::from_pem(cert.as_bytes(), key.as_bytes(), Source::Fallback)
    }

    /// The TLS-ALPN-01 validation certificate for `name` (RFC 8737 §3): self-signed, the name
    /// as its only SAN, and the SHA-256 digest of the key authorization in the critical
    /// `acmeIdentifier` extension.
    pub fn tls_alpn_challenge(
        name: &str,
        key_authorization_digest: &[u8],
    ) -> Result<CertKey, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(
                key_authorization_digest,
            ));
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        CertKey::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Source::Acme,
        )
    }
}

fn names_of(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        if let Some(cn) = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next() {
            names.push(String::from_utf8_lossy(cn.data().as_slice()).to_ascii_lowercase());
        }
    }
    names
}

fn expiry(cert: &X509) -> Result<SystemTime, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let diff = epoch.diff(cert.not_after()).map_err(|e| e.to_string())?;
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    Ok(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_round_trip_and_mismatched_keys() {
        let a = CertKey::self_signed(&["a.test".into(), "*.b.test".into()]).unwrap();
        assert_eq!(a.names, ["a.test", "*.b.test"]);
        assert!(!a.expired());
        let ck = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let err = CertKey::from_pem(
            ck.cert.pem().as_bytes(),
            other.serialize_pem().as_bytes(),
            Source::Acme,
        );
        assert_eq!(err.unwrap_err(), "the key does not match the certificate");
        assert!(CertKey::from_pem(b"junk", b"junk", Source::Acme).is_err());
    }
}
