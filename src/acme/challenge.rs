//! HTTP-01 key authorizations, written by the ACME service and read by the proxy for
//! `/.well-known/acme-challenge/<token>` before routing.

use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.to_string(), key_authorization.to_string());
        }
    }

    pub fn remove(&self, token: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.remove(token);
        }
    }

    /// The key authorization for `token`, if an order is waiting on it.
    pub fn get(&self, token: &str) -> Option<String> {
        self.tokens.read().ok()?.get(token).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.read().map_or(true, |t| t.is_empty())
    }
}
