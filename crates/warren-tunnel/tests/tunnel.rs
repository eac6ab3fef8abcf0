//! The tunnel and pairing drivers between real warren nodes over QUIC on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{Identity, P2P, RemoteIdentity};
use warren_tunnel::cert::{LibraryRef, Role, Signer};
use warren_tunnel::handshake::TunnelError;
use warren_tunnel::pair::{self, Issue};
use warren_tunnel::pairing::PairError;
use warren_tunnel::wire::{Grant, TUNNEL_PROTOCOL, TunnelMessage};
use warren_tunnel::{Code, Libraries, Membership, MemoryLibraries, OpenError, Revocations, Tunnel, frame, unix_now};

async fn node() -> (P2P, SocketAddr) {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let p2p = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).spawn().await.unwrap();
    let addr = p2p.record().addrs[0];
    (p2p, addr)
}

fn knows(a: &P2P, b: &P2P, b_addr: SocketAddr) {
    a.discovered("test", b.id(), [b_addr], Default::default());
}

struct Library {
    key: Identity,
    lib: LibraryRef,
}

impl Library {
    fn new() -> Self {
        let key = Identity::generate();
        Self { lib: LibraryRef { id: *uuid::Uuid::new_v4().as_bytes(), key: key.to_remote_identity() }, key }
    }

    fn membership(&self, node: RemoteIdentity, role: Role) -> Membership {
        let credential = Signer::LibraryKey(&self.key).certify(self.lib.id, node, role, unix_now() + 3600).unwrap();
        Membership { library: self.lib, credential, revocations: Revocations::default() }
    }
}

/// A server whose handler counts the tunnels and the application bytes it was handed, and
/// echoes them.
struct Counting {
    tunnels: AtomicUsize,
    bytes: AtomicUsize,
}

fn serve_counting(p2p: &P2P, libraries: Arc<MemoryLibraries>) -> Arc<Counting> {
    let counting = Arc::new(Counting { tunnels: AtomicUsize::new(0), bytes: AtomicUsize::new(0) });
    let c = counting.clone();
    warren_tunnel::tunnel::serve(p2p, libraries, move |mut tunnel: Tunnel| {
        let c = c.clone();
        async move {
            c.tunnels.fetch_add(1, Ordering::SeqCst);
            let role = tunnel.role().to_string();
            if tunnel.stream.write_all(role.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match tunnel.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        c.bytes.fetch_add(n, Ordering::SeqCst);
                        if tunnel.stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tunnel.stream.finish();
        }
    })
    .unwrap();
    counting
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_open_a_tunnel_and_each_learns_the_others_verified_role() {
    let library = Library::new();
    let ((a, _), (b, b_addr)) = (node().await, node().await);
    knows(&a, &b, b_addr);
    let a_libs = Arc::new(MemoryLibraries::default());
    a_libs.insert(library.membership(a.id(), Role::Admin));
    let b_libs = Arc::new(MemoryLibraries::default());
    b_libs.insert(library.membership(b.id(), Role::Member));
    let served = serve_counting(&b, b_libs.clone());

    let mut tunnel = Tunnel::open(&a, &*a_libs, library.lib.id, b.id()).await.unwrap();
    assert_eq!(tunnel.role(), Role::Member);
    let mut role = [0u8; 5];
    tunnel.stream.read_exact(&mut role).await.unwrap();
    assert_eq!(&role, b"admin", "the acceptor's application was told the dialler's verified role");
    tunnel.stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tunnel.stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(served.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(b_libs.proved_peers(), vec![(library.lib.id, a.id(), Role::Admin)]);
    assert_eq!(a_libs.proved_peers(), vec![(library.lib.id, b.id(), Role::Member)]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_revoked_members_are_refused_before_any_application_byte() {
    let library = Library::new();
    let impostor_key = Identity::generate();
    let impostor_library =
        Library { lib: LibraryRef { id: library.lib.id, key: impostor_key.to_remote_identity() }, key: impostor_key };
    let ((b, b_addr), (stranger, _), (revoked, _), (forger, _)) =
        (node().await, node().await, node().await, node().await);
    for n in [&stranger, &revoked, &forger] {
        knows(n, &b, b_addr);
    }
    let b_libs = Arc::new(MemoryLibraries::default());
    let mut mb = library.membership(b.id(), Role::Member);
    mb.revocations.revoke(&Signer::LibraryKey(&library.key), library.lib.id, revoked.id());
    b_libs.insert(mb);
    let served = serve_counting(&b, b_libs);

    // A node that is in no library of b's: its own library id, unknown to b.
    let other = Library::new();
    let s_libs = MemoryLibraries::default();
    s_libs.insert(other.membership(stranger.id(), Role::Admin));
    let err = Tunnel::open(&stranger, &s_libs, other.lib.id, b.id()).await.unwrap_err();
    assert!(
        matches!(&err, OpenError::Tunnel(TunnelError::RefusedByPeer(r)) if r == "not a member of this library"),
        "{err}"
    );

    // A revoked member, with an old revocation list that does not name it.
    let r_libs = MemoryLibraries::default();
    r_libs.insert(library.membership(revoked.id(), Role::Member));
    let err = Tunnel::open(&revoked, &r_libs, library.lib.id, b.id()).await.unwrap_err();
    assert!(matches!(&err, OpenError::Tunnel(TunnelError::RefusedByPeer(r)) if r.contains("revoked")), "{err}");

    // A forger with a credential for b's library id signed by its own key, that does not wait
    // for the proof: it writes application bytes right after its hello.
    let forged = impostor_library.membership(forger.id(), Role::Admin);
    let mut raw = forger.connect(b.id(), TUNNEL_PROTOCOL).await.unwrap();
    let hello = TunnelMessage::Hello { library: library.lib.id, credential: forged.credential, revocations: None };
    frame::write(&mut raw, &hello).await.unwrap();
    let _ = raw.write_all(&vec![0x55; 64 * 1024]).await;
    let answer: TunnelMessage = frame::read(&mut raw).await.unwrap();
    assert_eq!(answer, TunnelMessage::Refused { reason: "not a member of this library".into() });
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "nothing but the refusal came back: {} bytes", rest.len());

    assert_eq!(served.tunnels.load(Ordering::SeqCst), 0, "no refused tunnel reached the application");
    assert_eq!(served.bytes.load(Ordering::SeqCst), 0, "the application saw zero bytes");
    for n in [b, stranger, revoked, forger] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_a_member_that_was_offline_once_it_reconnects() {
    let library = Library::new();
    let ((a, a_addr), (c, _)) = (node().await, node().await);
    let a_libs = Arc::new(MemoryLibraries::default());
    let mut ma = library.membership(a.id(), Role::Admin);
    let c_libs = MemoryLibraries::default();
    c_libs.insert(library.membership(c.id(), Role::Member));
    // a revokes c while b is offline (not running at all).
    ma.revocations.revoke(&Signer::LibraryKey(&library.key), library.lib.id, c.id());
    a_libs.insert(ma);
    serve_counting(&a, a_libs.clone());

    // b comes up with the membership it had; c can still reach it.
    let (b, b_addr) = node().await;
    let b_libs = Arc::new(MemoryLibraries::default());
    b_libs.insert(library.membership(b.id(), Role::Member));
    let served = serve_counting(&b, b_libs.clone());
    knows(&c, &b, b_addr);
    knows(&b, &a, a_addr);
    let mut tunnel = Tunnel::open(&c, &c_libs, library.lib.id, b.id()).await.expect("b has not heard yet");
    let mut role = [0u8; 6];
    tunnel.stream.read_exact(&mut role).await.unwrap();
    assert_eq!(served.tunnels.load(Ordering::SeqCst), 1);

    // b reconnects to a: the revocation comes with a's hello.
    Tunnel::open(&b, &*b_libs, library.lib.id, a.id()).await.unwrap();
    assert!(b_libs.membership(&library.lib.id).unwrap().revocations.revoked().contains(&c.id()));
    let err = Tunnel::open(&c, &c_libs, library.lib.id, b.id()).await.unwrap_err();
    assert!(matches!(&err, OpenError::Tunnel(TunnelError::RefusedByPeer(r)) if r.contains("revoked")), "{err}");
    assert_eq!(served.tunnels.load(Ordering::SeqCst), 1, "the refused tunnel never reached b's application");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

fn issuer(library: &Library, inviter: RemoteIdentity) -> Arc<Issue> {
    let key = Identity::from_secret_bytes(&library.key.to_secret_bytes());
    let lib = library.lib;
    Arc::new(move |joiner: RemoteIdentity| {
        let signer = Signer::LibraryKey(&key);
        Ok(Grant {
            library: lib.id,
            name: "photos".into(),
            key: lib.key,
            credential: signer.certify(lib.id, joiner, Role::Member, unix_now() + 3600).unwrap(),
            inviter: signer.certify(lib.id, inviter, Role::Admin, unix_now() + 3600).unwrap(),
            revocations: None,
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_by_code_survives_an_attacker_that_answers_first_and_is_single_use() {
    let library = Library::new();
    let ((inviter, i_addr), (joiner, _), (attacker, m_addr), (late, _)) =
        (node().await, node().await, node().await, node().await);
    knows(&joiner, &inviter, i_addr);
    knows(&joiner, &attacker, m_addr);
    knows(&late, &inviter, i_addr);
    let code = Code::generate();
    let mut invite = pair::invite(&inviter, code, unix_now() + 60, issuer(&library, inviter.id())).unwrap();
    // The invite is announced by its rendezvous library, for mDNS.
    assert!(inviter.libraries().contains(&Code::rendezvous(code.nameplate())));

    // The attacker saw the nameplate and answers for it with a code of its own.
    let mut fake = Code::generate();
    while fake == code {
        fake = Code::generate();
    }
    let mut attack = pair::invite(&attacker, fake, unix_now() + 60, issuer(&Library::new(), attacker.id())).unwrap();

    let joined = pair::join(&joiner, code, &[attacker.id(), inviter.id()]).await.unwrap();
    assert_eq!((joined.inviter, joined.role, joined.name.as_str()), (inviter.id(), Role::Member, "photos"));
    assert_eq!(joined.membership.library, library.lib);
    assert_eq!(invite.next().await.unwrap(), joiner.id());
    assert!(matches!(attack.next().await, Err(PairError::Mismatch | PairError::RefusedByPeer(_))));

    // The membership opens tunnels to the inviter.
    let i_libs = Arc::new(MemoryLibraries::default());
    i_libs.insert(library.membership(inviter.id(), Role::Admin));
    serve_counting(&inviter, i_libs);
    let j_libs = MemoryLibraries::default();
    j_libs.insert(joined.membership);
    let tunnel = Tunnel::open(&joiner, &j_libs, library.lib.id, inviter.id()).await.unwrap();
    assert_eq!(tunnel.role(), Role::Admin);

    // The code is spent.
    let err = pair::join(&late, code, &[inviter.id()]).await.unwrap_err();
    assert!(matches!(&err, PairError::RefusedByPeer(r) if r.contains("used already")), "{err}");
    drop(invite);
    assert!(!inviter.libraries().contains(&Code::rendezvous(code.nameplate())));
    for n in [inviter, joiner, attacker, late] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_close_the_invite_even_for_the_right_code() {
    let library = Library::new();
    let ((inviter, i_addr), (guesser, _)) = (node().await, node().await);
    knows(&guesser, &inviter, i_addr);
    let code = Code::generate();
    let mut invite = pair::invite(&inviter, code, unix_now() + 60, issuer(&library, inviter.id())).unwrap();
    let mut guesses = 0;
    while guesses < warren_tunnel::pairing::ATTEMPTS {
        let guess = Code::generate();
        if guess == code {
            continue;
        }
        let err = pair::join(&guesser, guess, &[inviter.id()]).await.unwrap_err();
        assert_eq!(err, PairError::Mismatch);
        assert!(invite.next().await.is_err());
        guesses += 1;
    }
    let err = pair::join(&guesser, code, &[inviter.id()]).await.unwrap_err();
    assert!(matches!(&err, PairError::RefusedByPeer(r) if r.contains("too many wrong codes")), "{err}");
    inviter.shutdown().await;
    guesser.shutdown().await;
}
