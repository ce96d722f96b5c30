//! Named parameters in user SQL: `:start`, `:end` and `:date`.
//!
//! SQL from `gapless.toml` is split into statements and its named parameters are rewritten into
//! the positional placeholders of the backend, so that every value reaches the database as a
//! bound parameter and never as text (RELIABILITY.md §3.3). The scanner knows enough SQL lexing to
//! leave string literals, quoted identifiers, comments, PostgreSQL dollar quotes, BigQuery's
//! triple-quoted strings and `#` comments, `::type` casts and `:=` alone.

use std::fmt;
use std::ops::Range;

/// The SQL dialect a script is prepared for: decides the placeholder syntax and a few lexical
/// rules (PostgreSQL dollar quotes, `E'…'` strings and nested block comments; SQLite
/// `` `…` `` and `[…]` identifiers; BigQuery (GoogleSQL) `'…'` and `"…"` strings with backslash
/// escapes, `'''…'''` and `"""…"""` strings, `` `…` `` identifiers and `#` comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// SQLite: placeholders `?1`, `?2`, …
    Sqlite,
    /// PostgreSQL: placeholders `$1`, `$2`, …
    Postgres,
    /// BigQuery (GoogleSQL): named placeholders `@start`, `@end`, `@date`, bound as `DATE`
    /// query parameters of those names.
    BigQuery,
}

/// A named parameter that gapless binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Param {
    /// `:start`, the first date of the task's range.
    Start,
    /// `:end`, the last date of the task's range (inclusive).
    End,
    /// `:date`, the single date of a one-date task.
    Date,
}

impl Param {
    /// The name as written in SQL, without the colon.
    pub fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::End => "end",
            Self::Date => "date",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "start" => Some(Self::Start),
            "end" => Some(Self::End),
            "date" => Some(Self::Date),
            _ => None,
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}", self.name())
    }
}

/// One statement of a script, ready to be sent with its parameters bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text with positional placeholders, trimmed, without the `;`.
    pub text: String,
    /// The value of placeholder *n* is `params[n - 1]`: each parameter appears once, in order of
    /// its first appearance in the statement.
    pub params: Vec<Param>,
}

/// Why a piece of SQL could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// A `:name` other than `:start`, `:end` or `:date`.
    #[error("unknown parameter `:{name}` on line {line}; expected `:start`, `:end` or `:date`")]
    UnknownParam {
        /// The name after the colon.
        name: String,
        /// 1-based line of the parameter in the SQL.
        line: usize,
    },
    /// A placeholder of another style (`?`, `$1`, `@x`): its value would never be bound.
    #[error("unsupported parameter `{text}` on line {line}; use `:start`, `:end` or `:date`")]
    ForeignParam {
        /// The placeholder as written.
        text: String,
        /// 1-based line of the placeholder in the SQL.
        line: usize,
    },
    /// A string literal, quoted identifier or comment that never ends.
    #[error("unterminated {what} starting on line {line}")]
    Unterminated {
        /// What was left open, e.g. "string literal".
        what: &'static str,
        /// 1-based line where it starts.
        line: usize,
    },
}

/// Splits `sql` into statements and rewrites `:start`, `:end` and `:date` into the positional
/// placeholders of `dialect`, numbered per statement in order of first appearance.
///
/// Statements are separated by `;` outside string literals, quoted identifiers, comments and
/// (PostgreSQL) dollar-quoted strings; statements that hold only whitespace and comments are
/// dropped. Text inside literals and comments, `::type` casts and `:=` are left untouched.
///
/// A `:name` inside `arr[lo:hi]` on PostgreSQL reads as a parameter: write `arr[lo : hi]`.
pub fn prepare(sql: &str, dialect: Dialect) -> Result<Vec<Statement>, SqlError> {
    Ok(Scanner::scan(sql, dialect)?.statements)
}

/// Where the named parameters of `sql` are: each `:start`, `:end` and `:date` outside literals
/// and comments, with its byte range in `sql` (colon included), in order of appearance. Fails
/// as [`prepare`] does.
pub fn param_spans(sql: &str, dialect: Dialect) -> Result<Vec<(Param, Range<usize>)>, SqlError> {
    Ok(Scanner::scan(sql, dialect)?.found)
}

struct Scanner<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    dialect: Dialect,
    pos: usize,
    statements: Vec<Statement>,
    text: String,
    params: Vec<Param>,
    has_content: bool,
    /// Every parameter met so far, with its byte range in `sql`.
    found: Vec<(Param, Range<usize>)>,
}

fn is_ident_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80
}

fn is_ident_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || byte >= 0x80
}

impl<'a> Scanner<'a> {
    fn scan(sql: &'a str, dialect: Dialect) -> Result<Self, SqlError> {
        let mut scanner = Scanner {
            sql,
            bytes: sql.as_bytes(),
            dialect,
            pos: 0,
            statements: Vec::new(),
            text: String::new(),
            params: Vec::new(),
            has_content: false,
            found: Vec::new(),
        };
        scanner.run()?;
        Ok(scanner)
    }

    fn run(&mut self) -> Result<(), SqlError> {
        while self.pos < self.bytes.len() {
            let byte = self.bytes[self.pos];
            let next = self.bytes.get(self.pos + 1).copied();
            match byte {
                b'\'' | b'"' if self.dialect == Dialect::BigQuery => self.bigquery_string(byte)?,
                b'\'' => {
                    let backslash = self.dialect == Dialect::Postgres && self.is_escape_string();
                    self.quoted(b'\'', b'\'', backslash, "string literal")?;
                }
                b'"' => self.quoted(b'"', b'"', false, "quoted identifier")?,
                b'`' if self.dialect == Dialect::Sqlite => {
                    self.quoted(b'`', b'`', false, "quoted identifier")?;
                }
                b'`' if self.dialect == Dialect::BigQuery => {
                    self.quoted(b'`', b'`', true, "quoted identifier")?;
                }
                b'#' if self.dialect == Dialect::BigQuery => {
                    let end = self.line_end();
                    self.copy_trivia(end);
                }
                b'[' if self.dialect == Dialect::Sqlite => {
                    self.quoted(b'[', b']', false, "quoted identifier")?;
                }
                b'-' if next == Some(b'-') => {
                    let end = self.line_end();
                    self.copy_trivia(end);
                }
                b'/' if next == Some(b'*') => self.block_comment()?,
                b'$' if self.dialect == Dialect::Postgres => self.dollar()?,
                b'?' if self.dialect == Dialect::Sqlite => {
                    let end = self.digits_end(self.pos + 1);
                    return Err(self.foreign(end));
                }
                b'@' | b'$'
                    if self.dialect == Dialect::Sqlite
                        && next.is_some_and(is_ident_start)
                        && !self.follows_ident() =>
                {
                    let end = self.ident_end(self.pos + 1);
                    return Err(self.foreign(end));
                }
                // BigQuery: `?` and `@name` are query parameters gapless would never bind;
                // `@@name` is a system variable.
                b'?' if self.dialect == Dialect::BigQuery => return Err(self.foreign(self.pos + 1)),
                b'@' if self.dialect == Dialect::BigQuery && next == Some(b'@') => {
                    let end = self.ident_end(self.pos + 2);
                    self.copy_content(end);
                }
                b'@' if self.dialect == Dialect::BigQuery && next.is_some_and(is_ident_start) => {
                    let end = self.ident_end(self.pos + 1);
                    return Err(self.foreign(end));
                }
                b':' => self.colon(next)?,
                b';' => {
                    self.pos += 1;
                    self.finish_statement();
                }
                _ => self.ordinary(),
            }
        }
        self.finish_statement();
        Ok(())
    }

    /// Where the line comment starting at `pos` ends (before its newline).
    fn line_end(&self) -> usize {
        self.bytes[self.pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.bytes.len(), |offset| self.pos + offset)
    }

    /// A BigQuery string literal opening at `pos` with `quote`: `'…'`, `"…"` or their tripled
    /// forms, backslash escapes in all (a raw `r'…'` string cannot end in an odd backslash
    /// either, so skipping the escaped byte finds its end too).
    fn bigquery_string(&mut self, quote: u8) -> Result<(), SqlError> {
        let triple = self.bytes.get(self.pos + 1) == Some(&quote)
            && self.bytes.get(self.pos + 2) == Some(&quote);
        if !triple {
            return self.quoted(quote, quote, true, "string literal");
        }
        let mut end = self.pos + 3;
        loop {
            match self.bytes.get(end) {
                None => {
                    return Err(SqlError::Unterminated {
                        what: "string literal",
                        line: self.line_at(self.pos),
                    });
                }
                Some(b'\\') => end += 2,
                Some(&b)
                    if b == quote
                        && self.bytes.get(end + 1) == Some(&quote)
                        && self.bytes.get(end + 2) == Some(&quote) =>
                {
                    end += 3;
                    break;
                }
                Some(_) => end += 1,
            }
        }
        self.copy_content(end.min(self.bytes.len()));
        Ok(())
    }

    fn line_at(&self, offset: usize) -> usize {
        1 + self.bytes[..offset].iter().filter(|&&b| b == b'\n').count()
    }

    /// Whether the byte before `pos` continues an identifier (so `$`/`@` are part of a name).
    fn follows_ident(&self) -> bool {
        self.pos > 0 && is_ident_char(self.bytes[self.pos - 1])
    }

    /// PostgreSQL `E'…'`/`e'…'` strings take backslash escapes.
    fn is_escape_string(&self) -> bool {
        self.pos >= 1
            && matches!(self.bytes[self.pos - 1], b'E' | b'e')
            && (self.pos < 2 || !is_ident_char(self.bytes[self.pos - 2]))
    }

    fn ident_end(&self, from: usize) -> usize {
        let mut end = from;
        while end < self.bytes.len() && is_ident_char(self.bytes[end]) && self.bytes[end] != b'$' {
            end += 1;
        }
        end
    }

    fn digits_end(&self, from: usize) -> usize {
        let mut end = from;
        while end < self.bytes.len() && self.bytes[end].is_ascii_digit() {
            end += 1;
        }
        end
    }

    fn foreign(&self, end: usize) -> SqlError {
        SqlError::ForeignParam {
            text: self.sql[self.pos..end].to_owned(),
            line: self.line_at(self.pos),
        }
    }

    /// Copies `pos..end` as statement content.
    fn copy_content(&mut self, end: usize) {
        self.text.push_str(&self.sql[self.pos..end]);
        self.has_content = true;
        self.pos = end;
    }

    /// Copies `pos..end` as comment text: kept, but it does not make a statement non-empty.
    fn copy_trivia(&mut self, end: usize) {
        self.text.push_str(&self.sql[self.pos..end]);
        self.pos = end;
    }

    /// A run of bytes with no lexical meaning here. Special bytes are ASCII, so every cut falls
    /// on a UTF-8 character boundary.
    fn ordinary(&mut self) {
        let start = self.pos;
        let mut end = start + 1;
        while end < self.bytes.len()
            && !matches!(
                self.bytes[end],
                b'\'' | b'"' | b'`' | b'[' | b'-' | b'/' | b'$' | b'?' | b'@' | b':' | b';' | b'#'
            )
        {
            end += 1;
        }
        let chunk = &self.sql[start..end];
        if !chunk.trim().is_empty() {
            self.has_content = true;
        }
        self.text.push_str(chunk);
        self.pos = end;
    }

    fn quoted(
        &mut self,
        open: u8,
        close: u8,
        backslash_escapes: bool,
        what: &'static str,
    ) -> Result<(), SqlError> {
        debug_assert_eq!(self.bytes[self.pos], open);
        let mut end = self.pos + 1;
        loop {
            match self.bytes.get(end) {
                None => {
                    return Err(SqlError::Unterminated {
                        what,
                        line: self.line_at(self.pos),
                    });
                }
                Some(b'\\') if backslash_escapes => end += 2,
                Some(&b) if b == close => {
                    // A doubled closing quote is an escaped quote (not for `[…]`, and not in
                    // BigQuery, where `'a''b'` is two literals side by side).
                    if open == close
                        && self.dialect != Dialect::BigQuery
                        && self.bytes.get(end + 1) == Some(&close)
                    {
                        end += 2;
                    } else {
                        end += 1;
                        break;
                    }
                }
                Some(_) => end += 1,
            }
        }
        self.copy_content(end.min(self.bytes.len()));
        Ok(())
    }

    fn block_comment(&mut self) -> Result<(), SqlError> {
        // PostgreSQL nests block comments; SQLite ends at the first `*/`.
        let nests = self.dialect == Dialect::Postgres;
        let mut depth = 0usize;
        let mut end = self.pos;
        loop {
            match (self.bytes.get(end), self.bytes.get(end + 1)) {
                (Some(b'/'), Some(b'*')) if depth == 0 || nests => {
                    depth += 1;
                    end += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    end += 2;
                    if depth == 0 {
                        break;
                    }
                }
                (Some(_), _) => end += 1,
                (None, _) => {
                    return Err(SqlError::Unterminated {
                        what: "block comment",
                        line: self.line_at(self.pos),
                    });
                }
            }
        }
        self.copy_trivia(end);
        Ok(())
    }

    /// PostgreSQL `$`: a positional parameter (refused), a dollar-quoted string, or part of an
    /// identifier.
    fn dollar(&mut self) -> Result<(), SqlError> {
        if self.follows_ident() {
            self.copy_content(self.pos + 1);
            return Ok(());
        }
        let after = self.pos + 1;
        if self.bytes.get(after).is_some_and(u8::is_ascii_digit) {
            let end = self.digits_end(after);
            return Err(self.foreign(end));
        }
        let tag_end = if self.bytes.get(after).is_some_and(|&b| is_ident_start(b)) {
            self.ident_end(after)
        } else {
            after
        };
        if self.bytes.get(tag_end) != Some(&b'$') {
            self.copy_content(after);
            return Ok(());
        }
        let tag = &self.sql[self.pos..=tag_end];
        let body = tag_end + 1;
        match self.sql[body..].find(tag) {
            Some(offset) => {
                self.copy_content(body + offset + tag.len());
                Ok(())
            }
            None => Err(SqlError::Unterminated {
                what: "dollar-quoted string",
                line: self.line_at(self.pos),
            }),
        }
    }

    fn colon(&mut self, next: Option<u8>) -> Result<(), SqlError> {
        match next {
            // `::type` cast or `:=`: never a parameter.
            Some(b':' | b'=') => self.copy_content(self.pos + 2),
            Some(b) if is_ident_start(b) => {
                let end = self.ident_end(self.pos + 1);
                let name = &self.sql[self.pos + 1..end];
                let param = Param::from_name(name).ok_or_else(|| SqlError::UnknownParam {
                    name: name.to_owned(),
                    line: self.line_at(self.pos),
                })?;
                self.found.push((param, self.pos..end));
                let number = match self.params.iter().position(|&p| p == param) {
                    Some(index) => index + 1,
                    None => {
                        self.params.push(param);
                        self.params.len()
                    }
                };
                match self.dialect {
                    Dialect::Sqlite => {
                        self.text.push('?');
                        self.text.push_str(&number.to_string());
                    }
                    Dialect::Postgres => {
                        self.text.push('$');
                        self.text.push_str(&number.to_string());
                    }
                    Dialect::BigQuery => {
                        self.text.push('@');
                        self.text.push_str(param.name());
                    }
                }
                self.has_content = true;
                self.pos = end;
            }
            _ => self.copy_content(self.pos + 1),
        }
        Ok(())
    }

    fn finish_statement(&mut self) {
        let text = std::mem::take(&mut self.text);
        let params = std::mem::take(&mut self.params);
        if std::mem::take(&mut self.has_content) {
            self.statements.push(Statement {
                text: text.trim().to_owned(),
                params,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Dialect, Param, SqlError, Statement, param_spans, prepare};

    fn texts(sql: &str, dialect: Dialect) -> Vec<String> {
        prepare(sql, dialect)
            .unwrap()
            .into_iter()
            .map(|s| s.text)
            .collect()
    }

    #[test]
    fn rewrites_per_dialect_in_order_of_first_appearance() {
        let sql = "DELETE FROM t WHERE d BETWEEN :start AND :end OR d = :start";
        assert_eq!(
            prepare(sql, Dialect::Sqlite).unwrap(),
            vec![Statement {
                text: "DELETE FROM t WHERE d BETWEEN ?1 AND ?2 OR d = ?1".into(),
                params: vec![Param::Start, Param::End],
            }]
        );
        assert_eq!(
            prepare(sql, Dialect::Postgres).unwrap(),
            vec![Statement {
                text: "DELETE FROM t WHERE d BETWEEN $1 AND $2 OR d = $1".into(),
                params: vec![Param::Start, Param::End],
            }]
        );
        let reversed = prepare("SELECT :end, :date, :start", Dialect::Sqlite).unwrap();
        assert_eq!(reversed[0].text, "SELECT ?1, ?2, ?3");
        assert_eq!(
            reversed[0].params,
            vec![Param::End, Param::Date, Param::Start]
        );
    }

    #[test]
    fn param_spans_point_at_each_use_outside_literals_and_comments() {
        let sql = "SELECT ':date' -- :date\n, :date; SELECT :start::date, :end";
        let spans = param_spans(sql, Dialect::Postgres).unwrap();
        let found: Vec<(Param, &str)> = spans
            .iter()
            .map(|(param, span)| (*param, &sql[span.clone()]))
            .collect();
        assert_eq!(
            found,
            vec![
                (Param::Date, ":date"),
                (Param::Start, ":start"),
                (Param::End, ":end")
            ]
        );
        assert_eq!(spans[0].1.start, sql.find(", :date").unwrap() + 2);
    }

    #[test]
    fn numbers_restart_in_each_statement() {
        let statements = prepare(
            "DELETE FROM t WHERE d = :end; INSERT INTO t SELECT :start, :end",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].text, "DELETE FROM t WHERE d = $1");
        assert_eq!(statements[0].params, vec![Param::End]);
        assert_eq!(statements[1].text, "INSERT INTO t SELECT $1, $2");
        assert_eq!(statements[1].params, vec![Param::Start, Param::End]);
    }

    #[test]
    fn table_of_lexical_cases() {
        // (input, dialect, expected statement texts)
        let cases: &[(&str, Dialect, &[&str])] = &[
            // Literals hold `;` and `:start` untouched; '' is an escaped quote.
            (
                "SELECT 'a;b:start', 'it''s; :end' FROM t WHERE d = :date",
                Dialect::Sqlite,
                &["SELECT 'a;b:start', 'it''s; :end' FROM t WHERE d = ?1"],
            ),
            // Quoted identifiers too, with "" escapes.
            (
                r#"SELECT "we""ird;:start" FROM t; SELECT 1"#,
                Dialect::Postgres,
                &[r#"SELECT "we""ird;:start" FROM t"#, "SELECT 1"],
            ),
            // Casts and := are not parameters; a cast right after a parameter stays a cast.
            (
                "SELECT x::date, :start::date, y := 1",
                Dialect::Postgres,
                &["SELECT x::date, $1::date, y := 1"],
            ),
            // Line and block comments keep their text and hide `;` and `:name`.
            (
                "-- ; :foo\nSELECT 1 /* ; :bar */ + 1; -- trailing ; :baz",
                Dialect::Sqlite,
                &["-- ; :foo\nSELECT 1 /* ; :bar */ + 1"],
            ),
            // PostgreSQL nests block comments.
            (
                "SELECT /* a /* b; */ c; */ 1",
                Dialect::Postgres,
                &["SELECT /* a /* b; */ c; */ 1"],
            ),
            // Empty statements and comment-only statements are dropped.
            (
                " ; ;\n-- nothing\n;/* x */; SELECT 1;;",
                Dialect::Sqlite,
                &["SELECT 1"],
            ),
            // Dollar quotes (PostgreSQL) hide `;` and `:name`; `$` inside identifiers is text.
            (
                "DO $body$ BEGIN PERFORM 1; :x; END $body$; SELECT a$b FROM t; SELECT $$;$$",
                Dialect::Postgres,
                &[
                    "DO $body$ BEGIN PERFORM 1; :x; END $body$",
                    "SELECT a$b FROM t",
                    "SELECT $$;$$",
                ],
            ),
            // E'' strings take backslash escapes.
            (
                r"SELECT E'a\';:start', 'b\'; SELECT 2",
                Dialect::Postgres,
                &[r"SELECT E'a\';:start', 'b\'", "SELECT 2"],
            ),
            // SQLite backtick and bracket identifiers.
            (
                "SELECT `a;:b`, [c;:d] FROM t",
                Dialect::Sqlite,
                &["SELECT `a;:b`, [c;:d] FROM t"],
            ),
            // Non-ASCII text survives byte-wise scanning.
            (
                "SELECT 'ünïcödé;' AS \"naïve\", 'x' -- ü;\n; SELECT :end",
                Dialect::Sqlite,
                &["SELECT 'ünïcödé;' AS \"naïve\", 'x' -- ü;", "SELECT ?1"],
            ),
            // A lone colon and a colon before a digit are left alone.
            (
                "SELECT '12:30', a[1:2], 3 : 4",
                Dialect::Postgres,
                &["SELECT '12:30', a[1:2], 3 : 4"],
            ),
        ];
        for (sql, dialect, expected) in cases {
            assert_eq!(&texts(sql, *dialect), expected, "input: {sql}");
        }
    }

    #[test]
    fn bigquery_binds_by_name_and_knows_its_lexicon() {
        let statements = prepare(
            "DELETE FROM `p.d.t` WHERE d BETWEEN :start AND :end OR d = :start; \
             SELECT \"x;:date\", 'it\\'s :end', '''a ; :start ''', \"\"\"b\"\"\", @@dataset_id # c; :x\n\
             FROM `we\\`ird;:y` WHERE e = :date",
            Dialect::BigQuery,
        )
        .unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(
            statements[0],
            Statement {
                text: "DELETE FROM `p.d.t` WHERE d BETWEEN @start AND @end OR d = @start".into(),
                params: vec![Param::Start, Param::End],
            }
        );
        assert_eq!(
            statements[1].text,
            "SELECT \"x;:date\", 'it\\'s :end', '''a ; :start ''', \"\"\"b\"\"\", @@dataset_id # c; :x\n\
             FROM `we\\`ird;:y` WHERE e = @date"
        );
        assert_eq!(statements[1].params, vec![Param::Date]);
        for (sql, text) in [
            ("SELECT ?", "?"),
            ("SELECT @day", "@day"),
            ("SELECT @start", "@start"),
        ] {
            assert_eq!(
                prepare(sql, Dialect::BigQuery).unwrap_err(),
                SqlError::ForeignParam {
                    text: text.into(),
                    line: 1
                },
                "input: {sql}"
            );
        }
        assert!(matches!(
            prepare("SELECT '''open", Dialect::BigQuery),
            Err(SqlError::Unterminated {
                what: "string literal",
                ..
            })
        ));
        // `#` is an ordinary character elsewhere.
        assert_eq!(texts("SELECT 1 # 2", Dialect::Postgres), ["SELECT 1 # 2"]);
    }

    #[test]
    fn unknown_parameter_is_named() {
        let error = prepare("SELECT 1;\nSELECT :foo", Dialect::Sqlite).unwrap_err();
        assert_eq!(
            error,
            SqlError::UnknownParam {
                name: "foo".into(),
                line: 2
            }
        );
        assert!(error.to_string().contains("`:foo`"), "{error}");
        // A longer name that starts like a known one is unknown too.
        let error = prepare("SELECT :start_date", Dialect::Postgres).unwrap_err();
        assert!(matches!(error, SqlError::UnknownParam { ref name, .. } if name == "start_date"));
    }

    #[test]
    fn foreign_placeholders_are_refused() {
        for (sql, dialect, text) in [
            ("SELECT ?", Dialect::Sqlite, "?"),
            ("SELECT ?12", Dialect::Sqlite, "?12"),
            ("SELECT @day", Dialect::Sqlite, "@day"),
            ("SELECT $day", Dialect::Sqlite, "$day"),
            ("SELECT $1", Dialect::Postgres, "$1"),
        ] {
            let error = prepare(sql, dialect).unwrap_err();
            assert_eq!(
                error,
                SqlError::ForeignParam {
                    text: text.into(),
                    line: 1
                },
                "input: {sql}"
            );
        }
        // PostgreSQL's `?` is the jsonb operator, not a placeholder.
        assert_eq!(
            texts("SELECT j ? 'k' FROM t", Dialect::Postgres),
            ["SELECT j ? 'k' FROM t"]
        );
    }

    #[test]
    fn unterminated_constructs_are_errors() {
        for (sql, dialect, what) in [
            ("SELECT 'abc", Dialect::Sqlite, "string literal"),
            ("SELECT \"abc", Dialect::Postgres, "quoted identifier"),
            ("SELECT 1 /* abc", Dialect::Sqlite, "block comment"),
            ("SELECT /* /* */ 1", Dialect::Postgres, "block comment"),
            (
                "\nSELECT $q$ abc",
                Dialect::Postgres,
                "dollar-quoted string",
            ),
        ] {
            match prepare(sql, dialect) {
                Err(SqlError::Unterminated { what: got, .. }) => {
                    assert_eq!(got, what, "input: {sql}");
                }
                other => panic!("input {sql}: expected unterminated {what}, got {other:?}"),
            }
        }
        // SQLite block comments do not nest, so this one is complete.
        assert_eq!(
            texts("SELECT /* /* */ 1", Dialect::Sqlite),
            ["SELECT /* /* */ 1"]
        );
    }

    #[test]
    fn empty_input_has_no_statements() {
        assert!(prepare("", Dialect::Sqlite).unwrap().is_empty());
        assert!(
            prepare("  ;\n-- c\n", Dialect::Postgres)
                .unwrap()
                .is_empty()
        );
    }
}
