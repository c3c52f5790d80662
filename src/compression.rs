//! Compressed response bodies, paid once: [`negotiate`] picks br, gzip or the plain body from
//! a request's `Accept-Encoding`, and [`Variants`] holds a body with its compressed forms,
//! each made at most once, when first asked for. The response cache keeps a `Variants` with
//! every cached body (so a cached list is compressed once per cache entry, not per request),
//! and the embedded web files keep one each.
//!
//! Settings, chosen for a one-time cost that a cache fill can carry (measured on the demo's
//! 1,000-product list, 211 KB, by `cargo bench --bench hot_paths -- compress`; figures in
//! benches/README.md): brotli quality 5 (2.0 ms, 9.9 %) with a 4 MiB window, gzip level 6
//! (1.5 ms, 10.6 %).

use std::io::Write;
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

/// Bodies below this are sent plain: compressing them saves too little to be worth a header.
pub const MIN_SIZE: usize = 1024;
/// Brotli quality 5: smaller than gzip 9 in less time; 6 takes 1.7 times as long for 2 %
/// fewer bytes, 4 is 17 % bigger.
const BROTLI_QUALITY: i32 = 5;
/// log2 of brotli's window: 4 MiB, more than any body the node sends.
const BROTLI_WINDOW: i32 = 22;
const GZIP_LEVEL: u32 = 6;
/// Bodies from this size on are compressed with the runtime told that the thread blocks.
const LARGE_BODY: usize = 64 * 1024;

/// Runs blocking `work` on a worker of a multi-threaded tokio runtime with
/// `block_in_place` (its other tasks move elsewhere meanwhile), or as it is elsewhere.
fn off_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A content coding the node answers with (`as usize`: 0, 1, 2, for tables by encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity = 0,
    Brotli = 1,
    Gzip = 2,
}

impl Encoding {
    /// The `Content-Encoding` value; `None` for the plain body.
    pub fn header(self) -> Option<HeaderValue> {
        match self {
            Encoding::Identity => None,
            Encoding::Brotli => Some(HeaderValue::from_static("br")),
            Encoding::Gzip => Some(HeaderValue::from_static("gzip")),
        }
    }

    /// What an `ETag` gets appended, so that each encoding of an entity has its own tag.
    pub fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Brotli => "-br",
            Encoding::Gzip => "-gz",
        }
    }
}

/// `Vary: Accept-Encoding`, on every response whose body could have been compressed.
pub fn vary() -> HeaderValue {
    HeaderValue::from_static("Accept-Encoding")
}

/// The encoding to answer a request with (RFC 9110, 12.5.3). No `Accept-Encoding`: plain.
/// Otherwise br and gzip get their own q-value or that of `*` (0 when neither is listed), and
/// the higher wins, br on a tie; the plain body when both are 0, or when `identity` (or `*`,
/// when identity is not listed) is explicitly preferred to both. Codings are matched
/// case-insensitively (`x-gzip` is gzip); an element with a malformed q-value is ignored.
pub fn negotiate(headers: &HeaderMap) -> Encoding {
    let mut br = None;
    let mut gzip = None;
    let mut identity = None;
    let mut any = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for element in text.split(',') {
            let mut parts = element.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let Some(q) = element_q(parts) else {
                continue;
            };
            let slot = if coding.eq_ignore_ascii_case("br") {
                &mut br
            } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if coding.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if coding == "*" {
                &mut any
            } else {
                continue;
            };
            // Listed twice: the first one counts.
            slot.get_or_insert(q);
        }
    }
    let br = br.or(any).unwrap_or(0);
    let gzip = gzip.or(any).unwrap_or(0);
    let identity = identity.or(any).unwrap_or(0);
    let (best, q) = if br >= gzip {
        (Encoding::Brotli, br)
    } else {
        (Encoding::Gzip, gzip)
    };
    if q == 0 || identity > q {
        Encoding::Identity
    } else {
        best
    }
}

/// The q-value of one `Accept-Encoding` element from its parameters, in thousandths (1000
/// when absent); `None` when it is malformed.
fn element_q<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            return parse_q(value.trim());
        }
    }
    Some(1000)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// One encoding's compressor, e.g. [`brotli_bytes`].
type Compressor = fn(&[u8]) -> std::io::Result<Vec<u8>>;

/// A body and its compressed forms, each made at most once, when first asked for. Shared
/// (behind an `Arc`) by every copy of a cache entry, so a form made for one request is there
/// for all that follow.
#[derive(Debug)]
pub struct Variants {
    plain: Bytes,
    /// `None` inside: compressing failed or did not make the body smaller; send it plain.
    br: OnceLock<Option<Bytes>>,
    gzip: OnceLock<Option<Bytes>>,
}

impl Variants {
    /// The variants of a body of at least [`MIN_SIZE`]; `None` for a smaller one (sent plain).
    pub fn new(plain: Bytes) -> Option<Variants> {
        (plain.len() >= MIN_SIZE).then(|| Variants {
            plain,
            br: OnceLock::new(),
            gzip: OnceLock::new(),
        })
    }

    /// The body in `encoding`, made now if this is its first request; `None`: send the plain
    /// body (identity asked for, or compressing did not pay).
    pub fn get(&self, encoding: Encoding) -> Option<Bytes> {
        let (slot, compress): (_, Compressor) = match encoding {
            Encoding::Identity => return None,
            Encoding::Brotli => (&self.br, brotli_bytes),
            Encoding::Gzip => (&self.gzip, gzip_bytes),
        };
        if let Some(made) = slot.get() {
            return made.clone();
        }
        // Compressing a large body takes milliseconds (2 ms for the 1,000-product list), and
        // others asking for it meanwhile wait on the slot: the runtime is told, so its other
        // tasks move to another worker.
        let make = || {
            slot.get_or_init(|| match compress(&self.plain) {
                Ok(packed) if packed.len() < self.plain.len() => Some(Bytes::from(packed)),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, ?encoding, "compressing a response body failed; sent plain");
                    None
                }
            })
            .clone()
        };
        if self.plain.len() >= LARGE_BODY {
            off_the_runtime(make)
        } else {
            make()
        }
    }

    pub fn plain(&self) -> &Bytes {
        &self.plain
    }
}

/// Brotli at the node's quality.
pub fn brotli_bytes(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    brotli_at(plain, BROTLI_QUALITY)
}

/// Brotli at `quality` (0-11; the benches compare the node's choice with its neighbours).
pub fn brotli_at(plain: &[u8], quality: i32) -> std::io::Result<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: BROTLI_WINDOW,
        size_hint: plain.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(plain.len() / 4);
    brotli::BrotliCompress(&mut &plain[..], &mut out, &params)?;
    Ok(out)
}

/// Gzip at the node's level.
pub fn gzip_bytes(plain: &[u8]) -> std::io::Result<Vec<u8>> {
    gzip_at(plain, GZIP_LEVEL)
}

/// Gzip at `level` (0-9).
pub fn gzip_at(plain: &[u8], level: u32) -> std::io::Result<Vec<u8>> {
    let out = Vec::with_capacity(plain.len() / 4);
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
    encoder.write_all(plain)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepting(values: &[&'static str]) -> Encoding {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
        }
        negotiate(&headers)
    }

    #[test]
    fn no_accept_encoding_or_only_other_codings_is_plain() {
        assert_eq!(accepting(&[]), Encoding::Identity);
        assert_eq!(accepting(&[""]), Encoding::Identity);
        assert_eq!(accepting(&["identity"]), Encoding::Identity);
        assert_eq!(accepting(&["deflate, zstd"]), Encoding::Identity);
    }

    #[test]
    fn br_wins_a_tie_and_the_higher_q_wins_otherwise() {
        assert_eq!(accepting(&["gzip, deflate, br, zstd"]), Encoding::Brotli);
        assert_eq!(accepting(&["gzip"]), Encoding::Gzip);
        assert_eq!(accepting(&["br"]), Encoding::Brotli);
        assert_eq!(accepting(&["br;q=0.5, gzip;q=0.8"]), Encoding::Gzip);
        assert_eq!(accepting(&["br;q=0.8, gzip;q=0.5"]), Encoding::Brotli);
        assert_eq!(accepting(&["gzip;q=1.0, br;q=1"]), Encoding::Brotli);
        // Several header lines are one list.
        assert_eq!(accepting(&["gzip", "br"]), Encoding::Brotli);
    }

    #[test]
    fn q_zero_refuses_a_coding() {
        assert_eq!(accepting(&["br;q=0, gzip"]), Encoding::Gzip);
        assert_eq!(accepting(&["br;q=0, gzip;q=0"]), Encoding::Identity);
        assert_eq!(accepting(&["br;q=0.000"]), Encoding::Identity);
        assert_eq!(accepting(&["*, br;q=0"]), Encoding::Gzip);
    }

    #[test]
    fn star_stands_for_what_is_not_listed() {
        assert_eq!(accepting(&["*"]), Encoding::Brotli);
        assert_eq!(accepting(&["*;q=0.5, gzip"]), Encoding::Gzip);
        assert_eq!(accepting(&["*;q=0"]), Encoding::Identity);
        assert_eq!(accepting(&["gzip;q=0.3, *;q=0.5"]), Encoding::Brotli);
    }

    #[test]
    fn identity_preferred_explicitly_is_plain() {
        assert_eq!(accepting(&["identity, br;q=0.5"]), Encoding::Identity);
        assert_eq!(accepting(&["identity;q=0.5, br"]), Encoding::Brotli);
        assert_eq!(
            accepting(&["*;q=0.9, gzip;q=0.5, br;q=0.5"]),
            Encoding::Identity
        );
    }

    #[test]
    fn case_whitespace_and_parameters_do_not_matter() {
        assert_eq!(accepting(&["  BR ;  Q=0.9 ,GZip;q=0.2"]), Encoding::Brotli);
        assert_eq!(accepting(&["x-gzip"]), Encoding::Gzip);
        assert_eq!(accepting(&["Gzip ; q = 0.7 , br;q=0.6"]), Encoding::Gzip);
        assert_eq!(accepting(&["br;level=3;q=0"]), Encoding::Identity);
        assert_eq!(accepting(&[",,br,,"]), Encoding::Brotli);
    }

    #[test]
    fn a_malformed_q_drops_its_element() {
        assert_eq!(accepting(&["br;q=2, gzip"]), Encoding::Gzip);
        assert_eq!(accepting(&["br;q=1.5, gzip;q=0.1"]), Encoding::Gzip);
        assert_eq!(accepting(&["br;q=0.1234"]), Encoding::Identity);
        assert_eq!(accepting(&["br;q=abc"]), Encoding::Identity);
        assert_eq!(accepting(&["br;q=-0"]), Encoding::Identity);
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("0.05"), Some(50));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0."), Some(0));
        assert_eq!(parse_q(""), None);
    }

    #[test]
    fn variants_round_trip_and_are_made_once() {
        let plain: Bytes = serde_json::to_vec(
            &(0..200)
                .map(|i| serde_json::json!({"id": i, "name": format!("Product {i}")}))
                .collect::<Vec<_>>(),
        )
        .unwrap()
        .into();
        let variants = Variants::new(plain.clone()).unwrap();
        assert_eq!(variants.get(Encoding::Identity), None);
        let br = variants.get(Encoding::Brotli).unwrap();
        let gz = variants.get(Encoding::Gzip).unwrap();
        assert!(br.len() < plain.len() / 4 && gz.len() < plain.len() / 4);
        // The same bytes, not made again.
        assert_eq!(
            variants.get(Encoding::Brotli).unwrap().as_ptr(),
            br.as_ptr()
        );

        let mut unbr = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut unbr).unwrap();
        assert_eq!(unbr, plain);
        let mut ungz = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut ungz).unwrap();
        assert_eq!(ungz, plain);
    }

    #[test]
    fn small_or_incompressible_bodies_stay_plain() {
        assert!(Variants::new(Bytes::from_static(b"[]")).is_none());
        // Bytes with no redundancy do not shrink.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        let variants = Variants::new(Bytes::from(noise)).unwrap();
        assert_eq!(variants.get(Encoding::Gzip), None);
    }
}
