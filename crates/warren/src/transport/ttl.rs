//! One datagram with its own TTL: `sendmsg` with an `IP_TTL` (IPv4, IPv4-mapped) or
//! `IPV6_HOPLIMIT` control message. Built by hand for 64-bit Linux (a `cmsghdr` of a `size_t`
//! and two `int`s, then an `int`); elsewhere unsupported, and the caller sends it plainly.
//! Used by the node socket's opens (`paths`) and birthday probing's extra sockets.

use std::io;
use std::net::SocketAddr;

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub(crate) fn send(socket: &std::net::UdpSocket, datagram: &[u8], to: SocketAddr, ttl: u8) -> io::Result<()> {
    let v4 = match to {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let (level, kind) = if v4 { (libc::IPPROTO_IP, libc::IP_TTL) } else { (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) };
    // CMSG_LEN(sizeof(int)) = 16 + 4; CMSG_SPACE rounds it up to 24.
    let mut control = [0u8; 24];
    control[..8].copy_from_slice(&20usize.to_ne_bytes());
    control[8..12].copy_from_slice(&level.to_ne_bytes());
    control[12..16].copy_from_slice(&kind.to_ne_bytes());
    control[16..20].copy_from_slice(&libc::c_int::from(ttl).to_ne_bytes());
    let address = socket2::SockAddr::from(to);
    let buffers = [io::IoSlice::new(datagram)];
    let message = socket2::MsgHdr::new().with_addr(&address).with_buffers(&buffers).with_control(&control);
    socket2::SockRef::from(socket).sendmsg(&message, 0).map(|_| ())
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub(crate) fn send(_: &std::net::UdpSocket, _: &[u8], _: SocketAddr, _: u8) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    /// The TTL a receiver sees (`IP_RECVTTL`) is the one asked for; the socket's own is not
    /// changed.
    #[test]
    fn the_datagram_leaves_with_its_own_ttl() {
        use std::os::fd::AsRawFd;
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket, option and int-sized value.
        let set = unsafe {
            libc::setsockopt(
                receiver.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_RECVTTL,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        super::send(&sender, b"open", to, 2).unwrap();
        sender.send_to(b"plain", to).unwrap();
        let ttl_of = |socket: &std::net::UdpSocket| {
            let mut data = [std::mem::MaybeUninit::new(0u8); 16];
            let mut control = [std::mem::MaybeUninit::new(0u8); 64];
            let mut buffers = [socket2::MaybeUninitSlice::new(&mut data)];
            let mut message = socket2::MsgHdrMut::new().with_buffers(&mut buffers).with_control(&mut control);
            socket2::SockRef::from(socket).recvmsg(&mut message, 0).unwrap();
            let len = message.control_len();
            // SAFETY: recvmsg initialised the first `len` bytes of the control buffer.
            let control: Vec<u8> = control[..len].iter().map(|b| unsafe { b.assume_init() }).collect();
            assert!(len >= 20, "no TTL control message");
            assert_eq!(i32::from_ne_bytes(control[12..16].try_into().unwrap()), libc::IP_TTL);
            i32::from_ne_bytes(control[16..20].try_into().unwrap())
        };
        assert_eq!(ttl_of(&receiver), 2);
        assert_eq!(ttl_of(&receiver), 64, "the socket's own TTL is untouched");
    }
}
