//! Errors that point into a file: a message, a byte span, an optional hint, rendered with the
//! line, a caret and the hint, the way `rustc`, `just` and `uv` show them.

use std::ops::Range;

/// One problem in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
    /// Byte range in the source the message is about.
    pub span: Range<usize>,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
    /// The file the span points into when it is not the pipeline file (an `sql_file`).
    pub file: Option<SourceFile>,
}

/// A file the pipeline file names (an `sql_file`), for diagnostics that point into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as written in the pipeline file: relative to the pipeline file's directory.
    pub path: String,
    /// The file's text; the diagnostic's span is a byte range in it.
    pub text: String,
    /// Where the pipeline file names it (the `sql_file` value), to order diagnostics by.
    pub named_at: Range<usize>,
}

impl Diagnostic {
    /// A diagnostic without a hint.
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Self {
            message: message.into(),
            span,
            hint: None,
            file: None,
        }
    }

    /// Points the diagnostic into `file` instead of the pipeline file.
    pub fn in_file(mut self, file: SourceFile) -> Self {
        self.file = Some(file);
        self
    }

    /// Where in the pipeline file the problem is, or where it names the file the problem is in:
    /// the order diagnostics are reported in.
    pub fn position(&self) -> usize {
        self.file
            .as_ref()
            .map_or(self.span.start, |file| file.named_at.start)
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// 1-based line and column of the span's start.
    pub fn line_column(&self, source: &str) -> (usize, usize) {
        let offset = self.span.start.min(source.len());
        let before = &source[..floor_char_boundary(source, offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Renders the diagnostic against `source`, naming the file as `path`:
    ///
    /// ```text
    /// error: phase `precompute` needs unknown phase `analytcs`
    ///   --> gapless.toml:14:11
    ///    |
    /// 14 | needs = ["analytcs"]
    ///    |          ^^^^^^^^^^
    ///    = hint: did you mean `analytics`?
    /// ```
    /// A diagnostic that points into an `sql_file` is rendered against that file, its path
    /// taken relative to `path`'s directory.
    pub fn render(&self, path: &str, source: &str) -> String {
        let joined;
        let (path, source) = match &self.file {
            Some(file) => {
                joined = match path.rfind('/') {
                    Some(slash) if !file.path.starts_with('/') => {
                        format!("{}/{}", &path[..slash], file.path)
                    }
                    _ => file.path.clone(),
                };
                (joined.as_str(), file.text.as_str())
            }
            None => (path, source),
        };
        let (line, column) = self.line_column(source);
        let line_text = source.lines().nth(line - 1).unwrap_or("");
        let gutter = line.to_string().len();
        let pad = " ".repeat(gutter);
        let span_len = {
            let start = floor_char_boundary(source, self.span.start.min(source.len()));
            let end = floor_char_boundary(source, self.span.end.min(source.len())).max(start);
            let on_line = source[start..end].split('\n').next().unwrap_or("");
            on_line.chars().count().max(1)
        };
        let mut out = format!("error: {}\n", self.message);
        out.push_str(&format!("{pad}--> {path}:{line}:{column}\n"));
        out.push_str(&format!("{pad} |\n"));
        out.push_str(&format!("{line} | {line_text}\n"));
        out.push_str(&format!(
            "{pad} | {}{}\n",
            " ".repeat(column - 1),
            "^".repeat(span_len)
        ));
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {hint}\n"));
        }
        out
    }
}

fn floor_char_boundary(source: &str, mut index: usize) -> usize {
    while index > 0 && !source.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Renders several diagnostics, separated by blank lines, ending with a count.
pub fn render_all(diagnostics: &[Diagnostic], path: &str, source: &str) -> String {
    let mut out = String::new();
    for diagnostic in diagnostics {
        out.push_str(&diagnostic.render(path, source));
        out.push('\n');
    }
    let count = diagnostics.len();
    out.push_str(&format!(
        "error: {path} has {count} error{}\n",
        if count == 1 { "" } else { "s" }
    ));
    out
}

/// The candidate closest to `input` by edit distance, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (levenshtein(input, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= (candidate.chars().count().max(input.chars().count()) / 3).max(1)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_column_caret_hint() {
        let source = "[pipeline]\nname = \"x\"\nneeds = [\"analytcs\"]\n";
        let start = source.find("\"analytcs\"").unwrap();
        let diagnostic = Diagnostic::new("unknown phase `analytcs`", start..start + 10)
            .with_hint("did you mean `analytics`?");
        assert_eq!(diagnostic.line_column(source), (3, 10));
        let rendered = diagnostic.render("gapless.toml", source);
        assert!(rendered.contains("--> gapless.toml:3:10"), "{rendered}");
        assert!(
            rendered.contains("3 | needs = [\"analytcs\"]"),
            "{rendered}"
        );
        assert!(rendered.contains("  |          ^^^^^^^^^^"), "{rendered}");
        assert!(
            rendered.contains("= hint: did you mean `analytics`?"),
            "{rendered}"
        );
    }

    #[test]
    fn suggestions() {
        let names = ["analytics", "precompute", "raw"];
        assert_eq!(did_you_mean("analytcs", names), Some("analytics"));
        assert_eq!(did_you_mean("zzz", names), None);
    }
}
