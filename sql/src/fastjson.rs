//! A projecting JSON decoder for the common case: flat JSON objects whose
//! wanted fields are numbers, plain strings, booleans or epoch-millisecond
//! timestamps. It reads only what a query uses — the fields it does not
//! want are checked for being valid JSON and skipped, never built into
//! anything — so a query that reads 2 of 7 fields costs a fraction of a
//! full decode.
//!
//! arrow-json stays the reference: this decoder accepts only input on which
//! it is sure to build the same arrays as arrow-json. Anything else (an
//! escape in a wanted string, a timestamp as text, a number where a string
//! is wanted, a missing NOT NULL field, a duplicate key, bad JSON...) makes
//! [`ProjectedJson::push`] return `false`, and the caller decodes the chunk
//! with arrow-json, which then decides (and names the bad records). The
//! differential property test in `tests.rs` holds the two to the same
//! answers.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

/// Nesting deeper than this in a skipped value is left to arrow-json.
const MAX_DEPTH: usize = 64;

/// Decodes JSON object `values` into one batch of `schema` with the
/// projecting decoder that scans of JSON streams use before arrow-json.
/// `None` when `schema` has a column type it does not build, or a value is
/// outside its path (a scan then decodes the chunk with arrow-json). Public
/// for the benchmarks, which time the decoder alone.
pub fn decode_json_projected<'a>(
    schema: &SchemaRef,
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Option<RecordBatch> {
    let mut decoder = ProjectedJson::try_new(schema)?;
    for value in values {
        if !decoder.push(value) {
            return None;
        }
    }
    decoder.finish()
}

/// A column this decoder can build.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int64,
    Int32,
    Float64,
    Boolean,
    Utf8,
    TimestampMs,
}

/// One field's value in the row being read.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Missing,
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A string without escapes: its bytes in the value.
    Text(usize, usize),
}

enum Builder {
    Int64(Int64Builder),
    Int32(Int32Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

/// Decodes JSON object values into the columns of `schema`, a row per
/// value, when they stay inside the fast path.
pub(crate) struct ProjectedJson {
    schema: SchemaRef,
    names: Vec<Vec<u8>>,
    /// Bit `n` set: a wanted name is `n` bytes long (names under 64 bytes;
    /// longer keys are looked up by name alone).
    name_lengths: u64,
    kinds: Vec<Kind>,
    nullable: Vec<bool>,
    builders: Vec<Builder>,
    slots: Vec<Slot>,
    rows: usize,
    /// The quotes and backslashes of the value being read ([`mark_quotes`]).
    marks: Vec<u64>,
}

impl std::fmt::Debug for ProjectedJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectedJson")
            .field("schema", &self.schema)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ProjectedJson {
    /// A decoder for `schema`, or `None` when a column has a type the fast
    /// path does not build.
    pub(crate) fn try_new(schema: &SchemaRef) -> Option<Self> {
        let mut kinds = Vec::new();
        for field in schema.fields() {
            kinds.push(match field.data_type() {
                DataType::Int64 => Kind::Int64,
                DataType::Int32 => Kind::Int32,
                DataType::Float64 => Kind::Float64,
                DataType::Boolean => Kind::Boolean,
                DataType::Utf8 => Kind::Utf8,
                DataType::Timestamp(TimeUnit::Millisecond, _) => Kind::TimestampMs,
                _ => return None,
            });
        }
        let mut decoder = ProjectedJson {
            schema: schema.clone(),
            names: schema
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().to_vec())
                .collect(),
            name_lengths: schema
                .fields()
                .iter()
                .map(|f| f.name().len())
                .filter(|&len| len < 64)
                .fold(0, |mask, len| mask | 1 << len),
            nullable: schema.fields().iter().map(|f| f.is_nullable()).collect(),
            slots: vec![Slot::Missing; kinds.len()],
            builders: Vec::new(),
            kinds,
            rows: 0,
            marks: Vec::new(),
        };
        decoder.builders = decoder.new_builders(0);
        Some(decoder)
    }

    fn new_builders(&self, capacity: usize) -> Vec<Builder> {
        self.kinds
            .iter()
            .map(|kind| match kind {
                Kind::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
                Kind::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
                Kind::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
                Kind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
                Kind::Utf8 => Builder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
                Kind::TimestampMs => {
                    Builder::TimestampMs(TimestampMillisecondBuilder::with_capacity(capacity))
                }
            })
            .collect()
    }

    /// Reads one value as a row. `false`: the value is outside the fast
    /// path (or not valid JSON); the rows pushed so far are then in an
    /// unknown state, and the caller must [`ProjectedJson::reset`].
    pub(crate) fn push(&mut self, value: &[u8]) -> bool {
        // One pass finds every quote and backslash and tells whether the
        // value is ASCII; only other text needs the full UTF-8 check.
        let ascii = mark_quotes(value, &mut self.marks);
        if !ascii && std::str::from_utf8(value).is_err() {
            return false;
        }
        self.slots.fill(Slot::Missing);
        let marks = std::mem::take(&mut self.marks);
        let mut reader = Reader {
            bytes: value,
            marks: &marks,
            at: 0,
        };
        let whole = self.read_object(&mut reader) && {
            reader.skip_whitespace();
            reader.at == value.len()
        };
        self.marks = marks;
        if !whole {
            return false;
        }
        for (field, slot) in self.slots.iter().enumerate() {
            if matches!(slot, Slot::Missing | Slot::Null) && !self.nullable[field] {
                return false;
            }
        }
        for (field, slot) in self.slots.iter().enumerate() {
            append(&mut self.builders[field], *slot, value);
        }
        self.rows += 1;
        true
    }

    /// The rows pushed so far, as a batch of the schema.
    pub(crate) fn finish(&mut self) -> Option<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let fresh = self.new_builders(rows);
        let builders = std::mem::replace(&mut self.builders, fresh);
        let columns: Vec<ArrayRef> = builders
            .into_iter()
            .zip(self.schema.fields())
            .map(|(builder, field)| -> ArrayRef {
                match builder {
                    Builder::Int64(mut b) => Arc::new(b.finish()),
                    Builder::Int32(mut b) => Arc::new(b.finish()),
                    Builder::Float64(mut b) => Arc::new(b.finish()),
                    Builder::Boolean(mut b) => Arc::new(b.finish()),
                    Builder::Utf8(mut b) => Arc::new(b.finish()),
                    Builder::TimestampMs(mut b) => {
                        let zone = match field.data_type() {
                            DataType::Timestamp(_, zone) => zone.clone(),
                            _ => None,
                        };
                        Arc::new(b.finish().with_timezone_opt(zone))
                    }
                }
            })
            .collect();
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .ok()
    }

    /// Drops the rows pushed so far.
    pub(crate) fn reset(&mut self) {
        self.rows = 0;
        self.builders = self.new_builders(0);
    }

    /// The wanted field named `key`. Most keys are not wanted, and most
    /// of those are told by their length alone.
    fn field_of(&self, key: &[u8]) -> Option<usize> {
        if key.len() < 64 && self.name_lengths & (1 << key.len()) == 0 {
            return None;
        }
        self.names
            .iter()
            .position(|name| name.first() == key.first() && name.as_slice() == key)
    }

    fn read_object(&mut self, reader: &mut Reader<'_>) -> bool {
        reader.skip_whitespace();
        if !reader.eat(b'{') {
            return false;
        }
        reader.skip_whitespace();
        if reader.eat(b'}') {
            return true;
        }
        // Whitespace is looked for only where the expected byte is not
        // found: machine-made JSON seldom has any.
        loop {
            if reader.peek() != Some(b'"') {
                reader.skip_whitespace();
            }
            let Some((start, end)) = reader.plain_string() else {
                return false;
            };
            if !reader.eat(b':') {
                reader.skip_whitespace();
                if !reader.eat(b':') {
                    return false;
                }
            }
            reader.skip_whitespace();
            let key = &reader.bytes[start..end];
            match self.field_of(key) {
                Some(field) => {
                    if !matches!(self.slots[field], Slot::Missing) {
                        // A duplicate key: arrow-json's rule decides.
                        return false;
                    }
                    match read_wanted(reader, self.kinds[field]) {
                        Some(slot) => self.slots[field] = slot,
                        None => return false,
                    }
                }
                None => {
                    if !reader.skip_value(0) {
                        return false;
                    }
                }
            }
            match reader.peek() {
                Some(b',') => reader.at += 1,
                Some(b'}') => {
                    reader.at += 1;
                    return true;
                }
                _ => {
                    reader.skip_whitespace();
                    if !reader.eat(b',') {
                        return reader.eat(b'}');
                    }
                }
            }
        }
    }
}

fn append(builder: &mut Builder, slot: Slot, value: &[u8]) {
    match (builder, slot) {
        (Builder::Int64(b), Slot::Int(v)) => b.append_value(v),
        (Builder::Int32(b), Slot::Int(v)) => b.append_value(v as i32),
        (Builder::Float64(b), Slot::Float(v)) => b.append_value(v),
        (Builder::Boolean(b), Slot::Bool(v)) => b.append_value(v),
        (Builder::TimestampMs(b), Slot::Int(v)) => b.append_value(v),
        (Builder::Utf8(b), Slot::Text(start, end)) => {
            // The whole value is valid UTF-8 and the slice ends at quotes.
            b.append_value(std::str::from_utf8(&value[start..end]).unwrap_or_default());
        }
        (Builder::Int64(b), _) => b.append_null(),
        (Builder::Int32(b), _) => b.append_null(),
        (Builder::Float64(b), _) => b.append_null(),
        (Builder::Boolean(b), _) => b.append_null(),
        (Builder::Utf8(b), _) => b.append_null(),
        (Builder::TimestampMs(b), _) => b.append_null(),
    }
}

/// A wanted field's value, or `None` to leave the value to arrow-json.
fn read_wanted(reader: &mut Reader<'_>, kind: Kind) -> Option<Slot> {
    if reader.literal(b"null") {
        return Some(Slot::Null);
    }
    match kind {
        Kind::Int64 | Kind::TimestampMs => reader.integer().map(Slot::Int),
        Kind::Int32 => reader
            .integer()
            .filter(|v| i32::try_from(*v).is_ok())
            .map(Slot::Int),
        Kind::Float64 => {
            let (start, end, _) = reader.number()?;
            std::str::from_utf8(&reader.bytes[start..end])
                .ok()?
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Slot::Float)
        }
        Kind::Boolean => {
            if reader.literal(b"true") {
                Some(Slot::Bool(true))
            } else if reader.literal(b"false") {
                Some(Slot::Bool(false))
            } else {
                None
            }
        }
        Kind::Utf8 => reader.plain_string().map(|(s, e)| Slot::Text(s, e)),
    }
}

/// Marks every `"` and `\\` of `value` in `marks`, a bit per byte (bit
/// `i % 64` of word `i / 64`), and says whether `value` is ASCII. One pass
/// of 64 bytes at a time, so that finding the end of a string is a bit
/// scan rather than a byte loop. The marks end with a zero word.
fn mark_quotes(value: &[u8], marks: &mut Vec<u64>) -> bool {
    marks.clear();
    let mut high = 0u8;
    let (blocks, rest) = value.as_chunks::<64>();
    for block in blocks {
        let (word, block_high) = mark_block(block);
        marks.push(word);
        high |= block_high;
    }
    if !rest.is_empty() {
        let (word, block_high) = match value.last_chunk::<64>() {
            // The last 64 bytes, read in place: their first bytes were
            // marked already and are shifted out.
            Some(last) => {
                let (word, block_high) = mark_block(last);
                (word >> (64 - rest.len()), block_high)
            }
            // Zero padding: neither a quote, a backslash nor high.
            None => {
                let mut block = [0u8; 64];
                block[..rest.len()].copy_from_slice(rest);
                mark_block(&block)
            }
        };
        marks.push(word);
        high |= block_high;
    }
    // A zero word past the end, so that a bit scan can always read two.
    marks.push(0);
    high == 0
}

/// The quote-or-backslash bits of 64 bytes, and a nonzero byte if any of
/// them is not ASCII. SSE2, which every x86-64 processor has.
#[cfg(target_arch = "x86_64")]
fn mark_block(block: &[u8; 64]) -> (u64, u8) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut word = 0u64;
    let mut high = 0i32;
    // SAFETY: SSE2 is part of the x86-64 baseline, and each load reads 16
    // bytes inside `block` (unaligned loads).
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        for lane in 0..4 {
            let bytes = _mm_loadu_si128(block.as_ptr().add(16 * lane).cast::<__m128i>());
            let hits = _mm_or_si128(
                _mm_cmpeq_epi8(bytes, quote),
                _mm_cmpeq_epi8(bytes, backslash),
            );
            word |= u64::from(_mm_movemask_epi8(hits) as u16) << (16 * lane);
            high |= _mm_movemask_epi8(bytes);
        }
    }
    (word, u8::from(high != 0))
}

#[cfg(not(target_arch = "x86_64"))]
fn mark_block(block: &[u8; 64]) -> (u64, u8) {
    let mut word = 0u64;
    let mut high = 0u8;
    for (i, &byte) in block.iter().enumerate() {
        word |= u64::from(byte == b'"' || byte == b'\\') << i;
        high |= byte & 0x80;
    }
    (word, high)
}

struct Reader<'a> {
    bytes: &'a [u8],
    /// The quotes and backslashes of `bytes` ([`mark_quotes`]).
    marks: &'a [u64],
    at: usize,
}

impl Reader<'_> {
    /// The first `"` or `\\` at or after `from`.
    fn next_quote_or_backslash(&self, from: usize) -> Option<usize> {
        // Two words at once, so that a string that ends in the next word
        // (most of them) takes no loop: whether a string crosses a word
        // boundary is a branch that is hard to predict.
        let word = from / 64;
        let low = *self.marks.get(word)?;
        let high = self.marks.get(word + 1).copied().unwrap_or(0);
        let window = ((u128::from(high) << 64) | u128::from(low)) >> (from % 64);
        if window != 0 {
            return Some(from + window.trailing_zeros() as usize);
        }
        let mut word = word + 2;
        loop {
            let bits = *self.marks.get(word)?;
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_whitespace(&mut self) {
        // One compare when there is none, as in most machine-made JSON.
        if self.peek().is_some_and(|b| b <= b' ') {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
                self.at += 1;
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) && !self.ident_follows(self.at + word.len()) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// True when a letter or digit follows at `at` (`nullx` is not `null`).
    fn ident_follows(&self, at: usize) -> bool {
        self.bytes
            .get(at)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
    }

    /// A string with no escapes: the bounds of its content.
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        // Raw control characters pass, as arrow-json lets them.
        let end = self.next_quote_or_backslash(start)?;
        if self.bytes[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        Some((start, end))
    }

    /// A string that is skipped: simple escapes allowed (`\uXXXX` is left
    /// to arrow-json).
    fn skip_string(&mut self) -> bool {
        if !self.eat(b'"') {
            return false;
        }
        loop {
            let Some(at) = self.next_quote_or_backslash(self.at) else {
                return false;
            };
            self.at = at;
            if self.bytes[self.at] == b'"' {
                self.at += 1;
                return true;
            }
            match self.bytes.get(self.at + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 2,
                _ => return false,
            }
        }
    }

    /// A JSON number: its bounds and whether it is an integer (no fraction,
    /// no exponent).
    fn number(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.at;
        self.eat(b'-');
        let digits = digits_at(self.bytes, self.at);
        // No digits, or a leading zero followed by more digits.
        if digits == 0 || (digits > 1 && self.bytes[self.at] == b'0') {
            return None;
        }
        self.at += digits;
        if let None | Some(b',' | b'}' | b']') = self.peek() {
            // An integer, ended by what usually follows a value.
            return Some((start, self.at, true));
        }
        let mut integral = true;
        if self.eat(b'.') {
            integral = false;
            let digits = digits_at(self.bytes, self.at);
            if digits == 0 {
                return None;
            }
            self.at += digits;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            let digits = digits_at(self.bytes, self.at);
            if digits == 0 {
                return None;
            }
            self.at += digits;
        }
        if self.ident_follows(self.at) {
            return None;
        }
        Some((start, self.at, integral))
    }

    /// A JSON integer that fits an i64.
    fn integer(&mut self) -> Option<i64> {
        let (start, end, integral) = self.number()?;
        if !integral {
            return None;
        }
        // `number` checked the text: an optional minus, then digits. A
        // negative number accumulates downwards, so i64::MIN fits.
        let (negative, digits) = match &self.bytes[start..end] {
            [b'-', rest @ ..] => (true, rest),
            digits => (false, digits),
        };
        if digits.len() <= 18 {
            // Below 10^18: no overflow to check.
            let value = digits_value(digits) as i64;
            return Some(if negative { -value } else { value });
        }
        let mut value: i64 = 0;
        for &digit in digits {
            let digit = i64::from(digit - b'0');
            value = value.checked_mul(10)?;
            value = if negative {
                value.checked_sub(digit)?
            } else {
                value.checked_add(digit)?
            };
        }
        Some(value)
    }

    /// Skips any JSON value, checking that it is well formed.
    fn skip_value(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => {
                self.at += 1;
                self.skip_whitespace();
                if self.eat(b'}') {
                    return true;
                }
                loop {
                    self.skip_whitespace();
                    if !self.skip_string() {
                        return false;
                    }
                    self.skip_whitespace();
                    if !self.eat(b':') {
                        return false;
                    }
                    self.skip_whitespace();
                    if !self.skip_value(depth + 1) {
                        return false;
                    }
                    self.skip_whitespace();
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b'}');
                }
            }
            Some(b'[') => {
                self.at += 1;
                self.skip_whitespace();
                if self.eat(b']') {
                    return true;
                }
                loop {
                    self.skip_whitespace();
                    if !self.skip_value(depth + 1) {
                        return false;
                    }
                    self.skip_whitespace();
                    if self.eat(b',') {
                        continue;
                    }
                    return self.eat(b']');
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(_) => self.number().is_some(),
            None => false,
        }
    }
}

/// How many ASCII digits `bytes` has from `from` on, eight at a time.
fn digits_at(bytes: &[u8], from: usize) -> usize {
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let others = non_digits(word);
        if others != 0 {
            return at + (others.trailing_zeros() / 8) as usize - from;
        }
        at += 8;
    }
    while bytes.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at - from
}

/// The value of at most 19 ASCII digits, eight at a time.
fn digits_value(digits: &[u8]) -> u64 {
    let (eights, rest) = digits.as_chunks::<8>();
    let mut value = 0u64;
    for eight in eights {
        value = value
            .wrapping_mul(100_000_000)
            .wrapping_add(eight_digits(u64::from_le_bytes(*eight)));
    }
    for &digit in rest {
        value = value.wrapping_mul(10).wrapping_add(u64::from(digit - b'0'));
    }
    value
}

/// The value of eight ASCII digits read as a little-endian word (the
/// first digit in the lowest byte): adjacent digits are combined into
/// pairs, then pairs into fours, by multiplications whose carries stay
/// out of the bits kept (Lemire's `parse_eight_digits_unrolled`).
fn eight_digits(word: u64) -> u64 {
    const LOW: u64 = 0x0000_00FF_0000_00FF;
    let v = word.wrapping_sub(0x3030_3030_3030_3030);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    (v & LOW)
        .wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(((v >> 16) & LOW).wrapping_mul(1 + (10_000 << 32)))
        >> 32
}

/// The high bit of each byte of `word` that is not an ASCII digit. Exact
/// for the lowest such byte, which is all [`digits_at`] needs: borrows and
/// carries between bytes only start at a byte that is not a digit.
fn non_digits(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let less = word.wrapping_sub(ONES * u64::from(b'0'));
    (less | less.wrapping_add(ONES * 0x76)) & (ONES * 0x80)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    use datafusion::arrow::json::ReaderBuilder;
    use datafusion::arrow::record_batch::RecordBatch;
    use proptest::prelude::*;

    fn schema(nullable_a: bool) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, nullable_a),
            Field::new("b", DataType::Utf8, true),
            // A longer name that junk keys share a start with (`record`).
            Field::new(
                "date_time_c",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("d", DataType::Float64, true),
            Field::new("e", DataType::Boolean, true),
            Field::new("f", DataType::Int32, true),
        ]))
    }

    /// arrow-json's answer for the chunk, as the scan's feed uses it: each
    /// value must be exactly one JSON value.
    fn reference(schema: &SchemaRef, values: &[Vec<u8>]) -> Option<RecordBatch> {
        let mut decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(values.len() + 1)
            .build_decoder()
            .ok()?;
        for value in values {
            let before = decoder.len();
            let read = decoder.decode(value).ok()?;
            if read != value.len() || decoder.has_partial_record() || decoder.len() != before + 1 {
                return None;
            }
        }
        decoder.flush().ok()?
    }

    fn projected(schema: &SchemaRef, values: &[Vec<u8>]) -> Option<RecordBatch> {
        super::decode_json_projected(schema, values.iter().map(Vec::as_slice))
    }

    /// A JSON value of some shape, as text.
    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<i32>().prop_map(|v| v.to_string()),
            (-1e6f64..1e6).prop_map(|v| format!("{v}")),
            Just("1e3".to_string()),
            Just("-0".to_string()),
            Just("0.5E-2".to_string()),
            Just("12345678901234567890".to_string()),
            // Every digit count around the eight-digit steps of the parser.
            (0u32..20, any::<u64>(), any::<bool>()).prop_map(|(digits, v, negative)| {
                let v = v % 10u64.pow(digits.min(19)).max(1);
                format!("{}{v}", if negative { "-" } else { "" })
            }),
            Just(i64::MIN.to_string()),
            Just(i64::MAX.to_string()),
            Just("-9223372036854775809".to_string()),
            "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
            // Long enough to cross the 64-byte blocks of `mark_quotes`,
            // with escaped quotes and backslashes anywhere.
            r#"(?:[a-z ]|\\"|\\\\){0,100}"#.prop_map(|s| format!("\"{s}\"")),
            Just(r#""tab\tquote\" slash\/ back\\""#.to_string()),
            Just(r#""\u00e9""#.to_string()),
            Just("\"2026-01-01T00:00:00Z\"".to_string()),
            Just("\"42\"".to_string()),
            Just("\"caf\u{e9} \u{1F600}\"".to_string()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-f]{1,2}", inner), 0..4).prop_map(|v| {
                    let fields: Vec<String> = v
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\": {v}"))
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                }),
            ]
        })
    }

    /// A value for the field `name`: mostly of its column's type, now and
    /// then anything.
    fn field_value(name: &'static str) -> BoxedStrategy<String> {
        let typed: BoxedStrategy<String> = match name {
            "a" | "date_time_c" => prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                (-1000i64..1000).prop_map(|v| v.to_string()),
            ]
            .boxed(),
            "f" => any::<i32>().prop_map(|v| v.to_string()).boxed(),
            "b" => prop_oneof![
                "[a-z :/?=]{0,12}".prop_map(|s| format!("\"{s}\"")),
                "[a-z :/?=]{50,150}".prop_map(|s| format!("\"{s}\"")),
                Just("\"caf\u{e9} \u{1F600}\"".to_string()),
            ]
            .boxed(),
            "d" => prop_oneof![
                (-1e9f64..1e9).prop_map(|v| format!("{v}")),
                any::<i32>().prop_map(|v| v.to_string()),
                Just("2.5e-3".to_string()),
            ]
            .boxed(),
            "e" => prop_oneof![Just("true".to_string()), Just("false".to_string())].boxed(),
            _ => json_value().boxed(),
        };
        prop_oneof![8 => typed, 1 => Just("null".to_string()), 1 => json_value()].boxed()
    }

    /// A record: fields of the schema (mostly well typed), junk fields,
    /// spacing, and now and then a damaged byte.
    fn record() -> impl Strategy<Value = Vec<u8>> {
        let field = prop::sample::select(vec![
            "a",
            "b",
            "date_time_c",
            "d",
            "e",
            "f",
            "junk",
            "url",
            "date_time_x",
            "date_tim",
        ])
        .prop_flat_map(|name| (Just(name), field_value(name)));
        (
            prop::collection::vec(field, 0..8),
            prop_oneof![Just(""), Just(" "), Just("\n  ")],
            prop::option::weighted(0.05, (any::<prop::sample::Index>(), any::<u8>())),
        )
            .prop_map(|(fields, space, damage)| {
                let body: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{space}\"{k}\"{space}:{space}{v}"))
                    .collect();
                let mut bytes = format!("{space}{{{}{space}}}{space}", body.join(",")).into_bytes();
                if let Some((at, byte)) = damage {
                    let at = at.index(bytes.len());
                    bytes[at] = byte;
                }
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whenever the projecting decoder takes a chunk, arrow-json takes
        /// it too and builds the same arrays.
        #[test]
        fn agrees_with_arrow_json(
            values in prop::collection::vec(record(), 1..6),
            nullable_a in any::<bool>(),
            projection in prop::sample::subsequence(vec![0usize, 1, 2, 3, 4, 5], 0..=6),
        ) {
            let schema = Arc::new(schema(nullable_a).project(&projection).expect("projection"));
            if let Some(fast) = projected(&schema, &values) {
                let slow = reference(&schema, &values);
                let texts: Vec<String> =
                    values.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                prop_assert!(slow.is_some(), "arrow-json refuses what the fast path took: {texts:?}");
                let slow = slow.expect("checked");
                prop_assert_eq!(fast.num_rows(), values.len());
                if !projection.is_empty() {
                    prop_assert_eq!(&fast, &slow, "values {:?}", texts);
                }
            }
        }
    }

    proptest! {
        /// The SIMD pass marks exactly the quotes and backslashes, and
        /// tells ASCII as `is_ascii` does.
        #[test]
        fn marks_every_quote_and_backslash(
            value in prop::collection::vec(
                prop_oneof![Just(b'"'), Just(b'\\'), Just(b'a'), Just(0x80u8), any::<u8>()],
                0..300,
            ),
        ) {
            let mut marks = Vec::new();
            let ascii = super::mark_quotes(&value, &mut marks);
            prop_assert_eq!(ascii, value.is_ascii());
            // A word per 64 bytes, and a zero word past the end.
            prop_assert_eq!(marks.len(), value.len().div_ceil(64) + 1);
            prop_assert_eq!(marks.last(), Some(&0));
            for (i, word) in marks.iter().enumerate() {
                for bit in 0..64 {
                    let marked = word >> bit & 1 == 1;
                    let byte = value.get(64 * i + bit).copied();
                    prop_assert_eq!(marked, matches!(byte, Some(b'"' | b'\\')), "byte {}", 64 * i + bit);
                }
            }
        }
    }

    proptest! {
        /// Integers (their digits found eight at a time) are what
        /// `str::parse` gives, and what JSON does not allow is refused.
        #[test]
        fn reads_integers_as_parse_does(
            // Followed by nothing, a byte or two, or enough for whole
            // eight-byte words to be read past the digits.
            text in "-?[0-9]{0,24}(?:[,}. eE]?[0-9]?|, \"padding\": 12345678)",
        ) {
            let marks = Vec::new();
            let mut reader = super::Reader { bytes: text.as_bytes(), marks: &marks, at: 0 };
            let read = reader.integer();
            let number: String = text
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            let digits = number.trim_start_matches('-');
            let rest = &text[number.len()..];
            let leading_zero = digits.len() > 1 && digits.starts_with('0');
            let fraction = rest.starts_with(['.', 'e', 'E']);
            let json_integer = !(digits.is_empty() || leading_zero || fraction);
            let expected = if json_integer { number.parse::<i64>().ok() } else { None };
            prop_assert_eq!(read, expected, "{}", text);
            if read.is_some() {
                prop_assert_eq!(reader.at, number.len());
            }
        }
    }

    #[test]
    fn takes_the_nexmark_shape_and_leaves_the_rest() {
        let schema = Arc::new(schema(true).project(&[0, 2]).expect("projection"));
        let bids: Vec<Vec<u8>> = vec![
            br#"{"a": 1007, "bidder": 3, "b": "web", "url": "https://x/y?z=1", "date_time_c": 1767225600123, "extra": "\\ escaped \" yes"}"#.to_vec(),
            br#"{"date_time_c": null, "a": -5}"#.to_vec(),
            br#"{}"#.to_vec(),
        ];
        let fast = projected(&schema, &bids).expect("inside the fast path");
        assert_eq!(Some(fast), reference(&schema, &bids));
        // A timestamp as text is arrow-json's to parse.
        assert!(
            projected(
                &schema,
                &[br#"{"date_time_c": "2026-01-01T00:00:00Z"}"#.to_vec()]
            )
            .is_none()
        );
        // So is anything that is not one JSON object.
        for bad in [
            &b"{"[..],
            b"[1]",
            b"{\"a\": 1} {}",
            b"{\"a\": 01}",
            b"{\"a\": tru}",
        ] {
            assert!(projected(&schema, &[bad.to_vec()]).is_none(), "{bad:?}");
        }
    }
}
