//! Access rules: which users (by name or group) may pull, push or delete in which repositories.
//! With no rules, every authenticated user may do everything. A rule allows its actions to its
//! users on repositories matching one of its patterns (`*` matches any run of characters,
//! including `/`); a request is allowed when some rule allows every action it needs. The user
//! `anonymous` is a client that did not log in: only rules that name it (or a group holding it)
//! apply to it, never `"*"`.

use std::collections::BTreeMap;

use registry_core::routes::Route;

/// The user name of clients that did not log in (reserved: no htpasswd user has it).
pub const ANONYMOUS: &str = "anonymous";

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    repositories: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    actions: Vec<Action>,
}

/// The validated rule set.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    groups: BTreeMap<String, Vec<String>>,
    rules: Vec<Rule>,
}

/// `*` matches any run of characters (including `/`); everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A rule as written in the config: (repositories, users, groups, actions).
pub type RawRule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

impl Rules {
    /// Validates rules; an error names the config key.
    pub fn new(
        groups: BTreeMap<String, Vec<String>>,
        raw: Vec<RawRule>,
    ) -> Result<Rules, (&'static str, String)> {
        let mut rules = Vec::new();
        for (i, (repositories, users, rule_groups, actions)) in raw.into_iter().enumerate() {
            let n = i + 1;
            if repositories.is_empty() || repositories.iter().any(|r| r.is_empty()) {
                return Err((
                    "access.rules.repositories",
                    format!("rule {n}: give at least one non-empty pattern, e.g. [\"*\"]"),
                ));
            }
            if users.is_empty() && rule_groups.is_empty() {
                return Err((
                    "access.rules.users",
                    format!("rule {n}: name users (\"*\" for everyone) or groups"),
                ));
            }
            for g in &rule_groups {
                if !groups.contains_key(g) {
                    return Err((
                        "access.rules.groups",
                        format!("rule {n}: no group {g:?} in [access.groups]"),
                    ));
                }
            }
            let mut parsed = Vec::new();
            for a in &actions {
                parsed.push(Action::parse(a).ok_or_else(|| {
                    (
                        "access.rules.actions",
                        format!("rule {n}: {a:?} is not one of pull, push, delete"),
                    )
                })?);
            }
            if parsed.is_empty() {
                return Err(("access.rules.actions", format!("rule {n}: no actions")));
            }
            rules.push(Rule {
                repositories,
                users,
                groups: rule_groups,
                actions: parsed,
            });
        }
        Ok(Rules { groups, rules })
    }

    /// How many rules there are.
    pub fn count(&self) -> usize {
        self.rules.len()
    }

    /// No rules: everyone authenticated may do everything.
    pub fn is_open(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule names `anonymous`: then clients may do that without logging in.
    pub fn names_anonymous(&self) -> bool {
        self.rules.iter().any(|r| self.applies_to(r, ANONYMOUS))
    }

    /// Whether `user` may list the catalog (filtered to what it may pull): every authenticated
    /// user, and anonymous clients when some rule names them.
    pub fn may_list(&self, user: &str) -> bool {
        user != ANONYMOUS || self.names_anonymous()
    }

    fn applies_to(&self, rule: &Rule, user: &str) -> bool {
        rule.users
            .iter()
            .any(|u| u == user || (u == "*" && user != ANONYMOUS))
            || rule.groups.iter().any(|g| {
                self.groups
                    .get(g)
                    .is_some_and(|m| m.iter().any(|u| u == user))
            })
    }

    /// Whether `user` may do `action` in `repo`.
    pub fn allows(&self, user: &str, repo: &str, action: Action) -> bool {
        (self.is_open() && user != ANONYMOUS)
            || self.rules.iter().any(|r| {
                r.actions.contains(&action)
                    && self.applies_to(r, user)
                    && r.repositories.iter().any(|p| glob(p, repo))
            })
    }
}

/// The actions a request needs: (repository, action) pairs. Empty for `/v2/` and the catalog
/// (which is filtered instead). `from` is the decoded, validated mount source of an upload start.
pub fn required(method: &http::Method, route: &Route, from: Option<&str>) -> Vec<(String, Action)> {
    use http::Method;
    let (name, action) = match route {
        Route::Base | Route::Catalog => return Vec::new(),
        Route::Blob { name, .. } | Route::Manifest { name, .. } => {
            let a = match *method {
                Method::GET | Method::HEAD => Action::Pull,
                Method::DELETE => Action::Delete,
                _ => Action::Push,
            };
            (name, a)
        }
        Route::Tags { name } | Route::Referrers { name, .. } => (name, Action::Pull),
        Route::UploadStart { name } | Route::Upload { name, .. } => (name, Action::Push),
    };
    let mut need = vec![(name.clone(), action)];
    if let Route::UploadStart { .. } = route {
        if let Some(from) = from {
            need.push((from.to_owned(), Action::Pull));
        }
    }
    need
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (repositories, users, groups, actions), as string slices.
    type TestRule<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);

    fn rules(toml_groups: &[(&str, &[&str])], raw: &[TestRule]) -> Rules {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Rules::new(
            toml_groups
                .iter()
                .map(|(g, m)| (g.to_string(), s(m)))
                .collect(),
            raw.iter()
                .map(|(r, u, g, a)| (s(r), s(u), s(g), s(a)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob("*", "a/b"));
        assert!(glob("team/*", "team/x/y"));
        assert!(!glob("team/*", "teamx"));
        assert!(glob("*/base", "lib/base"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("a*b*c", "aXbYc"));
    }

    #[test]
    fn apache_recipe() {
        // GET/HEAD for everyone, POST/PUT/PATCH/DELETE for the pushers group.
        let r = rules(
            &[("pushers", &["alice"])],
            &[
                (&["*"], &["*"], &[], &["pull"]),
                (&["*"], &[], &["pushers"], &["pull", "push", "delete"]),
            ],
        );
        assert!(r.allows("bob", "x", Action::Pull));
        assert!(!r.allows("bob", "x", Action::Push));
        assert!(r.allows("alice", "x/y", Action::Delete));
        assert!(Rules::default().allows("anyone", "x", Action::Delete));
        // "*" is every user who logged in, not anonymous clients.
        assert!(!r.allows(ANONYMOUS, "x", Action::Pull));
        assert!(!Rules::default().allows(ANONYMOUS, "x", Action::Pull));
        assert!(!r.names_anonymous() && !r.may_list(ANONYMOUS) && r.may_list("bob"));
    }

    #[test]
    fn anonymous_pull_of_public_repositories() {
        let r = rules(
            &[("readers", &[ANONYMOUS])],
            &[
                (&["public/*"], &[], &["readers"], &["pull"]),
                (&["*"], &["*"], &[], &["pull", "push"]),
            ],
        );
        assert!(r.names_anonymous() && r.may_list(ANONYMOUS));
        assert!(r.allows(ANONYMOUS, "public/x", Action::Pull));
        assert!(!r.allows(ANONYMOUS, "public/x", Action::Push));
        assert!(!r.allows(ANONYMOUS, "private", Action::Pull));
        assert!(r.allows("bob", "private", Action::Push));
    }

    #[test]
    fn bad_rules_name_the_key() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = Rules::new(
            Default::default(),
            vec![(s(&["*"]), s(&["*"]), vec![], s(&["write"]))],
        )
        .unwrap_err();
        assert_eq!(e.0, "access.rules.actions");
        let e = Rules::new(
            Default::default(),
            vec![(s(&["*"]), vec![], s(&["nope"]), s(&["pull"]))],
        )
        .unwrap_err();
        assert_eq!(e.0, "access.rules.groups");
    }

    #[test]
    fn requirements() {
        let mount = Route::UploadStart { name: "dst".into() };
        assert_eq!(
            required(&http::Method::POST, &mount, Some("src")),
            vec![
                ("dst".to_string(), Action::Push),
                ("src".to_string(), Action::Pull)
            ]
        );
        let m = Route::Manifest {
            name: "r".into(),
            reference: "t".into(),
        };
        assert_eq!(
            required(&http::Method::HEAD, &m, None),
            vec![("r".to_string(), Action::Pull)]
        );
        assert_eq!(
            required(&http::Method::DELETE, &m, None),
            vec![("r".to_string(), Action::Delete)]
        );
    }
}
