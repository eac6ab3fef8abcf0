//! The Linux calls the simulator needs: a network namespace per host, a TUN device in it with
//! an address, prefix and default route. Everything unsafe lives here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct ifreq`: an interface name and a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }

    fn set_sockaddr(&mut self, ip: Ipv4Addr) {
        self.data = [0; 24];
        self.data[..16].copy_from_slice(&sockaddr_in(ip));
    }
}

/// `struct sockaddr_in` as 16 bytes.
fn sockaddr_in(ip: Ipv4Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    out[4..8].copy_from_slice(&ip.octets());
    out
}

/// `struct rtentry` (x86_64 and aarch64 layout).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: [u8; 16],
    gateway: [u8; 16],
    genmask: [u8; 16],
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(result) }
}

/// Moves the calling thread into a new, empty network namespace.
pub fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions; it affects only this thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) }).map(drop)
}

/// Opens the calling thread's network namespace, to enter it later from other threads.
pub fn current_namespace() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Moves the calling thread into the network namespace `ns`.
pub fn enter_namespace(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open namespace file descriptor for the duration of the call.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live, correctly laid out structure for
    // `request`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) }).map(drop)
}

/// Brings interface `name` up.
pub fn set_up(name: &str) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = IfReq::new(name);
    ioctl(&socket, libc::SIOCGIFFLAGS, &mut req as *mut IfReq as *mut _)?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]) | (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&socket, libc::SIOCSIFFLAGS, &mut req as *mut IfReq as *mut _)
}

/// Creates TUN device `name` (no packet-information header) with `flags` in the calling
/// thread's namespace and returns its file.
fn open_tun(name: &str, flags: libc::c_int) -> io::Result<File> {
    let path = CString::new("/dev/net/tun").expect("no NUL");
    // SAFETY: open(2) on a NUL-terminated path; the result is checked and owned.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just returned by open(2) and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    req.data[..2].copy_from_slice(&(flags as i16).to_ne_bytes());
    // SAFETY: TUNSETIFF takes a pointer to a struct ifreq, which `req` is.
    check(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) })?;
    Ok(file)
}

/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

/// Creates TUN device `name` in the calling thread's namespace, with a `virtio_net_hdr` in
/// front of every packet read or written (then the whole IP packet), and checksum and TCPv4 segmentation offload on: the kernel hands over TCP segments
/// of up to 64 KB with partial checksums, and accepts the same back.
pub fn create_offload_tun(name: &str) -> io::Result<File> {
    create_offload_device(name, libc::IFF_TUN)
}

/// Like [`create_offload_tun`], but a TAP device: Ethernet frames (after the virtio-net
/// header), with the MAC address `mac`. Hosts get one, so that they look like hosts on an
/// Ethernet LAN (mDNS stacks skip point-to-point interfaces).
pub fn create_offload_tap(name: &str, mac: [u8; 6]) -> io::Result<File> {
    let file = create_offload_device(name, libc::IFF_TAP)?;
    let socket = control_socket()?;
    let mut req = IfReq::new(name);
    req.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
    req.data[2..8].copy_from_slice(&mac);
    ioctl(&socket, libc::SIOCSIFHWADDR, &mut req as *mut IfReq as *mut _)?;
    Ok(file)
}

fn create_offload_device(name: &str, kind: libc::c_int) -> io::Result<File> {
    let file = open_tun(name, kind | libc::IFF_NO_PI | libc::IFF_VNET_HDR)?;
    let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN;
    // SAFETY: TUNSETOFFLOAD takes the offload flags as its (integer) argument.
    check(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, offloads as libc::c_ulong) })?;
    Ok(file)
}

/// Gives interface `name` the address `ip/prefix` and MTU `mtu`, brings it and `lo` up, and
/// routes everything else through it.
pub fn configure(name: &str, ip: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<()> {
    configure_interface(name, ip, prefix, mtu)?;
    let socket = control_socket()?;
    let mut dev = CString::new(name).expect("interface names have no NUL").into_bytes_with_nul();
    let mut route = RtEntry {
        pad1: 0,
        dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
        flags: libc::RTF_UP,
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: dev.as_mut_ptr().cast(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    ioctl(&socket, libc::SIOCADDRT, &mut route as *mut RtEntry as *mut _)
}

/// Gives interface `name` the address `ip/prefix` and MTU `mtu` and brings it and `lo` up,
/// without touching the routing table beyond the prefix's own route.
pub fn configure_interface(name: &str, ip: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<()> {
    let socket = control_socket()?;
    let mut req = IfReq::new(name);
    req.set_sockaddr(ip);
    ioctl(&socket, libc::SIOCSIFADDR, &mut req as *mut IfReq as *mut _)?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    req.set_sockaddr(Ipv4Addr::from(mask));
    ioctl(&socket, libc::SIOCSIFNETMASK, &mut req as *mut IfReq as *mut _)?;
    let mut req = IfReq::new(name);
    req.data[..4].copy_from_slice(&(mtu as i32).to_ne_bytes());
    ioctl(&socket, libc::SIOCSIFMTU, &mut req as *mut IfReq as *mut _)?;
    // A longer transmit queue than TUN's 500 packets, so that a burst waits for the forwarder
    // instead of being dropped by the kernel before any simulated link sees it: only the
    // links decide what is lost.
    // The ioctl is refused inside a user namespace, where rtnetlink (`ip`) is allowed; a
    // device left at 500 packets still works, so a failure of both is not an error.
    let mut req = IfReq::new(name);
    req.data[..4].copy_from_slice(&TX_QUEUE_LEN.to_ne_bytes());
    if ioctl(&socket, libc::SIOCSIFTXQLEN, &mut req as *mut IfReq as *mut _).is_err() {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", name, "txqueuelen", &TX_QUEUE_LEN.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
    set_up(name)?;
    set_up("lo")
}

/// Transmit queue length of the TUN devices, in packets.
const TX_QUEUE_LEN: i32 = 10_000;

/// Writes `value` to the sysctl at `path` (under `/proc/sys`) as seen from the calling
/// thread's network namespace.
pub fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
}
