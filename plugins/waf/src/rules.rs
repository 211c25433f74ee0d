//! The default rule set, in the spirit of the OWASP Core Rule Set's first
//! paranoia levels: SQL injection, cross-site scripting, path traversal,
//! command injection and scanners. Each rule has an id (ids follow the CRS
//! numbering of the attack class), a paranoia level (1: the attacks
//! themselves, rarely seen in ordinary traffic; 2 and up: broader patterns
//! that catch more and misfire more), the parts of the request it reads,
//! and a case-insensitive pattern matched against their decoded text.

/// What part of a request a rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The path (already normalised by the host: no `..` segments left).
    Path,
    /// Query parameter names and values, decoded.
    Query,
    /// The inspected headers' values (`user-agent`, `referer`, `cookie`...).
    Headers,
    /// The `user-agent` header alone.
    UserAgent,
    /// Form fields, JSON strings (and keys), or the raw text of the body.
    Body,
}

/// Query, headers and body: where attack payloads travel.
pub const ARGS: &[Part] = &[Part::Query, Part::Headers, Part::Body];
const ARGS_AND_PATH: &[Part] = &[Part::Path, Part::Query, Part::Headers, Part::Body];

/// One rule of the default set.
pub struct Builtin {
    /// Its id (`disable` and `log_only` name it).
    pub id: &'static str,
    /// What it catches, for the log.
    pub description: &'static str,
    /// The lowest paranoia level it runs at.
    pub paranoia: u8,
    /// What it reads.
    pub parts: &'static [Part],
    /// Matched case-insensitively against the decoded text.
    pub pattern: &'static str,
}

/// The default rules.
pub const DEFAULT: &[Builtin] = &[
    // === SQL injection (CRS 942xxx) ===
    Builtin {
        id: "942100",
        description: "SQL injection: UNION SELECT",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\bunion\b[\s(]+(all\s+|distinct\s+)?\(?\s*select\b",
    },
    Builtin {
        id: "942110",
        description: "SQL injection: quote, then a boolean tautology",
        paranoia: 1,
        parts: ARGS,
        pattern: r#"['"`]\s*\)?\s*(or|and|xor|\|\||&&)\s+\(?\s*['"`]?[\w-]*['"`]?\s*(=|<>|!=|like\b|is\b)\s*\(?\s*['"`]?[\w-]*"#,
    },
    Builtin {
        id: "942120",
        description: "SQL injection: tautology with numbers (or 1=1)",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\b(or|and)\s+(\d+)\s*=\s*(\d+)\b",
    },
    Builtin {
        id: "942130",
        description: "SQL injection: quote, then a comment",
        paranoia: 1,
        parts: ARGS,
        pattern: r#"['"`]\s*\)*\s*(--|#|/\*|;\s*--)"#,
    },
    Builtin {
        id: "942140",
        description: "SQL injection: stacked statement",
        paranoia: 1,
        parts: ARGS,
        pattern: r"['\x22`)]?\s*;\s*(drop|delete|insert|update|alter|create|truncate|exec|execute|declare|shutdown)\s+(table|from|into|database|procedure|\w+\s+set|@|xp_)",
    },
    Builtin {
        id: "942150",
        description: "SQL injection: timing and out-of-band functions",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\b(sleep|benchmark|pg_sleep|dbms_pipe\.receive_message|load_file|utl_http\.request)\s*\(|\bwaitfor\s+delay\s+'|\binto\s+(out|dump)file\b",
    },
    Builtin {
        id: "942160",
        description: "SQL injection: schema discovery",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\binformation_schema\b|\bsys\.(tables|columns|objects)\b|\bpg_catalog\b|\bsqlite_master\b|\bmysql\.user\b|\bxp_cmdshell\b",
    },
    Builtin {
        id: "942170",
        description: "SQL injection: ORDER BY or GROUP BY probing",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\b(order|group)\s+by\s+\d+\s*(--|#|/\*|$)",
    },
    Builtin {
        id: "942200",
        description: "SQL injection: SELECT ... FROM",
        paranoia: 2,
        parts: ARGS,
        pattern: r"\bselect\b[\s\S]{1,120}\bfrom\b[\s\S]{1,120}\b(where|limit|order|group)\b",
    },
    Builtin {
        id: "942210",
        description: "SQL injection: a lone quote followed by SQL words",
        paranoia: 3,
        parts: ARGS,
        pattern: r#"['"`]\s*\b(or|and|union|select|having|where)\b"#,
    },
    // === Cross-site scripting (CRS 941xxx) ===
    Builtin {
        id: "941100",
        description: "XSS: script tag",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"<\s*/?\s*script\b",
    },
    Builtin {
        id: "941110",
        description: "XSS: event handler in a tag",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"<[^>]*\bon[a-z]{3,}\s*=",
    },
    Builtin {
        id: "941120",
        description: "XSS: javascript: or vbscript: URL",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        // Not "JavaScript: The Good Parts": a scheme has no space after
        // its colon, unless a script call follows.
        pattern: r"\b(java|vb)script:\S|\b(java|vb)script\s*:\s*[\w.]*(alert|eval|prompt|confirm|document|window|fetch|location|atob)\b|\bdata\s*:\s*text/html",
    },
    Builtin {
        id: "941130",
        description: "XSS: embedding or scriptable tag",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"<\s*(iframe|frame|object|embed|applet|svg|math|base|meta|link|style|form)\b",
    },
    Builtin {
        id: "941140",
        description: "XSS: DOM access from a payload",
        paranoia: 1,
        parts: ARGS,
        pattern: r"\bdocument\s*\.\s*(cookie|domain|write)\b|\bstring\s*\.\s*fromcharcode\b|\bwindow\s*\.\s*location\b",
    },
    Builtin {
        id: "941160",
        description: "XSS: script functions called from a payload",
        paranoia: 2,
        parts: ARGS,
        pattern: r"\b(alert|prompt|confirm|eval)\s*\(|\bsetTimeout\s*\(\s*['\x22`]",
    },
    Builtin {
        id: "941170",
        description: "XSS: any HTML tag",
        paranoia: 3,
        parts: ARGS,
        pattern: r"<\s*[a-z][a-z0-9-]*[\s/>]",
    },
    // === Path traversal and file access (CRS 930xxx) ===
    Builtin {
        id: "930100",
        description: "path traversal: ../ in a value",
        paranoia: 1,
        parts: ARGS,
        pattern: r"(\.\.[/\\]){1,}|[/\\]\.\.$",
    },
    Builtin {
        id: "930120",
        description: "file access: well-known system files",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"/etc/(passwd|shadow|group|hosts|issue)\b|/proc/self/|c:\\windows\\|\bboot\.ini\b|\bwin\.ini\b",
    },
    Builtin {
        id: "930130",
        description: "file access: secrets and repository files",
        paranoia: 1,
        parts: &[Part::Path],
        pattern: r"/(\.env|\.git|\.svn|\.hg|\.aws|\.ssh|\.htaccess|\.htpasswd|\.DS_Store)(/|$)",
    },
    Builtin {
        id: "930140",
        description: "probing for admin tools",
        paranoia: 2,
        parts: &[Part::Path],
        pattern: r"/(phpmyadmin|pma|wp-admin|wp-login\.php|xmlrpc\.php|server-status|actuator/env|cgi-bin)(/|$)",
    },
    Builtin {
        id: "920270",
        description: "null byte in a value",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"\x00",
    },
    // === Command injection and remote code (CRS 932xxx, 944xxx) ===
    Builtin {
        id: "932100",
        description: "command injection: a shell command after a separator",
        paranoia: 1,
        parts: ARGS,
        // The command must look run: an option, a path, a URL or nothing
        // after it ("; cat /etc/passwd", "| id"), not prose ("; cat food").
        pattern: r"(;|\|\|?|&&|\$\(|`)\s*(cat|ls|id|whoami|uname|wget|curl|nc|ncat|bash|sh|zsh|python3?|perl|ruby|php|chmod|rm|ping|nslookup|powershell|cmd(\.exe)?)\b(\s+[-/$~.]|\s+https?:|\s*$|\s*[;|`)])",
    },
    Builtin {
        id: "932110",
        description: "command injection: shell file paths",
        paranoia: 1,
        parts: ARGS,
        pattern: r"(^|[;|&`$(\s])/(bin|usr/bin)/(ba|z|da)?sh\b|\bcmd(\.exe)?\s+/c\b",
    },
    Builtin {
        id: "944100",
        description: "remote code: JNDI lookup (Log4Shell)",
        paranoia: 1,
        parts: ARGS_AND_PATH,
        pattern: r"\$\{\s*(jndi|\$\{[^}]*\}[a-z]*)\s*:",
    },
    Builtin {
        id: "944110",
        description: "remote code: template or expression injection",
        paranoia: 2,
        parts: ARGS,
        pattern: r"\{\{[^}]*\b(__class__|__globals__|config|self|request)\b|\$\{[^}]*(runtime|getclass|exec)\b",
    },
    // === Scanners (CRS 913xxx) ===
    Builtin {
        id: "913100",
        description: "scanner: security tool's user agent",
        paranoia: 1,
        parts: &[Part::UserAgent],
        pattern: r"\b(sqlmap|nikto|nmap|masscan|acunetix|nessus|openvas|wpscan|dirbuster|gobuster|ffuf|feroxbuster|zgrab|nuclei|havij|w3af|arachni|fimap|jaeles|whatweb|netsparker|appscan|burpcollaborator)\b",
    },
];
