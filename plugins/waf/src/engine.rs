//! The rule engine: what to read from a request, decoded as the backend
//! would decode it, and which rules match. Free of host calls, so the
//! attack and ordinary-traffic corpora run natively (`cargo test`).

// Byte sets, ASCII semantics: every rule is ASCII, and `[^>]` may then match
// any byte of a value, whatever its encoding.
use regex::bytes::{RegexSet, RegexSetBuilder};

use crate::rules::{Builtin, DEFAULT, Part};

const PARTS: [Part; 5] = [
    Part::Path,
    Part::Query,
    Part::Headers,
    Part::UserAgent,
    Part::Body,
];

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer 403.
    Block,
    /// Log the match and let the request through.
    Log,
}

/// An active rule.
#[derive(Debug)]
pub struct Rule {
    /// Its id.
    pub id: String,
    /// What it catches.
    pub description: String,
    /// What a match does.
    pub mode: Mode,
}

/// A rule that matched, where, and on what.
#[derive(Debug)]
pub struct Hit<'e> {
    /// The rule.
    pub rule: &'e Rule,
    /// The part of the request.
    pub part: Part,
    /// The start of the decoded text that matched (for the log).
    pub excerpt: String,
}

/// Rules of the user's own, as the config writes them.
pub struct Custom {
    pub id: String,
    pub description: String,
    pub parts: Vec<Part>,
    pub pattern: String,
    pub mode: Option<Mode>,
}

/// The active rules, one set per part.
pub struct Engine {
    rules: Vec<Rule>,
    /// Per part (in `PARTS` order): the set, and which rule each pattern is.
    sets: Vec<(RegexSet, Vec<usize>)>,
}

impl Engine {
    /// The default rules up to `paranoia`, minus `disable`, with
    /// `log_only` ones logging, then `custom`.
    pub fn new(
        paranoia: u8,
        mode: Mode,
        disable: &[String],
        log_only: &[String],
        custom: Vec<Custom>,
    ) -> Result<Engine, String> {
        let mut rules = Vec::new();
        let mut patterns: Vec<(Vec<Part>, String)> = Vec::new();
        let defaults = DEFAULT
            .iter()
            .filter(|b: &&Builtin| b.paranoia <= paranoia && !disable.iter().any(|d| d == b.id));
        for b in defaults {
            let m = if log_only.iter().any(|l| l == b.id) {
                Mode::Log
            } else {
                mode
            };
            rules.push(Rule {
                id: b.id.to_string(),
                description: b.description.to_string(),
                mode: m,
            });
            patterns.push((b.parts.to_vec(), b.pattern.to_string()));
        }
        for c in custom {
            let m = if log_only.contains(&c.id) {
                Mode::Log
            } else {
                c.mode.unwrap_or(mode)
            };
            rules.push(Rule {
                id: c.id,
                description: c.description,
                mode: m,
            });
            patterns.push((c.parts, c.pattern));
        }
        let mut sets = Vec::new();
        for part in PARTS {
            let (ids, pats): (Vec<usize>, Vec<&str>) = patterns
                .iter()
                .enumerate()
                .filter(|(_, (parts, _))| parts.contains(&part))
                .map(|(i, (_, p))| (i, p.as_str()))
                .unzip();
            let set = RegexSetBuilder::new(pats)
                .case_insensitive(true)
                .unicode(false)
                .size_limit(8 << 20)
                .build()
                .map_err(|e| e.to_string())?;
            sets.push((set, ids));
        }
        Ok(Engine { rules, sets })
    }

    /// How many rules are active.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Every rule matching one of `targets` (a rule once, at its first
    /// match), blocking ones first.
    pub fn scan(&self, targets: &[(Part, String)]) -> Vec<Hit<'_>> {
        let mut seen = vec![false; self.rules.len()];
        let mut hits = Vec::new();
        for (part, text) in targets {
            let i = PARTS
                .iter()
                .position(|p| p == part)
                .expect("every part has a set");
            let (set, ids) = &self.sets[i];
            for m in set.matches(text.as_bytes()).iter() {
                let r = ids[m];
                if !std::mem::replace(&mut seen[r], true) {
                    hits.push(Hit {
                        rule: &self.rules[r],
                        part: *part,
                        excerpt: text.chars().take(80).collect(),
                    });
                }
            }
        }
        hits.sort_by_key(|h| h.rule.mode == Mode::Log);
        hits
    }
}

/// Percent-decoding as servers apply it (twice, so a double-encoded
/// payload is seen decoded), `+` as a space in forms and queries, HTML
/// character references, and SQL comments as the whitespace they stand for.
pub fn normalize(raw: &str, plus_is_space: bool) -> String {
    let mut text = if plus_is_space {
        raw.replace('+', " ")
    } else {
        raw.to_string()
    };
    for _ in 0..2 {
        if !text.contains('%') {
            break;
        }
        text = percent_decode(&text);
    }
    if text.contains('&') {
        text = html_decode(&text);
    }
    if text.contains("/*") {
        text = strip_comments(&text);
    }
    text
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn html_decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[..rest.len().min(12)].find(';');
        let decoded = end.and_then(|e| {
            let entity = &rest[1..e];
            let c = match entity.to_ascii_lowercase().as_str() {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "amp" => Some('&'),
                "colon" => Some(':'),
                "lpar" => Some('('),
                "rpar" => Some(')'),
                e if e.starts_with("#x") => u32::from_str_radix(&e[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        out.push(' ');
        match rest[start + 2..].find("*/") {
            Some(end) => rest = &rest[start + 2 + end + 2..],
            None => {
                // An unclosed comment still ends the statement: keep it visible.
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `a=1&b=2` (a query string or a form body): names and values, decoded.
pub fn params(text: &str, part: Part, out: &mut Vec<(Part, String)>) {
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((part, normalize(name, true)));
        if !value.is_empty() {
            out.push((part, normalize(value, true)));
        }
    }
}

/// A JSON document's strings (keys and values), or, when it does not parse
/// (cut at the inspected length, or not JSON), its text.
pub fn json(text: &str, out: &mut Vec<(Part, String)>) {
    fn walk(v: &serde_json::Value, out: &mut Vec<(Part, String)>) {
        match v {
            serde_json::Value::String(s) => out.push((Part::Body, normalize(s, false))),
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push((Part::Body, normalize(k, false)));
                    walk(v, out);
                }
            }
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => walk(&v, out),
        Err(_) => out.push((Part::Body, normalize(text, false))),
    }
}

/// A cookie header's values, decoded.
pub fn cookies(header: &str, out: &mut Vec<(Part, String)>) {
    for c in header.split(';') {
        let value = c.trim().split_once('=').map_or(c.trim(), |(_, v)| v);
        if !value.is_empty() {
            out.push((Part::Headers, normalize(value, false)));
        }
    }
}
