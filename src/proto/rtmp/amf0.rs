//! AMF0 (Action Message Format 0): values decoded as views borrowing the input (objects and
//! arrays are lazy iterators over their bytes), depth- and size-bounded, and an encoder.
//!
//! Decoding never allocates. Nesting deeper than [`MAX_DEPTH`] is an error (objects are
//! skipped recursively to find their end), and every element consumes at least one byte, so
//! work is bounded by the input length times the depth.

use thiserror::Error;

/// Deepest nesting of objects/arrays accepted.
pub const MAX_DEPTH: u32 = 16;

const NUMBER: u8 = 0x00;
const BOOLEAN: u8 = 0x01;
const STRING: u8 = 0x02;
const OBJECT: u8 = 0x03;
const NULL: u8 = 0x05;
const UNDEFINED: u8 = 0x06;
const ECMA_ARRAY: u8 = 0x08;
const OBJECT_END: u8 = 0x09;
const STRICT_ARRAY: u8 = 0x0A;
const DATE: u8 = 0x0B;
const LONG_STRING: u8 = 0x0C;

/// AMF0 decoding errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AmfError {
    /// The input ends inside a value.
    #[error("AMF0 value truncated")]
    Truncated,
    /// A type marker this decoder does not handle (movie clip, reference, XML, typed object,
    /// AMF3 switch...).
    #[error("unsupported AMF0 type marker {0:#04x}")]
    UnsupportedType(u8),
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("AMF0 nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A string that is not UTF-8.
    #[error("AMF0 string is not UTF-8")]
    BadUtf8,
    /// An object-end marker outside an object.
    #[error("AMF0 object end outside an object")]
    UnexpectedObjectEnd,
}

/// A decoded value, borrowing the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amf0Value<'a> {
    /// Number (IEEE 754 double).
    Number(f64),
    /// Boolean.
    Boolean(bool),
    /// String or long string.
    String(&'a str),
    /// Anonymous object.
    Object(Properties<'a>),
    /// Null.
    Null,
    /// Undefined.
    Undefined,
    /// ECMA (associative) array; the count on the wire is only a hint and not reported.
    EcmaArray(Properties<'a>),
    /// Strict (dense) array.
    StrictArray(Elements<'a>),
    /// Date: ms since the epoch (the time-zone field is ignored).
    Date(f64),
}

impl<'a> Amf0Value<'a> {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    /// The number, if this is one.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }
    /// The properties of an object or ECMA array.
    pub fn as_properties(&self) -> Option<Properties<'a>> {
        match self {
            Self::Object(p) | Self::EcmaArray(p) => Some(*p),
            _ => None,
        }
    }
}

fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], AmfError> {
    let s = buf.get(*at..*at + n).ok_or(AmfError::Truncated)?;
    *at += n;
    Ok(s)
}

fn utf8(b: &[u8]) -> Result<&str, AmfError> {
    core::str::from_utf8(b).map_err(|_| AmfError::BadUtf8)
}

fn short_string<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a str, AmfError> {
    let l = take(buf, at, 2)?;
    let n = usize::from(u16::from_be_bytes([l[0], l[1]]));
    utf8(take(buf, at, n)?)
}

fn f64_at(buf: &[u8], at: &mut usize) -> Result<f64, AmfError> {
    let b = take(buf, at, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(f64::from_be_bytes(a))
}

/// Decodes the value at `buf[*at..]`, advancing `at` past it.
fn value<'a>(buf: &'a [u8], at: &mut usize, depth: u32) -> Result<Amf0Value<'a>, AmfError> {
    let marker = take(buf, at, 1)?[0];
    Ok(match marker {
        NUMBER => Amf0Value::Number(f64_at(buf, at)?),
        BOOLEAN => Amf0Value::Boolean(take(buf, at, 1)?[0] != 0),
        STRING => Amf0Value::String(short_string(buf, at)?),
        LONG_STRING => {
            let l = take(buf, at, 4)?;
            let n = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
            Amf0Value::String(utf8(take(buf, at, n)?)?)
        }
        NULL => Amf0Value::Null,
        UNDEFINED => Amf0Value::Undefined,
        DATE => {
            let ms = f64_at(buf, at)?;
            take(buf, at, 2)?;
            Amf0Value::Date(ms)
        }
        OBJECT | ECMA_ARRAY => {
            if depth >= MAX_DEPTH {
                return Err(AmfError::TooDeep);
            }
            if marker == ECMA_ARRAY {
                take(buf, at, 4)?;
            }
            let start = *at;
            skip_properties(buf, at, depth + 1)?;
            let p = Properties {
                bytes: &buf[start..*at],
                depth: depth + 1,
            };
            if marker == OBJECT {
                Amf0Value::Object(p)
            } else {
                Amf0Value::EcmaArray(p)
            }
        }
        STRICT_ARRAY => {
            if depth >= MAX_DEPTH {
                return Err(AmfError::TooDeep);
            }
            let l = take(buf, at, 4)?;
            let count = u32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            let start = *at;
            for _ in 0..count {
                value(buf, at, depth + 1)?;
            }
            Amf0Value::StrictArray(Elements {
                bytes: &buf[start..*at],
                count,
                depth: depth + 1,
            })
        }
        OBJECT_END => return Err(AmfError::UnexpectedObjectEnd),
        other => return Err(AmfError::UnsupportedType(other)),
    })
}

/// Advances past `key value ... "" 0x09`.
fn skip_properties(buf: &[u8], at: &mut usize, depth: u32) -> Result<(), AmfError> {
    loop {
        let key = short_string(buf, at)?;
        if key.is_empty() && buf.get(*at) == Some(&OBJECT_END) {
            *at += 1;
            return Ok(());
        }
        value(buf, at, depth)?;
    }
}

/// Properties of an object or ECMA array (already validated when the value was decoded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Properties<'a> {
    bytes: &'a [u8],
    depth: u32,
}

impl<'a> Properties<'a> {
    /// Iterates `(key, value)` pairs in wire order.
    pub fn iter(&self) -> PropertyIter<'a> {
        PropertyIter {
            bytes: self.bytes,
            at: 0,
            depth: self.depth,
        }
    }
    /// The first property named `key`.
    pub fn get(&self, key: &str) -> Option<Amf0Value<'a>> {
        self.iter()
            .flatten()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    /// The string property `key`.
    pub fn get_str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|v| v.as_str())
    }
}

/// Iterator over [`Properties`].
#[derive(Debug, Clone)]
pub struct PropertyIter<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Iterator for PropertyIter<'a> {
    type Item = Result<(&'a str, Amf0Value<'a>), AmfError>;
    fn next(&mut self) -> Option<Self::Item> {
        let r = (|| {
            let key = short_string(self.bytes, &mut self.at)?;
            if key.is_empty() && self.bytes.get(self.at) == Some(&OBJECT_END) {
                self.at = self.bytes.len();
                return Ok(None);
            }
            Ok(Some((key, value(self.bytes, &mut self.at, self.depth)?)))
        })();
        match r {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => None,
            Err(e) => {
                self.at = self.bytes.len();
                Some(Err(e))
            }
        }
    }
}

/// Elements of a strict array.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Elements<'a> {
    bytes: &'a [u8],
    count: u32,
    depth: u32,
}

impl<'a> Elements<'a> {
    /// Number of elements.
    pub fn len(&self) -> u32 {
        self.count
    }
    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Iterates the elements.
    pub fn iter(&self) -> Reader<'a> {
        Reader {
            buf: self.bytes,
            at: 0,
            depth: self.depth,
        }
    }
}

/// Sequential reader of top-level values (a command: name, transaction id, arguments...).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Reader<'a> {
    /// Reads values from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            at: 0,
            depth: 0,
        }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.at.min(self.buf.len())..]
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Result<Amf0Value<'a>, AmfError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let r = value(self.buf, &mut self.at, self.depth);
        if r.is_err() {
            self.at = self.buf.len();
        }
        Some(r)
    }
}

/// Appends AMF0 values to a caller-owned buffer.
#[derive(Debug)]
pub struct Writer<'o> {
    out: &'o mut Vec<u8>,
}

impl<'o> Writer<'o> {
    /// Writes at the end of `out`.
    pub fn new(out: &'o mut Vec<u8>) -> Self {
        Self { out }
    }
    /// A number.
    pub fn number(&mut self, v: f64) -> &mut Self {
        self.out.push(NUMBER);
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A boolean.
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.out.extend_from_slice(&[BOOLEAN, u8::from(v)]);
        self
    }
    /// A string (long string above 65535 bytes).
    pub fn string(&mut self, s: &str) -> &mut Self {
        match u16::try_from(s.len()) {
            Ok(n) => {
                self.out.push(STRING);
                self.out.extend_from_slice(&n.to_be_bytes());
            }
            Err(_) => {
                self.out.push(LONG_STRING);
                self.out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            }
        }
        self.out.extend_from_slice(s.as_bytes());
        self
    }
    /// Null.
    pub fn null(&mut self) -> &mut Self {
        self.out.push(NULL);
        self
    }
    /// Undefined.
    pub fn undefined(&mut self) -> &mut Self {
        self.out.push(UNDEFINED);
        self
    }
    /// Opens an object; follow with `key` + value pairs and [`Self::end`].
    pub fn object(&mut self) -> &mut Self {
        self.out.push(OBJECT);
        self
    }
    /// Opens an ECMA array announcing `count` entries; close it with [`Self::end`].
    pub fn ecma_array(&mut self, count: u32) -> &mut Self {
        self.out.push(ECMA_ARRAY);
        self.out.extend_from_slice(&count.to_be_bytes());
        self
    }
    /// Opens a strict array of `count` values (written next, no end marker).
    pub fn strict_array(&mut self, count: u32) -> &mut Self {
        self.out.push(STRICT_ARRAY);
        self.out.extend_from_slice(&count.to_be_bytes());
        self
    }
    /// A property key inside an object or ECMA array (truncated to 65535 bytes).
    pub fn key(&mut self, k: &str) -> &mut Self {
        let n = k.len().min(0xFFFF);
        self.out.extend_from_slice(&(n as u16).to_be_bytes());
        self.out.extend_from_slice(&k.as_bytes()[..n]);
        self
    }
    /// Closes an object or ECMA array.
    pub fn end(&mut self) -> &mut Self {
        self.out.extend_from_slice(&[0, 0, OBJECT_END]);
        self
    }
    /// A date (ms since the epoch, time zone 0).
    pub fn date(&mut self, ms: f64) -> &mut Self {
        self.out.push(DATE);
        self.out.extend_from_slice(&ms.to_be_bytes());
        self.out.extend_from_slice(&[0, 0]);
        self
    }
    /// Re-encodes a decoded value (objects and arrays element by element).
    pub fn value(&mut self, v: &Amf0Value<'_>) -> Result<&mut Self, AmfError> {
        match v {
            Amf0Value::Number(n) => {
                self.number(*n);
            }
            Amf0Value::Boolean(b) => {
                self.boolean(*b);
            }
            Amf0Value::String(s) => {
                self.string(s);
            }
            Amf0Value::Null => {
                self.null();
            }
            Amf0Value::Undefined => {
                self.undefined();
            }
            Amf0Value::Date(d) => {
                self.date(*d);
            }
            Amf0Value::Object(p) | Amf0Value::EcmaArray(p) => {
                if matches!(v, Amf0Value::Object(_)) {
                    self.object();
                } else {
                    self.ecma_array(p.iter().count() as u32);
                }
                for kv in p.iter() {
                    let (k, v) = kv?;
                    self.key(k).value(&v)?;
                }
                self.end();
            }
            Amf0Value::StrictArray(e) => {
                self.strict_array(e.len());
                for v in e.iter() {
                    self.value(&v?)?;
                }
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
#[path = "amf0_tests.rs"]
mod tests;
