//! Node paths: validated once at construction (or decoding), trusted afterwards.
//!
//! A path is `/` (the root) or `/` followed by one or more names separated by single `/`. A name is
//! 1 to [`NAME_BYTES_MAX`] bytes of UTF-8 with no `/` and no control character, and is neither `.`
//! nor `..`. The whole path is at most [`PATH_BYTES_MAX`] bytes.
//!
//! Paths are ordered as byte strings in which `/` sorts below every other byte. That puts every
//! node's descendants right after it and before its next sibling (`/a`, `/a/z`, `/a-b`), so the
//! children of a node are one contiguous range of a `BTreeMap` keyed by path. Since names contain
//! no control characters, the ordering is also consistent with equality.

use crate::limits::{NAME_BYTES_MAX, PATH_BYTES_MAX};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

/// A valid node path. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodePath(Arc<str>);

/// Why a string is not a valid path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathError {
    /// The path is the empty string.
    Empty,
    /// The path does not start with `/`.
    NotAbsolute,
    /// The path ends with `/` (only the root is allowed to).
    TrailingSlash,
    /// Two `/` in a row.
    EmptyName,
    /// A name is `.` or `..`; paths are always canonical.
    DotName,
    /// A name holds a control character (below U+0020, or U+007F).
    ControlCharacter,
    /// The path is longer than [`PATH_BYTES_MAX`] bytes.
    TooLong { bytes: usize, max: usize },
    /// A name is longer than [`NAME_BYTES_MAX`] bytes.
    NameTooLong { bytes: usize, max: usize },
}

impl NodePath {
    /// Validates `path`.
    pub fn new(path: &str) -> Result<NodePath, PathError> {
        if let Some(error) = invalid(path) {
            return Err(error);
        }
        Ok(NodePath(Arc::from(path)))
    }

    /// The root directory, `/`.
    pub fn root() -> NodePath {
        NodePath(Arc::from("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// The parent directory; `None` for the root.
    pub fn parent(&self) -> Option<NodePath> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.rfind('/').expect("a valid path starts with '/'");
        Some(if cut == 0 {
            NodePath::root()
        } else {
            NodePath(Arc::from(&self.0[..cut]))
        })
    }

    /// The last name; empty for the root.
    pub fn name(&self) -> &str {
        let cut = self.0.rfind('/').expect("a valid path starts with '/'");
        &self.0[cut + 1..]
    }

    /// The path `name` below this one (`name` may itself hold `/`), validated.
    pub fn join(&self, name: &str) -> Result<NodePath, PathError> {
        if self.is_root() {
            NodePath::new(&format!("/{name}"))
        } else {
            NodePath::new(&format!("{}/{name}", self.0))
        }
    }

    /// Whether `self` is a strict descendant of `ancestor`.
    pub fn is_descendant_of(&self, ancestor: &NodePath) -> bool {
        if ancestor.is_root() {
            return !self.is_root();
        }
        self.0.len() > ancestor.0.len()
            && self.0.starts_with(&*ancestor.0)
            && self.0.as_bytes()[ancestor.0.len()] == b'/'
    }

    /// A key that sorts after every descendant of `self` and before every node that sorts after
    /// `self` and is not its descendant: `self` followed by U+0001, which no valid name holds and
    /// which sorts above `/` and below every byte a name may hold. Only for use as a range bound
    /// (it is not a valid path), and never for the root, whose subtree is every other path.
    pub fn subtree_end(&self) -> NodePath {
        NodePath(Arc::from(format!("{}\u{1}", self.0)))
    }
}

/// The first problem with `path`, if any.
fn invalid(path: &str) -> Option<PathError> {
    if path.is_empty() {
        return Some(PathError::Empty);
    }
    if path.len() > PATH_BYTES_MAX {
        return Some(PathError::TooLong {
            bytes: path.len(),
            max: PATH_BYTES_MAX,
        });
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Some(PathError::NotAbsolute);
    };
    if rest.is_empty() {
        return None;
    }
    if rest.ends_with('/') {
        return Some(PathError::TrailingSlash);
    }
    rest.split('/').find_map(invalid_name)
}

fn invalid_name(name: &str) -> Option<PathError> {
    if name.is_empty() {
        return Some(PathError::EmptyName);
    }
    if name == "." || name == ".." {
        return Some(PathError::DotName);
    }
    if name.len() > NAME_BYTES_MAX {
        return Some(PathError::NameTooLong {
            bytes: name.len(),
            max: NAME_BYTES_MAX,
        });
    }
    if name.chars().any(|c| c.is_ascii_control()) {
        return Some(PathError::ControlCharacter);
    }
    None
}

/// The byte `/` sorts as 0, below every byte a valid name may hold (see the module doc).
fn order_key(byte: u8) -> u8 {
    if byte == b'/' {
        0
    } else {
        byte
    }
}

impl Ord for NodePath {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.0.bytes().map(order_key);
        let b = other.0.bytes().map(order_key);
        a.cmp(b)
    }
}

impl PartialOrd for NodePath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => f.write_str("empty path"),
            PathError::NotAbsolute => f.write_str("path does not start with '/'"),
            PathError::TrailingSlash => f.write_str("path ends with '/'"),
            PathError::EmptyName => f.write_str("path holds an empty name ('//')"),
            PathError::DotName => f.write_str("path holds a '.' or '..' name"),
            PathError::ControlCharacter => f.write_str("path holds a control character"),
            PathError::TooLong { bytes, max } => write!(f, "path is {bytes} bytes, max {max}"),
            PathError::NameTooLong { bytes, max } => {
                write!(f, "name is {bytes} bytes, max {max}")
            }
        }
    }
}

impl std::error::Error for PathError {}

impl TryFrom<&str> for NodePath {
    type Error = PathError;
    fn try_from(path: &str) -> Result<NodePath, PathError> {
        NodePath::new(path)
    }
}

impl Serialize for NodePath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Decoding validates: a path that came off the wire or the disk is as trustworthy as one built
/// with [`NodePath::new`].
impl<'de> Deserialize<'de> for NodePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<NodePath, D::Error> {
        let text = String::deserialize(deserializer)?;
        NodePath::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn p(s: &str) -> NodePath {
        NodePath::new(s).unwrap()
    }

    #[test]
    fn valid_paths() {
        for ok in ["/", "/a", "/a/b", "/a-b.c_d/é", "/..a", "/a b"] {
            assert!(NodePath::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn invalid_paths_name_their_problem() {
        let cases = [
            ("", PathError::Empty),
            ("a", PathError::NotAbsolute),
            ("/a/", PathError::TrailingSlash),
            ("/a//b", PathError::EmptyName),
            ("/a/./b", PathError::DotName),
            ("/..", PathError::DotName),
            ("/a\nb", PathError::ControlCharacter),
            ("/a\u{7f}", PathError::ControlCharacter),
        ];
        for (path, error) in cases {
            assert_eq!(NodePath::new(path), Err(error), "{path:?}");
        }
        let long_name = format!("/{}", "x".repeat(NAME_BYTES_MAX + 1));
        assert!(matches!(
            NodePath::new(&long_name),
            Err(PathError::NameTooLong { .. })
        ));
        let long_path = "/abcdefg".repeat(PATH_BYTES_MAX / 8 + 1);
        assert!(matches!(
            NodePath::new(&long_path),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn parent_name_join() {
        assert_eq!(p("/").parent(), None);
        assert_eq!(p("/a").parent(), Some(p("/")));
        assert_eq!(p("/a/b").parent(), Some(p("/a")));
        assert_eq!(p("/a/b").name(), "b");
        assert_eq!(p("/").name(), "");
        assert_eq!(p("/").join("a"), Ok(p("/a")));
        assert_eq!(p("/a").join("b"), Ok(p("/a/b")));
        assert_eq!(p("/a").join("b/c"), Ok(p("/a/b/c")));
        assert_eq!(p("/a").join(""), Err(PathError::TrailingSlash));
        assert!(p("/a/b").is_descendant_of(&p("/a")));
        assert!(p("/a/b").is_descendant_of(&p("/")));
        assert!(!p("/ab").is_descendant_of(&p("/a")));
        assert!(!p("/a").is_descendant_of(&p("/a")));
    }

    #[test]
    fn descendants_sort_between_a_node_and_its_next_sibling() {
        let sorted: Vec<NodePath> = ["/a-b", "/a/z", "/a", "/", "/a/b/c", "/a/b", "/a.c", "/b"]
            .iter()
            .map(|s| p(s))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<&str> = sorted.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            names,
            ["/", "/a", "/a/b", "/a/b/c", "/a/z", "/a-b", "/a.c", "/b"]
        );
        let end = p("/a").subtree_end();
        assert!(p("/a/z") < end && end < p("/a-b") && end < p("/a.c"));
    }

    #[test]
    fn decoding_validates() {
        let bytes = postcard::to_stdvec("/a//b").unwrap();
        assert!(postcard::from_bytes::<NodePath>(&bytes).is_err());
        let bytes = postcard::to_stdvec(&p("/a/b")).unwrap();
        assert_eq!(postcard::from_bytes::<NodePath>(&bytes).unwrap(), p("/a/b"));
    }
}
