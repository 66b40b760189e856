//! Closed sets of clinical categories (TNM, TI-RADS terms): one macro that gives each enum its labels,
//! ordinal codes and a parser whose error lists what is allowed.

/// Defines a category enum with its canonical labels, ordinal codes, `Display` and `FromStr`.
macro_rules! ordinal_category {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every category, in ordinal order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The canonical labels, in ordinal order.
            pub const LABELS: &'static [&'static str] = &[$($label),+];

            /// The ordinal code (0-based) used for weighted kappa.
            #[must_use]
            pub fn code(self) -> usize {
                self as usize
            }

            /// The canonical label, as written in the manifest.
            #[must_use]
            pub fn label(self) -> &'static str {
                Self::LABELS[self as usize]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.label())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::category::UnknownCategory;
            /// Parses a canonical label, ignoring case and surrounding spaces.
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                let wanted = text.trim();
                Self::ALL
                    .iter()
                    .copied()
                    .find(|category| category.label().eq_ignore_ascii_case(wanted))
                    .ok_or_else(|| $crate::category::UnknownCategory { value: $crate::table::excerpt(text), allowed: Self::LABELS })
            }
        }
    };
}

/// A label that is not one of the allowed categories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown category '{value}' (allowed: {})", allowed.join(", "))]
pub struct UnknownCategory {
    pub value: String,
    pub allowed: &'static [&'static str],
}

pub(crate) use ordinal_category;
