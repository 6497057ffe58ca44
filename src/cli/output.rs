//! How the commands against the Admin API print: [`say!`], the `--output` choice, tables,
//! revisions and times.

use anyhow::Context;
use clap::ValueEnum;
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// `println!` that ends the process quietly when stdout is closed (`rolegate keys list | head`)
/// instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}
pub(crate) use say;

/// `--output` of every command that prints what a server said: `text` for people (lines, or a
/// table for lists), `json` for scripts. `table`, the name the Admin commands once used for
/// `text`, is still accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    #[default]
    #[value(alias = "table")]
    Text,
    Json,
}

/// Prints rows under a header, columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// An object the Admin commands show: a row of a table, or a JSON object for scripts.
pub(crate) trait Shown {
    /// The table's header, a name per column.
    const HEADER: &'static [&'static str];
    /// The object as a table row, a cell per column.
    fn row(&self) -> Vec<String>;
    /// The object as scripts read it.
    fn json(&self) -> Value;
}

/// Prints objects as `--output` asks: a table, or a JSON array.
pub(crate) fn print_all<T: Shown>(output: Output, items: &[T]) {
    if output == Output::Json {
        say!("{}", Value::Array(items.iter().map(T::json).collect()));
    } else {
        table(T::HEADER, items.iter().map(T::row).collect());
    }
}

/// Prints the revision a write made: `what (revision N)`, or `{"revision": N}`.
pub(crate) fn print_revision(output: Output, what: &str, revision: u64) {
    if output == Output::Json {
        say!("{}", json!({ "revision": revision }));
    } else {
        say!("{what} (revision {revision})");
    }
}

/// `active` or `inactive`, as the tables show a status.
pub(crate) fn status(active: bool) -> String {
    if active { "active" } else { "inactive" }.into()
}

/// A Unix time as RFC 3339; 0 is `never`.
pub(crate) fn rfc3339(at: i64) -> String {
    if at == 0 {
        return "never".into();
    }
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| at.to_string())
}

/// The Unix time of `text`, an RFC 3339 time or `never` (0), given as the value of `flag`.
pub(crate) fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    if text == "never" {
        return Ok(0);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| t.unix_timestamp())
        .with_context(|| format!("{flag} {text:?} is not an RFC 3339 time (or `never`)"))
}
