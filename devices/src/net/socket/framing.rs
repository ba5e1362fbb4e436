//! The stream framing of QEMU's `-netdev stream` (also spoken by passt and socket_vmnet): every
//! Ethernet frame goes behind its length, 4 bytes big-endian. Pure state, no I/O, so that the
//! backend's reads and writes of any size can be checked here byte by byte.
//!
//! Reading: the [`Decoder`] says where the next bytes of the stream belong: the rest of the
//! current frame ([`Decoder::body`]), then the next length prefix ([`Decoder::header_room`]); a
//! gather read fills both in one call, and [`Decoder::advance`] accounts for what came.
//! Writing: each frame is sent as its [`header`] followed by its bytes, several frames per gather
//! write, and [`written`] tells which frames a write of `n` bytes took whole and how much of the
//! one it cut.

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;

/// A length prefix above the limit: the stream cannot be trusted past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer announced a {len}-byte frame, above the {limit}-byte limit")]
pub struct Oversized {
    /// The announced length.
    pub len: usize,
    /// The largest length taken.
    pub limit: usize,
}

/// Splits a byte stream into frames.
#[derive(Clone, Debug)]
pub struct Decoder {
    limit: usize,
    hdr: [u8; LEN_BYTES],
    hdr_have: usize,
    /// The frame being read: its length and how many of its bytes came.
    body: Option<(usize, usize)>,
    zero_len: u64,
    failed: Option<Oversized>,
}

impl Decoder {
    /// A decoder taking frames of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            hdr: [0; LEN_BYTES],
            hdr_have: 0,
            body: None,
            zero_len: 0,
            failed: None,
        }
    }

    /// The frame being read, as `(length, bytes already read)`; `None` between frames.
    pub fn body(&self) -> Option<(usize, usize)> {
        self.body
    }

    /// Room for the rest of the next length prefix, to read after the current frame's rest.
    /// Empty once the decoder has failed.
    pub fn header_room(&mut self) -> &mut [u8] {
        if self.failed.is_some() {
            return &mut [];
        }
        &mut self.hdr[self.hdr_have..]
    }

    /// Accounts for `n` bytes read in the order the decoder asked for them: first the rest of
    /// the current frame, then into [`header_room`](Self::header_room). Returns the length of
    /// the frame those bytes completed, if any. Frames of length 0 carry nothing and are
    /// skipped (counted in [`zero_length_frames`](Self::zero_length_frames)); a length above
    /// the limit stops the decoder for good ([`failed`](Self::failed)).
    pub fn advance(&mut self, mut n: usize) -> Option<usize> {
        let mut done = None;
        if let Some((len, have)) = self.body {
            let k = n.min(len - have);
            n -= k;
            if have + k < len {
                self.body = Some((len, have + k));
                return None;
            }
            self.body = None;
            done = Some(len);
        }
        if self.failed.is_some() {
            return done;
        }
        let k = n.min(LEN_BYTES - self.hdr_have);
        self.hdr_have += k;
        if self.hdr_have == LEN_BYTES {
            self.hdr_have = 0;
            let len = u32::from_be_bytes(self.hdr) as usize;
            if len > self.limit {
                self.failed = Some(Oversized {
                    len,
                    limit: self.limit,
                });
            } else if len == 0 {
                self.zero_len += 1;
            } else {
                self.body = Some((len, 0));
            }
        }
        done
    }

    /// Why the decoder stopped, if it did.
    pub fn failed(&self) -> Option<Oversized> {
        self.failed
    }

    /// Frames of length 0 seen so far.
    pub fn zero_length_frames(&self) -> u64 {
        self.zero_len
    }
}

/// The length prefix of a frame of `len` bytes; `None` if it does not fit in 32 bits.
pub fn header(len: usize) -> Option<[u8; LEN_BYTES]> {
    u32::try_from(len).ok().map(u32::to_be_bytes)
}

/// After a gather write of frames with these lengths (each sent as its prefix, then its bytes)
/// took `n` bytes: how many frames went out whole, and, if the write ended inside a frame, how
/// many bytes of that frame (prefix included) went out.
pub fn written(
    frame_lens: impl IntoIterator<Item = usize>,
    mut n: usize,
) -> (usize, Option<usize>) {
    let mut whole = 0;
    for len in frame_lens {
        if n == 0 {
            break;
        }
        let total = LEN_BYTES + len;
        if n < total {
            return (whole, Some(n));
        }
        n -= total;
        whole += 1;
    }
    (whole, None)
}

/// The bytes of a frame still to send once `from` of them went (prefix included).
pub fn unsent(prefix: [u8; LEN_BYTES], body: &[u8], from: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity((LEN_BYTES + body.len()).saturating_sub(from));
    if from < LEN_BYTES {
        v.extend_from_slice(&prefix[from..]);
    }
    v.extend_from_slice(body.get(from.saturating_sub(LEN_BYTES)..).unwrap_or(&[]));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` to a decoder in reads of the sizes `chunks` gives (cycled), as a gather
    /// read would split it: frame rest first, then the prefix. Returns the frames and the
    /// decoder.
    fn decode(stream: &[u8], limit: usize, chunks: &[usize]) -> (Vec<Vec<u8>>, Decoder) {
        let mut d = Decoder::new(limit);
        let mut frames = Vec::new();
        let mut cur: Vec<u8> = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < stream.len() && d.failed().is_none() {
            let want_body = d.body().map_or(0, |(len, have)| len - have);
            let room = want_body + d.header_room().len();
            let n = chunks[i % chunks.len()].min(room).min(stream.len() - pos);
            i += 1;
            let got = &stream[pos..pos + n];
            pos += n;
            let body_part = n.min(want_body);
            cur.extend_from_slice(&got[..body_part]);
            let hdr_part = &got[body_part..];
            d.header_room()[..hdr_part.len()].copy_from_slice(hdr_part);
            if let Some(len) = d.advance(n) {
                assert_eq!(cur.len(), len);
                frames.push(std::mem::take(&mut cur));
            }
        }
        (frames, d)
    }

    fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut s = Vec::new();
        for f in frames {
            s.extend_from_slice(&header(f.len()).unwrap());
            s.extend_from_slice(f);
        }
        s
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_split() {
        let a: Vec<u8> = (0..60).collect();
        let b: Vec<u8> = (0..1514).map(|i| i as u8).collect();
        let c = [0xaa];
        let stream = encode(&[&a, &b, &c]);
        for chunks in [&[1][..], &[2], &[3], &[5, 1, 7], &[4096], &[63, 1, 1, 2]] {
            let (frames, d) = decode(&stream, 1518, chunks);
            assert_eq!(frames, vec![a.clone(), b.clone(), c.to_vec()], "{chunks:?}");
            assert!(d.failed().is_none());
            assert_eq!(d.body(), None);
        }
    }

    #[test]
    fn a_prefix_split_across_reads_is_put_back_together() {
        // 0x0000_0102 = 258 bytes: any byte of the prefix read alone must count.
        let f = vec![7u8; 258];
        let (frames, _) = decode(&encode(&[&f]), 1518, &[1]);
        assert_eq!(frames, vec![f]);
    }

    #[test]
    fn zero_length_frames_are_skipped_and_counted() {
        let a = [1u8, 2, 3];
        let stream = encode(&[&[], &a, &[], &[], &a]);
        let (frames, d) = decode(&stream, 1518, &[3]);
        assert_eq!(frames, vec![a.to_vec(), a.to_vec()]);
        assert_eq!(d.zero_length_frames(), 3);
    }

    #[test]
    fn a_length_above_the_limit_stops_the_decoder_after_the_frame_before_it() {
        let a = [9u8; 100];
        let mut stream = encode(&[&a]);
        stream.extend_from_slice(&header(1519).unwrap());
        stream.extend_from_slice(&[0; 1519]);
        let (frames, mut d) = decode(&stream, 1518, &[4096]);
        assert_eq!(frames, vec![a.to_vec()]);
        assert_eq!(
            d.failed(),
            Some(Oversized {
                len: 1519,
                limit: 1518
            })
        );
        assert!(d.header_room().is_empty());
        // The limit itself is taken.
        let (frames, d) = decode(&encode(&[&[5; 1518]]), 1518, &[700]);
        assert_eq!(frames.len(), 1);
        assert!(d.failed().is_none());
    }

    #[test]
    fn the_largest_prefix_is_refused_not_wrapped() {
        let (_, d) = decode(&[0xff; 4], 65535, &[4]);
        assert_eq!(d.failed().map(|o| o.len), Some(u32::MAX as usize));
    }

    #[test]
    fn written_counts_whole_frames_and_the_cut_one() {
        let lens = [10, 20, 30];
        assert_eq!(written(lens, 0), (0, None));
        assert_eq!(written(lens, 3), (0, Some(3)));
        assert_eq!(written(lens, 14), (1, None));
        assert_eq!(written(lens, 15), (1, Some(1)));
        assert_eq!(written(lens, 14 + 24 + 33), (2, Some(33)));
        assert_eq!(written(lens, 14 + 24 + 34), (3, None));
    }

    #[test]
    fn the_unsent_rest_of_a_cut_frame_starts_where_the_write_stopped() {
        let p = header(3).unwrap();
        let body = [7, 8, 9];
        let whole = [0, 0, 0, 3, 7, 8, 9];
        for from in 0..=7 {
            assert_eq!(unsent(p, &body, from), whole[from..], "from {from}");
        }
    }

    #[test]
    fn headers_are_big_endian_and_bounded() {
        assert_eq!(header(0x0102), Some([0, 0, 1, 2]));
        assert_eq!(header(usize::MAX), None);
    }
}
