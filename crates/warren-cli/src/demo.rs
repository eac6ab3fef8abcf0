//! `warren demo`: the README's main job. Two nodes in one process, connected by identity over
//! loopback: pings both ways, a bulk stream, an impostor and an unknown protocol refused, and a
//! clean shutdown, with a summary.

use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::transport::quic::QuicTransport;
use warren::{ConnectError, Event, Identity, P2P};

use crate::bench::{SINK, send_to_sink, sink};
use crate::output::{json_line, ms, short};

#[derive(Args)]
pub struct DemoArgs {
    /// Bytes to stream from alice to bob.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    bytes: u64,
    /// Print one JSON object with the results instead of the story.
    #[arg(long)]
    json: bool,
}

async fn start(name: &str) -> anyhow::Result<(P2P, QuicTransport)> {
    let p2p = P2P::new("warren-demo", Identity::generate());
    p2p.metadata_mut().insert(warren::p2p::NAME, name)?;
    warren::ping::register(&p2p)?;
    p2p.register_protocol(SINK, sink)?;
    let quic = QuicTransport::spawn(&p2p, "127.0.0.1:0".parse()?).await?;
    Ok((p2p, quic))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    say("warren demo: two nodes in one process, talking over loopback QUIC\n".into());
    let (alice, alice_quic) = start("alice").await?;
    let (bob, bob_quic) = start("bob").await?;
    let mut bob_events = bob.subscribe();
    for (name, node, quic) in [("alice", &alice, &alice_quic), ("bob", &bob, &bob_quic)] {
        say(format!("  {name:<5} {}  listening on {}", node.remote_identity(), quic.local_addr()));
    }

    say("\n1. alice connects to bob by his identity (his address given by hand, like --peer)".into());
    let bob_id = bob.remote_identity();
    alice.discovered("demo", bob_id, [bob_quic.local_addr()], Default::default());
    let started = Instant::now();
    let conn = alice.connection(bob_id).await?;
    let connect_time = started.elapsed();
    let meta = conn.remote_metadata();
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    say(format!(
        "   connected in {} ms; TLS 1.3 with both identities verified; bob's hello: name={} os={} version={} protocols={:?}",
        ms(connect_time),
        get("name"),
        get("os"),
        get("version"),
        conn.remote_protocols()
    ));
    let alice_seen_by_bob = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Event::PeerConnected { remote, .. }) = bob_events.recv().await {
                break remote;
            }
        }
    })
    .await?;
    say(format!("   bob's side: PeerConnected from {}… (learned from the handshake)", short(&alice_seen_by_bob)));

    say("\n2. alice pings bob".into());
    let there = warren::ping::ping(&alice, bob_id, 5).await?;
    say(format!("   5 round trips: {:?} ms", there.iter().map(|d| ms(*d)).collect::<Vec<_>>()));
    say("   bob pings alice back over the same connection (he never learned her address)".into());
    let back = warren::ping::ping(&bob, alice.remote_identity(), 5).await?;
    say(format!("   5 round trips: {:?} ms", back.iter().map(|d| ms(*d)).collect::<Vec<_>>()));

    say(format!("\n3. alice streams {} MiB to bob on one stream", args.bytes / (1024 * 1024)));
    let (mut send, mut recv) = alice.connect(bob_id, SINK).await?.into_split();
    let started = Instant::now();
    let received = send_to_sink(&mut send, &mut recv, args.bytes).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(received == args.bytes, "bob counted {received} bytes, alice sent {}", args.bytes);
    let gbps = args.bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9;
    say(format!("   bob confirms {received} bytes in {} ms: {gbps:.2} Gbit/s", ms(elapsed)));

    say("\n4. someone dials bob's address expecting carol".into());
    let carol = Identity::generate().to_remote_identity();
    let impostor = alice.dial(bob_quic.local_addr(), Some(carol)).await;
    let impostor_refused = matches!(impostor, Err(ConnectError::WrongIdentity { .. }));
    say(format!("   refused: {}", impostor.err().map(|e| e.to_string()).unwrap_or_else(|| "NOT REFUSED".into())));
    anyhow::ensure!(impostor_refused, "dialling the wrong identity was not refused");

    say("\n5. alice asks bob for a protocol he does not speak".into());
    let mut chat = alice.connect(bob_id, "chat/9").await?;
    chat.write_all(b"hi bob").await?;
    let unknown = chat.read_u8().await;
    let unknown_refused = unknown.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::Unsupported);
    say(format!("   refused: {}", unknown.err().map(|e| e.to_string()).unwrap_or_else(|| "NOT REFUSED".into())));
    anyhow::ensure!(unknown_refused, "an unknown protocol was not refused");

    drop((send, recv, chat, conn));
    let started = Instant::now();
    alice.shutdown().await;
    bob.shutdown().await;
    let shutdown_time = started.elapsed();
    say(format!("\n6. both nodes shut down in {} ms, every task finished", ms(shutdown_time)));

    let avg = |rtts: &[Duration]| ms(rtts.iter().sum::<Duration>() / rtts.len() as u32);
    if args.json {
        json_line(&serde_json::json!({
            "alice": alice.remote_identity(),
            "bob": bob_id,
            "connect_ms": ms(connect_time),
            "ping_alice_to_bob_avg_ms": avg(&there),
            "ping_bob_to_alice_avg_ms": avg(&back),
            "stream_bytes": args.bytes,
            "stream_gbps": gbps,
            "wrong_identity_refused": impostor_refused,
            "unknown_protocol_refused": unknown_refused,
            "shutdown_ms": ms(shutdown_time),
        }));
    } else {
        println!("\nsummary");
        println!("  connect by identity   {} ms", ms(connect_time));
        println!("  ping alice -> bob     {} ms average", avg(&there));
        println!("  ping bob -> alice     {} ms average", avg(&back));
        println!("  stream                {gbps:.2} Gbit/s ({} MiB)", args.bytes / (1024 * 1024));
        println!("  wrong identity        refused");
        println!("  unknown protocol      refused");
        println!("  shutdown              {} ms", ms(shutdown_time));
    }
    Ok(())
}
