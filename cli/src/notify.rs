//! systemd's readiness protocol (`Type=notify`): `READY=1` once the VM is protected (protect)
//! or this host can take it over (receive), `STATUS=` with the sync progress and the state,
//! `STOPPING=1` when a stop begins. Without `NOTIFY_SOCKET` (not under systemd) every call is
//! a no-op.
//!
//! The datagrams are sent by the `sd-notify` crate (small, no dependencies beyond libc, handles
//! abstract socket names); this module only decides what to say and how often: STATUS changes
//! are sent when they change, at most one a second, except the one that goes with READY=1 or
//! STOPPING=1, which is never held back. The daemons remus starts do not inherit
//! `NOTIFY_SOCKET` (supervise.rs removes it): only remus speaks for the unit.

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// The shortest gap between two STATUS updates that are not milestones.
const MIN_GAP: Duration = Duration::from_secs(1);

pub struct Notifier {
    enabled: bool,
    last_status: String,
    last_sent: Option<Instant>,
    ready: bool,
}

impl Notifier {
    /// Speaks to the manager named by `NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            last_status: String::new(),
            last_sent: None,
            ready: false,
        }
    }

    fn send(&mut self, states: &[NotifyState]) {
        if self.enabled {
            // The manager may be gone (a stop in progress); nothing to do about it here.
            let _ = sd_notify::notify(false, states);
        }
    }

    /// A progress or state line; repeated and too-frequent lines are dropped.
    pub fn status(&mut self, text: &str) {
        let text = one_line(text);
        if text == self.last_status || self.last_sent.is_some_and(|t| t.elapsed() < MIN_GAP) {
            return;
        }
        self.last_sent = Some(Instant::now());
        self.send(&[NotifyState::Status(&text)]);
        self.last_status = text;
    }

    /// A milestone line, sent whatever came just before.
    pub fn milestone(&mut self, text: &str) {
        let text = one_line(text);
        self.last_sent = Some(Instant::now());
        self.send(&[NotifyState::Status(&text)]);
        self.last_status = text;
    }

    /// The unit is up: protected, or able to take over. READY=1 is sent once; later calls are
    /// milestones.
    pub fn ready(&mut self, text: &str) {
        if self.ready {
            return self.milestone(text);
        }
        self.ready = true;
        let text = one_line(text);
        self.last_sent = Some(Instant::now());
        self.send(&[NotifyState::Ready, NotifyState::Status(&text)]);
        self.last_status = text;
    }

    pub fn stopping(&mut self, text: &str) {
        let text = one_line(text);
        self.send(&[NotifyState::Stopping, NotifyState::Status(&text)]);
        self.last_status = text;
    }
}

/// STATUS= is one line; a progress bar's carriage returns and any newline go.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn recv(s: &UnixDatagram) -> String {
        let mut b = [0u8; 4096];
        let n = s.recv(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn says_ready_once_and_keeps_status_to_one_line_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Tests run in threads of one process: the variable is set for this test only and the
        // notifier reads it at construction.
        let mut n = Notifier {
            enabled: true,
            ..Notifier::from_env()
        };
        std::env::set_var("NOTIFY_SOCKET", &path);
        n.status("initial sync [##--]  50%\r");
        assert_eq!(recv(&sock), "STATUS=initial sync [##--]  50%\n");
        n.status("initial sync [###-]  75%"); // within the second: dropped
        n.ready("PROTECTED:\na checkpoint every 100 ms");
        assert_eq!(
            recv(&sock),
            "READY=1\nSTATUS=PROTECTED: a checkpoint every 100 ms\n"
        );
        n.ready("PROTECTED again");
        assert_eq!(
            recv(&sock),
            "STATUS=PROTECTED again\n",
            "READY=1 is sent once"
        );
        n.stopping("stopping");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=stopping\n");
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
