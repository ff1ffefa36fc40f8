//! One line for an error and its causes, as the command prints it.
//!
//! The library errors name their cause in their own message (`binding
//! 10.0.0.1:15001: Address in use`) and also expose it as `source()`, so
//! printing the whole chain would say the cause twice. A cause whose text
//! the line already holds is left out.

use std::error::Error;

/// `error: cause: cause…`, each cause once.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading the cookie: {0}")]
        Inline(#[source] std::io::Error),
        #[error("starting")]
        Bare(#[source] std::io::Error),
    }

    fn enoprotoopt() -> std::io::Error {
        std::io::Error::from_raw_os_error(92)
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let line = one_line(&Outer::Inline(enoprotoopt()));
        assert_eq!(line.matches("os error 92").count(), 1, "{line}");
        assert!(line.starts_with("reading the cookie: "), "{line}");
    }

    #[test]
    fn a_cause_the_message_leaves_out_is_appended() {
        let line = one_line(&Outer::Bare(enoprotoopt()));
        assert!(line.starts_with("starting: "), "{line}");
        assert!(line.contains("os error 92"), "{line}");
    }
}
