//! `warren netsim …`: the network simulator from the command line. `run` plays a scenario
//! file, `nat-check` measures every NAT the simulator offers (and the real kernel's), `bench`
//! measures forwarding against a veth pair. All need root (network namespaces).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use warren_netsim::KernelPorts;
use warren_netsim::nat::NatPreset;
use warren_netsim::nat_check::{Observed, Subject};
use warren_netsim::scenario::{Line, Outcome, RunOptions, Scenario, Summary};

use crate::output::json_line;

#[derive(Subcommand)]
pub enum NetsimCommand {
    /// Build the topology of a scenario file, run each host's command (output prefixed with
    /// the host's name), and print a summary: exit codes, packets per link, NAT counters.
    Run(RunArgs),
    /// Measure each NAT preset and the kernel NAT from outside with real sockets: mapping,
    /// filtering, port preservation, hairpinning, mapping lifetime, TCP.
    NatCheck(NatCheckArgs),
    /// Forwarding throughput through one simulated link against a veth pair, in the same run.
    Bench(BenchArgs),
    /// Every pair of NAT kinds with a relay on the simulated internet: one node dials the other
    /// by identity; prints the path each pair ends on (direct after a hole punch, or relayed),
    /// the time to first byte and the punch rounds, against what RFC 4787 theory allows.
    /// Exits 1 if a pair failed or did not go direct where theory allows it.
    NatMatrix(NatMatrixArgs),
    /// Relayed throughput as a fraction of direct, in one simulation (two full-cone NATs and a
    /// relay, 100 ms RTT either way), and how long hole punching took.
    RelayBench(RelayBenchArgs),
    /// LEDBAT through one bottleneck (20 Mbit/s, a 250 ms queue, 40 ms RTT by default): uTP
    /// alone (utilisation, added queueing delay), a TCP flow joining and leaving, two uTP flows
    /// (Jain's index). Prints each goal of issue 15 and whether it was met; exits 1 if one was
    /// not.
    LedbatBench(LedbatBenchArgs),
}

#[derive(Args)]
pub struct LedbatBenchArgs {
    /// The bottleneck's rate in Mbit/s.
    #[arg(long, default_value_t = 20)]
    bandwidth_mbit: u64,
    /// One-way latency of the link, ms.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// The drop-tail queue, in ms at the bottleneck rate.
    #[arg(long, default_value_t = 250)]
    queue_ms: u64,
    /// Seconds of each phase of run 1 (uTP alone, with TCP, alone again).
    #[arg(long, default_value_t = 20)]
    phase_secs: u64,
    /// Seconds of run 2 (two uTP flows); their shares are measured over the second half of the
    /// time both run (they take 30 s or more to even out).
    #[arg(long, default_value_t = 90)]
    fair_secs: u64,
    /// The second uTP flow of run 2 starts this many seconds after the first.
    #[arg(long, default_value_t = 5)]
    latecomer_secs: u64,
    /// Print one JSON object: the figures and the goals.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RelayBenchArgs {
    /// Bytes per transfer.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    bytes: u64,
    /// Rounds (each measures direct then relayed); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NatMatrixArgs {
    /// After each pair's connection, a TCP hole punch (simultaneous open, signalled over it),
    /// against its own theory (both NATs keep ports, not both answer SYNs with a RST).
    #[arg(long)]
    tcp: bool,
    /// One JSON object per pair (fields a, b, path, expected, ttfb_ms, punch_ms, attempts,
    /// predicted, error), then one with the summary.
    #[arg(long)]
    json: bool,
    /// Only these kinds (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<crate::nat_matrix::NatKind>()))]
    kinds: Vec<crate::nat_matrix::NatKind>,
    /// Pairs simulated at once.
    #[arg(long, default_value_t = 3)]
    parallel: usize,
    /// Seed of the first pair's simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
pub struct RunArgs {
    /// The scenario (TOML; see docs/netsim.md and scenarios/).
    scenario: PathBuf,
    /// Where relative capture paths go [default: the current directory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// One JSON object per output line, then one with the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct NatCheckArgs {
    /// Give each NAT this UDP timeout (seconds) and check that mappings live that long and no
    /// longer; 0 skips the check.
    #[arg(long, default_value_t = 1)]
    lifetime: u64,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds (each measures veth and the simulator in turn); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(command: NetsimCommand) -> anyhow::Result<()> {
    match command {
        NetsimCommand::Run(args) => run_scenario(args),
        NetsimCommand::NatCheck(args) => nat_check(args),
        NetsimCommand::Bench(args) => bench(args),
        NetsimCommand::NatMatrix(args) => nat_matrix(args),
        NetsimCommand::RelayBench(args) => relay_bench(args),
        NetsimCommand::LedbatBench(args) => ledbat_bench(args),
    }
}

fn ledbat_bench(args: LedbatBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=1000).contains(&args.bandwidth_mbit), "--bandwidth-mbit must be 1 to 1000");
    anyhow::ensure!(
        args.latency_ms <= 500 && (10..=2000).contains(&args.queue_ms),
        "--latency-ms <= 500, --queue-ms 10 to 2000"
    );
    anyhow::ensure!((4..=600).contains(&args.phase_secs), "--phase-secs must be 4 to 600");
    anyhow::ensure!(
        args.latecomer_secs < args.fair_secs && args.fair_secs <= 600,
        "--latecomer-secs must be less than --fair-secs (at most 600)"
    );
    let setup = crate::ledbat_bench::Setup {
        bandwidth_bps: args.bandwidth_mbit * 1_000_000,
        latency_ms: args.latency_ms,
        queue_ms: args.queue_ms,
        phase_secs: args.phase_secs,
        fair_secs: args.fair_secs,
        latecomer_secs: args.latecomer_secs,
    };
    let report = crate::ledbat_bench::run(setup)?;
    let goals = report.goals();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["goals"] = goals.iter().map(|(goal, met)| serde_json::json!({"goal": goal, "met": met})).collect();
        println!("{value}");
    } else {
        let pct = |v: f64| format!("{:.1} %", v * 100.0);
        let secs = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.1} s"));
        println!(
            "LEDBAT through {} Mbit/s, {} ms queue, {} ms RTT idle (measured {:.1} ms)",
            args.bandwidth_mbit,
            args.queue_ms,
            2 * args.latency_ms,
            report.idle_rtt_ms
        );
        println!(
            "  uTP alone          {} of the link, queueing delay added {:.1} ms (median), {:.1} ms (p95)",
            pct(report.utp_alone_utilisation),
            report.utp_alone_added_delay_ms,
            report.utp_alone_added_delay_p95_ms
        );
        println!(
            "  TCP joins          TCP at 80 % after {}, then TCP {} and uTP {}",
            secs(report.tcp_to_80_percent_secs),
            pct(report.tcp_utilisation),
            pct(report.utp_with_tcp_utilisation)
        );
        println!(
            "  TCP leaves         uTP at 80 % after {}, then {}",
            secs(report.utp_recovery_secs),
            pct(report.utp_after_tcp_utilisation)
        );
        println!(
            "  two uTP flows      {} and {} (the second {} s late), Jain's index {:.3}",
            pct(report.two_utp_utilisation[0]),
            pct(report.two_utp_utilisation[1]),
            args.latecomer_secs,
            report.jain_index
        );
        for (goal, met) in &goals {
            println!("  [{}] {goal}", if *met { "met" } else { "NOT met" });
        }
    }
    let missed = goals.iter().filter(|(_, met)| !met).count();
    anyhow::ensure!(missed == 0, "{missed} of {} LEDBAT goals not met", goals.len());
    Ok(())
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario).with_context(|| format!("loading {}", args.scenario.display()))?;
    let me = std::env::current_exe().context("finding the warren binary")?;
    let options = RunOptions {
        env: vec![("WARREN".into(), me.display().to_string())],
        capture_dir: args.out.clone(),
        scenario_dir: std::path::absolute(&args.scenario)?.parent().map(|p| p.to_owned()),
    };
    let width = scenario.hosts.iter().map(|h| h.name.len()).max().unwrap_or(4);
    let json = args.json;
    let summary = scenario.run(&options, |line: Line| {
        if json {
            json_line(&serde_json::json!({
                "host": line.host,
                "stream": if line.stderr { "stderr" } else { "stdout" },
                "line": line.text,
            }));
        } else {
            println!("{:>width$} {} {}", line.host, if line.stderr { "!" } else { "|" }, line.text);
        }
    })?;
    if json {
        json_line(&serde_json::json!({ "summary": summary }));
    } else {
        print_summary(&summary);
    }
    let failed: Vec<String> = summary
        .hosts
        .iter()
        .filter(|(_, outcome)| !outcome.ok())
        .map(|(name, outcome)| format!("{name} ({})", describe(outcome)))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {} hosts failed: {}", failed.len(), summary.hosts.len(), failed.join(", "));
    }
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exited(Some(code)) => format!("exit {code}"),
        Outcome::Exited(None) => "killed by a signal".into(),
        Outcome::Stopped => "daemon, stopped".into(),
        Outcome::TimedOut => "timed out".into(),
        Outcome::Idle => "no command".into(),
    }
}

fn print_summary(summary: &Summary) {
    println!("\nsummary after {:.1} s", summary.elapsed_ms as f64 / 1e3);
    for (name, outcome) in &summary.hosts {
        println!("  host {name:<16} {}", describe(outcome));
    }
    println!("  {:<34} {:>9} {:>9} {:>7} {:>7} {:>5}", "link", "offered", "forwarded", "lost", "queue", "mtu");
    for link in &summary.links {
        println!(
            "  {:<34} {:>9} {:>9} {:>7} {:>7} {:>5}",
            format!("{} -> {}", link.from, link.to),
            link.offered,
            link.forwarded,
            link.lost,
            link.queue_drops,
            link.mtu_drops
        );
    }
    for nat in &summary.nats {
        println!(
            "  nat {:<16} {} mappings, {} out, {} in, {} dropped",
            nat.name, nat.mappings, nat.outbound, nat.inbound, nat.dropped
        );
    }
}

/// The kebab-case name serde gives a behaviour enum.
fn name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| "-".into())
}

fn nat_check(args: NatCheckArgs) -> anyhow::Result<()> {
    let lifetime = (args.lifetime > 0).then(|| Duration::from_secs(args.lifetime));
    let mut subjects: Vec<Subject> = NatPreset::ALL.into_iter().map(Subject::Preset).collect();
    subjects.extend(KernelPorts::ALL.into_iter().map(Subject::Kernel));
    subjects.push(Subject::KernelDropping(KernelPorts::Masquerade));
    let mut results: Vec<Observed> = Vec::new();
    if !args.json {
        println!(
            "{:<32} {:<4} {:<27} {:<27} {:<6} {:<8} {:<11} {:<9} {:<4} unsolicited TCP",
            "NAT", "UDP", "mapping", "filtering", "ports", "hairpin", "stray state", "lifetime", "TCP"
        );
    }
    for (index, subject) in subjects.iter().enumerate() {
        let observed = warren_netsim::nat_check::check(subject, lifetime, index as u64 + 1)
            .with_context(|| format!("checking {}", subject.name()))?;
        if !args.json {
            let yes_no = |b: Option<bool>, yes: &str, no: &str| match b {
                Some(true) => yes.to_owned(),
                Some(false) => no.to_owned(),
                None => "-".into(),
            };
            let life = observed.lifetime.map_or("-".into(), |l| {
                if l.alive_at_half && l.expired_at_one_and_half {
                    format!("{} s ok", l.configured_ms / 1000)
                } else {
                    format!("WRONG ({}/{})", l.alive_at_half, l.expired_at_one_and_half)
                }
            });
            println!(
                "{:<32} {:<4} {:<27} {:<27} {:<6} {:<8} {:<11} {:<9} {:<4} {}",
                observed.subject,
                if observed.udp { "yes" } else { "no" },
                observed.mapping.map_or("-".into(), |m| name(&m)),
                observed.filtering.map_or("-".into(), |f| name(&f)),
                yes_no(observed.port_preserved, "kept", "new"),
                yes_no(observed.hairpin, "yes", "no"),
                yes_no(observed.unsolicited_moves_port, "moves port", "none"),
                life,
                if observed.tcp { "yes" } else { "no" },
                name(&observed.unsolicited_tcp),
            );
        }
        results.push(observed);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "nats": results }))?);
    }
    Ok(())
}

fn nat_matrix(args: NatMatrixArgs) -> anyhow::Result<()> {
    use crate::nat_matrix::{self, NatKind};
    let kinds = if args.kinds.is_empty() { NatKind::ALL.to_vec() } else { args.kinds };
    if !args.json {
        println!("{}", nat_matrix::header());
    }
    let results = nat_matrix::run(&kinds, args.parallel, args.seed, args.tcp, |result| {
        if args.json {
            println!("{}", serde_json::to_string(result).expect("a pair result serialises"));
        } else {
            println!("{}", nat_matrix::row(result));
        }
    });
    let count = |f: &dyn Fn(&nat_matrix::PairResult) -> bool| results.iter().filter(|r| f(r)).count();
    let direct = count(&|r| r.path == "direct");
    let relayed = count(&|r| r.path == "relayed");
    let failed = count(&|r| r.path == "failed");
    let missed = count(&|r| r.expected == "direct" && r.path != "direct");
    let predicted = count(&|r| r.expected == "relayed" && r.path == "direct");
    let tcp = |r: &nat_matrix::PairResult, path: &str, expected: &str| {
        r.tcp.as_ref().is_some_and(|t| t.path == path && t.expected == expected)
    };
    let tcp_direct = count(&|r| r.tcp.as_ref().is_some_and(|t| t.path == "direct"));
    let tcp_missed = count(&|r| tcp(r, "failed", "direct"));
    let tcp_beyond = count(&|r| tcp(r, "direct", "relayed"));
    let ttfb: Vec<f64> = results.iter().filter_map(|r| r.ttfb_ms).collect();
    let punch: Vec<u64> = results.iter().filter_map(|r| r.punch_ms).collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let summary = serde_json::json!({
        "summary": true,
        "pairs": results.len(),
        "direct": direct,
        "relayed": relayed,
        "failed": failed,
        "direct_where_theory_allows_missed": missed,
        "direct_beyond_theory": predicted,
        "methods": {
            "punched": results.iter().filter(|r| r.method == Some("punched")).count(),
            "predicted": results.iter().filter(|r| r.method == Some("predicted")).count(),
            "birthday": results.iter().filter(|r| r.method == Some("birthday")).count(),
            "port-mapping": results.iter().filter(|r| r.method == Some("port-mapping")).count(),
        },
        "tcp": args.tcp.then(|| serde_json::json!({
            "direct": tcp_direct,
            "direct_where_theory_allows_missed": tcp_missed,
            "direct_beyond_theory": tcp_beyond,
        })),
        "ttfb_ms_median": median(ttfb),
        "punch_ms_median": median(punch.iter().map(|&v| v as f64).collect()),
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "\n{} pairs: {direct} direct, {relayed} relayed, {failed} failed; {missed} not direct where theory allows; \
             {predicted} direct beyond plain theory (port prediction, birthday probing); median time to first byte {} ms, median punch {} ms",
            results.len(),
            summary["ttfb_ms_median"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
            summary["punch_ms_median"].as_f64().map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    if args.tcp && !args.json {
        println!(
            "TCP hole punching: {tcp_direct} of {} pairs direct; {tcp_missed} not direct where theory allows; {tcp_beyond} direct beyond it",
            results.len()
        );
    }
    anyhow::ensure!(failed == 0 && missed == 0, "{failed} pairs failed, {missed} not direct where theory allows");
    anyhow::ensure!(tcp_missed == 0, "{tcp_missed} pairs' TCP hole punch not direct where theory allows");
    Ok(())
}

fn relay_bench(args: RelayBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=20).contains(&args.rounds), "--rounds must be 1 to 20");
    anyhow::ensure!((1024..=1 << 30).contains(&args.bytes), "--bytes must be 1 KiB to 1 GiB");
    let result = crate::nat_matrix::relay_bench(args.bytes, args.rounds, 1)?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "relayed against direct, {} MiB x {} rounds (median), 100 ms RTT both ways",
            args.bytes >> 20,
            args.rounds
        );
        println!("  direct (punched)  {:8.1} Mbit/s", result.direct_mbps);
        println!("  relayed           {:8.1} Mbit/s   relayed/direct = {:.2}", result.relayed_mbps, result.ratio);
        println!("  hole punching took {:?} ms from the start of signalling", result.punch_ms);
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    if !(0.1..=600.0).contains(&args.seconds) || !(1..=100).contains(&args.rounds) {
        bail!("--seconds must be between 0.1 and 600, --rounds between 1 and 100");
    }
    let report = warren_netsim::bench::run(Duration::from_secs_f64(args.seconds), args.rounds)?;
    let gbit = |r: warren_netsim::bench::Rate| r.bits_per_sec / 1e9;
    if args.json {
        json_line(&serde_json::json!({
            "seconds": args.seconds,
            "rounds": args.rounds,
            "tcp": {
                "netsim_gbps": gbit(report.sim_tcp),
                "veth_gbps": gbit(report.veth_tcp),
                "ratio_vs_veth": report.tcp_ratio(),
            },
            "udp_1400": {
                "netsim_gbps": gbit(report.sim_udp),
                "netsim_pps": report.sim_udp.packets_per_sec,
                "veth_gbps": gbit(report.veth_udp),
                "veth_pps": report.veth_udp.packets_per_sec,
                "ratio_vs_veth": report.udp_ratio(),
            },
        }));
        return Ok(());
    }
    println!("forwarding, median of {} rounds of {} s per measurement (receiver's rate)", args.rounds, args.seconds);
    println!(
        "  {:<14} {:>12} {:>12} {:>14} {:>14} {:>7}",
        "", "netsim Gb/s", "veth Gb/s", "netsim pkt/s", "veth pkt/s", "ratio"
    );
    for (label, sim, veth, ratio) in [
        ("TCP stream", report.sim_tcp, report.veth_tcp, report.tcp_ratio()),
        ("UDP 1400 B", report.sim_udp, report.veth_udp, report.udp_ratio()),
    ] {
        println!(
            "  {label:<14} {:>12.3} {:>12.3} {:>14.0} {:>14.0} {:>7.3}",
            gbit(sim),
            gbit(veth),
            sim.packets_per_sec,
            veth.packets_per_sec,
            ratio
        );
    }
    println!(
        "targets: TCP >= 1 Gbit/s: {}; >= 50% of veth: TCP {}, UDP {}",
        if gbit(report.sim_tcp) >= 1.0 { "met" } else { "NOT met" },
        if report.tcp_ratio() >= 0.5 { "met" } else { "NOT met" },
        if report.udp_ratio() >= 0.5 { "met" } else { "NOT met" },
    );
    Ok(())
}
