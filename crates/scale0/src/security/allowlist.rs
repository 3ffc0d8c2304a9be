//! The public keys a server lets in.

use super::keys::{PublicKey, bad_file, parse_field, parse_text_field, read};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The public keys a server lets in, each with the name rules and logs use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    keys: HashMap<PublicKey, String>,
}

impl Allowlist {
    /// Reads `path`: a directory of key files (every `*.key` in it; the name is the file
    /// name without `.key`), or one file with a key per line (`<Z85> [name]`, `#` starts a
    /// comment line) or a single key file.
    pub fn load(path: &Path) -> Result<Self> {
        let mut list = Self::default();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|error| Error::File {
                what: "reading the key directory",
                path: path.to_path_buf(),
                error,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            files.sort();
            for file in files {
                let key = PublicKey::load(&file.display().to_string())?;
                let name = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| key.z85());
                list.add(key, name);
            }
        } else {
            let text = read(path)?;
            if let Some(key) = parse_field(&text, "public-key") {
                let name = parse_text_field(&text, "name").unwrap_or_else(|| {
                    path.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
                list.add(PublicKey(key), name);
            } else {
                for (n, line) in text.lines().enumerate() {
                    // `#` is a Z85 digit: only whole lines are comments.
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let mut words = line.split_whitespace();
                    let z85 = words.next().unwrap_or_default();
                    let key = PublicKey::from_z85(z85).ok_or_else(|| {
                        bad_file(
                            path,
                            &format!("line {}: {z85:?} is not a 40-character Z85 key", n + 1),
                        )
                    })?;
                    let name = words.next().map_or_else(|| key.z85(), str::to_string);
                    list.add(key, name);
                }
            }
        }
        if list.keys.is_empty() {
            return Err(bad_file(path, "no keys in it: nobody could connect"));
        }
        Ok(list)
    }

    /// Lets `key` in under `name`.
    pub fn add(&mut self, key: PublicKey, name: impl Into<String>) {
        self.keys.insert(key, name.into());
    }

    /// The name of an allowed key.
    pub fn name(&self, key: &PublicKey) -> Option<&str> {
        self.keys.get(key).map(String::as_str)
    }

    /// Whether some key in the list is called `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.keys.values().any(|n| n == name)
    }

    /// Keys in the list.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::KeyPair;

    #[test]
    fn allowlist_files_reject_bad_lines_and_empty_lists() {
        let dir = std::env::temp_dir().join(format!("scale0-allow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap().public;
        let good = dir.join("good");
        std::fs::write(&good, format!("# clients\n{} bob\n\n", key.z85())).unwrap();
        assert_eq!(Allowlist::load(&good).unwrap().name(&key), Some("bob"));
        // Keys with '#' in them (a Z85 digit) are keys, not comments.
        let hashed = loop {
            let k = KeyPair::generate().unwrap().public;
            if k.z85().contains('#') {
                break k;
            }
        };
        std::fs::write(&good, format!("{}\n", hashed.z85())).unwrap();
        assert_eq!(
            Allowlist::load(&good).unwrap().name(&hashed),
            Some(hashed.z85().as_str())
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "# clients\nnot-a-key bob\n").unwrap();
        let e = Allowlist::load(&bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nobody\n").unwrap();
        assert!(Allowlist::load(&empty).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
