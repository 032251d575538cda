//! Reads pcap and pcapng captures and turns every packet into an Ethernet frame, the form the
//! XDP program sees on a gateway.

use std::{fs::File, io::BufReader, path::Path};

use anyhow::{Context as _, Result, bail};
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};

/// `BPF_PROG_TEST_RUN` takes XDP frames up to about a page minus headroom and tailroom; frames a
/// capture recorded after GRO can be far larger. The parser reads lengths from the IP header
/// and inspects only what is present, so truncating keeps every header and the first bytes.
pub const MAX_FRAME: usize = 3400;

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

pub struct Capture {
    pub frames: Vec<Vec<u8>>,
    /// Packets left out because their link type carries no IP (or an unknown header).
    pub skipped: usize,
}

/// Reads a capture, recognising pcap and pcapng by their magic numbers.
pub fn read(path: &Path) -> Result<Capture> {
    let mut magic = [0u8; 4];
    {
        use std::io::Read as _;
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        f.read_exact(&mut magic).with_context(|| format!("{}: too short to be a capture", path.display()))?;
    }
    let file = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut cap = Capture { frames: Vec::new(), skipped: 0 };
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut r = PcapNgReader::new(file).with_context(|| format!("{}: bad pcapng header", path.display()))?;
            let mut links: Vec<DataLink> = r.interfaces().iter().map(|i| i.linktype).collect();
            while let Some(block) = r.next_block() {
                let block = match block {
                    Ok(b) => b,
                    // A truncated last block (capture cut short) ends the file, not the analysis.
                    Err(e) => {
                        log::warn!("{}: stopping at a damaged block: {e}", path.display());
                        break;
                    }
                };
                // Interfaces are numbered per section (pcapng §4.2), so track them here.
                let (link, data) = match &block {
                    Block::SectionHeader(_) => {
                        links.clear();
                        continue;
                    }
                    Block::InterfaceDescription(i) => {
                        links.push(i.linktype);
                        continue;
                    }
                    Block::EnhancedPacket(p) => (links.get(p.interface_id as usize).copied(), p.data.as_ref()),
                    Block::SimplePacket(p) => (links.first().copied(), p.data.as_ref()),
                    Block::Packet(p) => (links.get(p.interface_id as usize).copied(), p.data.as_ref()),
                    _ => continue,
                };
                let Some(link) = link else {
                    cap.skipped += 1;
                    continue;
                };
                push(&mut cap, link, data);
            }
        }
        [0xd4, 0xc3, 0xb2, 0xa1] | [0xa1, 0xb2, 0xc3, 0xd4] | [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d] => {
            let mut r = PcapReader::new(file).with_context(|| format!("{}: bad pcap header", path.display()))?;
            let link = r.header().datalink;
            while let Some(p) = r.next_packet() {
                match p {
                    Ok(p) => push(&mut cap, link, &p.data),
                    Err(e) => {
                        log::warn!("{}: stopping at a damaged record: {e}", path.display());
                        break;
                    }
                }
            }
        }
        _ => bail!("{}: not a pcap or pcapng file (magic {:02x?})", path.display(), magic),
    }
    Ok(cap)
}

fn push(cap: &mut Capture, link: DataLink, data: &[u8]) {
    match to_ethernet(link, data) {
        Some(mut f) => {
            f.truncate(MAX_FRAME);
            cap.frames.push(f);
        }
        None => cap.skipped += 1,
    }
}

fn eth(ethertype: [u8; 2], l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(l3);
    f
}

fn by_version(l3: &[u8]) -> Option<Vec<u8>> {
    match l3.first()? >> 4 {
        4 => Some(eth(ETH_P_IP, l3)),
        6 => Some(eth(ETH_P_IPV6, l3)),
        _ => None,
    }
}

/// An Ethernet frame for a packet of the given link type.
pub fn to_ethernet(link: DataLink, data: &[u8]) -> Option<Vec<u8>> {
    match link {
        DataLink::ETHERNET => (data.len() >= 14).then(|| data.to_vec()),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => by_version(data),
        // Linux cooked capture v1: 16-byte header, protocol in the last two bytes.
        DataLink::LINUX_SLL => {
            let proto = data.get(14..16)?;
            Some(eth([proto[0], proto[1]], data.get(16..)?))
        }
        // v2: 20-byte header, protocol first.
        DataLink::LINUX_SLL2 => {
            let proto = data.get(0..2)?;
            Some(eth([proto[0], proto[1]], data.get(20..)?))
        }
        // BSD loopback: a 4-byte address family, then the IP packet.
        DataLink::NULL | DataLink::LOOP => by_version(data.get(4..)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooked_and_raw_become_ethernet() {
        let ip = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 1, 198, 51, 100, 1];
        let raw = to_ethernet(DataLink::RAW, &ip).unwrap();
        assert_eq!(&raw[12..14], &ETH_P_IP);
        assert_eq!(&raw[14..], &ip);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&ETH_P_IP);
        sll.extend_from_slice(&ip);
        let f = to_ethernet(DataLink::LINUX_SLL, &sll).unwrap();
        assert_eq!(f, raw);
        let mut null = vec![2u8, 0, 0, 0];
        null.extend_from_slice(&ip);
        assert_eq!(to_ethernet(DataLink::NULL, &null).unwrap(), raw);
        assert!(to_ethernet(DataLink::RAW, &[0x10]).is_none());
        assert!(to_ethernet(DataLink::ETHERNET, &[0; 10]).is_none());
    }
}
