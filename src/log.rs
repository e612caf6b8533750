//! The one log subscriber: `SAT_LOG` filters, `SAT_LOG_FORMAT` chooses between lines for people
//! (`text`, the default) and one JSON object per line for log collectors (`json`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable that chooses the format.
const FORMAT_VAR: &str = "SAT_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

impl Format {
    /// The format `value` names; unset or empty is the default, `text`.
    fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Self::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Self::Json),
            Some(other) => Err(format!(
                "{FORMAT_VAR}={other:?} is not a log format: set it to text (the default) or json"
            )),
        }
    }
}

/// Installs the subscriber, writing to stderr. `default` is the filter when `SAT_LOG` is unset.
/// Fails on a `SAT_LOG_FORMAT` it does not know, with a message that names the accepted values.
///
/// Both formats carry the same fields: the time, the level, the target, the message and the
/// event's fields, and every span the event is in with its fields. In JSON those are
/// `timestamp`, `level`, `target`, `fields` (`message` and the event's own, kept apart so that
/// an event field called `target` or `level` cannot clash with them) and `spans`, outermost
/// first, each with its `name` and fields.
pub fn init(default: &str) -> Result<(), String> {
    // A value that is not UTF-8 fails as any unknown one does, shown lossily.
    let value = std::env::var_os(FORMAT_VAR).map(|v| v.to_string_lossy().into_owned());
    let format = Format::parse(value.as_deref())?;
    let filter = EnvFilter::try_from_env("SAT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Format::Json => builder
            .json()
            // The innermost span is the last of `spans` already.
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_their_errors() {
        assert_eq!(Format::parse(None), Ok(Format::Text));
        assert_eq!(Format::parse(Some("")), Ok(Format::Text));
        assert_eq!(Format::parse(Some("text")), Ok(Format::Text));
        assert_eq!(Format::parse(Some(" JSON ")), Ok(Format::Json));
        let err = Format::parse(Some("logfmt")).unwrap_err();
        assert!(
            err.contains("SAT_LOG_FORMAT=\"logfmt\"")
                && err.contains("text")
                && err.contains("json"),
            "{err}"
        );
    }
}
