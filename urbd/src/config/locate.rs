//! Maps byte offsets of a TOML text to lines, tables and keys, for one-line error messages.
//! A line-based scan: good enough for hand-written configuration files.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    Top,
    Table(String),
    Array(String, usize),
}

/// Where an offset is.
#[derive(Debug, Clone)]
pub(super) struct At {
    /// 1-based line.
    pub line: usize,
    header: Header,
    key: Option<String>,
}

impl At {
    /// "the top level", "[net]", "[[node]] node[1]".
    pub fn table_label(&self) -> String {
        match &self.header {
            Header::Top => "the top level".to_string(),
            Header::Table(name) => format!("[{name}]"),
            Header::Array(name, i) => format!("[[{name}]] {name}[{i}]"),
        }
    }

    /// "secret", "net.timeout-ms", "node[1].address".
    pub fn qualified_key(&self) -> Option<String> {
        let key = self.key.as_deref()?;
        Some(match &self.header {
            Header::Top => key.to_string(),
            Header::Table(name) => format!("{name}.{key}"),
            Header::Array(name, i) => format!("{name}[{i}].{key}"),
        })
    }
}

pub(super) struct Locator<'a> {
    lines: Vec<(usize, &'a str)>,
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').trim_matches('\'').to_string()
}

/// The header a line opens, if it is a header line.
fn header_of(line: &str) -> Option<(bool, String)> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("[[") {
        let end = rest.find("]]")?;
        return Some((true, unquote(&rest[..end])));
    }
    if let Some(rest) = t.strip_prefix('[') {
        let end = rest.find(']')?;
        return Some((false, unquote(&rest[..end])));
    }
    None
}

fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (key, _) = t.split_once('=')?;
    let key = unquote(key);
    (!key.is_empty()).then_some(key)
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        for line in text.split('\n') {
            lines.push((start, line));
            start += line.len() + 1;
        }
        Locator { lines }
    }

    /// Walks the lines with the header in force at each.
    fn walk(&self) -> impl Iterator<Item = (usize, Header, &'a str)> + '_ {
        let mut header = Header::Top;
        let mut counts: Vec<(String, usize)> = Vec::new();
        self.lines.iter().enumerate().map(move |(i, (_, line))| {
            if let Some((array, name)) = header_of(line) {
                header = if array {
                    let n = match counts.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, c)) => {
                            *c += 1;
                            *c
                        }
                        None => {
                            counts.push((name.clone(), 0));
                            0
                        }
                    };
                    Header::Array(name, n)
                } else {
                    Header::Table(name)
                };
            }
            (i, header.clone(), *line)
        })
    }

    /// The line, table and key at byte `offset`.
    pub fn at(&self, offset: usize) -> At {
        let idx = self
            .lines
            .iter()
            .rposition(|(start, _)| *start <= offset)
            .unwrap_or(0);
        let (header, line) = self
            .walk()
            .nth(idx)
            .map(|(_, h, l)| (h, l))
            .unwrap_or((Header::Top, ""));
        At {
            line: idx + 1,
            header,
            key: key_of(line),
        }
    }

    /// The 1-based line of `key` in `table` (`None`: the top level; `Some((name, i))`: `[name]`
    /// for i = 0, or the i-th `[[name]]`).
    pub fn find_key(&self, table: Option<(&str, usize)>, key: &str) -> Option<usize> {
        self.walk()
            .find(|(_, header, line)| {
                let in_table = match (table, header) {
                    (None, Header::Top) => true,
                    (Some((name, 0)), Header::Table(t)) => t == name,
                    (Some((name, i)), Header::Array(t, j)) => t == name && *j == i,
                    _ => false,
                };
                in_table && key_of(line).as_deref() == Some(key)
            })
            .map(|(i, _, _)| i + 1)
    }
}
