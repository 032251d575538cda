//! TCP resets for flows the content policy blocks: both ends learn at once that the
//! connection is gone, instead of retransmitting into the XDP drop until they time out.
//!
//! The gateway forges each end's segment to the other (RFC 9293 §3.10.7.3: a RST is accepted
//! when its sequence number is the receiver's next expected one; RFC 5961 §3 narrows that to
//! exactly RCV.NXT). The sequence numbers come from the reassembler, which saw both streams.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result, bail};

const TCP_RST: u8 = 0x04;

/// The segment `from` sends to `to`: RST with sequence number `seq` (what `to` expects next).
pub fn rst_packet(from: SocketAddr, to: SocketAddr, seq: u32) -> Option<Vec<u8>> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST;
    match (from.ip(), to.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut pseudo = Vec::with_capacity(32);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
            pseudo.extend_from_slice(&tcp);
            let c = checksum(&pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ip.extend_from_slice(&tcp);
            Some(ip)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut pseudo = Vec::with_capacity(60);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            pseudo.extend_from_slice(&tcp);
            let c = checksum(&pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            ip.extend_from_slice(&tcp);
            Some(ip)
        }
        _ => None,
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends RSTs to both ends of a TCP connection: to the server as if from the client (sequence
/// `client_next`) and to the client as if from the server (`server_next`). Needs CAP_NET_RAW.
pub fn reset_both(client: SocketAddr, server: SocketAddr, client_next: u32, server_next: u32) -> Result<()> {
    send(client, server, client_next).with_context(|| format!("RST to {server}"))?;
    send(server, client, server_next).with_context(|| format!("RST to {client}"))
}

fn send(from: SocketAddr, to: SocketAddr, seq: u32) -> Result<()> {
    let Some(pkt) = rst_packet(from, to, seq) else { bail!("mixed address families {from} -> {to}") };
    let v6 = to.is_ipv6();
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe { libc::socket(if v6 { libc::AF_INET6 } else { libc::AF_INET }, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // An IPPROTO_RAW socket sends the header we wrote (IP_HDRINCL, IPV6_HDRINCL implied).
    let rc = match to.ip() {
        IpAddr::V4(a) => {
            // SAFETY: zeroed sockaddr_in is valid; fields set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: pkt and sa outlive the call; lengths are theirs.
            unsafe {
                libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&raw const sa).cast(), size_of::<libc::sockaddr_in>() as u32)
            }
        }
        IpAddr::V6(a) => {
            // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: pkt and sa outlive the call; lengths are theirs.
            unsafe {
                libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&raw const sa).cast(), size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        bail!("sendto: {err}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_ok(data: &[u8]) -> bool {
        checksum(data) == 0
    }

    #[test]
    fn ipv4_and_ipv6_resets_have_valid_checksums() {
        let c: SocketAddr = "192.0.2.10:40000".parse().unwrap();
        let s: SocketAddr = "198.51.100.5:6667".parse().unwrap();
        let p = rst_packet(c, s, 0x0102_0304).unwrap();
        assert_eq!(p.len(), 40);
        assert!(sum_ok(&p[..20]), "IPv4 header checksum");
        let mut pseudo = p[12..20].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&p[20..]);
        assert!(sum_ok(&pseudo), "TCP checksum");
        assert_eq!((&p[24..28], p[33]), (&[1, 2, 3, 4][..], TCP_RST));
        assert_eq!(u16::from_be_bytes([p[20], p[21]]), 40000);

        let c: SocketAddr = "[2001:db8::10]:40000".parse().unwrap();
        let s: SocketAddr = "[2001:db8:1::5]:5222".parse().unwrap();
        let p = rst_packet(s, c, 7).unwrap();
        assert_eq!((p.len(), p[6]), (60, 6));
        let mut pseudo = p[8..40].to_vec();
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        pseudo.extend_from_slice(&p[40..]);
        assert!(sum_ok(&pseudo), "TCP checksum over the IPv6 pseudo-header");
        assert!(rst_packet("192.0.2.1:1".parse().unwrap(), "[2001:db8::1]:2".parse().unwrap(), 0).is_none());
    }
}
