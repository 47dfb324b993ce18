//! The part of RFC 8941 structured fields that signatures need: parsing a
//! Dictionary (`Signature-Input`, `Signature`, `Content-Digest`) with
//! Items and Inner Lists and their Parameters, and serializing an Inner
//! List back (the `@signature-params` line and component identifiers are
//! its canonical serialization).

use base64::Engine;

/// A bare item.
#[derive(Debug, Clone, PartialEq)]
pub enum Bare {
    Integer(i64),
    /// A decimal, kept as its text.
    Decimal(String),
    String(String),
    Token(String),
    Bytes(Vec<u8>),
    Boolean(bool),
}

/// Parameters, in order.
pub type Params = Vec<(String, Bare)>;

/// An item with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub bare: Bare,
    pub params: Params,
}

/// A dictionary member's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    Item(Item),
    InnerList(Vec<Item>, Params),
}

/// The field is not a structured-field dictionary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a structured-field dictionary ({0})")]
pub struct SfError(pub &'static str);

/// The longest field the parser reads.
pub const MAX_FIELD: usize = 8192;

struct P<'a> {
    s: &'a [u8],
    i: usize,
}

impl P<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn key(&mut self) -> Result<String, SfError> {
        let start = self.i;
        match self.peek() {
            Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
            _ => return Err(SfError("a key starts with a-z or *")),
        }
        while matches!(self.peek(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*'))
        {
            self.i += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn params(&mut self) -> Result<Params, SfError> {
        let mut out: Params = Vec::new();
        while self.eat(b';') {
            self.sp();
            let k = self.key()?;
            let v = if self.eat(b'=') {
                self.bare()?
            } else {
                Bare::Boolean(true)
            };
            if let Some(e) = out.iter_mut().find(|(x, _)| *x == k) {
                e.1 = v;
            } else {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare()?;
        let params = self.params()?;
        Ok(Item { bare, params })
    }

    fn bare(&mut self) -> Result<Bare, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => {
                self.i += 1;
                match self.peek() {
                    Some(b'0') => {
                        self.i += 1;
                        Ok(Bare::Boolean(false))
                    }
                    Some(b'1') => {
                        self.i += 1;
                        Ok(Bare::Boolean(true))
                    }
                    _ => Err(SfError("a boolean is ?0 or ?1")),
                }
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'*' => {
                let start = self.i;
                self.i += 1;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c))
                {
                    self.i += 1;
                }
                Ok(Bare::Token(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => Err(SfError("an unknown item type")),
        }
    }

    fn number(&mut self) -> Result<Bare, SfError> {
        let start = self.i;
        self.eat(b'-');
        let digits_start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        if self.i == digits_start || self.i - digits_start > 15 {
            return Err(SfError("an integer has 1 to 15 digits"));
        }
        if self.eat(b'.') {
            let f = self.i;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.i += 1;
            }
            if self.i == f || self.i - f > 3 || f - 1 - digits_start > 12 {
                return Err(SfError("a bad decimal"));
            }
            return Ok(Bare::Decimal(
                String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
            ));
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| SfError("integer"))?;
        text.parse()
            .map(Bare::Integer)
            .map_err(|_| SfError("an integer out of range"))
    }

    fn string(&mut self) -> Result<Bare, SfError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(SfError("an unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(Bare::String(out));
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c as char);
                            self.i += 1;
                        }
                        _ => return Err(SfError("a bad escape in a string")),
                    }
                }
                Some(c) if (0x20..0x7f).contains(&c) => {
                    out.push(c as char);
                    self.i += 1;
                }
                Some(_) => return Err(SfError("a string holds only printable ASCII")),
            }
        }
    }

    fn bytes(&mut self) -> Result<Bare, SfError> {
        self.i += 1;
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
        {
            self.i += 1;
        }
        let text = &self.s[start..self.i];
        if !self.eat(b':') {
            return Err(SfError("an unterminated byte sequence"));
        }
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bare::Bytes)
            .map_err(|_| SfError("a byte sequence is not base64"))
    }

    fn inner_list(&mut self) -> Result<Member, SfError> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.sp();
            if self.eat(b')') {
                let params = self.params()?;
                return Ok(Member::InnerList(items, params));
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(SfError("an inner list's items are separated by spaces")),
            }
            if items.len() > 64 {
                return Err(SfError("an inner list longer than 64 items"));
            }
        }
    }
}

/// Parses a dictionary; a key given twice keeps its last value (RFC 8941).
pub fn parse_dictionary(field: &str) -> Result<Vec<(String, Member)>, SfError> {
    if field.len() > MAX_FIELD {
        return Err(SfError("the field is too long"));
    }
    let mut p = P {
        s: field.as_bytes(),
        i: 0,
    };
    let mut out: Vec<(String, Member)> = Vec::new();
    p.sp();
    if p.peek().is_none() {
        return Err(SfError("the field is empty"));
    }
    loop {
        let k = p.key()?;
        let v = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                p.inner_list()?
            } else {
                Member::Item(p.item()?)
            }
        } else {
            Member::Item(Item {
                bare: Bare::Boolean(true),
                params: p.params()?,
            })
        };
        if let Some(e) = out.iter_mut().find(|(x, _)| *x == k) {
            e.1 = v;
        } else {
            out.push((k, v));
        }
        if out.len() > 64 {
            return Err(SfError("more than 64 members"));
        }
        p.ows();
        if p.peek().is_none() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err(SfError("members are separated by commas"));
        }
        p.ows();
        if p.peek().is_none() {
            return Err(SfError("a trailing comma"));
        }
    }
}

/// The canonical serialization of a bare item.
pub fn serialize_bare(b: &Bare) -> String {
    match b {
        Bare::Integer(i) => i.to_string(),
        Bare::Decimal(d) => d.clone(),
        Bare::String(s) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push('"');
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
            out
        }
        Bare::Token(t) => t.clone(),
        Bare::Bytes(b) => format!(":{}:", base64::engine::general_purpose::STANDARD.encode(b)),
        Bare::Boolean(true) => "?1".into(),
        Bare::Boolean(false) => "?0".into(),
    }
}

/// The canonical serialization of parameters.
pub fn serialize_params(params: &Params) -> String {
    let mut out = String::new();
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        if *v != Bare::Boolean(true) {
            out.push('=');
            out.push_str(&serialize_bare(v));
        }
    }
    out
}

/// The canonical serialization of an item.
pub fn serialize_item(i: &Item) -> String {
    format!("{}{}", serialize_bare(&i.bare), serialize_params(&i.params))
}

/// The canonical serialization of an inner list.
pub fn serialize_inner_list(items: &[Item], params: &Params) -> String {
    let inner: Vec<String> = items.iter().map(serialize_item).collect();
    format!("({}){}", inner.join(" "), serialize_params(params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_reserializes_a_signature_input() {
        let f = r#"sig1=("@method" "@authority" "@path" "content-digest");created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd", other=:aGk=:"#;
        let d = parse_dictionary(f).unwrap();
        assert_eq!(d.len(), 2);
        let Member::InnerList(items, params) = &d[0].1 else {
            panic!()
        };
        assert_eq!(items.len(), 4);
        assert_eq!(params[0], ("created".into(), Bare::Integer(1618884473)));
        assert_eq!(
            serialize_inner_list(items, params),
            r#"("@method" "@authority" "@path" "content-digest");created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
        );
        assert_eq!(
            d[1].1,
            Member::Item(Item {
                bare: Bare::Bytes(b"hi".to_vec()),
                params: vec![]
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_dictionary() {
        for bad in [
            "", "Sig=1", "a=(\"x\"", "a=\"x", "a=:!!:", "a=1,", "a=1 b=2", "a=?2",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = parse_dictionary(&s);
        }
    }
}
