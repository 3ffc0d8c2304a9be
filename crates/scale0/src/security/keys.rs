//! CURVE keys and their files.

use crate::error::{Error, Result, ZmqContext};
use std::path::{Path, PathBuf};

/// A CURVE public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key as Z85 text (40 characters).
    pub fn z85(&self) -> String {
        zmq::z85_encode(&self.0).unwrap_or_default()
    }

    /// Parses 40 characters of Z85.
    pub fn from_z85(text: &str) -> Option<Self> {
        decode_key(text).map(Self)
    }

    /// A public key from a key file (`NAME.key` or `NAME.key_secret`), or the Z85 text
    /// itself.
    pub fn load(spec: &str) -> Result<Self> {
        if let Some(key) = Self::from_z85(spec.trim()) {
            return Ok(key);
        }
        let text = read(Path::new(spec))?;
        parse_field(&text, "public-key")
            .or_else(|| bare_key(&text))
            .map(Self)
            .ok_or_else(|| bad_file(Path::new(spec), "no public-key in it"))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.z85())
    }
}

/// A CURVE key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// The half others may know.
    pub public: PublicKey,
    pub(super) secret: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random pair (libsodium's generator, through libzmq).
    pub fn generate() -> Result<Self> {
        let pair = zmq::CurveKeyPair::new().context(|| "generating a CURVE key pair".into())?;
        Ok(Self {
            public: PublicKey(pair.public_key),
            secret: pair.secret_key,
        })
    }

    /// Reads a secret key file (`NAME.key_secret`): both keys.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let public = parse_field(&text, "public-key")
            .ok_or_else(|| bad_file(path, "no public-key in it"))?;
        let secret = parse_field(&text, "secret-key")
            .ok_or_else(|| bad_file(path, "no secret-key in it: is this the public half?"))?;
        Ok(Self {
            public: PublicKey(public),
            secret,
        })
    }

    /// Writes `DIR/NAME.key` (public) and `DIR/NAME.key_secret` (both, readable by the
    /// owner only); returns their paths. Existing files are not overwritten.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let public = dir.join(format!("{name}.key"));
        let secret = dir.join(format!("{name}.key_secret"));
        let header = |what: &str| {
            format!(
                "# CURVE {what} of {name:?}, written by `scale0 keygen`.\nmetadata\n    name = {name:?}\ncurve\n"
            )
        };
        let public_text = format!(
            "{}    public-key = \"{}\"\n",
            header("public key"),
            self.public.z85()
        );
        let secret_text = format!(
            "{}    public-key = \"{}\"\n    secret-key = \"{}\"\n",
            header("key pair (secret: keep it private)"),
            self.public.z85(),
            zmq::z85_encode(&self.secret).unwrap_or_default()
        );
        write_new(&public, &public_text, 0o644)?;
        write_new(&secret, &secret_text, 0o600)?;
        Ok((public, secret))
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    if text.len() != 40 {
        return None;
    }
    zmq::z85_decode(text).ok()?.try_into().ok()
}

/// The Z85 key of a `name = "<Z85>"` line.
pub(super) fn parse_field(text: &str, name: &str) -> Option<[u8; 32]> {
    parse_text_field(text, name).and_then(|v| decode_key(&v))
}

pub(super) fn parse_text_field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A file that is just a Z85 public key.
fn bare_key(text: &str) -> Option<[u8; 32]> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [one] => decode_key(one),
        _ => None,
    }
}

pub(super) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|error| Error::File {
        what: "reading the key file",
        path: path.to_path_buf(),
        error,
    })
}

pub(super) fn bad_file(path: &Path, why: &str) -> Error {
    Error::InvalidConfig(format!("key file {}: {why}", path.display()))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| written(path, error))?;
    file.write_all(text.as_bytes())
        .map_err(|error| written(path, error))
}

fn written(path: &Path, error: std::io::Error) -> Error {
    Error::File {
        what: "writing",
        path: path.to_path_buf(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::Allowlist;

    #[test]
    fn key_files_round_trip_and_directories_name_keys() {
        let dir = std::env::temp_dir().join(format!("scale0-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pair = KeyPair::generate().unwrap();
        let (public, secret) = pair.write(&dir, "alice").unwrap();
        assert!(pair.write(&dir, "alice").is_err(), "must not overwrite");
        let back = KeyPair::load(&secret).unwrap();
        assert_eq!(back.public, pair.public);
        assert_eq!(back.secret, pair.secret);
        assert_eq!(
            PublicKey::load(&public.display().to_string()).unwrap(),
            pair.public
        );
        assert_eq!(PublicKey::load(&pair.public.z85()).unwrap(), pair.public);
        assert!(
            KeyPair::load(&public).is_err(),
            "a public file has no secret"
        );
        let list = Allowlist::load(&dir).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list.name(&pair.public), Some("alice"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
