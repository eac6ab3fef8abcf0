//! Transfers between nodes on loopback: a folder arrives whole and verified; a lying provider
//! is caught within one chunk group and nothing it sent reaches a final name; a receive from
//! two providers keeps going when one leaves; an interrupted receive resumes and fetches again
//! at most the groups in flight; hostile paths and a symbolic link in the destination are
//! refused; a disk error, at a checkpoint or a write, stops the receive at once.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use warren::{Identity, P2P, RemoteIdentity, Stream};
use warren_transfer::manifest::Entry;
use warren_transfer::receive::{PARTIAL_DIR, ReceiveError};
use warren_transfer::tree::group_range;
use warren_transfer::wire::{PROTOCOL, PROTOCOL_V1, Request, Response};
use warren_transfer::{Config, GROUP, Hash, Manifest, Outboard, Provider, ReceiveOptions, receive};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-transfer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn node() -> (P2P, SocketAddr) {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let p2p = P2P::builder("warren-test", Identity::generate()).listen_quic(lo).spawn().await.unwrap();
    let addr = p2p.record().addrs[0];
    (p2p, addr)
}

/// A node that knows where each of `peers` listens.
async fn knowing(peers: &[(&P2P, SocketAddr)]) -> P2P {
    let (p2p, _) = node().await;
    for (peer, addr) in peers {
        p2p.discovered("test", peer.id(), [*addr], Default::default());
    }
    p2p
}

/// A node serving `paths` through a [`Provider`], and a receiver that knows its address.
struct Serving {
    sender: P2P,
    provider: Provider,
    manifest: Manifest,
    hash: Hash,
    receiver: P2P,
}

async fn serving(paths: &[PathBuf]) -> Serving {
    let (sender, addr) = node().await;
    let provider = Provider::new();
    provider.register(&sender).unwrap();
    let (manifest, hash) = provider.add_paths(paths).await.unwrap();
    let receiver = knowing(&[(&sender, addr)]).await;
    Serving { sender, provider, manifest, hash, receiver }
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    warren::testing::pseudo_random_bytes(seed, len)
}

/// A folder: nested files of awkward sizes, an empty one, an executable one.
fn folder(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("docs/a.txt".to_string(), bytes(1, 100)),
        ("docs/deep/b.bin".to_string(), bytes(2, 5 * GROUP as usize + 3)),
        ("empty".to_string(), Vec::new()),
        ("one-group".to_string(), bytes(3, GROUP as usize)),
        ("run.sh".to_string(), bytes(4, 2000)),
    ];
    for (path, data) in &files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, data).unwrap();
    }
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    files
}

fn options(out: &Path) -> ReceiveOptions {
    ReceiveOptions { out: out.to_owned(), config: Config::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_arrives_whole_verified_and_with_its_modes() {
    let dir = temp("folder");
    let src = dir.join("src").join("album");
    let files = folder(&src);
    let Serving { sender, manifest, hash, receiver, .. } = serving(std::slice::from_ref(&src)).await;
    assert_eq!(manifest.entries.len(), files.len());
    assert!(manifest.entries.iter().all(|e| e.path.starts_with("album/")), "named by the folder");

    let out = dir.join("out");
    let summary = receive(&receiver, hash, &[sender.id()], options(&out), |_| {}).await.unwrap();
    assert_eq!((summary.files, summary.kept), (files.len(), 0));
    for (path, data) in &files {
        assert_eq!(&std::fs::read(out.join("album").join(path)).unwrap(), data, "{path}");
    }
    let mode = std::fs::metadata(out.join("album/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "executable bits kept");
    assert!(!out.join(PARTIAL_DIR).exists(), "nothing left behind");
    // Receiving again finds everything in place: nothing fetched.
    let again = receive(&receiver, hash, &[sender.id()], options(&out), |_| {}).await.unwrap();
    assert_eq!(again.kept, manifest.total_size());
    assert_eq!(again.fetched.values().sum::<u64>(), 0);
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A provider that answers from memory and can lie: `corrupt` flips a byte of that group.
#[derive(Clone)]
struct Hostile {
    manifest: Arc<Manifest>,
    data: Arc<Vec<u8>>,
    corrupt: Option<u64>,
    /// Stop answering (drop the stream) after this many group bytes.
    stop_after: Option<u64>,
    /// Go silent (keep the stream, send nothing more) after this many group bytes.
    stall_after: Option<u64>,
    sent: Arc<AtomicU64>,
}

impl Hostile {
    fn new(path: &str, data: Vec<u8>) -> Self {
        let entry =
            Entry { path: path.into(), size: data.len() as u64, mode: 0o644, hash: *blake3::hash(&data).as_bytes() };
        let manifest = Manifest { entries: vec![entry] };
        Self {
            manifest: Arc::new(manifest),
            data: Arc::new(data),
            corrupt: None,
            stop_after: None,
            stall_after: None,
            sent: Arc::default(),
        }
    }

    fn hash(&self) -> [u8; 32] {
        *blake3::hash(&warren_proto::encode_to_vec(&*self.manifest).unwrap()).as_bytes()
    }

    fn register(&self, p2p: &P2P) {
        self.register_as(p2p, PROTOCOL);
    }

    fn register_as(&self, p2p: &P2P, protocol: &str) {
        let this = self.clone();
        p2p.register_protocol(protocol, move |stream| {
            let this = this.clone();
            async move { this.serve(stream).await }
        })
        .unwrap();
    }

    async fn serve(&self, mut stream: Stream) {
        let Ok(request) = warren::wire::control::read::<_, Request>(&mut stream).await else { return };
        let body = match request {
            Request::Manifest { .. } => warren_proto::encode_to_vec(&*self.manifest).unwrap(),
            Request::Outboard { .. } => Outboard::of(&self.data).cvs().as_flattened().to_vec(),
            Request::Groups { ranges, .. } => {
                let mut body = Vec::new();
                for (start, end) in ranges {
                    for index in start..end {
                        let range = group_range(self.data.len() as u64, index);
                        let mut group = self.data[range.start as usize..range.end as usize].to_vec();
                        if self.corrupt == Some(index) {
                            group[7] ^= 0x20;
                        }
                        body.extend(group);
                    }
                }
                body
            }
            // It serves one file of several groups: never asked for small files whole.
            Request::Files { .. } => return,
        };
        let _ = warren::wire::control::write(&mut stream, &Response::Ok { len: body.len() as u64 }).await;
        for piece in body.chunks(GROUP as usize) {
            let sent = self.sent.fetch_add(piece.len() as u64, Ordering::Relaxed);
            if self.stop_after.is_some_and(|limit| sent >= limit) {
                return; // the stream is dropped mid-answer
            }
            if self.stall_after.is_some_and(|limit| sent >= limit) {
                std::future::pending::<()>().await; // silent, the stream kept open
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = stream.finish();
    }
}

async fn hostile_node(hostile: &Hostile) -> (P2P, SocketAddr) {
    let (p2p, addr) = node().await;
    hostile.register(&p2p);
    (p2p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_provider_is_caught_within_one_group_and_nothing_reaches_the_final_name() {
    let dir = temp("liar");
    let mut liar = Hostile::new("file.bin", bytes(5, 40 * GROUP as usize));
    liar.corrupt = Some(9);
    let (sender, addr) = hostile_node(&liar).await;
    let receiver = knowing(&[(&sender, addr)]).await;
    let out = dir.join("out");
    let config = Config { groups_per_request: 8, requests_per_peer: 1, ..Config::default() };
    let error = receive(&receiver, liar.hash(), &[sender.id()], ReceiveOptions { out: out.clone(), config }, |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReceiveError::Unavailable { reasons } if reasons[0].contains("group 9 does not match")),
        "{error}"
    );
    assert!(!out.join("file.bin").exists(), "nothing under the final name");
    // The partial file holds the nine good groups and nothing of the bad one.
    let state = std::fs::read_dir(out.join(PARTIAL_DIR)).unwrap().next().unwrap().unwrap().path();
    let part = std::fs::read(state.join("0.part")).unwrap();
    assert_eq!(part.len() as u64, 9 * GROUP, "written up to the lie, not past it");
    assert_eq!(part, liar.data[..9 * GROUP as usize]);
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_share_the_work_and_one_leaving_loses_nothing() {
    let dir = temp("swarm");
    let data = bytes(6, 600 * GROUP as usize);
    let honest = Hostile::new("big.bin", data.clone());
    let mut leaving = Hostile::new("big.bin", data.clone());
    leaving.stop_after = Some(2 * 1024 * 1024);
    let (a, a_addr) = hostile_node(&honest).await;
    let (b, b_addr) = hostile_node(&leaving).await;
    let receiver = knowing(&[(&a, a_addr), (&b, b_addr)]).await;
    let out = dir.join("out");
    let failed = Arc::new(std::sync::Mutex::new(Vec::<RemoteIdentity>::new()));
    let seen = failed.clone();
    let summary = receive(&receiver, honest.hash(), &[a.id(), b.id()], options(&out), move |p| {
        if let warren_transfer::Progress::ProviderFailed { provider, .. } = p {
            seen.lock().unwrap().push(*provider);
        }
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
    let from_b = summary.fetched.get(&b.id()).copied().unwrap_or(0);
    let from_a = summary.fetched[&a.id()];
    assert!(from_b > 0, "the second provider contributed before it left: {:?}", summary.fetched);
    assert_eq!(from_a + from_b, data.len() as u64, "each group fetched once");
    // The leaver's requests failed (it may finish before it is given up); the honest one never.
    assert!(!failed.lock().unwrap().contains(&a.id()), "the honest provider was given up");
    assert!(leaving.sent.load(Ordering::Relaxed) >= 2 * 1024 * 1024, "the leaver stopped mid-way, as set");
    for p2p in [a, b, receiver] {
        p2p.shutdown().await;
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_receive_resumes_and_fetches_again_at_most_what_was_in_flight() {
    let dir = temp("resume");
    let src = dir.join("big.bin");
    let data = bytes(7, 3000 * GROUP as usize);
    std::fs::write(&src, &data).unwrap();
    let Serving { sender, provider, hash, receiver, .. } = serving(&[src]).await;
    let out = dir.join("out");
    let config = Config::default();

    // The first run is cut off a third of the way: its future dropped mid-transfer, as a
    // process killed would leave it (what it wrote is in the page cache, unsynced).
    let first = Arc::new(AtomicU64::new(0));
    let seen = first.clone();
    let cut = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let providers = [sender.id()];
        let run = receive(&receiver, hash, &providers, ReceiveOptions { out: out.clone(), config }, move |p| {
            if let warren_transfer::Progress::Bytes { done, .. } = p {
                seen.store(*done, Ordering::Relaxed);
            }
        });
        tokio::pin!(run);
        loop {
            tokio::select! {
                _ = &mut run => panic!("finished before the cut"),
                () = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
                    if first.load(Ordering::Relaxed) >= data.len() as u64 / 3 {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the first run reached a third");
    let sent_first = provider.stats().bytes;
    assert!(!out.join("big.bin").exists());

    let summary =
        receive(&receiver, hash, &[sender.id()], ReceiveOptions { out: out.clone(), config }, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
    // Everything the provider sent, over both runs, minus the file: sent twice.
    let resent = (provider.stats().bytes - data.len() as u64) as i64;
    let in_flight = config.max_in_flight();
    println!(
        "resume: first run sent {sent_first} bytes, kept {} verified, re-sent {resent} bytes (bound: one group + {in_flight} in flight)",
        summary.kept
    );
    assert!(summary.kept > 0, "the second run kept what the first verified");
    assert!(resent >= 0 && resent as u64 <= GROUP + in_flight, "re-sent {resent}");
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_in_a_manifest_and_a_symlink_in_the_destination_are_refused() {
    let dir = temp("traversal");
    // A provider whose manifest (hashing right) names a path out of the destination.
    let evil = Hostile::new("../escaped", bytes(8, 10));
    let (sender, addr) = hostile_node(&evil).await;
    let receiver = knowing(&[(&sender, addr)]).await;
    let out = dir.join("out");
    let error = receive(&receiver, evil.hash(), &[sender.id()], options(&out), |_| {}).await.unwrap_err();
    assert!(error.to_string().contains("refused path"), "{error}");
    assert!(!dir.join("escaped").exists());
    sender.shutdown().await;

    // An honest folder, but the destination has a symbolic link where its folder goes.
    let src = dir.join("src").join("album");
    folder(&src);
    let (sender, addr) = node().await;
    let provider = Provider::new();
    provider.register(&sender).unwrap();
    let (_, hash) = provider.add_paths(&[src]).await.unwrap();
    receiver.discovered("test", sender.id(), [addr], Default::default());
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("album")).unwrap();
    let error = receive(&receiver, hash, &[sender.id()], options(&out), |_| {}).await.unwrap_err();
    assert!(matches!(error, ReceiveError::InTheWay(_)), "{error}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing written through the link");
    // And a sender refuses to send a link.
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    let refused = provider.add_paths(&[dir.join("link")]).await.unwrap_err();
    assert!(refused.to_string().contains("symbolic link"), "{refused}");
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Asks `provider` for `request` on a raw stream: what it answered, and the bytes after it.
async fn ask_raw(receiver: &P2P, provider: RemoteIdentity, request: &Request) -> (Response, Vec<u8>) {
    ask_raw_on(receiver, provider, PROTOCOL, request).await
}

async fn ask_raw_on(
    receiver: &P2P,
    provider: RemoteIdentity,
    protocol: &str,
    request: &Request,
) -> (Response, Vec<u8>) {
    let mut stream = receiver.connect(provider, protocol).await.unwrap();
    warren::wire::control::write(&mut stream, request).await.unwrap();
    let response = warren::wire::control::read::<_, Response>(&mut stream).await.unwrap();
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await.unwrap();
    (response, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_sent_whole_by_hash_and_nothing_else_is() {
    let dir = temp("files");
    let src = dir.join("src").join("album");
    let files = folder(&src);
    let Serving { sender, manifest, receiver, .. } = serving(std::slice::from_ref(&src)).await;
    let hash_of = |path: &str| manifest.entries.iter().find(|e| e.path == format!("album/{path}")).unwrap().hash;
    let data_of = |path: &str| files.iter().find(|(p, _)| p == path).unwrap().1.clone();
    // Three small files, one of them twice, in the order asked.
    let asked = ["run.sh", "docs/a.txt", "one-group", "run.sh"];
    let request = Request::Files { hashes: asked.iter().map(|p| hash_of(p)).collect() };
    let (response, bytes) = ask_raw(&receiver, sender.id(), &request).await;
    let want: Vec<u8> = asked.iter().flat_map(|p| data_of(p)).collect();
    assert_eq!(response, Response::Ok { len: want.len() as u64 });
    assert_eq!(bytes, want);
    // A file of several groups is not sent whole, nor is a file it does not have, nor nothing.
    for (hashes, why) in [
        (vec![hash_of("run.sh"), hash_of("docs/deep/b.bin")], "more than one group"),
        (vec![hash_of("run.sh"), [7; 32]], "no such file"),
        (Vec::new(), "no files"),
    ] {
        let (response, bytes) = ask_raw(&receiver, sender.id(), &Request::Files { hashes }).await;
        assert!(matches!(&response, Response::Refused { reason } if reason.contains(why)), "{response:?}");
        assert!(bytes.is_empty());
    }
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Unmounts the small filesystem when the test ends, whatever happens.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_nothing_is_left_under_the_final_name_and_the_next_run_resumes() {
    // A 1 MiB filesystem of its own (needs root, as the simulator's tests do), a 3 MiB file.
    let dir = temp("full-disk");
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "warren-full-disk"])
        .arg(&small)
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting a 1 MiB tmpfs needs root (the suite runs as root, like CI)");
    let mounted = Mounted(small.clone());
    let src = dir.join("big.bin");
    std::fs::write(&src, bytes(9, 3 << 20)).unwrap();
    let Serving { sender, hash, receiver, .. } = serving(std::slice::from_ref(&src)).await;

    let error = receive(&receiver, hash, &[sender.id()], options(&small), |_| {}).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ReceiveError::Io { .. }), "{message}");
    assert!(message.contains("no space left on the device"), "{message}");
    assert!(!small.join("big.bin").exists(), "nothing under the final name");
    // Room is made and the same receive runs again: it resumes from what the failed run
    // saved, and what it saved names only groups that reached the disk (the bytes match).
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(&small)
        .status()
        .expect("running mount");
    assert!(status.success());
    let summary = receive(&receiver, hash, &[sender.id()], options(&small), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(small.join("big.bin")).unwrap(), std::fs::read(&src).unwrap());
    assert!(summary.kept > 0, "what reached the disk before it filled was kept");
    sender.shutdown().await;
    receiver.shutdown().await;
    drop(mounted);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_fails_stops_the_receive_at_once() {
    // The provider goes silent after 2 MiB of 8, keeping its streams open: only a stall
    // (20 s) or the failing checkpoint can end the receive.
    let dir = temp("checkpoint-fails");
    let mut silent = Hostile::new("big.bin", bytes(10, 8 << 20));
    silent.stall_after = Some(2 << 20);
    let (sender, addr) = hostile_node(&silent).await;
    let receiver = knowing(&[(&sender, addr)]).await;
    let out = dir.join("out");
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let receiving = {
        let (receiver, out, hash, provider) = (receiver.clone(), out.clone(), silent.hash(), sender.id());
        tokio::spawn(async move {
            receive(&receiver, hash, &[provider], options(&out), move |p| {
                if matches!(p, warren_transfer::Progress::Bytes { done, .. } if *done > 0) {
                    signal.notify_one();
                }
            })
            .await
        })
    };
    started.notified().await;
    // The bitfield's path becomes a folder that is not empty: the checkpoint's atomic
    // replace of it fails (EISDIR/ENOTEMPTY, for root as for anyone).
    let state = std::fs::read_dir(out.join(PARTIAL_DIR)).unwrap().next().unwrap().unwrap().path();
    let bits = state.join("0.bits");
    // (A checkpoint may have written it already, and may again in between.)
    while std::fs::create_dir(&bits).is_err() {
        let _ = std::fs::remove_file(&bits);
    }
    std::fs::create_dir(bits.join("in-the-way")).unwrap();
    let failing = std::time::Instant::now();
    let error =
        tokio::time::timeout(std::time::Duration::from_secs(60), receiving).await.unwrap().unwrap().unwrap_err();
    let took = failing.elapsed();
    let message = error.to_string();
    assert!(matches!(error, ReceiveError::Io { .. }), "{message}");
    assert!(message.contains("0.bits"), "the error names the file: {message}");
    // A checkpoint runs every second; without it, the stall (20 s) would end the receive.
    assert!(took < std::time::Duration::from_secs(10), "the receive went on {took:?} after the checkpoint failed");
    assert!(!out.join("big.bin").exists());
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_or_gone_since_it_was_added_is_refused_not_served() {
    let dir = temp("changed");
    let src = dir.join("src").join("album");
    folder(&src);
    let Serving { sender, provider, manifest, receiver, .. } = serving(std::slice::from_ref(&src)).await;
    let hash_of = |path: &str| manifest.entries.iter().find(|e| e.path == format!("album/{path}")).unwrap().hash;
    std::fs::write(src.join("run.sh"), b"shorter now").unwrap();
    std::fs::remove_file(src.join("docs/deep/b.bin")).unwrap();
    for (request, why) in [
        (Request::Files { hashes: vec![hash_of("docs/a.txt"), hash_of("run.sh")] }, "changed since it was added"),
        (Request::Groups { hash: hash_of("run.sh"), ranges: vec![(0, 1)] }, "changed since it was added"),
        (Request::Groups { hash: hash_of("docs/deep/b.bin"), ranges: vec![(0, 2)] }, "cannot be read"),
    ] {
        let (response, bytes) = ask_raw(&receiver, sender.id(), &request).await;
        assert!(matches!(&response, Response::Refused { reason } if reason.contains(why)), "{response:?}");
        assert!(bytes.is_empty());
    }
    let stats = provider.stats();
    assert_eq!((stats.served, stats.refused, stats.bytes), (0, 3, 0), "{stats:?}");
    sender.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_version_receiver_is_served_and_a_first_version_provider_is_a_clear_error() {
    let dir = temp("versions");
    let src = dir.join("src").join("album");
    let files = folder(&src);
    let Serving { sender, manifest, receiver, .. } = serving(std::slice::from_ref(&src)).await;
    // A receiver of version 1 asks for the manifest and groups on its protocol's name.
    let hash = manifest.hash();
    let (response, encoded) = ask_raw_on(&receiver, sender.id(), PROTOCOL_V1, &Request::Manifest { hash }).await;
    assert_eq!(response, Response::Ok { len: encoded.len() as u64 });
    assert_eq!(Manifest::from_bytes(&encoded, &hash).unwrap(), manifest);
    let entry = manifest.entries.iter().find(|e| e.path == "album/run.sh").unwrap();
    let request = Request::Groups { hash: entry.hash, ranges: vec![(0, 1)] };
    let (_, sent) = ask_raw_on(&receiver, sender.id(), PROTOCOL_V1, &request).await;
    assert_eq!(sent, files.iter().find(|(p, _)| p == "run.sh").unwrap().1);
    sender.shutdown().await;

    // A provider of version 1 only: this receiver says why it cannot fetch from it.
    let old = Hostile::new("file.bin", bytes(11, 100));
    let (p2p, addr) = node().await;
    old.register_as(&p2p, PROTOCOL_V1);
    receiver.discovered("test", p2p.id(), [addr], Default::default());
    let error = receive(&receiver, old.hash(), &[p2p.id()], options(&dir.join("out")), |_| {}).await.unwrap_err();
    assert!(matches!(&error, ReceiveError::Unavailable { .. }), "{error}");
    println!("from a version-1 provider: {error}");
    assert!(error.to_string().contains(PROTOCOL), "names the protocol it lacks: {error}");
    p2p.shutdown().await;
    receiver.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
