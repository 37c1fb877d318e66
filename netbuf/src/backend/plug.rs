//! The kernel backend: the guest interface's ingress (= what the guest sends) is redirected by
//! a u32 match-all filter with a mirred action to an IFB device whose root qdisc is `plug`.
//! `barrier` = TCQ_PLUG_BUFFER, `release` = TCQ_PLUG_RELEASE_ONE, `release-all` =
//! TCQ_PLUG_RELEASE_INDEFINITE. After the IFB, frames continue into whatever the guest interface
//! is attached to (a bridge), so this backend has no uplink of its own.
//!
//! `sch_plug` keeps one count for "the last closed epoch": a second BUFFER before RELEASE_ONE
//! overwrites it and the older epoch's frames are never released. So this backend reports a
//! maximum depth of 1 and its ledger refuses a barrier that would exceed it.

use super::netlink::{Netlink, NLM_F_CREATE, NLM_F_EXCL};
use super::Backend;
use crate::ledger::EpochLedger;
use crate::queue::{Counters, EpochHeld, Limits};
use crate::stats::Stats;
use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcStats2, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use std::io;
use std::sync::Mutex;

const PLUG_HANDLE: u32 = 0x0001_0000;
const ETH_P_ALL: u16 = 0x0003;
/// `TCA_OPTIONS`: the plug qdisc's options are a bare `struct tc_plug_qopt`, which
/// netlink-packet-route does not type; they go as a raw attribute.
const TCA_OPTIONS: u16 = 2;

const TCQ_PLUG_BUFFER: i32 = 0;
const TCQ_PLUG_RELEASE_ONE: i32 = 1;
const TCQ_PLUG_RELEASE_INDEFINITE: i32 = 2;
const TCQ_PLUG_LIMIT: i32 = 3;

pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no such network interface: {name}"),
        ));
    }
    Ok(i)
}

/// A tc message (qdisc or filter) header: device, handle, parent, info.
fn tc(ifindex: u32, handle: TcHandle, parent: TcHandle, info: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header.index = ifindex as i32;
    m.header.handle = handle;
    m.header.parent = parent;
    m.header.info = info;
    m
}

/// `struct tc_plug_qopt { int action; __u32 limit; }`.
fn plug_options(action: i32, limit: u32) -> TcAttribute {
    let mut o = action.to_ne_bytes().to_vec();
    o.extend_from_slice(&limit.to_ne_bytes());
    TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, o))
}

/// The root plug qdisc of the IFB, with `action`.
fn plug_qdisc(ifb: u32, action: i32, limit: u32) -> TcMessage {
    let mut m = tc(ifb, PLUG_HANDLE.into(), TcHandle::ROOT, 0);
    m.attributes.push(TcAttribute::Kind("plug".into()));
    m.attributes.push(plug_options(action, limit));
    m
}

/// A u32 filter on the guest interface's ingress matching every frame of every protocol
/// (one all-zero key: mask 0 matches anything), whose action redirects it (mirred egress
/// redirect, stolen) to the IFB.
fn redirect_all_filter(guest: u32, ifb: u32) -> TcMessage {
    // info: priority 1 in the upper half, the protocol (network byte order) in the lower.
    let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
    let mut m = tc(guest, TcHandle::UNSPEC, TcHandle::from(0xFFFF_0000), info);
    m.attributes.push(TcAttribute::Kind("u32".into()));
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = ifb;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    m
}

/// The tc objects the backend owns, and how to drive them.
struct Plumbing {
    nl: Netlink,
    guest_index: u32,
    ifb_name: String,
    ifb_index: u32,
    limit_bytes: u32,
}

impl Plumbing {
    fn create(guest_if: &str, ifb_name: &str, limit_bytes: u32) -> io::Result<Plumbing> {
        let guest_index = ifindex(guest_if)?;
        let mut nl = Netlink::open()?;
        // 1. The IFB device, up.
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName(ifb_name.into()));
        link.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        nl.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create ifb device {ifb_name}"),
        )?;
        let ifb_index = ifindex(ifb_name)?;
        let mut p = Plumbing {
            nl,
            guest_index,
            ifb_name: ifb_name.to_string(),
            ifb_index,
            limit_bytes,
        };
        if let Err(e) = p.attach() {
            p.teardown();
            return Err(e);
        }
        Ok(p)
    }

    fn attach(&mut self) -> io::Result<()> {
        // 2. plug as the IFB's root qdisc, explicit byte limit, then released-indefinite so
        //    nothing is held until protection starts (plug_init starts plugged).
        self.nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(plug_qdisc(
                self.ifb_index,
                TCQ_PLUG_LIMIT,
                self.limit_bytes,
            )),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add plug qdisc on {}", self.ifb_name),
        )?;
        self.plug(TCQ_PLUG_RELEASE_INDEFINITE)?;
        // 3. ingress qdisc on the guest interface.
        let mut ingress = tc(
            self.guest_index,
            TcHandle::from(0xFFFF_0000),
            TcHandle::INGRESS,
            0,
        );
        ingress.attributes.push(TcAttribute::Kind("ingress".into()));
        self.nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(ingress),
            NLM_F_CREATE | NLM_F_EXCL,
            "add ingress qdisc on the guest interface",
        )?;
        // 4. u32 match-all filter for every protocol, action mirred egress redirect to the IFB.
        self.nl.request(
            RouteNetlinkMessage::NewTrafficFilter(redirect_all_filter(
                self.guest_index,
                self.ifb_index,
            )),
            NLM_F_CREATE | NLM_F_EXCL,
            "add u32/mirred redirect filter",
        )
    }

    fn plug(&mut self, action: i32) -> io::Result<()> {
        self.nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(plug_qdisc(
                self.ifb_index,
                action,
                self.limit_bytes,
            )),
            0,
            "change plug qdisc",
        )
    }

    /// Drops whatever the plug holds by replacing it with a fresh one (which starts plugged).
    fn flush(&mut self) -> io::Result<()> {
        self.nl.request(
            RouteNetlinkMessage::DelQueueDiscipline(tc(
                self.ifb_index,
                PLUG_HANDLE.into(),
                TcHandle::ROOT,
                0,
            )),
            0,
            "delete plug qdisc",
        )?;
        self.nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(plug_qdisc(
                self.ifb_index,
                TCQ_PLUG_LIMIT,
                self.limit_bytes,
            )),
            NLM_F_CREATE | NLM_F_EXCL,
            "re-add plug qdisc",
        )
    }

    /// (backlog frames, backlog bytes, drops, sent frames, sent bytes) of the plug qdisc: a
    /// get of the IFB's root qdisc.
    fn qdisc_stats(&mut self) -> io::Result<(u64, u64, u64, u64, u64)> {
        let q = self.nl.get(
            RouteNetlinkMessage::GetQueueDiscipline(tc(
                self.ifb_index,
                TcHandle::UNSPEC,
                TcHandle::ROOT,
                0,
            )),
            "get plug qdisc",
        )?;
        let RouteNetlinkMessage::NewQueueDiscipline(q) = q else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "get plug qdisc: not a qdisc",
            ));
        };
        let (mut qlen, mut backlog, mut drops, mut pkts, mut bytes) = (0, 0, 0, 0, 0);
        for a in &q.attributes {
            let TcAttribute::Stats2(stats) = a else {
                continue;
            };
            for s in stats {
                match s {
                    TcStats2::Queue(q) => {
                        qlen = u64::from(q.qlen);
                        backlog = u64::from(q.backlog);
                        drops = u64::from(q.drops);
                    }
                    TcStats2::Basic(b) => {
                        bytes = b.bytes;
                        pkts = u64::from(b.packets);
                    }
                    _ => {}
                }
            }
        }
        Ok((qlen, backlog, drops, pkts, bytes))
    }

    /// Removes everything this backend created, restoring the guest interface. Best effort:
    /// each step is tried even if an earlier one failed.
    fn teardown(&mut self) {
        let _ = self.nl.request(
            RouteNetlinkMessage::DelQueueDiscipline(tc(
                self.guest_index,
                TcHandle::from(0xFFFF_0000),
                TcHandle::INGRESS,
                0,
            )),
            0,
            "delete ingress qdisc",
        );
        let mut link = LinkMessage::default();
        link.header.index = self.ifb_index;
        let _ = self
            .nl
            .request(RouteNetlinkMessage::DelLink(link), 0, "delete ifb device");
    }
}

pub struct PlugBackend {
    inner: Mutex<(Plumbing, EpochLedger)>,
}

fn backend_err(e: io::Error) -> ControlError {
    ControlError::new(ErrorCode::Backend, e.to_string())
}

impl PlugBackend {
    pub fn new(guest_if: &str, ifb_name: &str, limits: Limits) -> io::Result<PlugBackend> {
        let limit = u32::try_from(limits.max_bytes).unwrap_or(u32::MAX);
        let p = Plumbing::create(guest_if, ifb_name, limit)?;
        Ok(PlugBackend {
            inner: Mutex::new((p, EpochLedger::new(Some(1)))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Plumbing, EpochLedger)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PlugBackend {
    fn drop(&mut self) {
        self.lock().0.teardown();
    }
}

impl Backend for PlugBackend {
    fn name(&self) -> &'static str {
        "plug"
    }

    fn max_depth(&self) -> Option<usize> {
        Some(1)
    }

    fn barrier(&self, e: Epoch) -> Result<(), ControlError> {
        let mut g = self.lock();
        let (p, l) = &mut *g;
        l.check_barrier(e)?;
        p.plug(TCQ_PLUG_BUFFER).map_err(backend_err)?;
        l.barrier(e).map(|_| ())
    }

    fn release_through(&self, e: Epoch) -> Result<u64, ControlError> {
        let mut g = self.lock();
        let (p, l) = &mut *g;
        if l.check_release(e)? > 0 {
            p.plug(TCQ_PLUG_RELEASE_ONE).map_err(backend_err)?;
        }
        l.release_through(e).map(|_| 0)
    }

    fn release_all(&self) -> Result<u64, ControlError> {
        let mut g = self.lock();
        let (p, l) = &mut *g;
        p.plug(TCQ_PLUG_RELEASE_INDEFINITE).map_err(backend_err)?;
        l.release_all();
        Ok(0)
    }

    fn discard(&self) -> Result<u64, ControlError> {
        let mut g = self.lock();
        let (p, l) = &mut *g;
        let (held, ..) = p.qdisc_stats().map_err(backend_err)?;
        p.flush().map_err(backend_err)?;
        if !l.is_protected() {
            // A fresh plug starts plugged; unprotected means pass-through.
            p.plug(TCQ_PLUG_RELEASE_INDEFINITE).map_err(backend_err)?;
        }
        Ok(held)
    }

    fn stats(&self) -> Stats {
        let mut g = self.lock();
        let (p, l) = &mut *g;
        let (qlen, backlog, drops, pkts, bytes) = p.qdisc_stats().unwrap_or_default();
        let mut epochs: Vec<EpochHeld> = l
            .closed()
            .chain(l.open())
            .map(|epoch| EpochHeld {
                epoch,
                frames: 0,
                bytes: 0,
            })
            .collect();
        epochs.dedup_by_key(|h| h.epoch);
        Stats {
            backend: "plug",
            protected: l.is_protected(),
            open_epoch: l.open(),
            released_through: l.released_through(),
            last_barrier: l.last_barrier(),
            max_depth: Some(1),
            epochs,
            held_frames: qlen,
            held_bytes: backlog,
            limits: Limits {
                max_frames: usize::MAX,
                max_bytes: p.limit_bytes as usize,
            },
            counters: Counters {
                received_frames: pkts + qlen + drops,
                released_frames: pkts,
                released_bytes: bytes,
                dropped_overflow_frames: drops,
                ..Counters::default()
            },
            inbound_frames: 0,
            inbound_bytes: 0,
            io_errors: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The bytes the kernel reads, checked against the layouts of linux/pkt_sched.h,
    //! pkt_cls.h and tc_act/tc_mirred.h (what the hand-written client used to send).
    use super::*;
    use netlink_packet_core::{Emitable, NlasIterator};

    fn body(m: &TcMessage) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    /// The attributes after the 20-byte tcmsg: (type without flags, payload).
    fn attrs(b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        NlasIterator::new(b)
            .map(|n| n.unwrap())
            .map(|n| (n.kind() & 0x3fff, n.value().to_vec()))
            .collect()
    }

    fn find(a: &[(u16, Vec<u8>)], ty: u16) -> Vec<u8> {
        a.iter().find(|(t, _)| *t == ty).unwrap().1.clone()
    }

    #[test]
    fn the_plug_qdisc_carries_a_raw_tc_plug_qopt() {
        let b = body(&plug_qdisc(7, TCQ_PLUG_RELEASE_ONE, 400));
        assert_eq!(&b[4..8], &7i32.to_ne_bytes(), "tcm_ifindex");
        assert_eq!(&b[8..12], &PLUG_HANDLE.to_ne_bytes(), "tcm_handle 1:");
        assert_eq!(&b[12..16], &u32::MAX.to_ne_bytes(), "tcm_parent root");
        let a = attrs(&b[20..]);
        assert_eq!(find(&a, 1), b"plug\0");
        let opt = find(&a, TCA_OPTIONS);
        assert_eq!(opt.len(), 8);
        assert_eq!(&opt[0..4], &TCQ_PLUG_RELEASE_ONE.to_ne_bytes());
        assert_eq!(&opt[4..8], &400u32.to_ne_bytes());
    }

    #[test]
    fn the_filter_redirects_every_protocol_to_the_ifb() {
        let b = body(&redirect_all_filter(3, 9));
        assert_eq!(&b[4..8], &3i32.to_ne_bytes());
        assert_eq!(
            &b[12..16],
            &0xFFFF_0000u32.to_ne_bytes(),
            "parent ffff: (ingress)"
        );
        let info = u32::from_ne_bytes(b[16..20].try_into().unwrap());
        assert_eq!(info >> 16, 1, "priority 1");
        assert_eq!(
            (info & 0xffff) as u16,
            0x0003u16.to_be(),
            "ETH_P_ALL, network order"
        );
        let a = attrs(&b[20..]);
        assert_eq!(find(&a, 1), b"u32\0");
        let opts = attrs(&find(&a, TCA_OPTIONS));
        // TCA_U32_SEL: tc_u32_sel (16 bytes) + one all-zero tc_u32_key (16 bytes).
        let sel = find(&opts, 5);
        assert_eq!(sel.len(), 32);
        assert_eq!((sel[0], sel[2]), (1, 1), "TC_U32_TERMINAL, nkeys 1");
        assert!(sel[16..].iter().all(|b| *b == 0), "mask 0 matches anything");
        // TCA_U32_ACT → action 1 → kind mirred, TCA_ACT_OPTIONS → TCA_MIRRED_PARMS.
        let act = attrs(&find(&find_nested(&opts, 7), 1));
        assert_eq!(find(&act, 1), b"mirred\0");
        let parms = find(&attrs(&find(&act, 2)), 2);
        assert_eq!(parms.len(), 28, "struct tc_mirred");
        assert_eq!(&parms[8..12], &4i32.to_ne_bytes(), "TC_ACT_STOLEN");
        assert_eq!(&parms[20..24], &1i32.to_ne_bytes(), "TCA_EGRESS_REDIR");
        assert_eq!(&parms[24..28], &9u32.to_ne_bytes(), "to the IFB");
    }

    /// A nested attribute's payload re-read as attributes (kept as bytes for `find`).
    fn find_nested(a: &[(u16, Vec<u8>)], ty: u16) -> Vec<(u16, Vec<u8>)> {
        attrs(&find(a, ty))
    }
}
