//! Text and number formatting shared by every section: HTML escaping (`esc`, `name`), numbers
//! (`num`, `sci`, `db`, `pct`…) and the small statistics shown beside them (spread, median).

use std::fmt::{self, Display};

/// HTML-escapes a string for text and quoted attribute values; with `wbr`, also lets a long
/// node name wrap after each `/` (text content only).
pub(super) struct Esc<'a> {
    text: &'a str,
    wbr: bool,
}

pub(super) fn esc(text: &str) -> Esc<'_> {
    Esc { text, wbr: false }
}

pub(super) fn name(text: &str) -> Esc<'_> {
    Esc { text, wbr: true }
}

/// The escaped reason of a failure, or `no reason given`.
pub(super) fn reason(text: Option<&str>) -> Esc<'_> {
    esc(text.unwrap_or("no reason given"))
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.text;
        let mut last = 0;
        for (i, c) in s.char_indices() {
            let rep = match c {
                '&' => "&amp;",
                '<' => "&lt;",
                '>' => "&gt;",
                '"' => "&quot;",
                '\'' => "&#39;",
                '\0' => "\u{fffd}",
                '/' if self.wbr && i > 0 => "<wbr>/",
                _ => continue,
            };
            f.write_str(&s[last..i])?;
            f.write_str(rep)?;
            last = i + c.len_utf8();
        }
        f.write_str(&s[last..])
    }
}

/// Three significant digits; scientific notation outside [0.001, 10⁴).
pub(super) fn num(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "∞" } else { "−∞" }.into();
    }
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e4).contains(&a) {
        return sci(v);
    }
    let digits = (2 - a.log10().floor() as i32).clamp(0, 5) as usize;
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    s.replace('-', "−")
}

pub(super) fn sci(v: f64) -> String {
    if !v.is_finite() {
        return num(v);
    }
    format!("{v:.2e}").replace('-', "−")
}

pub(super) fn opt_num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), num)
}

pub(super) fn db(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1} dB").replace('-', "−")
    } else {
        format!("{} dB", num(v))
    }
}

pub(super) fn db_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), db)
}

pub(super) fn signed_db(v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        format!("+{v:.1} dB")
    } else {
        db(v)
    }
}

pub(super) fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.1}%", v * 100.0)
    } else {
        num(v)
    }
}

/// `max / min` over the positive finite values, or `None` when there are none.
pub(super) fn spread(v: &[f32]) -> Option<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &x in v {
        let x = f64::from(x);
        if x.is_finite() && x > 0.0 {
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    (lo <= hi).then(|| hi / lo)
}

pub(super) fn spread_text(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{}×", num(v)))
}

pub(super) fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|v| !v.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

pub(super) fn min_med_max(v: &[f32]) -> (Option<f64>, Option<f64>, Option<f64>) {
    let mut s: Vec<f64> = v
        .iter()
        .map(|&x| f64::from(x))
        .filter(|x| !x.is_nan())
        .collect();
    s.sort_by(|a, b| a.total_cmp(b));
    (
        s.first().copied(),
        s.get(s.len() / 2).copied(),
        s.last().copied(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("ü<ß").to_string(), "ü&lt;ß");
    }

    #[test]
    fn numbers_survive_non_finite_values() {
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(f64::INFINITY), "∞");
        assert_eq!(num(1234.6), "1235");
        assert_eq!(num(0.001), "0.001");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(-2.0), "−2");
        assert_eq!(db(f64::NEG_INFINITY), "−∞ dB");
        assert_eq!(spread(&[0.0, f32::NAN]), None);
        assert_eq!(spread(&[2.0, 8.0, 0.0]), Some(4.0));
    }
}
