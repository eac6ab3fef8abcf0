//! Membership certificates: a library key (or an admin it certified) signs "this node is a
//! member of this library, with this role, until then".
//!
//! Delegation is one level deep: the library key certifies admins and members; an admin
//! certifies members only, and its certificate travels with the ones it issued (a
//! [`Credential`]). Every check takes `now` (Unix seconds) and the revoked set; nothing here
//! reads a clock.

use std::collections::BTreeSet;

use warren::{Identity, RemoteIdentity};
use warren_proto::{Decode, Encode};

/// A library's identifier (a UUID's 16 bytes).
pub type LibraryId = [u8; 16];

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub enum Role {
    /// May certify members and revoke.
    Admin,
    /// Takes part.
    Member,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Member => "member",
        })
    }
}

/// The signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Certificate {
    /// The library.
    pub library: LibraryId,
    /// The node it certifies.
    pub subject: RemoteIdentity,
    /// Its role.
    pub role: Role,
    /// Valid until this Unix time (seconds), exclusive.
    pub not_after: u64,
    /// Who signed: the library key or an admin.
    pub issuer: RemoteIdentity,
    /// Ed25519 over [`Certificate::signed_bytes`].
    pub signature: [u8; 64],
}

const CERT_CONTEXT: &[u8] = b"warren library certificate v1\0";

impl Certificate {
    /// Signs a certificate with `issuer`'s key.
    pub fn issue(issuer: &Identity, library: LibraryId, subject: RemoteIdentity, role: Role, not_after: u64) -> Self {
        let mut cert =
            Certificate { library, subject, role, not_after, issuer: issuer.to_remote_identity(), signature: [0; 64] };
        cert.signature = issuer.sign(&cert.signed_bytes());
        cert
    }

    /// What the signature covers: a context string, then every field but the signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CERT_CONTEXT.to_vec();
        out.extend_from_slice(&self.library);
        out.extend_from_slice(self.subject.as_bytes());
        out.push(match self.role {
            Role::Admin => 0,
            Role::Member => 1,
        });
        out.extend_from_slice(&self.not_after.to_le_bytes());
        out.extend_from_slice(self.issuer.as_bytes());
        out
    }

    fn signature_ok(&self) -> bool {
        self.issuer.verify(&self.signed_bytes(), &self.signature)
    }
}

/// A certificate and, when an admin issued it, the admin's own certificate.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Credential {
    /// The holder's certificate.
    pub cert: Certificate,
    /// The issuing admin's certificate (signed by the library key), if the library key did not
    /// sign `cert` itself.
    pub via: Option<Certificate>,
}

/// Why a credential does not prove membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// For another library.
    #[error("the certificate is for another library")]
    WrongLibrary,
    /// Names another node than the one that presented it.
    #[error("the certificate names {named}, not the peer {peer}")]
    WrongSubject {
        /// Who it names.
        named: RemoteIdentity,
        /// Who presented it.
        peer: RemoteIdentity,
    },
    /// A signature does not verify.
    #[error("a certificate signature does not verify")]
    BadSignature,
    /// Signed by someone the library key did not make an admin.
    #[error("the certificate's issuer {0} is not an admin of the library")]
    NotAnAdmin(RemoteIdentity),
    /// An admin tried to make an admin (only the library key may).
    #[error("an admin certified an admin; only the library key may")]
    AdminByAdmin,
    /// Past its expiry.
    #[error("the certificate of {subject} expired at {not_after} (now {now})")]
    Expired {
        /// Whose.
        subject: RemoteIdentity,
        /// When.
        not_after: u64,
        /// Now.
        now: u64,
    },
    /// The node (or the admin that certified it) is revoked.
    #[error("{0} is revoked from the library")]
    Revoked(RemoteIdentity),
}

/// A library as its members know it: its id and public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryRef {
    /// Its id.
    pub id: LibraryId,
    /// Its key.
    pub key: RemoteIdentity,
}

impl LibraryRef {
    /// Checks that `credential` proves that `peer` is a member now: every signature, the
    /// library, the subject, the expiries and the revoked set (which also covers the admin
    /// that issued it). Returns the verified role.
    pub fn verify(
        &self,
        credential: &Credential,
        peer: &RemoteIdentity,
        now: u64,
        revoked: &BTreeSet<RemoteIdentity>,
    ) -> Result<Role, CertError> {
        let cert = &credential.cert;
        if cert.library != self.id {
            return Err(CertError::WrongLibrary);
        }
        if cert.subject != *peer {
            return Err(CertError::WrongSubject { named: cert.subject, peer: *peer });
        }
        if !cert.signature_ok() {
            return Err(CertError::BadSignature);
        }
        if cert.issuer != self.key {
            self.verify_admin(credential.via.as_ref(), &cert.issuer, now, revoked)?;
            if cert.role == Role::Admin {
                return Err(CertError::AdminByAdmin);
            }
        }
        if now >= cert.not_after {
            return Err(CertError::Expired { subject: cert.subject, not_after: cert.not_after, now });
        }
        if revoked.contains(&cert.subject) {
            return Err(CertError::Revoked(cert.subject));
        }
        Ok(cert.role)
    }

    /// Checks that `via` makes `admin` an admin now (signed by the library key itself).
    pub fn verify_admin(
        &self,
        via: Option<&Certificate>,
        admin: &RemoteIdentity,
        now: u64,
        revoked: &BTreeSet<RemoteIdentity>,
    ) -> Result<(), CertError> {
        let Some(via) = via else { return Err(CertError::NotAnAdmin(*admin)) };
        if via.library != self.id {
            return Err(CertError::WrongLibrary);
        }
        if via.subject != *admin || via.issuer != self.key || via.role != Role::Admin {
            return Err(CertError::NotAnAdmin(*admin));
        }
        if !via.signature_ok() {
            return Err(CertError::BadSignature);
        }
        if now >= via.not_after {
            return Err(CertError::Expired { subject: *admin, not_after: via.not_after, now });
        }
        if revoked.contains(admin) {
            return Err(CertError::Revoked(*admin));
        }
        Ok(())
    }
}

/// What signs for a library on this node: the library key itself, or this node's identity with
/// its admin certificate.
pub enum Signer<'a> {
    /// The library's own key.
    LibraryKey(&'a Identity),
    /// An admin: its node identity and the admin certificate the library key gave it.
    Admin(&'a Identity, &'a Certificate),
}

impl Signer<'_> {
    /// Certifies `subject` as a member (`Role::Admin` only with the library key).
    pub fn certify(
        &self,
        library: LibraryId,
        subject: RemoteIdentity,
        role: Role,
        not_after: u64,
    ) -> Option<Credential> {
        match self {
            Signer::LibraryKey(key) => {
                Some(Credential { cert: Certificate::issue(key, library, subject, role, not_after), via: None })
            }
            Signer::Admin(_, _) if role == Role::Admin => None,
            Signer::Admin(me, admin) => Some(Credential {
                cert: Certificate::issue(me, library, subject, role, not_after),
                via: Some((*admin).clone()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn setup() -> (Identity, LibraryRef) {
        let key = Identity::generate();
        let lib = LibraryRef { id: *uuid::Uuid::new_v4().as_bytes(), key: key.to_remote_identity() };
        (key, lib)
    }

    #[test]
    fn member_certified_by_the_library_key_or_an_admin_verifies() {
        let (key, lib) = setup();
        let none = BTreeSet::new();
        let member = Identity::generate().to_remote_identity();
        let cred = Signer::LibraryKey(&key).certify(lib.id, member, Role::Member, NOW + 10).unwrap();
        assert_eq!(lib.verify(&cred, &member, NOW, &none), Ok(Role::Member));

        let admin = Identity::generate();
        let admin_cert =
            Signer::LibraryKey(&key).certify(lib.id, admin.to_remote_identity(), Role::Admin, NOW + 10).unwrap().cert;
        let signer = Signer::Admin(&admin, &admin_cert);
        let cred = signer.certify(lib.id, member, Role::Member, NOW + 10).unwrap();
        assert_eq!(lib.verify(&cred, &member, NOW, &none), Ok(Role::Member));
        // An admin cannot make admins.
        assert!(signer.certify(lib.id, member, Role::Admin, NOW + 10).is_none());
    }

    #[test]
    fn forged_expired_revoked_and_misdirected_credentials_are_refused() {
        let (key, lib) = setup();
        let none = BTreeSet::new();
        let member = Identity::generate().to_remote_identity();
        let other = Identity::generate().to_remote_identity();
        let cred = Signer::LibraryKey(&key).certify(lib.id, member, Role::Member, NOW + 10).unwrap();

        // Presented by another node.
        assert!(matches!(lib.verify(&cred, &other, NOW, &none), Err(CertError::WrongSubject { .. })));
        // Another library.
        let elsewhere = LibraryRef { id: [7; 16], ..lib };
        assert_eq!(elsewhere.verify(&cred, &member, NOW, &none), Err(CertError::WrongLibrary));
        // Expired.
        assert!(matches!(lib.verify(&cred, &member, NOW + 10, &none), Err(CertError::Expired { .. })));
        // Revoked.
        let revoked = BTreeSet::from([member]);
        assert_eq!(lib.verify(&cred, &member, NOW, &revoked), Err(CertError::Revoked(member)));
        // Role raised after signing.
        let mut raised = cred.clone();
        raised.cert.role = Role::Admin;
        assert_eq!(lib.verify(&raised, &member, NOW, &none), Err(CertError::BadSignature));
        // Expiry pushed after signing.
        let mut later = cred.clone();
        later.cert.not_after += 1;
        assert_eq!(lib.verify(&later, &member, NOW, &none), Err(CertError::BadSignature));
        // Self-signed by a stranger.
        let stranger = Identity::generate();
        let own = Certificate::issue(&stranger, lib.id, member, Role::Member, NOW + 10);
        let cred = Credential { cert: own, via: None };
        assert_eq!(lib.verify(&cred, &member, NOW, &none), Err(CertError::NotAnAdmin(stranger.to_remote_identity())));
    }

    #[test]
    fn a_revoked_or_expired_admin_takes_its_members_with_it() {
        let (key, lib) = setup();
        let admin = Identity::generate();
        let admin_cert =
            Signer::LibraryKey(&key).certify(lib.id, admin.to_remote_identity(), Role::Admin, NOW + 5).unwrap().cert;
        let member = Identity::generate().to_remote_identity();
        let cred = Signer::Admin(&admin, &admin_cert).certify(lib.id, member, Role::Member, NOW + 100).unwrap();
        let revoked = BTreeSet::from([admin.to_remote_identity()]);
        assert_eq!(lib.verify(&cred, &member, NOW, &revoked), Err(CertError::Revoked(admin.to_remote_identity())));
        assert!(matches!(lib.verify(&cred, &member, NOW + 5, &BTreeSet::new()), Err(CertError::Expired { .. })));
        // An admin certificate issued by another admin does not count.
        let admin2 = Identity::generate();
        let fake_via = Certificate::issue(&admin, lib.id, admin2.to_remote_identity(), Role::Admin, NOW + 100);
        let cred = Signer::Admin(&admin2, &fake_via).certify(lib.id, member, Role::Member, NOW + 100).unwrap();
        assert!(matches!(lib.verify(&cred, &member, NOW, &BTreeSet::new()), Err(CertError::NotAnAdmin(_))));
    }
}
