//! # waf — a web application firewall stage
//!
//! A filter that inspects the path, the query, chosen headers and the start
//! of the body (form fields, JSON strings, or text) against a default rule
//! set — SQL injection, cross-site scripting, path traversal, command
//! injection, scanners — and rules of your own, and answers `403` to what
//! matches (or only logs it).
//!
//! ```toml
//! [[pipeline]]
//! plugin = "waf"
//! [pipeline.config]
//! paranoia = 1                 # 1 (default) to 4: higher catches more, misfires more
//! mode = "block"               # or "log": detect only
//! request_body = 16384         # bytes of the body inspected (default 8192; 0: none)
//! headers = ["user-agent", "referer", "cookie"]   # the default
//! disable = ["942130"]         # rule ids that misfire on your traffic
//! log_only = ["941160"]        # rules that only log
//! [[pipeline.config.rules]]
//! id = "100001"
//! description = "internal paths"
//! parts = ["path"]             # path, query, headers, user-agent, body
//! pattern = "^/internal/"
//! ```
//!
//! Behaviour:
//!
//! - Every value is decoded before matching as a server would read it:
//!   percent-encoding (twice), `+` in queries and forms, HTML character
//!   references, SQL comments; patterns are case-insensitive.
//! - A match of a blocking rule: `403 Forbidden` (the rule id is logged,
//!   never sent) and the request context's `waf.blocked` is the rule id. A
//!   logging rule's match: a warning in the log (rule, part, the start of
//!   the matched value) and `waf.matched` in the context.
//! - The body: its first `request_body` bytes, read before the stage runs
//!   (the upstream still gets all of it); a form is split into fields, JSON
//!   into its strings (keys too), anything else matched as text.
//! - Checked at init: paranoia 1–4, rule ids known (for `disable` and
//!   `log_only`), custom patterns compile.

mod engine;
mod rules;

use portier_sdk::{Action, Filter, HttpResponse, Request, config, log};
use serde::Deserialize;

use engine::{Custom, Engine, Mode};
use rules::Part;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "one")]
    paranoia: u8,
    #[serde(default)]
    mode: ModeName,
    #[serde(default = "default_body")]
    request_body: u32,
    #[serde(default = "default_headers")]
    headers: Vec<String>,
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    log_only: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

#[derive(Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    #[default]
    Block,
    Log,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    id: String,
    #[serde(default)]
    description: String,
    parts: Vec<String>,
    pattern: String,
    mode: Option<ModeName>,
}

fn one() -> u8 {
    1
}

fn default_body() -> u32 {
    8192
}

fn default_headers() -> Vec<String> {
    ["user-agent", "referer", "cookie"]
        .map(String::from)
        .to_vec()
}

impl From<ModeName> for Mode {
    fn from(m: ModeName) -> Mode {
        match m {
            ModeName::Block => Mode::Block,
            ModeName::Log => Mode::Log,
        }
    }
}

/// The waf filter.
pub struct Waf {
    engine: Engine,
    headers: Vec<String>,
    request_body: u32,
}

impl Filter for Waf {
    fn init(json: &str) -> Result<Self, config::Error> {
        let c: Config = config::parse(json)?;
        if !(1..=4).contains(&c.paranoia) {
            return Err(config::Error::at("paranoia", "1, 2, 3 or 4"));
        }
        let known = |id: &str, custom: &[RuleConfig]| {
            rules::DEFAULT.iter().any(|r| r.id == id) || custom.iter().any(|r| r.id == id)
        };
        for (key, ids) in [("disable", &c.disable), ("log_only", &c.log_only)] {
            if let Some(i) = ids.iter().position(|id| !known(id, &c.rules)) {
                return Err(config::Error::at(
                    format!("{key}[{i}]"),
                    format!("no rule {:?}", ids[i]),
                ));
            }
        }
        let mut custom = Vec::new();
        for (i, r) in c.rules.into_iter().enumerate() {
            let at = |k: &str, m: String| config::Error::at(format!("rules[{i}].{k}"), m);
            if rules::DEFAULT.iter().any(|d| d.id == r.id) {
                return Err(at("id", format!("{:?} is a default rule's id", r.id)));
            }
            if r.parts.is_empty() {
                return Err(at("parts", "name at least one".into()));
            }
            let parts = r
                .parts
                .iter()
                .map(|p| {
                    part(p).ok_or_else(|| {
                        at(
                            "parts",
                            format!("{p:?}: one of path, query, headers, user-agent, body"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Err(e) = regex::RegexBuilder::new(&r.pattern)
                .case_insensitive(true)
                .build()
            {
                return Err(at("pattern", e.to_string()));
            }
            custom.push(Custom {
                id: r.id,
                description: r.description,
                parts,
                pattern: r.pattern,
                mode: r.mode.map(Mode::from),
            });
        }
        let engine = Engine::new(c.paranoia, c.mode.into(), &c.disable, &c.log_only, custom)
            .map_err(config::Error::from)?;
        Ok(Waf {
            engine,
            headers: c.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            request_body: c.request_body,
        })
    }

    fn wants_response(&self) -> bool {
        false
    }

    fn request_body(&self) -> u32 {
        self.request_body
    }

    fn on_request(&self, request: &Request) -> Action {
        let targets = self.targets(request);
        let hits = self.engine.scan(&targets);
        let mut blocked = None;
        for hit in &hits {
            let part = format!("{:?}", hit.part).to_lowercase();
            match hit.rule.mode {
                Mode::Block if blocked.is_none() => {
                    log::warn(format!(
                        "blocked by rule {} ({}) in the {part}: {:?}",
                        hit.rule.id, hit.rule.description, hit.excerpt
                    ));
                    blocked = Some(hit.rule.id.clone());
                }
                Mode::Block => {}
                Mode::Log => {
                    log::warn(format!(
                        "rule {} ({}) matched in the {part} (log only): {:?}",
                        hit.rule.id, hit.rule.description, hit.excerpt
                    ));
                    let _ = request.context_set("waf.matched", &hit.rule.id);
                }
            }
        }
        match blocked {
            Some(id) => {
                let _ = request.context_set("waf.blocked", &id);
                Action::Respond(HttpResponse::text(403, "403 Forbidden\n"))
            }
            None => Action::Continue,
        }
    }
}

impl Waf {
    /// Everything the rules read, decoded.
    fn targets(&self, request: &Request) -> Vec<(Part, String)> {
        let headers = self
            .headers
            .iter()
            .flat_map(|name| {
                request
                    .header_all(name)
                    .into_iter()
                    .map(move |v| (name.clone(), v))
            })
            .collect::<Vec<_>>();
        let body = (self.request_body > 0)
            .then(|| request.body())
            .flatten()
            .filter(|b| !b.bytes.is_empty())
            .map(|b| (b.bytes, request.header("content-type").unwrap_or_default()));
        targets(
            &request.path(),
            request.query().as_deref(),
            &headers,
            body.as_ref(),
        )
    }
}

/// What the rules read from a request's parts, decoded.
fn targets(
    path: &str,
    query: Option<&str>,
    headers: &[(String, String)],
    body: Option<&(Vec<u8>, String)>,
) -> Vec<(Part, String)> {
    let mut out = vec![(Part::Path, engine::normalize(path, false))];
    if let Some(q) = query {
        engine::params(q, Part::Query, &mut out);
    }
    for (name, value) in headers {
        match name.as_str() {
            "cookie" => engine::cookies(value, &mut out),
            "user-agent" => {
                out.push((Part::UserAgent, value.clone()));
                out.push((Part::Headers, engine::normalize(value, false)));
            }
            _ => out.push((Part::Headers, engine::normalize(value, false))),
        }
    }
    if let Some((bytes, content_type)) = body {
        let text = String::from_utf8_lossy(bytes);
        let kind = content_type.to_ascii_lowercase();
        if kind.starts_with("application/x-www-form-urlencoded") {
            engine::params(&text, Part::Body, &mut out);
        } else if kind.contains("json") {
            engine::json(&text, &mut out);
        } else {
            out.push((Part::Body, engine::normalize(&text, false)));
        }
    }
    out
}

fn part(name: &str) -> Option<Part> {
    Some(match name {
        "path" => Part::Path,
        "query" => Part::Query,
        "headers" => Part::Headers,
        "user-agent" => Part::UserAgent,
        "body" => Part::Body,
        _ => return None,
    })
}

portier_sdk::export_filter!(Waf);

#[cfg(test)]
mod tests;
