//! The one renderer of aligned text for the listing verbs (`ps`, `log`, `contexts`,
//! `status`): columns two spaces apart, the last column unpadded so long command lines are
//! not followed by blanks, trailing blanks trimmed. Cells are shown as given: the verbs
//! escape what callers wrote before it gets here.

/// Renders `rows` under `header`; every row has `header.len()` cells.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    aligned(&[&[header], rows].concat())
}

/// Renders `rows` with each column as wide as its widest cell (no header: `ctx status`'s
/// labelled lines).
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        out.push_str(&line(row, &widths));
        out.push('\n');
    }
    out
}

/// One row, each cell but the last padded to its column's width (a wider cell pushes the
/// rest right rather than being cut): what `ctx log --follow` prints line by line with
/// widths fixed in advance.
pub fn line<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let mut l = String::new();
    for (i, cell) in cells.iter().map(AsRef::as_ref).enumerate() {
        l.push_str(cell);
        if i + 1 < cells.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            l.extend(std::iter::repeat_n(' ', pad + 2));
        }
    }
    l.truncate(l.trim_end().len());
    l
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let text = super::render(
            &["ID", "COMMAND"],
            &[
                vec!["7".into(), "sleep 10".into()],
                vec!["123".into(), "true".into()],
            ],
        );
        assert_eq!(text, "ID   COMMAND\n7    sleep 10\n123  true\n");
    }

    #[test]
    fn fixed_widths_pad_short_cells_and_let_long_ones_through() {
        assert_eq!(super::line(&["a", "b", "c"], &[3, 1]), "a    b  c");
        assert_eq!(super::line(&["abcd", "b", ""], &[3, 1]), "abcd  b");
    }
}
