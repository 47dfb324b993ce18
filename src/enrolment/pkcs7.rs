//! The degenerate PKCS#7 / CMS `SignedData` that carries certificates and
//! no signature ("certs-only", RFC 7030 section 4.1.3 and 4.2.3), DER
//! encoded, and the base64 form EST sends. A small encoder: the structure
//! is fixed, only the certificates vary.
//!
//! ```text
//! ContentInfo ::= SEQUENCE { contentType id-signedData, content [0] EXPLICIT SignedData }
//! SignedData  ::= SEQUENCE { version 1, digestAlgorithms SET {},
//!                  encapContentInfo SEQUENCE { id-data },
//!                  certificates [0] IMPLICIT SET OF Certificate, signerInfos SET {} }
//! ```

use base64::Engine;

/// id-signedData, 1.2.840.113549.1.7.2.
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// id-data, 1.2.840.113549.1.7.1.
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

/// The content type of an EST certs-only answer.
pub const CONTENT_TYPE: &str = "application/pkcs7-mime; smime-type=certs-only";

/// One DER element: `tag`, the definite length, `content`.
fn element(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The certs-only `ContentInfo` holding `certs` (DER certificates) in the
/// order given (the leaf first, as clients that read the first one expect).
pub fn certs_only_der<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let set_of_certs: Vec<u8> = certs.into_iter().flatten().copied().collect();
    let mut signed_data = Vec::new();
    signed_data.extend(element(0x02, &[0x01])); // version 1
    signed_data.extend(element(0x31, &[])); // digestAlgorithms
    signed_data.extend(element(0x30, &element(0x06, OID_DATA))); // encapContentInfo
    signed_data.extend(element(0xa0, &set_of_certs)); // certificates [0] IMPLICIT
    signed_data.extend(element(0x31, &[])); // signerInfos
    let mut content_info = element(0x06, OID_SIGNED_DATA);
    content_info.extend(element(0xa0, &element(0x30, &signed_data)));
    element(0x30, &content_info)
}

/// The base64 body of an EST answer (lines of 64 characters).
pub fn certs_only_base64<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(certs_only_der(certs));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 1);
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

/// The DER in an EST body: base64 whatever its line breaks (any ASCII
/// whitespace is ignored), as EST sends both CSRs and certs-only answers.
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// Every certificate (DER) in a certs-only `ContentInfo`, in order; `None`
/// when the bytes are not one. Reads what `certs_only_der` writes and what
/// other EST servers send (definite lengths).
pub fn certificates(der: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (ci, rest) = read(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, ci) = read(ci, 0x06)?;
    if oid != OID_SIGNED_DATA {
        return None;
    }
    let (explicit, _) = read(ci, 0xa0)?;
    let (mut sd, _) = read(explicit, 0x30)?;
    let (_, r) = read(sd, 0x02)?; // version
    sd = r;
    let (_, r) = read(sd, 0x31)?; // digestAlgorithms
    sd = r;
    let (_, r) = read(sd, 0x30)?; // encapContentInfo
    sd = r;
    let (mut set, _) = read(sd, 0xa0)?;
    let mut certs = Vec::new();
    while !set.is_empty() {
        let start = set;
        let (_, r) = read(set, 0x30)?;
        certs.push(start[..start.len() - r.len()].to_vec());
        set = r;
    }
    Some(certs)
}

/// The content of the element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for b in &rest[..n] {
            len = (len << 8) | usize::from(*b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((&rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_short_and_long_form() {
        assert_eq!(element(0x04, &[7; 3])[..2], [0x04, 3]);
        let long = element(0x04, &[7; 300]);
        assert_eq!(long[..4], [0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn a_base64_body_reads_back_whatever_its_line_breaks() {
        let a = element(0x30, &[1u8; 200]);
        let body = certs_only_base64([a.as_slice()]);
        assert!(body.contains('\n'), "long bodies are split in lines");
        let crlf = body.replace('\n', "\r\n ");
        assert_eq!(
            decode_base64_body(crlf.as_bytes()).unwrap(),
            certs_only_der([a.as_slice()])
        );
        assert!(decode_base64_body(b"not base64!").is_err());
    }

    #[test]
    fn what_is_written_reads_back_in_order() {
        let a = element(0x30, &[1u8; 200]);
        let b = element(0x30, &[2u8; 5]);
        let der = certs_only_der([a.as_slice(), b.as_slice()]);
        assert_eq!(certificates(&der), Some(vec![a, b]));
        assert_eq!(certificates(&der[..der.len() - 1]), None);
        assert_eq!(certificates(b"not der"), None);
    }
}
