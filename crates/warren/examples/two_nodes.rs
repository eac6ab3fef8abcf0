//! Two warren nodes in one process: Bob serves a tiny "greet/1" protocol, Alice connects to him
//! by his identity and gets a greeting. Shows the event bus, protocol routing and shutdown.
//!
//! Run it with: `cargo run -p warren --example two_nodes`

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{Event, Identity, P2P, Stream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Each node has its own identity; a real program keeps it with Identity::load_or_create.
    let alice = P2P::new("example", Identity::generate());
    let bob = P2P::new("example", Identity::generate());
    alice.metadata_mut().insert("name", "alice")?;
    bob.metadata_mut().insert("name", "bob")?;

    // Bob answers "greet/1" streams: he reads a name and says hello, naming who he verified.
    bob.register_protocol("greet/1", |mut stream: Stream| async move {
        let mut name = String::new();
        if stream.read_to_string(&mut name).await.is_ok() {
            let reply = format!("hello {name}, your key is {}", stream.remote());
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.finish();
        }
    })?;

    let mut bob_events = bob.subscribe();
    let bob_addr = bob.listen_quic("127.0.0.1:0".parse()?).await?.local_addr();
    alice.listen_quic("127.0.0.1:0".parse()?).await?;

    // Alice learns where Bob is (here by hand; discovery hooks do this for real).
    alice.discovered("manual", bob.id(), [bob_addr], Default::default());
    let mut stream = alice.connect(bob.id(), "greet/1").await?;
    stream.write_all(b"alice").await?;
    stream.finish()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    println!("bob says: {reply}");

    // Bob's event bus saw Alice arrive, with the metadata from her hello.
    loop {
        if let Event::PeerConnected { remote, metadata, .. } = bob_events.recv().await? {
            println!("bob saw {} connect ({remote})", metadata["name"]);
            break;
        }
    }

    drop(stream);
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}
