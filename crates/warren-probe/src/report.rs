//! What a probe found, and the anonymised report it submits.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// RFC 4787 behaviour, for mapping or filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address- and port-dependent.
    AddressAndPortDependent,
}

impl Behaviour {
    /// Every behaviour, most permissive first.
    pub const ALL: [Behaviour; 3] =
        [Behaviour::EndpointIndependent, Behaviour::AddressDependent, Behaviour::AddressAndPortDependent];

    /// The kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// Bounds on how long an idle UDP binding lives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetime {
    /// Alive after this many seconds idle.
    pub at_least_s: f64,
    /// Gone after this many seconds idle (None: alive at the longest wait tried).
    pub at_most_s: Option<f64>,
}

/// Version of the report format.
pub const REPORT_VERSION: u32 = 1;

/// Largest report accepted, as JSON.
pub const MAX_REPORT: usize = 4096;

/// Longest lifetime a report may claim (a day).
pub const MAX_LIFETIME_S: f64 = 86_400.0;

/// What is submitted to the collector: behaviour only, no addresses unless the user asked
/// (`--include-ip`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// No response at all to UDP.
    pub udp_blocked: bool,
    /// The mapped address is the local one: no NAT.
    pub no_nat: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Option<Behaviour>,
    /// Filtering behaviour.
    pub filtering: Option<Behaviour>,
    /// Packets to our own mapped address come back.
    pub hairpin: Option<bool>,
    /// The NAT kept our local port.
    pub port_preserved: Option<bool>,
    /// Binding lifetime bounds (only with `--lifetime`).
    pub lifetime: Option<Lifetime>,
    /// More than one NAT between us and the server, where the data shows it.
    pub double_nat: Option<bool>,
    /// The public address, only if the user chose to include it.
    pub public_ip: Option<IpAddr>,
    /// The probe's name and version.
    pub software: String,
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Over [`MAX_REPORT`].
    #[error("report of {0} bytes is over the {MAX_REPORT}-byte limit")]
    TooLarge(usize),
    /// Not the JSON of a report.
    #[error("malformed report: {0}")]
    Malformed(String),
    /// Well-formed but impossible.
    #[error("invalid report: {0}")]
    Invalid(String),
}

impl Report {
    /// A report of this version and software with nothing measured yet.
    pub fn empty() -> Self {
        Report {
            version: REPORT_VERSION,
            udp_blocked: false,
            no_nat: None,
            mapping: None,
            filtering: None,
            hairpin: None,
            port_preserved: None,
            lifetime: None,
            double_nat: None,
            public_ip: None,
            software: crate::stun::SOFTWARE.into(),
        }
    }

    /// Parses and checks a submitted report.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_REPORT {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        let report: Report = serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))?;
        report.check()?;
        Ok(report)
    }

    /// Checks what the types cannot say.
    pub fn check(&self) -> Result<(), ReportError> {
        let invalid = |why: &str| Err(ReportError::Invalid(why.into()));
        if self.version != REPORT_VERSION {
            return invalid(&format!("version {} (this collector reads {REPORT_VERSION})", self.version));
        }
        if self.software.is_empty() || self.software.len() > 64 || self.software.chars().any(char::is_control) {
            return invalid("software must be 1-64 printable characters");
        }
        if self.udp_blocked && (self.mapping.is_some() || self.filtering.is_some()) {
            return invalid("UDP blocked, yet a mapping or filtering was measured");
        }
        if let Some(life) = self.lifetime {
            let ok = |v: f64| v.is_finite() && (0.0..=MAX_LIFETIME_S).contains(&v);
            if !ok(life.at_least_s) || life.at_most_s.is_some_and(|m| !ok(m) || m < life.at_least_s) {
                return invalid("lifetime bounds out of range");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: REPORT_VERSION,
            udp_blocked: false,
            no_nat: Some(false),
            mapping: Some(Behaviour::EndpointIndependent),
            filtering: Some(Behaviour::AddressAndPortDependent),
            hairpin: Some(true),
            port_preserved: Some(true),
            lifetime: Some(Lifetime { at_least_s: 30.0, at_most_s: Some(60.0) }),
            double_nat: None,
            public_ip: None,
            software: "warren-probe test".into(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let good = serde_json::to_vec(&report()).unwrap();
        assert_eq!(Report::parse(&good).unwrap(), report());
        assert!(matches!(Report::parse(&vec![b' '; MAX_REPORT + 1]), Err(ReportError::TooLarge(_))));
        assert!(matches!(Report::parse(b"{"), Err(ReportError::Malformed(_))));
        let extra = String::from_utf8(good.clone()).unwrap().replacen('{', "{\"secret\":1,", 1);
        assert!(matches!(Report::parse(extra.as_bytes()), Err(ReportError::Malformed(_))));
        let bad_mapping = String::from_utf8(good).unwrap().replace("endpoint-independent", "sideways");
        assert!(matches!(Report::parse(bad_mapping.as_bytes()), Err(ReportError::Malformed(_))));
        for broken in [
            Report { version: 9, ..report() },
            Report { software: String::new(), ..report() },
            Report { udp_blocked: true, ..report() },
            Report { lifetime: Some(Lifetime { at_least_s: -1.0, at_most_s: None }), ..report() },
            Report { lifetime: Some(Lifetime { at_least_s: 10.0, at_most_s: Some(5.0) }), ..report() },
        ] {
            let bytes = serde_json::to_vec(&broken).unwrap();
            assert!(matches!(Report::parse(&bytes), Err(ReportError::Invalid(_))), "{broken:?}");
        }
    }
}
