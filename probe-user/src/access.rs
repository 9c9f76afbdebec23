//! Who may read `serve`'s endpoints: HTTPS with an optional client-certificate check,
//! and an optional bearer token. Metrics name every pod on the node and `/changes`
//! shows its tuning; on a shared network they should not be anyone's to read.

use std::{fs, path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key in it ({reason})")]
    NoKey { path: String, reason: String },
    #[error("{path}: the token file is empty")]
    EmptyToken { path: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let name = path.display().to_string();
    let text = fs::read(path).map_err(|source| AccessError::Read {
        path: name.clone(),
        source,
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(AccessError::NoCertificate { path: name });
    }
    Ok(certs)
}

/// A server configuration from PEM files; with `client_ca`, clients must present a
/// certificate that it signed.
pub(crate) fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, AccessError> {
    let chain = certificates(cert)?;
    let key_text = fs::read(key).map_err(|source| AccessError::Read {
        path: key.display().to_string(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|err| AccessError::NoKey {
        path: key.display().to_string(),
        reason: err.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| AccessError::Tls(err.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|err| AccessError::Tls(format!("{}: {err}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| AccessError::Tls(err.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| AccessError::Tls(err.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The bearer token requests must carry, if one is configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct BearerToken(Option<String>);

impl BearerToken {
    /// From a file (a Kubernetes secret mounted as a file, say); surrounding whitespace
    /// is not part of the token.
    pub(crate) fn from_file(path: &Path) -> Result<Self, AccessError> {
        let text = fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AccessError::EmptyToken {
                path: path.display().to_string(),
            });
        }
        Ok(Self(Some(token.to_string())))
    }

    /// Whether an `Authorization` header value is acceptable.
    pub(crate) fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Constant time in the token's content: no byte-by-byte timing oracle.
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let none = BearerToken::default();
        assert!(none.allows(None) && none.allows(Some(b"Basic x")));
        let token = BearerToken(Some("s3cret".into()));
        assert!(token.allows(Some(b"Bearer s3cret")));
        assert!(!token.allows(Some(b"Bearer s3cre")));
        assert!(!token.allows(Some(b"Bearer s3cretX")));
        assert!(!token.allows(Some(b"bearer s3cret")));
        assert!(!token.allows(Some(b"s3cret")));
        assert!(!token.allows(None));
    }

    #[test]
    fn token_and_pem_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("tuneprobe-access-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty");
        fs::write(&empty, "  \n").unwrap();
        let err = BearerToken::from_file(&empty).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains(&empty.display().to_string()));
        let missing = dir.join("missing.pem");
        let err = tls_config(&missing, &missing, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("reading {}", missing.display())),
            "{err}"
        );
        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, "not a certificate").unwrap();
        let err = tls_config(&garbage, &garbage, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
