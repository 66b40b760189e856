//! The one CSV reader: [`CsvReader`] opens a file with a header row and streams its records with their
//! line numbers (the site manifest reads it so, and keeps a bad row as an excluded patient), and
//! [`Table`] reads a file whole with typed column accessors (the `stats` commands: every value is
//! checked once here, so that the statistics engine only ever sees clean numbers). Every error names
//! the file, the line (the header is line 1) and the column.

use std::path::{Path, PathBuf};

/// A cell's value as an error message shows it: whole when short, else its start and its length (a
/// 50 MB value is not echoed back).
#[must_use]
pub fn excerpt(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        return value.to_owned();
    }
    let start: String = value.chars().take(SHOWN).collect();
    format!("{start}… ({} bytes)", value.len())
}

/// Bad tabular input. Every variant says where: file, line (the header is line 1) and column.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {what} {}: {source}", file.display())]
    Unreadable {
        /// What the file is ("the manifest", "the table").
        what: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the file is empty (expected a header row and at least one data row)", file.display())]
    Empty { file: PathBuf },
    #[error("{}: malformed CSV at line {line}: {message}", file.display())]
    Malformed {
        file: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}, line {line}, column '{column}': not UTF-8 text", file.display())]
    NotUtf8 {
        file: PathBuf,
        line: u64,
        column: String,
    },
    #[error("{}: the header names column '{column}' twice", file.display())]
    DuplicateColumn { file: PathBuf, column: String },
    #[error("{}: no column named '{column}' (columns: {available})", file.display())]
    MissingColumn {
        file: PathBuf,
        column: String,
        available: String,
    },
    #[error("{}, line {line}, column '{column}': {problem} (value: '{value}')", file.display())]
    BadValue {
        file: PathBuf,
        line: u64,
        column: String,
        value: String,
        problem: String,
    },
    #[error("{}, column '{column}': {problem}", file.display())]
    BadColumn {
        file: PathBuf,
        column: String,
        problem: String,
    },
}

/// An open CSV file with a header row: the header, then its records one by one. Rows may have any
/// number of fields (the caller decides what a ragged row means); cells are trimmed when asked.
pub struct CsvReader {
    file: PathBuf,
    headers: Vec<String>,
    reader: csv::Reader<std::fs::File>,
}

impl CsvReader {
    /// Opens `file` (`what` it is, for the error of an unreadable file) and reads its header.
    ///
    /// # Errors
    /// An unreadable file, or a header that is not CSV.
    pub fn open(file: &Path, what: &'static str, trim_cells: bool) -> Result<Self, InputError> {
        let malformed = |message: String| InputError::Malformed {
            file: file.to_path_buf(),
            line: 1,
            message,
        };
        let unreadable = |source| InputError::Unreadable {
            what,
            file: file.to_path_buf(),
            source,
        };
        let handle = crate::files::open_regular(file).map_err(unreadable)?;
        let trim = if trim_cells {
            csv::Trim::All
        } else {
            csv::Trim::Headers
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(trim)
            .from_reader(handle);
        let headers: Vec<String> = reader
            .headers()
            .map_err(|e| malformed(e.to_string()))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        // A repeated column would be read from its first occurrence only: refuse the ambiguity.
        if let Some((index, column)) = headers
            .iter()
            .enumerate()
            .find(|(index, h)| !h.is_empty() && headers[..*index].contains(h))
        {
            let _ = index;
            return Err(InputError::DuplicateColumn {
                file: file.to_path_buf(),
                column: column.clone(),
            });
        }
        Ok(Self {
            file: file.to_path_buf(),
            headers,
            reader,
        })
    }

    #[must_use]
    pub fn file(&self) -> &Path {
        &self.file
    }

    #[must_use]
    pub fn headers(&self) -> &[String] {
        &self.headers
    }

    /// The position of a column, or an error listing the columns that exist.
    ///
    /// # Errors
    /// [`InputError::MissingColumn`].
    pub fn column_index(&self, column: &str) -> Result<usize, InputError> {
        column_index(&self.file, &self.headers, column)
    }

    /// The records with the file line each starts on (a quoted cell may hold line breaks). A record
    /// that is not CSV ends the file with [`InputError::Malformed`]; one whose cell is not UTF-8 is
    /// [`InputError::NotUtf8`], naming the column, and reading goes on with the next.
    pub fn records(&mut self) -> impl Iterator<Item = Result<(u64, csv::StringRecord), InputError>> + '_ {
        let (file, headers) = (&self.file, &self.headers);
        let mut previous_line = 1;
        self.reader.byte_records().map(move |record| {
            let malformed = |line: u64, message: String| InputError::Malformed {
                file: file.clone(),
                line,
                message,
            };
            let record = record.map_err(|e| {
                let line = e.position().map_or(previous_line + 1, csv::Position::line);
                malformed(line, e.to_string())
            })?;
            let line = record.position().map_or(previous_line + 1, csv::Position::line);
            previous_line = line;
            csv::StringRecord::from_byte_record(record)
                .map(|record| (line, record))
                .map_err(|e| {
                    let field = e.utf8_error().field();
                    InputError::NotUtf8 {
                        file: file.clone(),
                        line,
                        column: headers
                            .get(field)
                            .cloned()
                            .unwrap_or_else(|| format!("#{}", field + 1)),
                    }
                })
        })
    }
}

fn column_index(file: &Path, headers: &[String], column: &str) -> Result<usize, InputError> {
    headers
        .iter()
        .position(|h| h == column)
        .ok_or_else(|| InputError::MissingColumn {
            file: file.to_path_buf(),
            column: column.to_owned(),
            available: headers.join(", "),
        })
}

/// A CSV file held in memory: a header and rows of text cells.
#[derive(Debug, Clone)]
pub struct Table {
    file: PathBuf,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    /// The file line each row starts on.
    lines: Vec<u64>,
}

impl Table {
    /// Reads a comma-separated file with a header row. Fails on an unreadable, empty or ragged file.
    ///
    /// # Errors
    /// [`InputError`] naming the file and line.
    pub fn read(file: &Path) -> Result<Self, InputError> {
        let mut reader = CsvReader::open(file, "the table", true)?;
        let headers = reader.headers().to_vec();
        if headers.iter().all(String::is_empty) {
            return Err(InputError::Empty {
                file: file.to_path_buf(),
            });
        }
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        for record in reader.records() {
            let (line, record) = record?;
            if record.len() != headers.len() {
                return Err(InputError::Malformed {
                    file: file.to_path_buf(),
                    line,
                    message: format!(
                        "the row has {} fields but the header has {}",
                        record.len(),
                        headers.len()
                    ),
                });
            }
            rows.push(record.iter().map(str::to_owned).collect());
            lines.push(line);
        }
        if rows.is_empty() {
            return Err(InputError::Empty {
                file: file.to_path_buf(),
            });
        }
        Ok(Self {
            file: file.to_path_buf(),
            headers,
            rows,
            lines,
        })
    }

    /// The file this table came from.
    #[must_use]
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Number of data rows.
    #[must_use]
    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    /// The position of a column, or an error listing the columns that exist.
    ///
    /// # Errors
    /// [`InputError::MissingColumn`].
    pub fn column_index(&self, column: &str) -> Result<usize, InputError> {
        column_index(&self.file, &self.headers, column)
    }

    /// The raw text cells of a column.
    pub fn text_column(&self, column: &str) -> Result<Vec<&str>, InputError> {
        let index = self.column_index(column)?;
        Ok(self.rows.iter().map(|row| row[index].as_str()).collect())
    }

    /// A column parsed by `parse`, which returns the value or a description of the problem.
    pub fn parsed_column<T>(
        &self,
        column: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, InputError> {
        let index = self.column_index(column)?;
        self.rows
            .iter()
            .enumerate()
            .map(|(row_index, row)| {
                parse(&row[index]).map_err(|problem| InputError::BadValue {
                    file: self.file.clone(),
                    line: self.lines[row_index],
                    column: column.to_owned(),
                    value: excerpt(&row[index]),
                    problem,
                })
            })
            .collect()
    }

    /// A column of finite numbers.
    pub fn numeric_column(&self, column: &str) -> Result<Vec<f64>, InputError> {
        self.parsed_column(column, parse_finite)
    }

    /// A column of 0/1 outcomes.
    pub fn binary_column(&self, column: &str) -> Result<Vec<bool>, InputError> {
        self.parsed_column(column, |cell| match parse_finite(cell)? {
            0.0 => Ok(false),
            1.0 => Ok(true),
            _ => Err("expected 0 or 1".to_owned()),
        })
    }

    /// A column of predicted probabilities: finite and within [0, 1].
    pub fn probability_column(&self, column: &str) -> Result<Vec<f64>, InputError> {
        self.parsed_column(column, |cell| {
            let value = parse_finite(cell)?;
            if (0.0..=1.0).contains(&value) {
                Ok(value)
            } else {
                Err("expected a probability in [0, 1]".to_owned())
            }
        })
    }

    /// A column of ordinal codes on the declared scale 0..k-1.
    pub fn code_column(&self, column: &str, k: usize) -> Result<Vec<usize>, InputError> {
        self.parsed_column(column, |cell| {
            let value = parse_finite(cell)?;
            let in_scale = value >= 0.0 && value.fract() == 0.0 && value < k as f64;
            // The cast is exact: value is a non-negative integer below k.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let code = value as usize;
            if in_scale {
                Ok(code)
            } else {
                Err(format!("expected an integer code in 0..{}", k.saturating_sub(1)))
            }
        })
    }

    /// An error about a whole column (for example an outcome with a single level).
    #[must_use]
    pub fn column_error(&self, column: &str, problem: impl Into<String>) -> InputError {
        InputError::BadColumn {
            file: self.file.clone(),
            column: column.to_owned(),
            problem: problem.into(),
        }
    }
}

/// A cell as a finite number, or what is wrong with it ("missing value", "not a number", ...).
///
/// # Errors
/// The problem, in words, for [`InputError::BadValue`].
pub fn parse_finite(cell: &str) -> Result<f64, String> {
    if cell.is_empty() {
        return Err("missing value".to_owned());
    }
    match cell.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err("not a finite number".to_owned()),
        Err(_) => Err("not a number".to_owned()),
    }
}
