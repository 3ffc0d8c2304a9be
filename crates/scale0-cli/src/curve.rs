//! CURVE flags shared by the commands, and `scale0 keygen`.

use anyhow::{Context, Result, bail};
use scale0::proto::ServiceName;
use scale0::{Allowlist, CurveClient, CurveServer, KeyPair, PublicKey};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// CURVE flags of a server: with them every endpoint it binds is encrypted and only the
/// allowed keys may connect.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// CURVE: this server's key pair, a `NAME.key_secret` file from `scale0 keygen`.
    /// With it every endpoint is encrypted and authenticated; needs --curve-allow.
    #[arg(long, value_name = "FILE", requires = "curve_allow")]
    curve_secret: Option<PathBuf>,
    /// CURVE: the public keys that may connect: a directory of `NAME.key` files (the
    /// key's name is NAME), or a file with one `<Z85 key> [name]` per line.
    #[arg(long, value_name = "PATH", requires = "curve_secret")]
    curve_allow: Option<PathBuf>,
}

impl ServerArgs {
    /// The server side of CURVE, if its flags were given.
    pub(crate) fn load(&self) -> Result<Option<CurveServer>> {
        let (Some(secret), Some(allow)) = (&self.curve_secret, &self.curve_allow) else {
            return Ok(None);
        };
        let pair = KeyPair::load(secret)?;
        let allow = Allowlist::load(allow)?;
        Ok(Some(CurveServer {
            pair,
            allow: Arc::new(allow),
        }))
    }
}

/// CURVE flags of a peer that connects to a CURVE server.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientArgs {
    /// CURVE: the server's public key: its `NAME.key` file, or the 40-character Z85 text.
    /// Needs --curve-key.
    #[arg(long, value_name = "KEY", requires = "curve_key")]
    curve_server_key: Option<String>,
    /// CURVE: this peer's key pair, a `NAME.key_secret` file from `scale0 keygen`; the
    /// server must list its public half.
    #[arg(long, value_name = "FILE", requires = "curve_server_key")]
    curve_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The client side of CURVE, if its flags were given.
    pub(crate) fn load(&self) -> Result<Option<CurveClient>> {
        let (Some(server), Some(key)) = (&self.curve_server_key, &self.curve_key) else {
            return Ok(None);
        };
        Ok(Some(CurveClient {
            server: PublicKey::load(server)?,
            pair: KeyPair::load(key)?,
        }))
    }
}

/// Parses `--curve-services NAME=svc,svc`.
pub(crate) fn parse_services(s: &str) -> Result<(String, Vec<ServiceName>), String> {
    let (key, list) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=SERVICE[,SERVICE...], got {s:?}"))?;
    if key.is_empty() {
        return Err(format!("no key name before '=' in {s:?}"));
    }
    let services = list
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| {
            ServiceName::new(bytes::Bytes::copy_from_slice(n.as_bytes()))
                .map_err(|_| format!("bad service name {n:?}: it must be 1 to 255 bytes"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key.to_string(), services))
}

/// The broker's per-key service rules, keyed by the names the allowlist gives; a key
/// may be given by name or by its Z85 text.
pub(crate) fn access(
    rules: Vec<(String, Vec<ServiceName>)>,
    curve: Option<&CurveServer>,
) -> Result<BTreeMap<String, BTreeSet<ServiceName>>> {
    let mut out: BTreeMap<String, BTreeSet<ServiceName>> = BTreeMap::new();
    if rules.is_empty() {
        return Ok(out);
    }
    let Some(curve) = curve else {
        bail!(
            "--curve-services needs CURVE (--curve-secret and --curve-allow): without it no key is known"
        );
    };
    for (key, services) in rules {
        let name = match PublicKey::from_z85(&key).and_then(|k| curve.allow.name(&k)) {
            Some(name) => name.to_string(),
            None if curve.allow.has_name(&key) => key,
            None => bail!(
                "--curve-services names {key:?}, which is not a key in the --curve-allow list"
            ),
        };
        out.entry(name).or_default().extend(services);
    }
    Ok(out)
}

/// Flags of `scale0 keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// The key's name: the files are NAME.key (public) and NAME.key_secret (private).
    name: String,
    /// Directory to write them in.
    #[arg(long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,
}

pub(crate) fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    if args.name.is_empty() || args.name.contains(['/', '\0']) {
        bail!("the key name {:?} cannot be a file name", args.name);
    }
    let pair = KeyPair::generate()?;
    let (public, secret) = pair
        .write(&args.dir, &args.name)
        .with_context(|| format!("writing the key pair {:?}", args.name))?;
    println!("public {}", public.display());
    println!("secret {}", secret.display());
    println!("key {}", pair.public.z85());
    Ok(ExitCode::SUCCESS)
}
