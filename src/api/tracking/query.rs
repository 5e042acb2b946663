//! The tracking search's body, read and checked: `{search, paging, sorts}` into a store
//! query, with an error that names the exact place at fault.

use super::*;

/// A 400 about the search body, naming the place at fault.
fn bad(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).field(field)
}

/// A parsed search: the store query, and what to echo back.
pub(in crate::api) struct Search {
    pub(super) query: TrackingQuery,
    pub(super) echo: Vec<Value>,
    pub(super) sort_echo: Value,
    /// `(number, size)` as asked; `None`: every row (up to [`MAX_ROWS`]).
    pub(super) paging: Option<(u64, u64)>,
}

/// Reads `{search, paging, sorts}`; every part is optional.
pub(in crate::api) fn parse_search(
    env: Env,
    sender: &str,
    body: &Value,
    now: i64,
) -> Result<Search, ApiError> {
    let empty = Map::new();
    let root = match body {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => {
            return Err(bad(
                "invalid_search",
                "body",
                "the body must be a JSON object",
            ))
        }
    };
    let mut query = TrackingQuery {
        env,
        sender: sender.to_owned(),
        types: Vec::new(),
        statuses: Vec::new(),
        received: None,
        ids: Vec::new(),
        refs: Vec::new(),
        sort: TrackingSort::Received,
        descending: true,
        skip: 0,
        take: MAX_ROWS,
    };
    let mut echo = Vec::new();
    let mut seen = HashSet::new();
    let criteria = match root.get("search") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(bad(
                "invalid_search",
                "search",
                "search must be a list of {by, value} criteria",
            ))
        }
    };
    for (i, c) in criteria.iter().enumerate() {
        let at = |name: &str| format!("search[{i}].{name}");
        let by = c.get("by").and_then(Value::as_str).ok_or_else(|| {
            bad(
                "invalid_search",
                at("by"),
                format!("each criterion needs a `by`, one of {CRITERIA}"),
            )
        })?;
        if !matches!(
            by,
            "messageType" | "messageStatus" | "receivedDate" | "id" | "externalReference"
        ) {
            return Err(bad(
                "invalid_search",
                at("by"),
                format!("unknown criterion {by:?}; use one of {CRITERIA}"),
            ));
        }
        if !seen.insert(by) {
            return Err(bad(
                "invalid_search",
                at("by"),
                format!("{by} is given twice; give it once with a list of values"),
            ));
        }
        let raw = c.get("value").unwrap_or(&Value::Null);
        let values = string_values(raw, &at("value"))?;
        match by {
            "messageType" => query.types = values,
            "messageStatus" => {
                query.statuses = values
                    .iter()
                    .map(|v| parse_status(v, &at("value")))
                    .collect::<Result<_, _>>()?
            }
            "receivedDate" => query.received = Some(parse_dates(&values, &at("value"))?),
            "id" => {
                query.ids = values
                    .iter()
                    .map(|v| {
                        v.trim().parse::<Uuid>().map_err(|_| {
                            bad(
                                "invalid_search",
                                at("value"),
                                format!("{v:?} is not an id (a UUID)"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => {
                if let Some(v) = values.iter().find(|v| v.chars().count() > 256) {
                    return Err(bad(
                        "invalid_search",
                        at("value"),
                        format!(
                            "references are at most 256 characters; {:.40}… is longer",
                            v
                        ),
                    ));
                }
                query.refs = values
            }
        }
        echo.push(json!({"by": by, "value": raw}));
    }
    if query.received.is_none() && query.ids.is_empty() && query.refs.is_empty() {
        // Without a date, an id or a reference, the search covers today (UTC).
        let day = now.div_euclid(DAY_MS) * DAY_MS;
        query.received = Some((day, day + DAY_MS));
        let date = rfc3339(day).get(..10).unwrap_or_default().to_owned();
        echo.push(json!({"by": "receivedDate", "value": date}));
    }

    let paging = match root.get("paging") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let number = number_field(p.get("number"), "paging.number", 1, u64::MAX / 2, 1)?;
            let size = number_field(p.get("size"), "paging.size", 1, MAX_PAGE_SIZE, 10)?;
            query.skip = usize::try_from((number - 1).saturating_mul(size)).unwrap_or(usize::MAX);
            query.take = size as usize;
            Some((number, size))
        }
        Some(_) => {
            return Err(bad(
                "invalid_paging",
                "paging",
                "paging must be an object {number, size}",
            ))
        }
    };

    let sorts = match root.get("sorts") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(bad(
                "invalid_sort",
                "sorts",
                "sorts must be a list of {by, order}",
            ))
        }
    };
    if sorts.len() > 1 {
        return Err(bad(
            "invalid_sort",
            "sorts[1]",
            "one sort is supported; ties are ordered by receivedDate",
        ));
    }
    let mut sort_by = "receivedDate";
    if let Some(s) = sorts.first() {
        let by = s.get("by").and_then(Value::as_str).unwrap_or_default();
        (query.sort, query.descending) = match by {
            "receivedDate" => (TrackingSort::Received, true),
            "processedDate" => (TrackingSort::Processed, true),
            "batchReference" => (TrackingSort::BatchReference, false),
            _ => {
                return Err(bad(
                    "invalid_sort",
                    "sorts[0].by",
                    format!("cannot sort by {by:?}; use one of {SORTS}"),
                ))
            }
        };
        sort_by = by;
        match s.get("order") {
            None | Some(Value::Null) => {}
            Some(Value::String(o)) if o.eq_ignore_ascii_case("asc") => query.descending = false,
            Some(Value::String(o)) if o.eq_ignore_ascii_case("desc") => query.descending = true,
            Some(other) => {
                return Err(bad(
                    "invalid_sort",
                    "sorts[0].order",
                    format!("order must be asc or desc, not {other}"),
                ))
            }
        }
    }
    let order = if query.descending { "desc" } else { "asc" };
    Ok(Search {
        query,
        echo,
        sort_echo: json!([{"by": sort_by, "order": order}]),
        paging,
    })
}

/// A criterion's value: one string or a non-empty list of strings.
fn string_values(raw: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let list = match raw {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("invalid_search", field, "values must be strings"))?,
        _ => {
            return Err(bad(
                "invalid_search",
                field,
                "value must be a string or a list of strings",
            ))
        }
    };
    if list.is_empty() {
        return Err(bad("invalid_search", field, "give at least one value"));
    }
    if list.len() > MAX_VALUES {
        return Err(bad(
            "invalid_search",
            field,
            format!("at most {MAX_VALUES} values"),
        ));
    }
    Ok(list)
}

/// A status name, in any case.
pub(in crate::api) fn parse_status(raw: &str, field: &str) -> Result<Status, ApiError> {
    Status::ALL
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| {
            let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            bad(
                "invalid_search",
                field,
                format!("unknown status {raw:?}; use one of {}", names.join(", ")),
            )
        })
}

/// A point in time: an RFC 3339 date-time, or a date (`2026-11-29`, its midnight UTC).
/// Returns unix ms and whether only a date was given.
pub(in crate::api) fn parse_time(raw: &str, field: &str) -> Result<(i64, bool), ApiError> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        return Ok(((t.unix_timestamp_nanos() / 1_000_000) as i64, false));
    }
    if let Ok(d) = Date::parse(raw, format_description!("[year]-[month]-[day]")) {
        return Ok((d.midnight().assume_utc().unix_timestamp() * 1000, true));
    }
    Err(bad(
        "invalid_date",
        field,
        format!("{raw:?} is not a date (2026-11-29) or an RFC 3339 time (2026-11-29T08:00:00Z)"),
    ))
}

/// `receivedDate`: one value is that whole day (UTC); two are a range, `from` to `to`
/// inclusive (a date as `to` includes that whole day). Returns `[from, to)` in unix ms.
pub(in crate::api) fn parse_dates(values: &[String], field: &str) -> Result<(i64, i64), ApiError> {
    match values {
        [one] => {
            let (at, _) = parse_time(one, field)?;
            let day = at.div_euclid(DAY_MS) * DAY_MS;
            Ok((day, day + DAY_MS))
        }
        [from, to] => {
            let (from, _) = parse_time(from, field)?;
            let (to, date_only) = parse_time(to, field)?;
            let end = if date_only { to + DAY_MS } else { to + 1 };
            if end <= from {
                return Err(bad(
                    "invalid_date",
                    field,
                    "the range ends before it starts",
                ));
            }
            Ok((from, end))
        }
        _ => Err(bad(
            "invalid_date",
            field,
            "give one date, or two: [from, to]",
        )),
    }
}

/// A paging number: a JSON number or a numeric string (`"1"`), within `min..=max`.
fn number_field(
    raw: Option<&Value>,
    field: &str,
    min: u64,
    max: u64,
    default: u64,
) -> Result<u64, ApiError> {
    let n = match raw {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    n.filter(|n| (min..=max).contains(n)).ok_or_else(|| {
        let range = if max >= u64::MAX / 2 {
            format!("a whole number from {min}")
        } else {
            format!("a whole number from {min} to {max}")
        };
        bad("invalid_paging", field, format!("{field} must be {range}"))
    })
}
