//! One certificate order: account, order, HTTP-01 challenges, finalisation with a fresh key.

use super::storage::Storage;
use super::{AcmeConfig, Challenges};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use std::time::Duration;

/// How long one order may take in all, and how patiently the CA is polled.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .initial_delay(Duration::from_millis(100))
        .timeout(Duration::from_secs(90))
}

/// The account for `cfg.directory`: from storage, else newly registered (and stored).
async fn account(cfg: &AcmeConfig, storage: &Storage) -> Result<Account, String> {
    let builder = || match &cfg.ca {
        Some(ca) => Account::builder_with_root(ca)
            .map_err(|e| format!("cannot use CA bundle {}: {e}", ca.display())),
        None => Account::builder().map_err(|e| e.to_string()),
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

/// Order a certificate for `name`: returns (chain PEM, key PEM), already stored on disk.
pub async fn obtain(
    cfg: &AcmeConfig,
    storage: &Storage,
    cached: &mut Option<(String, Account)>,
    challenges: &Challenges,
    name: &str,
) -> Result<(String, String), String> {
    if cached.as_ref().is_none_or(|(dir, _)| *dir != cfg.directory) {
        *cached = Some((cfg.directory.clone(), account(cfg, storage).await?));
    }
    let Some((_, account)) = cached.as_ref() else {
        return Err("no account".into());
    };
    let mut tokens = Vec::new();
    let result =
        tokio::time::timeout(ORDER_TIMEOUT, order(account, challenges, name, &mut tokens)).await;
    for t in &tokens {
        challenges.remove(t);
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
    challenges: &Challenges,
    name: &str,
    tokens: &mut Vec<String>,
) -> Result<(String, String), String> {
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
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
        let mut ch = authz
            .challenge(ChallengeType::Http01)
            .ok_or("the CA offers no http-01 challenge")?;
        let token = ch.token.clone();
        challenges.insert(&token, ch.key_authorization().as_str());
        tokens.push(token);
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let status = order
        .poll_ready(&retry_policy())
        .await
        .map_err(|e| format!("waiting for validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "order is {status:?} (validation failed: is port 80 of {name} reaching gatehouse?)"
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
