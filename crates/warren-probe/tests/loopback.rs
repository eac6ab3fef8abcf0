//! The probe against its own server on loopback (127.0.0.1 and 127.0.0.2): no NAT, so
//! endpoint-independent everything; a report goes to the collector and shows in the catalogue;
//! bad reports are refused; the server never answers with more than it received.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_probe::catalog::Store;
use warren_probe::client::{self, ProbeOptions};
use warren_probe::report::Behaviour;
use warren_probe::server::{ProbeServer, ServerConfig};

fn temp_db(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-probe-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("reports.db")
}

async fn server(db: Option<std::path::PathBuf>) -> ProbeServer {
    let config =
        ServerConfig { primary: "127.0.0.1:0".parse().unwrap(), alternate: "127.0.0.2:0".parse().unwrap(), db };
    ProbeServer::spawn(config).await.unwrap()
}

#[tokio::test]
async fn probe_submit_catalog_round_trip() {
    let db = temp_db("round-trip");
    let server = server(Some(db.clone())).await;
    let mut opts = ProbeOptions::new(server.primary());
    opts.lifetime = Some(vec![Duration::from_millis(300), Duration::from_millis(600)]);
    let result = client::probe(&opts, |_| {}).await.unwrap();
    assert!(!result.findings.udp_blocked);
    assert_eq!(result.findings.no_nat, Some(true), "{result:?}");
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent));
    assert_eq!(result.findings.filtering, Some(Behaviour::EndpointIndependent));
    assert_eq!(result.other, Some(server.alternate()));
    // Without a NAT nothing expires.
    let life = result.findings.lifetime.unwrap();
    assert!((0.6..=0.8).contains(&life.at_least_s) && life.at_most_s.is_none(), "{life:?}");

    let report = result.report(false);
    assert_eq!(report.public_ip, None, "anonymised by default");
    let id = client::submit(server.primary(), &report).await.unwrap();
    let with_ip = result.report(true);
    assert_eq!(with_ip.public_ip, Some("127.0.0.1".parse().unwrap()));
    client::submit(server.primary(), &with_ip).await.unwrap();

    // A bad report is refused with a reason, and nothing is stored.
    let mut bad = report.clone();
    bad.version = 99;
    let error = client::submit(server.primary(), &bad).await.unwrap_err();
    assert!(error.contains("version"), "{error}");
    let mut raw = tokio::net::TcpStream::connect(server.primary()).await.unwrap();
    raw.write_all(b"{\"not\":\"a report\"}\n").await.unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).await.unwrap();
    assert!(reply.contains("\"ok\":false") && reply.contains("malformed"), "{reply}");

    let stats = server.stats();
    assert_eq!((stats.reports_stored, stats.reports_refused), (2, 2));
    // Unpadded requests get the bare 56-byte RFC 5780 answer, never more.
    assert!(stats.bytes_out <= stats.answered * 56, "{stats:?}");
    server.shutdown().await;

    let store = Store::open_read_only(&db).unwrap();
    assert!(store.has(id).unwrap());
    let catalog = store.catalog().unwrap();
    assert_eq!(catalog.reports, 2);
    assert_eq!(catalog.no_nat, 2);
    assert_eq!(catalog.mapping_by_filtering["endpoint-independent"]["endpoint-independent"], 2);
    assert!((0.6..=0.8).contains(&catalog.lifetime_s.unwrap().p50));
    let table = catalog.render();
    assert!(table.contains("2 reports"), "{table}");
    std::fs::remove_dir_all(db.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn hostile_datagrams_get_no_more_than_they_sent() {
    let server = server(None).await;
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let good = warren_probe::stun::padded_request([3; 12], Default::default(), warren_probe::stun::PADDED_SIZE);
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        good[..19].to_vec(),
        [&good[..4], &[1, 2, 3, 4], &good[8..]].concat(),
        {
            let mut g = good.clone();
            g[22] = 0xff;
            g
        },
        vec![0u8; 3000],
    ];
    datagrams.extend((0..100u8).map(|i| vec![i; 20 + usize::from(i) * 7]));
    for d in &datagrams {
        attacker.send_to(d, server.primary()).await.unwrap();
    }
    // Still serving real clients.
    let result = client::probe(&ProbeOptions::new(server.primary()), |_| {}).await.unwrap();
    assert_eq!(result.findings.mapping, Some(Behaviour::EndpointIndependent));
    // An unpadded 20-byte request gets the bare 56-byte RFC 5780 answer, nothing bigger. It is
    // asked until answered (the garbage spent the address's rate budget); the server reads its
    // socket in order, so the first datagram back being this answer shows none of the garbage
    // got one.
    // Its own transaction id, unlike every garbage datagram built from `good`.
    let bare: Vec<u8> = good[..20]
        .iter()
        .copied()
        .enumerate()
        .map(|(i, b)| match i {
            3 => 0,
            8.. => 9,
            _ => b,
        })
        .collect();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            attacker.send_to(&bare, server.primary()).await.unwrap();
            if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), attacker.recv_from(&mut buf)).await
            {
                break n;
            }
        }
    })
    .await
    .expect("the bare request is answered");
    let first = warren_probe::stun::response(&buf[..n]).map(|r| r.tid);
    assert_eq!(first, Some([9; 12]), "the attacker's garbage got an answer ({n} bytes)");
    assert_eq!(n, 56);
    let stats = server.stats();
    // Dropped as malformed, or (the attacker shares 127.0.0.1 with the probe) over the rate.
    assert!(stats.dropped + stats.rate_limited >= datagrams.len() as u64, "{stats:?}");
    // Unpadded requests get the bare 56-byte RFC 5780 answer, never more.
    assert!(stats.bytes_out <= stats.answered * 56, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited() {
    let server = server(None).await;
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..1000u32 {
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&i.to_le_bytes());
        flooder.send_to(&warren_probe::stun::request(tid, Default::default()), server.primary()).await.unwrap();
    }
    // Wait until the server has refused most of the flood (at most 10 s; loopback itself may
    // drop some of it when the socket buffer fills).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.stats().rate_limited <= 500 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = server.stats();
    assert!(stats.rate_limited > 500, "{stats:?}");
    assert!(stats.answered <= 200, "{stats:?}");
    server.shutdown().await;
}
