//! Design matrices for logistic regression: `const`, numeric terms and treatment dummies of categorical
//! terms with **declared** levels, so that every site builds identical columns from the same spec.

use super::logistic::LogisticError;

/// Name of the intercept column, always first.
pub const INTERCEPT: &str = "const";

/// One covariate of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermSpec {
    /// A numeric column entered as is: one design column named like the column.
    Numeric { column: String },
    /// A categorical column coded as treatment dummies against `reference`: one design column
    /// `<column>_<level>` per declared level other than the reference, in declared order.
    Categorical {
        column: String,
        levels: Vec<String>,
        reference: String,
    },
}

impl TermSpec {
    /// A numeric term.
    #[must_use]
    pub fn numeric(column: impl Into<String>) -> Self {
        Self::Numeric {
            column: column.into(),
        }
    }

    /// A categorical term with declared `levels` (their order fixes the order of the dummies) and a
    /// reference level that must be one of them.
    #[must_use]
    pub fn categorical(column: impl Into<String>, levels: Vec<String>, reference: impl Into<String>) -> Self {
        Self::Categorical {
            column: column.into(),
            levels,
            reference: reference.into(),
        }
    }

    /// The source column's name.
    #[must_use]
    pub fn column(&self) -> &str {
        match self {
            Self::Numeric { column } | Self::Categorical { column, .. } => column,
        }
    }
}

/// The values of one term's source column, row by row.
#[derive(Debug, Clone, Copy)]
pub enum TermColumn<'a> {
    /// For a [`TermSpec::Numeric`] term.
    Numeric(&'a [f64]),
    /// For a [`TermSpec::Categorical`] term: each row's level.
    Categorical(&'a [&'a str]),
}

impl TermColumn<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Numeric(values) => values.len(),
            Self::Categorical(levels) => levels.len(),
        }
    }
}

/// A validated model specification: the terms and the design-column names they produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesignSpec {
    terms: Vec<TermSpec>,
    column_names: Vec<String>,
}

impl DesignSpec {
    /// Validates the terms: reference among the declared levels, no repeated level, no two design
    /// columns with the same name (including `const`).
    pub fn new(terms: Vec<TermSpec>) -> Result<Self, LogisticError> {
        let mut column_names = vec![INTERCEPT.to_owned()];
        for term in &terms {
            match term {
                TermSpec::Numeric { column } => column_names.push(column.clone()),
                TermSpec::Categorical {
                    column,
                    levels,
                    reference,
                } => {
                    if !levels.contains(reference) {
                        return Err(LogisticError::UnknownReference {
                            column: column.clone(),
                            reference: reference.clone(),
                            declared: levels.clone(),
                        });
                    }
                    for (index, level) in levels.iter().enumerate() {
                        if levels[..index].contains(level) {
                            return Err(LogisticError::DuplicateName {
                                name: format!("{column}={level}"),
                            });
                        }
                        if level != reference {
                            column_names.push(dummy_name(column, level));
                        }
                    }
                }
            }
        }
        for (index, name) in column_names.iter().enumerate() {
            if column_names[..index].contains(name) {
                return Err(LogisticError::DuplicateName { name: name.clone() });
            }
        }
        Ok(Self { terms, column_names })
    }

    /// The terms, in model order.
    #[must_use]
    pub fn terms(&self) -> &[TermSpec] {
        &self.terms
    }

    /// Design-column names: `const` first, then each term's columns in order.
    #[must_use]
    pub fn column_names(&self) -> &[String] {
        &self.column_names
    }

    /// `(column, reference level)` of every categorical term.
    pub fn references(&self) -> impl Iterator<Item = (&str, &str)> {
        self.terms.iter().filter_map(|term| match term {
            TermSpec::Categorical {
                column, reference, ..
            } => Some((column.as_str(), reference.as_str())),
            TermSpec::Numeric { .. } => None,
        })
    }

    /// Builds the design matrix of `n_rows` rows from one [`TermColumn`] per term (same order as the
    /// terms). A level that was not declared, a non-finite number or a column of the wrong length or
    /// kind is an error naming the column and the row (0-based).
    pub fn build(&self, n_rows: usize, columns: &[TermColumn<'_>]) -> Result<DesignMatrix, LogisticError> {
        if columns.len() != self.terms.len() {
            return Err(LogisticError::TermCount {
                expected: self.terms.len(),
                got: columns.len(),
            });
        }
        let width = self.column_names.len();
        let mut values = vec![0.0; n_rows * width];
        for row in 0..n_rows {
            values[row * width] = 1.0;
        }
        let mut offset = 1;
        for (term, column) in self.terms.iter().zip(columns) {
            if column.len() != n_rows {
                return Err(LogisticError::LengthMismatch {
                    what: term.column().to_owned(),
                    got: column.len(),
                    expected: n_rows,
                });
            }
            match (term, column) {
                (TermSpec::Numeric { column: name }, TermColumn::Numeric(data)) => {
                    for (row, &value) in data.iter().enumerate() {
                        if !value.is_finite() {
                            return Err(LogisticError::NotFinite {
                                column: name.clone(),
                                row,
                            });
                        }
                        values[row * width + offset] = value;
                    }
                    offset += 1;
                }
                (
                    TermSpec::Categorical {
                        column: name,
                        levels,
                        reference,
                    },
                    TermColumn::Categorical(data),
                ) => {
                    let dummies: Vec<&String> = levels.iter().filter(|level| *level != reference).collect();
                    for (row, &level) in data.iter().enumerate() {
                        if level == reference {
                            continue;
                        }
                        let position = dummies
                            .iter()
                            .position(|declared| *declared == level)
                            .ok_or_else(|| LogisticError::UndeclaredLevel {
                                column: name.clone(),
                                row,
                                level: level.to_owned(),
                                declared: levels.clone(),
                            })?;
                        values[row * width + offset + position] = 1.0;
                    }
                    offset += dummies.len();
                }
                _ => {
                    return Err(LogisticError::TermKind {
                        column: term.column().to_owned(),
                    });
                }
            }
        }
        Ok(DesignMatrix {
            column_names: self.column_names.clone(),
            n_rows,
            values,
        })
    }
}

/// A dense design matrix, row-major, with named columns (`const` first).
#[derive(Debug, Clone, PartialEq)]
pub struct DesignMatrix {
    column_names: Vec<String>,
    n_rows: usize,
    values: Vec<f64>,
}

impl DesignMatrix {
    /// Column names.
    #[must_use]
    pub fn column_names(&self) -> &[String] {
        &self.column_names
    }

    /// Number of rows.
    #[must_use]
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Number of columns (parameters).
    #[must_use]
    pub fn n_columns(&self) -> usize {
        self.column_names.len()
    }

    /// One row. Panics when `row >= n_rows()` (slice indexing).
    #[must_use]
    pub fn row(&self, row: usize) -> &[f64] {
        let width = self.n_columns();
        &self.values[row * width..(row + 1) * width]
    }

    /// Iterates over the rows.
    pub fn rows(&self) -> impl Iterator<Item = &[f64]> {
        // `max(1)`: chunks_exact(0) would panic; a matrix always has the `const` column anyway.
        self.values.chunks_exact(self.n_columns().max(1))
    }

    /// The matrix of the given rows, in the given order (for example one site's rows). Panics on an
    /// index out of range (slice indexing).
    #[must_use]
    pub fn select_rows(&self, rows: &[usize]) -> Self {
        let mut values = Vec::with_capacity(rows.len() * self.n_columns());
        for &row in rows {
            values.extend_from_slice(self.row(row));
        }
        Self {
            column_names: self.column_names.clone(),
            n_rows: rows.len(),
            values,
        }
    }
}

/// `<column>_<level>`, the name of a treatment dummy.
#[must_use]
pub fn dummy_name(column: &str, level: &str) -> String {
    format!("{column}_{level}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> TermSpec {
        TermSpec::categorical(
            "location",
            vec!["lower".into(), "middle".into(), "upper".into()],
            "lower",
        )
    }

    #[test]
    fn dummies_follow_declared_levels_even_when_a_level_is_absent() {
        let spec = DesignSpec::new(vec![TermSpec::numeric("age"), location()]).unwrap();
        assert_eq!(
            spec.column_names(),
            ["const", "age", "location_middle", "location_upper"]
        );
        // No `upper` row at this site: the column exists and is all zero.
        let design = spec
            .build(
                3,
                &[
                    TermColumn::Numeric(&[40.0, 50.0, 60.0]),
                    TermColumn::Categorical(&["lower", "middle", "lower"]),
                ],
            )
            .unwrap();
        assert_eq!(design.row(0), [1.0, 40.0, 0.0, 0.0]);
        assert_eq!(design.row(1), [1.0, 50.0, 1.0, 0.0]);
        assert_eq!(design.row(2), [1.0, 60.0, 0.0, 0.0]);
        assert_eq!(design.select_rows(&[1]).row(0), [1.0, 50.0, 1.0, 0.0]);
        assert_eq!(spec.references().collect::<Vec<_>>(), [("location", "lower")]);
    }

    #[test]
    fn invalid_specs_and_values_are_typed_errors() {
        let bad_reference = TermSpec::categorical("location", vec!["lower".into()], "upper");
        assert!(matches!(
            DesignSpec::new(vec![bad_reference]),
            Err(LogisticError::UnknownReference { .. })
        ));
        let duplicate = DesignSpec::new(vec![TermSpec::numeric("age"), TermSpec::numeric("age")]);
        assert!(matches!(duplicate, Err(LogisticError::DuplicateName { .. })));
        let named_const = DesignSpec::new(vec![TermSpec::numeric("const")]);
        assert!(matches!(named_const, Err(LogisticError::DuplicateName { .. })));

        let spec = DesignSpec::new(vec![location()]).unwrap();
        let undeclared = spec.build(2, &[TermColumn::Categorical(&["lower", "isthmus"])]);
        assert!(matches!(
            undeclared,
            Err(LogisticError::UndeclaredLevel { row: 1, .. })
        ));
        let wrong_kind = spec.build(1, &[TermColumn::Numeric(&[1.0])]);
        assert!(matches!(wrong_kind, Err(LogisticError::TermKind { .. })));
        let numeric = DesignSpec::new(vec![TermSpec::numeric("age")]).unwrap();
        let nan = numeric.build(2, &[TermColumn::Numeric(&[1.0, f64::NAN])]);
        assert!(matches!(nan, Err(LogisticError::NotFinite { row: 1, .. })));
        let short = numeric.build(3, &[TermColumn::Numeric(&[1.0, 2.0])]);
        assert!(matches!(short, Err(LogisticError::LengthMismatch { .. })));
    }
}
