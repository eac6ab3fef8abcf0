//! How the CLI prints: one JSON object per line for scripts, short sentences for people.

use warren::{Event, RemoteIdentity};

/// Prints `value` as one line of JSON on stdout.
pub fn json_line(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("CLI output serialises"));
}

/// The first 10 characters of an identity: enough to tell peers apart on a screen.
pub fn short(id: &RemoteIdentity) -> String {
    id.to_string()[..10].to_owned()
}

/// Milliseconds with microsecond precision, for printing and JSON.
pub fn ms(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// One line describing an event.
pub fn describe(event: &Event) -> String {
    match event {
        Event::ListenerStarted { hook, addrs } => format!("listening ({hook}) on {}", list(addrs)),
        Event::ListenerStopped { hook } => format!("stopped listening ({hook})"),
        Event::PeerDiscovered { remote, source, addrs, .. } => {
            format!("discovered {remote} via {source} at {}", list(addrs))
        }
        Event::PeerExpired { remote, source, .. } => format!("{source} no longer knows {remote}"),
        Event::PeerConnected { remote, path, transport, direction, metadata, .. } => format!(
            "connected {remote} ({}), {path} over {transport}, {}",
            metadata.get(warren::node::NAME).map(String::as_str).unwrap_or("unnamed"),
            match direction {
                warren::Direction::Inbound => "they dialled",
                warren::Direction::Outbound => "we dialled",
            }
        ),
        Event::PathChanged { remote, path, .. } => format!("path to {remote} is now {path}"),
        Event::TcpHolePunch { remote, direct: Some(addr), elapsed_ms, .. } => {
            format!("TCP hole punched to {remote} at {addr} ({elapsed_ms} ms)")
        }
        Event::TcpHolePunch { remote, direct: None, elapsed_ms, error, .. } => format!(
            "TCP hole punching to {remote} failed after {elapsed_ms} ms: {}",
            error.as_deref().unwrap_or("no path")
        ),
        Event::HolePunch { remote, direct: Some(addr), rounds, elapsed_ms, method, packets, .. } => {
            let how = method.map_or_else(|| "found by the peer".to_owned(), |m| m.to_string());
            format!("hole punched to {remote} at {addr} ({how}; {rounds} rounds, {packets} packets, {elapsed_ms} ms)")
        }
        Event::HolePunch { remote, direct: None, rounds, elapsed_ms, plan, packets, .. } => {
            format!(
                "hole punching to {remote} failed ({plan}; {rounds} rounds, {packets} packets, {elapsed_ms} ms): staying relayed"
            )
        }
        Event::RelayConnected { relay, addr, observed } => {
            format!("registered with relay {relay}@{addr}; it sees us at {observed}")
        }
        Event::RelayDisconnected { relay, reason } => format!("relay {relay}: {reason}"),
        Event::PortMapped { protocol, external, lifetime_s } => {
            format!("port mapped by the gateway ({protocol}): {external}, for {lifetime_s} s")
        }
        Event::PortMapUnavailable { reason } => format!("no port mapping: {reason}"),
        Event::NatClassified { nat, observed } => {
            format!("NAT: {nat} (the relay's two ports saw us at {})", list(observed))
        }
        Event::PeerDisconnected { remote, reason } => format!("disconnected {remote}: {reason}"),
        Event::IncomingRejected { addr, reason } => format!("refused a connection from {addr}: {reason}"),
        Event::MetadataModified { metadata } => format!("metadata is now {metadata:?}"),
        Event::LibrariesModified { libraries } => format!("libraries are now {libraries:?}"),
        Event::Shutdown => "shut down".to_owned(),
        other => format!("{other:?}"),
    }
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

/// Waits for ctrl-c or SIGTERM, calling `print` every `every_secs` seconds meanwhile (never if
/// 0) and once more at the end: the loop of the long-running servers (`relay`, `probe-server`).
pub async fn print_until_stopped(every_secs: u64, mut print: impl FnMut()) -> std::io::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let every = std::time::Duration::from_secs(every_secs.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick(), if every_secs > 0 => print(),
        }
    }
    print();
    Ok(())
}
