//! TLS 1.3 with raw public keys (RFC 7250) bound to warren identities.
//!
//! Each side presents its Ed25519 [`Identity`] as a raw public key (an X.509
//! SubjectPublicKeyInfo, no certificate) and proves possession by signing the handshake. Both
//! sides verify that the key is a well-formed Ed25519 key whose handshake signature is valid. A
//! dialler that knows whom it dials also checks, inside the handshake, that the server's key is
//! that identity, and aborts before its own certificate goes out: a stale, cached or forged
//! address learns nothing of who dialled (TLS 1.3 sends the client's certificate only after
//! the server's has been verified). The key the server presented is kept in a [`Presented`]
//! slot, so that the dialler still reports `WrongIdentity { expected, got }`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureAlgorithm, SignatureScheme};

use crate::identity::{Identity, RemoteIdentity};

/// ALPN of warren connections. The wire version is negotiated in the hello, not here, so that
/// a version mismatch gives a clear error on both sides instead of a TLS alert.
pub const ALPN: &[u8] = b"warren";

/// Server name sent in the ClientHello. It is the same for every node on purpose: the identity
/// being dialled is checked after the handshake and is not revealed to on-path observers.
pub const SERVER_NAME: &str = super::gate::SERVER_NAME;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, no unused bits) }. The 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Encodes an identity as the SubjectPublicKeyInfo sent as a raw public key.
pub fn identity_to_spki(remote: &RemoteIdentity) -> Vec<u8> {
    let mut spki = Vec::with_capacity(44);
    spki.extend_from_slice(&ED25519_SPKI_PREFIX);
    spki.extend_from_slice(remote.as_bytes());
    spki
}

/// Parses the raw public key a peer presented. Anything but an Ed25519 SPKI is refused.
pub fn identity_from_spki(spki: &[u8]) -> Option<RemoteIdentity> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    RemoteIdentity::from_bytes(key.try_into().ok()?).ok()
}

/// The identity the peer of a QUIC connection proved in the handshake.
pub fn peer_identity(conn: &quinn::Connection) -> Option<RemoteIdentity> {
    let keys = conn.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    match keys.as_slice() {
        [key] => identity_from_spki(key),
        _ => None,
    }
}

/// The identity the peer of a TLS connection over TCP proved in the handshake.
pub fn peer_identity_tls(conn: &rustls::CommonState) -> Option<RemoteIdentity> {
    match conn.peer_certificates()? {
        [key] => identity_from_spki(key),
        _ => None,
    }
}

/// The crypto provider warren uses: ring, TLS 1.3 cipher suites only.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|suite| suite.tls13().is_some());
    Arc::new(provider)
}

/// Builds the rustls configuration for accepting connections as `identity`.
pub fn server_config(identity: &Arc<Identity>) -> rustls::ServerConfig {
    server_config_with(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(identity))))
}

/// Builds a node's rustls configuration for accepting connections as `identity`: the
/// server's key goes out only to ClientHellos that `gate` admits (see [`super::gate`]).
pub fn server_config_gated(identity: &Arc<Identity>, gate: Arc<super::gate::ContactGate>) -> rustls::ServerConfig {
    server_config_with(Arc::new(GatedResolver { key: certified_key(identity), gate }))
}

fn server_config_with(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(IdentityVerifier::default()))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// Presents the node's key to ClientHellos its contact gate admits; to others nothing, which
/// fails the handshake before anything about the node has gone out.
#[derive(Debug)]
struct GatedResolver {
    key: Arc<CertifiedKey>,
    gate: Arc<super::gate::ContactGate>,
}

impl rustls::server::ResolvesServerCert for GatedResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.gate.admit(hello.server_name(), super::gate::unix_now()) {
            Ok(_) => Some(self.key.clone()),
            Err(why) => {
                tracing::debug!(?why, "handshake refused: contacts only");
                None
            }
        }
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }
}

/// Builds the rustls configuration for dialling as `identity`, any server identity accepted
/// (the caller compares it afterwards).
pub fn client_config(identity: &Arc<Identity>) -> rustls::ClientConfig {
    client_config_with(identity, Arc::new(IdentityVerifier::default()))
}

/// The server key a dial saw, filled in by the verifier of [`client_config_expecting`].
pub type Presented = Arc<std::sync::OnceLock<RemoteIdentity>>;

/// Builds the rustls configuration for dialling `expected` as `identity`: the handshake fails
/// inside TLS, before this side's certificate is sent, when the server's key is another one.
/// The key it presented is then in the returned slot.
pub fn client_config_expecting(
    identity: &Arc<Identity>,
    expected: RemoteIdentity,
) -> (rustls::ClientConfig, Presented) {
    let presented = Presented::default();
    let verifier = IdentityVerifier { expect: Some((expected, presented.clone())) };
    (client_config_with(identity, Arc::new(verifier)), presented)
}

fn client_config_with(identity: &Arc<Identity>, verifier: Arc<dyn ServerCertVerifier>) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(
            identity,
        ))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

fn certified_key(identity: &Arc<Identity>) -> Arc<CertifiedKey> {
    let spki = identity_to_spki(&identity.to_remote_identity());
    let key = Arc::new(IdentitySigningKey(identity.clone()));
    Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki)], key))
}

/// Signs TLS handshakes with a warren identity.
#[derive(Debug)]
struct IdentitySigningKey(Arc<Identity>);

impl SigningKey for IdentitySigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&SignatureScheme::ED25519).then(|| Box::new(IdentitySigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(identity_to_spki(&self.0.to_remote_identity())))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct IdentitySigner(Arc<Identity>);

impl Signer for IdentitySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Verifies the peer's raw public key is an Ed25519 identity and that it signed the handshake;
/// as a dialler's verifier with `expect`, also that the server's key is the identity expected
/// (the key presented goes into the slot either way).
#[derive(Debug, Default)]
struct IdentityVerifier {
    expect: Option<(RemoteIdentity, Presented)>,
}

impl IdentityVerifier {
    fn check_key(end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        identity_from_spki(end_entity)
            .map(|_| ())
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
    }

    fn check_signature(
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let remote =
            identity_from_spki(key).ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let signature: &[u8; 64] = dss
            .signature()
            .try_into()
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))?;
        if remote.verify(message, signature) {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
        }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding));
        }
        Self::check_key(end_entity)?;
        if let Some((expected, presented)) = &self.expect {
            let got = identity_from_spki(end_entity).expect("checked just above");
            let _ = presented.set(got);
            if got != *expected {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for IdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding));
        }
        Self::check_key(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_refuses_other_keys() {
        let id = Identity::generate().to_remote_identity();
        let spki = identity_to_spki(&id);
        assert_eq!(spki.len(), 44);
        assert_eq!(identity_from_spki(&spki), Some(id));
        assert_eq!(identity_from_spki(&spki[..43]), None);
        let mut other_oid = spki.clone();
        other_oid[8] = 0x71; // Ed448
        assert_eq!(identity_from_spki(&other_oid), None);
        let mut longer = spki;
        longer.push(0);
        assert_eq!(identity_from_spki(&longer), None);
    }

    /// Runs a TLS handshake in memory until neither side has anything to send or one fails.
    fn handshake(
        client: &mut rustls::ClientConnection,
        server: &mut rustls::ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..16 {
            let mut moved = false;
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).expect("writes to a Vec");
            }
            if !bytes.is_empty() {
                moved = true;
                server.read_tls(&mut &bytes[..]).expect("reads from a slice");
                server.process_new_packets()?;
            }
            bytes.clear();
            while server.wants_write() {
                server.write_tls(&mut bytes).expect("writes to a Vec");
            }
            if !bytes.is_empty() {
                moved = true;
                client.read_tls(&mut &bytes[..]).expect("reads from a slice");
                client.process_new_packets()?;
            }
            if !moved {
                return Ok(());
            }
        }
        panic!("the handshake did not settle in 16 flights");
    }

    fn pair(
        dialler: &Arc<Identity>,
        expected: RemoteIdentity,
        server: &Arc<Identity>,
    ) -> (rustls::ClientConnection, rustls::ServerConnection, Presented) {
        let (config, presented) = client_config_expecting(dialler, expected);
        let name = ServerName::try_from(SERVER_NAME).expect("a valid name");
        let client = rustls::ClientConnection::new(Arc::new(config), name).expect("client starts");
        let server = rustls::ServerConnection::new(Arc::new(server_config(server))).expect("server starts");
        (client, server, presented)
    }

    /// Issue 14, point 2: the dialler's identity went to whoever answered, since the client
    /// accepted any server key and compared it after the handshake (then the server already
    /// held the client's certificate and its signature).
    #[test]
    fn a_dialler_reveals_nothing_to_a_server_with_another_key() {
        let (dialler, wanted, impostor) =
            (Arc::new(Identity::generate()), Identity::generate(), Arc::new(Identity::generate()));
        let (mut client, mut server, presented) = pair(&dialler, wanted.to_remote_identity(), &impostor);
        let error = handshake(&mut client, &mut server).expect_err("the dialler aborts");
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
            ),
            "{error:?}"
        );
        assert_eq!(presented.get(), Some(&impostor.to_remote_identity()), "the key presented is kept for the error");
        assert!(server.peer_certificates().is_none(), "the impostor got no certificate from the dialler");

        // The server it meant to reach: the handshake completes and each side has the other's key.
        let wanted = Arc::new(wanted);
        let (mut client, mut server, presented) = pair(&dialler, wanted.to_remote_identity(), &wanted);
        handshake(&mut client, &mut server).expect("the right server is accepted");
        assert_eq!(presented.get(), Some(&wanted.to_remote_identity()));
        assert_eq!(peer_identity_tls(&server), Some(dialler.to_remote_identity()));
        assert_eq!(peer_identity_tls(&client), Some(wanted.to_remote_identity()));
    }
}
