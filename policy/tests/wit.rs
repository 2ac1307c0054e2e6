//! `wit/policy.wit` and the library agree on the labels and codes they share: the WIT's
//! `drop-reason` cases are [`DropReason::ALL`] in code order, and the packed verdict word's
//! table in `judge-packed`'s documentation gives each reason its code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use flowgate_policy::DropReason;

const WIT: &str = include_str!("../../wit/policy.wit");

/// The case names of the WIT enum `name`, in order.
fn wit_enum(name: &str) -> Vec<String> {
    let head = format!("enum {name} {{");
    let start = WIT
        .find(&head)
        .unwrap_or_else(|| panic!("wit/policy.wit has no `{head}`"));
    let body = &WIT[start + head.len()..];
    let end = body.find('}').expect("the enum ends");
    body[..end]
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .map(|line| line.trim_end_matches(',').to_owned())
        .collect()
}

#[test]
fn the_wit_drop_reasons_are_the_library_s_in_code_order() {
    let library: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(wit_enum("drop-reason"), library);
}

#[test]
fn the_packed_word_table_in_the_wit_gives_each_drop_reason_its_code() {
    // "for drop the reason (0 unknown-vpc, 1 source-not-exposed, ...)", over doc-comment lines.
    let prose: String = WIT
        .lines()
        .map(|line| line.trim().trim_start_matches("///").trim())
        .collect::<Vec<_>>()
        .join(" ");
    let head = "for drop the reason (";
    let start = prose
        .find(head)
        .expect("judge-packed documents the drop codes")
        + head.len();
    let table = &prose[start..start + prose[start..].find(')').expect("the table closes")];
    let documented: Vec<(u8, &str)> = table
        .split(',')
        .map(|entry| {
            let (code, name) = entry.trim().split_once(' ').expect("`CODE NAME`");
            (code.parse().expect("a code"), name)
        })
        .collect();
    let library: Vec<(u8, &str)> = DropReason::ALL
        .iter()
        .map(|r| (r.code(), r.as_str()))
        .collect();
    assert_eq!(documented, library);
}
