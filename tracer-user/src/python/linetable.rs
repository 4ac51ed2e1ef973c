//! The 3.11+ location table (`co_linetable`): instruction offset → source position.
//!
//! Format (CPython Objects/locations.md, same in 3.11–3.13): a sequence of entries, each starting
//! with a byte `1 CCCC LLL` — code C, and L+1 code units covered — followed by bytes with the top
//! bit clear. Lines are deltas from a running line that starts at `co_firstlineno`.
//!   C 0–9   short form: same line; one byte: column = C*8 + bits 4–6, end = column + bits 0–3
//!   C 10–12 one-line form: line += C-10; column and end column as one byte each
//!   C 13    no columns: line += svarint
//!   C 14    long form: line += svarint, end line = line + varint, column+1, end column+1 varints
//!   C 15    no location (line None; the running line is unchanged)
//! Varints are little-endian 6-bit groups, bit 6 set = more follow; a signed varint keeps its
//! sign in bit 0.
//!
//! 3.9's `co_lnotab` and 3.10's `co_linetable` are simpler byte-pair tables, decoded straight
//! into [`Lines`] (see [`Lines::decode`]).

use super::layout::LineFormat;

/// Source position of one range of code units. Columns are 0-based, as in `co_positions()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: Option<u32>,
    pub end_line: Option<u32>,
    pub column: Option<u32>,
    pub end_column: Option<u32>,
}

/// One decoded entry: code units `[start, end)` and their position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub start: u32,
    pub end: u32,
    pub position: Position,
}

/// Iterator over the entries of a table. Stops (rather than panicking or looping) at the first
/// malformed byte: the table came from another process.
pub struct Entries<'a> {
    table: &'a [u8],
    pos: usize,
    line: i64,
    unit: u32,
}

pub fn entries(table: &[u8], firstlineno: i32) -> Entries<'_> {
    Entries {
        table,
        pos: 0,
        line: i64::from(firstlineno),
        unit: 0,
    }
}

impl Entries<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.table.get(self.pos)?;
        // Continuation bytes never have the top bit set; one that does starts the next entry,
        // so this entry is truncated.
        if b & 0x80 != 0 {
            return None;
        }
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u32> {
        let mut b = self.byte()?;
        let mut val = u32::from(b & 63);
        let mut shift = 0;
        while b & 64 != 0 {
            b = self.byte()?;
            shift += 6;
            if shift > 30 {
                return None;
            }
            val |= u32::from(b & 63) << shift;
        }
        Some(val)
    }

    fn svarint(&mut self) -> Option<i64> {
        let v = self.varint()?;
        let mag = i64::from(v >> 1);
        Some(if v & 1 != 0 { -mag } else { mag })
    }

    fn line_now(&self) -> Option<u32> {
        u32::try_from(self.line).ok()
    }
}

/// A column from the long form, stored +1 so that 0 means "unknown".
fn plus_one(v: u32) -> Option<u32> {
    v.checked_sub(1)
}

impl Iterator for Entries<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        let first = *self.table.get(self.pos)?;
        if first & 0x80 == 0 {
            return None;
        }
        self.pos += 1;
        let code = (first >> 3) & 15;
        let len = u32::from(first & 7) + 1;
        let position = match code {
            15 => Position {
                line: None,
                end_line: None,
                column: None,
                end_column: None,
            },
            14 => {
                self.line += self.svarint()?;
                let end_delta = self.varint()?;
                let column = plus_one(self.varint()?);
                let end_column = plus_one(self.varint()?);
                let line = self.line_now();
                Position {
                    line,
                    end_line: line.and_then(|l| l.checked_add(end_delta)),
                    column,
                    end_column,
                }
            }
            13 => {
                self.line += self.svarint()?;
                Position {
                    line: self.line_now(),
                    end_line: self.line_now(),
                    column: None,
                    end_column: None,
                }
            }
            10..=12 => {
                self.line += i64::from(code - 10);
                let column = self.byte()?;
                let end_column = self.byte()?;
                Position {
                    line: self.line_now(),
                    end_line: self.line_now(),
                    column: Some(column.into()),
                    end_column: Some(end_column.into()),
                }
            }
            _ => {
                let second = self.byte()?;
                let column = (u32::from(code) << 3) | u32::from(second >> 4);
                Position {
                    line: self.line_now(),
                    end_line: self.line_now(),
                    column: Some(column),
                    end_column: Some(column + u32::from(second & 15)),
                }
            }
        };
        let start = self.unit;
        self.unit = self.unit.checked_add(len)?;
        Some(Entry {
            start,
            end: self.unit,
            position,
        })
    }
}

/// Append the range ending at `end` (exclusive) with `line`; runs of one line (columns differ)
/// collapse into one range.
fn push_range(ranges: &mut Vec<(u32, Option<u32>)>, end: u32, line: Option<u32>) {
    match ranges.last_mut() {
        Some(last) if last.1 == line => last.0 = end,
        _ => ranges.push((end, line)),
    }
}

/// Line of the instruction at code unit `unit`, like `PyCode_Addr2Line(code, unit * 2)`:
/// a negative unit (a frame that has not started, 3.11/3.12 `prev_instr` one before the code)
/// is the first line; past the table or a no-location entry is `None`. The reference [`Lines`]
/// is tested against (and fuzzed against, fuzz.rs); the reader uses [`Lines`], decoded once per
/// code object.
#[cfg(any(test, fuzzing))]
pub fn line_at(table: &[u8], firstlineno: i32, unit: i64) -> Option<u32> {
    if unit < 0 {
        return u32::try_from(firstlineno).ok();
    }
    let unit = u32::try_from(unit).ok()?;
    entries(table, firstlineno)
        .find(|e| e.start <= unit && unit < e.end)
        .and_then(|e| e.position.line)
}

/// A location table decoded once into line ranges, for code objects whose frames are looked up
/// again and again (decoding a long function's table from the start for every frame was a tenth
/// of a stack read).
#[derive(Debug, Default)]
pub struct Lines {
    first: Option<u32>,
    /// (end code unit, line), ascending by end; a unit belongs to the first range ending after it.
    ranges: Vec<(u32, Option<u32>)>,
}

impl Lines {
    /// Decode a table in `format`.
    pub fn decode(format: LineFormat, table: &[u8], firstlineno: i32) -> Lines {
        match format {
            LineFormat::Locations => Lines::new(table, firstlineno),
            LineFormat::Lnotab => Lines::lnotab(table, firstlineno),
            LineFormat::Linetable310 => Lines::linetable310(table, firstlineno),
        }
    }

    pub fn new(table: &[u8], firstlineno: i32) -> Lines {
        let mut ranges: Vec<(u32, Option<u32>)> = Vec::new();
        for e in entries(table, firstlineno) {
            push_range(&mut ranges, e.end, e.position.line);
        }
        Lines {
            first: u32::try_from(firstlineno).ok(),
            ranges,
        }
    }

    /// 3.9's `co_lnotab` (Objects/lnotab_notes.txt): byte pairs (bytecode offset increment,
    /// signed line increment). As `PyCode_Addr2Line`: an instruction's line is the first line
    /// plus the line increments of every pair whose offset is at or before it; the last line
    /// runs to the end of the code.
    fn lnotab(table: &[u8], firstlineno: i32) -> Lines {
        let mut ranges = Vec::new();
        let mut line = i64::from(firstlineno);
        let mut addr: u32 = 0;
        for pair in table.chunks_exact(2) {
            let next = addr.saturating_add(u32::from(pair[0]));
            if next > addr {
                push_range(&mut ranges, next / 2, u32::try_from(line).ok());
            }
            addr = next;
            line += i64::from(pair[1] as i8);
        }
        push_range(&mut ranges, u32::MAX, u32::try_from(line).ok());
        Lines {
            first: u32::try_from(firstlineno).ok(),
            ranges,
        }
    }

    /// 3.10's `co_linetable` (Objects/lnotab_notes.txt of 3.10): byte pairs (bytes of code
    /// covered, signed line delta), each pair a range; a delta of -128 means "no line" for its
    /// range and leaves the running line as it was. Past the last range: no line.
    fn linetable310(table: &[u8], firstlineno: i32) -> Lines {
        let mut ranges = Vec::new();
        let mut line = i64::from(firstlineno);
        let mut addr: u32 = 0;
        for pair in table.chunks_exact(2) {
            let delta = pair[1] as i8;
            let this = if delta == -128 {
                None
            } else {
                line += i64::from(delta);
                u32::try_from(line).ok()
            };
            let next = addr.saturating_add(u32::from(pair[0]));
            if next > addr {
                push_range(&mut ranges, next / 2, this);
            }
            addr = next;
        }
        Lines {
            first: u32::try_from(firstlineno).ok(),
            ranges,
        }
    }

    /// Same answer as [`line_at`] on the table this was built from.
    pub fn at(&self, unit: i64) -> Option<u32> {
        if unit < 0 {
            return self.first;
        }
        let unit = u32::try_from(unit).ok()?;
        let i = self.ranges.partition_point(|&(end, _)| end <= unit);
        self.ranges.get(i).and_then(|&(_, line)| line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A code object's table as recorded from a real interpreter, with what CPython said about it.
    pub struct Vector {
        pub name: &'static str,
        pub firstlineno: i32,
        /// `len(co_code) // 2`
        pub units: u32,
        /// `co_linetable.hex()`
        pub linetable: &'static str,
        /// `co_lines()` in code units: (start, end, line or -1)
        pub lines: &'static [(u32, u32, i64)],
        /// `co_positions()` run-length encoded: (start, end, line, end_line, col, end_col), -1 = None
        pub positions: &'static [(u32, u32, i64, i64, i64, i64)],
    }

    mod vectors {
        use super::Vector;
        include!("testdata/linetable_vectors.rs");
    }

    const ALL: &[&Vector] = &[
        &vectors::PY311_SIMPLE,
        &vectors::PY311_LOOP,
        &vectors::PY311_MULTILINE,
        &vectors::PY311_HANDLERS,
        &vectors::PY311_JUMPS,
        &vectors::PY311_GEN,
        &vectors::PY312_SIMPLE,
        &vectors::PY312_LOOP,
        &vectors::PY312_MULTILINE,
        &vectors::PY312_HANDLERS,
        &vectors::PY312_JUMPS,
        &vectors::PY312_GEN,
        &vectors::PY313_SIMPLE,
        &vectors::PY313_LOOP,
        &vectors::PY313_MULTILINE,
        &vectors::PY313_HANDLERS,
        &vectors::PY313_JUMPS,
        &vectors::PY313_GEN,
    ];

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn opt(v: i64) -> Option<u32> {
        u32::try_from(v).ok()
    }

    #[test]
    fn positions_match_cpython() {
        for v in ALL {
            let table = hex(v.linetable);
            let mut per_unit = Vec::new();
            for e in entries(&table, v.firstlineno) {
                for _ in e.start..e.end {
                    per_unit.push(e.position);
                }
            }
            assert_eq!(per_unit.len() as u32, v.units, "{}: units covered", v.name);
            for &(start, end, line, end_line, col, end_col) in v.positions {
                let want = Position {
                    line: opt(line),
                    end_line: opt(end_line),
                    column: opt(col),
                    end_column: opt(end_col),
                };
                for u in start..end {
                    assert_eq!(per_unit[u as usize], want, "{}: unit {u}", v.name);
                }
            }
        }
    }

    #[test]
    fn lines_match_cpython() {
        for v in ALL {
            let table = hex(v.linetable);
            for &(start, end, line) in v.lines {
                for u in start..end {
                    assert_eq!(
                        line_at(&table, v.firstlineno, i64::from(u)),
                        opt(line),
                        "{}: unit {u}",
                        v.name
                    );
                }
            }
            assert_eq!(line_at(&table, v.firstlineno, i64::from(v.units)), None);
        }
    }

    #[test]
    fn decoded_ranges_agree_with_the_table() {
        for v in ALL {
            let table = hex(v.linetable);
            let lines = Lines::new(&table, v.firstlineno);
            for u in -1..=i64::from(v.units) + 2 {
                assert_eq!(
                    lines.at(u),
                    line_at(&table, v.firstlineno, u),
                    "{} unit {u}",
                    v.name
                );
            }
        }
    }

    #[test]
    fn vectors_cover_every_entry_kind() {
        let mut seen = [false; 16];
        for v in ALL {
            let table = hex(v.linetable);
            for b in table.iter().filter(|b| *b & 0x80 != 0) {
                seen[usize::from((b >> 3) & 15)] = true;
            }
        }
        for code in [0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15] {
            assert!(seen[code], "no entry with code {code} in the vectors");
        }
    }

    #[test]
    fn before_the_first_instruction_is_the_first_line() {
        let v = &vectors::PY312_SIMPLE;
        assert_eq!(
            line_at(&hex(v.linetable), v.firstlineno, -1),
            opt(v.firstlineno.into())
        );
    }

    #[test]
    fn malformed_tables_end_quietly() {
        // Truncated long form, a continuation byte first, an endless varint.
        for table in [
            &[0xf0u8, 0x02][..],
            &[0x05, 0x80][..],
            &[0xf0, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f][..],
            &[][..],
        ] {
            assert!(entries(table, 1).count() <= 1);
            assert_eq!(line_at(table, 1, 5), None);
        }
        // Arbitrary bytes never panic.
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let t: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = entries(&t, i32::MAX).count();
            let _ = line_at(&t, -5, 40);
        }
    }
}
