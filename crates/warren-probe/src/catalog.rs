//! The report store (SQLite, one row per report) and the catalogue of router behaviour.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::report::{Behaviour, Report};

/// The reports table.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    udp_blocked INTEGER NOT NULL,
    no_nat INTEGER,
    mapping TEXT,
    filtering TEXT,
    hairpin INTEGER,
    port_preserved INTEGER,
    lifetime_at_least_s REAL,
    lifetime_at_most_s REAL,
    double_nat INTEGER,
    public_ip TEXT,
    software TEXT NOT NULL
)";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("report store: {0}")]
pub struct StoreError(#[from] rusqlite::Error);

/// The report store.
pub struct Store {
    db: Connection,
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.execute(SCHEMA, [])?;
        Ok(Self { db })
    }

    /// Opens an existing store read-only.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok(Self { db })
    }

    /// Adds a (checked) report; returns its row id.
    pub fn add(&self, report: &Report, received_at: i64) -> Result<i64, StoreError> {
        let name = |b: Option<Behaviour>| b.map(Behaviour::name);
        self.db.execute(
            "INSERT INTO reports (received_at, udp_blocked, no_nat, mapping, filtering, hairpin, port_preserved,
             lifetime_at_least_s, lifetime_at_most_s, double_nat, public_ip, software)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                received_at,
                report.udp_blocked,
                report.no_nat,
                name(report.mapping),
                name(report.filtering),
                report.hairpin,
                report.port_preserved,
                report.lifetime.map(|l| l.at_least_s),
                report.lifetime.and_then(|l| l.at_most_s),
                report.double_nat,
                report.public_ip.map(|ip| ip.to_string()),
                report.software,
            ],
        )?;
        Ok(self.db.last_insert_rowid())
    }

    /// How many reports.
    pub fn count(&self) -> Result<u64, StoreError> {
        Ok(self.db.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Does a report with this id exist?
    pub fn has(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.db.query_row("SELECT 1 FROM reports WHERE id = ?1", [id], |_| Ok(())).optional()?.is_some())
    }

    /// Sums the reports up.
    pub fn catalog(&self) -> Result<Catalog, StoreError> {
        let mut catalog = Catalog::default();
        let mut statement = self.db.prepare(
            "SELECT udp_blocked, mapping, filtering, hairpin, port_preserved, lifetime_at_least_s, double_nat, no_nat
             FROM reports",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, bool>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<bool>>(3)?,
                row.get::<_, Option<bool>>(4)?,
                row.get::<_, Option<f64>>(5)?,
                row.get::<_, Option<bool>>(6)?,
                row.get::<_, Option<bool>>(7)?,
            ))
        })?;
        let mut lifetimes = Vec::new();
        for row in rows {
            let (blocked, mapping, filtering, hairpin, preserved, lifetime, double_nat, no_nat) = row?;
            catalog.reports += 1;
            catalog.udp_blocked += u64::from(blocked);
            catalog.no_nat += u64::from(no_nat == Some(true));
            catalog.double_nat += u64::from(double_nat == Some(true));
            let key = |b: Option<String>| b.unwrap_or_else(|| "unknown".into());
            if !blocked {
                *catalog.mapping_by_filtering.entry(key(mapping)).or_default().entry(key(filtering)).or_default() += 1;
            }
            count(&mut catalog.hairpin, hairpin);
            count(&mut catalog.port_preserved, preserved);
            lifetimes.extend(lifetime);
        }
        lifetimes.sort_by(f64::total_cmp);
        if !lifetimes.is_empty() {
            let at = |p: f64| lifetimes[((lifetimes.len() - 1) as f64 * p).round() as usize];
            catalog.lifetime_s =
                Some(Percentiles { count: lifetimes.len() as u64, p10: at(0.1), p50: at(0.5), p90: at(0.9) });
        }
        Ok(catalog)
    }
}

fn count(counts: &mut YesNo, value: Option<bool>) {
    match value {
        Some(true) => counts.yes += 1,
        Some(false) => counts.no += 1,
        None => counts.unknown += 1,
    }
}

/// Yes, no, not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct YesNo {
    /// Yes.
    pub yes: u64,
    /// No.
    pub no: u64,
    /// Not measured.
    pub unknown: u64,
}

/// Binding lifetime percentiles (of the "alive at least" bound), in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Reports with a lifetime.
    pub count: u64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
}

/// How common each behaviour is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Catalog {
    /// Reports in all.
    pub reports: u64,
    /// Reports where UDP was blocked.
    pub udp_blocked: u64,
    /// Reports with no NAT at all.
    pub no_nat: u64,
    /// Counts by mapping, then filtering (`unknown` where not measured).
    pub mapping_by_filtering: BTreeMap<String, BTreeMap<String, u64>>,
    /// Hairpinning.
    pub hairpin: YesNo,
    /// Port preservation.
    pub port_preserved: YesNo,
    /// Reports showing more than one NAT.
    pub double_nat: u64,
    /// Binding lifetimes, if any report measured one.
    pub lifetime_s: Option<Percentiles>,
}

impl Catalog {
    /// The human table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} reports ({} with UDP blocked, {} without NAT)\n\n",
            self.reports, self.udp_blocked, self.no_nat
        );
        let columns: Vec<&str> = Behaviour::ALL.iter().map(|b| b.name()).chain(["unknown"]).collect();
        out += &format!("{:<28}", "mapping \\ filtering");
        for c in &columns {
            out += &format!(" {c:>26}");
        }
        out += "\n";
        for row in &columns {
            out += &format!("{row:<28}");
            for c in &columns {
                let n = self.mapping_by_filtering.get(*row).and_then(|m| m.get(*c)).copied().unwrap_or(0);
                out += &format!(" {n:>26}");
            }
            out += "\n";
        }
        let yes_no = |y: &YesNo| format!("yes {}, no {}, not measured {}", y.yes, y.no, y.unknown);
        out += &format!("\nhairpinning      {}\n", yes_no(&self.hairpin));
        out += &format!("port preserved   {}\n", yes_no(&self.port_preserved));
        out += &format!("double NAT       {}\n", self.double_nat);
        match self.lifetime_s {
            Some(p) => {
                out += &format!(
                    "binding lifetime p10 {} s, median {} s, p90 {} s ({} reports)\n",
                    p.p10, p.p50, p.p90, p.count
                )
            }
            None => out += "binding lifetime not measured by any report\n",
        }
        out
    }
}
