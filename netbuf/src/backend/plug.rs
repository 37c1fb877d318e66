//! The kernel backend: the guest interface's ingress (= what the guest sends) is redirected by
//! a u32 match-all filter with a mirred action to an IFB device whose root qdisc is `plug`.
//! `barrier` = TCQ_PLUG_BUFFER, `release` = TCQ_PLUG_RELEASE_ONE, `release-all` =
//! TCQ_PLUG_RELEASE_INDEFINITE. After the IFB, frames continue into whatever the guest interface
//! is attached to (a bridge), so this backend has no uplink of its own.
//!
//! `sch_plug` keeps one count for "the last closed epoch": a second BUFFER before RELEASE_ONE
//! overwrites it and the older epoch's frames are never released. So this backend reports a
//! maximum depth of 1 and its ledger refuses a barrier that would exceed it.

use super::netlink::{self, MsgBuilder, Netlink, NLM_F_CREATE, NLM_F_EXCL};
use super::Backend;
use crate::ledger::EpochLedger;
use crate::queue::{Counters, EpochHeld, Limits};
use crate::stats::Stats;
use remus_proto::control::{ControlError, ErrorCode};
use remus_proto::Epoch;
use std::io;
use std::sync::Mutex;

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_INGRESS: u32 = 0xFFFF_FFF1;
const INGRESS_HANDLE: u32 = 0xFFFF_0000;
const PLUG_HANDLE: u32 = 0x0001_0000;
const ETH_P_ALL: u16 = 0x0003;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
const TC_U32_TERMINAL: u8 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;

const TCQ_PLUG_BUFFER: i32 = 0;
const TCQ_PLUG_RELEASE_ONE: i32 = 1;
const TCQ_PLUG_RELEASE_INDEFINITE: i32 = 2;

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

fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut m = [0u8; 20];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m[8..12].copy_from_slice(&handle.to_ne_bytes());
    m[12..16].copy_from_slice(&parent.to_ne_bytes());
    m[16..20].copy_from_slice(&info.to_ne_bytes());
    m
}

fn plug_opt(action: i32, limit: u32) -> [u8; 8] {
    let mut o = [0u8; 8];
    o[0..4].copy_from_slice(&action.to_ne_bytes());
    o[4..8].copy_from_slice(&limit.to_ne_bytes());
    o
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
        let mut m = MsgBuilder::new(&ifinfomsg(0, libc::IFF_UP as u32, libc::IFF_UP as u32));
        m.attr_str(IFLA_IFNAME, ifb_name);
        let n = m.begin_nest(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "ifb");
        m.end_nest(n);
        nl.request(
            netlink::RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            m.bytes(),
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
        let mut m = MsgBuilder::new(&tcmsg(self.ifb_index, PLUG_HANDLE, TC_H_ROOT, 0));
        m.attr_str(TCA_KIND, "plug");
        m.attr(
            TCA_OPTIONS,
            &plug_opt(3 /* TCQ_PLUG_LIMIT */, self.limit_bytes),
        );
        self.nl.request(
            netlink::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            m.bytes(),
            &format!("add plug qdisc on {}", self.ifb_name),
        )?;
        self.plug(TCQ_PLUG_RELEASE_INDEFINITE)?;
        // 3. ingress qdisc on the guest interface.
        let mut m = MsgBuilder::new(&tcmsg(self.guest_index, INGRESS_HANDLE, TC_H_INGRESS, 0));
        m.attr_str(TCA_KIND, "ingress");
        self.nl.request(
            netlink::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            m.bytes(),
            "add ingress qdisc on the guest interface",
        )?;
        // 4. u32 match-all filter for every protocol, action mirred egress redirect to the IFB.
        let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
        let mut m = MsgBuilder::new(&tcmsg(self.guest_index, 0, INGRESS_HANDLE, info));
        m.attr_str(TCA_KIND, "u32");
        let opts = m.begin_nest(TCA_OPTIONS);
        let mut sel = [0u8; 32]; // tc_u32_sel + one all-zero key (mask 0 matches anything)
        sel[0] = TC_U32_TERMINAL;
        sel[2] = 1; // nkeys
        m.attr(TCA_U32_SEL, &sel);
        let acts = m.begin_nest(TCA_U32_ACT);
        let a1 = m.begin_nest(1);
        m.attr_str(TCA_ACT_KIND, "mirred");
        let ao = m.begin_nest(TCA_ACT_OPTIONS);
        let mut parms = [0u8; 28];
        parms[8..12].copy_from_slice(&TC_ACT_STOLEN.to_ne_bytes());
        parms[20..24].copy_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
        parms[24..28].copy_from_slice(&self.ifb_index.to_ne_bytes());
        m.attr(TCA_MIRRED_PARMS, &parms);
        m.end_nest(ao);
        m.end_nest(a1);
        m.end_nest(acts);
        m.end_nest(opts);
        self.nl.request(
            netlink::RTM_NEWTFILTER,
            NLM_F_CREATE | NLM_F_EXCL,
            m.bytes(),
            "add u32/mirred redirect filter",
        )
    }

    fn plug(&mut self, action: i32) -> io::Result<()> {
        let mut m = MsgBuilder::new(&tcmsg(self.ifb_index, PLUG_HANDLE, TC_H_ROOT, 0));
        m.attr_str(TCA_KIND, "plug");
        m.attr(TCA_OPTIONS, &plug_opt(action, self.limit_bytes));
        self.nl
            .request(netlink::RTM_NEWQDISC, 0, m.bytes(), "change plug qdisc")
    }

    /// Drops whatever the plug holds by replacing it with a fresh one (which starts plugged).
    fn flush(&mut self) -> io::Result<()> {
        let m = MsgBuilder::new(&tcmsg(self.ifb_index, PLUG_HANDLE, TC_H_ROOT, 0));
        self.nl
            .request(netlink::RTM_DELQDISC, 0, m.bytes(), "delete plug qdisc")?;
        let mut m = MsgBuilder::new(&tcmsg(self.ifb_index, PLUG_HANDLE, TC_H_ROOT, 0));
        m.attr_str(TCA_KIND, "plug");
        m.attr(TCA_OPTIONS, &plug_opt(3, self.limit_bytes));
        self.nl.request(
            netlink::RTM_NEWQDISC,
            NLM_F_CREATE | NLM_F_EXCL,
            m.bytes(),
            "re-add plug qdisc",
        )
    }

    /// (backlog frames, backlog bytes, drops, sent frames, sent bytes) of the plug qdisc.
    fn qdisc_stats(&mut self) -> io::Result<(u64, u64, u64, u64, u64)> {
        let want = self.ifb_index;
        let mut out = None;
        self.nl
            .dump(netlink::RTM_GETQDISC, &tcmsg(0, 0, 0, 0), |_, payload| {
                let Some(h) = payload.get(0..20) else { return };
                let idx = i32::from_ne_bytes([h[4], h[5], h[6], h[7]]) as u32;
                let parent = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
                if idx != want || parent != TC_H_ROOT {
                    return;
                }
                let (mut qlen, mut backlog, mut drops, mut pkts, mut bytes) = (0, 0, 0, 0, 0);
                for (ty, d) in netlink::attrs(&payload[20..]) {
                    if ty != TCA_STATS2 {
                        continue;
                    }
                    for (sty, sd) in netlink::attrs(d) {
                        let u32_at = |o: usize| {
                            sd.get(o..o + 4)
                                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64)
                        };
                        match sty {
                            TCA_STATS_QUEUE => {
                                qlen = u32_at(0);
                                backlog = u32_at(4);
                                drops = u32_at(8);
                            }
                            TCA_STATS_BASIC => {
                                bytes = sd.get(0..8).map_or(0, |b| {
                                    u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]))
                                });
                                pkts = u32_at(8);
                            }
                            _ => {}
                        }
                    }
                }
                out = Some((qlen, backlog, drops, pkts, bytes));
            })?;
        out.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "plug qdisc not found"))
    }

    /// Removes everything this backend created, restoring the guest interface. Best effort:
    /// each step is tried even if an earlier one failed.
    fn teardown(&mut self) {
        let m = MsgBuilder::new(&tcmsg(self.guest_index, INGRESS_HANDLE, TC_H_INGRESS, 0));
        let _ = self
            .nl
            .request(netlink::RTM_DELQDISC, 0, m.bytes(), "delete ingress qdisc");
        let m = MsgBuilder::new(&ifinfomsg(self.ifb_index, 0, 0));
        let _ = self
            .nl
            .request(netlink::RTM_DELLINK, 0, m.bytes(), "delete ifb device");
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
