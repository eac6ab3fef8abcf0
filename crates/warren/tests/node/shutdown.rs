//! Shutdown stops hooks in reverse order, leaves no task behind and frees the port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren::discovery::manual::{ManualDiscovery, ManualPeer};
use warren::node::{BoxFuture, Hook};
use warren::{Event, Identity, P2P};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_no_task_is_left_and_the_port_is_free() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let (alice, alice_addr) = node().await;
    let (bob, bob_addr) = node().await;
    let peer: ManualPeer = format!("{}@{bob_addr}", bob.id()).parse().unwrap();
    // Subscribe first: the connection may complete before the next statement runs.
    let mut events = alice.subscribe();
    ManualDiscovery::spawn(&alice, [peer]);
    wait_for(&mut events, |e| matches!(e, Event::PeerConnected { .. }).then_some(())).await;
    assert_eq!(echo_once(&alice, bob.id(), b"x").await, b"x");
    warren::ping::ping(&bob, alice.id(), 2).await.unwrap();
    // A handler in the middle of a stream when shutdown comes.
    let _open = alice.connect(bob.id(), ECHO).await.unwrap();
    assert!(metrics.num_alive_tasks() > baseline);

    alice.shutdown().await;
    bob.shutdown().await;
    assert_eq!(alice.running_tasks(), 0, "alice tasks left");
    assert_eq!(bob.running_tasks(), 0, "bob tasks left");
    drop(_open);
    // Both UDP ports can be bound again at once.
    std::net::UdpSocket::bind(alice_addr).expect("alice's port is free");
    std::net::UdpSocket::bind(bob_addr).expect("bob's port is free");
    // The runtime agrees: its count of live tasks is back where it started (a finished task
    // leaves the count just after it signals its tracker, hence the bounded wait).
    tokio::time::timeout(HANG, async {
        while metrics.num_alive_tasks() != baseline {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks alive, {baseline} before", metrics.num_alive_tasks()));
    assert!(matches!(alice.connect(bob.id(), "ping/1").await, Err(warren::ConnectError::ShuttingDown)));
}

struct RecordingHook {
    name: &'static str,
    log: Arc<Mutex<Vec<&'static str>>>,
    hangs: bool,
}

impl Hook for RecordingHook {
    fn name(&self) -> &str {
        self.name
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.log.lock().unwrap().push(self.name);
            if self.hangs {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn hooks_stop_in_reverse_order_and_a_hanging_hook_cannot_block_shutdown() {
    let p2p = P2P::new("warren-test", Identity::generate());
    let log = Arc::new(Mutex::new(Vec::new()));
    for (name, hangs) in [("first", false), ("hangs", true), ("last", false)] {
        p2p.register_hook(Arc::new(RecordingHook { name, log: log.clone(), hangs }));
    }
    let mut events = p2p.subscribe();
    let started = tokio::time::Instant::now();
    p2p.shutdown().await;
    assert_eq!(*log.lock().unwrap(), ["last", "hangs", "first"]);
    let waited = started.elapsed();
    assert!(
        waited >= warren::node::SHUTDOWN_TIMEOUT && waited < warren::node::SHUTDOWN_TIMEOUT + Duration::from_secs(1)
    );
    assert_eq!(events.try_recv().unwrap(), Event::Shutdown);
    // A second shutdown is a no-op.
    p2p.shutdown().await;
    assert_eq!(log.lock().unwrap().len(), 3);
}
