//! How a class name becomes a queue and view name (the seed's `_queue_name` rule).

use crate::errors::{EventicError, Result};

/// `Story` → `story`, `StoryDraft` → `story_draft`, `HTTPServer` → `http_server`,
/// `public.orders` → `public_orders`. An underscore goes before an upper-case letter that
/// follows a lower-case letter or digit, or that starts a word after an acronym.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '.' {
            out.push('_');
            continue;
        }
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_is_lower)
            {
                out.push('_');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The queue of a class: its snake_case name, short enough for the table `queue_<name>`.
pub fn queue_name_for(class_name: &str) -> Result<String> {
    let name = snake_case(class_name);
    if name.len() > crate::queues::MAX_QUEUE_NAME {
        return Err(EventicError::invalid(
            format!("class name {class_name:?} is too long for its queue name {name:?}"),
            "The snake_case form of a class name is at most 51 characters (queue tables are \
             named queue_<name>).",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn snake_case_matches_the_seed() {
        assert_eq!(snake_case("Story"), "story");
        assert_eq!(snake_case("StoryDraft"), "story_draft");
        assert_eq!(snake_case("HTTPServer"), "http_server");
        assert_eq!(snake_case("Story2Draft"), "story2_draft");
        assert_eq!(snake_case("already_snake"), "already_snake");
        assert_eq!(snake_case("public.orders"), "public_orders");
    }

    #[test]
    fn long_names_are_refused() {
        assert!(queue_name_for(&"A".repeat(51)).is_ok());
        assert!(queue_name_for(&"a".repeat(52)).is_err());
    }
}
