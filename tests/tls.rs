//! TLS termination through the real binary: certificates chosen by SNI (exact, wildcard,
//! default, self-signed fallback), HTTP/2 by ALPN, presets, reload of certificates from disk,
//! and certificate mistakes reported by `check`.

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::Path;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// Write `<file>.crt` / `<file>.key` for `names` into `dir`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{file}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    fn client(&self, names: &[&str], https: SocketAddr) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).unwrap();
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(root)
            .tls_built_in_root_certs(false);
        for n in names {
            b = b.resolve(n, https);
        }
        b.build().unwrap()
    }
}

async fn tls_gatehouse(ca: &Ca, tls: &str) -> (Gatehouse, SocketAddr) {
    let https = free_port();
    let w = write_config_listen(
        &format!("  https: [\"127.0.0.1:{https}\"]\n"),
        &format!(
            "{tls}ingresses: [{{ rules: [{{ paths: [{{ path: /, respond: {{ body: \"secure\\n\" }} }}] }}] }}]\n"
        ),
        &[],
    );
    let certs = w.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    ca.issue(&certs, "a.test", &["a.test"]);
    ca.issue(&certs, "*.wild.test", &["*.wild.test"]);
    ca.issue(&certs, "default", &["default.test"]);
    let gh = Gatehouse::launch(w).await;
    (gh, SocketAddr::from(([127, 0, 0, 1], https)))
}

#[tokio::test]
async fn sni_picks_exact_wildcard_default_and_speaks_h2() {
    let ca = Ca::new();
    let (gh, https) = tls_gatehouse(
        &ca,
        "tls:\n  certificates: [{ cert: certs/default.crt, key: certs/default.key }]\n  directory: certs\n",
    )
    .await;
    let names = ["a.test", "x.wild.test", "default.test", "other.test"];
    let c = ca.client(&names, https);
    for name in ["a.test", "x.wild.test", "default.test"] {
        let r = c
            .get(format!("https://{name}:{}/", https.port()))
            .send()
            .await;
        let r = r.unwrap_or_else(|e| panic!("{name}: {e:?}\n{}", gh.log()));
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "{name}");
        assert_eq!(r.text().await.unwrap(), "secure\n");
    }
    // Unknown name: the default certificate (for default.test) does not verify for it.
    assert!(c
        .get(format!("https://other.test:{}/", https.port()))
        .send()
        .await
        .is_err());
    let text = gh.metrics().await;
    for rule in ["exact", "wildcard", "default"] {
        assert!(
            text.contains(&format!(
                "gatehouse_tls_certificate_selections_total{{rule=\"{rule}\"}}"
            )),
            "{text}"
        );
    }
    assert!(
        text.contains("gatehouse_tls_handshakes_total{version=\"TLSv1.3\"}"),
        "{text}"
    );
    assert!(
        text.contains(
            "gatehouse_certificate_expiry_timestamp_seconds{name=\"a.test\",source=\"file\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn without_certificates_the_self_signed_fallback_completes_the_handshake() {
    let ca = Ca::new();
    let (gh, https) = tls_gatehouse(&ca, "").await;
    let insecure = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve("nothing.test", https)
        .build()
        .unwrap();
    let r = insecure
        .get(format!("https://nothing.test:{}/", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "secure\n");
    // A verifying client refuses it.
    assert!(ca
        .client(&["nothing.test"], https)
        .get(format!("https://nothing.test:{}/", https.port()))
        .send()
        .await
        .is_err());
    assert!(gh.log().contains("self-signed fallback"), "{}", gh.log());
}

#[tokio::test]
async fn a_reload_picks_up_new_certificates_without_a_restart() {
    let ca = Ca::new();
    let (gh, https) = tls_gatehouse(&ca, "tls: { directory: certs }\n").await;
    let c = ca.client(&["late.test"], https);
    let url = format!("https://late.test:{}/", https.port());
    assert!(c.get(&url).send().await.is_err());
    ca.issue(&gh.path().join("certs"), "late.test", &["late.test"]);
    let out = gatehouse_cmd(&["reload", "-c", gh.config.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let c = ca.client(&["late.test"], https); // a fresh client: no TLS session reuse
    assert_eq!(get_text(&c, &url).await, "secure\n");
}

#[tokio::test]
async fn modern_preset_refuses_tls12() {
    let ca = Ca::new();
    let (_gh, https) = tls_gatehouse(&ca, "tls: { preset: modern, directory: certs }\n").await;
    let root = reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap();
    let tls12 = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .resolve("a.test", https)
        .build()
        .unwrap();
    assert!(tls12
        .get(format!("https://a.test:{}/", https.port()))
        .send()
        .await
        .is_err());
    let ok = ca
        .client(&["a.test"], https)
        .get(format!("https://a.test:{}/", https.port()))
        .send()
        .await;
    assert!(ok.is_ok());
}

#[test]
fn certificate_mistakes_are_config_errors() {
    let ca = Ca::new();
    let w = write_config("", &[]);
    let d = w.dir.path();
    ca.issue(d, "one", &["one.test"]);
    ca.issue(d, "two", &["two.test"]);
    std::fs::write(d.join("orphan.crt"), "x").unwrap();
    std::fs::create_dir(d.join("dir")).unwrap();
    std::fs::copy(d.join("one.crt"), d.join("dir/lonely.crt")).unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(
        &w.config,
        format!(
            "{text}tls:\n  preset: ancient\n  certificates:\n    - {{ cert: one.crt, key: two.key }}\n    - {{ cert: missing.crt, key: one.key }}\n    - {{ cert: orphan.crt, key: one.key }}\n  directory: dir\n"
        ),
    )
    .unwrap();
    let out = gatehouse_cmd(&["check", "-c", w.config.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    for want in [
        "tls.preset: \"ancient\": write modern, intermediate or old",
        "tls.certificates[0]:",
        "one.crt: the key does not match the certificate",
        "tls.certificates[1]:",
        "missing.crt: cannot read",
        "tls.certificates[2]:",
        "orphan.crt: no PEM certificate in the file",
        "tls.directory:",
        "lonely.crt has no matching",
    ] {
        assert!(
            out.stderr.contains(want),
            "missing {want:?} in:\n{}",
            out.stderr
        );
    }
}
