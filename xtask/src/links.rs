//! Relative links in the docs point at files that exist, and anchors into
//! Markdown files at headings that exist.
//!
//! Covers `README.md`, `SECURITY.md` and `docs/**/*.md`: inline links and images
//! `[text](target)` and reference definitions `[label]: target`, outside
//! fenced code blocks and inline code. Targets with a URL scheme
//! (`https:`, `mailto:`, ...) are not checked. Anchors are compared with
//! GitHub's heading slugs; emphasis written with `_` in a heading is not
//! stripped the way GitHub's renderer would.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Checks the docs under `root`; returns the summary line, or an error
/// listing every broken link as `file:line`.
pub fn check(root: &Path) -> Result<String> {
    let files = doc_files(root)?;
    let mut anchors = Anchors::default();
    let mut errors = Vec::new();
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(root.join(file))
            .with_context(|| format!("reading {}", file.display()))?;
        let found = links(&text);
        count += found.len();
        for link in found {
            if let Some(e) = broken(root, file, &link, &mut anchors) {
                errors.push(format!("{}:{}: {e}", file.display(), link.line));
            }
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(format!(
        "links: {count} relative links in {} Markdown files, ok",
        files.len()
    ))
}

/// `README.md`, `SECURITY.md` (it holds the hostile-input catalogue) and
/// every `.md` below `docs/`, relative to `root`, sorted.
fn doc_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for top in ["README.md", "SECURITY.md"] {
        if root.join(top).is_file() {
            files.push(PathBuf::from(top));
        }
    }
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue; // no docs/ yet
        };
        for entry in entries {
            let path = dir.join(entry?.file_name());
            if root.join(&path).is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A relative link target and the line it is on.
#[derive(Debug, PartialEq)]
struct Link {
    line: usize,
    target: String,
}

/// Why `link`, found in `file`, is broken, if it is.
fn broken(root: &Path, file: &Path, link: &Link, anchors: &mut Anchors) -> Option<String> {
    let (path, anchor) = match link.target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (link.target.as_str(), None),
    };
    let path = percent_decode(path.split('?').next().unwrap_or_default());
    let dir = file.parent().unwrap_or(Path::new(""));
    let target = if path.is_empty() {
        file.to_path_buf()
    } else if let Some(from_root) = path.strip_prefix('/') {
        // GitHub resolves a leading `/` from the repository root.
        normalize(Path::new(from_root))
    } else {
        normalize(&dir.join(&path))
    };
    if !root.join(&target).exists() {
        return Some(format!(
            "{} does not exist ({})",
            target.display(),
            link.target
        ));
    }
    let anchor = percent_decode(anchor.filter(|a| !a.is_empty())?);
    // Anchors into other kinds of files (`#L10` in source) are GitHub's business.
    if target.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let slugs = anchors.of(root, &target);
    if slugs.contains(&anchor) {
        return None;
    }
    Some(format!(
        "no heading in {} has the anchor #{anchor} ({})",
        target.display(),
        link.target
    ))
}

/// Heading slugs per Markdown file, read once each.
#[derive(Default)]
struct Anchors(HashMap<PathBuf, Vec<String>>);

impl Anchors {
    fn of(&mut self, root: &Path, file: &Path) -> &[String] {
        self.0.entry(file.to_path_buf()).or_insert_with(|| {
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            slugs(&headings(&text))
        })
    }
}

/// `a/./b/../c` as `a/c`, so messages name the file plainly.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `%20` and friends decoded; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The lines of `text` outside fenced code blocks, numbered from one.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let marker = fence_marker(line);
        match (fence, marker) {
            (None, Some(open)) => fence = Some(open),
            (None, None) => out.push((i + 1, line)),
            // A fence closes with the same character, at least as many times, and nothing after.
            (Some((c, n)), Some((mc, mn))) if mc == c && mn >= n && line.trim().len() == mn => {
                fence = None;
            }
            (Some(_), _) => {}
        }
    }
    out
}

/// The character and length of a code fence this line opens or closes.
fn fence_marker(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start();
    let c = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = trimmed.chars().take_while(|x| *x == c).count();
    // A backtick fence's info string cannot contain backticks (that is inline code).
    let info_ok = c == '~' || !trimmed[n..].contains('`');
    (n >= 3 && info_ok).then_some((c, n))
}

/// `line` with every inline code span (backticks included) blanked out.
fn mask_code_spans(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = line.to_string().into_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|b| **b == b'`').count();
        match find_run(bytes, i + run, run) {
            Some(end) => {
                out[i..end + run].fill(b' ');
                i = end + run;
            }
            // An unmatched run is literal backticks.
            None => i += run,
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Start of the next run of exactly `len` backticks at or after `from`.
fn find_run(bytes: &[u8], from: usize, len: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|b| **b == b'`').count();
        if run == len {
            return Some(i);
        }
        i += run.max(1);
    }
    None
}

/// Every checkable link target in a Markdown text.
fn links(text: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (line, raw) in prose_lines(text) {
        let masked = mask_code_spans(raw);
        let targets = reference_definition(&masked)
            .into_iter()
            .chain(inline_targets(&masked));
        for target in targets {
            if !target.is_empty() && !has_scheme(&target) {
                out.push(Link { line, target });
            }
        }
    }
    out
}

/// The target of `[label]: target` (not a `[^footnote]:`).
fn reference_definition(line: &str) -> Option<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = line[indent..].strip_prefix('[').filter(|_| indent <= 3)?;
    let (label, after) = rest.split_once("]:")?;
    if label.is_empty() || label.starts_with('^') {
        return None;
    }
    let target = after.split_whitespace().next()?;
    Some(strip_angles(target).to_string())
}

/// The targets of every `[text](target)` (and image) on the line.
fn inline_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let target = link_destination(rest.trim_start());
        if !target.is_empty() {
            out.push(target);
        }
    }
    out
}

/// The destination at the start of what follows `](`: `<...>`, or up to
/// whitespace or the `)` that balances the opening one.
fn link_destination(s: &str) -> String {
    if let Some(inner) = s.strip_prefix('<') {
        return inner.split('>').next().unwrap_or_default().to_string();
    }
    let mut depth = 0;
    let end = s
        .char_indices()
        .find(|&(_, c)| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth == 0 => true,
            ')' => {
                depth -= 1;
                false
            }
            c => c.is_whitespace(),
        })
        .map_or(s.len(), |(i, _)| i);
    s[..end].to_string()
}

fn strip_angles(s: &str) -> &str {
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
}

/// Whether the target starts with a URL scheme such as `https:` or `mailto:`.
fn has_scheme(target: &str) -> bool {
    let Some((scheme, _)) = target.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
}

/// The text of every ATX (`## x`) and setext (underlined) heading.
fn headings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut previous: Option<&str> = None;
    for (_, line) in prose_lines(text) {
        if let Some(h) = atx_heading(line) {
            out.push(h);
            previous = None;
            continue;
        }
        if let Some(p) = previous.filter(|_| is_setext_underline(line)) {
            out.push(p.trim().to_string());
            previous = None;
            continue;
        }
        previous = can_be_setext_text(line).then_some(line);
    }
    out
}

/// The text of `# Heading #`, without the markers.
fn atx_heading(line: &str) -> Option<String> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let rest = line[indent..].trim_end();
    let level = rest.chars().take_while(|c| *c == '#').count();
    if indent > 3 || !(1..=6).contains(&level) {
        return None;
    }
    let text = &rest[level..];
    if !text.is_empty() && !text.starts_with([' ', '\t']) {
        return None; // `#hashtag`
    }
    // An optional closing run of `#` after a space is not part of the text.
    let closed = text.trim_end_matches('#');
    let text = if closed.ends_with([' ', '\t']) || closed.is_empty() {
        closed
    } else {
        text
    };
    Some(text.trim().to_string())
}

fn is_setext_underline(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && (t.chars().all(|c| c == '=') || t.chars().all(|c| c == '-'))
}

/// Paragraph text that an underline below would turn into a heading.
fn can_be_setext_text(line: &str) -> bool {
    let t = line.trim_start();
    let list_item = (t.starts_with(['-', '*', '+']) && t[1..].starts_with(' '))
        || t.split_once(". ")
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    !t.is_empty() && !list_item && !t.starts_with(['>', '|']) && !is_setext_underline(line)
}

/// GitHub's anchors for these headings, in order, duplicates numbered.
fn slugs(headings: &[String]) -> Vec<String> {
    // Mirrors github-slugger: a taken slug gets `-1`, `-2`, ... counted per base.
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for h in headings {
        let base = slug(h);
        let mut result = base.clone();
        while occurrences.contains_key(&result) {
            let n = occurrences.entry(base.clone()).or_default();
            *n += 1;
            result = format!("{base}-{n}");
        }
        occurrences.insert(result.clone(), 0);
        out.push(result);
    }
    out
}

/// One heading's slug: rendered text lowercased, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    rendered_text(heading)
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The heading as GitHub renders it, near enough for its slug: links and
/// images become their text, HTML tags vanish (backticks and `*` are
/// punctuation that `slug` drops anyway).
fn rendered_text(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some(end) = rest.find('>') {
                rest = &rest[end + 1..];
                continue;
            }
        }
        if c == ']' && rest[1..].starts_with('(') {
            // Skip the `(destination)` of a link whose text was kept.
            let dest = link_destination(&rest[2..]);
            let after = &rest[2 + dest.len()..];
            rest = after.find(')').map_or(after, |i| &after[i + 1..]);
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Vec<(usize, String)> {
        links(text)
            .into_iter()
            .map(|l| (l.line, l.target))
            .collect()
    }

    #[test]
    fn finds_inline_and_reference_links_outside_code() {
        let text = "\
See [the guide](docs/guide.md#setup \"title\") and ![pic](img/a.png).
Not `[code](nope.md)` nor [web](https://example.com) nor [m](mailto:a@b).

```sh
[fenced](nope.md)
```
[ref]: docs/ref.md
[^1]: a footnote
[paren](a_(b).md) [angle](<with space.md>) [anchor](#local)
";
        let expected = [
            (1, "docs/guide.md#setup"),
            (1, "img/a.png"),
            (7, "docs/ref.md"),
            (9, "a_(b).md"),
            (9, "with space.md"),
            (9, "#local"),
        ]
        .map(|(l, t)| (l, t.to_string()));
        assert_eq!(targets(text), expected);
    }

    #[test]
    fn slugs_follow_github() {
        let headings: Vec<String> = [
            "Try it (fresh Debian 12, as root)",
            "`cargo xtask` & friends",
            "Not yet",
            "Not yet",
            "Not yet-1",
            "[Linked](x.md) heading",
            "Ünïcode_ok",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            slugs(&headings),
            [
                "try-it-fresh-debian-12-as-root",
                "cargo-xtask--friends",
                "not-yet",
                "not-yet-1",
                "not-yet-1-1",
                "linked-heading",
                "ünïcode_ok",
            ]
        );
    }

    #[test]
    fn headings_atx_and_setext_not_in_code() {
        let text = "# Title #\n\nIntro\n=====\n\n```\n# not a heading\n```\n- item\n---\n#tag\n## Closing ##\n";
        assert_eq!(headings(text), ["Title", "Intro", "Closing"]);
    }

    fn docs(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<String>) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let result = check(dir.path());
        (dir, result)
    }

    #[test]
    fn good_links_pass() {
        let (_dir, result) = docs(&[
            (
                "README.md",
                "# Top\n\n[guide](docs/guide.md#set-up) [self](#top) [dir](docs/) [src](src/x.rs#L3)\n",
            ),
            ("docs/guide.md", "## Set up\n[back](../README.md#top) [root](/README.md)\n"),
            ("docs/deep/more.md", "[up](../guide.md)\n"),
            ("src/x.rs", ""),
        ]);
        assert_eq!(
            result.expect("passes"),
            "links: 7 relative links in 3 Markdown files, ok"
        );
    }

    #[test]
    fn missing_files_and_anchors_are_named() {
        let (_dir, result) = docs(&[
            (
                "README.md",
                "# Top\n\n[gone](docs/gone.md)\n[bad](#nowhere)\n",
            ),
            ("docs/guide.md", "# Guide\n\n[anchor](../README.md#guide)\n"),
        ]);
        let err = result.expect_err("fails").to_string();
        assert!(
            err.contains("README.md:3: docs/gone.md does not exist (docs/gone.md)"),
            "{err}"
        );
        assert!(
            err.contains("README.md:4: no heading in README.md has the anchor #nowhere"),
            "{err}"
        );
        assert!(
            err.contains("docs/guide.md:3: no heading in README.md has the anchor #guide (../README.md#guide)"),
            "{err}"
        );
    }

    #[test]
    fn only_readme_without_docs() {
        let (_dir, result) = docs(&[("README.md", "no links\n")]);
        assert_eq!(
            result.expect("passes"),
            "links: 0 relative links in 1 Markdown files, ok"
        );
    }
}
