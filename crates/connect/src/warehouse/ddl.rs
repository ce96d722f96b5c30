//! What a pipeline's own SQL creates, so that preparing a statement that uses a table before
//! the pipeline has created it is not reported as a missing table.
//!
//! Preparing reads the warehouse's schema as it is now. A runner that creates a table (or a
//! column) and a later statement or phase that reads it cannot both be prepared before the
//! first one runs, and executing the DDL to find out would take write locks on the user's
//! warehouse in a command that only checks. So the texts are scanned for `CREATE TABLE`,
//! `CREATE VIEW`, `ALTER TABLE … RENAME TO`, `ALTER TABLE … ADD COLUMN` and
//! `ALTER TABLE … RENAME COLUMN … TO`; a statement that fails to prepare only because one of
//! those names does not exist yet is left to the run, and so is a `CREATE` of a name that an
//! earlier statement of the same script drops. Every other error is reported.

use std::collections::BTreeSet;

use super::DatabaseError;
use crate::named::{self, Dialect};

/// Tables, views and columns that a pipeline's SQL creates, by lowercase name (a qualified
/// name is kept with its schema and by its last part).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaChanges {
    tables: BTreeSet<String>,
    columns: BTreeSet<String>,
}

impl SchemaChanges {
    /// Adds what the statements of one SQL text create. A text that does not split into
    /// statements adds nothing (preparing it reports why).
    pub fn scan(&mut self, sql: &str, dialect: Dialect) {
        let Ok(statements) = named::prepare(sql, dialect) else {
            return;
        };
        for statement in &statements {
            match Ddl::of(&statement.text) {
                Some(Ddl::CreateTable(name)) => self.add_table(name),
                Some(Ddl::AddColumn(name)) => {
                    self.columns.insert(name);
                }
                Some(Ddl::Drop(_)) | None => {}
            }
        }
    }

    fn add_table(&mut self, name: String) {
        if let Some((_, last)) = name.rsplit_once('.') {
            self.tables.insert(last.to_owned());
        }
        self.tables.insert(name);
    }

    fn has_table(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.tables.contains(&name) || self.tables.contains(last_part(&name))
    }

    fn has_column(&self, name: &str) -> bool {
        self.columns.contains(last_part(&name.to_lowercase()))
    }

    /// Whether `error`, from preparing statement `index` of `statements`, only says that
    /// something the pipeline creates does not exist yet (see the module comment).
    pub(super) fn explains(
        &self,
        error: &DatabaseError,
        statements: &[&str],
        index: usize,
    ) -> bool {
        match Missing::of(error) {
            Some(Missing::Table(name)) => self.has_table(&name),
            Some(Missing::Column(name)) => self.has_column(&name),
            Some(Missing::Exists(name)) => {
                // SQLite names the table without its schema.
                let name = last_part(&name.to_lowercase()).to_owned();
                statements[..index].iter().any(|earlier| {
                    matches!(Ddl::of(earlier), Some(Ddl::Drop(dropped)) if last_part(&dropped) == name)
                })
            }
            None => false,
        }
    }
}

/// The part of a statement that changes the schema, as far as [`SchemaChanges`] tracks it.
#[derive(Debug, PartialEq, Eq)]
enum Ddl {
    /// `CREATE TABLE`/`VIEW` or `ALTER TABLE … RENAME TO`: the new name.
    CreateTable(String),
    /// `ALTER TABLE … ADD [COLUMN]` or `RENAME [COLUMN] … TO`: the new column.
    AddColumn(String),
    /// `DROP TABLE`/`VIEW`: the name.
    Drop(String),
}

impl Ddl {
    fn of(statement: &str) -> Option<Self> {
        let words = words(statement);
        let mut at = Cursor {
            words: &words,
            at: 0,
        };
        if at.keyword("create") {
            at.keyword("or");
            at.keyword("replace");
            let _ = at.any_keyword(&["temp", "temporary", "unlogged"]);
            at.keyword("materialized");
            if !at.any_keyword(&["table", "view"]) {
                return None;
            }
            at.if_exists(&["if", "not", "exists"]);
            return at.name().map(Self::CreateTable);
        }
        if at.keyword("drop") {
            if !at.any_keyword(&["table", "view"]) {
                return None;
            }
            at.if_exists(&["if", "exists"]);
            return at.name().map(Self::Drop);
        }
        if at.keyword("alter") && at.keyword("table") {
            at.if_exists(&["if", "exists"]);
            at.keyword("only");
            at.name()?;
            if at.keyword("add") {
                at.keyword("column");
                at.if_exists(&["if", "not", "exists"]);
                return at.name().map(Self::AddColumn);
            }
            if at.keyword("rename") {
                if at.keyword("to") {
                    return at.name().map(Self::CreateTable);
                }
                at.keyword("column");
                at.name()?;
                if at.keyword("to") {
                    return at.name().map(Self::AddColumn);
                }
            }
        }
        None
    }
}

/// A name the database says is missing, or already there.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    Table(String),
    Column(String),
    Exists(String),
}

impl Missing {
    fn of(error: &DatabaseError) -> Option<Self> {
        match error {
            DatabaseError::Sqlite(
                rusqlite::Error::SqliteFailure(_, Some(message))
                | rusqlite::Error::SqlInputError { msg: message, .. },
            ) => {
                let after = |prefix: &str| message.strip_prefix(prefix).map(str::trim);
                if let Some(name) = after("no such table:").or_else(|| after("no such view:")) {
                    return Some(Self::Table(name.to_owned()));
                }
                if let Some(name) = after("no such column:") {
                    return Some(Self::Column(name.to_owned()));
                }
                if let Some((_, name)) = message.split_once(" has no column named ") {
                    return Some(Self::Column(name.trim().to_owned()));
                }
                for kind in ["table ", "view "] {
                    if let Some(name) = message
                        .strip_prefix(kind)
                        .and_then(|rest| rest.strip_suffix(" already exists"))
                    {
                        return Some(Self::Exists(unquote(name)));
                    }
                }
                None
            }
            DatabaseError::Postgres(sqlx::Error::Database(db)) => {
                let quoted = || db.message().split('"').nth(1).map(str::to_owned);
                match db.code()?.as_ref() {
                    "42P01" => quoted().map(Self::Table),
                    "42703" => quoted().map(Self::Column),
                    "42P07" => quoted().map(Self::Exists),
                    _ => None,
                }
            }
            DatabaseError::BigQuery(error) => {
                let message = error.message.as_str();
                // BigQuery names tables `project:dataset.table` or `project.dataset.table`.
                let table = |rest: &str| {
                    let name = rest.split_whitespace().next().unwrap_or("");
                    name.rsplit_once(':')
                        .map_or(name, |(_, name)| name)
                        .to_owned()
                };
                if let Some(rest) = ["Not found: Table ", "Not found: View "]
                    .iter()
                    .find_map(|prefix| message.strip_prefix(prefix))
                {
                    return Some(Self::Table(table(rest)));
                }
                if let Some(rest) = message.strip_prefix("Already Exists: Table ") {
                    return Some(Self::Exists(table(rest)));
                }
                if let Some(rest) = message.strip_prefix("Unrecognized name: ") {
                    let name = rest.split_whitespace().next().unwrap_or("");
                    return Some(Self::Column(name.trim_end_matches(';').to_owned()));
                }
                // The emulator (DuckDB) words it its own way.
                message
                    .split_once("Referenced column \"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| Self::Column(name.to_owned()))
            }
            _ => None,
        }
    }
}

/// `b` of `a.b`.
fn last_part(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(_, last)| last)
}

fn unquote(name: &str) -> String {
    name.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '\''))
        .to_owned()
}

/// A statement's words and dots, lowercased, without comments, literals or placeholders;
/// quoted identifiers lose their quotes.
fn words(statement: &str) -> Vec<String> {
    let chars: Vec<char> = statement.chars().collect();
    let mut words = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let next = chars.get(index + 1).copied();
        if c.is_alphabetic() || c == '_' {
            let start = index;
            while index < chars.len()
                && (chars[index].is_alphanumeric() || matches!(chars[index], '_' | '$'))
            {
                index += 1;
            }
            words.push(
                chars[start..index]
                    .iter()
                    .collect::<String>()
                    .to_lowercase(),
            );
        } else if matches!(c, '"' | '`' | '[') {
            let close = if c == '[' { ']' } else { c };
            let start = index + 1;
            index = start;
            while index < chars.len() && chars[index] != close {
                index += 1;
            }
            words.push(
                chars[start..index]
                    .iter()
                    .collect::<String>()
                    .to_lowercase(),
            );
            index += 1;
        } else if c == '\'' {
            index += 1;
            while index < chars.len() && chars[index] != '\'' {
                index += 1;
            }
            words.push("'".to_owned());
            index += 1;
        } else if c == '-' && next == Some('-') {
            while index < chars.len() && chars[index] != '\n' {
                index += 1;
            }
        } else if c == '/' && next == Some('*') {
            index += 2;
            while index + 1 < chars.len() && !(chars[index] == '*' && chars[index + 1] == '/') {
                index += 1;
            }
            index += 2;
        } else if c == '.' {
            words.push(".".to_owned());
            index += 1;
        } else if c.is_whitespace() {
            index += 1;
        } else {
            words.push(c.to_string());
            index += 1;
        }
    }
    words
}

struct Cursor<'w> {
    words: &'w [String],
    at: usize,
}

impl Cursor<'_> {
    fn keyword(&mut self, keyword: &str) -> bool {
        let found = self.words.get(self.at).is_some_and(|word| word == keyword);
        if found {
            self.at += 1;
        }
        found
    }

    fn any_keyword(&mut self, keywords: &[&str]) -> bool {
        keywords.iter().any(|keyword| self.keyword(keyword))
    }

    /// Skips `IF [NOT] EXISTS` when all of `words` follow.
    fn if_exists(&mut self, words: &[&str]) {
        let ahead = self.words.get(self.at..self.at + words.len());
        if ahead.is_some_and(|ahead| ahead.iter().zip(words).all(|(a, b)| a == b)) {
            self.at += words.len();
        }
    }

    /// A name, qualified or not: `a`, `a.b`.
    fn name(&mut self) -> Option<String> {
        let is_name = |word: &String| {
            word.chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        };
        let first = self.words.get(self.at).filter(|word| is_name(word))?;
        let mut name = first.clone();
        self.at += 1;
        while self.words.get(self.at).is_some_and(|word| word == ".")
            && let Some(part) = self.words.get(self.at + 1).filter(|word| is_name(word))
        {
            name.push('.');
            name.push_str(part);
            self.at += 2;
        }
        Some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::{Ddl, Dialect, SchemaChanges, words};

    #[test]
    fn statements_that_change_the_schema() {
        let cases = [
            (
                "CREATE TABLE t (d TEXT)",
                Some(Ddl::CreateTable("t".into())),
            ),
            (
                "create temp table if not exists \"Raw\".Events AS SELECT 1",
                Some(Ddl::CreateTable("raw.events".into())),
            ),
            (
                "CREATE OR REPLACE VIEW v AS SELECT 1",
                Some(Ddl::CreateTable("v".into())),
            ),
            (
                "CREATE MATERIALIZED VIEW IF NOT EXISTS s.m AS SELECT 1",
                Some(Ddl::CreateTable("s.m".into())),
            ),
            ("DROP TABLE IF EXISTS t", Some(Ddl::Drop("t".into()))),
            (
                "ALTER TABLE t RENAME TO u",
                Some(Ddl::CreateTable("u".into())),
            ),
            (
                "ALTER TABLE IF EXISTS ONLY t ADD COLUMN IF NOT EXISTS c INT",
                Some(Ddl::AddColumn("c".into())),
            ),
            ("ALTER TABLE t ADD c INT", Some(Ddl::AddColumn("c".into()))),
            (
                "ALTER TABLE t RENAME COLUMN a TO b",
                Some(Ddl::AddColumn("b".into())),
            ),
            ("CREATE INDEX i ON t (d)", None),
            (
                "-- CREATE TABLE x\nINSERT INTO t VALUES ('CREATE TABLE y')",
                None,
            ),
            ("SELECT 1", None),
        ];
        for (statement, expected) in cases {
            assert_eq!(Ddl::of(statement), expected, "{statement}");
        }
    }

    #[test]
    fn words_skip_comments_and_literals() {
        assert_eq!(
            words("a /* b */ 'c d' -- e\n\"F\".g"),
            ["a", "'", "f", ".", "g"]
        );
    }

    #[test]
    fn created_names_match_qualified_or_not() {
        let mut changes = SchemaChanges::default();
        changes.scan(
            "CREATE TABLE analytics.summary (d TEXT); ALTER TABLE x ADD n INT",
            Dialect::Sqlite,
        );
        assert!(changes.has_table("analytics.summary"));
        assert!(changes.has_table("Summary"));
        assert!(!changes.has_table("analytics.other"));
        assert!(changes.has_column("x.n"));
        assert!(!changes.has_column("m"));
    }
}
