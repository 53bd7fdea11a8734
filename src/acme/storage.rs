//! ACME state on disk: the account credentials (one file per directory URL, mode 0600) and one
//! certificate chain + key per name, each written atomically (temporary file, then rename).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn new(root: &Path) -> Storage {
        Storage {
            root: root.to_path_buf(),
        }
    }

    fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in [self.root.join("accounts"), self.root.join("certs")] {
            std::fs::create_dir_all(&d)?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        directory.hash(&mut h);
        self.root
            .join("accounts")
            .join(format!("{:016x}.json", h.finish()))
    }

    pub fn load_account(&self, directory: &str) -> Option<String> {
        std::fs::read_to_string(self.account_path(directory)).ok()
    }

    pub fn save_account(&self, directory: &str, json: &str) -> std::io::Result<()> {
        self.ensure_dirs()?;
        write_atomic(&self.account_path(directory), json.as_bytes(), 0o600)
    }

    fn cert_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join("certs");
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    }

    /// The stored chain and key PEM for `name`.
    pub fn load_cert(&self, name: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let (c, k) = self.cert_paths(name);
        Some((std::fs::read(c).ok()?, std::fs::read(k).ok()?))
    }

    /// Store a chain and key: the key first, so a chain on disk always has its key.
    pub fn save_cert(&self, name: &str, chain_pem: &[u8], key_pem: &[u8]) -> std::io::Result<()> {
        self.ensure_dirs()?;
        let (c, k) = self.cert_paths(name);
        write_atomic(&k, key_pem, 0o600)?;
        write_atomic(&c, chain_pem, 0o644)
    }
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_certs_round_trip_with_private_modes() {
        let dir = tempfile_dir();
        let s = Storage::new(&dir);
        assert!(s.load_account("https://ca/dir").is_none());
        s.save_account("https://ca/dir", "{}").unwrap();
        assert_eq!(s.load_account("https://ca/dir").as_deref(), Some("{}"));
        assert!(s.load_account("https://other/dir").is_none());
        s.save_cert("a.test", b"chain", b"key").unwrap();
        assert_eq!(
            s.load_cert("a.test").unwrap(),
            (b"chain".to_vec(), b"key".to_vec())
        );
        let mode = std::fs::metadata(dir.join("certs/a.test.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gatehouse-acme-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
