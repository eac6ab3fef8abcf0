//! UPnP IGD (Internet Gateway Device, versions 1 and 2), the part a client of one UDP port
//! mapping needs: the SSDP search and its answer, plain HTTP/1.1 requests and answers, the
//! device description (which service to talk to, at which control URL) and the SOAP actions
//! `GetExternalIPAddress`, `AddPortMapping` and `DeletePortMapping`.
//!
//! Written here rather than taken from `igd-next`: that crate reads a device's description and
//! answers whole, with no size limit, from whichever LAN host answers the search; here every
//! input has a limit ([`MAX_SSDP`], [`MAX_HTTP_RESPONSE`]), URLs are IPv4 literals only (no
//! name lookups on a neighbour's say-so), and XML is read by a small scanner that only looks
//! for the few elements it needs (no entities beyond the five predefined, no DTDs).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

/// SSDP's port.
pub const SSDP_PORT: u16 = 1900;
/// SSDP's multicast group.
pub const SSDP_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 255, 250);
/// The longest SSDP answer read.
pub const MAX_SSDP: usize = 2048;
/// The longest HTTP answer read (headers and body); a description is a few KiB.
pub const MAX_HTTP_RESPONSE: usize = 64 * 1024;
/// What the search asks for.
pub const SEARCH_TARGET: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/// The services that map ports, best first.
pub const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpnpError {
    /// Over its limit.
    #[error("UPnP answer too long ({0} bytes)")]
    TooLong(usize),
    /// Not what HTTP or SSDP looks like.
    #[error("malformed UPnP answer: {0}")]
    Malformed(&'static str),
    /// A URL warren does not follow (not `http://IPv4[:port]/…`).
    #[error("unsupported URL {0:?} (only http:// with an IPv4 address)")]
    Url(String),
    /// The device has no service that maps ports.
    #[error("the gateway has no WANIPConnection or WANPPPConnection service")]
    NoService,
    /// An HTTP status other than 200 without a SOAP fault.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The device refused the action.
    #[error("UPnP error {code} ({description})")]
    Fault {
        /// The UPnP error code (718: the port is mapped to someone else; 725: only permanent
        /// leases).
        code: u16,
        /// The device's description of it.
        description: String,
    },
    /// The exchange failed (connection refused, timed out, too long).
    #[error("{0}")]
    Io(String),
    /// The answer lacks an argument it must carry.
    #[error("the answer has no {0}")]
    Missing(&'static str),
}

/// An `http://` URL with an IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host and port.
    pub addr: SocketAddrV4,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://a.b.c.d[:port][/path]`.
    pub fn parse(s: &str) -> Result<Self, UpnpError> {
        let bad = || UpnpError::Url(s.chars().take(200).collect());
        let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("HTTP://")).ok_or_else(bad)?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (ip, port) = match host.rsplit_once(':') {
            Some((ip, port)) => (ip, port.parse::<u16>().map_err(|_| bad())?),
            None => (host, 80),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        if port == 0 || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad());
        }
        Ok(Self { addr: SocketAddrV4::new(ip, port), path: path.to_owned() })
    }

    /// `reference` resolved against this URL: an absolute URL as it is, a path on this host.
    pub fn join(&self, reference: &str) -> Result<Self, UpnpError> {
        if reference.contains("://") {
            return Self::parse(reference);
        }
        let path = if reference.starts_with('/') { reference.to_owned() } else { format!("/{reference}") };
        Self::parse(&format!("http://{}{}", self.addr, path))
    }
}

/// The SSDP search for an IGD, sent to [`SSDP_GROUP`] (and to the gateway directly).
pub fn m_search() -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {SSDP_GROUP}:{SSDP_PORT}\r\nST: {SEARCH_TARGET}\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n"
    )
    .into_bytes()
}

/// An HTTP-like message split: its first line, its header lines, what follows them.
type Parts<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8]);

/// The header lines of an HTTP-like message, after its first line; and what follows them.
fn headers(b: &[u8]) -> Result<Parts<'_>, UpnpError> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n").ok_or(UpnpError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&b[..end]).map_err(|_| UpnpError::Malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut out = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(UpnpError::Malformed("header without a colon"))?;
        out.push((name.trim(), value.trim()));
    }
    Ok((first, out, &b[end + 4..]))
}

fn header<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// The status code of an HTTP/1.x status line.
fn status(first: &str) -> Result<u16, UpnpError> {
    let mut parts = first.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(UpnpError::Malformed("not an HTTP/1.x answer"));
    }
    parts.next().and_then(|c| c.parse().ok()).ok_or(UpnpError::Malformed("no status code"))
}

/// An SSDP answer to [`m_search`]: where the device's description is.
pub fn parse_ssdp_response(b: &[u8]) -> Result<HttpUrl, UpnpError> {
    if b.len() > MAX_SSDP {
        return Err(UpnpError::TooLong(b.len()));
    }
    let (first, headers, _) = headers(b)?;
    if status(first)? != 200 {
        return Err(UpnpError::Malformed("SSDP answer is not 200 OK"));
    }
    HttpUrl::parse(header(&headers, "location").ok_or(UpnpError::Missing("LOCATION"))?)
}

/// An HTTP/1.1 GET of `url` (the connection closes after the answer).
pub fn get_request(url: &HttpUrl) -> Vec<u8> {
    format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", url.path, url.addr).into_bytes()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// A SOAP request: `action` of `service` at `control`, with `args` in order.
pub fn soap_request(control: &HttpUrl, service: &str, action: &str, args: &[(&str, String)]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{service}\">"
    );
    for (name, value) in args {
        let _ = write!(body, "<{name}>{}</{name}>", escape(value));
    }
    let _ = write!(body, "</u:{action}></s:Body></s:Envelope>\r\n");
    let mut out = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{service}#{action}\"\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        control.path,
        control.addr,
        body.len()
    );
    out.push_str(&body);
    out.into_bytes()
}

/// An HTTP/1.x answer read to the end of the connection: its status and body (by
/// Content-Length, chunked, or to the end).
pub fn parse_http_response(b: &[u8]) -> Result<(u16, Vec<u8>), UpnpError> {
    if b.len() > MAX_HTTP_RESPONSE {
        return Err(UpnpError::TooLong(b.len()));
    }
    let (first, headers, rest) = headers(b)?;
    let code = status(first)?;
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = header(&headers, "content-length") {
        let len: usize = len.parse().map_err(|_| UpnpError::Malformed("bad Content-Length"))?;
        rest.get(..len).ok_or(UpnpError::Malformed("body shorter than its Content-Length"))?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((code, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, UpnpError> {
    let mut out = Vec::new();
    loop {
        let line_end =
            b.windows(2).position(|w| w == b"\r\n").ok_or(UpnpError::Malformed("chunk without size line"))?;
        let line = std::str::from_utf8(&b[..line_end]).map_err(|_| UpnpError::Malformed("chunk size"))?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| UpnpError::Malformed("chunk size"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b.get(..size).ok_or(UpnpError::Malformed("chunk cut short"))?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).ok_or(UpnpError::Malformed("chunk cut short"))?;
    }
}

/// The contents of every element named `name` (any namespace prefix), in order. Elements of
/// that name must not nest.
fn elements<'a>(xml: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let mut at = 0;
    std::iter::from_fn(move || {
        while let Some(open) = xml[at..].find('<').map(|i| at + i) {
            let tag_end = xml[open..].find('>').map(|i| open + i)?;
            let tag = &xml[open + 1..tag_end];
            at = tag_end + 1;
            let qualified = tag.split(|c: char| c.is_ascii_whitespace() || c == '/').next().unwrap_or_default();
            if qualified.rsplit(':').next() != Some(name) || tag.starts_with('/') {
                continue;
            }
            if tag.ends_with('/') {
                return Some("");
            }
            let close = format!("</{qualified}>");
            let end = xml[at..].find(&close).map(|i| at + i)?;
            let inner = &xml[at..end];
            at = end + close.len();
            return Some(inner);
        }
        None
    })
}

fn text_of(xml: &str, name: &'static str) -> Option<String> {
    elements(xml, name).next().map(|t| unescape(t.trim()))
}

/// The port-mapping service a gateway's description offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its type (one of [`SERVICES`]).
    pub service_type: String,
    /// Where its SOAP actions go.
    pub control: HttpUrl,
}

/// A device description (fetched from `location`): the best port-mapping service in it.
pub fn parse_description(xml: &[u8], location: &HttpUrl) -> Result<Service, UpnpError> {
    if xml.len() > MAX_HTTP_RESPONSE {
        return Err(UpnpError::TooLong(xml.len()));
    }
    let xml = std::str::from_utf8(xml).map_err(|_| UpnpError::Malformed("description is not UTF-8"))?;
    let base = match text_of(xml, "URLBase") {
        Some(base) if !base.is_empty() => HttpUrl::parse(&base)?,
        _ => location.clone(),
    };
    let mut found: Vec<(usize, String, String)> = Vec::new();
    for service in elements(xml, "service") {
        let (Some(kind), Some(control)) = (text_of(service, "serviceType"), text_of(service, "controlURL")) else {
            continue;
        };
        if let Some(rank) = SERVICES.iter().position(|s| *s == kind) {
            found.push((rank, kind, control));
        }
    }
    let (_, service_type, control) = found.into_iter().min_by_key(|(rank, ..)| *rank).ok_or(UpnpError::NoService)?;
    Ok(Service { control: base.join(&control)?, service_type })
}

/// A SOAP answer (`status`, `body`) to `action`: its output arguments, or the device's fault.
pub fn parse_soap_response(status: u16, body: &[u8], action: &str) -> Result<Vec<(String, String)>, UpnpError> {
    let xml = std::str::from_utf8(body).map_err(|_| UpnpError::Malformed("SOAP answer is not UTF-8"))?;
    if let Some(fault) = elements(xml, "UPnPError").next() {
        let code = text_of(fault, "errorCode").and_then(|c| c.parse().ok()).ok_or(UpnpError::Missing("errorCode"))?;
        let description = text_of(fault, "errorDescription").unwrap_or_default().chars().take(200).collect();
        return Err(UpnpError::Fault { code, description });
    }
    if status != 200 {
        return Err(UpnpError::Status(status));
    }
    let response = format!("{action}Response");
    let inner = elements(xml, &response).next().ok_or(UpnpError::Missing("action response"))?;
    let mut args = Vec::new();
    let mut rest = inner;
    while let Some(open) = rest.find('<') {
        let Some(tag_end) = rest[open..].find('>').map(|i| open + i) else { break };
        let tag = &rest[open + 1..tag_end];
        let name = tag.split(|c: char| c.is_ascii_whitespace() || c == '/').next().unwrap_or_default();
        if name.is_empty() || tag.starts_with(['/', '?', '!']) || tag.ends_with('/') {
            if tag.ends_with('/') && !name.is_empty() {
                args.push((name.to_owned(), String::new()));
            }
            rest = &rest[tag_end + 1..];
            continue;
        }
        let close = format!("</{name}>");
        let Some(end) = rest[tag_end + 1..].find(&close).map(|i| tag_end + 1 + i) else { break };
        args.push((name.to_owned(), unescape(rest[tag_end + 1..end].trim())));
        rest = &rest[end + close.len()..];
    }
    Ok(args)
}

/// The value of `name` among a SOAP answer's arguments.
pub fn argument<'a>(args: &'a [(String, String)], name: &'static str) -> Result<&'a str, UpnpError> {
    args.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).ok_or(UpnpError::Missing(name))
}

/// Fuzzing: arbitrary bytes as an SSDP answer, an HTTP answer, a description and a SOAP
/// answer. Never panics.
pub fn fuzz_upnp(data: &[u8]) {
    let _ = parse_ssdp_response(data);
    let _ = parse_http_response(data);
    let location = HttpUrl { addr: SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 1), 5000), path: "/".into() };
    let _ = parse_description(data, &location);
    let _ = parse_soap_response(200, data, "GetExternalIPAddress");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = HttpUrl::parse(s);
        let _ = location.join(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType>
<controlURL>/ctl/PPP</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

    fn location() -> HttpUrl {
        HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml").unwrap()
    }

    #[test]
    fn urls_are_ipv4_http_only() {
        assert_eq!(location().addr, "192.168.1.1:5000".parse().unwrap());
        assert_eq!(HttpUrl::parse("http://10.0.0.1").unwrap().path, "/");
        assert_eq!(HttpUrl::parse("http://10.0.0.1/x").unwrap().addr.port(), 80);
        for bad in [
            "https://10.0.0.1/",
            "http://router.lan/",
            "http://[::1]:80/",
            "http://10.0.0.1:0/",
            "http://10.0.0.1/a b",
            "ftp://x",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(location().join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(location().join("ctl").unwrap().path, "/ctl");
        assert_eq!(location().join("http://192.168.1.1:6000/c").unwrap().addr.port(), 6000);
    }

    #[test]
    fn an_ssdp_answer_gives_the_description_location() {
        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n";
        assert_eq!(parse_ssdp_response(answer), Ok(location()));
        assert!(parse_ssdp_response(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n").is_err());
        assert!(parse_ssdp_response(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://1.2.3.4/\r\n\r\n").is_err());
        assert!(matches!(parse_ssdp_response(&vec![b'a'; MAX_SSDP + 1]), Err(UpnpError::TooLong(_))));
        assert!(
            std::str::from_utf8(&m_search())
                .unwrap()
                .contains("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n")
        );
    }

    #[test]
    fn the_description_gives_the_best_service() {
        let service = parse_description(DESCRIPTION.as_bytes(), &location()).unwrap();
        assert_eq!(service.service_type, SERVICES[1]);
        assert_eq!(service.control, location().join("/ctl/IPConn").unwrap());
        let no_service = DESCRIPTION.replace("WANIPConnection", "X").replace("WANPPPConnection", "Y");
        assert_eq!(parse_description(no_service.as_bytes(), &location()), Err(UpnpError::NoService));
        let based = DESCRIPTION.replace("<specVersion>", "<URLBase>http://192.168.1.1:7000</URLBase><specVersion>");
        assert_eq!(parse_description(based.as_bytes(), &location()).unwrap().control.addr.port(), 7000);
    }

    #[test]
    fn http_answers_by_length_chunked_and_to_the_end() {
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef"),
            Ok((200, b"abc".to_vec()))
        );
        assert_eq!(
            parse_http_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n"
            ),
            Ok((200, b"abcde".to_vec()))
        );
        assert_eq!(parse_http_response(b"HTTP/1.0 500 Oops\r\n\r\nxyz"), Ok((500, b"xyz".to_vec())));
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab").is_err());
        assert!(parse_http_response(b"SIP/2.0 200 OK\r\n\r\n").is_err());
        assert!(matches!(parse_http_response(&vec![0; MAX_HTTP_RESPONSE + 1]), Err(UpnpError::TooLong(_))));
    }

    #[test]
    fn soap_answers_and_faults() {
        let ok = r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">
<NewExternalIPAddress>11.0.0.10</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>"#;
        let args = parse_soap_response(200, ok.as_bytes(), "GetExternalIPAddress").unwrap();
        assert_eq!(argument(&args, "NewExternalIPAddress"), Ok("11.0.0.10"));
        let fault = r#"<s:Envelope><s:Body><s:Fault><faultcode>s:Client</faultcode><detail>
<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>
<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#;
        assert_eq!(
            parse_soap_response(500, fault.as_bytes(), "AddPortMapping"),
            Err(UpnpError::Fault { code: 718, description: "ConflictInMappingEntry".into() })
        );
        assert_eq!(parse_soap_response(500, b"<html/>", "AddPortMapping"), Err(UpnpError::Status(500)));
        let empty = "<s:Envelope><s:Body><u:AddPortMappingResponse xmlns:u=\"x\"/></s:Body></s:Envelope>";
        assert_eq!(parse_soap_response(200, empty.as_bytes(), "AddPortMapping"), Ok(Vec::new()));
        let request = soap_request(
            &location(),
            SERVICES[1],
            "AddPortMapping",
            &[("NewProtocol", "UDP".into()), ("D", "a<b".into())],
        );
        let request = String::from_utf8(request).unwrap();
        assert!(request.contains("SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\"\r\n"));
        assert!(request.contains("<NewProtocol>UDP</NewProtocol><D>a&lt;b</D>"));
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn hostile_xml_does_not_panic() {
        for input in [
            "<",
            "<a",
            "<service>",
            "<service><serviceType>",
            "</service>",
            "<x:service/>",
            "<<<>>>",
            "<a b='>'>",
            "\u{1F600}<é>",
        ] {
            fuzz_upnp(input.as_bytes());
            fuzz_upnp(format!("HTTP/1.1 200 OK\r\nLocation: {input}\r\n\r\n{input}").as_bytes());
        }
        let deep = "<service>".repeat(7_000);
        assert_eq!(parse_description(deep.as_bytes(), &location()), Err(UpnpError::NoService));
    }
}
