//! Accepting gRPC clients that send the socket path as `:authority`.
//!
//! Over a unix socket there is no host name, and clients disagree on what
//! to put in HTTP/2's `:authority`: grpc-go (the kubelet, the CSI sidecars)
//! sends `localhost`, but grpcio since 1.57 sends the percent-encoded path
//! (`tmp%2Fcsi.sock`), and grpc-java and csc send the raw path
//! (`/csi/csi.sock`). Neither is a valid authority, and h2 answers such a
//! request with RST_STREAM(PROTOCOL_ERROR) before tonic or any tower layer
//! sees it; h2 has no setting to relax that.
//!
//! So the fix sits below h2, on the bytes the client sends. [`FixAuthority`]
//! wraps each accepted connection: it passes the client's frames through
//! unchanged, except header blocks (HEADERS and their CONTINUATIONs), which
//! it decodes with its own HPACK decoder (kept in step with the client's
//! encoder), rewrites an `:authority` that is not a valid authority to
//! `localhost`, and re-encodes without the dynamic table, so h2's decoder
//! never depends on entries it did not see. Everything h2 sends goes to the
//! client untouched. A connection that breaks the framing rules is passed on
//! as it came from that point, so h2 still judges it and answers with the
//! error it would have given.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The value an invalid `:authority` is replaced with: what grpc-go and the
/// kubelet send over unix sockets.
const REPLACEMENT: &[u8] = b"localhost";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's smallest (and h2's default) SETTINGS_MAX_FRAME_SIZE: frames of
/// this size are always accepted, whatever the server advertised.
const OUT_FRAME_MAX: usize = 16_384;
/// The HPACK dynamic table size the client's encoder may use: HTTP/2's
/// default SETTINGS_HEADER_TABLE_SIZE, which the server (tonic's h2) never
/// changes.
const CLIENT_TABLE_SIZE: usize = 4_096;
/// The most bytes of one header block held for rewriting. A larger block
/// goes to h2 as it came; h2 refuses it under its own, smaller, limit.
const BLOCK_LIMIT: usize = 1 << 20;
const READ_CHUNK: usize = 16 * 1024;

/// One accepted connection, with `:authority` fixed on the way in.
pub struct FixAuthority<T> {
    inner: T,
    state: State,
    /// Bytes read from the client, not yet passed on.
    input: BytesMut,
    /// Bytes ready for h2.
    output: BytesMut,
    eof: bool,
}

enum State {
    Preface,
    Frames(Box<Frames>),
    /// Everything from here on is passed on unchanged.
    Passthrough,
}

struct Frames {
    decoder: loona_hpack::Decoder<'static>,
    /// Bytes still to copy of a frame that is passed on unchanged.
    copying: usize,
    block: Option<Block>,
    fixed_one: bool,
}

/// A header block whose END_HEADERS has not arrived yet.
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
    /// The frames as received, passed on as they are if the block turns out
    /// to break the rules.
    raw: BytesMut,
}

impl<T> FixAuthority<T> {
    pub fn new(inner: T) -> Self {
        FixAuthority {
            inner,
            state: State::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }

    /// Moves what can be moved from `input` to `output`.
    fn process(&mut self) {
        loop {
            match &mut self.state {
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        // Not HTTP/2 with prior knowledge: h2 will say so.
                        self.state = State::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    self.output.extend_from_slice(&self.input.split_to(n));
                    let mut decoder = loona_hpack::Decoder::new();
                    decoder.set_max_allowed_table_size(CLIENT_TABLE_SIZE);
                    self.state = State::Frames(Box::new(Frames {
                        decoder,
                        copying: 0,
                        block: None,
                        fixed_one: false,
                    }));
                }
                State::Passthrough => {
                    let all = self.input.split();
                    self.output.extend_from_slice(&all);
                    return;
                }
                State::Frames(frames) => match frames.step(&mut self.input, &mut self.output) {
                    Step::Again => {}
                    Step::NeedMore => return,
                    Step::GiveUp(why) => {
                        tracing::debug!(
                            why,
                            "passing the rest of a CSI connection to h2 unchanged"
                        );
                        if let Some(block) = frames.block.take() {
                            self.output.extend_from_slice(&block.raw);
                        }
                        self.state = State::Passthrough;
                    }
                },
            }
        }
    }
}

enum Step {
    Again,
    NeedMore,
    GiveUp(&'static str),
}

impl Frames {
    fn step(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        if self.copying > 0 {
            if input.is_empty() {
                return Step::NeedMore;
            }
            let n = self.copying.min(input.len());
            output.extend_from_slice(&input.split_to(n));
            self.copying -= n;
            return Step::Again;
        }
        if input.len() < FRAME_HEADER_LEN {
            return Step::NeedMore;
        }
        let length =
            usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
        let kind = input[3];
        let flags = input[4];
        let stream_id = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
        let is_header = kind == HEADERS || kind == CONTINUATION;
        if !is_header {
            if self.block.is_some() {
                return Step::GiveUp("a frame inside a header block");
            }
            output.extend_from_slice(&input.split_to(FRAME_HEADER_LEN));
            self.copying = length;
            return Step::Again;
        }
        if length > BLOCK_LIMIT {
            return Step::GiveUp("a header frame over the rewrite limit");
        }
        if input.len() < FRAME_HEADER_LEN + length {
            return Step::NeedMore;
        }
        let raw = input.split_to(FRAME_HEADER_LEN + length);
        let payload = &raw[FRAME_HEADER_LEN..];
        if kind == HEADERS {
            if let Some(block) = self.block.as_mut() {
                block.raw.extend_from_slice(&raw);
                return Step::GiveUp("HEADERS inside a header block");
            }
            let Some((priority, fragment)) = headers_payload(flags, payload) else {
                output.extend_from_slice(&raw);
                return Step::GiveUp("a malformed HEADERS frame");
            };
            let mut block = new_block(stream_id, flags, priority);
            block.fragment.extend_from_slice(fragment);
            block.raw.extend_from_slice(&raw);
            self.block = Some(block);
        } else {
            let block = match self.block.as_mut() {
                Some(block) if block.stream_id == stream_id => block,
                // The give-up path passes an open block's frames on first.
                Some(block) => {
                    block.raw.extend_from_slice(&raw);
                    return Step::GiveUp("CONTINUATION of another stream");
                }
                None => {
                    output.extend_from_slice(&raw);
                    return Step::GiveUp("CONTINUATION outside a header block");
                }
            };
            block.fragment.extend_from_slice(payload);
            block.raw.extend_from_slice(&raw);
            if block.fragment.len() > BLOCK_LIMIT {
                return Step::GiveUp("a header block over the rewrite limit");
            }
        }
        if flags & END_HEADERS == 0 {
            return Step::Again;
        }
        let block = self.block.as_ref().expect("a block is open");
        let mut fields = match self.decoder.decode(&block.fragment) {
            Ok(fields) => fields,
            Err(_) => return Step::GiveUp("a header block HPACK cannot decode"),
        };
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(&value[..]).is_err()
            {
                if !self.fixed_one {
                    self.fixed_one = true;
                    tracing::debug!(
                        authority = %String::from_utf8_lossy(&value[..value.len().min(64)]),
                        "a client sent an invalid :authority (a socket path?); serving it as localhost"
                    );
                }
                *value = REPLACEMENT.to_vec();
            }
        }
        let block = self.block.take().expect("a block is open");
        write_block(&block, &fields, output);
        Step::Again
    }
}

fn new_block(stream_id: u32, flags: u8, priority: Option<[u8; 5]>) -> Block {
    Block {
        stream_id,
        end_stream: flags & END_STREAM != 0,
        priority,
        fragment: BytesMut::new(),
        raw: BytesMut::new(),
    }
}

/// The priority fields and the header block fragment of a HEADERS payload,
/// without its padding; `None` when the padding or priority does not fit.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    if flags & PADDED != 0 {
        let (&pad, after) = rest.split_first()?;
        rest = after.get(..after.len().checked_sub(usize::from(pad))?)?;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(rest.get(..5)?.try_into().ok()?);
        rest = &rest[5..];
    }
    Some((priority, rest))
}

/// Re-encodes `fields` as literals without indexing (RFC 7541 6.2.2), so
/// the block stands on its own, and frames it as HEADERS plus as many
/// CONTINUATIONs as needed.
fn write_block(block: &Block, fields: &[(Vec<u8>, Vec<u8>)], output: &mut BytesMut) {
    let mut encoded = Vec::new();
    for (name, value) in fields {
        encoded.push(0x00);
        for text in [name, value] {
            // A plain (not Huffman) string: a 7-bit prefixed length, then
            // the bytes. Writing into a Vec cannot fail.
            loona_hpack::encoder::encode_integer_into(text.len(), 7, 0, &mut encoded)
                .expect("writing to a Vec");
            encoded.extend_from_slice(text);
        }
    }
    let mut first = true;
    let mut rest = &encoded[..];
    loop {
        let room = if first && block.priority.is_some() {
            OUT_FRAME_MAX - 5
        } else {
            OUT_FRAME_MAX
        };
        let (chunk, after) = rest.split_at(rest.len().min(room));
        let mut flags = if after.is_empty() { END_HEADERS } else { 0 };
        let (kind, prefix): (u8, &[u8]) = if first {
            if block.end_stream {
                flags |= END_STREAM;
            }
            match &block.priority {
                Some(p) => {
                    flags |= PRIORITY;
                    (HEADERS, &p[..])
                }
                None => (HEADERS, &[]),
            }
        } else {
            (CONTINUATION, &[])
        };
        let length = prefix.len() + chunk.len();
        output.put_uint(length as u64, 3);
        output.put_u8(kind);
        output.put_u8(flags);
        output.put_u32(block.stream_id);
        output.extend_from_slice(prefix);
        output.extend_from_slice(chunk);
        rest = after;
        first = false;
        if rest.is_empty() {
            return;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FixAuthority<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left is an unfinished frame: h2 sees it cut off,
                // as it would have without us.
                if this.input.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let rest = this.input.split();
                this.output.extend_from_slice(&rest);
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.input.extend_from_slice(read.filled());
            }
            this.process();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FixAuthority<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_uint(payload.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Runs `bytes` through the wrapper, fed in pieces of `piece` bytes.
    async fn through(bytes: &[u8], piece: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fixed = FixAuthority::new(server);
        let owned = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for chunk in owned.chunks(piece) {
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    /// Splits HTTP/2 frames (after the preface) into (type, flags, stream,
    /// payload), and decodes every header block with a fresh decoder per
    /// connection, as h2 does.
    type Frame = (u8, u8, u32, Vec<u8>);
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn parse(bytes: &[u8]) -> (Vec<Frame>, Vec<Fields>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut frames = Vec::new();
        let mut blocks = Vec::new();
        let mut decoder = loona_hpack::Decoder::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = rest[9..9 + length].to_vec();
            let (kind, flags) = (rest[3], rest[4]);
            if kind == HEADERS || kind == CONTINUATION {
                let (_, fragment) =
                    headers_payload(if kind == HEADERS { flags } else { 0 }, &payload).unwrap();
                block.extend_from_slice(fragment);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            frames.push((kind, flags, stream, payload));
            rest = &rest[9 + length..];
        }
        (frames, blocks)
    }

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/csi.v1.Identity/GetPluginInfo".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    fn encode(
        encoder: &mut loona_hpack::Encoder<'_>,
        fields: &[(&'static [u8], Vec<u8>)],
    ) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (*n, &v[..])))
    }

    fn owned(fields: &[(&'static [u8], Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_vec(), v.clone()))
            .collect()
    }

    #[tokio::test]
    async fn socket_path_authorities_become_localhost_and_the_rest_is_kept() {
        // Two requests on one connection from an encoder that indexes: the
        // second one refers to the first's dynamic table entries, which the
        // rewritten stream must not need.
        let mut encoder = loona_hpack::Encoder::new();
        let first = request(b"tmp%2Fplugin%2Fcsi.sock");
        let second = request(b"/var/lib/kubelet/plugins/csi.cert-manager.io/csi.sock");
        let third = request(b"localhost");
        let mut wire = PREFACE.to_vec();
        // SETTINGS and WINDOW_UPDATE pass untouched.
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        wire.extend_from_slice(&settings);
        // First: padded, with priority, END_STREAM.
        let block = encode(&mut encoder, &first);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        wire.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM | PADDED | PRIORITY,
            1,
            &payload,
        ));
        // Second: split over HEADERS + CONTINUATION, with a DATA frame after.
        let block = encode(&mut encoder, &second);
        let (a, b) = block.split_at(block.len() / 2);
        wire.extend(frame(HEADERS, 0, 3, a));
        wire.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let data = frame(0x0, END_STREAM, 3, b"\0\0\0\0\0");
        wire.extend_from_slice(&data);
        let block = encode(&mut encoder, &third);
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &block));

        for piece in [1, 7, wire.len()] {
            let out = through(&wire, piece).await;
            let (frames, blocks) = parse(&out);
            assert_eq!(frames[0], (0x4, 0, 0, settings[9..].to_vec()));
            assert_eq!(blocks.len(), 3);
            for (got, sent) in blocks.iter().zip([&first, &second, &third]) {
                let mut want = owned(sent);
                want[3].1 = b"localhost".to_vec();
                assert_eq!(got, &want, "piece {piece}");
            }
            // Flags kept: END_STREAM and the priority on the first, none on
            // the second; the DATA frame follows unchanged.
            let (kind, flags, stream, payload) = &frames[1];
            assert_eq!((*kind, *stream), (HEADERS, 1));
            assert_eq!(
                flags & (END_STREAM | PRIORITY | PADDED),
                END_STREAM | PRIORITY
            );
            assert_eq!(&payload[..5], &[0, 0, 0, 0, 15]);
            assert_eq!((frames[2].0, frames[2].1 & END_STREAM), (HEADERS, 0));
            assert!(frames.iter().any(|f| f.0 == 0x0 && f.3 == data[9..]));
        }
    }

    #[tokio::test]
    async fn large_blocks_are_split_into_frames_h2_accepts() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut fields = request(b"/run/csi.sock");
        fields.push((b"x-big", vec![b'a'; 40_000]));
        let block = encode(&mut encoder, &fields);
        let mut wire = PREFACE.to_vec();
        for (i, chunk) in block.chunks(OUT_FRAME_MAX).enumerate() {
            let last = (i + 1) * OUT_FRAME_MAX >= block.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            wire.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let out = through(&wire, 4096).await;
        let (frames, blocks) = parse(&out);
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= OUT_FRAME_MAX));
        assert_eq!(blocks[0][3].1, b"localhost");
        assert_eq!(blocks[0][6].1.len(), 40_000);
    }

    #[tokio::test]
    async fn broken_framing_reaches_h2_as_it_was_sent() {
        // A CONTINUATION for a stream with no open block, then more bytes:
        // everything from there on is passed on unchanged for h2 to refuse.
        let mut wire = PREFACE.to_vec();
        let stray = frame(CONTINUATION, END_HEADERS, 7, b"\x82");
        wire.extend_from_slice(&stray);
        wire.extend_from_slice(b"not a frame");
        assert_eq!(through(&wire, 5).await, wire);

        // Undecodable HPACK (an index past both tables) too.
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]));
        wire.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        assert_eq!(through(&wire, 3).await, wire);

        // And a connection that is not HTTP/2 at all.
        let wire = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(&wire, 2).await, wire);
    }
}
