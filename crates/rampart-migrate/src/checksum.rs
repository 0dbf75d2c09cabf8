//! Flyway's script checksum.
//!
//! Input: a script's bytes (or its text after placeholder replacement). Output: the signed 32-bit
//! value Flyway stores in `flyway_schema_history.checksum`. Flyway decodes the file as strict
//! UTF-8, drops a byte order mark at the start, reads it line by line (`\n`, `\r` or `\r\n`
//! end a line and are not part of it) and feeds every line's UTF-8 bytes into one running
//! CRC-32 (IEEE). Feeding lines without their terminators is the same as feeding the text with
//! every `\r` and `\n` removed, which is what this does, so LF and CRLF files, and files with or
//! without a final newline, have the same checksum, while trailing spaces change it.

use std::str::Utf8Error;

/// The byte order mark Flyway strips from the first line.
const BOM: char = '\u{feff}';

/// Decodes a script as Flyway does (strict UTF-8) and strips a leading byte order mark.
pub fn decode(bytes: &[u8]) -> Result<&str, Utf8Error> {
    let text = std::str::from_utf8(bytes)?;
    Ok(text.strip_prefix(BOM).unwrap_or(text))
}

/// The checksum of decoded text (a leading byte order mark is ignored here too).
pub fn of_text(text: &str) -> i32 {
    let text = text.strip_prefix(BOM).unwrap_or(text);
    let mut crc = crc32fast::Hasher::new();
    for piece in text.split(['\r', '\n']) {
        crc.update(piece.as_bytes());
    }
    // Flyway stores Java's `(int) crc32.getValue()`: the same 32 bits read as signed.
    crc.finalize() as i32
}

/// The checksum of a script's bytes; fails on bytes that are not UTF-8, as Flyway does.
pub fn of_bytes(bytes: &[u8]) -> Result<i32, Utf8Error> {
    decode(bytes).map(of_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_script_is_zero() {
        assert_eq!(of_bytes(b"").unwrap(), 0);
        assert_eq!(of_bytes(b"\n\r\n").unwrap(), 0);
    }

    #[test]
    fn line_endings_and_final_newline_do_not_change_it() {
        let lf = of_bytes(b"create table t (a int);\ninsert into t values (1);\n").unwrap();
        let crlf = of_bytes(b"create table t (a int);\r\ninsert into t values (1);\r\n").unwrap();
        let cr = of_bytes(b"create table t (a int);\rinsert into t values (1);").unwrap();
        let no_final = of_bytes(b"create table t (a int);\ninsert into t values (1);").unwrap();
        assert_eq!(lf, crlf);
        assert_eq!(lf, cr);
        assert_eq!(lf, no_final);
    }

    #[test]
    fn trailing_spaces_and_content_change_it() {
        let a = of_bytes(b"select 1;\n").unwrap();
        assert_ne!(a, of_bytes(b"select 1; \n").unwrap());
        assert_ne!(a, of_bytes(b"select 2;\n").unwrap());
    }

    #[test]
    fn a_leading_bom_is_ignored() {
        assert_eq!(
            of_bytes(b"\xef\xbb\xbfselect 1;\n").unwrap(),
            of_bytes(b"select 1;\n").unwrap()
        );
    }

    #[test]
    fn equals_crc32_of_the_text_without_line_breaks_as_signed() {
        // CRC-32/IEEE of "123456789" is 0xCBF43926, which Java's (int) cast reads as negative.
        assert_eq!(of_bytes(b"1234\n56789").unwrap(), 0xCBF4_3926_u32 as i32);
        assert!(of_bytes(b"123456789").unwrap() < 0);
    }

    #[test]
    fn invalid_utf8_is_refused_with_its_position() {
        let err = of_bytes(b"select 'caf\xe9';").unwrap_err();
        assert_eq!(err.valid_up_to(), 11);
    }
}
