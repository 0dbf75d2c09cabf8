//! Splitting a PostgreSQL migration script into statements.
//!
//! The migration runner executes a Flyway-style script one statement at a time, so it has to know
//! where each statement ends and whether it may run inside the transaction that wraps the
//! migration. [`split`] takes a script's full text and returns its [`Statement`]s in order: the
//! text (leading comments stripped, no terminating `;`), the line it starts on, and whether it is
//! transactional. A script the splitter cannot cut safely — an unterminated literal or comment, or
//! a `COPY ... FROM STDIN` whose data only a client like psql could send — is a [`SplitError`]
//! naming the line. [`is_non_transactional`] is the classifier on its own.
//!
//! The lexer follows PostgreSQL's lexical rules just far enough to tell a `;` that ends a
//! statement from one that does not: single-quoted strings (and `E'...'` with backslash escapes),
//! quoted identifiers, dollar-quoted strings, line comments and nesting block comments. Beyond the
//! lexer, the one place a bare `;` ends nothing is a SQL-standard function body,
//! `BEGIN ATOMIC ... END`. It assumes `standard_conforming_strings = on`, the default since
//! PostgreSQL 9.1: in a plain `'...'` a backslash is an ordinary character.
//!
//! It is one forward pass over the bytes. Every delimiter is ASCII and UTF-8 never uses ASCII
//! bytes inside a multi-byte character, so token boundaries are always char boundaries.

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, trimmed, without the terminating `;`.
    pub sql: String,
    /// 1-based line in the script where the statement starts (first non-blank, non-comment char).
    pub line: usize,
    /// False for statements PostgreSQL refuses to run inside a transaction block.
    pub transactional: bool,
}

/// Why a script could not be split. `line` is the 1-based line where the construct starts.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A `'...'` (or `E'...'`, `U&'...'`) string never closes.
    #[error("unterminated string literal starting on line {line}")]
    UnterminatedString { line: usize },
    /// A `"..."` identifier never closes.
    #[error("unterminated quoted identifier starting on line {line}")]
    UnterminatedIdentifier { line: usize },
    /// A `/* ... */` comment (counting nested ones) never closes.
    #[error("unterminated block comment starting on line {line}")]
    UnterminatedComment { line: usize },
    /// A `$tag$` string never meets its closing `$tag$`; `tag` includes the dollars.
    #[error("unterminated dollar-quoted string {tag} starting on line {line}")]
    UnterminatedDollarQuote { tag: String, line: usize },
    /// `COPY ... FROM STDIN`: the rows would have to come from the client, which the runner is not.
    #[error(
        "statement on line {line} is COPY ... FROM STDIN, which needs client-side data; load the data with INSERT statements or COPY ... FROM a server-side file"
    )]
    CopyFromStdin { line: usize },
}

/// Splits a script into statements.
///
/// Statements end at a `;` outside literals, comments and `BEGIN ATOMIC ... END` bodies; the last
/// one may omit it. A statement's text runs from its first token to its last, so comments inside
/// it are kept while comments and blank space before it (and between its last token and the `;`)
/// are not. Empty statements (`;;`, comment-only stretches) are dropped.
///
/// # Errors
/// See [`SplitError`]; the first problem in the script is returned.
pub fn split(script: &str) -> Result<Vec<Statement>, SplitError> {
    let mut lexer = Lexer::new(script);
    let mut lines = LineCounter::new(script);
    let mut statements = Vec::new();
    let mut current: Option<Pending> = None;
    loop {
        let token = match lexer.next_token() {
            Ok(Some(token)) => token,
            Ok(None) => break,
            Err(err) => return Err(err.into_split_error(&mut lines)),
        };
        let ends_statement = token.kind == Kind::Punct(b';')
            && current
                .as_ref()
                .is_none_or(|pending| pending.atomic_depth == 0);
        if ends_statement {
            // Nothing pending means an empty statement, which PostgreSQL would ignore anyway.
            if let Some(pending) = current.take() {
                statements.push(pending.finish(script));
            }
            continue;
        }
        current
            .get_or_insert_with(|| Pending::new(token, lines.line_at(token.start)))
            .observe(token)?;
    }
    if let Some(pending) = current {
        statements.push(pending.finish(script));
    }
    Ok(statements)
}

/// Whether a statement must run outside a transaction block on PostgreSQL.
///
/// Leading whitespace and comments are skipped and keywords compare case-insensitively across any
/// whitespace or comments, so `create  /* x */ INDEX\nconcurrently` matches. Non-transactional are:
/// - `CREATE`/`DROP` of a `DATABASE`, `TABLESPACE` or `SUBSCRIPTION`;
/// - `CREATE [UNIQUE] INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`;
/// - `ALTER SYSTEM`, `ALTER DATABASE name SET TABLESPACE`;
/// - `REINDEX` of a `SCHEMA`, `DATABASE` or `SYSTEM`, or with `CONCURRENTLY` (keyword or option);
/// - `VACUUM`, `DISCARD ALL`.
///
/// Everything else is transactional.
#[must_use]
pub fn is_non_transactional(sql: &str) -> bool {
    let mut tokens = Lexer::new(sql);
    let first = tokens.next();
    if is_keyword(first, "VACUUM") {
        true
    } else if is_keyword(first, "DISCARD") {
        is_keyword(tokens.next(), "ALL")
    } else if is_keyword(first, "CREATE") || is_keyword(first, "DROP") {
        create_or_drop_is_non_transactional(tokens)
    } else if is_keyword(first, "ALTER") {
        let object = tokens.next();
        is_keyword(object, "SYSTEM")
            // `ALTER DATABASE name SET TABLESPACE`: `nth(1)` steps over the name. The other
            // `ALTER DATABASE name SET param ...` forms are transactional.
            || (is_keyword(object, "DATABASE")
                && is_keyword(tokens.nth(1), "SET")
                && is_keyword(tokens.next(), "TABLESPACE"))
    } else if is_keyword(first, "REINDEX") {
        reindex_is_non_transactional(tokens)
    } else {
        false
    }
}

/// The rest of a `CREATE ...` or `DROP ...` statement.
fn create_or_drop_is_non_transactional(mut tokens: Lexer<'_>) -> bool {
    let mut object = tokens.next();
    if is_any_keyword(object, &["DATABASE", "TABLESPACE", "SUBSCRIPTION"]) {
        return true;
    }
    if is_keyword(object, "UNIQUE") {
        object = tokens.next();
    }
    is_keyword(object, "INDEX") && is_keyword(tokens.next(), "CONCURRENTLY")
}

/// The rest of `REINDEX [ ( option [, ...] ) ] [ VERBOSE ] kind [ CONCURRENTLY ] name`.
fn reindex_is_non_transactional(mut tokens: Lexer<'_>) -> bool {
    let mut concurrently = false;
    let mut next = tokens.next();
    if next.is_some_and(|token| token.kind == Kind::Punct(b'(')) {
        concurrently = options_enable_concurrently(&mut tokens);
        next = tokens.next();
    }
    if is_keyword(next, "VERBOSE") {
        next = tokens.next();
    }
    // Whole-schema and wider reindexes commit per table, so PostgreSQL runs them only at top level.
    if is_any_keyword(next, &["SCHEMA", "DATABASE", "SYSTEM"]) {
        return true;
    }
    concurrently || is_keyword(tokens.next(), "CONCURRENTLY")
}

/// Reads a parenthesised option list up to its `)`: whether it leaves `CONCURRENTLY` on.
///
/// An option without a value is on; `CONCURRENTLY false` (or `off`, `0`) is the transactional form.
fn options_enable_concurrently(tokens: &mut Lexer<'_>) -> bool {
    let mut concurrently = false;
    let mut expecting_value = false;
    for token in tokens {
        match token.kind {
            Kind::Punct(b')') => break,
            Kind::Punct(b',') => expecting_value = false,
            _ if expecting_value => {
                concurrently = !is_false(token);
                expecting_value = false;
            }
            _ if is_keyword(Some(token), "CONCURRENTLY") => {
                concurrently = true;
                expecting_value = true;
            }
            _ => {}
        }
    }
    concurrently
}

/// Whether an option value spells false as PostgreSQL's boolean options accept it.
fn is_false(token: Token<'_>) -> bool {
    let text = match token.kind {
        Kind::Word => token.text,
        Kind::Str => token.text.trim_matches('\''),
        _ => return false,
    };
    ["false", "off", "0"]
        .iter()
        .any(|spelling| text.eq_ignore_ascii_case(spelling))
}

/// Whether `token` is the bare (unquoted) word `keyword`, ignoring case.
fn is_keyword(token: Option<Token<'_>>, keyword: &str) -> bool {
    token.is_some_and(|token| token.kind == Kind::Word && token.text.eq_ignore_ascii_case(keyword))
}

fn is_any_keyword(token: Option<Token<'_>>, keywords: &[&str]) -> bool {
    keywords.iter().any(|keyword| is_keyword(token, keyword))
}

/// A statement being read: where it is and what `split` has to remember about its tokens.
#[derive(Debug)]
struct Pending {
    start: usize,
    /// End of the last token seen, so trailing comments and whitespace stay out of the text.
    end: usize,
    line: usize,
    is_copy: bool,
    paren_depth: usize,
    previous: Previous,
    /// Open `BEGIN ATOMIC` bodies plus the `CASE`s open inside them: each closes at an `END`.
    atomic_depth: usize,
}

/// The previous token, as far as two-word constructs care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Previous {
    Begin,
    From,
    Other,
}

impl Pending {
    fn new(first: Token<'_>, line: usize) -> Self {
        Pending {
            start: first.start,
            end: first.start,
            line,
            is_copy: is_keyword(Some(first), "COPY"),
            paren_depth: 0,
            previous: Previous::Other,
            atomic_depth: 0,
        }
    }

    fn observe(&mut self, token: Token<'_>) -> Result<(), SplitError> {
        self.end = token.end();
        let previous = std::mem::replace(&mut self.previous, Previous::Other);
        match token.kind {
            Kind::Punct(b'(') => self.paren_depth += 1,
            Kind::Punct(b')') => self.paren_depth = self.paren_depth.saturating_sub(1),
            Kind::Word => {
                let word = Some(token);
                if previous == Previous::Begin && is_keyword(word, "ATOMIC") {
                    self.atomic_depth += 1;
                } else if self.atomic_depth > 0 && is_keyword(word, "CASE") {
                    // `CASE ... END` inside the body must not close it early.
                    self.atomic_depth += 1;
                } else if self.atomic_depth > 0 && is_keyword(word, "END") {
                    self.atomic_depth -= 1;
                } else if self.is_copy
                    && self.paren_depth == 0
                    && previous == Previous::From
                    && is_keyword(word, "STDIN")
                {
                    // Only at depth 0: in `COPY (SELECT ... FROM stdin) TO STDOUT`, `stdin` is a
                    // table name.
                    return Err(SplitError::CopyFromStdin { line: self.line });
                }
                if is_keyword(word, "BEGIN") {
                    self.previous = Previous::Begin;
                } else if is_keyword(word, "FROM") {
                    self.previous = Previous::From;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self, script: &str) -> Statement {
        let sql = &script[self.start..self.end];
        Statement {
            sql: sql.to_owned(),
            line: self.line,
            transactional: !is_non_transactional(sql),
        }
    }
}

/// Turns byte offsets into 1-based line numbers, counting `\n`, `\r\n` and a lone `\r` as one
/// break each. It resumes from the previous query, so increasing queries scan the script once.
#[derive(Debug)]
struct LineCounter<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    after_cr: bool,
}

impl<'a> LineCounter<'a> {
    fn new(script: &'a str) -> Self {
        LineCounter {
            bytes: script.as_bytes(),
            pos: 0,
            line: 1,
            after_cr: false,
        }
    }

    fn line_at(&mut self, offset: usize) -> usize {
        if offset < self.pos {
            // `split` only asks in increasing order; restarting keeps a stray query correct.
            self.pos = 0;
            self.line = 1;
            self.after_cr = false;
        }
        for &byte in &self.bytes[self.pos..offset] {
            // The `\n` of a `\r\n` was already counted with its `\r`.
            if byte == b'\r' || (byte == b'\n' && !self.after_cr) {
                self.line += 1;
            }
            self.after_cr = byte == b'\r';
        }
        self.pos = offset;
        self.line
    }
}

/// What a token is; comments and whitespace are skipped, never tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A keyword, unquoted identifier or number (`$` allowed after the first byte, as in `a$b`).
    Word,
    QuotedIdent,
    /// `'...'`, `E'...'`; a `U&'...'` lexes as the word `U`, the punct `&` and a plain string.
    Str,
    DollarStr,
    /// Any other single byte: operators, punctuation, the `$` of a `$1` parameter.
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    start: usize,
    text: &'a str,
}

impl Token<'_> {
    fn end(&self) -> usize {
        self.start + self.text.len()
    }
}

/// A literal or comment that runs off the end of the script, found at byte `start`.
#[derive(Debug)]
struct LexError<'a> {
    start: usize,
    kind: Unterminated<'a>,
}

#[derive(Debug)]
enum Unterminated<'a> {
    String,
    Identifier,
    Comment,
    /// The opening delimiter, dollars included.
    DollarQuote(&'a str),
}

impl LexError<'_> {
    fn into_split_error(self, lines: &mut LineCounter<'_>) -> SplitError {
        let line = lines.line_at(self.start);
        match self.kind {
            Unterminated::String => SplitError::UnterminatedString { line },
            Unterminated::Identifier => SplitError::UnterminatedIdentifier { line },
            Unterminated::Comment => SplitError::UnterminatedComment { line },
            Unterminated::DollarQuote(tag) => SplitError::UnterminatedDollarQuote {
                tag: tag.to_owned(),
                line,
            },
        }
    }
}

/// PostgreSQL's lexer, reduced to token boundaries.
#[derive(Debug)]
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    /// The next token after any whitespace and comments; `None` at the end of the text.
    fn next_token(&mut self) -> Result<Option<Token<'a>>, LexError<'a>> {
        self.skip_trivia()?;
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let Some(&first) = bytes.get(start) else {
            return Ok(None);
        };
        let kind = match first {
            b'\'' => {
                self.quoted(start, start + 1, b'\'', false, Unterminated::String)?;
                Kind::Str
            }
            b'"' => {
                self.quoted(start, start + 1, b'"', false, Unterminated::Identifier)?;
                Kind::QuotedIdent
            }
            b'$' => match self.dollar_delimiter_end(start) {
                Some(delimiter_end) => {
                    self.dollar_quoted(start, delimiter_end)?;
                    Kind::DollarStr
                }
                // `$1` is a parameter, not a quote; the digits lex as a word.
                None => {
                    self.pos += 1;
                    Kind::Punct(b'$')
                }
            },
            _ if is_word_byte(first) => {
                self.pos = scan_while(bytes, start, is_word_byte);
                // Words are read whole, so `E'` is an escape string only when the `E` stands
                // alone: in `WHERE'\'` the quote starts a plain string.
                if self.pos == start + 1
                    && first.eq_ignore_ascii_case(&b'e')
                    && bytes.get(self.pos) == Some(&b'\'')
                {
                    self.quoted(start, self.pos + 1, b'\'', true, Unterminated::String)?;
                    Kind::Str
                } else {
                    Kind::Word
                }
            }
            _ => {
                self.pos += 1;
                Kind::Punct(first)
            }
        };
        Ok(Some(Token {
            kind,
            start,
            text: &self.src[start..self.pos],
        }))
    }

    /// Skips whitespace, `-- line` comments and nesting `/* block */` comments.
    fn skip_trivia(&mut self) -> Result<(), LexError<'a>> {
        let bytes = self.src.as_bytes();
        loop {
            match bytes.get(self.pos) {
                Some(&byte) if is_space(byte) => self.pos += 1,
                Some(b'-') if bytes.get(self.pos + 1) == Some(&b'-') => {
                    // The line break itself is left for the whitespace arm.
                    self.pos = bytes[self.pos..]
                        .iter()
                        .position(|&byte| byte == b'\n' || byte == b'\r')
                        .map_or(bytes.len(), |len| self.pos + len);
                }
                Some(b'/') if bytes.get(self.pos + 1) == Some(&b'*') => self.block_comment()?,
                _ => return Ok(()),
            }
        }
    }

    /// Skips a block comment starting at `self.pos`. PostgreSQL nests them, as the SQL standard
    /// says and most other databases do not: `/* a /* b */ c */` is one comment.
    fn block_comment(&mut self) -> Result<(), LexError<'a>> {
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let mut depth = 0_usize;
        let mut i = start;
        loop {
            match (bytes.get(i), bytes.get(i + 1)) {
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return Ok(());
                    }
                }
                (Some(_), _) => i += 1,
                (None, _) => {
                    return Err(LexError {
                        start,
                        kind: Unterminated::Comment,
                    });
                }
            }
        }
    }

    /// Reads a `quote`-delimited literal whose body starts at `from` (the literal itself at
    /// `start`). A doubled quote is an escaped one; with `backslash_escapes` (`E'...'`) a backslash
    /// also escapes the byte after it, so `E'it\'s'` is one string.
    fn quoted(
        &mut self,
        start: usize,
        from: usize,
        quote: u8,
        backslash_escapes: bool,
        unterminated: Unterminated<'a>,
    ) -> Result<(), LexError<'a>> {
        let bytes = self.src.as_bytes();
        let mut i = from;
        while let Some(&byte) = bytes.get(i) {
            let escaped_next = (byte == b'\\' && backslash_escapes)
                || (byte == quote && bytes.get(i + 1) == Some(&quote));
            if escaped_next {
                i += 2;
            } else if byte == quote {
                self.pos = i + 1;
                return Ok(());
            } else {
                i += 1;
            }
        }
        Err(LexError {
            start,
            kind: unterminated,
        })
    }

    /// If a dollar-quote delimiter (`$$` or `$tag$`) starts at `start`, the offset just past it.
    fn dollar_delimiter_end(&self, start: usize) -> Option<usize> {
        let bytes = self.src.as_bytes();
        let mut i = start + 1;
        // A tag cannot start with a digit: `$1` is a parameter.
        if bytes.get(i).is_some_and(|&byte| is_tag_start(byte)) {
            i = scan_while(bytes, i + 1, is_tag_byte);
        }
        (bytes.get(i) == Some(&b'$')).then_some(i + 1)
    }

    /// Reads a dollar-quoted string up to the next copy of its opening delimiter; nothing inside
    /// is special, not even other `$x$` delimiters.
    fn dollar_quoted(&mut self, start: usize, delimiter_end: usize) -> Result<(), LexError<'a>> {
        let delimiter = &self.src[start..delimiter_end];
        match self.src[delimiter_end..].find(delimiter) {
            Some(offset) => {
                self.pos = delimiter_end + offset + delimiter.len();
                Ok(())
            }
            None => Err(LexError {
                start,
                kind: Unterminated::DollarQuote(delimiter),
            }),
        }
    }
}

/// Tokens up to the end of the text or the first lexical error, for the classifier: the
/// statements it sees come from `split`, which has already reported any error.
impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.next_token().ok().flatten()
    }
}

/// PostgreSQL's whitespace: space, tab, newline, carriage return, vertical tab, form feed.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes of an unquoted identifier, keyword or number. Non-ASCII bytes count as letters, as in
/// PostgreSQL; `$` only ever continues a word, since a leading `$` is lexed first.
fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$' || !byte.is_ascii()
}

fn is_tag_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || !byte.is_ascii()
}

fn is_tag_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || !byte.is_ascii()
}

/// The offset of the first byte at or after `from` that fails `pred`.
fn scan_while(bytes: &[u8], from: usize, pred: fn(u8) -> bool) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.iter().position(|&byte| !pred(byte)))
        .map_or(bytes.len(), |len| from + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(script: &str) -> Vec<String> {
        split(script)
            .unwrap()
            .into_iter()
            .map(|statement| statement.sql)
            .collect()
    }

    fn lines(script: &str) -> Vec<usize> {
        split(script)
            .unwrap()
            .into_iter()
            .map(|statement| statement.line)
            .collect()
    }

    // --- splitting ---

    #[test]
    fn splits_on_semicolons_and_trims() {
        assert_eq!(
            sqls("  SELECT 1 ;\nSELECT 2;\n\n  SELECT\n  3;  \n"),
            ["SELECT 1", "SELECT 2", "SELECT\n  3"]
        );
    }

    #[test]
    fn final_statement_needs_no_semicolon() {
        assert_eq!(sqls("SELECT 1;\nSELECT 2\n"), ["SELECT 1", "SELECT 2"]);
        assert_eq!(sqls("SELECT 1"), ["SELECT 1"]);
    }

    #[test]
    fn empty_statements_are_dropped() {
        assert_eq!(sqls(";;\n ; SELECT 1;; /* c */ ;\n-- x\n;"), ["SELECT 1"]);
    }

    #[test]
    fn comment_only_and_empty_scripts_give_nothing() {
        assert!(split("").unwrap().is_empty());
        assert!(split("  \n\t\r\n").unwrap().is_empty());
        assert!(
            split("-- one\n/* two\n /* three */ */\n-- four")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn leading_comments_are_stripped_and_inner_ones_kept() {
        let statements =
            split("-- header\n/* block */\n\nSELECT 1 -- why\n  , 2 /* c */;").unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0].sql, "SELECT 1 -- why\n  , 2");
        assert_eq!(statements[0].line, 4);
    }

    #[test]
    fn trailing_comment_after_last_statement_is_not_part_of_it() {
        assert_eq!(sqls("SELECT 1\n-- the end\n"), ["SELECT 1"]);
    }

    #[test]
    fn semicolon_in_string() {
        assert_eq!(sqls("SELECT 'a;b'; SELECT 2"), ["SELECT 'a;b'", "SELECT 2"]);
    }

    #[test]
    fn doubled_quote_in_string() {
        assert_eq!(
            sqls("INSERT INTO t VALUES ('it''s; fine', ''''); SELECT 2"),
            ["INSERT INTO t VALUES ('it''s; fine', '''')", "SELECT 2"]
        );
    }

    #[test]
    fn backslash_is_ordinary_in_plain_string() {
        assert_eq!(
            sqls(r"SELECT 'C:\'; SELECT 2"),
            [r"SELECT 'C:\'", "SELECT 2"]
        );
    }

    #[test]
    fn escape_string_backslash_quote() {
        assert_eq!(
            sqls(r"SELECT E'it\'s; here'; SELECT e'a\\'; SELECT E'x''y;'"),
            [
                r"SELECT E'it\'s; here'",
                r"SELECT e'a\\'",
                "SELECT E'x''y;'"
            ]
        );
    }

    #[test]
    fn e_prefix_counts_only_as_a_whole_word() {
        // Read as E-strings, both `\'` would escape the quote and swallow the `;`.
        assert_eq!(
            sqls(r"SELECT * FROM t WHERE'\'=code; SELECT type'\'; SELECT 3"),
            [
                r"SELECT * FROM t WHERE'\'=code",
                r"SELECT type'\'",
                "SELECT 3"
            ]
        );
    }

    #[test]
    fn unicode_escape_string_is_a_plain_string() {
        assert_eq!(
            sqls(r"SELECT U&'d\0061t''a;'; SELECT u&'x'"),
            [r"SELECT U&'d\0061t''a;'", "SELECT u&'x'"]
        );
    }

    #[test]
    fn quoted_identifier_with_semicolon_and_doubled_quote() {
        assert_eq!(
            sqls(r#"CREATE TABLE "a;""b" ("c;" int); SELECT 2"#),
            [r#"CREATE TABLE "a;""b" ("c;" int)"#, "SELECT 2"]
        );
    }

    #[test]
    fn semicolon_in_line_comment() {
        assert_eq!(
            sqls("SELECT 1 -- not; the end\n, 2; SELECT 3"),
            ["SELECT 1 -- not; the end\n, 2", "SELECT 3"]
        );
    }

    #[test]
    fn line_comment_ends_at_lone_cr() {
        assert_eq!(sqls("SELECT 1 -- c\r; SELECT 2"), ["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn semicolon_in_block_comment() {
        assert_eq!(
            sqls("SELECT /* ; */ 1; SELECT 2"),
            ["SELECT /* ; */ 1", "SELECT 2"]
        );
    }

    #[test]
    fn block_comments_nest() {
        assert_eq!(
            sqls("/* a /* b; */ c; */ SELECT 1; SELECT /* x /* y */ ; */ 2; SELECT 3"),
            ["SELECT 1", "SELECT /* x /* y */ ; */ 2", "SELECT 3"]
        );
        assert_eq!(
            sqls("SELECT 1 /**/; /*/ ; */ SELECT 2"),
            ["SELECT 1", "SELECT 2"]
        );
    }

    #[test]
    fn dollar_quoted_body() {
        assert_eq!(
            sqls("SELECT $$a; 'b; \"c$$; SELECT 2"),
            ["SELECT $$a; 'b; \"c$$", "SELECT 2"]
        );
    }

    #[test]
    fn tagged_dollar_quote_with_another_tag_inside() {
        let script = "DO $body$\nBEGIN\n  EXECUTE $x$ SELECT 1; $x$;\n  PERFORM $$;$$;\nEND;\n$body$;\nSELECT 2;";
        let statements = sqls(script);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].starts_with("DO $body$") && statements[0].ends_with("$body$"));
        assert_eq!(statements[1], "SELECT 2");
    }

    #[test]
    fn dollar_tag_is_case_sensitive() {
        assert_eq!(
            sqls("SELECT $a$ $A$; $a$; SELECT 2"),
            ["SELECT $a$ $A$; $a$", "SELECT 2"]
        );
    }

    #[test]
    fn plpgsql_trigger_function() {
        let script = "CREATE FUNCTION f() RETURNS trigger AS $$\nBEGIN\n  NEW.updated_at := now();\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql;\n\nCREATE TRIGGER t BEFORE UPDATE ON x FOR EACH ROW EXECUTE FUNCTION f();\n";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.ends_with("$$ LANGUAGE plpgsql"));
        assert_eq!(statements[0].line, 1);
        assert!(statements[0].transactional);
        assert_eq!(statements[1].line, 8);
        assert!(statements[1].sql.starts_with("CREATE TRIGGER"));
    }

    #[test]
    fn dollar_parameter_is_not_a_dollar_quote() {
        let script = "CREATE FUNCTION f(int) RETURNS text AS 'SELECT $1 || '';'';' LANGUAGE sql;\nSELECT $1, $2; SELECT 3";
        assert_eq!(
            sqls(script),
            [
                "CREATE FUNCTION f(int) RETURNS text AS 'SELECT $1 || '';'';' LANGUAGE sql",
                "SELECT $1, $2",
                "SELECT 3"
            ]
        );
    }

    #[test]
    fn dollar_inside_identifier_is_not_a_dollar_quote() {
        assert_eq!(
            sqls("SELECT a$b$ FROM t; SELECT 2"),
            ["SELECT a$b$ FROM t", "SELECT 2"]
        );
    }

    #[test]
    fn non_ascii_text() {
        assert_eq!(
            sqls("SELECT 'héllo; wörld', \"ü;\" FROM café; SELECT $é$;$é$"),
            ["SELECT 'héllo; wörld', \"ü;\" FROM café", "SELECT $é$;$é$"]
        );
    }

    #[test]
    fn line_numbers_skip_comments_and_blank_lines() {
        assert_eq!(
            lines("SELECT 1;\n\n-- c\n/* multi\nline */ SELECT\n2; SELECT 3;\n\n  SELECT 4"),
            [1, 5, 6, 8]
        );
    }

    #[test]
    fn crlf_and_lone_cr_line_numbers() {
        assert_eq!(
            lines("SELECT 1;\r\n\r\nSELECT 2;\rSELECT 3;\r\n-- c\r\nSELECT\r\n4"),
            [1, 3, 4, 6]
        );
    }

    // --- errors ---

    #[test]
    fn unterminated_string() {
        assert_eq!(
            split("SELECT 1;\nSELECT\n 'abc;\n"),
            Err(SplitError::UnterminatedString { line: 3 })
        );
        assert_eq!(
            split("SELECT 'it''s"),
            Err(SplitError::UnterminatedString { line: 1 })
        );
    }

    #[test]
    fn unterminated_escape_string() {
        assert_eq!(
            split("SELECT 1;\r\nSELECT E'abc\\'"),
            Err(SplitError::UnterminatedString { line: 2 })
        );
    }

    #[test]
    fn unterminated_identifier() {
        assert_eq!(
            split("SELECT 1;\n\nSELECT \"a\"\"b"),
            Err(SplitError::UnterminatedIdentifier { line: 3 })
        );
    }

    #[test]
    fn unterminated_comment_counts_nesting() {
        assert_eq!(
            split("SELECT 1;\n/* a /* b */\nSELECT 2;"),
            Err(SplitError::UnterminatedComment { line: 2 })
        );
    }

    #[test]
    fn unterminated_dollar_quote() {
        assert_eq!(
            split("SELECT 1;\nDO $body$ BEGIN END; $$;\n"),
            Err(SplitError::UnterminatedDollarQuote {
                tag: "$body$".to_owned(),
                line: 2
            })
        );
        assert_eq!(
            split("SELECT $$x"),
            Err(SplitError::UnterminatedDollarQuote {
                tag: "$$".to_owned(),
                line: 1
            })
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            SplitError::UnterminatedDollarQuote {
                tag: "$f$".to_owned(),
                line: 7
            }
            .to_string(),
            "unterminated dollar-quoted string $f$ starting on line 7"
        );
        assert_eq!(
            SplitError::UnterminatedString { line: 2 }.to_string(),
            "unterminated string literal starting on line 2"
        );
    }

    #[test]
    fn copy_from_stdin_is_refused() {
        assert_eq!(
            split("SELECT 1;\n\nCOPY t (a, b) FROM STDIN;\n1\t2\n\\.\n"),
            Err(SplitError::CopyFromStdin { line: 3 })
        );
        assert_eq!(
            split("copy public.t from\n  /* data */ stdin with (format csv)"),
            Err(SplitError::CopyFromStdin { line: 1 })
        );
        assert!(
            split("COPY t FROM STDIN")
                .unwrap_err()
                .to_string()
                .starts_with("statement on line 1 is COPY ... FROM STDIN")
        );
    }

    #[test]
    fn other_copies_are_accepted() {
        assert_eq!(
            sqls(
                "COPY t TO STDOUT; COPY t FROM '/srv/t.csv'; COPY (SELECT * FROM stdin) TO STDOUT"
            ),
            [
                "COPY t TO STDOUT",
                "COPY t FROM '/srv/t.csv'",
                "COPY (SELECT * FROM stdin) TO STDOUT"
            ]
        );
        // Not a COPY statement: `FROM stdin` reads a table.
        assert_eq!(sqls("SELECT * FROM stdin"), ["SELECT * FROM stdin"]);
    }

    // --- BEGIN ATOMIC ---

    #[test]
    fn begin_atomic_body_keeps_its_semicolons() {
        let script = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  SELECT a + 1;\nEND;\nSELECT 2;";
        let statements = split(script).unwrap();
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.ends_with("SELECT a + 1;\nEND"));
        assert_eq!(statements[1].sql, "SELECT 2");
        assert_eq!(statements[1].line, 6);
    }

    #[test]
    fn case_inside_begin_atomic_does_not_close_it() {
        let script = "create procedure p(a int) language sql begin atomic\n  insert into t values (case when a > 0 then 1 else case a when 0 then 0 end end);\n  select 2;\nend; select 3";
        let statements = sqls(script);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].ends_with("select 2;\nend"));
        assert_eq!(statements[1], "select 3");
    }

    #[test]
    fn begin_atomic_words_in_strings_and_comments_are_ignored() {
        assert_eq!(
            sqls(
                "SELECT 'BEGIN ATOMIC'; SELECT /* begin atomic */ 2; SELECT \"begin\" atomic; SELECT 4"
            ),
            [
                "SELECT 'BEGIN ATOMIC'",
                "SELECT /* begin atomic */ 2",
                "SELECT \"begin\" atomic",
                "SELECT 4"
            ]
        );
    }

    #[test]
    fn begin_atomic_with_comment_between_keywords() {
        assert_eq!(
            sqls("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN -- c\n ATOMIC SELECT 1; END; SELECT 2").len(),
            2
        );
    }

    #[test]
    fn case_outside_begin_atomic_is_ordinary() {
        assert_eq!(
            sqls("SELECT CASE WHEN true THEN 1 END; SELECT 2"),
            ["SELECT CASE WHEN true THEN 1 END", "SELECT 2"]
        );
    }

    // --- classification ---

    #[test]
    fn non_transactional_statements() {
        for sql in [
            "CREATE DATABASE app",
            "DROP DATABASE IF EXISTS app",
            "create tablespace fast location '/ssd'",
            "DROP TABLESPACE fast",
            "CREATE SUBSCRIPTION s CONNECTION 'host=a' PUBLICATION p",
            "DROP SUBSCRIPTION s",
            "ALTER SYSTEM SET work_mem = '64MB'",
            "CREATE INDEX CONCURRENTLY idx ON t (c)",
            "CREATE UNIQUE INDEX CONCURRENTLY idx ON t (c)",
            "DROP INDEX CONCURRENTLY idx",
            "DROP INDEX CONCURRENTLY IF EXISTS idx",
            "REINDEX SCHEMA public",
            "REINDEX DATABASE app",
            "REINDEX SYSTEM app",
            "REINDEX VERBOSE DATABASE app",
            "REINDEX (VERBOSE) SCHEMA public",
            "REINDEX (VERBOSE, TABLESPACE fast) DATABASE app",
            "REINDEX TABLE CONCURRENTLY t",
            "REINDEX INDEX CONCURRENTLY idx",
            "REINDEX (CONCURRENTLY) TABLE t",
            "REINDEX (VERBOSE, CONCURRENTLY true) TABLE t",
            "ALTER DATABASE app SET TABLESPACE fast",
            "ALTER DATABASE \"my app\" SET TABLESPACE fast",
            "VACUUM",
            "VACUUM (ANALYZE) t",
            "vacuum full t",
            "DISCARD ALL",
        ] {
            assert!(is_non_transactional(sql), "{sql}");
        }
    }

    #[test]
    fn whitespace_case_and_comments_do_not_matter() {
        assert!(is_non_transactional(
            "  -- lead\n/* c */ create\n\t UNIQUE  /* x */ index\r\nconcurrently i ON t (c)"
        ));
        assert!(is_non_transactional("alter\n\nsystem reset all"));
    }

    #[test]
    fn transactional_near_misses() {
        for sql in [
            "CREATE INDEX idx ON t(c)",
            "CREATE UNIQUE INDEX idx ON t (c)",
            "CREATE INDEX IF NOT EXISTS concurrently_idx ON t (c)",
            "DROP INDEX idx",
            "DROP TABLE database_x",
            "CREATE TABLE tablespace_usage (x int)",
            "REINDEX TABLE t",
            "REINDEX INDEX idx",
            "REINDEX (VERBOSE) TABLE t",
            "REINDEX (CONCURRENTLY false) TABLE t",
            "REINDEX (CONCURRENTLY off, VERBOSE) INDEX idx",
            "ALTER DATABASE app SET work_mem = '64MB'",
            "ALTER DATABASE app RENAME TO app2",
            "ALTER TABLE system ADD COLUMN x int",
            "SELECT 'VACUUM'",
            "SELECT 1; VACUUM",
            "\"VACUUM\"",
            "VACUUMS",
            "DISCARD PLANS",
            "DISCARD TEMP",
            "ANALYZE t",
            "INSERT INTO t VALUES ('CREATE DATABASE x')",
            "",
            "-- VACUUM",
        ] {
            assert!(!is_non_transactional(sql), "{sql}");
        }
    }

    #[test]
    fn split_classifies_statements() {
        let statements = split(
            "CREATE TABLE t (c int);\n-- needs its own run\nCREATE INDEX CONCURRENTLY i ON t (c);\nVACUUM t",
        )
        .unwrap();
        let flags: Vec<_> = statements
            .iter()
            .map(|statement| (statement.line, statement.transactional))
            .collect();
        assert_eq!(flags, [(1, true), (3, false), (4, false)]);
    }

    #[test]
    fn long_script_is_linear() {
        let script = "INSERT INTO t VALUES ('a;b', $$c;d$$); -- x\n".repeat(20_000);
        let statements = split(&script).unwrap();
        assert_eq!(statements.len(), 20_000);
        assert_eq!(statements[19_999].line, 20_000);
    }
}

/// Property tests: the splitter never panics, never loses or merges statements, and its output
/// splits again into itself.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        ";", "'", "''", "\"", "$$", "$a$", "$1", "E'", "\\", "--", "\n", "\r", "/*", "*/", " ",
        "BEGIN", "ATOMIC", "END", "CASE", "COPY", "FROM", "STDIN", "(", ")", "select", "é", "e",
    ];

    /// One piece of a generated statement and its text; `;` inside literals and comments ends
    /// nothing.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(
                &[
                    "select", "x", "t1", "42", "values", "=", "(", ")", ",", "$1", "a$b"
                ][..]
            )
            .prop_map(String::from),
            "[a-z ;$\"/*-]{0,8}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
            "[a-z ;'$/*-]{0,8}"
                .prop_map(|s| format!("E'{}'", s.replace('\\', "").replace('\'', "\\'"))),
            "[a-z ;'$/*-]{0,8}".prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
            "[a-z ;'\"/*-]{0,8}".prop_map(|s| format!("$$ {s} $$")),
            "[a-pr-z ;'\"$/*-]{0,8}".prop_map(|s| format!("$q$ {s} $q$")),
            "[a-z ;'\"$-]{0,8}".prop_map(|s| format!("/* {} /* nested; */ */", s.replace('*', ""))),
            "[a-z ;'\"$/*]{0,8}".prop_map(|s| format!("-- {s}\n")),
        ]
    }

    /// A statement: a word first and last, so its text is exactly its pieces joined.
    fn statement() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..6)
            .prop_map(|middle| format!("select {} x", middle.join(" ")).replace("  ", " "))
    }

    proptest! {
        #![proptest_config(rampart_fuzz::config(2000))]

        #[test]
        fn fuzz_split_never_panics_and_keeps_order(script in rampart_fuzz::text(TOKENS, 40)) {
            let Ok(statements) = split(&script) else { return Ok(()) };
            let mut from = 0;
            let mut line = 1;
            for s in &statements {
                // PostgreSQL's whitespace only: a no-break space is part of an identifier.
                let trimmed = s.sql.trim_matches(|c: char| c.is_ascii() && is_space(c as u8));
                prop_assert!(!s.sql.is_empty() && trimmed == s.sql, "{s:?}");
                let at = script[from..].find(&s.sql).map(|i| from + i);
                prop_assert!(at.is_some(), "{s:?} is not in the script after offset {from}");
                from = at.unwrap_or(from) + s.sql.len();
                prop_assert!(s.line >= line, "{s:?} starts before line {line}");
                line = s.line;
            }
            let again: Vec<String> = statements.iter().map(|s| s.sql.clone()).collect();
            let resplit = split(&again.join(";\n")).map(|v| v.into_iter().map(|s| s.sql).collect::<Vec<_>>());
            prop_assert_eq!(resplit, Ok(again));
        }

        #[test]
        fn prop_split_keeps_every_statement(statements in prop::collection::vec(statement(), 0..8), sep in prop::sample::select(&[";", ";\n", " ;\n\n", ";/* ; */", "; -- ;\n", ";;"][..])) {
            let script = statements.join(sep);
            let got: Vec<String> = split(&script).unwrap().into_iter().map(|s| s.sql).collect();
            prop_assert_eq!(got, statements);
        }
    }
}
