//! One certificate order: account, order, HTTP-01 or TLS-ALPN-01 challenges, finalisation
//! with a fresh key.

use super::client::{Http, RetryAfter};
use super::storage::Storage;
use super::{AcmeConfig, ChallengeKind, Challenges};
use crate::tls::{CertKey, CertStore};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long one order may take in all, and how patiently the CA is polled.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(100))
        .timeout(Duration::from_secs(90))
}

/// The account, kept across orders while the directory and CA bundle stay the same.
pub struct AccountCache {
    retry_after: RetryAfter,
    current: Option<((String, Option<PathBuf>), Account)>,
}

impl AccountCache {
    pub fn new(retry_after: RetryAfter) -> AccountCache {
        AccountCache {
            retry_after,
            current: None,
        }
    }

    pub async fn get(&mut self, cfg: &AcmeConfig, storage: &Storage) -> Result<&Account, String> {
        let key = (cfg.directory.clone(), cfg.ca.clone());
        if self.current.as_ref().is_none_or(|(k, _)| *k != key) {
            let account = account(cfg, storage, &self.retry_after).await?;
            self.current = Some((key, account));
        }
        match &self.current {
            Some((_, a)) => Ok(a),
            None => Err("no account".into()),
        }
    }
}

/// The account for `cfg.directory`: from storage, else newly registered (and stored).
async fn account(
    cfg: &AcmeConfig,
    storage: &Storage,
    retry_after: &RetryAfter,
) -> Result<Account, String> {
    let builder = || {
        Http::new(cfg.ca.as_deref(), retry_after.clone())
            .map(|http| Account::builder_with_http(Box::new(http)))
    };
    if let Some(json) = storage.load_account(&cfg.directory) {
        let creds: AccountCredentials = serde_json::from_str(&json)
            .map_err(|e| format!("stored account is unreadable: {e}"))?;
        return builder()?
            .from_credentials(creds)
            .await
            .map_err(|e| format!("cannot load the account: {e}"));
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, creds) = builder()?
        .create(&new, cfg.directory.clone(), None)
        .await
        .map_err(|e| format!("cannot register an account at {}: {e}", cfg.directory))?;
    let json = serde_json::to_string(&creds).map_err(|e| e.to_string())?;
    storage
        .save_account(&cfg.directory, &json)
        .map_err(|e| format!("cannot store the account: {e}"))?;
    log::info!(
        "ACME: registered account {} at {}",
        account.id(),
        cfg.directory
    );
    Ok(account)
}

/// What an order put up for the CA to see, taken down when the order ends.
enum Answer {
    Token(String),
    AlpnCertificate(String),
}

/// Where the answers to the CA's challenges go: HTTP-01 tokens for the proxy, TLS-ALPN-01
/// validation certificates for the handshake callback.
pub struct Answers<'a> {
    pub kind: ChallengeKind,
    pub tokens: &'a Challenges,
    pub certs: &'a CertStore,
}

/// Order a certificate for `name` (replacing `replaces`, when the CA speaks ARI): returns
/// (chain PEM, key PEM), already stored on disk.
pub async fn obtain(
    storage: &Storage,
    account: &Account,
    answers: &Answers<'_>,
    name: &str,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<(String, String), String> {
    let mut shown = Vec::new();
    let result = tokio::time::timeout(
        ORDER_TIMEOUT,
        order(account, answers, name, replaces, &mut shown),
    )
    .await;
    for a in &shown {
        match a {
            Answer::Token(t) => answers.tokens.remove(t),
            Answer::AlpnCertificate(n) => answers.certs.set_challenge(n, None),
        }
    }
    let (chain, key) = match result {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                "the order did not complete within {ORDER_TIMEOUT:?}"
            ))
        }
    };
    storage
        .save_cert(name, chain.as_bytes(), key.as_bytes())
        .map_err(|e| format!("cannot store the certificate: {e}"))?;
    Ok((chain, key))
}

async fn order(
    account: &Account,
    answers: &Answers<'_>,
    name: &str,
    replaces: Option<CertificateIdentifier<'static>>,
    shown: &mut Vec<Answer>,
) -> Result<(String, String), String> {
    let ids = [Identifier::Dns(name.to_string())];
    let mut new = NewOrder::new(&ids);
    if let Some(r) = replaces {
        new = new.replaces(r);
    }
    let mut order = account
        .new_order(&new)
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(format!("authorization is {other:?}")),
        }
        let kind = answers.kind;
        let mut ch = authz
            .challenge(match kind {
                ChallengeKind::Http01 => ChallengeType::Http01,
                ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            })
            .ok_or_else(|| format!("the CA offers no {} challenge", kind.as_str()))?;
        match kind {
            ChallengeKind::Http01 => {
                let token = ch.token.clone();
                answers
                    .tokens
                    .insert(&token, ch.key_authorization().as_str());
                shown.push(Answer::Token(token));
            }
            ChallengeKind::TlsAlpn01 => {
                let digest = ch.key_authorization().digest();
                let cert = CertKey::tls_alpn_challenge(name, digest.as_ref())
                    .map_err(|e| format!("validation certificate: {e}"))?;
                answers.certs.set_challenge(name, Some(Arc::new(cert)));
                shown.push(Answer::AlpnCertificate(name.to_string()));
            }
        }
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let status = order
        .poll_ready(&retry_policy())
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        let port = match answers.kind {
            ChallengeKind::Http01 => "port 80",
            ChallengeKind::TlsAlpn01 => "port 443",
        };
        return Err(format!(
            "order is {status:?} (validation failed: is {port} of {name} reaching gatehouse?)"
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let csr = rcgen::CertificateParams::new(vec![name.to_string()])
        .and_then(|p| p.serialize_request(&key))
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retry_policy())
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, key.serialize_pem()))
}
