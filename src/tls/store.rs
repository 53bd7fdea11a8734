//! The certificate store read by every handshake: exact name, then wildcard, then the default
//! certificate, then a self-signed fallback. Certificates from files (replaced on reload) and
//! from ACME (installed as they are issued) live in two layers of one lock-free snapshot.

use super::cert::CertKey;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

/// Which rule picked a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Exact,
    Wildcard,
    Default,
    Fallback,
}

impl Pick {
    pub fn as_str(self) -> &'static str {
        match self {
            Pick::Exact => "exact",
            Pick::Wildcard => "wildcard",
            Pick::Default => "default",
            Pick::Fallback => "fallback",
        }
    }
}

#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertKey>>,
    wildcard: HashMap<String, Arc<CertKey>>,
}

impl Table {
    fn add(&mut self, cert: &Arc<CertKey>) {
        for name in &cert.names {
            let slot = match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.entry(parent.to_string()),
                None => self.exact.entry(name.clone()),
            };
            // The first certificate for a name wins (file order), unless it has expired and a
            // later one has not.
            slot.and_modify(|old| {
                if old.expired() && !cert.expired() {
                    *old = cert.clone();
                }
            })
            .or_insert_with(|| cert.clone());
        }
    }

    fn get(&self, name: &str) -> Option<(Arc<CertKey>, Pick)> {
        if let Some(c) = self.exact.get(name) {
            return Some((c.clone(), Pick::Exact));
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard
            .get(parent)
            .map(|c| (c.clone(), Pick::Wildcard))
    }
}

struct Snapshot {
    files: Table,
    acme: Table,
    default: Option<Arc<CertKey>>,
}

pub struct CertStore {
    snap: ArcSwap<Snapshot>,
    /// ACME certificates by the name they were ordered for.
    acme: ArcSwap<HashMap<String, Arc<CertKey>>>,
    files: ArcSwap<Vec<Arc<CertKey>>>,
    /// TLS-ALPN-01 validation certificates by name, while an order waits on them.
    challenges: ArcSwap<HashMap<String, Arc<CertKey>>>,
    fallback: Arc<CertKey>,
}

impl CertStore {
    pub fn new(fallback: CertKey) -> CertStore {
        CertStore {
            snap: ArcSwap::from_pointee(Snapshot {
                files: Table::default(),
                acme: Table::default(),
                default: None,
            }),
            acme: ArcSwap::from_pointee(HashMap::new()),
            files: ArcSwap::from_pointee(Vec::new()),
            challenges: ArcSwap::from_pointee(HashMap::new()),
            fallback: Arc::new(fallback),
        }
    }

    /// Replace the certificates that come from files (a reload). The first is the default.
    pub fn set_files(&self, certs: Vec<Arc<CertKey>>) {
        self.files.store(Arc::new(certs));
        self.rebuild();
    }

    /// Install (or replace) the ACME certificate for `name`.
    pub fn set_acme(&self, name: &str, cert: Arc<CertKey>) {
        let mut map = HashMap::clone(&self.acme.load());
        map.insert(name.to_string(), cert);
        self.acme.store(Arc::new(map));
        self.rebuild();
    }

    /// Install (`Some`) or withdraw (`None`) the TLS-ALPN-01 validation certificate for `name`.
    pub fn set_challenge(&self, name: &str, cert: Option<Arc<CertKey>>) {
        self.challenges.rcu(|m| {
            let mut m = HashMap::clone(m);
            match &cert {
                Some(c) => m.insert(name.to_string(), c.clone()),
                None => m.remove(name),
            };
            m
        });
    }

    /// The validation certificate for an `acme-tls/1` handshake naming `name`.
    pub fn challenge(&self, name: &str) -> Option<Arc<CertKey>> {
        self.challenges.load().get(name).cloned()
    }

    pub fn acme_cert(&self, name: &str) -> Option<Arc<CertKey>> {
        self.acme.load().get(name).cloned()
    }

    fn rebuild(&self) {
        let files = self.files.load();
        let mut f = Table::default();
        for c in files.iter() {
            f.add(c);
        }
        let mut a = Table::default();
        for c in self.acme.load().values() {
            a.add(c);
        }
        self.snap.store(Arc::new(Snapshot {
            files: f,
            acme: a,
            default: files.first().cloned(),
        }));
    }

    /// The certificate for a handshake's SNI name (lower-case; `None` without SNI).
    pub fn pick(&self, sni: Option<&str>) -> (Arc<CertKey>, Pick) {
        let snap = self.snap.load();
        if let Some(name) = sni {
            // A valid ACME certificate beats an expired file; otherwise files first.
            let file = snap.files.get(name);
            let acme = snap.acme.get(name);
            match (file, acme) {
                (Some(f), Some(a)) if f.0.expired() && !a.0.expired() => return a,
                (Some(f), _) => return f,
                (None, Some(a)) => return a,
                (None, None) => {}
            }
        }
        match &snap.default {
            Some(d) => (d.clone(), Pick::Default),
            None => (self.fallback.clone(), Pick::Fallback),
        }
    }

    /// Every certificate in use, for `/status` and metrics: (name, certificate).
    pub fn all(&self) -> Vec<(String, Arc<CertKey>)> {
        let mut out: Vec<(String, Arc<CertKey>)> = Vec::new();
        for c in self.files.load().iter() {
            for n in &c.names {
                out.push((n.clone(), c.clone()));
            }
        }
        for (n, c) in self.acme.load().iter() {
            out.push((n.clone(), c.clone()));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Arc<CertKey> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Arc::new(CertKey::self_signed(&names).unwrap())
    }

    #[test]
    fn exact_then_wildcard_then_default_then_fallback() {
        let store = CertStore::new(CertKey::self_signed(&["fallback".into()]).unwrap());
        assert_eq!(store.pick(Some("a.test")).1, Pick::Fallback);
        let (a, w) = (cert(&["a.test"]), cert(&["*.example.com"]));
        store.set_files(vec![a.clone(), w.clone()]);
        let (c, p) = store.pick(Some("a.test"));
        assert!(Arc::ptr_eq(&c, &a) && p == Pick::Exact);
        let (c, p) = store.pick(Some("api.example.com"));
        assert!(Arc::ptr_eq(&c, &w) && p == Pick::Wildcard);
        assert_eq!(store.pick(Some("a.b.example.com")).1, Pick::Default);
        assert_eq!(store.pick(None).1, Pick::Default);
        let acme = cert(&["new.test"]);
        store.set_acme("new.test", acme.clone());
        assert!(Arc::ptr_eq(&store.pick(Some("new.test")).0, &acme));
        // A reload of the files keeps ACME certificates.
        store.set_files(vec![]);
        assert!(Arc::ptr_eq(&store.pick(Some("new.test")).0, &acme));
        assert_eq!(store.pick(Some("a.test")).1, Pick::Fallback);
    }
}
