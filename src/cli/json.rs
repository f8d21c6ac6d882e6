//! The `--json` output of `pixgate ls`, `gc` and `bench`: serde_json's serializer (and
//! its escaping and numbers), with a layout of one record per line.
//!
//! The outer containers are spread over lines, an item per line indented two spaces a
//! level, as `serde_json::to_string_pretty` would; below a given depth each container
//! stays on one line with `, ` and `: ` between its parts. So an `ls --json` listing
//! is one segment object per line, which `grep` and line-oriented readers can take
//! apart, and still one JSON document.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// `value` as JSON text: containers at depth `open` or less (the outermost is depth 1)
/// are spread over lines, deeper ones are kept on one line. `open = 1` makes an array of
/// objects one object per line.
pub(crate) fn to_string<T: Serialize + ?Sized>(value: &T, open: usize) -> String {
    let mut out = Vec::new();
    let layout = Lines {
        open,
        depth: 0,
        has_value: false,
    };
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, layout);
    // Writing into a Vec cannot fail, and the records serialized here are structs,
    // strings, numbers and lists, which serde_json always accepts.
    value
        .serialize(&mut serializer)
        .expect("serializing a record into memory");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// A [`Formatter`] spreading containers down to depth `open` over lines.
struct Lines {
    open: usize,
    /// The depth of the container being written: 0 outside any.
    depth: usize,
    /// Whether the container being written has an item yet (for where `]` goes).
    has_value: bool,
}

impl Lines {
    fn spread(&self) -> bool {
        self.depth <= self.open
    }

    fn begin<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn end<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        let spread = self.spread();
        self.depth -= 1;
        if spread && self.has_value {
            newline(writer, self.depth)?;
        }
        writer.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        match (self.spread(), first) {
            (true, true) => newline(writer, self.depth),
            (true, false) => {
                writer.write_all(b",")?;
                newline(writer, self.depth)
            }
            (false, true) => Ok(()),
            (false, false) => writer.write_all(b", "),
        }
    }
}

fn newline<W: ?Sized + io::Write>(writer: &mut W, depth: usize) -> io::Result<()> {
    writer.write_all(b"\n")?;
    for _ in 0..depth {
        writer.write_all(b"  ")?;
    }
    Ok(())
}

impl Formatter for Lines {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.begin(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.end(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.begin(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.end(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outer_levels_take_a_line_per_item_and_inner_ones_stay_on_theirs() {
        let value = json!({
            "count": 2,
            "segments": [{"name": "a", "shape": [3, 4]}, {"name": "b", "shape": []}],
            "failed": [],
        });
        assert_eq!(
            to_string(&value, 2),
            "{\n  \"count\": 2,\n  \"failed\": [],\n  \"segments\": [\n    \
             {\"name\": \"a\", \"shape\": [3, 4]},\n    {\"name\": \"b\", \"shape\": []}\n  ]\n}"
        );
        let list = json!([{"pid": 1, "fd": 5}, {"pid": 2, "fd": 6}]);
        assert_eq!(
            to_string(&list, 1),
            "[\n  {\"fd\": 5, \"pid\": 1},\n  {\"fd\": 6, \"pid\": 2}\n]"
        );
        assert_eq!(to_string(&json!([]), 1), "[]");
        assert_eq!(to_string(&json!({"a": {}}), 0), "{\"a\": {}}");
        // Whatever the layout, it is the same document.
        for open in 0..4 {
            let back: serde_json::Value = serde_json::from_str(&to_string(&value, open)).unwrap();
            assert_eq!(back, value);
        }
    }
}
