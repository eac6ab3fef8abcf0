//! Libraries, certificates and revocations in the data directory: one SQLite file,
//! `libraries.sqlite`, readable by its owner only.
//!
//! Every change is one transaction (SQLite's journal makes it all-or-nothing, with
//! `synchronous = FULL`), so a crash leaves the file as it was before or after. A file that is
//! not a library store, or a row that does not decode, is an error that names the file; the
//! store never resets itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use warren::{Identity, RemoteIdentity};

use crate::cert::{Credential, LibraryId, LibraryRef, Role, Signer};
use crate::handshake::Membership;
use crate::pair::Joined;
use crate::revocation::{RevocationList, Revocations};
use crate::tunnel::Libraries;
use crate::unix_now;
use crate::wire::Grant;

/// The file's name in the data directory.
pub const FILE: &str = "libraries.sqlite";

/// How long the creator's own admin certificate lasts (100 years).
pub const CREATOR_LIFETIME: u64 = 100 * 365 * 24 * 3600;
/// How long a certificate issued by pairing lasts by default (one year).
pub const MEMBER_LIFETIME: u64 = 365 * 24 * 3600;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused (a file that is not a store, a full disk, a lock).
    #[error("library store {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A row does not decode.
    #[error("library store {path}: library {library}: {what} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The library.
        library: uuid::Uuid,
        /// Which part.
        what: &'static str,
    },
    /// A database, but not a library store.
    #[error("{0} is an SQLite database but not a library store; move it away")]
    NotAStore(PathBuf),
    /// No such library.
    #[error("no library {0:?} (see `warren library list`)")]
    NotFound(String),
    /// Two libraries have this name.
    #[error("{0:?} names several libraries; use its id")]
    Ambiguous(String),
    /// This node cannot sign for the library.
    #[error("this node is not an admin of library {0}")]
    NotAdmin(uuid::Uuid),
}

/// One library as this node keeps it.
#[derive(Debug, Clone)]
pub struct LibraryRecord {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
    /// The membership (library key, this node's credential, revocations).
    pub membership: Membership,
    /// Whether this node holds the library's own key (it created it).
    pub holds_key: bool,
}

impl LibraryRecord {
    /// This node's role.
    pub fn role(&self) -> Role {
        self.membership.credential.cert.role
    }
}

/// A member this node knows of: certified by it, or proved through a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: RemoteIdentity,
    /// Its role.
    pub role: Role,
    /// Its certificate's expiry (Unix seconds).
    pub not_after: u64,
    /// `"issued"` (this node certified it) or `"proved"` (it proved itself in a tunnel).
    pub source: String,
    /// When last seen or issued (Unix seconds).
    pub seen: u64,
    /// Whether it is revoked.
    pub revoked: bool,
}

/// The store.
pub struct Store {
    db: Mutex<Connection>,
    path: PathBuf,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS libraries (
        id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        key BLOB NOT NULL,
        secret BLOB,
        credential BLOB NOT NULL,
        revocations BLOB
    );
    CREATE TABLE IF NOT EXISTS revoked (
        library BLOB NOT NULL,
        node BLOB NOT NULL,
        PRIMARY KEY (library, node)
    );
    CREATE TABLE IF NOT EXISTS members (
        library BLOB NOT NULL,
        node BLOB NOT NULL,
        role TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        source TEXT NOT NULL,
        seen INTEGER NOT NULL,
        PRIMARY KEY (library, node)
    );
";

impl Store {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Sqlite {
            path: data_dir.to_path_buf(),
            source: rusqlite::Error::InvalidPath(format!("{}: {e}", data_dir.display()).into()),
        })?;
        let path = data_dir.join(FILE);
        let fresh = !path.exists();
        let sql = |source| StoreError::Sqlite { path: path.clone(), source };
        let db = Connection::open(&path).map_err(sql)?;
        if fresh {
            restrict(&path);
        }
        db.execute_batch("PRAGMA synchronous = FULL;").map_err(sql)?;
        // On a file that is not a database this is where SQLite says so; nothing was written.
        let (tables, ours): (i64, i64) = db
            .query_row("SELECT count(*), count(*) FILTER (WHERE name = 'libraries') FROM sqlite_master", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(sql)?;
        if tables > 0 && ours == 0 {
            return Err(StoreError::NotAStore(path));
        }
        db.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self { db: Mutex::new(db), path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// Creates a library: a fresh key, and this node its admin.
    pub fn create(&self, name: &str, me: &Identity) -> Result<LibraryRecord, StoreError> {
        let id = uuid::Uuid::new_v4();
        let key = Identity::generate();
        let library = LibraryRef { id: *id.as_bytes(), key: key.to_remote_identity() };
        let credential = Signer::LibraryKey(&key)
            .certify(library.id, me.to_remote_identity(), Role::Admin, unix_now() + CREATOR_LIFETIME)
            .expect("the library key certifies admins");
        let db = self.db.lock().expect("store lock");
        db.execute(
            "INSERT INTO libraries (id, name, key, secret, credential) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                &library.id[..],
                name,
                &library.key.as_bytes()[..],
                &key.to_secret_bytes()[..],
                encode(&credential)
            ],
        )
        .map_err(self.sql())?;
        let membership = Membership { library, credential, revocations: Revocations::default() };
        Ok(LibraryRecord { id, name: name.to_string(), membership, holds_key: true })
    }

    /// Every library, by name.
    pub fn list(&self) -> Result<Vec<LibraryRecord>, StoreError> {
        let db = self.db.lock().expect("store lock");
        let ids: Vec<Vec<u8>> = {
            let mut stmt = db.prepare("SELECT id FROM libraries ORDER BY name, id").map_err(self.sql())?;
            stmt.query_map([], |row| row.get(0)).map_err(self.sql())?.collect::<Result<_, _>>().map_err(self.sql())?
        };
        ids.iter()
            .map(|id| self.load(&db, &library_id(id).unwrap_or_default())?.ok_or_else(|| StoreError::NotFound(hex(id))))
            .collect()
    }

    /// The library named `which` (its id, or its name if only one has it).
    pub fn find(&self, which: &str) -> Result<LibraryRecord, StoreError> {
        let all = self.list()?;
        if let Ok(id) = which.parse::<uuid::Uuid>() {
            return all.into_iter().find(|l| l.id == id).ok_or_else(|| StoreError::NotFound(which.into()));
        }
        let mut named: Vec<_> = all.into_iter().filter(|l| l.name == which).collect();
        match named.len() {
            0 => Err(StoreError::NotFound(which.into())),
            1 => Ok(named.remove(0)),
            _ => Err(StoreError::Ambiguous(which.into())),
        }
    }

    fn load(&self, db: &Connection, id: &LibraryId) -> Result<Option<LibraryRecord>, StoreError> {
        type Row = (String, Vec<u8>, Option<Vec<u8>>, Vec<u8>, Option<Vec<u8>>);
        let row: Option<Row> = db
            .query_row(
                "SELECT name, key, secret, credential, revocations FROM libraries WHERE id = ?1",
                params![&id[..]],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
            )
            .optional()
            .map_err(self.sql())?;
        let Some((name, key, secret, credential, list)) = row else { return Ok(None) };
        let uuid = uuid::Uuid::from_bytes(*id);
        let corrupt = |what| StoreError::Corrupt { path: self.path.clone(), library: uuid, what };
        let key = <[u8; 32]>::try_from(key.as_slice())
            .ok()
            .and_then(|k| RemoteIdentity::from_bytes(&k).ok())
            .ok_or_else(|| corrupt("the library key"))?;
        let credential: Credential = decode(&credential).ok_or_else(|| corrupt("this node's certificate"))?;
        let current: Option<RevocationList> = match list {
            Some(bytes) => Some(decode(&bytes).ok_or_else(|| corrupt("the revocation list"))?),
            None => None,
        };
        let mut revoked = BTreeSet::new();
        let mut stmt = db.prepare("SELECT node FROM revoked WHERE library = ?1").map_err(self.sql())?;
        for node in stmt.query_map(params![&id[..]], |row| row.get::<_, Vec<u8>>(0)).map_err(self.sql())? {
            let node = node.map_err(self.sql())?;
            revoked.insert(identity(&node).ok_or_else(|| corrupt("a revoked node"))?);
        }
        let holds_key = secret.is_some_and(|s| s.len() == 32);
        let membership = Membership {
            library: LibraryRef { id: *id, key },
            credential,
            revocations: Revocations::from_parts(current, revoked),
        };
        Ok(Some(LibraryRecord { id: uuid, name, membership, holds_key }))
    }

    /// The library's own key, if this node holds it.
    fn secret(&self, id: &LibraryId) -> Result<Option<Identity>, StoreError> {
        let db = self.db.lock().expect("store lock");
        let secret: Option<Option<Vec<u8>>> = db
            .query_row("SELECT secret FROM libraries WHERE id = ?1", params![&id[..]], |row| row.get(0))
            .optional()
            .map_err(self.sql())?;
        Ok(secret
            .flatten()
            .and_then(|s| <[u8; 32]>::try_from(s.as_slice()).ok())
            .map(|s| Identity::from_secret_bytes(&s)))
    }

    /// Runs `f` with what signs for the library on this node: its key, or this node as admin.
    pub fn with_signer<T>(
        &self,
        record: &LibraryRecord,
        me: &Identity,
        f: impl FnOnce(&Signer<'_>) -> T,
    ) -> Result<T, StoreError> {
        if let Some(key) = self.secret(&record.membership.library.id)? {
            return Ok(f(&Signer::LibraryKey(&key)));
        }
        let cert = &record.membership.credential.cert;
        if cert.role == Role::Admin && record.membership.credential.via.is_none() {
            return Ok(f(&Signer::Admin(me, cert)));
        }
        Err(StoreError::NotAdmin(record.id))
    }

    /// The grant for a joiner that proved the pairing code: a member certificate for a year.
    pub fn grant(&self, record: &LibraryRecord, me: &Identity, joiner: RemoteIdentity) -> Result<Grant, StoreError> {
        let library = record.membership.library;
        let not_after = unix_now() + MEMBER_LIFETIME;
        let credential = self
            .with_signer(record, me, |signer| signer.certify(library.id, joiner, Role::Member, not_after))?
            .ok_or(StoreError::NotAdmin(record.id))?;
        self.note_member(&library.id, joiner, Role::Member, not_after, "issued")?;
        Ok(Grant {
            library: library.id,
            name: record.name.clone(),
            key: library.key,
            credential,
            inviter: record.membership.credential.clone(),
            revocations: record.membership.revocations.current().cloned(),
        })
    }

    /// Keeps a library this node joined.
    pub fn join(&self, joined: &Joined) -> Result<LibraryRecord, StoreError> {
        let m = &joined.membership;
        {
            let db = self.db.lock().expect("store lock");
            db.execute(
                "INSERT OR REPLACE INTO libraries (id, name, key, secret, credential) VALUES (?1, ?2, ?3, NULL, ?4)",
                params![&m.library.id[..], joined.name, &m.library.key.as_bytes()[..], encode(&m.credential)],
            )
            .map_err(self.sql())?;
        }
        self.save_revocations(m)?;
        self.note_member(&m.library.id, joined.inviter, joined.inviter_role, u64::MAX, "proved")?;
        let db = self.db.lock().expect("store lock");
        self.load(&db, &m.library.id)?.ok_or_else(|| StoreError::NotFound(joined.name.clone()))
    }

    /// Stores a membership's revocations (the current list and the revoked set), atomically.
    pub fn save_revocations(&self, membership: &Membership) -> Result<(), StoreError> {
        let mut db = self.db.lock().expect("store lock");
        let tx = db.transaction().map_err(self.sql())?;
        let id = &membership.library.id[..];
        tx.execute(
            "UPDATE libraries SET revocations = ?2 WHERE id = ?1",
            params![id, membership.revocations.current().map(encode)],
        )
        .map_err(self.sql())?;
        for node in membership.revocations.revoked() {
            tx.execute(
                "INSERT OR IGNORE INTO revoked (library, node) VALUES (?1, ?2)",
                params![id, &node.as_bytes()[..]],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())
    }

    /// Revokes `node` from the library: a new list, signed here, stored.
    pub fn revoke(&self, record: &LibraryRecord, me: &Identity, node: RemoteIdentity) -> Result<u64, StoreError> {
        let mut membership = record.membership.clone();
        let version = self.with_signer(record, me, |signer| {
            membership.revocations.revoke(signer, membership.library.id, node).version
        })?;
        self.save_revocations(&membership)?;
        Ok(version)
    }

    /// Notes a member (certified here, or proved in a tunnel).
    pub fn note_member(
        &self,
        library: &LibraryId,
        node: RemoteIdentity,
        role: Role,
        not_after: u64,
        source: &str,
    ) -> Result<(), StoreError> {
        let db = self.db.lock().expect("store lock");
        db.execute(
            "INSERT INTO members (library, node, role, not_after, source, seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (library, node) DO UPDATE SET role = ?3, seen = ?6,
                 not_after = CASE WHEN source = 'issued' THEN not_after ELSE ?4 END",
            params![&library[..], &node.as_bytes()[..], role.to_string(), not_after as i64, source, unix_now() as i64],
        )
        .map_err(self.sql())?;
        Ok(())
    }

    /// The members this node knows of.
    pub fn members(&self, record: &LibraryRecord) -> Result<Vec<Member>, StoreError> {
        let db = self.db.lock().expect("store lock");
        let mut stmt = db
            .prepare("SELECT node, role, not_after, source, seen FROM members WHERE library = ?1 ORDER BY seen")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![&record.membership.library.id[..]], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .map_err(self.sql())?;
        let revoked = record.membership.revocations.revoked();
        let mut out = Vec::new();
        for row in rows {
            let (node, role, not_after, source, seen): (Vec<u8>, String, i64, String, i64) = row.map_err(self.sql())?;
            let corrupt = || StoreError::Corrupt { path: self.path.clone(), library: record.id, what: "a member row" };
            let node = identity(&node).ok_or_else(corrupt)?;
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "member" => Role::Member,
                _ => return Err(corrupt()),
            };
            out.push(Member {
                node,
                role,
                not_after: not_after as u64,
                source,
                seen: seen as u64,
                revoked: revoked.contains(&node),
            });
        }
        Ok(out)
    }
}

impl Libraries for Store {
    fn membership(&self, library: &LibraryId) -> Option<Membership> {
        let db = self.db.lock().expect("store lock");
        match self.load(&db, library) {
            Ok(record) => record.map(|r| r.membership),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    fn learned(&self, membership: &Membership) {
        if let Err(e) = self.save_revocations(membership) {
            tracing::warn!("could not keep a revocation list: {e}");
        }
    }

    fn proved(&self, library: &LibraryId, peer: RemoteIdentity, role: Role) {
        if let Err(e) = self.note_member(library, peer, role, u64::MAX, "proved") {
            tracing::warn!("could not note a member: {e}");
        }
    }
}

fn encode<T: warren_proto::Message>(value: &T) -> Vec<u8> {
    warren_proto::encode_to_vec(value).expect("stored values are within their limits")
}

fn decode<T: warren_proto::Message>(bytes: &[u8]) -> Option<T> {
    warren_proto::decode_from_slice(bytes).ok()
}

fn identity(bytes: &[u8]) -> Option<RemoteIdentity> {
    RemoteIdentity::from_bytes(&<[u8; 32]>::try_from(bytes).ok()?).ok()
}

fn library_id(bytes: &[u8]) -> Option<LibraryId> {
    <[u8; 16]>::try_from(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The file holds library signing keys.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!("could not make {} private: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn libraries_certificates_and_revocations_survive_a_reopen() {
        let dir = temp("reopen");
        let me = Identity::generate();
        let joiner = Identity::generate().to_remote_identity();
        let store = Store::open(&dir).unwrap();
        let created = store.create("photos", &me).unwrap();
        assert_eq!((created.role(), created.holds_key), (Role::Admin, true));
        let grant = store.grant(&created, &me, joiner).unwrap();
        let lib = created.membership.library;
        assert_eq!(lib.verify(&grant.credential, &joiner, unix_now(), &BTreeSet::new()), Ok(Role::Member));
        assert_eq!(store.revoke(&created, &me, joiner).unwrap(), 1);
        drop(store);

        let store = Store::open(&dir).unwrap();
        let again = store.find("photos").unwrap();
        assert_eq!(again.id, created.id);
        assert_eq!(again.membership.credential, created.membership.credential);
        assert!(again.membership.revocations.revoked().contains(&joiner));
        assert_eq!(again.membership.revocations.version(), 1);
        let members = store.members(&again).unwrap();
        assert_eq!(members.len(), 1);
        assert!(members[0].revoked && members[0].node == joiner && members[0].source == "issued");
        assert!(matches!(store.find("nope"), Err(StoreError::NotFound(_))));
        assert_eq!(store.find(&created.id.to_string()).unwrap().name, "photos");
        store.create("photos", &me).unwrap();
        assert!(matches!(store.find("photos"), Err(StoreError::Ambiguous(_))));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(store.path()).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it_and_is_left_as_it_was() {
        let dir = temp("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE);
        let garbage = vec![0x5a; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = Store::open(&dir).err().expect("garbage is refused");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage, "nothing was written");

        // Another program's database.
        std::fs::remove_file(&path).unwrap();
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE notes (x TEXT);").unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::NotAStore(p)) if p == path));

        // A store with a damaged row.
        std::fs::remove_file(&path).unwrap();
        let store = Store::open(&dir).unwrap();
        let created = store.create("docs", &Identity::generate()).unwrap();
        store.db.lock().unwrap().execute("UPDATE libraries SET credential = x'00'", []).unwrap();
        let err = store.find("docs").unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { library, .. } if *library == created.id), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_admin_certified_by_the_library_key_signs_without_holding_it() {
        let dir = temp("admin");
        let creator = Identity::generate();
        let admin = Identity::generate();
        let store = Store::open(&dir).unwrap();
        let created = store.create("team", &creator).unwrap();
        // The creator makes `admin` an admin; `admin` keeps the library without its key.
        let key = store.secret(&created.membership.library.id).unwrap().unwrap();
        let lib = created.membership.library;
        let credential =
            Signer::LibraryKey(&key).certify(lib.id, admin.to_remote_identity(), Role::Admin, u64::MAX).unwrap();
        let admin_dir = temp("admin2");
        let admin_store = Store::open(&admin_dir).unwrap();
        let joined = Joined {
            membership: Membership { library: lib, credential, revocations: Revocations::default() },
            name: "team".into(),
            inviter: creator.to_remote_identity(),
            role: Role::Admin,
            inviter_role: Role::Admin,
        };
        let record = admin_store.join(&joined).unwrap();
        assert!(!record.holds_key);
        let member = Identity::generate().to_remote_identity();
        let grant = admin_store.grant(&record, &admin, member).unwrap();
        assert_eq!(lib.verify(&grant.credential, &member, unix_now(), &BTreeSet::new()), Ok(Role::Member));
        assert_eq!(admin_store.revoke(&record, &admin, member).unwrap(), 1);
        // A plain member cannot sign.
        let plain = Identity::generate();
        let plain_dir = temp("admin3");
        let plain_store = Store::open(&plain_dir).unwrap();
        let joined = Joined {
            membership: Membership {
                library: lib,
                credential: grant.credential.clone(),
                revocations: Revocations::default(),
            },
            role: Role::Member,
            ..joined
        };
        let record = plain_store.join(&joined).unwrap();
        assert!(matches!(plain_store.grant(&record, &plain, member), Err(StoreError::NotAdmin(_))));
        for d in [dir, admin_dir, plain_dir] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
