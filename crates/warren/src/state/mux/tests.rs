use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::wire::mux::Frame;

struct Pair {
    now: Instant,
    dialler: Mux,
    acceptor: Mux,
    /// Messages and bytes that went each way.
    sent: [(usize, usize); 2],
}

impl Pair {
    fn new(acceptor: Config) -> Self {
        Self {
            now: Instant::now(),
            dialler: Mux::new(Side::Dialler, Config::full()),
            acceptor: Mux::new(Side::Acceptor, acceptor),
            sent: [(0, 0); 2],
        }
    }

    /// Delivers messages both ways until neither has anything to send.
    fn pump(&mut self) {
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let mut moved = false;
            if self.dialler.poll_transmit(self.now, &mut out) {
                assert!(out.len() <= MAX_MESSAGE);
                self.sent[0].0 += 1;
                self.sent[0].1 += out.len();
                self.acceptor.handle_message(self.now, &out);
                moved = true;
            }
            if self.acceptor.poll_transmit(self.now, &mut out) {
                assert!(out.len() <= MAX_MESSAGE);
                self.sent[1].0 += 1;
                self.sent[1].1 += out.len();
                self.dialler.handle_message(self.now, &out);
                moved = true;
            }
            if !moved {
                assert!(!self.dialler.wants_transmit() && !self.acceptor.wants_transmit());
                return;
            }
        }
        panic!("the pair never went quiet");
    }
}

fn read_all(mux: &mut Mux, now: Instant, id: u64) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    loop {
        match mux.read(now, id, 100_000).unwrap() {
            Read::Data(bytes) => got.extend_from_slice(&bytes),
            Read::End => return (got, true),
            Read::Blocked => return (got, false),
        }
    }
}

fn events(mux: &mut Mux) -> Vec<Event> {
    std::iter::from_fn(|| mux.poll_event()).collect()
}

#[test]
fn a_stream_carries_its_bytes_and_its_end_both_ways() {
    let mut pair = Pair::new(Config::full());
    let id = pair.dialler.open(Kind::Bi).unwrap().unwrap();
    assert_eq!(id, 0);
    pair.dialler.write(id, &mut Bytes::from_static(b"ping")).unwrap();
    pair.dialler.finish(id).unwrap();
    pair.pump();
    assert!(events(&mut pair.acceptor).contains(&Event::Incoming(Kind::Bi)));
    assert_eq!(pair.acceptor.accept(Kind::Bi).unwrap(), Some(0));
    assert_eq!(read_all(&mut pair.acceptor, pair.now, 0), (b"ping".to_vec(), true));
    pair.acceptor.write(0, &mut Bytes::from_static(b"pong")).unwrap();
    pair.acceptor.finish(0).unwrap();
    pair.pump();
    assert_eq!(read_all(&mut pair.dialler, pair.now, 0), (b"pong".to_vec(), true));
    // Both halves done and dropped: the stream is gone on both sides.
    for mux in [&mut pair.dialler, &mut pair.acceptor] {
        mux.drop_send(0);
        mux.drop_recv(0);
        assert_eq!(mux.stream_count(), 0);
    }
    // The acceptor's streams are odd, unidirectional ones have bit 1.
    assert_eq!(pair.acceptor.open(Kind::Bi).unwrap(), Some(1));
    assert_eq!(pair.acceptor.open(Kind::Uni).unwrap(), Some(3));
    assert_eq!(pair.dialler.open(Kind::Uni).unwrap(), Some(2));
    // The round trip was measured on the way.
    assert!(pair.dialler.rtt().is_some());
}

#[test]
fn flow_control_holds_the_writer_and_the_window_grows_for_a_fast_reader() {
    let mut pair = Pair::new(Config::full());
    let id = pair.dialler.open(Kind::Bi).unwrap().unwrap();
    let payload: Vec<u8> = (0..40 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut data = Bytes::from(payload.clone());
    // Before any window: the initial connection window is all it may queue.
    let first = pair.dialler.write(id, &mut data).unwrap();
    assert_eq!(first as u64, INITIAL_CONN_WINDOW);
    let mut received = Vec::new();
    let mut writes_blocked = 0;
    pair.pump();
    let mut biggest = 0;
    while received.len() < payload.len() {
        let taken = pair.dialler.write(id, &mut data).unwrap();
        if taken == 0 {
            writes_blocked += 1;
        }
        if data.is_empty() {
            let _ = pair.dialler.finish(id);
        }
        pair.pump();
        let _ = pair.acceptor.accept(Kind::Bi);
        let (got, _) = read_all(&mut pair.acceptor, pair.now, id);
        received.extend_from_slice(&got);
        biggest = biggest.max(pair.acceptor.streams.get(&id).and_then(|s| s.recv.as_ref()).map_or(0, |r| r.window));
        // Never more buffered than the windows allow.
        assert!(pair.acceptor.buffered() <= Config::full().max_stream_window);
        pair.now += Duration::from_micros(50);
    }
    assert!(received == payload, "{} bytes received of {}", received.len(), payload.len());
    assert!(writes_blocked > 0, "the writer waited for windows");
    assert_eq!(biggest, Config::full().max_stream_window, "a reader that keeps up gets the largest window");
    // Messages were full: about 64 KiB each.
    let (messages, bytes) = pair.sent[0];
    assert!(bytes / messages > 60_000, "{bytes} bytes in {messages} messages");
}

#[test]
fn resets_and_stops_carry_their_codes() {
    let mut pair = Pair::new(Config::full());
    let a = pair.dialler.open(Kind::Bi).unwrap().unwrap();
    pair.dialler.write(a, &mut Bytes::from_static(b"header")).unwrap();
    pair.pump();
    pair.acceptor.accept(Kind::Bi).unwrap();
    // The acceptor refuses: it resets its half and stops reading ours.
    pair.acceptor.reset(a, 18);
    pair.acceptor.stop(a, 18);
    pair.pump();
    assert_eq!(pair.dialler.read(pair.now, a, 10), Err(StreamError::Reset(18)));
    assert_eq!(pair.dialler.write(a, &mut Bytes::from_static(b"more")), Err(StreamError::Stopped(18)));
    assert_eq!(pair.dialler.send_settled(a), Some(Some(18)));
    // Finishing a stopped stream is moot, not an error (the peer read what it needed).
    assert_eq!(pair.dialler.finish(a), Ok(()));
    // A reset drops what was unsent; the reader sees the code, not the bytes.
    let b = pair.dialler.open(Kind::Uni).unwrap().unwrap();
    pair.dialler.write(b, &mut Bytes::from_static(b"lost")).unwrap();
    pair.dialler.reset(b, 7);
    pair.pump();
    assert_eq!(pair.acceptor.accept(Kind::Uni).unwrap(), Some(b));
    assert_eq!(pair.acceptor.read(pair.now, b, 10), Err(StreamError::Reset(7)));
}

#[test]
fn stream_limits_wait_for_admission_and_slots_come_back() {
    let mut pair = Pair::new(Config::unadmitted());
    let mut opened = Vec::new();
    while let Some(id) = pair.dialler.open(Kind::Bi).unwrap() {
        pair.dialler.write(id, &mut Bytes::from_static(b"x")).unwrap();
        opened.push(id);
    }
    assert_eq!(opened.len() as u64, INITIAL_STREAMS_BI);
    pair.pump();
    // The node admits the peer: 128 at once.
    pair.acceptor.set_config(Config::full());
    pair.pump();
    assert!(events(&mut pair.dialler).contains(&Event::CanOpen(Kind::Bi)));
    let mut more = 0;
    while pair.dialler.open(Kind::Bi).unwrap().is_some() {
        more += 1;
    }
    assert_eq!(more, 128 - INITIAL_STREAMS_BI);
    // Streams that end give their slot back: a thousand in turn through one slot of uni.
    for round in 0..1000 {
        let id = pair.dialler.open(Kind::Uni).unwrap().unwrap_or_else(|| panic!("round {round}: no slot"));
        pair.dialler.write(id, &mut Bytes::from_static(b"hello")).unwrap();
        pair.dialler.finish(id).unwrap();
        pair.dialler.drop_send(id);
        pair.pump();
        let got = pair.acceptor.accept(Kind::Uni).unwrap().unwrap();
        assert_eq!(read_all(&mut pair.acceptor, pair.now, got), (b"hello".to_vec(), true));
        pair.acceptor.drop_recv(got);
        pair.pump();
    }
}

/// Sends `frames` from the dialler side as one hand-made message; returns the acceptor's state.
fn hostile(frames: &[Frame<'_>]) -> Pair {
    let mut pair = Pair::new(Config::unadmitted());
    let mut message = Vec::new();
    for frame in frames {
        frame.encode(&mut message);
    }
    pair.acceptor.handle_message(pair.now, &message);
    pair
}

fn assert_violation(mut pair: Pair, what: &str) {
    let reason = pair.acceptor.close_reason().cloned();
    assert!(
        matches!(&reason, Some(ConnectionError::Transport(r)) if r.contains(what)),
        "expected a violation about {what:?}, got {reason:?}"
    );
    // The peer is told why, with the protocol-violation code.
    let mut out = Vec::new();
    assert!(pair.acceptor.poll_transmit(pair.now, &mut out));
    let close = Frames::new(&out).next().unwrap().unwrap();
    assert!(matches!(close, Frame::Close { code: PROTOCOL_VIOLATION, .. }), "{close:?}");
    assert!(!pair.acceptor.poll_transmit(pair.now, &mut out));
    assert!(pair.acceptor.is_drained());
}

#[test]
fn a_hostile_peer_breaking_limits_is_closed_with_the_reason() {
    let big = vec![0; 60_000];
    // A ninth stream before admission.
    assert_violation(hostile(&[Frame::Data { id: 8 << 2, data: b"", fin: false }]), "more streams than allowed");
    // A second unidirectional stream.
    assert_violation(hostile(&[Frame::Data { id: 6, data: b"", fin: false }]), "more streams than allowed");
    // More than the connection's window (64 KiB unadmitted), over two streams.
    assert_violation(
        hostile(&[Frame::Data { id: 0, data: &big, fin: false }, Frame::Data { id: 4, data: &big, fin: false }]),
        "the connection's window",
    );
    // Data after the end.
    assert_violation(
        hostile(&[Frame::Data { id: 0, data: b"a", fin: true }, Frame::Data { id: 0, data: b"b", fin: false }]),
        "after the end",
    );
    // Frames naming streams of the acceptor it never opened.
    assert_violation(hostile(&[Frame::Window { id: 1, max: 1 << 40 }]), "never opened");
    assert_violation(hostile(&[Frame::Data { id: 3, data: b"", fin: false }]), "unidirectional stream of ours");
    // Garbage.
    let mut pair = Pair::new(Config::unadmitted());
    pair.acceptor.handle_message(pair.now, &[0xee, 1, 2, 3]);
    assert_violation(pair, "unknown frame type");
}

#[test]
fn a_stream_beyond_its_window_is_a_violation() {
    let mut pair = Pair::new(Config::full());
    pair.acceptor.set_config(Config::full());
    pair.pump();
    // A new stream gets the configured window (2 MiB) at once; the peer sends 2.4 MB.
    let big = vec![0; 60_000];
    for _ in 0..40 {
        let mut message = Vec::new();
        Frame::Data { id: 0, data: &big, fin: false }.encode(&mut message);
        pair.acceptor.handle_message(pair.now, &message);
    }
    assert_violation(pair, "a stream's window");
}

#[test]
fn close_carries_code_and_reason_and_fails_everything_after() {
    let mut pair = Pair::new(Config::full());
    let id = pair.dialler.open(Kind::Bi).unwrap().unwrap();
    pair.dialler.write(id, &mut Bytes::from_static(b"x")).unwrap();
    pair.pump();
    pair.acceptor.accept(Kind::Bi).unwrap();
    pair.acceptor.close(1, b"wrong identity");
    pair.pump();
    let closed = ConnectionError::Closed { code: 1, reason: "wrong identity".into() };
    assert_eq!(pair.dialler.close_reason(), Some(&closed));
    assert!(events(&mut pair.dialler).contains(&Event::Closed));
    assert_eq!(pair.dialler.write(id, &mut Bytes::from_static(b"y")), Err(StreamError::Connection(closed.clone())));
    assert_eq!(pair.dialler.open(Kind::Bi), Err(closed.clone()));
    assert_eq!(pair.acceptor.open(Kind::Bi), Err(ConnectionError::LocallyClosed));
    assert!(pair.acceptor.is_drained() && pair.dialler.is_drained());
}

#[test]
fn keep_alives_keep_a_quiet_connection_and_silence_times_it_out() {
    let mut pair = Pair::new(Config::full());
    pair.pump();
    let start = pair.now;
    // Two minutes of quiet, woken at each timeout: keep-alives keep both open.
    while pair.now < start + Duration::from_secs(120) {
        let next = pair.dialler.poll_timeout().unwrap().min(pair.acceptor.poll_timeout().unwrap());
        assert!(next > pair.now);
        pair.now = next;
        pair.dialler.handle_timeout(pair.now);
        pair.acceptor.handle_timeout(pair.now);
        pair.pump();
    }
    assert!(pair.dialler.close_reason().is_none() && pair.acceptor.close_reason().is_none());
    // Now the acceptor hears nothing more: it times out 30 s after the last message.
    let last = pair.now;
    loop {
        let next = pair.acceptor.poll_timeout().unwrap();
        pair.now = next;
        pair.acceptor.handle_timeout(pair.now);
        let mut out = Vec::new();
        while pair.acceptor.poll_transmit(pair.now, &mut out) {}
        if pair.acceptor.close_reason().is_some() {
            break;
        }
    }
    assert_eq!(pair.acceptor.close_reason(), Some(&ConnectionError::TimedOut));
    assert_eq!(pair.now - last, Config::full().idle_timeout);
}

#[test]
fn random_bytes_never_panic_and_many_streams_interleave() {
    // Hostile messages: a cheap generator, thousands of them.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5_000 {
        let mut pair = Pair::new(Config::unadmitted());
        let len = (next() % 64) as usize;
        let message: Vec<u8> = (0..len).map(|_| (next() % 12) as u8).collect();
        pair.acceptor.handle_message(pair.now, &message);
        let mut out = Vec::new();
        while pair.acceptor.poll_transmit(pair.now, &mut out) {}
    }
    // Twenty streams written in random slices, in random order: every byte arrives on its own.
    let mut pair = Pair::new(Config::full());
    pair.acceptor.set_config(Config::full());
    pair.pump();
    let payloads: Vec<Vec<u8>> =
        (0..20).map(|s| (0..(next() % 300_000) as usize).map(|i| (i * s) as u8).collect()).collect();
    let mut left: Vec<(u64, Bytes)> =
        payloads.iter().map(|p| (pair.dialler.open(Kind::Bi).unwrap().unwrap(), Bytes::from(p.clone()))).collect();
    let mut got = vec![Vec::new(); payloads.len()];
    let mut ended = vec![false; payloads.len()];
    for _ in 0..100_000 {
        if ended.iter().all(|e| *e) {
            break;
        }
        let i = (next() % left.len() as u64) as usize;
        let (id, data) = &mut left[i];
        if data.is_empty() {
            let _ = pair.dialler.finish(*id);
            pair.pump();
            continue;
        }
        let mut slice = data.slice(..data.len().min((next() % 50_000) as usize));
        let taken = pair.dialler.write(*id, &mut slice).unwrap();
        let _ = data.split_to(taken);
        if data.is_empty() {
            let _ = pair.dialler.finish(*id);
        }
        pair.pump();
        while pair.acceptor.accept(Kind::Bi).unwrap().is_some() {}
        for (s, (id, _)) in left.iter().enumerate() {
            if !ended[s] && pair.acceptor.streams.contains_key(id) {
                let (bytes, end) = read_all(&mut pair.acceptor, pair.now, *id);
                got[s].extend_from_slice(&bytes);
                ended[s] = end;
            }
        }
    }
    for (s, (got, sent)) in got.iter().zip(&payloads).enumerate() {
        assert!(got == sent, "stream {s}: {} bytes of {}", got.len(), sent.len());
    }
}
