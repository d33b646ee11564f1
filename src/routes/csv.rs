//! CSV cells for the exports (`/v1/billing/usage`, invoices), in one place.
//!
//! Text cells can come from a tenant (`x-aigne-hub-client-did`, key names): a cell
//! beginning with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to a
//! spreadsheet, so it is neutralised as OWASP recommends ("CSV injection"): a
//! single quote before it, inside a quoted field. Figures are written as they are,
//! so a negative amount stays a number.

/// First characters a spreadsheet reads as the start of a formula.
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A text cell: a formula start is neutralised, then quoted per RFC 4180.
pub(crate) fn text_cell(raw: &str) -> String {
    if raw.starts_with(FORMULA_STARTS) {
        return format!("\"'{}\"", raw.replace('"', "\"\""));
    }
    number_cell(raw)
}

/// A figure (a decimal amount, a count): RFC 4180 only, so `-0.5` stays a number.
pub(crate) fn number_cell(raw: &str) -> String {
    if raw.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", raw.replace('"', "\"\""))
    } else {
        raw.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_cell_that_starts_a_formula_is_neutralised() {
        assert_eq!(
            text_cell("=HYPERLINK(\"http://x\",\"y\")"),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\""
        );
        for start in ["+1", "-1+2", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(text_cell(start), format!("\"'{start}\""));
        }
    }

    #[test]
    fn plain_text_and_figures_are_only_quoted_when_needed() {
        assert_eq!(text_cell("a,b"), "\"a,b\"");
        assert_eq!(text_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text_cell("plain"), "plain");
        assert_eq!(number_cell("-0.5"), "-0.5");
    }
}
