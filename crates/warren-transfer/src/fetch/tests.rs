use super::*;
use crate::manifest::Entry;
use crate::tree::{GROUP, Outboard};

/// Files of these sizes, with their bytes, and their manifest.
fn content(sizes: &[u64]) -> (Manifest, Vec<Vec<u8>>) {
    let datas: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(f, &size)| (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(f as u8)).collect())
        .collect();
    let entries = datas
        .iter()
        .enumerate()
        .map(|(f, data)| Entry {
            // Padded: the manifest sorts its entries by path, and the tests index them as made.
            path: format!("f{f:04}"),
            size: data.len() as u64,
            mode: 0o644,
            hash: *blake3::hash(data).as_bytes(),
        })
        .collect();
    (Manifest::new(entries).unwrap(), datas)
}

/// What an honest sender brings for `planned`: the outboard, or each group's bytes.
enum Answer {
    Outboard(Vec<[u8; 32]>),
    Groups(Vec<Vec<u8>>),
}

fn answer(datas: &[Vec<u8>], planned: &Planned) -> Answer {
    let data = &datas[planned.file];
    match &planned.request {
        Request::Outboard { .. } => Answer::Outboard(Outboard::of(data).cvs().to_vec()),
        Request::Groups { ranges, .. } => Answer::Groups(
            ranges
                .iter()
                .flat_map(|&(s, e)| s..e)
                .map(|i| {
                    let r = group_range(data.len() as u64, i);
                    data[r.start as usize..r.end as usize].to_vec()
                })
                .collect(),
        ),
        Request::Files { hashes } => Answer::Groups(
            hashes
                .iter()
                .map(|hash| {
                    datas.iter().find(|d| blake3::hash(d).as_bytes() == hash).expect("a file asked for").clone()
                })
                .collect(),
        ),
        Request::Manifest { .. } => unreachable!("the fetch never asks for the manifest"),
    }
}

/// Runs the fetch to the end with honest `peers`, writing into buffers; returns them and how
/// many group bytes were fetched.
fn run(fetch: &mut Fetch<u32>, datas: &[Vec<u8>], peers: &[u32]) -> (Vec<Vec<u8>>, u64) {
    let mut out: Vec<Vec<u8>> = datas.iter().map(|d| vec![0; d.len()]).collect();
    let mut fetched = 0;
    let mut rounds = 0;
    while !fetch.is_done() {
        rounds += 1;
        assert!(rounds < 100_000, "no progress");
        let mut planned = Vec::new();
        for peer in peers {
            while let Some(p) = fetch.next_request(peer) {
                planned.push((*peer, p));
            }
        }
        assert!(!planned.is_empty(), "nothing to ask for but not done");
        for (peer, p) in planned {
            match answer(datas, &p) {
                Answer::Outboard(cvs) => fetch.on_outboard(&peer, p.id, cvs).unwrap(),
                Answer::Groups(groups) => {
                    for group in groups {
                        let accepted = fetch.on_group(&peer, p.id, &group).unwrap();
                        let at = accepted.offset as usize;
                        out[accepted.file][at..at + group.len()].copy_from_slice(&group);
                        fetched += group.len() as u64;
                    }
                }
            }
        }
    }
    (out, fetched)
}

#[test]
fn one_peer_fetches_every_file_and_each_byte_once() {
    let (manifest, datas) = content(&[0, 100, GROUP, 5 * GROUP + 7, 300 * GROUP]);
    let mut fetch = Fetch::new(&manifest, Config::default());
    let (out, fetched) = run(&mut fetch, &datas, &[1]);
    assert_eq!(out, datas);
    assert_eq!(fetched, manifest.total_size(), "nothing fetched twice");
    assert_eq!(fetch.progress(), (manifest.total_size(), manifest.total_size()));
}

#[test]
fn peers_get_different_ranges_and_one_leaving_loses_nothing() {
    let (manifest, datas) = content(&[1000 * GROUP]);
    let mut fetch = Fetch::new(&manifest, Config::default());
    // The outboard first (one peer), then groups.
    let outboard = fetch.next_request(&1).unwrap();
    assert!(fetch.next_request(&2).is_none(), "one outboard request at a time");
    let Answer::Outboard(cvs) = answer(&datas, &outboard) else { unreachable!() };
    fetch.on_outboard(&1, outboard.id, cvs).unwrap();
    let a = fetch.next_request(&1).unwrap();
    let b = fetch.next_request(&2).unwrap();
    let (Request::Groups { ranges: ra, .. }, Request::Groups { ranges: rb, .. }) = (&a.request, &b.request) else {
        unreachable!()
    };
    assert!(ra[0].1 <= rb[0].0 || rb[0].1 <= ra[0].0, "disjoint: {ra:?} {rb:?}");
    // Peer 2 brings half its request, then leaves; its other requests are released too.
    while fetch.next_request(&2).is_some() {}
    let Answer::Groups(groups) = answer(&datas, &b) else { unreachable!() };
    for group in &groups[..groups.len() / 2] {
        fetch.on_group(&2, b.id, group).unwrap();
    }
    fetch.remove_peer(&2);
    assert_eq!(fetch.in_flight(&2), 0);
    // Peer 1 finishes everything; the half peer 2 brought is not asked for again.
    let Answer::Groups(groups) = answer(&datas, &a) else { unreachable!() };
    for group in groups {
        fetch.on_group(&1, a.id, &group).unwrap();
    }
    let before = fetch.progress().0;
    let (_, fetched) = run(&mut fetch, &datas, &[1]);
    assert_eq!(before + fetched, manifest.total_size());
    assert!(fetch.is_done());
}

#[test]
fn what_failed_requests_did_not_bring_is_counted_once_as_asked_again() {
    let (manifest, datas) = content(&[64 * GROUP + 100]);
    let config = Config { groups_per_request: 8, requests_per_peer: 2, ..Config::default() };
    let mut fetch = Fetch::new(&manifest, config);
    let outboard = fetch.next_request(&1).unwrap();
    let Answer::Outboard(cvs) = answer(&datas, &outboard) else { unreachable!() };
    fetch.on_outboard(&1, outboard.id, cvs).unwrap();
    fetch.on_failed(999); // an unknown id changes nothing
    assert_eq!(fetch.requeued(), 0);
    let groups_of = |planned: &Planned| -> Vec<u64> {
        let Request::Groups { ranges, .. } = &planned.request else { unreachable!() };
        ranges.iter().flat_map(|&(s, e)| s..e).collect()
    };
    let mut failed = std::collections::BTreeSet::new();
    // A request brings 3 of its 8 groups, then breaks: 5 groups go back.
    let first = fetch.next_request(&1).unwrap();
    let Answer::Groups(groups) = answer(&datas, &first) else { unreachable!() };
    for group in &groups[..3] {
        fetch.on_group(&1, first.id, group).unwrap();
    }
    fetch.on_failed(first.id);
    failed.extend(&groups_of(&first)[3..]);
    assert_eq!(fetch.requeued(), 5 * GROUP);
    // Asked again, from the first group not brought, and failing again (a provider still
    // away): the groups that failed before count once.
    let again = fetch.next_request(&1).unwrap();
    assert_eq!(groups_of(&again)[0], groups_of(&first)[3]);
    fetch.on_failed(again.id);
    failed.extend(groups_of(&again));
    assert_eq!(fetch.requeued(), failed.len() as u64 * GROUP);
    assert!(failed.len() < 5 + 8, "some counted once though they failed twice");
    // A peer removed with requests in flight: what they asked for, each group once.
    let a = fetch.next_request(&2).unwrap();
    let b = fetch.next_request(&2).unwrap();
    fetch.remove_peer(&2);
    failed.extend(groups_of(&a).into_iter().chain(groups_of(&b)));
    assert_eq!(fetch.requeued(), failed.len() as u64 * GROUP);
    // And all of it is fetched in the end, each byte once more.
    let (_, fetched) = run(&mut fetch, &datas, &[1]);
    assert_eq!(3 * GROUP + fetched, manifest.total_size());
    assert!(fetch.is_done());
}

#[test]
fn a_lying_peer_is_caught_within_one_group_and_nothing_it_sent_is_accepted() {
    let (manifest, datas) = content(&[64 * GROUP]);
    let mut fetch = Fetch::new(&manifest, Config { groups_per_request: 16, requests_per_peer: 1, ..Config::default() });
    let outboard = fetch.next_request(&9).unwrap();
    let Answer::Outboard(cvs) = answer(&datas, &outboard) else { unreachable!() };
    fetch.on_outboard(&9, outboard.id, cvs).unwrap();
    let p = fetch.next_request(&9).unwrap();
    let Answer::Groups(mut groups) = answer(&datas, &p) else { unreachable!() };
    groups[3][5] ^= 0x40;
    for group in &groups[..3] {
        fetch.on_group(&9, p.id, group).unwrap();
    }
    let error = fetch.on_group(&9, p.id, &groups[3]).unwrap_err();
    assert!(matches!(error, FetchError::Verify(VerifyError::WrongGroup { index: 3 })), "{error}");
    assert_eq!(fetch.progress().0, 3 * GROUP, "only the three good groups count");
    assert!(!fetch.is_verified(0, 3));
    // The liar is gone; what it was asked for goes to an honest peer, which completes the file.
    assert_eq!(fetch.in_flight(&9), 0);
    assert!(fetch.on_group(&9, p.id, &groups[4]).is_err(), "its late answers are refused");
    let (out, _) = run(&mut fetch, &datas, &[1]);
    assert_eq!(out[0][3 * GROUP as usize..], datas[0][3 * GROUP as usize..]);
}

#[test]
fn a_wrong_outboard_or_an_unasked_answer_is_refused() {
    let (manifest, datas) = content(&[10 * GROUP]);
    let mut fetch = Fetch::new(&manifest, Config::default());
    let p = fetch.next_request(&1).unwrap();
    let Answer::Outboard(mut cvs) = answer(&datas, &p) else { unreachable!() };
    cvs[2][0] ^= 1;
    assert!(matches!(fetch.on_outboard(&1, p.id, cvs), Err(FetchError::Verify(VerifyError::WrongRoot))));
    assert!(fetch.outboard(0).is_none());
    // Answers to requests never made, or made to someone else.
    assert!(matches!(fetch.on_group(&1, 999, &[0; 10]), Err(FetchError::Unexpected { .. })));
    let p = fetch.next_request(&2).unwrap();
    assert!(fetch.on_outboard(&3, p.id, Vec::new()).is_err());
    let Answer::Outboard(cvs) = answer(&datas, &p) else { unreachable!() };
    fetch.on_outboard(&2, p.id, cvs).unwrap();
    // A group of the wrong length.
    let p = fetch.next_request(&2).unwrap();
    assert!(matches!(fetch.on_group(&2, p.id, &[0; 5]), Err(FetchError::Verify(VerifyError::WrongGroupLength { .. }))));
}

#[test]
fn a_resumed_fetch_asks_only_for_what_is_not_verified() {
    let (manifest, datas) = content(&[100 * GROUP + 1]);
    let mut first = Fetch::new(&manifest, Config::default());
    let p = first.next_request(&1).unwrap();
    let Answer::Outboard(cvs) = answer(&datas, &p) else { unreachable!() };
    first.on_outboard(&1, p.id, cvs.clone()).unwrap();
    // A restart: the outboard and the groups kept on disk (here every even one) come back.
    let mut resumed = Fetch::new(&manifest, Config::default());
    resumed.set_outboard(0, cvs).unwrap();
    for index in (0..101).step_by(2) {
        resumed.mark_verified(0, index);
    }
    let kept = resumed.progress().0;
    let (out, fetched) = run(&mut resumed, &datas, &[1]);
    for index in (1..101).step_by(2) {
        let r = group_range(datas[0].len() as u64, index);
        assert_eq!(out[0][r.start as usize..r.end as usize], datas[0][r.start as usize..r.end as usize]);
    }
    assert_eq!(kept + fetched, manifest.total_size(), "each missing group fetched once");
    assert_eq!(fetched, 50 * GROUP, "the odd groups only");
}

#[test]
fn a_bitfield_keeps_its_bits_and_ignores_the_outside() {
    let mut bits = Bitfield::new(130);
    bits.set(0, true);
    bits.set(129, true);
    bits.set(130, true);
    assert!(bits.get(0) && bits.get(129) && !bits.get(130) && !bits.get(64));
    let again = Bitfield::from_words(130, bits.words().to_vec()).unwrap();
    assert_eq!(again, bits);
    assert!(Bitfield::from_words(130, vec![0; 2]).is_none());
}

#[test]
fn small_files_go_many_to_a_request_within_the_limits() {
    // 200 files of one group each (some empty, one exactly a group), with a large file among
    // them: the small ones go 64 to a request, never with more than a request's bytes.
    let mut sizes: Vec<u64> = (0..200).map(|i| [0, 1, 4096, GROUP][i % 4]).collect();
    sizes.insert(50, 3 * GROUP);
    let (manifest, datas) = content(&sizes);
    let mut fetch = Fetch::new(&manifest, Config { groups_per_request: 32, ..Config::default() });
    let mut requests = Vec::new();
    while let Some(p) = fetch.next_request(&1) {
        requests.push(p);
    }
    for p in &requests {
        if let Request::Files { hashes } = &p.request {
            assert!(hashes.len() <= MAX_FILES_PER_REQUEST && hashes.len() > 1);
            assert!(p.bytes <= 32 * GROUP, "{} bytes in one request", p.bytes);
        }
    }
    let files: usize =
        requests.iter().map(|p| if let Request::Files { hashes } = &p.request { hashes.len() } else { 0 }).sum();
    assert!(files > 100, "most small files were batched in the first requests: {files}");
    // Every file arrives, each byte once.
    let mut fetch = Fetch::new(&manifest, Config::default());
    let (out, fetched) = run(&mut fetch, &datas, &[1, 2]);
    assert_eq!(out, datas);
    assert_eq!(fetched, manifest.total_size());
}

#[test]
fn a_lie_in_a_batch_of_small_files_keeps_the_files_before_it_and_gives_the_rest_to_others() {
    let (manifest, datas) = content(&[4096; 10]);
    let mut fetch = Fetch::new(&manifest, Config::default());
    let p = fetch.next_request(&9).unwrap();
    let Request::Files { hashes } = &p.request else { panic!("one request for the ten: {:?}", p.request) };
    assert_eq!(hashes.len(), 10);
    assert_eq!(p.bytes, 10 * 4096);
    // The liar sends files 0 and 1, then file 3's bytes where file 2's belong.
    let Answer::Groups(mut files) = answer(&datas, &p) else { unreachable!() };
    files.swap(2, 3);
    fetch.on_group(&9, p.id, &files[0]).unwrap();
    let accepted = fetch.on_group(&9, p.id, &files[1]).unwrap();
    assert_eq!((accepted.file, accepted.offset, accepted.file_done), (1, 0, true));
    let error = fetch.on_group(&9, p.id, &files[2]).unwrap_err();
    assert!(matches!(error, FetchError::Verify(VerifyError::WrongGroup { index: 0 })), "{error}");
    assert!(fetch.file_done(0) && fetch.file_done(1) && !fetch.file_done(2));
    assert_eq!(fetch.in_flight(&9), 0, "the liar holds nothing");
    // An honest peer brings the other eight, in one request.
    let q = fetch.next_request(&1).unwrap();
    let Request::Files { hashes } = &q.request else { panic!("{:?}", q.request) };
    assert_eq!(hashes.len(), 8);
    assert!(fetch.next_request(&1).is_none(), "nothing else is left to ask for");
    let Answer::Groups(files) = answer(&datas, &q) else { unreachable!() };
    for file in &files {
        fetch.on_group(&1, q.id, file).unwrap();
    }
    assert!(fetch.is_done());
}

#[test]
fn groups_that_could_not_be_written_are_unverified_and_asked_for_again() {
    let (manifest, datas) = content(&[40 * GROUP, 100, 200]);
    let mut fetch = Fetch::new(&manifest, Config { groups_per_request: 8, ..Config::default() });
    let outboard = fetch.next_request(&1).unwrap();
    let Answer::Outboard(cvs) = answer(&datas, &outboard) else { unreachable!() };
    fetch.on_outboard(&1, outboard.id, cvs).unwrap();
    let p = fetch.next_request(&1).unwrap();
    let Answer::Groups(groups) = answer(&datas, &p) else { unreachable!() };
    for group in &groups {
        fetch.on_group(&1, p.id, group).unwrap();
    }
    assert_eq!(fetch.progress().0, 8 * GROUP);
    // The disk refused groups 3 to 7: only 0 to 2 stay verified, and the bitfield says so.
    for index in 3..8 {
        fetch.unverify(0, index);
    }
    fetch.unverify(0, 3); // twice changes nothing
    assert_eq!(fetch.progress().0, 3 * GROUP);
    assert_eq!(fetch.verified_bits(0)[0], 0b111);
    // Everything else is fetched, the unwritten groups among it, each once.
    let (out, fetched) = run(&mut fetch, &datas, &[1]);
    assert_eq!(fetched, manifest.total_size() - 3 * GROUP);
    assert_eq!(out[0][3 * GROUP as usize..], datas[0][3 * GROUP as usize..]);
    assert!(fetch.is_done());
}
