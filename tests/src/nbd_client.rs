//! A minimal NBD client (fixed newstyle, OPT_GO, simple replies) for tests that need random
//! writes at scale or byte-level control over what is sent. Reads and comparisons in the tests
//! go through real clients (qemu-io, qemu-img, nbdcopy) wherever they can.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

pub struct NbdClient {
    pub s: TcpStream,
    pub size: u64,
    cookie: u64,
}

impl NbdClient {
    pub fn connect(addr: &str, export: &str) -> Result<NbdClient> {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g)?;
        if &g[0..8] != b"NBDMAGIC" {
            bail!("not an NBD server");
        }
        s.write_all(&3u32.to_be_bytes())?; // FIXED_NEWSTYLE | NO_ZEROES
        let mut data = (export.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&0x4948_4156_454F_5054u64.to_be_bytes())?;
        s.write_all(&7u32.to_be_bytes())?; // OPT_GO
        s.write_all(&(data.len() as u32).to_be_bytes())?;
        s.write_all(&data)?;
        let mut size = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let ty = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
            let mut d = vec![0u8; len];
            s.read_exact(&mut d)?;
            match ty {
                1 => break,
                3 if d.len() >= 12 && d[0..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(d[2..10].try_into()?));
                }
                3 => {}
                t => bail!("option reply {t:#x}: {}", String::from_utf8_lossy(&d)),
            }
        }
        Ok(NbdClient {
            s,
            size: size.context("no export size")?,
            cookie: 0,
        })
    }

    /// Sends one request (and its payload) without waiting for the reply; returns its cookie.
    pub fn send(
        &mut self,
        flags: u16,
        ty: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<u64> {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&flags.to_be_bytes());
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r)?;
        Ok(self.cookie)
    }

    /// Reads one simple reply: (errno, cookie); reads `data_len` bytes of data if errno is 0.
    pub fn reply(&mut self, data_len: usize) -> Result<(u32, u64, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if h[0..4] != 0x6744_6698u32.to_be_bytes() {
            bail!("bad reply magic");
        }
        let errno = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into()?);
        let mut d = Vec::new();
        if errno == 0 && data_len > 0 {
            d = vec![0u8; data_len];
            self.s.read_exact(&mut d)?;
        }
        Ok((errno, cookie, d))
    }

    fn call(
        &mut self,
        flags: u16,
        ty: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>> {
        let c = self.send(flags, ty, offset, len, payload)?;
        let dl = if ty == CMD_READ { len as usize } else { 0 };
        let (errno, cookie, d) = self.reply(dl)?;
        if cookie != c {
            bail!("reply for cookie {cookie}, expected {c}");
        }
        if errno != 0 {
            bail!("NBD error {errno}");
        }
        Ok(d)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.call(0, CMD_WRITE, offset, data.len() as u32, data)
            .map(|_| ())
    }

    pub fn zero(&mut self, offset: u64, len: u32) -> Result<()> {
        self.call(0, CMD_WRITE_ZEROES, offset, len, &[]).map(|_| ())
    }

    pub fn trim(&mut self, offset: u64, len: u32) -> Result<()> {
        self.call(0, CMD_TRIM, offset, len, &[]).map(|_| ())
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.call(0, CMD_READ, offset, len, &[])
    }

    pub fn flush(&mut self) -> Result<()> {
        self.call(0, CMD_FLUSH, 0, 0, &[]).map(|_| ())
    }

    pub fn disconnect(mut self) -> Result<()> {
        self.send(0, CMD_DISC, 0, 0, &[])?;
        Ok(())
    }
}
