//! Unit tests of the AMF0 decoder and encoder.

use super::*;

#[test]
fn connect_command_round_trip() {
    let mut b = Vec::new();
    Writer::new(&mut b)
        .string("connect")
        .number(1.0)
        .object()
        .key("app")
        .string("live")
        .key("tcUrl")
        .string("rtmp://h/live")
        .key("fpad")
        .boolean(false)
        .key("nested")
        .ecma_array(1)
        .key("x")
        .null()
        .end()
        .end()
        .undefined()
        .strict_array(2)
        .number(3.0)
        .string("s")
        .date(5.0);
    let v: Vec<_> = Reader::new(&b).collect::<Result<_, _>>().unwrap();
    assert_eq!(v.len(), 6);
    assert_eq!(v[0].as_str(), Some("connect"));
    assert_eq!(v[1].as_number(), Some(1.0));
    let p = v[2].as_properties().unwrap();
    assert_eq!(p.get_str("app"), Some("live"));
    assert_eq!(p.get_str("tcUrl"), Some("rtmp://h/live"));
    assert_eq!(p.get("fpad"), Some(Amf0Value::Boolean(false)));
    let n = p.get("nested").unwrap().as_properties().unwrap();
    assert_eq!(n.get("x"), Some(Amf0Value::Null));
    assert_eq!(v[3], Amf0Value::Undefined);
    let Amf0Value::StrictArray(e) = v[4] else {
        panic!("{:?}", v[4])
    };
    let items: Vec<_> = e.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(items, [Amf0Value::Number(3.0), Amf0Value::String("s")]);
    assert_eq!(v[5], Amf0Value::Date(5.0));
    // Re-encoding reproduces the bytes.
    let mut again = Vec::new();
    let mut w = Writer::new(&mut again);
    for x in &v {
        w.value(x).unwrap();
    }
    assert_eq!(again, b);
}

#[test]
fn long_string() {
    let s = "a".repeat(70_000);
    let mut b = Vec::new();
    Writer::new(&mut b).string(&s);
    assert_eq!(b[0], LONG_STRING);
    assert_eq!(Reader::new(&b).next(), Some(Ok(Amf0Value::String(&s))));
}

#[test]
fn errors() {
    assert_eq!(
        Reader::new(&[0x00, 1, 2]).next(),
        Some(Err(AmfError::Truncated))
    );
    assert_eq!(
        Reader::new(&[0x07, 0, 0]).next(),
        Some(Err(AmfError::UnsupportedType(7)))
    );
    assert_eq!(
        Reader::new(&[0x09]).next(),
        Some(Err(AmfError::UnexpectedObjectEnd))
    );
    assert_eq!(
        Reader::new(&[0x02, 0, 1, 0xFF]).next(),
        Some(Err(AmfError::BadUtf8))
    );
    // Unterminated object.
    assert_eq!(
        Reader::new(&[0x03, 0, 1, b'a', 0x05]).next(),
        Some(Err(AmfError::Truncated))
    );
    // A strict array claiming more elements than bytes fails fast.
    assert_eq!(
        Reader::new(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05]).next(),
        Some(Err(AmfError::Truncated))
    );
    // Nesting bound.
    let deep: Vec<u8> = std::iter::repeat_n([0x03, 0, 1, b'k'], MAX_DEPTH as usize + 1)
        .flatten()
        .collect();
    assert_eq!(Reader::new(&deep).next(), Some(Err(AmfError::TooDeep)));
    let mut ok = Vec::new();
    for _ in 0..MAX_DEPTH {
        ok.extend_from_slice(&[0x03, 0, 1, b'k']);
    }
    ok.push(0x05);
    for _ in 0..MAX_DEPTH {
        ok.extend_from_slice(&[0, 0, 0x09]);
    }
    assert!(Reader::new(&ok).next().unwrap().is_ok());
    // After an error the reader stops.
    let mut r = Reader::new(&[0x09, 0x05]);
    assert!(r.next().unwrap().is_err());
    assert!(r.next().is_none());
}
