//! The CLI's tables: a header row and rows of cells, each column as wide as its widest
//! cell, two spaces apart; numbers right-aligned.
//!
//! Must never truncate a cell (an operator copies ids from it).

use std::fmt::Write;

/// A table printed to standard output.
pub(super) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns; a header starting with `>` (not printed) is
    /// right-aligned.
    pub(super) fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra ones are dropped).
    pub(super) fn row<I, C>(&mut self, cells: I)
    where
        I: IntoIterator<Item = C>,
        C: ToString,
    {
        let mut row: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub(super) fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.headers[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let sep = if i == 0 { "" } else { "  " };
                let w = widths[i];
                let _ = match (self.right[i], i == last) {
                    (true, _) => write!(line, "{sep}{cell:>w$}"),
                    (false, true) => write!(line, "{sep}{cell}"),
                    (false, false) => write!(line, "{sep}{cell:<w$}"),
                };
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table.
    pub(super) fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() {
        let mut t = Table::new(&["NAME", ">COUNT", "NOTE"]);
        t.row(["default", "12", "-"]);
        t.row([
            "credentials".to_string(),
            3.to_string(),
            "a long note".into(),
        ]);
        assert_eq!(
            t.render(),
            "NAME         COUNT  NOTE\n\
             default         12  -\n\
             credentials      3  a long note\n"
        );
    }

    #[test]
    fn a_short_row_is_padded_and_nothing_is_truncated() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["0123456789abcdef"]);
        assert_eq!(
            t.render(),
            format!("A{}B\n0123456789abcdef\n", " ".repeat(17))
        );
    }
}
