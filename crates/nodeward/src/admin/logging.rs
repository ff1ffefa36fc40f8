//! `/logging`: the log filter, read and replaced at run time.
//!
//! `GET /logging` answers the filter in force; `GET /logging?level=<v>` puts
//! `v` in force, where `v` is a level (`debug`) or any `EnvFilter` directive
//! list (`nodeward=debug,hyper=info`). A value that does not parse is a 400
//! and the filter stays as it was.

use std::{borrow::Cow, sync::Arc};

use http_body_util::Full;
use hyper::{body::Bytes, Response, StatusCode};
use tracing_subscriber::{filter::LevelFilter, reload, EnvFilter};

use super::text;
use nodeward_proxy::escape::clean;

/// Longest directive list accepted.
pub const MAX_DIRECTIVES: usize = 1024;

/// A handle on the process's reloadable log filter. Built by the binary
/// from its `tracing_subscriber::reload` handle; the library never installs
/// a subscriber itself.
pub struct LogControl {
    current: Box<dyn Fn() -> Result<String, LogError> + Send + Sync>,
    replace: Box<dyn Fn(EnvFilter) -> Result<(), LogError> + Send + Sync>,
    dropped: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

/// Why the filter could not be read or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("invalid log filter: {0}")]
    Invalid(String),
    #[error("the log filter cannot be changed: {0}")]
    Unavailable(String),
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.current().ok())
            .finish()
    }
}

impl LogControl {
    /// Controls the `EnvFilter` behind `handle`.
    pub fn new<S: 'static>(handle: reload::Handle<EnvFilter, S>) -> Self {
        let read = handle.clone();
        Self {
            current: Box::new(move || {
                read.with_current(ToString::to_string)
                    .map_err(|e| LogError::Unavailable(e.to_string()))
            }),
            replace: Box::new(move |filter| {
                handle
                    .reload(filter)
                    .map_err(|e| LogError::Unavailable(e.to_string()))
            }),
            dropped: None,
        }
    }

    /// Reports the lines a non-blocking log writer dropped through
    /// `dropped` (exported as `nodeward_log_dropped_lines_total`).
    #[must_use]
    pub fn with_dropped_lines(mut self, dropped: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.dropped = Some(Arc::new(dropped));
        self
    }

    /// How to read the dropped-lines count, when the writer drops lines.
    pub fn dropped_lines(&self) -> Option<Arc<dyn Fn() -> u64 + Send + Sync>> {
        self.dropped.clone()
    }

    /// The directives in force.
    pub fn current(&self) -> Result<String, LogError> {
        (self.current)()
    }

    /// Parses `directives` and puts them in force; returns the filter now
    /// in force. On any error the filter is unchanged.
    pub fn set(&self, directives: &str) -> Result<String, LogError> {
        let filter = parse(directives)?;
        let before = self.current().unwrap_or_default();
        tracing::info!(from = %before, to = %filter, "log filter changed through the admin endpoint");
        (self.replace)(filter)?;
        self.current()
    }
}

/// Answers `/logging` with `query` (the raw query string, if any).
pub(super) fn handle(control: Option<&LogControl>, query: Option<&str>) -> Response<Full<Bytes>> {
    let Some(control) = control else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "this process has no reloadable log filter\n",
        );
    };
    let result = match query.filter(|q| !q.is_empty()) {
        None => control.current(),
        Some(q) => level_param(q)
            .map_err(LogError::Invalid)
            .and_then(|level| control.set(&level)),
    };
    match result {
        Ok(filter) => text(StatusCode::OK, format!("{filter}\n")),
        Err(e @ LogError::Invalid(_)) => text(
            StatusCode::BAD_REQUEST,
            format!("{}\n", clean(&e.to_string())),
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", clean(&e.to_string())),
        ),
    }
}

/// The filter `directives` describe. A lone word must be a level: to
/// `EnvFilter` `loud` means "everything from target `loud`", which is never
/// what `?level=loud` meant. Field-value regexes are off: a value is matched
/// literally, so no pattern can make every event expensive.
fn parse(directives: &str) -> Result<EnvFilter, LogError> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(LogError::Invalid("empty filter".into()));
    }
    if directives.len() > MAX_DIRECTIVES {
        return Err(LogError::Invalid(format!(
            "longer than {MAX_DIRECTIVES} bytes"
        )));
    }
    // Targets are module paths and levels are words: nothing else is needed,
    // and a control character would reach the log line announcing the change.
    if !directives.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(LogError::Invalid("only printable ASCII is accepted".into()));
    }
    let lone_word = !directives.contains(['=', ',', '[']);
    if lone_word && directives.parse::<LevelFilter>().is_err() {
        return Err(LogError::Invalid(format!(
            "{directives:?} is not a level (trace, debug, info, warn, error, off) \
             nor a directive like `nodeward=debug`"
        )));
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(directives)
        .map_err(|e| LogError::Invalid(e.to_string()))
}

/// The value of the one `level` parameter of a form-encoded query.
fn level_param(query: &str) -> Result<String, String> {
    let mut level = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match &*form_decode(key)? {
            "level" if level.is_none() => level = Some(form_decode(value)?.into_owned()),
            "level" => return Err("`level` given more than once".into()),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; only `level` is accepted"
                ))
            }
        }
    }
    level.ok_or_else(|| "missing `level` parameter".into())
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; the result must be UTF-8.
fn form_decode(s: &str) -> Result<Cow<'_, str>, String> {
    if !s.contains(['%', '+']) {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.next().and_then(hex);
                let lo = bytes.next().and_then(hex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err("malformed percent-encoding".into()),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "parameter is not UTF-8".into())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use tracing_subscriber::{layer::Context, prelude::*, Layer};

    use super::*;

    /// Counts events of target `probe`.
    #[derive(Clone, Default)]
    struct Probe(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Probe {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() == "probe" {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn set_changes_what_is_recorded_and_a_bad_value_changes_nothing() {
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        let probe = Probe::default();
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(probe.clone());
        let control = LogControl::new(handle);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "probe", "hidden");
            assert_eq!(control.set("probe=debug").as_deref(), Ok("probe=debug"));
            tracing::debug!(target: "probe", "shown");
            assert!(matches!(
                control.set("probe=shout"),
                Err(LogError::Invalid(_))
            ));
            tracing::debug!(target: "probe", "still shown");
            assert_eq!(control.set("warn").as_deref(), Ok("warn"));
            tracing::info!(target: "probe", "hidden again");
        });
        assert_eq!(probe.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_dropped_subscriber_is_reported_not_panicked_on() {
        let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
        drop(tracing_subscriber::registry().with(filter));
        let control = LogControl::new(handle);
        assert!(matches!(control.current(), Err(LogError::Unavailable(_))));
        assert!(matches!(
            control.set("debug"),
            Err(LogError::Unavailable(_))
        ));
    }

    #[test]
    fn form_decoding_handles_plus_percent_and_rejects_garbage() {
        assert_eq!(form_decode("a+b%3Dc%2cd").as_deref(), Ok("a b=c,d"));
        assert_eq!(form_decode("plain").as_deref(), Ok("plain"));
        assert!(form_decode("%").is_err());
        assert!(form_decode("%4").is_err());
        assert!(form_decode("%zz").is_err());
        assert!(form_decode("%ff").is_err(), "not UTF-8");
    }

    #[test]
    fn only_one_level_parameter_is_accepted() {
        assert_eq!(level_param("level=debug").as_deref(), Ok("debug"));
        assert_eq!(
            level_param("level=nodeward%3Ddebug%2Chyper%3Dinfo").as_deref(),
            Ok("nodeward=debug,hyper=info")
        );
        assert!(level_param("level=a&level=b").is_err());
        assert!(level_param("verbose=1").is_err());
        assert!(level_param("&&").is_err());
    }

    #[test]
    fn bad_directives_are_rejected() {
        for bad in [
            "nodeward\n=debug",
            "nodeward=debug,\u{202e}x=info",
            "",
            "   ",
            "loud",
            "nodeward",
            "nodeward=loud",
            "[",
            &"x".repeat(MAX_DIRECTIVES + 1),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "debug",
            "TRACE",
            "nodeward=debug,hyper=info",
            "warn,nodeward::access=off",
        ] {
            assert!(parse(good).is_ok(), "{good:?} rejected");
        }
    }
}
