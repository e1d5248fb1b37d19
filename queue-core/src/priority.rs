//! Job priorities: five levels, 0 the highest.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How urgent a job is: 0 is the highest priority, 4 the lowest.
///
/// Among due jobs of one queue, workers claim lower numbers first. The value
/// is validated on construction and on deserialization, so a `Priority` is
/// always in `0..=4`. It serializes as the bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Priority(u8);

impl Priority {
    /// The highest priority, 0.
    pub const HIGHEST: Priority = Priority(0);
    /// The lowest priority, 4.
    pub const LOWEST: Priority = Priority(4);
    /// The priority of a job that does not ask for one, 2.
    pub const DEFAULT: Priority = Priority(2);
    /// The number of levels: priorities are `0..LEVELS`.
    pub const LEVELS: u8 = 5;

    /// The priority `v`, or an error if `v` is more than 4.
    pub const fn new(v: u8) -> Result<Priority, PriorityError> {
        if v < Self::LEVELS {
            Ok(Priority(v))
        } else {
            Err(PriorityError { value: v })
        }
    }

    /// The number: 0 (highest) to 4 (lowest).
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::DEFAULT
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityError;

    fn try_from(v: u8) -> Result<Self, Self::Error> {
        Priority::new(v)
    }
}

impl From<Priority> for u8 {
    fn from(p: Priority) -> Self {
        p.0
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The error of a priority outside `0..=4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("priority `{value}` is out of range: expected 0 (highest) to 4 (lowest)")]
pub struct PriorityError {
    value: u8,
}

impl PriorityError {
    /// The rejected value.
    pub const fn value(&self) -> u8 {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_and_default() {
        assert_eq!(Priority::HIGHEST.get(), 0);
        assert_eq!(Priority::LOWEST.get(), 4);
        assert_eq!(Priority::DEFAULT.get(), 2);
        assert_eq!(Priority::default(), Priority::DEFAULT);
        assert!(Priority::HIGHEST < Priority::LOWEST);
        const P: Priority = match Priority::new(3) {
            Ok(p) => p,
            Err(_) => panic!("in range"),
        };
        assert_eq!(P.get(), 3);
    }

    #[test]
    fn range_is_checked() {
        for v in 0..Priority::LEVELS {
            assert_eq!(Priority::new(v).unwrap().get(), v);
            assert_eq!(Priority::try_from(v).unwrap().to_string(), v.to_string());
        }
        for v in [5, 7, 255] {
            let err = Priority::try_from(v).unwrap_err();
            assert_eq!(err.value(), v);
        }
        assert_eq!(
            Priority::new(7).unwrap_err().to_string(),
            "priority `7` is out of range: expected 0 (highest) to 4 (lowest)"
        );
    }

    #[test]
    fn serde_validates() {
        assert_eq!(serde_json::to_string(&Priority::LOWEST).unwrap(), "4");
        assert_eq!(
            serde_json::from_str::<Priority>("1").unwrap(),
            Priority::new(1).unwrap()
        );
        let err = serde_json::from_str::<Priority>("9").unwrap_err();
        assert!(
            err.to_string().contains("priority `9` is out of range"),
            "{err}"
        );
    }
}
