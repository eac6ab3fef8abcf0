//! The Noise handshake that authenticates warren's byte-stream transports (TCP, uTP) and the
//! framing of what follows it. `Noise_XX_25519_AESGCM_SHA256` (snow, with ring's AES-GCM):
//!
//! ```text
//! dialler  -> e                      [payload: ContactsOnly proof, or empty]
//! acceptor <- e, ee, s, es           [payload: acceptor's Ed25519 key, its signature of s]
//! dialler  -> s, se                  [payload: dialler's Ed25519 key, its signature of s]
//! ```
//!
//! Why XX and not IK: IK needs the acceptor's static key before the first message, which a
//! dial by address alone does not have, and it sends the dialler's identity in its first
//! message, encrypted to a key the dialler cannot yet know is the one it wants. With XX the
//! acceptor proves its identity in message 2, the dialler checks it against the one it dialled
//! and only then sends its own (message 3) or aborts with `WrongIdentity`; an impostor learns
//! nothing about the dialler. The cost is one and a half round trips, and the dialler's
//! first application bytes go out right behind message 3, in the same flight: from the SYN,
//! TCP takes one round trip and Noise one more before the dialler may send.
//!
//! Each node's Noise static key is an X25519 key made when the transport starts; the handshake
//! binds it to the node's Ed25519 identity with a signature over
//! `"warren noise static key v1" || static key`, in the encrypted payload. Every message, in
//! the handshake and after, is a big-endian `u16` length and at most 65,535 bytes: the size
//! limit of every read.

use std::io;

use snow::params::NoiseParams;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::error::{ConnectionError, TransportError};
use crate::{Identity, RemoteIdentity};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Largest Noise message (the length prefix's limit, and Noise's own).
pub const MAX_MESSAGE: usize = 65_535;

/// An AEAD tag's length.
pub const TAG_LEN: usize = 16;

/// Bound into every handshake: a peer speaking another protocol (or another version) fails it.
const PROLOGUE: &[u8] = b"warren noise 1";

/// What the Ed25519 signature of the static key covers, before the key.
const BINDING_CONTEXT: &[u8] = b"warren noise static key v1";

/// Largest proof a first message carries (a ContactsOnly server name is about 100 bytes).
const MAX_PROOF: usize = 255;

/// The binding payload: Ed25519 public key and signature.
const BINDING_LEN: usize = 32 + 64;

fn params() -> NoiseParams {
    PATTERN.parse().expect("a valid Noise protocol name")
}

/// A node's Noise static key and the signature binding it to the node's identity.
pub struct NoiseKeys {
    private: Zeroizing<Vec<u8>>,
    binding: [u8; BINDING_LEN],
}

impl std::fmt::Debug for NoiseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKeys").finish_non_exhaustive()
    }
}

impl NoiseKeys {
    /// A fresh static key for `identity`, signed by it.
    pub fn new(identity: &Identity) -> Self {
        let keypair = snow::Builder::new(params()).generate_keypair().expect("the resolver makes X25519 keys");
        let mut binding = [0; BINDING_LEN];
        binding[..32].copy_from_slice(identity.to_remote_identity().as_bytes());
        binding[32..].copy_from_slice(&identity.sign(&[BINDING_CONTEXT, &keypair.public].concat()));
        Self { private: Zeroizing::new(keypair.private), binding }
    }

    fn builder(&self) -> snow::Builder<'_> {
        snow::Builder::new(params())
            .local_private_key(&self.private)
            .and_then(|b| b.prologue(PROLOGUE))
            .expect("a 32-byte X25519 key and a prologue")
    }
}

/// The transport keys after a handshake, and whom they talk to. Each direction counts its own
/// nonces, so the reading and the writing task need not share a lock.
pub struct Secured {
    state: snow::StatelessTransportState,
    /// The peer's verified identity.
    pub peer: RemoteIdentity,
}

impl std::fmt::Debug for Secured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secured").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl Secured {
    /// Encrypts `plaintext` (at most [`MAX_MESSAGE`] − [`TAG_LEN`] bytes) as message `nonce`
    /// into `out`, length prefix first.
    pub fn seal(&self, nonce: u64, plaintext: &[u8], out: &mut Vec<u8>) {
        let len = plaintext.len() + TAG_LEN;
        out.clear();
        out.resize(2 + len, 0);
        out[..2].copy_from_slice(&(len as u16).to_be_bytes());
        self.state.write_message(nonce, plaintext, &mut out[2..]).expect("a message within Noise's limit");
    }

    /// Decrypts message `nonce` (without its length prefix) into `out`.
    pub fn open(&self, nonce: u64, message: &[u8], out: &mut Vec<u8>) -> Result<(), ConnectionError> {
        out.resize(message.len(), 0);
        let len = self
            .state
            .read_message(nonce, message, out)
            .map_err(|_| ConnectionError::Transport("a Noise message failed to decrypt".into()))?;
        out.truncate(len);
        Ok(())
    }
}

/// Why a handshake failed.
fn failed(what: impl std::fmt::Display) -> TransportError {
    TransportError::Connection(ConnectionError::Transport(format!("Noise handshake: {what}")))
}

/// Reads one length-prefixed message into `buf` (at most [`MAX_MESSAGE`] bytes, the prefix's
/// own limit).
pub async fn read_message<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = io.read_u16().await? as usize;
    buf.resize(len, 0);
    io.read_exact(buf).await?;
    Ok(())
}

async fn write_message<W: AsyncWrite + Unpin>(io: &mut W, message: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    io.write_all(&framed).await?;
    io.flush().await
}

/// The peer's identity from its binding payload, checked against the static key the handshake
/// authenticated.
fn verify_binding(payload: &[u8], remote_static: Option<&[u8]>) -> Result<RemoteIdentity, TransportError> {
    let payload: &[u8; BINDING_LEN] = payload.try_into().map_err(|_| failed("malformed identity payload"))?;
    let remote_static = remote_static.ok_or_else(|| failed("no static key"))?;
    let identity = RemoteIdentity::from_bytes(payload[..32].try_into().expect("32 bytes"))
        .map_err(|_| failed("not an identity"))?;
    let signature: &[u8; 64] = payload[32..].try_into().expect("64 bytes");
    if !identity.verify(&[BINDING_CONTEXT, remote_static].concat(), signature) {
        return Err(failed("the static key is not signed by the identity"));
    }
    Ok(identity)
}

/// The dialler's side. `proof` is the ContactsOnly proof the first message carries (see
/// [`super::gate`]); with `expected`, the acceptor must be that identity, checked before this
/// side's identity goes out.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    keys: &NoiseKeys,
    expected: Option<RemoteIdentity>,
    proof: Option<&str>,
) -> Result<Secured, TransportError> {
    let mut hs = keys.builder().build_initiator().map_err(failed)?;
    let (mut message, mut received, mut payload) = (vec![0; MAX_MESSAGE], Vec::new(), vec![0; MAX_MESSAGE]);
    let len = hs.write_message(proof.unwrap_or_default().as_bytes(), &mut message).map_err(failed)?;
    write_message(io, &message[..len]).await.map_err(failed)?;
    read_message(io, &mut received).await.map_err(failed)?;
    let len = hs.read_message(&received, &mut payload).map_err(failed)?;
    let peer = verify_binding(&payload[..len], hs.get_remote_static())?;
    if let Some(expected) = expected
        && peer != expected
    {
        // Message 3, with this side's identity, never goes out.
        return Err(TransportError::WrongIdentity { expected, got: peer });
    }
    let len = hs.write_message(&keys.binding, &mut message).map_err(failed)?;
    write_message(io, &message[..len]).await.map_err(failed)?;
    let state = hs.into_stateless_transport_mode().map_err(failed)?;
    Ok(Secured { state, peer })
}

/// The acceptor's side. `admit` sees the dialler's proof (empty if none) and says whether to
/// answer at all: refused, the acceptor sends nothing and the caller drops the connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    keys: &NoiseKeys,
    admit: impl FnOnce(&str) -> Result<(), String>,
) -> Result<Secured, TransportError> {
    let mut hs = keys.builder().build_responder().map_err(failed)?;
    let (mut message, mut received, mut payload) = (vec![0; MAX_MESSAGE], Vec::new(), vec![0; MAX_MESSAGE]);
    read_message(io, &mut received).await.map_err(failed)?;
    let len = hs.read_message(&received, &mut payload).map_err(failed)?;
    if len > MAX_PROOF {
        return Err(failed("first message too long"));
    }
    let proof = std::str::from_utf8(&payload[..len]).map_err(|_| failed("the proof is not text"))?;
    admit(proof).map_err(|why| failed(format!("refused: {why}")))?;
    let len = hs.write_message(&keys.binding, &mut message).map_err(failed)?;
    write_message(io, &message[..len]).await.map_err(failed)?;
    read_message(io, &mut received).await.map_err(failed)?;
    let len = hs.read_message(&received, &mut payload).map_err(failed)?;
    let peer = verify_binding(&payload[..len], hs.get_remote_static())?;
    let state = hs.into_stateless_transport_mode().map_err(failed)?;
    Ok(Secured { state, peer })
}

/// Feeds `data` to an acceptor as its peer's handshake messages (for the fuzz target):
/// never panics, whatever the bytes.
pub fn fuzz_handshake(data: &[u8]) {
    static KEYS: std::sync::OnceLock<NoiseKeys> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| NoiseKeys::new(&Identity::from_secret_bytes(&[7; 32])));
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let (mut ours, mut theirs) = tokio::io::duplex(256 * 1024);
        theirs.write_all(data).await.expect("the pipe takes the input");
        drop(theirs);
        let _ = accept(&mut ours, keys, |_| Ok(())).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        expected: Option<RemoteIdentity>,
        acceptor: &Identity,
    ) -> (Result<Secured, TransportError>, Result<Secured, TransportError>, Vec<u8>) {
        let dialler = Identity::from_secret_bytes(&[1; 32]);
        let (dk, ak) = (NoiseKeys::new(&dialler), NoiseKeys::new(acceptor));
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let proof = std::sync::Mutex::new(Vec::new());
        let (d, acc) = tokio::join!(
            async {
                let result = dial(&mut a, &dk, expected, Some("proof")).await;
                drop(a);
                result
            },
            async {
                let result = accept(&mut b, &ak, |p| {
                    proof.lock().unwrap().extend_from_slice(p.as_bytes());
                    Ok(())
                })
                .await;
                drop(b);
                result
            }
        );
        (d, acc, proof.into_inner().unwrap())
    }

    #[tokio::test]
    async fn both_sides_learn_the_verified_identity_and_talk() {
        let acceptor = Identity::from_secret_bytes(&[2; 32]);
        let (d, a, proof) = pair(Some(acceptor.to_remote_identity()), &acceptor).await;
        let (d, a) = (d.unwrap(), a.unwrap());
        assert_eq!(d.peer, acceptor.to_remote_identity());
        assert_eq!(a.peer, Identity::from_secret_bytes(&[1; 32]).to_remote_identity());
        assert_eq!(proof, b"proof");
        let mut sealed = Vec::new();
        d.seal(0, b"first bytes", &mut sealed);
        let mut opened = Vec::new();
        a.open(0, &sealed[2..], &mut opened).unwrap();
        assert_eq!(opened, b"first bytes");
        // A replayed or reordered message (wrong nonce) and a flipped bit fail.
        assert!(a.open(1, &sealed[2..], &mut opened).is_err());
        sealed[5] ^= 1;
        assert!(a.open(0, &sealed[2..], &mut opened).is_err());
    }

    #[tokio::test]
    async fn a_wrong_acceptor_is_refused_before_the_dialler_says_who_it_is() {
        let impostor = Identity::from_secret_bytes(&[3; 32]);
        let wanted = Identity::from_secret_bytes(&[2; 32]).to_remote_identity();
        let (d, a, _) = pair(Some(wanted), &impostor).await;
        match d {
            Err(TransportError::WrongIdentity { expected, got }) => {
                assert_eq!(expected, wanted);
                assert_eq!(got, impostor.to_remote_identity());
            }
            other => panic!("expected WrongIdentity, got {other:?}"),
        }
        // The impostor never got message 3: it learnt nothing of the dialler.
        assert!(a.is_err(), "the impostor completed a handshake");
    }

    #[tokio::test]
    async fn a_stolen_binding_on_another_static_key_fails() {
        // Mallory replays alice's binding with her own static key: the signature does not cover it.
        let alice = NoiseKeys::new(&Identity::from_secret_bytes(&[4; 32]));
        let mut mallory = NoiseKeys::new(&Identity::from_secret_bytes(&[5; 32]));
        mallory.binding = alice.binding;
        let dk = NoiseKeys::new(&Identity::from_secret_bytes(&[1; 32]));
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let dialling = async {
            let result = dial(&mut a, &dk, None, None).await;
            drop(a);
            result
        };
        let accepting = async {
            let result = accept(&mut b, &mallory, |_| Ok(())).await;
            drop(b);
            result
        };
        let (d, _) = tokio::join!(dialling, accepting);
        assert!(matches!(d, Err(TransportError::Connection(_))), "{d:?}");
    }

    #[test]
    fn hostile_handshake_bytes_are_errors() {
        for data in [&b""[..], &[0, 0], &[0xff, 0xff, 1, 2, 3], &[0, 32], &[0; 100]] {
            fuzz_handshake(data);
        }
    }
}
