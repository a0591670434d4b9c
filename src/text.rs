//! Text from outside (provider bodies, error messages, headers, webhook fields) made
//! storable, once, at the boundary where it enters: PostgreSQL's `text` and `jsonb` refuse
//! NUL (`\0`, and `\u0000` inside JSON), and a remote party can send megabytes where we
//! keep a line. Pure functions, no I/O; any module may use them.
//!
//! Must never fail or panic, whatever the input: its whole point is that what comes out
//! can always be written.

use serde_json::Value;

/// Replacement for a NUL character (U+FFFD, as for invalid UTF-8).
const REPLACEMENT: char = '\u{fffd}';

/// Longest error message or provider snippet kept, in bytes (a few lines for an operator;
/// the full body is never needed to decide a retry).
pub const MAX_MESSAGE: usize = 2000;

/// `text` with NUL replaced and cut to at most `max` bytes on a character boundary
/// (with `…` marking the cut).
pub fn clean(text: &str, max: usize) -> String {
    let cut = floor_char_boundary(text, max);
    let mut out: String = text[..cut]
        .chars()
        .map(|c| if c == '\0' { REPLACEMENT } else { c })
        .collect();
    if cut < text.len() {
        out.push('…');
    }
    out
}

/// Bytes as text: invalid UTF-8 and NUL replaced, cut to at most `max` bytes of input.
pub fn clean_bytes(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len().min(max);
    let mut out = clean(&String::from_utf8_lossy(&bytes[..cut]), usize::MAX);
    if cut < bytes.len() {
        out.push('…');
    }
    out
}

/// A name operators write (queues, schedules, providers): 1-64 characters of a-z, A-Z,
/// 0-9, `_`, `-`, `.`. One rule for the config and for jobs callers enqueue, so the queue
/// a job names can be configured and served.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `text` can be stored as is (no NUL).
pub fn is_storable(text: &str) -> bool {
    !text.contains('\0')
}

/// The path (`$.a.b[2]`) of the first string or key of `value` holding a NUL, if any:
/// jsonb refuses `\u0000`, so such a payload cannot be stored.
pub fn first_unstorable(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => !is_storable(s),
            Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let bad = walk(v, path);
                if !bad {
                    path.truncate(len);
                }
                bad
            }),
            Value::Object(map) => map.iter().any(|(k, v)| {
                let len = path.len();
                path.push('.');
                path.push_str(&clean(k, 100));
                let bad = !is_storable(k) || walk(v, path);
                if !bad {
                    path.truncate(len);
                }
                bad
            }),
            _ => false,
        }
    }
    let mut path = String::from("$");
    walk(value, &mut path).then_some(path)
}

/// `value` with NUL replaced in every string and key (lengths kept as they are).
pub fn clean_json(value: Value) -> Value {
    match value {
        Value::String(s) if !is_storable(&s) => Value::String(clean(&s, usize::MAX)),
        Value::Array(items) => Value::Array(items.into_iter().map(clean_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let k = if is_storable(&k) {
                        k
                    } else {
                        clean(&k, usize::MAX)
                    };
                    (k, clean_json(v))
                })
                .collect(),
        ),
        other => other,
    }
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    if max >= text.len() {
        return text.len();
    }
    let mut i = max;
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clean_replaces_nul_and_cuts_on_a_char_boundary() {
        assert_eq!(clean("a\0b", 10), "a\u{fffd}b");
        assert_eq!(clean("ééé", 3), "é…");
        assert_eq!(clean("abc", 3), "abc");
        assert_eq!(clean("", 0), "");
    }

    #[test]
    fn clean_bytes_replaces_invalid_utf8_and_nul() {
        assert_eq!(clean_bytes(b"ok\x00\xff!", 100), "ok\u{fffd}\u{fffd}!");
        assert_eq!(clean_bytes(b"abcdef", 3), "abc…");
    }

    #[test]
    fn first_unstorable_names_the_path() {
        assert_eq!(first_unstorable(&json!({"a": [1, "x"]})), None);
        assert_eq!(
            first_unstorable(&json!({"a": [1, "x\u{0}"]})),
            Some("$.a[1]".into())
        );
        assert_eq!(
            first_unstorable(&json!({"k\u{0}": 1})),
            Some("$.k\u{fffd}".into())
        );
    }

    #[test]
    fn clean_json_leaves_nothing_unstorable() {
        let v = clean_json(json!({"a\u{0}": ["b\u{0}", {"c": "\u{0}"}], "n": 1}));
        assert_eq!(first_unstorable(&v), None);
        assert_eq!(v["a\u{fffd}"][0], "b\u{fffd}");
    }
}
