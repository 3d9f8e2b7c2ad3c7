//! Small pieces several sections share: counted section headings, count tiles, key/value
//! rows, lists of node names, and the collapsed per-layer table (`#`, layer, op, channels,
//! then the section's own columns).

use super::text::{esc, name};

/// Opens `<section id="{id}">` with the heading `{title}: {count}`.
pub(super) fn counted_section(o: &mut String, id: &str, title: &str, count: usize) {
    w!(o, "<section id=\"{id}\"><h2>{title}: {count}</h2>\n");
}

/// [`counted_section`]; with nothing to count it says `empty` and closes the section, and the
/// caller has nothing more to write (`false`).
pub(super) fn counted_section_of(
    o: &mut String,
    id: &str,
    title: &str,
    count: usize,
    empty: &str,
) -> bool {
    counted_section(o, id, title, count);
    if count == 0 {
        w!(o, "<p class=\"muted\">{empty}</p></section>\n");
    }
    count > 0
}

/// A tile of the `tiles` grid: a big count, its label, and an optional detail line.
pub(super) fn tile(o: &mut String, n: usize, label: &str, detail: &str) {
    w!(
        o,
        "<div class=\"tile\"><b>{n}</b>{}{}</div>",
        esc(label),
        if detail.is_empty() {
            String::new()
        } else {
            format!("<br><span>{}</span>", esc(detail))
        }
    );
}

/// One row of a `<dl class="kv">`.
pub(super) fn kv(o: &mut String, k: &str, v: &str) {
    w!(o, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
}

/// Node names, each in `<code>`, joined by `sep`.
pub(super) fn code_list(names: &[String], sep: &str) -> String {
    let names: Vec<String> = names
        .iter()
        .map(|n| format!("<code>{}</code>", name(n)))
        .collect();
    names.join(sep)
}

/// Opens a collapsed table of `layers` layers whose header is `#`, layer, op, channels and
/// then the cells of `head`; each row starts with [`layer_cells`], and the caller closes the
/// table with `</tbody></table></div></details>`.
pub(super) fn per_layer_table(o: &mut String, layers: usize, head: &str) {
    w!(
        o,
        "<details><summary>Per-layer table ({layers} layers)</summary><div class=\"body\"><table>\
         <thead><tr><th>#</th><th>Layer</th><th>Op</th><th class=\"n\">Channels</th>{head}\
         </tr></thead><tbody>"
    );
}

/// Opens row `i` (0-based, shown 1-based) of a [`per_layer_table`] with its first four cells.
pub(super) fn layer_cells(o: &mut String, i: usize, layer: &str, op: &str, channels: usize) {
    w!(
        o,
        "<tr><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td>\
         <td class=\"n\">{channels}</td>",
        i + 1,
        name(layer),
        esc(op)
    );
}
