//! What a well-behaved client puts in a payload, a small PRNG, and names.
//!
//! Every payload starts with a fixed header naming its stream (sender, device,
//! target) and its counter in that stream; the rest is a fill pattern derived
//! from the header, so a receiver can tell a corrupted payload from a good one.

/// "SOAK", little endian.
const MAGIC: u32 = 0x4b41_4f53;

/// Bytes of the header; payloads are at least this long.
pub const HEADER: usize = 26;

/// What kind of stream a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A direct message; target = the receiving user's index.
    Dm = 1,
    /// A message to a long-lived room; target = the room's index.
    Room = 2,
    /// A message to a temporary room; target = its temporary room id.
    Temp = 3,
    /// A never-reading client's message to itself; target = its life number.
    SelfSend = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Dm,
            2 => Kind::Room,
            3 => Kind::Temp,
            4 => Kind::SelfSend,
            _ => return None,
        })
    }
}

/// One ordered stream of messages: one sending device to one target. Counters
/// in a stream are 1, 2, 3, ... across the device's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub kind: Kind,
    /// Index of the sending user in [`Names::users`].
    pub sender: u32,
    /// Device of the sender (0 or 1).
    pub device: u8,
    pub target: u32,
}

/// The header of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub key: StreamKey,
    /// The sending device's session number (for diagnostics).
    pub epoch: u32,
    pub counter: u64,
}

fn fill_byte(h: &Header, i: usize) -> u8 {
    (h.counter as u8) ^ (i as u8).wrapping_mul(31) ^ (h.key.sender as u8)
}

/// Appends a payload of `size` bytes (at least [`HEADER`]) to `out`.
pub fn encode(h: &Header, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(h.key.kind as u8);
    out.extend_from_slice(&h.key.sender.to_le_bytes());
    out.push(h.key.device);
    out.extend_from_slice(&h.key.target.to_le_bytes());
    out.extend_from_slice(&h.epoch.to_le_bytes());
    out.extend_from_slice(&h.counter.to_le_bytes());
    debug_assert_eq!(out.len() - start, HEADER);
    for i in HEADER..size.max(HEADER) {
        out.push(fill_byte(h, i));
    }
}

/// Reads and checks a payload: the header, and every fill byte.
pub fn decode(p: &[u8]) -> Result<Header, &'static str> {
    if p.len() < HEADER {
        return Err("payload shorter than the header");
    }
    let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    if u32_at(0) != MAGIC {
        return Err("bad magic");
    }
    let kind = Kind::from_u8(p[4]).ok_or("bad kind")?;
    let h = Header {
        key: StreamKey {
            kind,
            sender: u32_at(5),
            device: p[9],
            target: u32_at(10),
        },
        epoch: u32_at(14),
        counter: u64::from_le_bytes(p[18..26].try_into().expect("8 bytes")),
    };
    if p[HEADER..]
        .iter()
        .enumerate()
        .any(|(i, &b)| b != fill_byte(&h, HEADER + i))
    {
        return Err("fill bytes corrupted");
    }
    Ok(h)
}

/// xorshift64*: fast, seedable, good enough for choosing what to do next.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Who is who: every user the driver checks messages for has an index.
#[derive(Debug)]
pub struct Names {
    pub prefix: String,
    pub users: Vec<String>,
    pub rooms: Vec<String>,
    pub n_dm: usize,
    /// First index of each group.
    pub slow0: usize,
    pub n_slow: usize,
    pub vis0: usize,
    pub n_vis: usize,
    pub nr0: usize,
}

impl Names {
    pub fn new(
        prefix: &str,
        n_dm: usize,
        n_slow: usize,
        n_vis: usize,
        n_nr: usize,
        n_rooms: usize,
    ) -> Names {
        let mut users = Vec::new();
        users.extend((0..n_dm).map(|i| format!("{prefix}u{i}")));
        let slow0 = users.len();
        users.extend((0..n_slow).map(|i| format!("{prefix}slow{i}")));
        let vis0 = users.len();
        // Each visitor has a buddy for its temporary rooms: visitor i is vis0 + 2i,
        // its buddy vis0 + 2i + 1.
        for i in 0..n_vis {
            users.push(format!("{prefix}v{i}"));
            users.push(format!("{prefix}v{i}b"));
        }
        let nr0 = users.len();
        users.extend((0..n_nr).map(|i| format!("{prefix}nr{i}")));
        Names {
            prefix: prefix.to_owned(),
            users,
            rooms: (0..n_rooms).map(|r| format!("{prefix}room{r}")).collect(),
            n_dm,
            slow0,
            n_slow,
            vis0,
            n_vis,
            nr0,
        }
    }

    /// Name of temporary room `tid`.
    pub fn temp_room(&self, tid: u32) -> String {
        format!("{}t{tid}", self.prefix)
    }

    /// Users of the connection churn (not checked), a small reused pool.
    pub fn churn_user(&self, i: usize) -> String {
        format!("{}c{}", self.prefix, i % 64)
    }

    /// Users that log in and then send garbage.
    pub fn garbage_user(&self, i: usize) -> String {
        format!("{}g{}", self.prefix, i % 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_and_corruption() {
        let h = Header {
            key: StreamKey {
                kind: Kind::Room,
                sender: 7,
                device: 1,
                target: 3,
            },
            epoch: 2,
            counter: 123_456,
        };
        for size in [0, HEADER, 100, 4096] {
            let mut v = Vec::new();
            encode(&h, size, &mut v);
            assert_eq!(v.len(), size.max(HEADER));
            assert_eq!(decode(&v), Ok(h));
            if v.len() > HEADER {
                let last = v.len() - 1;
                v[last] ^= 1;
                assert!(decode(&v).is_err());
            }
        }
        assert!(decode(b"short").is_err());
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let x = r.range(3, 5);
            assert!((3..=5).contains(&x));
            assert!(r.below(4) < 4);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
