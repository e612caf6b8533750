//! Plain-text tables and time formats for people reading the admin API's answers. Pure
//! functions: the caller passes `now` where it matters, so the output is testable.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Lays `rows` out under `headers` in left-aligned columns two spaces apart, one line each,
/// every line ending in `\n` and none in a space. Short rows are padded with empty cells.
pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).fold(headers.len(), usize::max);
    let mut widths = vec![0; columns];
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header_row).chain(&rows) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago something happened, given in milliseconds: "0.4s ago", "3m ago", "5h ago",
/// "2d ago"; None is "never".
pub fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    if ms < MIN {
        // Heartbeats come every few seconds, so the tenths are what tell a live relay.
        format!("{}.{}s ago", ms / 1000, ms % 1000 / 100)
    } else if ms < HOUR {
        format!("{}m ago", ms / MIN)
    } else if ms < DAY {
        format!("{}h ago", ms / HOUR)
    } else {
        format!("{}d ago", ms / DAY)
    }
}

/// A round-trip time in microseconds as milliseconds with one decimal ("12.3 ms"); None is "-".
pub fn rtt(us: Option<u64>) -> String {
    match us {
        Some(us) => {
            // Round to the nearest tenth of a millisecond in integers, so no float formatting
            // shows 0.05 as 0.0 or 0.1 depending on its binary representation.
            let tenths = (us + 50) / 100;
            format!("{}.{} ms", tenths / 10, tenths % 10)
        }
        None => "-".into(),
    }
}

/// A unix time in milliseconds as RFC 3339 UTC to the second ("2024-05-01T12:00:00Z").
/// A time out of range shows as the raw number rather than failing the whole table.
pub fn timestamp(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

/// How far `unix_ms` lies from `now_ms`, for expiry columns: "in 7h", "in 59m", "3m ago".
pub fn relative(unix_ms: i64, now_ms: i64) -> String {
    let diff = unix_ms.saturating_sub(now_ms);
    if diff >= 0 {
        let future = ago(Some(diff.unsigned_abs()));
        format!("in {}", future.trim_end_matches(" ago"))
    } else {
        ago(Some(diff.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn columns_align_without_trailing_spaces() {
        let out = render(
            &["NAME", "REGION", "STATE"],
            vec![
                row(&["us-east-1", "us-east", "up"]),
                row(&["eu", "eu-west", "draining"]),
            ],
        );
        assert_eq!(
            out,
            "NAME       REGION   STATE\n\
             us-east-1  us-east  up\n\
             eu         eu-west  draining\n"
        );
    }

    #[test]
    fn empty_last_cells_leave_no_trailing_spaces() {
        let out = render(&["A", "B"], vec![row(&["x", ""]), row(&["longer"])]);
        assert_eq!(out, "A       B\nx\nlonger\n");
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn no_rows_is_just_the_header() {
        assert_eq!(render(&["ID", "SERVICES"], vec![]), "ID  SERVICES\n");
    }

    #[test]
    fn wide_characters_count_once() {
        let out = render(&["N", "X"], vec![row(&["é", "1"]), row(&["ab", "2"])]);
        assert_eq!(out, "N   X\né   1\nab  2\n");
    }

    #[test]
    fn ago_picks_a_unit() {
        assert_eq!(ago(None), "never");
        assert_eq!(ago(Some(0)), "0.0s ago");
        assert_eq!(ago(Some(1_234)), "1.2s ago");
        assert_eq!(ago(Some(59_999)), "59.9s ago");
        assert_eq!(ago(Some(60_000)), "1m ago");
        assert_eq!(ago(Some(3 * 60_000 + 59_000)), "3m ago");
        assert_eq!(ago(Some(5 * 3_600_000)), "5h ago");
        assert_eq!(ago(Some(49 * 3_600_000)), "2d ago");
    }

    #[test]
    fn rtt_in_milliseconds_with_one_decimal() {
        assert_eq!(rtt(None), "-");
        assert_eq!(rtt(Some(0)), "0.0 ms");
        assert_eq!(rtt(Some(12_345)), "12.3 ms");
        assert_eq!(rtt(Some(12_350)), "12.4 ms");
        assert_eq!(rtt(Some(999)), "1.0 ms");
        assert_eq!(rtt(Some(40)), "0.0 ms");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_714_564_800_999), "2024-05-01T12:00:00Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59Z");
        assert_eq!(timestamp(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn relative_reads_both_ways() {
        assert_eq!(relative(8 * 3_600_000, 0), "in 8h");
        assert_eq!(relative(0, 180_000), "3m ago");
        assert_eq!(relative(5, 5), "in 0.0s");
    }
}
