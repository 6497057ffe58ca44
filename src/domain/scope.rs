//! The three scopes of a grant, ordered from narrowest to widest.

use std::{fmt, str::FromStr};

/// How much data a grant covers. `Own < Team < All`, so `max` gives the wider one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scope {
    /// Data owned by any key of the requestor (or the requestor's own user record).
    Own,
    /// Data of the team of the key that carries the grant.
    Team,
    /// All data.
    All,
}

impl Scope {
    /// The upper-case name used in policy files and messages.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Own => "OWN",
            Scope::Team => "TEAM",
            Scope::All => "ALL",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of `OWN`, `TEAM`, `ALL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?} (expected OWN, TEAM or ALL)")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "OWN" => Ok(Scope::Own),
            "TEAM" => Ok(Scope::Team),
            "ALL" => Ok(Scope::All),
            other => Err(UnknownScope(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_own_team_all() {
        assert!(Scope::Own < Scope::Team && Scope::Team < Scope::All);
        assert_eq!(Scope::Own.max(Scope::All), Scope::All);
    }

    #[test]
    fn parses_only_upper_case_names() {
        assert_eq!("TEAM".parse::<Scope>(), Ok(Scope::Team));
        assert!("team".parse::<Scope>().is_err());
        assert!("".parse::<Scope>().is_err());
    }
}
