//! Who a node is: an Ed25519 key pair, and the public half that names a peer.
//!
//! [`Identity`] is the secret key (kept on disk with 0600 permissions, zeroized on drop),
//! [`RemoteIdentity`] is the public key that names a node everywhere (addresses, events, the
//! CLI), and [`PeerId`] is a fixed-size hash of it for places that want a uniform key space.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use data_encoding::{Encoding, Specification};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// File name of the secret key inside a node's data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Length of the textual form of a [`RemoteIdentity`]: 32 bytes in unpadded base32.
pub const REMOTE_IDENTITY_TEXT_LEN: usize = 52;

/// Lowercase, unpadded RFC 4648 base32: the textual form of identities. Lowercase and at most
/// 63 characters so that an identity is a valid DNS label (mDNS instance names use it).
pub(crate) fn base32() -> &'static Encoding {
    static ENCODING: std::sync::OnceLock<Encoding> = std::sync::OnceLock::new();
    ENCODING.get_or_init(|| {
        let mut spec = Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        spec.encoding().expect("a 32-symbol alphabet is a valid base32 specification")
    })
}

/// This node's secret identity: an Ed25519 signing key.
///
/// The secret bytes are zeroized when the value is dropped. `Debug` never prints them.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// Generates a fresh identity from the operating system's random source.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut()).expect("the operating system's random source failed");
        Self::from_secret_bytes(&secret)
    }

    /// Rebuilds an identity from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(secret) }
    }

    /// The 32 secret bytes. Handle with care: whoever has them is this node.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public half, which names this node to others.
    pub fn to_remote_identity(&self) -> RemoteIdentity {
        RemoteIdentity(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` with this identity.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The secret this node shares with a contact, for ContactsOnly discovery's tags and the
    /// handshake's contact proof ([`Identity::agree`] under one purpose).
    pub fn contact_secret(&self, contact: &RemoteIdentity) -> Zeroizing<[u8; 32]> {
        self.agree(contact, "warren 2026 contacts-only pair secret")
    }

    /// A secret only this node and `peer` can compute: X25519 of the two identities (each
    /// Ed25519 key taken to its Montgomery form, RFC 7748), hashed with both public keys in a
    /// fixed order under a context of `purpose`. What a stranger who knows both public keys
    /// cannot compute; ContactsOnly discovery keys its tags and proofs with it.
    pub fn agree(&self, peer: &RemoteIdentity, purpose: &str) -> Zeroizing<[u8; 32]> {
        let theirs =
            VerifyingKey::from_bytes(peer.as_bytes()).expect("a RemoteIdentity is a valid key").to_montgomery();
        let shared = Zeroizing::new(theirs.mul_clamped(self.key.to_scalar_bytes()).to_bytes());
        let me = self.to_remote_identity();
        let (low, high) = if me.as_bytes() <= peer.as_bytes() { (me, *peer) } else { (*peer, me) };
        let mut hasher = blake3::Hasher::new_derive_key(purpose);
        hasher.update(&shared[..]).update(low.as_bytes()).update(high.as_bytes());
        Zeroizing::new(*hasher.finalize().as_bytes())
    }

    /// A secret derived from this identity's key alone, for `purpose` (BLAKE3's key
    /// derivation): the same after a restart, unknown to anyone without the key. QUIC's
    /// stateless-reset key is one, so that a node restarted with its identity can reset the
    /// connections its earlier run left open at its peers (RFC 9000, section 10.3).
    pub fn derive_secret(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(purpose, &self.to_secret_bytes()[..]))
    }

    /// Loads the identity stored in `data_dir`, or creates and stores a new one if there is
    /// none.
    ///
    /// A file that exists but is unreadable, of the wrong size, or readable by other users is an
    /// error: this never silently replaces an identity that others may already know.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        match Self::load(&path) {
            Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let identity = Self::generate();
                identity.store(&path)?;
                Ok(identity)
            }
            other => other,
        }
    }

    /// Loads an identity from a key file written by [`Identity::store`].
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(io_err)?;
        check_permissions(path, &metadata)?;
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io_err)?);
        let secret: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: format!("expected 32 bytes, found {}", bytes.len()),
        })?;
        Ok(Self::from_secret_bytes(secret))
    }

    /// Writes the secret key to `path` with 0600 permissions, creating parent directories
    /// (0700). Fails if the file already exists, so a stored identity is never overwritten.
    pub fn store(&self, path: &Path) -> Result<(), IdentityError> {
        let io_err = |source| IdentityError::Io { path: path.to_owned(), source };
        if let Some(parent) = path.parent() {
            create_private_dir(parent).map_err(io_err)?;
        }
        // Write to a temporary file first, then link it into place: a crash never leaves a
        // half-written key file behind, and an existing file is never replaced.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let result = (|| {
            let mut file = private_file_options().open(&tmp)?;
            file.write_all(self.to_secret_bytes().as_ref())?;
            file.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map_err(io_err)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Identity").field(&self.to_remote_identity()).finish()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self::from_secret_bytes(&self.to_secret_bytes())
    }
}

#[cfg(unix)]
fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn check_permissions(path: &Path, metadata: &std::fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecurePermissions { path: path.to_owned(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path, _: &std::fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

/// Why an identity could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("identity key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The key file exists but does not hold a key.
    #[error("identity key file {path} is corrupt ({reason}); move it away to create a new identity")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file can be read by other users, so the secret may have leaked.
    #[error(
        "identity key file {path} has permissions {mode:o}; it must be readable by its owner only (chmod 600 {path})"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The public identity of a node: an Ed25519 public key.
///
/// Displayed and parsed as 52 characters of lowercase, unpadded base32, which fits in a DNS
/// label. Parsing checks that the bytes are a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteIdentity([u8; 32]);

impl RemoteIdentity {
    /// Builds an identity from the 32 bytes of an Ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, ParseIdentityError> {
        VerifyingKey::from_bytes(bytes).map(|_| Self(*bytes)).map_err(|_| ParseIdentityError::NotAKey)
    }

    /// The 32 bytes of the public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The [`PeerId`] derived from this identity.
    pub fn peer_id(&self) -> PeerId {
        PeerId(*blake3::Hasher::new_derive_key(PEER_ID_CONTEXT).update(self.as_bytes()).finalize().as_bytes())
    }

    /// Checks an Ed25519 signature made by this identity. Uses strict verification (no
    /// malleable or small-order signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let key = VerifyingKey::from_bytes(&self.0).expect("checked to be a valid key when constructed");
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for RemoteIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32().encode(self.as_bytes()))
    }
}

impl fmt::Debug for RemoteIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteIdentity({self})")
    }
}

impl FromStr for RemoteIdentity {
    type Err = ParseIdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != REMOTE_IDENTITY_TEXT_LEN {
            return Err(ParseIdentityError::Length(s.len()));
        }
        let mut bytes = [0u8; 32];
        let decoded = base32().decode_mut(s.as_bytes(), &mut bytes).map_err(|_| ParseIdentityError::NotBase32)?;
        debug_assert_eq!(decoded, 32);
        Self::from_bytes(&bytes)
    }
}

impl serde::Serialize for RemoteIdentity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RemoteIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire an identity is its 32 key bytes; decoding checks they are a valid key.
impl warren_proto::Encode for RemoteIdentity {
    fn encode(&self, w: &mut warren_proto::Writer) -> Result<(), warren_proto::EncodeError> {
        w.put_bytes(self.as_bytes());
        Ok(())
    }
}

impl warren_proto::Decode for RemoteIdentity {
    async fn decode<R: tokio::io::AsyncRead + Unpin + Send>(
        r: &mut warren_proto::Reader<R>,
    ) -> Result<Self, warren_proto::DecodeError> {
        let bytes = r.read_array::<32>().await?;
        RemoteIdentity::from_bytes(&bytes).map_err(|e| warren_proto::DecodeError::invalid(e.to_string()))
    }
}

/// Why a string is not a [`RemoteIdentity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdentityError {
    /// The text has the wrong length.
    #[error("an identity is {REMOTE_IDENTITY_TEXT_LEN} characters of base32, got {0} characters")]
    Length(usize),
    /// The text has characters outside lowercase base32.
    #[error("an identity is lowercase base32 (a-z, 2-7)")]
    NotBase32,
    /// The bytes are not an Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    NotAKey,
}

const PEER_ID_CONTEXT: &str = "warren 2026-11 peer id v1";

/// A 32-byte hash of a [`RemoteIdentity`], uniformly spread: the key a node has in key spaces
/// such as the DHT. Shown as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", &self.to_string()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_nobody_else_does() {
        let (alice, bob, carol) = (Identity::generate(), Identity::generate(), Identity::generate());
        let (a, b, c) = (alice.to_remote_identity(), bob.to_remote_identity(), carol.to_remote_identity());
        let ab = alice.agree(&b, "test");
        assert_eq!(*ab, *bob.agree(&a, "test"), "both sides compute one secret");
        assert_ne!(*ab, *alice.agree(&c, "test"));
        assert_ne!(*ab, *carol.agree(&b, "test"), "a third identity gets another");
        assert_ne!(*ab, *alice.agree(&b, "other purpose"));
    }

    #[test]
    fn remote_identity_text_round_trips_and_fits_a_dns_label() {
        let id = Identity::generate().to_remote_identity();
        let text = id.to_string();
        assert_eq!(text.len(), REMOTE_IDENTITY_TEXT_LEN);
        assert!(text.len() <= 63);
        assert!(text.bytes().all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        assert_eq!(text.parse::<RemoteIdentity>().unwrap(), id);
    }

    #[test]
    fn parse_rejects_bad_text() {
        let text = Identity::generate().to_remote_identity().to_string();
        assert_eq!("abc".parse::<RemoteIdentity>(), Err(ParseIdentityError::Length(3)));
        assert_eq!(text.to_uppercase().parse::<RemoteIdentity>(), Err(ParseIdentityError::NotBase32));
        let mut bad = text.clone().into_bytes();
        bad[0] = b'1';
        assert_eq!(String::from_utf8(bad).unwrap().parse::<RemoteIdentity>(), Err(ParseIdentityError::NotBase32));
    }

    #[test]
    fn signatures_verify_only_with_the_signing_identity() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"hello");
        assert!(a.to_remote_identity().verify(b"hello", &sig));
        assert!(!a.to_remote_identity().verify(b"hellO", &sig));
        assert!(!b.to_remote_identity().verify(b"hello", &sig));
    }

    #[test]
    fn remote_identity_travels_as_its_32_bytes_and_is_checked() {
        #[derive(Debug, PartialEq, warren_proto::Encode, warren_proto::Decode)]
        struct Announce {
            who: RemoteIdentity,
        }
        let who = Identity::generate().to_remote_identity();
        let bytes = warren_proto::encode_to_vec(&Announce { who }).unwrap();
        assert_eq!(bytes, who.as_bytes());
        assert_eq!(warren_proto::decode_from_slice::<Announce>(&bytes).unwrap(), Announce { who });
        // Not a curve point: y = 2 has no matching x on Ed25519.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let err = warren_proto::decode_from_slice::<Announce>(&bad).unwrap_err();
        assert_eq!(err.to_string(), "Announce.who: not a valid Ed25519 public key");
    }

    #[test]
    fn peer_id_is_stable_and_distinct() {
        let a = Identity::from_secret_bytes(&[7; 32]).to_remote_identity();
        let b = Identity::from_secret_bytes(&[8; 32]).to_remote_identity();
        assert_eq!(a.peer_id(), a.peer_id());
        assert_ne!(a.peer_id(), b.peer_id());
        assert_eq!(a.peer_id().to_string().len(), 64);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-id-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn load_or_create_persists_with_private_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("persist");
        let first = Identity::load_or_create(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(IDENTITY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = Identity::load_or_create(&dir).unwrap();
        assert_eq!(first.to_remote_identity(), second.to_remote_identity());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_identity() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("corrupt");
        Identity::load_or_create(&dir).unwrap();
        let path = dir.join(IDENTITY_FILE);
        std::fs::write(&path, b"short").unwrap();
        let err = Identity::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("expected 32 bytes, found 5"), "{err}");
        // The corrupt file is left alone for the user to inspect.
        assert_eq!(std::fs::read(&path).unwrap(), b"short");

        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(&dir).unwrap_err();
        assert!(matches!(err, IdentityError::InsecurePermissions { mode: 0o644, .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
