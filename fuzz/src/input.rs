//! The byte format of every target: fixed-width little-endian fields read through
//! [`arbitrary::Unstructured`] (which pads with zeros when the input runs out), and the matching
//! writer the seed generator uses, so seeds are plain byte strings built field by field.

use arbitrary::{Arbitrary, Unstructured};

/// Reads fixed-width fields; past the end of the input every field reads as zero.
pub struct Src<'a> {
    u: Unstructured<'a>,
}

impl<'a> Src<'a> {
    /// A reader over a fuzzer input.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            u: Unstructured::new(data),
        }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }

    fn get<T: Arbitrary<'a> + Default>(&mut self) -> T {
        T::arbitrary(&mut self.u).unwrap_or_default()
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.get()
    }

    /// Two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        self.get()
    }

    /// Four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        self.get()
    }

    /// Eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        self.get()
    }

    /// One byte; its low bit.
    pub fn bool(&mut self) -> bool {
        self.get()
    }

    /// Up to `n` raw bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.u.len());
        self.u.bytes(n).unwrap_or(&[])
    }
}

/// Writes the fields [`Src`] reads, in the same encoding.
#[derive(Default, Debug, Clone)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// Two bytes.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Four bytes.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Eight bytes.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A boolean byte.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    /// Raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}
