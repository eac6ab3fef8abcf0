//! Signed, versioned revocation lists, and what a member keeps of them.
//!
//! A list is signed by the library key or by an admin (with its admin certificate). Members
//! hand their current list to every member they open a tunnel with; a valid list with a higher
//! version replaces the current one. Revocation is permanent: the revoked set a node checks
//! against is the union of every valid list it has accepted, so a list that lost a race (two
//! admins publishing the same version while apart) still takes effect where it was seen, and
//! an admin that holds entries the winning list lacks publishes them again one version up.

use std::collections::BTreeSet;

use warren::RemoteIdentity;
use warren_proto::{Decode, Encode};

use crate::cert::{CertError, Certificate, LibraryId, LibraryRef, Signer};

/// Most entries in one list.
pub const MAX_REVOKED: usize = 4096;

/// The signed list.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RevocationList {
    /// The library.
    pub library: LibraryId,
    /// Higher replaces lower.
    pub version: u64,
    /// The revoked nodes, sorted, no duplicates.
    #[proto(max_len = 4096)]
    pub revoked: Vec<RemoteIdentity>,
    /// Who signed: the library key or an admin.
    pub signer: RemoteIdentity,
    /// The admin's certificate when an admin signed.
    pub via: Option<Certificate>,
    /// Ed25519 over [`RevocationList::signed_bytes`].
    pub signature: [u8; 64],
}

const LIST_CONTEXT: &[u8] = b"warren library revocations v1\0";

impl RevocationList {
    /// Signs a list of `revoked` at `version`.
    pub fn sign(signer: &Signer<'_>, library: LibraryId, version: u64, revoked: &BTreeSet<RemoteIdentity>) -> Self {
        let (key, via) = match signer {
            Signer::LibraryKey(key) => (*key, None),
            Signer::Admin(me, cert) => (*me, Some((*cert).clone())),
        };
        let mut list = RevocationList {
            library,
            version,
            revoked: revoked.iter().copied().collect(),
            signer: key.to_remote_identity(),
            via,
            signature: [0; 64],
        };
        list.signature = key.sign(&list.signed_bytes());
        list
    }

    /// What the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = LIST_CONTEXT.to_vec();
        out.extend_from_slice(&self.library);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.revoked.len() as u64).to_le_bytes());
        for id in &self.revoked {
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(self.signer.as_bytes());
        out
    }

    /// Checks the list: library, signature, the signer's authority now, sorted entries. A list
    /// signed by an admin it revokes itself is refused.
    pub fn verify(
        &self,
        library: &LibraryRef,
        now: u64,
        known: &BTreeSet<RemoteIdentity>,
    ) -> Result<(), RevocationError> {
        if self.library != library.id {
            return Err(RevocationError::WrongLibrary);
        }
        if self.revoked.len() > MAX_REVOKED || !self.revoked.windows(2).all(|w| w[0] < w[1]) {
            return Err(RevocationError::Malformed);
        }
        if self.signer != library.key {
            let mut revoked = known.clone();
            revoked.extend(self.revoked.iter().copied());
            library.verify_admin(self.via.as_ref(), &self.signer, now, &revoked).map_err(RevocationError::Signer)?;
        }
        if !self.signer.verify(&self.signed_bytes(), &self.signature) {
            return Err(RevocationError::BadSignature);
        }
        Ok(())
    }
}

/// Why a list is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationError {
    /// For another library.
    #[error("the revocation list is for another library")]
    WrongLibrary,
    /// Unsorted, duplicated or too long.
    #[error("the revocation list is malformed (unsorted, duplicated or over {MAX_REVOKED} entries)")]
    Malformed,
    /// The signature does not verify.
    #[error("the revocation list's signature does not verify")]
    BadSignature,
    /// Signed by someone without the authority.
    #[error("the revocation list's signer has no authority: {0}")]
    Signer(CertError),
}

/// What a member keeps: the current list and the union of all it accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    current: Option<RevocationList>,
    revoked: BTreeSet<RemoteIdentity>,
}

/// What [`Revocations::offer`] did with a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Newer: it is the current list now (its entries added to the revoked set).
    Taken,
    /// Not newer: the current list stays (its entries were still added to the revoked set).
    Kept,
}

impl Revocations {
    /// From a stored current list and revoked set (as [`Revocations::current`] and
    /// [`Revocations::revoked`] gave them).
    pub fn from_parts(current: Option<RevocationList>, revoked: BTreeSet<RemoteIdentity>) -> Self {
        let mut revoked = revoked;
        if let Some(list) = &current {
            revoked.extend(list.revoked.iter().copied());
        }
        Self { current, revoked }
    }

    /// The list to hand to other members.
    pub fn current(&self) -> Option<&RevocationList> {
        self.current.as_ref()
    }

    /// Every revoked node.
    pub fn revoked(&self) -> &BTreeSet<RemoteIdentity> {
        &self.revoked
    }

    /// The current version (0 when there is no list).
    pub fn version(&self) -> u64 {
        self.current.as_ref().map_or(0, |list| list.version)
    }

    /// Takes a list from another member if it verifies.
    pub fn offer(&mut self, library: &LibraryRef, list: RevocationList, now: u64) -> Result<Offered, RevocationError> {
        list.verify(library, now, &self.revoked)?;
        self.revoked.extend(list.revoked.iter().copied());
        if list.version > self.version() {
            self.current = Some(list);
            Ok(Offered::Taken)
        } else {
            Ok(Offered::Kept)
        }
    }

    /// Revokes `node`: signs a new list one version up holding every revoked node.
    pub fn revoke(&mut self, signer: &Signer<'_>, library: LibraryId, node: RemoteIdentity) -> &RevocationList {
        self.revoked.insert(node);
        self.republish(signer, library)
    }

    /// Whether the current list lacks entries this node knows (it should republish them, if it
    /// can sign).
    pub fn behind(&self) -> bool {
        self.current.as_ref().map_or(!self.revoked.is_empty(), |list| list.revoked.len() < self.revoked.len())
    }

    /// Signs the whole revoked set one version up as the current list.
    pub fn republish(&mut self, signer: &Signer<'_>, library: LibraryId) -> &RevocationList {
        let list = RevocationList::sign(signer, library, self.version() + 1, &self.revoked);
        self.current.insert(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::Role;
    use warren::Identity;

    const NOW: u64 = 1_000;

    #[test]
    fn newer_lists_replace_older_and_revocation_is_permanent() {
        let key = Identity::generate();
        let lib = LibraryRef { id: [1; 16], key: key.to_remote_identity() };
        let signer = Signer::LibraryKey(&key);
        let (a, b) = (Identity::generate().to_remote_identity(), Identity::generate().to_remote_identity());

        let mut origin = Revocations::default();
        let v1 = origin.revoke(&signer, lib.id, a).clone();
        let v2 = origin.revoke(&signer, lib.id, b).clone();
        assert_eq!((v1.version, v2.version), (1, 2));

        let mut other = Revocations::default();
        assert_eq!(other.offer(&lib, v2.clone(), NOW), Ok(Offered::Taken));
        assert_eq!(other.offer(&lib, v1.clone(), NOW), Ok(Offered::Kept));
        assert_eq!(other.version(), 2);
        assert_eq!(other.revoked(), &BTreeSet::from([a, b]));
    }

    #[test]
    fn forged_and_unauthorised_lists_are_refused() {
        let key = Identity::generate();
        let lib = LibraryRef { id: [1; 16], key: key.to_remote_identity() };
        let victim = Identity::generate().to_remote_identity();
        let mut mine = Revocations::default();

        // A stranger's list.
        let stranger = Identity::generate();
        let fake_admin = Certificate::issue(&stranger, lib.id, stranger.to_remote_identity(), Role::Admin, NOW + 10);
        let list = RevocationList::sign(&Signer::Admin(&stranger, &fake_admin), lib.id, 9, &BTreeSet::from([victim]));
        assert!(matches!(mine.offer(&lib, list, NOW), Err(RevocationError::Signer(_))));
        // A real list with an entry added after signing.
        let mut list = RevocationList::sign(&Signer::LibraryKey(&key), lib.id, 1, &BTreeSet::new());
        list.revoked.push(victim);
        assert_eq!(mine.offer(&lib, list, NOW), Err(RevocationError::BadSignature));
        // Another library's list.
        let list = RevocationList::sign(&Signer::LibraryKey(&key), [2; 16], 1, &BTreeSet::from([victim]));
        assert_eq!(mine.offer(&lib, list, NOW), Err(RevocationError::WrongLibrary));
        // Unsorted entries.
        let mut list = RevocationList::sign(&Signer::LibraryKey(&key), lib.id, 1, &BTreeSet::new());
        list.revoked = vec![victim, victim];
        assert_eq!(mine.offer(&lib, list, NOW), Err(RevocationError::Malformed));
        assert!(mine.revoked().is_empty() && mine.current().is_none());

        // A real admin's list counts, unless that admin is revoked (by this list or before).
        let admin = Identity::generate();
        let admin_cert = Certificate::issue(&key, lib.id, admin.to_remote_identity(), Role::Admin, NOW + 10);
        let signer = Signer::Admin(&admin, &admin_cert);
        let list = RevocationList::sign(&signer, lib.id, 1, &BTreeSet::from([victim]));
        assert_eq!(mine.offer(&lib, list, NOW), Ok(Offered::Taken));
        let list = RevocationList::sign(&signer, lib.id, 2, &BTreeSet::from([victim, admin.to_remote_identity()]));
        assert!(matches!(mine.offer(&lib, list, NOW), Err(RevocationError::Signer(CertError::Revoked(_)))));
    }

    #[test]
    fn a_lost_race_is_republished_by_an_admin_that_holds_it() {
        let key = Identity::generate();
        let lib = LibraryRef { id: [1; 16], key: key.to_remote_identity() };
        let signer = Signer::LibraryKey(&key);
        let (a, b) = (Identity::generate().to_remote_identity(), Identity::generate().to_remote_identity());
        let mut left = Revocations::default();
        let mut right = Revocations::default();
        let from_left = left.revoke(&signer, lib.id, a).clone();
        let from_right = right.revoke(&signer, lib.id, b).clone();
        // Same version: each keeps its own list but takes the other's entries.
        assert_eq!(left.offer(&lib, from_right, NOW), Ok(Offered::Kept));
        assert_eq!(right.offer(&lib, from_left, NOW), Ok(Offered::Kept));
        assert!(left.behind() && right.behind());
        let merged = left.republish(&signer, lib.id).clone();
        assert_eq!(merged.version, 2);
        assert_eq!(right.offer(&lib, merged, NOW), Ok(Offered::Taken));
        assert!(!right.behind());
        assert_eq!(right.revoked(), &BTreeSet::from([a, b]));
    }
}
