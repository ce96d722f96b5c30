//! The PostgreSQL side of the warehouse, on sqlx.
//!
//! Every call takes a pooled connection and runs under a client-side deadline that lies a
//! margin past the server's `statement_timeout`, so the server normally ends a slow statement
//! first and leaves the connection clean.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection as _, Executor as _, Row, SqlSafeStr as _,
    Transaction, TypeInfo, ValueRef,
};
use tokio::time::Instant;

use super::{
    BoundStatement, Cell, DatabaseError, Finish, GatedScript, Query, Script, WarehouseError,
    redact, snippet, statement_timeout_ms,
};

/// Connects to `url` once (to report a refused connection or a bad password as it is), then
/// returns a lazy pool whose connections get `statement_timeout = timeout`.
pub(super) async fn connect(url: &str, timeout: Duration) -> Result<PgPool, WarehouseError> {
    let redacted = redact(url);
    let options = PgConnectOptions::from_str(url).map_err(|source| WarehouseError::InvalidUrl {
        url: redacted.clone(),
        reason: source.to_string(),
    })?;
    let options = options.options([("statement_timeout", statement_timeout_ms(timeout))]);
    // One direct connection first: the pool retries failed connects until its acquire
    // timeout and then reports only `PoolTimedOut`, losing "connection refused" or
    // "password authentication failed".
    let first = tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| WarehouseError::ConnectTimeout {
            url: redacted.clone(),
            after: timeout,
        })?
        .map_err(|source| WarehouseError::Connect {
            url: redacted,
            source: source.into(),
        })?;
    // Closing politely is best effort; the connection is dropped either way.
    let _ = first.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(timeout)
        .connect_lazy_with(options))
}

pub(super) async fn ping(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), WarehouseError> {
    const PING: &str = "SELECT 1";
    let mut connection = acquire(pool, deadline, timeout, PING).await?;
    let outcome = tokio::time::timeout_at(deadline, async {
        sqlx::query(PING)
            .execute(&mut *connection)
            .await
            .map(drop)
            .map_err(|source| WarehouseError::Query {
                query: PING.to_owned(),
                source: source.into(),
            })
    })
    .await;
    settle(connection, outcome, timeout, PING)
}

/// The first column of the first row of a query without parameters, if there is a row.
pub(super) async fn first_cell(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
    query: &Query,
) -> Result<Option<Cell>, WarehouseError> {
    let mut connection = acquire(pool, deadline, timeout, &query.sql).await?;
    let outcome = tokio::time::timeout_at(deadline, async {
        let row = sqlx::query(AssertSqlSafe(query.statement.text.as_str()))
            .fetch_optional(&mut *connection)
            .await
            .map_err(|source| query.error(source.into()))?;
        match row {
            None => Ok(None),
            Some(row) if row.is_empty() => Err(WarehouseError::Columns {
                found: 0,
                expected: "1",
                query: snippet(&query.sql),
            }),
            Some(row) => pg_cell(&row, 0)
                .map(Some)
                .map_err(|source| query.error(source.into())),
        }
    })
    .await;
    settle(connection, outcome, timeout, &query.sql)
}

/// Runs a one-statement query and decodes the first `columns` columns of every row.
pub(super) async fn fetch_cells(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
    query: &Query,
    columns: usize,
) -> Result<Vec<Vec<Cell>>, WarehouseError> {
    let mut connection = acquire(pool, deadline, timeout, &query.sql).await?;
    let outcome =
        tokio::time::timeout_at(deadline, fetch_on(&mut connection, query, columns)).await;
    settle(connection, outcome, timeout, &query.sql)
}

/// See [`super::Warehouse::execute_script_gated`]: the script, then the probes in its
/// transaction, then `finish` (given the rows the script affected and each probe's counts)
/// decides between commit and rollback.
pub(super) async fn transact<R>(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
    gated: &GatedScript,
    finish: impl FnOnce(u64, Vec<BTreeMap<NaiveDate, i64>>) -> Finish<R>,
) -> Result<R, WarehouseError> {
    let script = &gated.script;
    let mut connection = acquire(pool, deadline, timeout, &script.sql).await?;
    let outcome = tokio::time::timeout_at(deadline, async {
        let mut transaction = begin(&mut connection, timeout, script).await?;
        let checked = async {
            let affected = run_statements(&mut transaction, script).await?;
            let mut observed = Vec::with_capacity(gated.probes.len());
            for probe in &gated.probes {
                let rows = fetch_on(&mut transaction, probe, 2).await?;
                observed.push(gated.tally(probe, rows)?);
            }
            Ok(finish(affected, observed))
        }
        .await;
        match checked {
            Ok(Finish::Commit(value)) => {
                transaction
                    .commit()
                    .await
                    .map_err(|source| script.transaction_error(source.into()))?;
                Ok(value)
            }
            Ok(Finish::RollBack(value)) => {
                // Nothing commits either way: a failed rollback only costs the connection.
                let _ = transaction.rollback().await;
                Ok(value)
            }
            Err(error) => {
                // A failed rollback leaves the connection to sqlx, which closes it rather
                // than reuse it.
                let _ = transaction.rollback().await;
                Err(error)
            }
        }
    })
    .await;
    settle(connection, outcome, timeout, &script.sql)
}

/// Parses and describes each of `statements` (text, parameter count) without running it, its
/// parameters typed `DATE` as [`bind`] sends them; the outcome of each, in order.
pub(super) async fn prepare_each(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
    sql: &str,
    statements: &[(String, usize)],
) -> Result<Vec<Result<(), DatabaseError>>, WarehouseError> {
    let mut connection = acquire(pool, deadline, timeout, sql).await?;
    let outcome = tokio::time::timeout_at(deadline, async {
        let mut outcomes = Vec::with_capacity(statements.len());
        for (text, params) in statements {
            let types = vec![<NaiveDate as sqlx::Type<Postgres>>::type_info(); *params];
            let prepared = (&mut *connection)
                .prepare_with(AssertSqlSafe(text.clone()).into_sql_str(), &types)
                .await;
            match prepared {
                Ok(_) => outcomes.push(Ok(())),
                Err(source) => {
                    let source = DatabaseError::from(source);
                    if source.is_transient() {
                        return Err(WarehouseError::query(text, source));
                    }
                    outcomes.push(Err(source));
                }
            }
        }
        Ok(outcomes)
    })
    .await;
    settle(connection, outcome, timeout, sql)
}

async fn acquire(
    pool: &PgPool,
    deadline: Instant,
    timeout: Duration,
    sql: &str,
) -> Result<PoolConnection<Postgres>, WarehouseError> {
    tokio::time::timeout_at(deadline, pool.acquire())
        .await
        .map_err(|_| WarehouseError::timed_out(sql, timeout))?
        .map_err(|source| WarehouseError::query(sql, source.into()))
}

/// Begins the script's transaction, with `statement_timeout` set to the script's timeout.
async fn begin<'c>(
    connection: &'c mut PgConnection,
    timeout: Duration,
    script: &Script,
) -> Result<Transaction<'c, Postgres>, WarehouseError> {
    let error = |source: sqlx::Error| script.transaction_error(source.into());
    let mut transaction = connection.begin().await.map_err(error)?;
    // An integer we format ourselves: no user text reaches this statement.
    let set_timeout = format!(
        "SET LOCAL statement_timeout = {}",
        statement_timeout_ms(timeout)
    );
    sqlx::query(AssertSqlSafe(set_timeout))
        .execute(&mut *transaction)
        .await
        .map_err(error)?;
    Ok(transaction)
}

/// Runs the script's statements in order; the caller rolls back on error.
async fn run_statements(
    connection: &mut PgConnection,
    script: &Script,
) -> Result<u64, WarehouseError> {
    let mut affected = 0u64;
    for (index, statement) in script.statements.iter().enumerate() {
        let result = bind(statement)
            .execute(&mut *connection)
            .await
            .map_err(|source| script.statement_error(index, source.into()))?;
        affected += result.rows_affected();
    }
    Ok(affected)
}

async fn fetch_on(
    connection: &mut PgConnection,
    query: &Query,
    columns: usize,
) -> Result<Vec<Vec<Cell>>, WarehouseError> {
    let rows = bind(&query.statement)
        .fetch_all(connection)
        .await
        .map_err(|source| query.error(source.into()))?;
    let mut decoded = Vec::with_capacity(rows.len());
    for row in rows {
        query.check_width(columns, row.len())?;
        let cells = (0..columns)
            .map(|index| pg_cell(&row, index))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| query.error(source.into()))?;
        decoded.push(cells);
    }
    Ok(decoded)
}

fn bind(
    statement: &BoundStatement,
) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(AssertSqlSafe(statement.text.as_str()));
    for value in &statement.values {
        query = query.bind(*value);
    }
    query
}

/// Ends a call: its result, or on timeout a [`WarehouseError::Timeout`] after throwing the
/// connection away. A connection whose query future was dropped midway is in an unknown state,
/// and sqlx's return-to-pool check of it can wait forever (and `Pool::close` with it).
fn settle<T>(
    connection: PoolConnection<Postgres>,
    outcome: Result<Result<T, WarehouseError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    sql: &str,
) -> Result<T, WarehouseError> {
    match outcome {
        Ok(result) => result,
        Err(_) => {
            drop(connection.detach());
            Err(WarehouseError::timed_out(sql, timeout))
        }
    }
}

fn pg_cell(row: &PgRow, index: usize) -> Result<Cell, sqlx::Error> {
    let raw = row.try_get_raw(index)?;
    if raw.is_null() {
        return Ok(Cell::Null);
    }
    let type_name = raw.type_info().name().to_owned();
    if type_name == "NUMERIC" {
        let bytes = raw.as_bytes().map_err(sqlx::Error::Decode)?;
        return Ok(decode_pg_numeric(bytes));
    }
    Ok(match type_name.as_str() {
        "INT2" => Cell::Int(row.try_get_unchecked::<i16, _>(index)?.into()),
        "INT4" => Cell::Int(row.try_get_unchecked::<i32, _>(index)?.into()),
        "INT8" => Cell::Int(row.try_get_unchecked::<i64, _>(index)?),
        "FLOAT4" => Cell::Real(row.try_get_unchecked::<f32, _>(index)?.into()),
        "FLOAT8" => Cell::Real(row.try_get_unchecked::<f64, _>(index)?),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "UNKNOWN" => {
            Cell::Text(row.try_get_unchecked::<String, _>(index)?)
        }
        "DATE" => Cell::Date(row.try_get_unchecked::<NaiveDate, _>(index)?),
        "TIMESTAMP" => Cell::Date(row.try_get_unchecked::<NaiveDateTime, _>(index)?.date()),
        "TIMESTAMPTZ" => Cell::Date(
            row.try_get_unchecked::<DateTime<Utc>, _>(index)?
                .date_naive(),
        ),
        _ => Cell::Other(type_name),
    })
}

/// Decodes PostgreSQL's binary NUMERIC: `ndigits, weight, sign, dscale` (each 16 bits) and then
/// `ndigits` base-10000 digits, most significant first. sqlx reads NUMERIC only with its
/// bigdecimal/rust_decimal features, which would be a dependency for this one conversion.
fn decode_pg_numeric(bytes: &[u8]) -> Cell {
    let word = |index: usize| -> Option<u16> {
        let at = index * 2;
        Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
    };
    let (Some(ndigits), Some(weight), Some(sign)) = (word(0), word(1), word(2)) else {
        return Cell::Other("NUMERIC".into());
    };
    let weight = i32::from(weight.cast_signed());
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Cell::Numeric("NaN".into()),
        0xD000 => return Cell::Numeric("Infinity".into()),
        0xF000 => return Cell::Numeric("-Infinity".into()),
        _ => return Cell::Other("NUMERIC".into()),
    };
    let mut digits = Vec::with_capacity(usize::from(ndigits));
    for index in 0..usize::from(ndigits) {
        match word(4 + index) {
            Some(digit) if digit < 10_000 => digits.push(i128::from(digit)),
            _ => return Cell::Other("NUMERIC".into()),
        }
    }
    // digits[i] has the place value 10000^(weight - i).
    let mut integer: Option<i128> = Some(0);
    let mut is_integral = true;
    let mut rendered = String::new();
    for (index, digit) in digits.iter().enumerate() {
        let exponent = weight - i32::try_from(index).unwrap_or(i32::MAX);
        if exponent < 0 {
            is_integral &= *digit == 0;
            continue;
        }
        let place = u32::try_from(exponent)
            .ok()
            .and_then(|exponent| 10_000i128.checked_pow(exponent));
        integer = match (integer, place) {
            (Some(total), Some(place)) => digit
                .checked_mul(place)
                .and_then(|value| total.checked_add(value)),
            _ => None,
        };
    }
    if is_integral
        && let Some(value) = integer
            .map(|value| if negative { -value } else { value })
            .and_then(|value| i64::try_from(value).ok())
    {
        return Cell::Int(value);
    }
    // Render for the error message: integer part, then the fraction.
    if negative {
        rendered.push('-');
    }
    let mut integer_part = String::new();
    for exponent in (0..=weight.max(0)).rev() {
        let index = weight - exponent;
        let digit = usize::try_from(index)
            .ok()
            .and_then(|index| digits.get(index))
            .copied()
            .unwrap_or(0);
        if integer_part.is_empty() {
            if digit != 0 || exponent == 0 {
                integer_part = digit.to_string();
            }
        } else {
            integer_part.push_str(&format!("{digit:04}"));
        }
    }
    rendered.push_str(&integer_part);
    let fraction: String = digits
        .iter()
        .enumerate()
        .filter(|(index, _)| weight - i32::try_from(*index).unwrap_or(i32::MAX) < 0)
        .map(|(_, digit)| format!("{digit:04}"))
        .collect();
    let leading_zeros = usize::try_from(-weight - 1).unwrap_or(0);
    if !fraction.is_empty() {
        rendered.push('.');
        rendered.push_str(&"0000".repeat(leading_zeros));
        rendered.push_str(fraction.trim_end_matches('0'));
    }
    Cell::Numeric(rendered)
}

#[cfg(test)]
mod tests {
    use super::{Cell, decode_pg_numeric};

    fn numeric(ndigits: u16, weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for word in [ndigits, weight.cast_unsigned(), sign, 0] {
            bytes.extend_from_slice(&word.to_be_bytes());
        }
        for digit in digits {
            bytes.extend_from_slice(&digit.to_be_bytes());
        }
        bytes
    }

    #[test]
    fn numeric_integers_decode() {
        assert_eq!(decode_pg_numeric(&numeric(0, 0, 0, &[])), Cell::Int(0));
        assert_eq!(decode_pg_numeric(&numeric(1, 0, 0, &[42])), Cell::Int(42));
        // 1_2345_6789 = [1, 2345, 6789] with weight 2.
        assert_eq!(
            decode_pg_numeric(&numeric(3, 2, 0, &[1, 2345, 6789])),
            Cell::Int(123_456_789)
        );
        // 20000 = [2] with weight 1 (trailing zero groups are dropped on the wire).
        assert_eq!(
            decode_pg_numeric(&numeric(1, 1, 0, &[2])),
            Cell::Int(20_000)
        );
        assert_eq!(
            decode_pg_numeric(&numeric(1, 0, 0x4000, &[7])),
            Cell::Int(-7)
        );
        // 5.0000 with an explicit zero fraction group.
        assert_eq!(decode_pg_numeric(&numeric(2, 0, 0, &[5, 0])), Cell::Int(5));
    }

    #[test]
    fn numeric_non_integers_render() {
        assert_eq!(
            decode_pg_numeric(&numeric(2, 0, 0, &[1, 5000])),
            Cell::Numeric("1.5".into())
        );
        assert_eq!(
            decode_pg_numeric(&numeric(1, -2, 0, &[25])),
            Cell::Numeric("0.00000025".into())
        );
        assert_eq!(
            decode_pg_numeric(&numeric(0, 0, 0xC000, &[])),
            Cell::Numeric("NaN".into())
        );
        assert_eq!(decode_pg_numeric(&[0, 1]), Cell::Other("NUMERIC".into()));
    }
}
