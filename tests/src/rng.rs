//! A small deterministic random source (xorshift64) for tests that must replay from a seed.

pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed`, spread so that small seeds differ at once (never 0, which
    /// xorshift cannot leave).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-enough in 0..n (n = 0 is taken as 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
