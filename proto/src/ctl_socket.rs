//! The I/O shell of the control protocol: a Unix-socket server (one thread per connection, which
//! is plenty for a handful of controllers) and a blocking client.
//!
//! The socket is created mode 0600: whoever can write to it can release a VM's held output.

use crate::control::{ControlError, ErrorCode, Reply, Request, MAX_LINE};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Handles one request. Called concurrently from several connection threads.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Most control connections served at once. Each costs a thread and two descriptors; a client
/// beyond the cap gets one `err` line and is hung up on, so a runaway poller (or a hostile local
/// user) cannot exhaust the daemon's descriptors and take the control socket down with it.
pub const MAX_CONNECTIONS: usize = 64;

/// Makes `path` free for a new Unix socket. Nothing there: fine. A socket nobody listens on (a
/// stale one from a crashed daemon) is removed. A live socket is an `AddrInUse` error, so that
/// two daemons never fight over one VM. Anything that is not a socket (a regular file, a
/// directory, a symlink) is never removed: `AlreadyExists`, exit code 7 (busy), because a
/// mistyped `--control` must not delete a user's file.
pub fn claim_socket_path(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: refusing to replace it (choose another path)",
                path.display()
            ),
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is held by a running daemon", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Binds a control socket (see [`claim_socket_path`] for what may already be at `path`).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    claim_socket_path(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A running control server; dropping it stops accepting and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    conns: Connections,
}

impl ControlServer {
    pub fn start(path: &Path, handler: Handler) -> io::Result<ControlServer> {
        let listener = bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let conns = Connections::default();
        let conns2 = conns.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, handler, stop2, conns2))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
            conns,
        })
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        lock(&self.conns).streams.len()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The open connections, so that a stopping server can hang up on them. Each entry is removed
/// (and its descriptor closed) by its own connection thread when the connection ends: keeping
/// it any longer would leak one descriptor per connection and keep the peer from ever seeing
/// the hang-up.
#[derive(Default)]
struct Open {
    next_id: u64,
    streams: HashMap<u64, UnixStream>,
}

type Connections = Arc<Mutex<Open>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    listener: UnixListener,
    handler: Handler,
    stop: Arc<AtomicBool>,
    conns: Connections,
) {
    while !stop.load(Ordering::SeqCst) {
        // poll() with a timeout so that the stop flag is seen without a busy loop.
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => admit(stream, &handler, &conns),
            Err(e) => {
                eprintln!("warning: control socket accept: {e}");
                // Out of descriptors (EMFILE) leaves the connection pending: poll would
                // report it again at once. Back off instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    // Hang up on every client so their threads end and nobody talks to a stopped daemon.
    for (_, c) in lock(&conns).streams.drain() {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
}

/// Starts serving one accepted connection on its own thread, or refuses it when the server is
/// at [`MAX_CONNECTIONS`].
fn admit(mut stream: UnixStream, handler: &Handler, conns: &Connections) {
    let id = {
        let mut open = lock(conns);
        if open.streams.len() >= MAX_CONNECTIONS {
            drop(open);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(
                Reply::Err(ControlError::new(
                    ErrorCode::Backend,
                    format!("too many control connections (at most {MAX_CONNECTIONS})"),
                ))
                .to_line()
                .as_bytes(),
            );
            return;
        }
        let Ok(c) = stream.try_clone() else {
            return;
        };
        open.next_id += 1;
        let id = open.next_id;
        open.streams.insert(id, c);
        id
    };
    let h = handler.clone();
    let conns2 = conns.clone();
    let spawned = std::thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            serve_connection(stream, h);
            lock(&conns2).streams.remove(&id);
        });
    if spawned.is_err() {
        lock(conns).streams.remove(&id);
    }
}

/// Reads one line of at most MAX_LINE bytes. Ok(None) at end of stream.
fn read_bounded_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    buf.clear();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(Some(()))
}

/// How long a reply may wait for a client that does not read: after that the connection is
/// dropped rather than holding its thread forever.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves requests until the client hangs up, sends an over-long line (answered, then the
/// connection is closed: the rest of that line cannot be told apart from the next request), or
/// stops reading. The stream is dropped, and with it the descriptor, when this returns.
fn serve_connection(stream: UnixStream, handler: Handler) {
    let _ = stream.set_write_timeout(Some(REPLY_TIMEOUT));
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut buf = Vec::with_capacity(256);
    loop {
        let reply = match read_bounded_line(&mut reader, &mut buf) {
            Ok(None) => return,
            Ok(Some(())) => match std::str::from_utf8(&buf) {
                Ok(line) => match Request::parse(line) {
                    Ok(req) => handler(&req),
                    Err(e) => Reply::Err(e),
                },
                Err(_) => Reply::Err(ControlError::new(ErrorCode::Parse, "request is not UTF-8")),
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = writer.write_all(
                    Reply::Err(ControlError::new(
                        ErrorCode::Parse,
                        format!("request line too long (at most {MAX_LINE} bytes): closing the connection"),
                    ))
                    .to_line()
                    .as_bytes(),
                );
                hang_up(&stream);
                return;
            }
            Err(_) => return,
        };
        if writer.write_all(reply.to_line().as_bytes()).is_err() {
            return;
        }
    }
}

/// Closes a connection whose client may still be sending (the rest of an over-long line):
/// the client reads the answer and then end-of-stream. Closing with its bytes unread would
/// make the kernel report a reset to the client instead, possibly before it read the answer;
/// so they are read and dropped first, at most 1 MiB or for 1 s.
fn hang_up(stream: &UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 8192];
    let mut dropped = 0usize;
    let mut r = stream;
    while dropped < (1 << 20) && std::time::Instant::now() < deadline {
        match r.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => dropped += n,
        }
    }
}

/// A client connection to a control socket; keeps the connection for many requests.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    pub fn connect(path: &Path) -> io::Result<ControlClient> {
        let s = UnixStream::connect(path)?;
        let writer = s.try_clone()?;
        Ok(ControlClient {
            reader: BufReader::new(s),
            writer,
        })
    }

    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(t)
    }

    /// Sends one request line (a trailing newline is added if missing) and waits for its reply.
    pub fn request(&mut self, line: &str) -> io::Result<Reply> {
        let mut l = line.trim_end_matches('\n').to_string();
        l.push('\n');
        self.writer.write_all(l.as_bytes())?;
        let mut buf = Vec::new();
        match read_bounded_line(&mut self.reader, &mut buf)? {
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "daemon closed the control connection",
            )),
            Some(()) => {
                let s = String::from_utf8_lossy(&buf);
                Reply::parse(&s).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }
}

/// The `TOOL ctl --control PATH [--json] COMMAND...` client every daemon's binary offers.
/// Prints the text after `ok` on stdout (exit 0); an `err` reply on stderr (exit 3, and the
/// remaining lines are still sent); an unreachable daemon exits 4. A lone `-` reads one
/// command per line from standard input.
pub fn run_client(tool: &str, path: &Path, json: bool, command: &[String]) -> i32 {
    use crate::exit;
    let mut client = match ControlClient::connect(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{tool}: cannot reach the daemon at {}: {e}", path.display());
            return exit::UNREACHABLE;
        }
    };
    let _ = client.set_timeout(Some(Duration::from_secs(60)));
    let lines: Vec<String> = if command.len() == 1 && command[0] == "-" {
        io::stdin().lock().lines().map_while(Result::ok).collect()
    } else {
        let mut l = command.join(" ");
        if json && !command.iter().any(|w| w == "json" || w == "--json") {
            l.push_str(" json");
        }
        vec![l]
    };
    let mut code = exit::OK;
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        match client.request(line) {
            Ok(Reply::Ok(text)) => println!("{text}"),
            Ok(Reply::Err(e)) => {
                eprintln!("{tool}: {line}: err {} {}", e.code, e.message);
                code = exit::REJECTED;
            }
            Err(e) => {
                eprintln!("{tool}: {line}: {e}");
                return exit::UNREACHABLE;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_sock(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("remus-proto-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn serves_requests_and_rejects_garbage() {
        let path = tmp_sock("serve");
        let handler: Handler = Arc::new(|req: &Request| match req.verb.as_str() {
            "echo" => Reply::ok(req.args.join(" ")),
            _ => Reply::Err(req.unknown(&["echo"])),
        });
        let server = ControlServer::start(&path, handler).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same path is refused.
        let again = ControlServer::start(&path, Arc::new(|_: &Request| Reply::ok("")));
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );

        let mut c = ControlClient::connect(&path).unwrap();
        assert_eq!(c.request("echo a b").unwrap(), Reply::ok("a b"));
        match c.request("nope").unwrap() {
            Reply::Err(e) => assert_eq!(e.code, ErrorCode::Unknown),
            r => panic!("{r:?}"),
        }
        match c.request("   ").unwrap() {
            Reply::Err(e) => assert_eq!(e.code, ErrorCode::Parse),
            r => panic!("{r:?}"),
        }
        // Still usable after errors.
        assert_eq!(c.request("echo x").unwrap(), Reply::ok("x"));
        // An over-long line is answered, then the connection is closed; the server keeps
        // serving others.
        let long = "echo ".to_string() + &"a".repeat(MAX_LINE + 10);
        match c.request(&long).unwrap() {
            Reply::Err(e) => assert!(e.message.contains("too long"), "{e}"),
            r => panic!("{r:?}"),
        }
        let mut rest = Vec::new();
        c.reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing after the answer but the hang-up");
        let mut c2 = ControlClient::connect(&path).unwrap();
        assert_eq!(c2.request("echo y").unwrap(), Reply::ok("y"));
        drop(server);
        assert!(!path.exists());
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn closed_connections_are_forgotten_and_extra_ones_refused() {
        let path = tmp_sock("conns");
        let server =
            ControlServer::start(&path, Arc::new(|_: &Request| Reply::ok("pong"))).unwrap();
        for _ in 0..300 {
            let mut c = ControlClient::connect(&path).unwrap();
            assert_eq!(c.request("ping").unwrap(), Reply::ok("pong"));
        }
        wait_until("every closed connection released", || {
            server.connections() == 0
        });
        let held: Vec<ControlClient> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut c = ControlClient::connect(&path).unwrap();
                assert_eq!(c.request("ping").unwrap(), Reply::ok("pong"));
                c
            })
            .collect();
        let mut extra = ControlClient::connect(&path).unwrap();
        match extra.request("ping") {
            Ok(Reply::Err(e)) => assert!(e.message.contains("too many"), "{e}"),
            // The refusal may race our request: the hang-up is then all we see.
            Err(_) => {}
            Ok(r) => panic!("{r:?}"),
        }
        drop(held);
        wait_until("held connections released", || server.connections() == 0);
        let mut c = ControlClient::connect(&path).unwrap();
        assert_eq!(c.request("ping").unwrap(), Reply::ok("pong"));
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let path = tmp_sock("regular");
        std::fs::write(&path, b"precious").unwrap();
        let e = ControlServer::start(&path, Arc::new(|_: &Request| Reply::ok("")))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(crate::exit::for_io_error(&e), crate::exit::BUSY);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
        let dir = tmp_sock("dir");
        std::fs::create_dir(&dir).unwrap();
        assert!(ControlServer::start(&dir, Arc::new(|_: &Request| Reply::ok(""))).is_err());
        assert!(dir.is_dir());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let path = tmp_sock("stale");
        let l = UnixListener::bind(&path).unwrap();
        drop(l); // file stays, nobody listens
        let server = ControlServer::start(&path, Arc::new(|_: &Request| Reply::ok("")));
        assert!(server.is_ok());
    }
}
