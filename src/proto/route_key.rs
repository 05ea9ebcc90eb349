//! Route keys: read one top-level string field of a JSON object without deserializing the
//! message (no allocation, one pass, stops at the field). Used to route a connection's
//! messages to different backends by, e.g., `{"ns": "chat", ...}`.
//!
//! Only what routing needs: the value must be a JSON string without escapes (route keys are
//! identifiers); anything else (not an object, field missing, escaped or non-string value,
//! malformed JSON before the field) gives `None` and the message takes the default route.

/// The raw bytes of the string value of top-level `field` in the JSON object `json`.
pub fn json_field<'a>(json: &'a [u8], field: &str) -> Option<&'a [u8]> {
    let mut p = Parser { b: json, i: 0 };
    p.ws();
    p.eat(b'{')?;
    loop {
        p.ws();
        if p.peek()? == b'}' {
            return None;
        }
        let key = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        if key.raw == field.as_bytes() && !key.escaped {
            let v = p.string()?;
            return (!v.escaped).then_some(v.raw);
        }
        p.skip_value()?;
        p.ws();
        match p.next()? {
            b',' => continue,
            _ => return None,
        }
    }
}

struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

/// Deepest nesting skipped before giving up (keeps the scan cheap on hostile input).
const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.next()? {
                b'"' => {
                    return Some(Str {
                        raw: &self.b[start..self.i - 1],
                        escaped,
                    })
                }
                b'\\' => {
                    escaped = true;
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// Skip any JSON value (strings, numbers, literals, nested objects and arrays).
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            self.ws();
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    self.i += 1;
                    continue;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    self.i += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                _ => {
                    // Number or literal: up to the next delimiter.
                    let start = self.i;
                    while !matches!(
                        self.peek(),
                        None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    ) {
                        self.i += 1;
                    }
                    if self.i == start {
                        return None;
                    }
                }
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_field;
    use proptest::prelude::*;

    #[test]
    fn finds_top_level_string_fields() {
        let j = br#"{"a": 1, "nested": {"ns": "inner", "x": [1, {"ns": "deep"}]}, "ns" : "chat", "z": "tail"}"#;
        assert_eq!(json_field(j, "ns"), Some(&b"chat"[..]));
        assert_eq!(json_field(j, "z"), Some(&b"tail"[..]));
        assert_eq!(json_field(j, "a"), None, "not a string");
        assert_eq!(json_field(j, "missing"), None);
        assert_eq!(
            json_field(br#"{"k":"a\"b","ns":"x"}"#, "ns"),
            Some(&b"x"[..])
        );
        assert_eq!(
            json_field(br#"{"ns":"a\u0041"}"#, "ns"),
            None,
            "escaped value"
        );
        assert_eq!(json_field(br#"  {"ns":"x"}"#, "ns"), Some(&b"x"[..]));
        assert_eq!(json_field(b"[1,2]", "ns"), None);
        assert_eq!(json_field(b"not json", "ns"), None);
        assert_eq!(json_field(br#"{"ns""#, "ns"), None);
        assert_eq!(
            json_field(br#"{"a":true,"b":null,"c":-1.5e3,"ns":"ok"}"#, "ns"),
            Some(&b"ok"[..])
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut j = b"{\"a\":".to_vec();
        j.extend(std::iter::repeat_n(b'[', 10_000));
        assert_eq!(json_field(&j, "ns"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            // Next to this file, like the integration tests' regression files.
            failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
            ..ProptestConfig::default()
        })]

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), field in "[a-z]{1,4}") {
            let _ = json_field(&bytes, &field);
        }

        #[test]
        fn agrees_with_serde_json(ns in "[a-z]{0,8}", other in "[a-z ]{0,8}", n in any::<i32>()) {
            let j = format!(r#"{{"x": {n}, "o": {{"ns": "{other}"}}, "ns": "{ns}"}}"#);
            let v: serde_json::Value = serde_json::from_str(&j).unwrap();
            prop_assert_eq!(json_field(j.as_bytes(), "ns"), v["ns"].as_str().map(str::as_bytes));
        }
    }
}
