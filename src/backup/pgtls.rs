//! TLS for PostgreSQL connections (rustls), with libpq's `sslmode` semantics:
//!
//! | sslmode | server certificate |
//! |---|---|
//! | `allow`, `prefer` | not checked (libpq does the same) |
//! | `require` | not checked, unless a root certificate is given (then as `verify-ca`, as libpq) |
//! | `verify-ca` | must chain to `sslrootcert` |
//! | `verify-full` | must chain to `sslrootcert` and name the host |
//!
//! `sslcert` and `sslkey` present a client certificate; the key must be private (as libpq
//! requires).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::pg::{TlsMode, TlsSettings};
use crate::error::{Error, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: String) -> impl FnOnce(rustls::Error) -> Error {
    move |e| Error::Config(format!("PostgreSQL TLS: {what}: {e}"))
}

fn roots(path: &Path) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if path.as_os_str() == "system" {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = store.add(c);
        }
        if store.is_empty() {
            return Err(Error::Config(
                "PostgreSQL TLS: sslrootcert=system, but the system has no root certificates"
                    .into(),
            ));
        }
        return Ok(store);
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Config(format!(
                "PostgreSQL TLS: root certificate file {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "PostgreSQL TLS: root certificate file {} holds no certificate",
            path.display()
        )));
    }
    for c in certs {
        store
            .add(c)
            .map_err(tls_err(format!("root certificate file {}", path.display())))?;
    }
    Ok(store)
}

/// The rustls configuration `settings` call for.
pub fn client_config(settings: &TlsSettings) -> Result<ClientConfig> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.rootcert) {
        (TlsMode::VerifyFull, Some(root)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
                .build()
                .map_err(|e| Error::Config(format!("PostgreSQL TLS: {e}")))?
        }
        (TlsMode::VerifyCa | TlsMode::Require, Some(root)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
                .build()
                .map_err(|e| Error::Config(format!("PostgreSQL TLS: {e}")))?,
        )),
        (TlsMode::VerifyCa | TlsMode::VerifyFull, None) => {
            return Err(Error::Config(
                "sslmode verify-ca and verify-full need sslrootcert".into(),
            ))
        }
        _ => Arc::new(Unchecked(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err("protocol versions".into()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            crate::security::check_private_key(key, "sslkey")?;
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::Config(format!("PostgreSQL TLS: sslcert {}: {e}", cert.display()))
                })?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                Error::Config(format!("PostgreSQL TLS: sslkey {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(tls_err(format!("client certificate {}", cert.display())))
        }
        (Some(cert), None) => Err(Error::Config(format!(
            "PostgreSQL TLS: sslcert {} needs its key (sslkey or PGSSLKEY)",
            cert.display()
        ))),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// verify-ca: the chain must lead to the root; the name is not checked.
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
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer / require without a root certificate: encryption without authentication of the
/// server, as libpq does. The handshake signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
