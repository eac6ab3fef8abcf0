//! `warren discover`: lists the warren nodes on the LAN (mDNS) as they appear and leave.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use warren::discovery::mdns::{DiscoveryMode, MdnsDiscovery};
use warren::{Event, Identity, P2P};

use crate::library::{Ask, ClaimChecker, Proof};
use crate::output::json_line;

#[derive(Args)]
pub struct DiscoverArgs {
    /// Stop after this many seconds [default: run until Ctrl-C].
    #[arg(long)]
    timeout: Option<f64>,
    /// One JSON object per line: `{"event":"appeared"|"left"|"proved"|"not_proved", …}`.
    #[arg(long)]
    json: bool,
    /// The data directory whose libraries (`warren library`) to check claims against: a peer
    /// announcing one of them is asked to prove it in a library tunnel, to which this device
    /// shows its own membership certificate first [default: $WARREN_DATA_DIR, else
    /// ~/.local/share/warren].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

pub async fn run(args: DiscoverArgs) -> anyhow::Result<()> {
    let deadline = match args.timeout {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Some(Instant::now() + Duration::from_secs_f64(secs)),
        Some(secs) => anyhow::bail!("--timeout {secs}: give a number of seconds"),
        None => None,
    };
    // With libraries to check, this device's identity (a member proves itself to members);
    // otherwise a throwaway one: browsing is all this does, and it must be a node to take part.
    let dir = crate::data_dir(args.data_dir)?;
    let store = crate::library::existing_store(&dir)?;
    let identity = match &store {
        Some(_) => Identity::load_or_create(&dir)?,
        None => Identity::generate(),
    };
    let p2p = P2P::new("warren", identity);
    let (proofs, mut proved) = tokio::sync::mpsc::unbounded_channel();
    let checker = store.map(|store| ClaimChecker::new(&p2p, store, Ask::Anyone, proofs));
    let mut events = p2p.subscribe();
    let quic = p2p.listen_quic("0.0.0.0:0".parse()?).await?;
    let mdns = MdnsDiscovery::spawn(&p2p, quic.local_addr().port(), DiscoveryMode::Enabled);
    let started = Instant::now();
    let mut seen: BTreeMap<warren::RemoteIdentity, Instant> = BTreeMap::new();
    if !args.json {
        println!("looking for warren nodes on the LAN ({})", mdns.service_type());
    }
    loop {
        let wait = deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::MAX);
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(wait) => break,
            event = events.recv() => event,
            Some(proof) = proved.recv() => {
                Proof::print(&proof, args.json);
                continue;
            }
        };
        match event {
            Ok(Event::PeerDiscovered { remote, source, addrs, metadata })
                if source == warren::discovery::mdns::SOURCE =>
            {
                let first = *seen.entry(remote).or_insert_with(Instant::now);
                let claimed = mdns.libraries_of(&remote);
                if let Some(checker) = &checker {
                    // Each claim to a library this device is in is checked in a tunnel.
                    checker.check(remote, &claimed);
                }
                let libraries: Vec<String> = claimed.iter().map(ToString::to_string).collect();
                let get = |key: &str| metadata.get(key).cloned().unwrap_or_default();
                if args.json {
                    json_line(&serde_json::json!({
                        "event": "appeared",
                        "identity": remote,
                        "name": get("name"),
                        "os": get("os"),
                        "device_model": get("device_model"),
                        "version": get("version"),
                        "libraries": libraries,
                        // Anyone can announce any library: a claim, not proof of membership.
                        "libraries_proven": false,
                        "addrs": addrs,
                        "age_ms": first.elapsed().as_millis() as u64,
                        "since_start_ms": started.elapsed().as_millis() as u64,
                    }));
                } else {
                    println!(
                        "+ {remote}  {}  {} {}  v{}  claims libraries {:?} (unproven)  at {}",
                        get("name"),
                        get("os"),
                        get("device_model"),
                        get("version"),
                        libraries,
                        addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
            }
            Ok(Event::PeerExpired { remote, source, .. }) if source == warren::discovery::mdns::SOURCE => {
                let age = seen.remove(&remote).map(|first| first.elapsed().as_millis() as u64).unwrap_or(0);
                if args.json {
                    json_line(&serde_json::json!({"event": "left", "identity": remote, "age_ms": age}));
                } else {
                    println!("- {remote}  left after {:.1} s", age as f64 / 1e3);
                }
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
    p2p.shutdown().await;
    Ok(())
}
