//! Plain aligned tables for the listing verbs (`ps`, `log`): a header row, columns two
//! spaces apart, the last column unpadded so long command lines are not followed by blanks.

/// Renders `rows` under `header`; every row has `header.len()` cells.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                let pad = widths[i] - cell.chars().count();
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', pad + 2));
            } else {
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
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
}
