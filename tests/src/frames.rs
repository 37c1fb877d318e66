//! Hand-built test frames of every kind netbuf must hold (ARP, IPv6 neighbour solicitation,
//! ICMP echo, TCP SYN, 802.1Q-tagged), each carrying a numeric tag so a capture on the far side
//! can tell which frame arrived and in what order. Checksums are real.

pub const GUEST_MAC: [u8; 6] = [0x02, 0x52, 0x4d, 0, 0, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x52, 0x4d, 0, 0, 0x02];
const BROADCAST: [u8; 6] = [0xff; 6];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Arp,
    Ns6,
    Ping,
    Syn,
    Vlan,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Arp, Kind::Ns6, Kind::Ping, Kind::Syn, Kind::Vlan];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Arp => "arp",
            Kind::Ns6 => "ns6",
            Kind::Ping => "ping",
            Kind::Syn => "syn",
            Kind::Vlan => "vlan",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    let total = (20 + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum_fold(csum_add(0, &h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn icmp_echo(tag: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&tag.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(b"remus-framecheck");
    let c = csum_fold(csum_add(0, &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

const SRC4: [u8; 4] = [10, 77, 0, 1];
// Nobody has this address, so no stack answers a test frame and frame counts stay exact.
const DST4: [u8; 4] = [10, 77, 0, 99];

/// Builds one tagged frame of `kind` from `src` (a marker MAC the capture filters on).
pub fn build(kind: Kind, tag: u16, src: [u8; 6]) -> Vec<u8> {
    match kind {
        Kind::Arp => {
            let mut f = eth(BROADCAST, src, 0x0806);
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&SRC4);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&[10, 99]);
            f.extend_from_slice(&tag.to_be_bytes());
            f
        }
        Kind::Ns6 => {
            let mut target = [0u8; 16];
            target[0] = 0xfd;
            target[14..16].copy_from_slice(&tag.to_be_bytes());
            let mut dst = [0u8; 16];
            dst[0] = 0xff;
            dst[1] = 0x02;
            dst[11] = 1;
            dst[12] = 0xff;
            dst[13..16].copy_from_slice(&target[13..16]);
            let mut src6 = [0u8; 16];
            src6[0] = 0xfe;
            src6[1] = 0x80;
            src6[15] = 1;
            let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&target);
            icmp.extend_from_slice(&[1, 1]);
            icmp.extend_from_slice(&src);
            let mut pseudo = csum_add(0, &src6);
            pseudo = csum_add(pseudo, &dst);
            pseudo = csum_add(pseudo, &(icmp.len() as u32).to_be_bytes());
            pseudo = csum_add(pseudo, &[0, 0, 0, 58]);
            let c = csum_fold(csum_add(pseudo, &icmp));
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut f = eth([0x33, 0x33, 0xff, dst[13], dst[14], dst[15]], src, 0x86dd);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[58, 255]);
            f.extend_from_slice(&src6);
            f.extend_from_slice(&dst);
            f.extend_from_slice(&icmp);
            f
        }
        Kind::Ping => {
            let mut f = eth(BROADCAST, src, 0x0800);
            f.extend_from_slice(&ipv4(1, SRC4, DST4, &icmp_echo(tag)));
            f
        }
        Kind::Syn => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&40000u16.to_be_bytes());
            t[2..4].copy_from_slice(&80u16.to_be_bytes());
            t[4..8].copy_from_slice(&u32::from(tag).to_be_bytes());
            t[12] = 5 << 4;
            t[13] = 0x02; // SYN
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let mut s = csum_add(0, &SRC4);
            s = csum_add(s, &DST4);
            s = csum_add(s, &[0, 6, 0, 20]);
            let c = csum_fold(csum_add(s, &t));
            t[16..18].copy_from_slice(&c.to_be_bytes());
            let mut f = eth(BROADCAST, src, 0x0800);
            f.extend_from_slice(&ipv4(6, SRC4, DST4, &t));
            f
        }
        Kind::Vlan => {
            let mut f = eth(BROADCAST, src, 0x8100);
            f.extend_from_slice(&42u16.to_be_bytes()); // TCI: VLAN 42
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&ipv4(1, SRC4, DST4, &icmp_echo(tag)));
            f
        }
    }
}

/// Recognises a frame built by [`build`] from `src`; returns its kind and tag.
pub fn classify(f: &[u8], src: [u8; 6]) -> Option<(Kind, u16)> {
    if f.get(6..12)? != src {
        return None;
    }
    let be16 = |o: usize| f.get(o..o + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match be16(12)? {
        0x0806 => Some((Kind::Arp, be16(40)?)),
        0x86dd if *f.get(54)? == 135 => Some((Kind::Ns6, be16(76)?)),
        0x0800 => match *f.get(23)? {
            1 if *f.get(34)? == 8 => Some((Kind::Ping, be16(38)?)),
            6 => Some((Kind::Syn, be16(40)?)),
            _ => None,
        },
        0x8100 if be16(16)? == 0x0800 && *f.get(27)? == 1 => Some((Kind::Vlan, be16(42)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_classify_round_trip() {
        for k in Kind::ALL {
            for tag in [0u16, 7, 65535] {
                let f = build(k, tag, GUEST_MAC);
                assert_eq!(classify(&f, GUEST_MAC), Some((k, tag)), "{k:?}");
                assert_eq!(classify(&f, CLIENT_MAC), None);
            }
        }
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = build(Kind::Ping, 3, GUEST_MAC);
        assert_eq!(csum_fold(csum_add(0, &f[14..34])), 0);
        assert_eq!(csum_fold(csum_add(0, &f[34..])), 0);
    }
}
