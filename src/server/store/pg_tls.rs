//! TLS to PostgreSQL, following libpq's settings in `--database-url`, on rustls (through
//! `tokio-postgres-rustls`).
//!
//! - `sslmode`: `disable` (plaintext), `prefer` (the default: TLS when the server offers it,
//!   plaintext otherwise), `require` (TLS or no connection), `verify-ca` (TLS, and the server's
//!   certificate chains to a trusted root), `verify-full` (as `verify-ca`, and the certificate
//!   names the host of the URL). `allow` is refused (tokio-postgres cannot try plaintext first).
//! - Trusted roots: `sslrootcert=PATH` in the URL (PEM), else the `--database-ca` file
//!   (`ONNX_CLE_DATABASE_CA`), else the system's roots (`sslrootcert=system`, or unset: the same
//!   store the S3 client's verifier reads, honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`). Roots
//!   are loaded once, when the URL is parsed, and only for the modes that verify.
//! - As in libpq: `require` and `prefer` check nothing about the certificate unless a root file
//!   is given (then they verify the chain, like `verify-ca`); `sslrootcert=system` needs
//!   `verify-full` and implies it when `sslmode` is unset.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` only and rejects unknown parameters,
//! so [`parse`] takes `sslmode` and `sslrootcert` out of the URL (both the `postgres://` form
//! and the `key=value` form) and hands tokio-postgres `require` for the verifying modes; the
//! rustls verifier does the rest. Client certificates (`sslcert`, `sslkey`) are not supported.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it (no certificate check without a root file).
    Prefer,
    /// TLS or no connection (no certificate check without a root file).
    Require,
    /// TLS with a certificate that chains to a trusted root; any host name.
    VerifyCa,
    /// TLS with a certificate that chains to a trusted root and names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> io::Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(invalid(format!(
                    "sslmode={other} is not supported (disable, prefer, require, verify-ca, \
                     verify-full)"
                )))
            }
        })
    }

    fn wire(self) -> WireMode {
        match self {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    System,
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::File(p) => write!(f, "the CA in {}", p.display()),
            Roots::System => f.write_str("the system's root certificates"),
        }
    }
}

/// How connections to one database are secured: the connector to hand tokio-postgres and what
/// it checks, for messages.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    /// The roots certificates are verified against; `None`: no verification.
    roots: Option<Roots>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Why a connection failed at its TLS step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server answered the TLS request with "no" (its `ssl` setting is off).
    NotOffered,
    /// The server's certificate was rejected.
    Certificate(String),
    /// The handshake failed otherwise.
    Handshake(String),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotOffered => f.write_str("the server does not offer TLS"),
            TlsFailure::Certificate(why) => write!(f, "the server's certificate: {why}"),
            TlsFailure::Handshake(why) => write!(f, "TLS handshake: {why}"),
        }
    }
}

impl PgTls {
    /// The connector for tokio-postgres (it is used only when the mode asks for TLS).
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// The `sslmode` in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// `sslmode=… ` and what certificates are checked against, for logs.
    pub fn describe(&self) -> String {
        match (&self.roots, self.mode) {
            (_, SslMode::Disable) => "sslmode=disable".into(),
            (None, m) => format!("sslmode={m}, certificate not verified"),
            (Some(r), m) => format!("sslmode={m}, verified against {r}"),
        }
    }

    /// The message for a connection to `target` (`host:port/db`) that failed with `e`, when
    /// it failed at its TLS step.
    pub fn explain(&self, e: &tokio_postgres::Error, target: &str) -> Option<String> {
        Some(match tls_failure(e)? {
            TlsFailure::NotOffered => format!(
                "the database at {target} does not offer TLS, which sslmode={} requires (its \
                 `ssl` setting is off)",
                self.mode
            ),
            TlsFailure::Certificate(why) => {
                let roots = self
                    .roots
                    .as_ref()
                    .map_or_else(|| "no roots".to_string(), Roots::to_string);
                let hint = if why.contains("not valid for name") {
                    "; the URL's host must be a name the certificate lists (sslmode=verify-ca \
                     skips this check)"
                } else if why.contains("UnknownIssuer") {
                    "; give the CA that signed it with sslrootcert=PATH in the URL or \
                     --database-ca"
                } else {
                    ""
                };
                format!(
                    "the certificate of the database at {target} does not verify against \
                     {roots} (sslmode={}): {why}{hint}",
                    self.mode
                )
            }
            TlsFailure::Handshake(why) => {
                format!("TLS handshake with the database at {target} failed: {why}")
            }
        })
    }
}

/// Why `e` failed at its TLS step, if it did.
pub fn tls_failure(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        // io::Error's `source` skips its payload: look at the payload itself.
        let payload = s.downcast_ref::<io::Error>().and_then(io::Error::get_ref);
        let rustls_err = payload
            .and_then(|p| p.downcast_ref::<rustls::Error>())
            .or_else(|| s.downcast_ref::<rustls::Error>());
        if let Some(r) = rustls_err {
            return Some(match r {
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    TlsFailure::Certificate(r.to_string())
                }
                other => TlsFailure::Handshake(other.to_string()),
            });
        }
        if s.to_string().contains("server does not support TLS") {
            return Some(TlsFailure::NotOffered);
        }
        src = s.source();
    }
    None
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("--database-url: {}", msg.into()),
    )
}

/// The URL's settings that tokio-postgres does not take.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extracted {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

const UNSUPPORTED: &[&str] = &["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

impl Extracted {
    /// Takes `key = value` when it is one of ours; `false`: pass it on.
    fn take(&mut self, key: &str, value: &str) -> io::Result<bool> {
        match key {
            "sslmode" => self.sslmode = Some(value.to_string()),
            "sslrootcert" => self.sslrootcert = Some(value.to_string()),
            k if UNSUPPORTED.contains(&k) => {
                return Err(invalid(format!(
                    "{k}: client certificates are not supported (password or SCRAM \
                     authentication over TLS is)"
                )))
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `url` without `sslmode` and `sslrootcert`, and their values. Mirrors tokio-postgres's
/// reading: in a URL the credentials end at the first `@` and the parameters start at the
/// first `?` after it.
fn extract(url: &str) -> io::Result<(String, Extracted)> {
    let mut out = Extracted::default();
    let is_url = ["postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p));
    if !is_url {
        return extract_key_values(url, out);
    }
    let after_creds = url.find('@').map_or(0, |i| i + 1);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return Ok((url.to_string(), out));
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if !out.take(&key, &decode(v)?)? {
            kept.push(pair);
        }
    }
    let mut rest = url[..q].to_string();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, out))
}

fn decode(s: &str) -> io::Result<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| invalid("a URL parameter is not UTF-8 once decoded"))
}

/// [`extract`] for the `key=value key='quoted value'` form, which is written back with every
/// value quoted.
fn extract_key_values(s: &str, mut out: Extracted) -> io::Result<(String, Extracted)> {
    let mut kept = String::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err(invalid("a parameter without a name"));
            }
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!("`{key}` has no `=`")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        let mut closed = !quoted;
        while let Some(c) = chars.next() {
            match c {
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => break,
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
        if !closed {
            return Err(invalid(format!("`{key}`: unterminated quoted value")));
        }
        if !out.take(&key, &value)? {
            let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push_str(&format!("{key}='{escaped}' "));
        }
    }
    Ok((kept.trim_end().to_string(), out))
}

/// Parses `url` (a libpq-style URL or `key=value` string) into tokio-postgres's settings and
/// the TLS it asks for; `ca` is the `--database-ca` file, used when the URL has no
/// `sslrootcert`. Loads the roots the mode verifies against; fails when they cannot be read.
pub fn parse(url: &str, ca: Option<&Path>) -> io::Result<(tokio_postgres::Config, PgTls)> {
    let (rest, ex) = extract(url)?;
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| invalid(format!("{e}")))?;
    let system = ex.sslrootcert.as_deref() == Some("system");
    let mode = match ex.sslmode.as_deref() {
        Some(m) => SslMode::parse(m)?,
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system && mode != SslMode::VerifyFull {
        return Err(invalid(format!(
            "sslrootcert=system needs sslmode=verify-full (not {mode})"
        )));
    }
    let given = match ex.sslrootcert {
        Some(s) if s == "system" => Some(Roots::System),
        Some(p) => Some(Roots::File(PathBuf::from(p))),
        None => ca.map(|p| Roots::File(p.to_path_buf())),
    };
    let roots = match mode {
        SslMode::Disable => None,
        SslMode::VerifyCa | SslMode::VerifyFull => Some(given.unwrap_or(Roots::System)),
        SslMode::Prefer | SslMode::Require => given,
    };
    config.ssl_mode(mode.wire());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &roots {
        None => Arc::new(NoVerification(Arc::clone(&provider))),
        Some(r) => {
            let store = Arc::new(load_roots(r)?);
            let full = WebPkiServerVerifier::builder_with_provider(store, Arc::clone(&provider))
                .build()
                .map_err(|e| invalid(format!("{r}: {e}")))?;
            if mode == SslMode::VerifyFull {
                full
            } else {
                Arc::new(ChainOnly(full))
            }
        }
    };
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((
        config,
        PgTls {
            mode,
            roots,
            connector: MakeRustlsConnect::new(tls),
        },
    ))
}

fn load_roots(roots: &Roots) -> io::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(format!("sslrootcert {}: {e}", path.display())))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(invalid(format!(
                    "sslrootcert {}: no usable PEM certificate",
                    path.display()
                )));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(" ({e})"));
                return Err(invalid(format!(
                    "no system root certificates{why}: install ca-certificates, or give the \
                     database's CA with sslrootcert=PATH or --database-ca"
                )));
            }
        }
    }
    Ok(store)
}

/// `verify-ca`: the chain must verify; the host name is not checked. The WebPKI verifier
/// checks the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` / `prefer` without roots: encrypted, the certificate not checked (libpq does the
/// same); the handshake signature still has to match the presented certificate.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(url: &str) -> (String, Extracted) {
        extract(url).unwrap()
    }

    #[test]
    fn url_parameters_are_taken_out() {
        let (rest, e) = ex("postgres://u:p%3F@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca%20dir%2Fca.pem");
        assert_eq!(rest, "postgres://u:p%3F@h:5432/db?application_name=x");
        assert_eq!(e.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(e.sslrootcert.as_deref(), Some("/ca dir/ca.pem"));
        let (rest, e) = ex("postgresql://u:a?b@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u:a?b@h/db");
        assert_eq!(e.sslmode.as_deref(), Some("require"));
        let (rest, e) = ex("postgres://h/db");
        assert_eq!(
            (rest.as_str(), e),
            ("postgres://h/db", Extracted::default())
        );
    }

    #[test]
    fn key_value_parameters_are_taken_out() {
        let (rest, e) =
            ex("host=h  password='a b' sslmode = verify-ca dbname=d sslrootcert='/a b/c'");
        assert_eq!(e.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(e.sslrootcert.as_deref(), Some("/a b/c"));
        assert_eq!(rest, "host='h' password='a b' dbname='d'");
        let (rest, _) = ex(r"host=h password='a\'b\\c'");
        assert_eq!(rest, r"host='h' password='a\'b\\c'");
        let c: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&br"a'b\c"[..]));
        assert!(extract("host='h").is_err());
        assert!(extract("host").is_err());
    }

    #[test]
    fn modes_map_to_tokio_postgres_and_roots() {
        let (c, t) = parse("postgres://h/db", None).unwrap();
        assert_eq!(
            (c.get_ssl_mode(), t.mode(), t.roots.clone()),
            (WireMode::Prefer, SslMode::Prefer, None)
        );
        let (c, t) = parse("postgres://h/db?sslmode=disable", None).unwrap();
        assert_eq!(
            (c.get_ssl_mode(), t.roots.clone()),
            (WireMode::Disable, None)
        );
        let (c, t) = parse("postgres://h/db?sslmode=require", None).unwrap();
        assert_eq!(
            (c.get_ssl_mode(), t.roots.clone()),
            (WireMode::Require, None)
        );
        let err = parse("postgres://h/db?sslmode=allow", None).unwrap_err();
        assert!(err.to_string().contains("sslmode=allow"), "{err}");
        let err = parse("postgres://h/db?sslrootcert=system&sslmode=require", None).unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err = parse("postgres://h/db?sslcert=/c.pem", None).unwrap_err();
        assert!(err.to_string().contains("client certificates"), "{err}");
        let err = parse(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = parse(
            "postgres://h/db?sslmode=verify-ca",
            Some(Path::new("/nonexistent/x")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
        // `require` and `prefer` verify the chain when a root file is given (libpq's rule).
        let err = parse(
            "postgres://h/db?sslmode=require",
            Some(Path::new("/nonexistent/x")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    }
}
