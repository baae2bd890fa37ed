//! The UI's words and the way it writes numbers: one catalogue per language (`lang/*.toml`,
//! embedded and checked at start), the language chosen from the `lang` cookie or the browser's
//! `Accept-Language`, and the formatting of sizes, times and versions.

use std::cmp::Ordering;
use std::sync::OnceLock;

use serde::Deserialize;

/// The languages of the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    /// The value of the `lang` parameter and cookie.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "zh-CN" | "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    /// The other language, which the switch on every page offers.
    pub fn other(self) -> Lang {
        match self {
            Lang::En => Lang::Zh,
            Lang::Zh => Lang::En,
        }
    }

    /// The first supported language in an `Accept-Language` header, by quality.
    pub fn from_accept(header: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for item in header.split(',').take(32) {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "zh" || tag.starts_with("zh-") {
                Lang::Zh
            } else if tag == "en" || tag.starts_with("en-") {
                Lang::En
            } else {
                continue;
            };
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, lang));
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    /// This language's catalogue.
    pub fn text(self) -> &'static Text {
        static EN: OnceLock<Text> = OnceLock::new();
        static ZH: OnceLock<Text> = OnceLock::new();
        match self {
            Lang::En => EN.get_or_init(|| parse(include_str!("lang/en.toml"))),
            Lang::Zh => ZH.get_or_init(|| parse(include_str!("lang/zh-CN.toml"))),
        }
    }
}

fn parse(text: &str) -> Text {
    // Checked by a unit test and at start (`check`): a missing key never reaches a user.
    toml::from_str(text).expect("the UI catalogue parses")
}

/// Loads both catalogues, so a broken one stops the start rather than a page.
pub fn check() -> Result<(), String> {
    for (name, text) in [
        ("en", include_str!("lang/en.toml")),
        ("zh-CN", include_str!("lang/zh-CN.toml")),
    ] {
        toml::from_str::<Text>(text).map_err(|e| format!("UI catalogue {name}: {e}"))?;
    }
    Ok(())
}

/// Every word of the UI in one language.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub lang_name: String,
    pub html_lang: String,
    pub switch_to: String,
    pub nav_repositories: String,
    pub nav_usage: String,
    pub logout: String,
    pub signed_in_as: String,
    pub login_title: String,
    pub login_user: String,
    pub login_password: String,
    pub login_submit: String,
    pub login_invalid: String,
    pub login_locked: String,
    pub login_busy: String,
    pub login_expired: String,
    pub logged_out: String,
    pub repos_title: String,
    pub filter_label: String,
    pub filter_button: String,
    pub col_repository: String,
    pub col_tags: String,
    pub repos_none: String,
    pub repos_count: String,
    pub page_prev: String,
    pub page_next: String,
    pub page_of: String,
    pub sort_label: String,
    pub sort_newest: String,
    pub sort_version: String,
    pub col_tag: String,
    pub col_digest: String,
    pub col_size: String,
    pub col_created: String,
    pub col_platforms: String,
    pub col_select: String,
    pub tags_none: String,
    pub tags_count: String,
    pub delete_selected: String,
    pub kind_index: String,
    pub kind_manifest: String,
    pub kind_artifact: String,
    pub media_type: String,
    pub total_size: String,
    pub platforms: String,
    pub col_platform: String,
    pub layers: String,
    pub col_media_type: String,
    pub config_title: String,
    pub entrypoint: String,
    pub cmd: String,
    pub env: String,
    pub labels: String,
    pub exposed_ports: String,
    pub workdir: String,
    pub run_as: String,
    pub history: String,
    pub col_step: String,
    pub empty_layer: String,
    pub referrers: String,
    pub col_artifact_type: String,
    pub referrers_none: String,
    pub pull_title: String,
    pub copy: String,
    pub copied: String,
    pub delete_tag: String,
    pub delete_manifest: String,
    pub delete_title: String,
    pub delete_tags_intro: String,
    pub delete_manifest_intro: String,
    pub delete_manifest_no_tags: String,
    pub delete_button: String,
    pub cancel: String,
    pub deleted: String,
    pub delete_failed: String,
    pub delete_denied: String,
    pub delete_disabled: String,
    pub usage_title: String,
    pub usage_intro: String,
    pub usage_total: String,
    pub col_blobs: String,
    pub gc_title: String,
    pub gc_would_free: String,
    pub gc_young: String,
    pub usage_unavailable: String,
    pub error_title: String,
    pub not_found: String,
    pub unavailable: String,
    pub csrf_failed: String,
    pub unknown: String,
}

/// `template` with each `{name}` replaced by its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in values {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A size as `docker images` writes it (decimal units).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.2} {}", UNITS[unit])
    } else if v < 100.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

/// Seconds since the epoch of an RFC 3339 time (`2024-05-01T12:03:04.5+02:00`), as image
/// configurations write `created`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6 && (r.starts_with('+') || r.starts_with('-')) => {
            let oh: i64 = r.get(1..3)?.parse().ok()?;
            let om: i64 = r.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if r.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// A time as `2024-05-01 12:03 UTC`.
pub fn time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // The civil date from days (the inverse of the above).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Compares tags as versions: runs of digits by value, everything else as text, so `v1.10`
/// comes after `v1.9` and `2.0.0-rc.2` before `2.0.0-rc.10`.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> impl Iterator<Item = (bool, &str)> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digit = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            let (chunk, r) = rest.split_at(end);
            rest = r;
            Some((digit, chunk))
        })
    }
    let (mut x, mut y) = (chunks(a), chunks(b));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((true, p)), Some((true, q))) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                let o = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
                if o != Ordering::Equal {
                    return o;
                }
            }
            (Some((_, p)), Some((_, q))) => {
                if p != q {
                    return p.cmp(q);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_catalogues_have_every_key() {
        check().unwrap();
        assert_eq!(Lang::Zh.text().html_lang, "zh-CN");
    }

    #[test]
    fn the_browser_language_is_followed() {
        assert_eq!(Lang::from_accept("zh-CN,zh;q=0.9,en;q=0.8"), Lang::Zh);
        assert_eq!(Lang::from_accept("en-US,en;q=0.9,zh;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept("fr-FR, zh-TW;q=0.3"), Lang::Zh);
        assert_eq!(Lang::from_accept("fr"), Lang::En);
        assert_eq!(Lang::from_accept(""), Lang::En);
    }

    #[test]
    fn versions_sort_by_number() {
        let mut tags = vec![
            "v1.10",
            "v1.9",
            "v1.9.1",
            "latest",
            "2.0.0-rc.10",
            "2.0.0-rc.2",
        ];
        tags.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            tags,
            [
                "2.0.0-rc.2",
                "2.0.0-rc.10",
                "latest",
                "v1.9",
                "v1.9.1",
                "v1.10"
            ]
        );
        assert_eq!(version_cmp("1.02", "1.2"), "1.02".cmp("1.2"));
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-05-01T12:03:04.123456789+02:00"),
            Some(1_714_557_784)
        );
        assert_eq!(time(1_714_557_784), "2024-05-01 10:03 UTC");
        assert_eq!(parse_rfc3339("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(size(999), "999 B");
        assert_eq!(size(3_140_000), "3.14 MB");
        assert_eq!(size(123_400_000), "123 MB");
    }
}
