//! The two text formats `/metrics` speaks. The registry renders OpenMetrics
//! (what Prometheus asks for when it scrapes); this turns that into the
//! classic Prometheus text format 0.0.4, which curl, `promtool check
//! metrics` and older scrapers read. The difference that matters: in
//! OpenMetrics a counter family is named without `_total` while its samples
//! carry it; in 0.0.4 the family's `# HELP` / `# TYPE` must name the sample
//! itself, or every counter reads as a metric without help.

/// Content type of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut fields = part.split(';').map(str::trim);
            let media = fields.next().unwrap_or("");
            // `q=0` means "not this one".
            let refused = fields.any(|f| {
                f.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
    })
}

/// OpenMetrics text (as the registry renders it) in the 0.0.4 format:
/// counter families renamed to their `_total` sample name, `# UNIT` and
/// `# EOF` dropped, HELP unescaped of `\"` (0.0.4 escapes only `\\` and
/// `\n`). Sample lines are the same in both formats.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // The TYPE line follows its HELP line in the registry's output.
            let counter = lines
                .peek()
                .and_then(|l| l.strip_prefix("# TYPE "))
                .is_some_and(|t| t == format!("{name} counter"));
            let name = family_name(name, counter);
            out.push_str(&format!("# HELP {name} {}\n", help.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = family_name(name, kind == "counter");
            // 0.0.4 knows no `unknown`, `info` or `stateset`.
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn family_name(name: &str, counter: bool) -> String {
    if counter && !name.ends_with("_total") {
        format!("{name}_total")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_sample_and_eof_goes() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n\
                  # HELP a_open Open \\\"now\\\".\n# TYPE a_open gauge\na_open 2\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n\
             # HELP a_open Open \"now\".\n# TYPE a_open gauge\na_open 2\n"
        );
    }

    #[test]
    fn accept_negotiation() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        // What Prometheus sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }
}
