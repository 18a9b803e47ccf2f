//! The Sluice dialect: DataFusion's SQL plus the statements of SPEC §3
//! (`CREATE TOPIC`, `CREATE STREAM ... WATERMARK FOR`, `SHOW`, `DESCRIBE`,
//! `STOP QUERY`, `INSERT INTO stream`), the `EMIT` clause, and Flink's
//! spelling of window table functions.
//!
//! Built on the sqlparser that DataFusion re-exports, without forking it:
//! a token pass splits statements, rewrites Flink's
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), ...))` into `TUMBLE(t, c, ...)` and
//! cuts off a trailing `EMIT` clause (which sqlparser would take for a table
//! alias); sqlparser's own `Parser` then parses each piece.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{ColumnDef, Expr, Ident, Query, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::duration::{expr_to_duration, parse_duration};
use crate::error::{Error, Result};

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE TOPIC [IF NOT EXISTS] name [WITH (...)]`
    CreateTopic {
        name: String,
        if_not_exists: bool,
        options: WithOptions,
    },
    /// `DROP TOPIC [IF EXISTS] name`
    DropTopic { name: String, if_exists: bool },
    /// `CREATE STREAM [IF NOT EXISTS] name [(columns, WATERMARK ...)] [WITH (...)] [AS query]`
    CreateStream(Box<CreateStream>),
    /// `DROP STREAM [IF EXISTS] name`
    DropStream { name: String, if_exists: bool },
    /// `SHOW TOPICS`, `SHOW STREAMS`, `SHOW QUERIES`
    Show(ShowObject),
    /// `DESCRIBE name`
    Describe { name: String },
    /// `EXPLAIN <query>`
    Explain(StreamingQuery),
    /// `STOP QUERY id`
    StopQuery { id: String },
    /// `INSERT INTO stream [(columns)] VALUES (...), ...`
    InsertValues {
        stream: String,
        columns: Vec<String>,
        rows: Vec<Vec<Expr>>,
    },
    /// `INSERT INTO stream [(columns)] SELECT ... [EMIT ...]`
    InsertQuery {
        stream: String,
        columns: Vec<String>,
        query: StreamingQuery,
    },
    /// A query: bounded without `EMIT`, continuous with it.
    Query(StreamingQuery),
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowObject {
    Topics,
    Streams,
    Queries,
}

/// `CREATE STREAM`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStream {
    pub name: String,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDef>,
    pub watermark: Option<WatermarkDef>,
    pub options: WithOptions,
    /// `AS SELECT ...`: a persistent query writing into this stream.
    pub query: Option<StreamingQuery>,
}

/// `WATERMARK FOR column AS expression`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkDef {
    pub column: Ident,
    pub expr: Expr,
}

impl WatermarkDef {
    /// The watermark delay: the expression must be `column` or
    /// `column - INTERVAL ...`.
    pub fn delay(&self) -> Result<Duration> {
        use datafusion::sql::sqlparser::ast::BinaryOperator;
        let is_column = |expr: &Expr| matches!(expr, Expr::Identifier(ident) if ident_name(ident) == ident_name(&self.column));
        match &self.expr {
            expr if is_column(expr) => Ok(Duration::ZERO),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Minus,
                right,
            } if is_column(left) => expr_to_duration(right),
            Expr::Nested(inner) => WatermarkDef {
                column: self.column.clone(),
                expr: inner.as_ref().clone(),
            }
            .delay(),
            other => Err(Error::Unsupported(format!(
                "WATERMARK FOR {col} AS {other}: the watermark must be `{col}` or `{col} - INTERVAL '<n>' <unit>`",
                col = self.column
            ))),
        }
    }
}

/// A query and its optional `EMIT` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamingQuery {
    pub query: Box<Query>,
    pub emit: Option<Emit>,
}

/// `EMIT <mode> [EVERY <interval>] [WITH (...)]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    pub mode: EmitMode,
    /// The trigger interval; `None` means the default (1 second).
    pub every: Option<Duration>,
    /// Query options: `start`, `idle_timeout`, `late_topic`, ...
    pub options: WithOptions,
}

/// When a continuous query emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// `ON WINDOW CLOSE` (or `FINAL`): each window once, when the watermark passes its end.
    OnWindowClose,
    /// `CHANGES`: rows created or changed since the last trigger.
    Changes,
    /// `COMPLETE`: the whole result at every trigger.
    Complete,
}

/// `WITH (key = value, ...)`: keys are lowercased; each value is a literal.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WithOptions {
    entries: BTreeMap<String, Value>,
}

impl WithOptions {
    /// True when there are no options.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The raw value of an option.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    /// Removes and returns a string (or identifier) option.
    pub fn take_string(&mut self, key: &str) -> Result<Option<String>> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(Value::SingleQuotedString(s) | Value::DoubleQuotedString(s)) => Ok(Some(s)),
            Some(Value::Number(n, _)) => Ok(Some(n)),
            Some(Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(Error::invalid(format!(
                "option {key} = {other}: expected a string"
            ))),
        }
    }

    /// Removes and returns a non-negative integer option.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(Value::Number(n, _)) => n.parse().map(Some).map_err(|_| {
                Error::invalid(format!("option {key} = {n}: expected a whole number"))
            }),
            Some(Value::SingleQuotedString(s)) => s.trim().parse().map(Some).map_err(|_| {
                Error::invalid(format!("option {key} = '{s}': expected a whole number"))
            }),
            Some(other) => Err(Error::invalid(format!(
                "option {key} = {other}: expected a whole number"
            ))),
        }
    }

    /// Removes and returns a duration option (`'7 days'`, or a number of ms).
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(Value::Number(n, _)) => n
                .parse()
                .map(|ms| Some(Duration::from_millis(ms)))
                .map_err(|_| {
                    Error::invalid(format!(
                        "option {key} = {n}: expected milliseconds or a duration like '10 seconds'"
                    ))
                }),
            Some(Value::SingleQuotedString(s)) => parse_duration(&s).map(Some),
            Some(other) => Err(Error::invalid(format!(
                "option {key} = {other}: expected a duration like '10 seconds'"
            ))),
        }
    }

    /// Fails naming any option nobody took: a typo must not pass silently.
    pub fn finish(self, what: &str, known: &[&str]) -> Result<()> {
        match self.entries.keys().next() {
            None => Ok(()),
            Some(key) => Err(Error::invalid(format!(
                "unknown option \"{key}\" for {what} (known options: {})",
                known.join(", ")
            ))),
        }
    }
}

/// The name of an identifier as the catalog keys it: lowercased unless quoted.
pub fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// One statement's text, as a client splits a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementText {
    /// The statement, without its `;`.
    pub text: String,
    /// True for a continuous query (`SELECT ... EMIT ...`): it streams rows
    /// (a push query) instead of answering once.
    pub continuous: bool,
}

/// Splits a script at the `;`s outside quotes and comments, without
/// planning anything; a statement that does not parse is still returned
/// (`continuous: false`) so the server can say what is wrong with it.
pub fn split_statements(sql: &str) -> Result<Vec<StatementText>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| syntax(e.message, e.location))?;
    let mut pieces = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut finish = |current: Vec<TokenWithSpan>| {
        if !has_content(&current) {
            return;
        }
        let text: String = current.iter().map(|t| t.token.to_string()).collect();
        let continuous = matches!(
            parse_statement(current),
            Ok(Statement::Query(StreamingQuery { emit: Some(_), .. }))
        );
        pieces.push(StatementText {
            text: text.trim().to_string(),
            continuous,
        });
    };
    for token in tokens {
        if token.token == Token::SemiColon {
            finish(std::mem::take(&mut current));
        } else {
            current.push(token);
        }
    }
    finish(current);
    Ok(pieces)
}

/// Parses one or more statements separated by `;`.
pub fn parse_sql(sql: &str) -> Result<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| syntax(e.message, e.location))?;
    let mut statements = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            if has_content(&current) {
                statements.push(parse_statement(std::mem::take(&mut current))?);
            }
            current.clear();
        } else {
            current.push(token);
        }
    }
    if has_content(&current) {
        statements.push(parse_statement(current)?);
    }
    if statements.is_empty() {
        return Err(Error::invalid("no SQL statement given"));
    }
    Ok(statements)
}

fn syntax(message: impl Into<String>, location: Location) -> Error {
    Error::Syntax {
        message: message.into(),
        line: location.line,
        column: location.column,
    }
}

fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::EOF)
}

fn has_content(tokens: &[TokenWithSpan]) -> bool {
    tokens.iter().any(|t| !is_blank(&t.token))
}

/// sqlparser's messages end in "at Line: L, Column: C"; lift that out.
fn from_parser_error(error: ParserError, fallback: Location) -> Error {
    let text = match error {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "statement is nested too deeply".to_string(),
    };
    if let Some(at) = text.rfind(" at Line: ") {
        let (message, place) = text.split_at(at);
        let mut numbers = place
            .trim_start_matches(" at Line: ")
            .split(", Column: ")
            .map(|n| n.trim().parse::<u64>().ok());
        if let (Some(Some(line)), Some(Some(column))) = (numbers.next(), numbers.next()) {
            return Error::Syntax {
                message: message.to_string(),
                line,
                column,
            };
        }
    }
    syntax(text, fallback)
}

/// The uppercased word of a token, if it is an unquoted word.
fn word(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// Indexes of the non-blank tokens.
fn significant(tokens: &[TokenWithSpan]) -> Vec<usize> {
    (0..tokens.len())
        .filter(|i| !is_blank(&tokens[*i].token))
        .collect()
}

/// The index of the first token outside parentheses for which `is_it(token,
/// next significant token)` holds.
fn find_top_level(
    tokens: &[TokenWithSpan],
    is_it: impl Fn(&Token, Option<&Token>) -> bool,
) -> Option<usize> {
    let sig = significant(tokens);
    let mut depth = 0i32;
    for (n, &i) in sig.iter().enumerate() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            token if depth == 0 => {
                let next = sig.get(n + 1).map(|j| &tokens[*j].token);
                if is_it(token, next) {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn parse_statement(tokens: Vec<TokenWithSpan>) -> Result<Statement> {
    let tokens = rewrite_flink_windows(tokens);
    let sig = significant(&tokens);
    let start = tokens[sig[0]].span.start;
    let words: Vec<Option<String>> = sig
        .iter()
        .take(3)
        .map(|i| word(&tokens[*i].token))
        .collect();
    let first = words.first().cloned().flatten().unwrap_or_default();
    let second = words.get(1).cloned().flatten().unwrap_or_default();
    let dialect = GenericDialect {};
    match (first.as_str(), second.as_str()) {
        ("CREATE", "TOPIC") => {
            let mut p = StatementParser::new(&dialect, tokens, start, 2);
            let if_not_exists =
                p.parser
                    .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = p.object_name()?;
            let options = p.optional_with()?;
            p.end()?;
            Ok(Statement::CreateTopic {
                name,
                if_not_exists,
                options,
            })
        }
        ("DROP", "TOPIC") | ("DROP", "STREAM") => {
            let mut p = StatementParser::new(&dialect, tokens, start, 2);
            let if_exists = p.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = p.object_name()?;
            p.end()?;
            Ok(if second == "TOPIC" {
                Statement::DropTopic { name, if_exists }
            } else {
                Statement::DropStream { name, if_exists }
            })
        }
        ("CREATE", "STREAM") => parse_create_stream(&dialect, tokens, start),
        ("SHOW", object @ ("TOPICS" | "STREAMS" | "QUERIES")) => {
            let mut p = StatementParser::new(&dialect, tokens, start, 2);
            p.end()?;
            Ok(Statement::Show(match object {
                "TOPICS" => ShowObject::Topics,
                "STREAMS" => ShowObject::Streams,
                _ => ShowObject::Queries,
            }))
        }
        ("DESCRIBE" | "DESC", _) => {
            let mut p = StatementParser::new(&dialect, tokens, start, 1);
            let name = p.object_name()?;
            p.end()?;
            Ok(Statement::Describe { name })
        }
        ("STOP", "QUERY") => {
            let mut p = StatementParser::new(&dialect, tokens, start, 2);
            let token = p.parser.next_token();
            let id = match token.token {
                Token::Word(w) => w.value,
                Token::SingleQuotedString(s) => s,
                Token::Number(n, _) => n,
                other => {
                    return Err(syntax(
                        format!("expected a query id after STOP QUERY, found {other}"),
                        token.span.start,
                    ));
                }
            };
            p.end()?;
            Ok(Statement::StopQuery { id })
        }
        ("EXPLAIN", _) => {
            let rest: Vec<TokenWithSpan> = tokens.into_iter().skip(sig[0] + 1).collect();
            if !has_content(&rest) {
                return Err(syntax("expected a query after EXPLAIN", start));
            }
            match parse_statement(rest)? {
                Statement::Query(query) => Ok(Statement::Explain(query)),
                _ => Err(Error::Unsupported(
                    "EXPLAIN works on queries (SELECT ...) only".to_string(),
                )),
            }
        }
        ("INSERT", _) => parse_insert(&dialect, tokens, start),
        ("SELECT" | "WITH" | "VALUES", _) => Ok(Statement::Query(parse_streaming_query(
            &dialect, tokens, start,
        )?)),
        ("", _) if tokens[sig[0]].token == Token::LParen => Ok(Statement::Query(
            parse_streaming_query(&dialect, tokens, start)?,
        )),
        _ => Err(Error::Unsupported(format!(
            "unsupported statement starting with {}: Sluice runs CREATE/DROP TOPIC, CREATE/DROP STREAM, \
             SHOW TOPICS|STREAMS|QUERIES, DESCRIBE, EXPLAIN, STOP QUERY, INSERT INTO and SELECT",
            tokens[sig[0]].token
        ))),
    }
}

/// A sqlparser `Parser` over one statement's tokens, past its first words.
struct StatementParser<'a> {
    parser: Parser<'a>,
    start: Location,
}

impl<'a> StatementParser<'a> {
    fn new(
        dialect: &'a GenericDialect,
        tokens: Vec<TokenWithSpan>,
        start: Location,
        skip_words: usize,
    ) -> Self {
        let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens);
        for _ in 0..skip_words {
            parser.next_token();
        }
        StatementParser { parser, start }
    }

    fn err(&self, error: ParserError) -> Error {
        from_parser_error(error, self.start)
    }

    fn object_name(&mut self) -> Result<String> {
        let ident = self.parser.parse_identifier().map_err(|e| self.err(e))?;
        Ok(ident_name(&ident))
    }

    /// `WITH (key = literal, ...)` if present.
    fn optional_with(&mut self) -> Result<WithOptions> {
        if !self.parser.parse_keyword(Keyword::WITH) {
            return Ok(WithOptions::default());
        }
        self.with_body()
    }

    fn with_body(&mut self) -> Result<WithOptions> {
        self.parser
            .expect_token(&Token::LParen)
            .map_err(|e| self.err(e))?;
        let mut options = WithOptions::default();
        loop {
            let at = self.parser.peek_token().span.start;
            let key = ident_name(&self.parser.parse_identifier().map_err(|e| self.err(e))?);
            self.parser
                .expect_token(&Token::Eq)
                .map_err(|e| self.err(e))?;
            let token = self.parser.next_token();
            let value = match token.token {
                Token::SingleQuotedString(s) => Value::SingleQuotedString(s),
                Token::Number(n, long) => Value::Number(n, long),
                Token::Word(w) if w.keyword == Keyword::TRUE => Value::Boolean(true),
                Token::Word(w) if w.keyword == Keyword::FALSE => Value::Boolean(false),
                Token::Word(w) => Value::SingleQuotedString(w.value),
                other => {
                    return Err(syntax(
                        format!("expected a value for option {key}, found {other}"),
                        token.span.start,
                    ));
                }
            };
            if options.entries.insert(key.clone(), value).is_some() {
                return Err(syntax(format!("option {key} is given twice"), at));
            }
            if self.parser.consume_token(&Token::Comma) {
                continue;
            }
            self.parser
                .expect_token(&Token::RParen)
                .map_err(|e| self.err(e))?;
            return Ok(options);
        }
    }

    fn end(&mut self) -> Result<()> {
        let token = self.parser.next_token();
        if token.token == Token::EOF {
            Ok(())
        } else {
            Err(syntax(
                format!("unexpected {} at the end of the statement", token.token),
                token.span.start,
            ))
        }
    }
}

fn parse_create_stream(
    dialect: &GenericDialect,
    tokens: Vec<TokenWithSpan>,
    start: Location,
) -> Result<Statement> {
    // Split off `AS <query>` at the top level first: the query has its own grammar.
    let as_at = find_top_level(
        &tokens,
        |token, _| matches!(token, Token::Word(w) if w.keyword == Keyword::AS && w.quote_style.is_none()),
    );
    let (head, query_tokens) = match as_at {
        Some(i) => {
            let mut head = tokens;
            let rest = head.split_off(i + 1);
            head.pop();
            (head, Some(rest))
        }
        None => (tokens, None),
    };
    let mut p = StatementParser::new(dialect, head, start, 2);
    let if_not_exists = p
        .parser
        .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.object_name()?;
    let mut columns = Vec::new();
    let mut watermark = None;
    if p.parser.consume_token(&Token::LParen) {
        loop {
            let next = p.parser.peek_token();
            if word(&next.token).as_deref() == Some("WATERMARK") {
                p.parser.next_token();
                p.parser
                    .expect_keyword(Keyword::FOR)
                    .map_err(|e| p.err(e))?;
                let column = p.parser.parse_identifier().map_err(|e| p.err(e))?;
                p.parser.expect_keyword(Keyword::AS).map_err(|e| p.err(e))?;
                let expr = p.parser.parse_expr().map_err(|e| p.err(e))?;
                if watermark.is_some() {
                    return Err(syntax(
                        "a stream has at most one WATERMARK",
                        next.span.start,
                    ));
                }
                watermark = Some(WatermarkDef { column, expr });
            } else {
                columns.push(p.parser.parse_column_def().map_err(|e| p.err(e))?);
            }
            if p.parser.consume_token(&Token::Comma) {
                continue;
            }
            p.parser
                .expect_token(&Token::RParen)
                .map_err(|e| p.err(e))?;
            break;
        }
    }
    let options = p.optional_with()?;
    p.end()?;
    let query = match query_tokens {
        Some(tokens) if has_content(&tokens) => {
            Some(parse_streaming_query(dialect, tokens, start)?)
        }
        Some(_) => return Err(syntax("expected a query after AS", start)),
        None => None,
    };
    // Whether a stream may lack columns depends on its format (a raw
    // stream has its `value`); the catalog decides.
    Ok(Statement::CreateStream(Box::new(CreateStream {
        name,
        if_not_exists,
        columns,
        watermark,
        options,
        query,
    })))
}

fn parse_insert(
    dialect: &GenericDialect,
    tokens: Vec<TokenWithSpan>,
    start: Location,
) -> Result<Statement> {
    let mut p = StatementParser::new(dialect, tokens, start, 1);
    p.parser
        .expect_keyword(Keyword::INTO)
        .map_err(|e| p.err(e))?;
    let stream = p.object_name()?;
    let mut columns = Vec::new();
    // `(a, b)` is a column list unless it starts a parenthesized query.
    if p.parser.peek_token().token == Token::LParen {
        let checkpoint = p.parser.index();
        p.parser.next_token();
        if matches!(
            word(&p.parser.peek_token().token).as_deref(),
            Some("SELECT" | "WITH" | "VALUES")
        ) {
            while p.parser.index() > checkpoint {
                p.parser.prev_token();
            }
        } else {
            columns = p
                .parser
                .parse_comma_separated(|parser| parser.parse_identifier())
                .map_err(|e| p.err(e))?
                .iter()
                .map(ident_name)
                .collect();
            p.parser
                .expect_token(&Token::RParen)
                .map_err(|e| p.err(e))?;
        }
    }
    if p.parser.parse_keyword(Keyword::VALUES) {
        let mut rows = Vec::new();
        loop {
            p.parser
                .expect_token(&Token::LParen)
                .map_err(|e| p.err(e))?;
            let row = p
                .parser
                .parse_comma_separated(Parser::parse_expr)
                .map_err(|e| p.err(e))?;
            p.parser
                .expect_token(&Token::RParen)
                .map_err(|e| p.err(e))?;
            rows.push(row);
            if !p.parser.consume_token(&Token::Comma) {
                break;
            }
        }
        p.end()?;
        return Ok(Statement::InsertValues {
            stream,
            columns,
            rows,
        });
    }
    // INSERT INTO stream SELECT ...: the rest is a (streaming) query.
    let position = p.parser.index();
    let rest: Vec<TokenWithSpan> = p.parser.into_tokens().into_iter().skip(position).collect();
    if !has_content(&rest) {
        return Err(syntax(
            "expected VALUES or a query after INSERT INTO",
            start,
        ));
    }
    let query = parse_streaming_query(dialect, rest, start)?;
    Ok(Statement::InsertQuery {
        stream,
        columns,
        query,
    })
}

/// Parses a query with an optional trailing `EMIT` clause.
fn parse_streaming_query(
    dialect: &GenericDialect,
    tokens: Vec<TokenWithSpan>,
    start: Location,
) -> Result<StreamingQuery> {
    let emit_at = find_top_level(&tokens, |token, next| {
        word(token).as_deref() == Some("EMIT")
            && matches!(
                next.and_then(word).as_deref(),
                Some("ON" | "FINAL" | "CHANGES" | "COMPLETE")
            )
    });
    let (query_tokens, emit_tokens) = match emit_at {
        Some(i) => {
            let mut query = tokens;
            let emit = query.split_off(i);
            (query, Some(emit))
        }
        None => (tokens, None),
    };
    let mut p = StatementParser::new(dialect, query_tokens, start, 0);
    let query = p.parser.parse_query().map_err(|e| p.err(e))?;
    p.end()?;
    let emit = match emit_tokens {
        Some(tokens) => Some(parse_emit(dialect, tokens, start)?),
        None => None,
    };
    Ok(StreamingQuery { query, emit })
}

fn parse_emit(
    dialect: &GenericDialect,
    tokens: Vec<TokenWithSpan>,
    start: Location,
) -> Result<Emit> {
    let mut p = StatementParser::new(dialect, tokens, start, 1);
    let token = p.parser.next_token();
    let mode = match word(&token.token).as_deref() {
        Some("FINAL") => EmitMode::OnWindowClose,
        Some("CHANGES") => EmitMode::Changes,
        Some("COMPLETE") => EmitMode::Complete,
        Some("ON") => {
            let window = p.parser.next_token();
            let close = p.parser.next_token();
            if word(&window.token).as_deref() != Some("WINDOW")
                || word(&close.token).as_deref() != Some("CLOSE")
            {
                return Err(syntax(
                    "expected ON WINDOW CLOSE after EMIT",
                    token.span.start,
                ));
            }
            EmitMode::OnWindowClose
        }
        _ => {
            return Err(syntax(
                "expected ON WINDOW CLOSE, FINAL, CHANGES or COMPLETE after EMIT",
                token.span.start,
            ));
        }
    };
    let mut every = None;
    if word(&p.parser.peek_token().token).as_deref() == Some("EVERY") {
        p.parser.next_token();
        let at = p.parser.peek_token().span.start;
        let expr = p.parser.parse_expr().map_err(|e| p.err(e))?;
        let interval = expr_to_duration(&expr).map_err(|e| syntax(e.to_string(), at))?;
        if interval.is_zero() {
            return Err(syntax("the trigger interval must be positive", at));
        }
        every = Some(interval);
    }
    let options = p.optional_with()?;
    p.end()?;
    Ok(Emit {
        mode,
        every,
        options,
    })
}

/// Rewrites Flink's `TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), ...))` (and HOP,
/// SESSION) into Sluice's `TUMBLE(t, c, ...)`.
fn rewrite_flink_windows(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let sig = significant(&tokens);
    let mut drop = vec![false; tokens.len()];
    let mut n = 0;
    while n + 3 < sig.len() {
        let is_table = matches!(&tokens[sig[n]].token, Token::Word(w) if w.keyword == Keyword::TABLE && w.quote_style.is_none());
        let function = word(&tokens[sig[n + 2]].token);
        if is_table
            && tokens[sig[n + 1]].token == Token::LParen
            && matches!(function.as_deref(), Some("TUMBLE" | "HOP" | "SESSION"))
            && tokens[sig[n + 3]].token == Token::LParen
        {
            // Find the `)` closing `TABLE(`.
            let mut depth = 0;
            let mut close = None;
            for (m, &i) in sig.iter().enumerate().skip(n + 1) {
                match tokens[i].token {
                    Token::LParen => depth += 1,
                    Token::RParen => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(m);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(close) = close {
                drop[sig[n]] = true;
                drop[sig[n + 1]] = true;
                drop[sig[close]] = true;
                // `TABLE t` as the first argument, and `DESCRIPTOR(c)`.
                let mut m = n + 4;
                if m < close
                    && matches!(&tokens[sig[m]].token, Token::Word(w) if w.keyword == Keyword::TABLE)
                {
                    drop[sig[m]] = true;
                    m += 1;
                }
                while m + 3 < close {
                    if word(&tokens[sig[m]].token).as_deref() == Some("DESCRIPTOR")
                        && tokens[sig[m + 1]].token == Token::LParen
                        && tokens[sig[m + 3]].token == Token::RParen
                    {
                        drop[sig[m]] = true;
                        drop[sig[m + 1]] = true;
                        drop[sig[m + 3]] = true;
                        m += 4;
                    } else {
                        m += 1;
                    }
                }
                n = close + 1;
                continue;
            }
        }
        n += 1;
    }
    tokens
        .into_iter()
        .zip(drop)
        .filter_map(|(token, dropped)| (!dropped).then_some(token))
        .collect()
}
