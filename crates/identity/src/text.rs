//! Free text that callers and peers supply (token names, revocation reasons, audit details)
//! and that operators later read in terminals, logs and the dashboard.
//!
//! Control characters can forge lines and terminal escapes; Unicode's invisible formatting
//! characters can make a stored text display as another one: a bidirectional override
//! (U+202E) shows `adm\u{202e}nimda` as "admadmin" reversed, zero-width characters make two
//! names that look the same differ, line and paragraph separators start new lines in some
//! viewers. Neither kind is stored; the audit's own details replace them with a space.

/// Whether `c` is invisible formatting: every character of Unicode's general category
/// `Cf` (format: bidirectional marks, embeddings, overrides and isolates, zero-width
/// characters, the byte order mark, interlinear annotation and tag characters, the soft
/// hyphen), plus the line and paragraph separators U+2028 and U+2029.
#[inline]
pub fn is_invisible(c: char) -> bool {
    // Most text checked is ASCII (identities, actions, details): one comparison then.
    !c.is_ascii()
        && matches!(
            c,
            '\u{00AD}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0001}'
                | '\u{E0020}'..='\u{E007F}'
        )
}

/// Whether stored free text may not carry `c`: control characters other than tab and
/// newline, and [`is_invisible`] ones.
#[inline]
pub fn is_refused(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_invisible(c)
}

/// `c` as a one-line audit detail shows it: control and invisible characters become a space.
pub fn printable(c: char) -> char {
    if c.is_control() || is_invisible(c) {
        ' '
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_zero_width_and_separators_are_invisible() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{2066}',
            '\u{2069}',
            '\u{200B}',
            '\u{200D}',
            '\u{200F}',
            '\u{061C}',
            '\u{FEFF}',
            '\u{2028}',
            '\u{2029}',
            '\u{00AD}',
            '\u{E0041}',
        ] {
            assert!(is_invisible(c), "U+{:04X}", c as u32);
            assert!(is_refused(c), "U+{:04X}", c as u32);
            assert_eq!(printable(c), ' ');
        }
    }

    #[test]
    fn ordinary_text_passes_and_controls_are_refused() {
        for c in ['a', 'é', '中', 'ß', '🙂', ' ', '-', '\u{2027}', '\u{2030}'] {
            assert!(!is_refused(c), "{c}");
            assert_eq!(printable(c), c);
        }
        assert!(!is_refused('\n') && !is_refused('\t'));
        for c in ['\u{0}', '\u{7}', '\u{1b}', '\r', '\u{7f}', '\u{85}'] {
            assert!(is_refused(c), "U+{:04X}", c as u32);
            assert_eq!(printable(c), ' ');
        }
        assert_eq!(printable('\n'), ' ', "a detail is one line");
    }
}
