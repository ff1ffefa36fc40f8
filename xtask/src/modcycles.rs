//! No module cycles inside a crate.
//!
//! Each target root (the library, every binary, test, bench, example and
//! build script) is read as its own module tree: `mod x;` is followed to
//! `x.rs` or `x/mod.rs` (honouring `#[path]`), and inline `mod x { ... }`
//! blocks, `#[cfg(test)] mod tests` included, are modules too.
//!
//! A module references another when it names it, or anything inside it, in
//! a `use` rooted at `crate`, `self`, `super` or one of its own child modules,
//! or in any other path (types, expressions, patterns, and the tokens of
//! macro invocations and `macro_rules!` bodies) rooted at `crate`, `self`,
//! `super`, a child module, or a module that a `use` brought into scope. A
//! path names the deepest module its leading segments walk through.
//!
//! **Definition of a cycle.** For every module M, take the graph among M's
//! direct child modules, where each child stands for its whole subtree:
//! child A → child B when any module in A's subtree references B or
//! anything in B's subtree. References to M itself, to M's ancestors or to
//! modules outside M are ignored at that level: they are judged at the level
//! where the two modules involved are siblings. That graph must be acyclic at
//! every level. So two files under `policy/` using each other is a cycle, and
//! so is a top-level `authz` whose subtree uses `relay` while `relay`'s
//! subtree uses `authz`; a child using items of its own parent
//! (`super::Thing`) is not. Each reference is thus judged exactly once, at
//! the lowest common ancestor of the two modules, and a reference between a
//! module and its own ancestor or descendant is never part of a cycle.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::visit::Visit;

use crate::metadata::{Metadata, Package};

/// Checks every target of every workspace crate; returns the summary line,
/// or an error listing every cycle.
pub fn check(meta: &Metadata) -> Result<String> {
    let (mut modules, mut targets, mut crates) = (0, 0, 0);
    let mut report = Vec::new();
    for krate in meta.members() {
        crates += 1;
        for (label, root) in target_roots(krate) {
            let tree = Tree::load(&root).with_context(|| format!("{label}: reading modules"))?;
            modules += tree.modules.len();
            targets += 1;
            let base = krate.manifest_path.parent().unwrap_or(Path::new("."));
            report.extend(tree.cycles().iter().map(|c| tree.render(c, &label, base)));
        }
    }
    let checked = format!("{modules} modules in {targets} targets of {crates} crates");
    if !report.is_empty() {
        bail!(
            "{} module cycles among {checked}:\n{}",
            report.len(),
            report.join("\n")
        );
    }
    Ok(format!("modcycles: {checked}, no cycles"))
}

/// Each distinct target root of a crate, with a label naming the crate (and
/// the target, unless it is the library).
fn target_roots(krate: &Package) -> Vec<(String, PathBuf)> {
    let mut seen = HashSet::new();
    krate
        .targets
        .iter()
        .filter(|t| seen.insert(t.src_path.clone()))
        .map(|t| {
            let is_lib = t
                .kind
                .iter()
                .any(|k| k.contains("lib") || k == "proc-macro");
            let label = if is_lib {
                krate.name.clone()
            } else {
                format!("{} ({} {})", krate.name, t.kind.join(","), t.name)
            };
            (label, t.src_path.clone())
        })
        .collect()
}

/// A module tree and the references between its modules.
#[derive(Default)]
pub struct Tree {
    modules: Vec<Module>,
    refs: Vec<Ref>,
}

/// One module; index 0 is the crate root.
struct Module {
    name: String,
    parent: Option<usize>,
    children: BTreeMap<String, usize>,
    /// The file its items are written in.
    file: PathBuf,
}

/// A reference from one module to another, with where it is written.
struct Ref {
    from: usize,
    to: usize,
    file: PathBuf,
    line: usize,
    written: String,
}

/// Where a module's `mod x;` children are looked for.
struct Place {
    file: PathBuf,
    /// `x.rs` and `x/mod.rs` are looked for here.
    child_dir: PathBuf,
    /// Inside an inline `mod x { }`: `#[path]` is then relative to `child_dir`.
    inline: bool,
}

/// A module cycle: at the level of `parent`'s children, `members` reach each
/// other.
pub struct Cycle {
    parent: usize,
    members: Vec<usize>,
    /// Child → child, with the references behind each edge.
    edges: BTreeMap<(usize, usize), Vec<usize>>,
}

impl Tree {
    /// Reads the module tree rooted at `root` and collects its references.
    pub fn load(root: &Path) -> Result<Tree> {
        let mut loader = Loader::default();
        let place = Place {
            file: root.to_path_buf(),
            child_dir: root.parent().unwrap_or(Path::new(".")).to_path_buf(),
            inline: false,
        };
        loader.open_files.push(canonical(root));
        loader.add_module(None, "crate", &place, parse(root)?)?;
        let mut tree = Tree {
            modules: loader.modules,
            refs: Vec::new(),
        };
        // References need the whole tree: a path may name any module.
        for (id, items) in loader.items.iter().enumerate() {
            tree.collect_refs(id, items);
        }
        Ok(tree)
    }

    /// Records the references module `id` makes in its own `items`.
    fn collect_refs(&mut self, id: usize, items: &[syn::Item]) {
        let mut found = Collector::default();
        for item in items {
            found.visit_item(item);
        }
        let mut aliases = Aliases::default();
        for leaf in &found.uses {
            let Some((to, whole)) = self.resolve(id, &leaf.path.segments, None) else {
                continue;
            };
            match (&leaf.binding, whole) {
                (Some(name), true) => {
                    aliases.named.insert(name.clone(), to);
                }
                (None, true) => {
                    for (name, &child) in &self.modules[to].children {
                        aliases.globbed.entry(name.clone()).or_insert(child);
                    }
                }
                _ => {}
            }
            self.push_ref(id, to, &leaf.path);
        }
        for path in &found.paths {
            // A lone name is a value, type or macro, never a module.
            if path.segments.len() < 2 && !is_root_keyword(&path.segments[0]) {
                continue;
            }
            if let Some((to, _)) = self.resolve(id, &path.segments, Some(&aliases)) {
                self.push_ref(id, to, path);
            }
        }
    }

    fn push_ref(&mut self, from: usize, to: usize, path: &Written) {
        self.refs.push(Ref {
            from,
            to,
            file: self.modules[from].file.clone(),
            line: path.line,
            written: path.segments.join("::"),
        });
    }

    /// The deepest module `segments` names as seen from module `at`, and
    /// whether every segment named a module. `aliases` are the names `use`
    /// brought into scope (not consulted for `use` paths themselves).
    fn resolve(
        &self,
        at: usize,
        segments: &[String],
        aliases: Option<&Aliases>,
    ) -> Option<(usize, bool)> {
        let (first, rest) = segments.split_first()?;
        let mut module = match first.as_str() {
            "crate" => 0,
            "self" => at,
            "super" => self.modules[at].parent?,
            name => self.modules[at]
                .children
                .get(name)
                .copied()
                .or_else(|| aliases.and_then(|a| a.get(name)))?,
        };
        let mut descended = !is_root_keyword(first);
        for segment in rest {
            if segment == "super" && !descended {
                module = self.modules[module].parent?;
            } else if let Some(&child) = self.modules[module].children.get(segment) {
                module = child;
                descended = true;
            } else {
                return Some((module, false));
            }
        }
        Some((module, true))
    }

    /// The modules from the root down to `id`.
    fn lineage(&self, id: usize) -> Vec<usize> {
        let mut chain = vec![id];
        let mut at = id;
        while let Some(p) = self.modules[at].parent {
            chain.push(p);
            at = p;
        }
        chain.reverse();
        chain
    }

    /// For a reference, the module at whose level it is judged and the two
    /// children of that module it links; `None` when one module contains the other.
    fn sibling_edge(&self, from: usize, to: usize) -> Option<(usize, usize, usize)> {
        let (f, t) = (self.lineage(from), self.lineage(to));
        let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
        if common == f.len() || common == t.len() {
            return None;
        }
        Some((f[common - 1], f[common], t[common]))
    }

    /// Every cycle, one per strongly connected set of siblings.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut levels: BTreeMap<usize, BTreeMap<(usize, usize), Vec<usize>>> = BTreeMap::new();
        for (i, r) in self.refs.iter().enumerate() {
            if let Some((parent, a, b)) = self.sibling_edge(r.from, r.to) {
                levels
                    .entry(parent)
                    .or_default()
                    .entry((a, b))
                    .or_default()
                    .push(i);
            }
        }
        let mut cycles = Vec::new();
        for (parent, edges) in levels {
            for members in components(&edges) {
                let edges = edges
                    .iter()
                    .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                    .map(|(&k, v)| (k, v.clone()))
                    .collect();
                cycles.push(Cycle {
                    parent,
                    members,
                    edges,
                });
            }
        }
        cycles
    }

    /// `crate::a::b`.
    fn path_of(&self, id: usize) -> String {
        let names: Vec<&str> = self
            .lineage(id)
            .iter()
            .map(|&m| self.modules[m].name.as_str())
            .collect();
        names.join("::")
    }

    /// `src/a.rs:12 uses crate::b::X`, for the first reference behind an edge.
    fn evidence(&self, refs: &[usize], base: &Path) -> String {
        let first = refs
            .iter()
            .map(|&i| &self.refs[i])
            .min_by_key(|r| (r.file.as_os_str(), r.line))
            .expect("an edge has a reference");
        let file = first.file.strip_prefix(base).unwrap_or(&first.file);
        let more = match refs.len() {
            1 => String::new(),
            n => format!(" (+{} more)", n - 1),
        };
        format!(
            "{}:{} uses {}{more}",
            file.display(),
            first.line,
            first.written
        )
    }

    /// The report for one cycle: a shortest loop through each member, and
    /// for larger tangles every edge inside it, each with where it is written.
    pub fn render(&self, cycle: &Cycle, label: &str, base: &Path) -> String {
        let mut loops = BTreeSet::new();
        for &m in &cycle.members {
            if let Some(l) = shortest_loop(&cycle.edges, m) {
                loops.insert(rotate_to_min(l));
            }
        }
        let lines: Vec<String> = loops
            .iter()
            .map(|l| {
                let names: Vec<String> = l.iter().map(|&m| self.path_of(m)).collect();
                let why: Vec<String> = l
                    .windows(2)
                    .map(|w| self.evidence(&cycle.edges[&(w[0], w[1])], base))
                    .collect();
                format!("{label}: {} ({})", names.join(" -> "), why.join("; "))
            })
            .collect();
        if cycle.members.len() == 2 {
            return lines.join("\n");
        }
        let names: Vec<String> = cycle
            .members
            .iter()
            .map(|&m| self.modules[m].name.clone())
            .collect();
        let mut out = vec![format!(
            "{label}: {} modules under {} reach each other: {}",
            names.len(),
            self.path_of(cycle.parent),
            names.join(", ")
        )];
        out.extend(lines.iter().map(|l| format!("  {l}")));
        out.push("  every edge among them:".into());
        for (&(a, b), refs) in &cycle.edges {
            out.push(format!(
                "    {} -> {}: {}",
                self.path_of(a),
                self.path_of(b),
                self.evidence(refs, base)
            ));
        }
        out.join("\n")
    }

    /// `from -> to (written)` for every reference, for tests.
    #[cfg(test)]
    fn references(&self) -> Vec<String> {
        self.refs
            .iter()
            .map(|r| {
                format!(
                    "{} -> {} ({})",
                    self.path_of(r.from),
                    self.path_of(r.to),
                    r.written
                )
            })
            .collect()
    }
}

/// Builds the modules of a tree, keeping each module's items for the
/// reference pass.
#[derive(Default)]
struct Loader {
    modules: Vec<Module>,
    /// Each module's own items, by module index.
    items: Vec<Vec<syn::Item>>,
    /// The files of the module being loaded and of its ancestors.
    open_files: Vec<PathBuf>,
}

impl Loader {
    /// Adds a module and, recursively, its children.
    fn add_module(
        &mut self,
        parent: Option<usize>,
        name: &str,
        place: &Place,
        own: Vec<syn::Item>,
    ) -> Result<()> {
        let id = self.modules.len();
        self.modules.push(Module {
            name: name.to_string(),
            parent,
            children: BTreeMap::new(),
            file: place.file.clone(),
        });
        self.items.push(Vec::new());
        if let Some(p) = parent {
            self.modules[p].children.insert(name.to_string(), id);
        }
        for item in &own {
            if let syn::Item::Mod(m) = item {
                self.add_child(id, place, m)?;
            }
        }
        self.items[id] = own;
        Ok(())
    }

    /// Adds the module `m` declares inside module `parent`.
    fn add_child(&mut self, parent: usize, place: &Place, m: &syn::ItemMod) -> Result<()> {
        let name = m.ident.unraw().to_string();
        if let Some((_, inner)) = &m.content {
            // `#[path]` on an inline module moves where its children are looked for.
            let child_dir = match path_attributes(&m.attrs).first() {
                Some(p) => path_base(place).join(p),
                None => place.child_dir.join(&name),
            };
            let inline = Place {
                file: place.file.clone(),
                child_dir,
                inline: true,
            };
            return self.add_module(Some(parent), &name, &inline, inner.clone());
        }
        let Some(child) = child_place(place, m, &name)? else {
            return Ok(());
        };
        // A `#[path]` loop would otherwise recurse forever.
        let key = canonical(&child.file);
        if self.open_files.contains(&key) {
            bail!(
                "{}: `mod {name};` includes {} inside itself",
                place.file.display(),
                child.file.display()
            );
        }
        let parsed = parse(&child.file)?;
        self.open_files.push(key);
        let added = self.add_module(Some(parent), &name, &child, parsed);
        self.open_files.pop();
        added
    }
}

fn canonical(file: &Path) -> PathBuf {
    std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf())
}

/// The sets of nodes on a cycle in `edges` (strongly connected, more than one node).
fn components(edges: &BTreeMap<(usize, usize), Vec<usize>>) -> Vec<Vec<usize>> {
    let nodes: BTreeSet<usize> = edges.keys().flat_map(|&(a, b)| [a, b]).collect();
    let reach: HashMap<usize, BTreeSet<usize>> =
        nodes.iter().map(|&n| (n, reachable(edges, n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for &n in &nodes {
        if done.contains(&n) || !reach[&n].contains(&n) {
            continue;
        }
        let members: Vec<usize> = reach[&n]
            .iter()
            .copied()
            .filter(|m| reach[m].contains(&n))
            .collect();
        done.extend(members.iter().copied());
        found.push(members);
    }
    found
}

/// Nodes reachable from `start` in one or more steps.
fn reachable(edges: &BTreeMap<(usize, usize), Vec<usize>>, start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &(_, b) in edges.keys().filter(|(a, _)| *a == n) {
            if seen.insert(b) {
                queue.push_back(b);
            }
        }
    }
    seen
}

/// A shortest path `start -> ... -> start`, both ends included.
fn shortest_loop(edges: &BTreeMap<(usize, usize), Vec<usize>>, start: usize) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &(_, b) in edges.keys().filter(|(a, _)| *a == n) {
            if b == start {
                let mut path = vec![n];
                let mut at = n;
                while let Some(&p) = parent.get(&at) {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(b) {
                e.insert(n);
                queue.push_back(b);
            }
        }
    }
    None
}

/// The same loop starting at its smallest node, so rotations compare equal.
fn rotate_to_min(mut l: Vec<usize>) -> Vec<usize> {
    l.pop();
    let at = l
        .iter()
        .enumerate()
        .min_by_key(|(_, &m)| m)
        .map_or(0, |(i, _)| i);
    l.rotate_left(at);
    l.push(l[0]);
    l
}

fn is_root_keyword(segment: &str) -> bool {
    matches!(segment, "crate" | "self" | "super")
}

fn parse(file: &Path) -> Result<Vec<syn::Item>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match syn::parse_file(&text) {
        Ok(parsed) => Ok(parsed.items),
        Err(e) => {
            let at = e.span().start();
            bail!("{}:{}:{}: {e}", file.display(), at.line, at.column + 1)
        }
    }
}

/// The directory `#[path]` on a module declared in `place` is relative to.
fn path_base(place: &Place) -> PathBuf {
    if place.inline {
        place.child_dir.clone()
    } else {
        place.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }
}

/// Where the file of `mod name;` (declared in `place`) is, and where its own
/// children will be looked for; `None` for a conditional module whose file
/// is absent (another platform's, say).
fn child_place(place: &Place, m: &syn::ItemMod, name: &str) -> Result<Option<Place>> {
    let paths = path_attributes(&m.attrs);
    let conditional = m
        .attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"));
    if !paths.is_empty() {
        let base = path_base(place);
        // rustc treats a `#[path]` file like a `mod.rs`: its children sit beside it.
        let found = paths.iter().map(|p| base.join(p)).find(|f| f.is_file());
        return match found {
            Some(file) => Ok(Some(Place {
                child_dir: file.parent().unwrap_or(Path::new(".")).to_path_buf(),
                file,
                inline: false,
            })),
            None if conditional => Ok(None),
            None => missing(place, m, &paths.join(" or ")),
        };
    }
    let child_dir = place.child_dir.join(name);
    let flat = place.child_dir.join(format!("{name}.rs"));
    let nested = child_dir.join("mod.rs");
    match [flat, nested].into_iter().find(|f| f.is_file()) {
        Some(file) => Ok(Some(Place {
            file,
            child_dir,
            inline: false,
        })),
        None if conditional => Ok(None),
        None => missing(place, m, &format!("{name}.rs or {name}/mod.rs")),
    }
}

fn missing<T>(place: &Place, m: &syn::ItemMod, wanted: &str) -> Result<T> {
    bail!(
        "{}:{}: `mod {};` but there is no {wanted} in {}",
        place.file.display(),
        m.ident.span().start().line,
        m.ident,
        path_base(place).display()
    )
}

/// The files `#[path = "..."]` names, then those `#[cfg_attr(pred, path = "...")]`
/// names (one per platform, typically).
fn path_attributes(attrs: &[syn::Attribute]) -> Vec<String> {
    let plain = attrs.iter().filter_map(|a| path_value(&a.meta));
    let conditional = attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg_attr"))
        .filter_map(|a| {
            a.parse_args_with(Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
                .ok()
        })
        // The first element is the predicate.
        .flat_map(|metas| metas.into_iter().skip(1).filter_map(|m| path_value(&m)));
    plain.chain(conditional).collect()
}

/// `"x"` of a `path = "x"` meta.
fn path_value(meta: &syn::Meta) -> Option<String> {
    match meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    }
}

/// A path as written, with its line.
struct Written {
    segments: Vec<String>,
    line: usize,
}

/// One leaf of a `use` tree: the full path and the name it binds (`None` for a glob).
struct UseLeaf {
    path: Written,
    binding: Option<String>,
}

/// Names a module's `use`s brought into scope that name modules.
#[derive(Default)]
struct Aliases {
    named: HashMap<String, usize>,
    /// Children of glob-imported modules; explicit names shadow them.
    globbed: HashMap<String, usize>,
}

impl Aliases {
    fn get(&self, name: &str) -> Option<usize> {
        self.named
            .get(name)
            .or_else(|| self.globbed.get(name))
            .copied()
    }
}

/// Gathers the `use` leaves and other paths written in one module's items.
#[derive(Default)]
struct Collector {
    uses: Vec<UseLeaf>,
    paths: Vec<Written>,
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // A nested module is a module of its own, walked separately.
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        // `use ::x` names an external crate.
        if u.leading_colon.is_none() {
            flatten_use(&u.tree, &mut Vec::new(), &mut self.uses);
        }
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)`, `pub(super)` and `pub(in path)` only ever name ancestors.
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            if let Some(first) = p.segments.first() {
                self.paths.push(Written {
                    segments: p
                        .segments
                        .iter()
                        .map(|s| s.ident.unraw().to_string())
                        .collect(),
                    line: first.ident.span().start().line,
                });
            }
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        syn::visit::visit_macro(self, m);
        // syn leaves macro input unparsed: pick `a::b::c` chains out of the tokens.
        scan_tokens(m.tokens.clone(), &mut self.paths);
    }
}

/// Appends one leaf per name a `use` tree binds, with `prefix` in front.
fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<UseLeaf>) {
    let leaf = |prefix: &[String], ident: &syn::Ident, binding: Option<String>| {
        let mut segments = prefix.to_vec();
        // `a::{self}` binds `a` itself.
        if ident != "self" || segments.is_empty() {
            segments.push(ident.unraw().to_string());
        }
        let binding = binding.or_else(|| segments.last().cloned());
        UseLeaf {
            path: Written {
                segments,
                line: ident.span().start().line,
            },
            binding,
        }
    };
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.unraw().to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(leaf(prefix, &n.ident, None)),
        syn::UseTree::Rename(r) => {
            out.push(leaf(prefix, &r.ident, Some(r.rename.unraw().to_string())))
        }
        syn::UseTree::Glob(g) => out.push(UseLeaf {
            path: Written {
                segments: prefix.clone(),
                line: g.star_token.span.start().line,
            },
            binding: None,
        }),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// Appends every `a::b::c` chain in `tokens` (groups included) to `out`.
fn scan_tokens(tokens: TokenStream, out: &mut Vec<Written>) {
    let tts: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tts.len() {
        match &tts[i] {
            TokenTree::Group(g) => {
                scan_tokens(g.stream(), out);
                i += 1;
            }
            // After `::` the chain is rooted elsewhere (`::std::x`, `<T>::x`).
            TokenTree::Ident(id) if i < 2 || !is_path_sep(&tts, i - 2) => {
                let mut segments = vec![id.unraw().to_string()];
                let mut j = i + 1;
                while is_path_sep(&tts, j) {
                    let Some(TokenTree::Ident(next)) = tts.get(j + 2) else {
                        break;
                    };
                    segments.push(next.unraw().to_string());
                    j += 3;
                }
                out.push(Written {
                    segments,
                    line: id.span().start().line,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
}

/// Whether `tts[i..]` starts with `::`.
fn is_path_sep(tts: &[TokenTree], i: usize) -> bool {
    match (tts.get(i), tts.get(i + 1)) {
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) => {
            a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `files` (path, text) under a temp dir and loads `src/lib.rs`.
    fn crate_of(files: &[(&str, &str)]) -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let tree = Tree::load(&dir.path().join("src/lib.rs")).expect("loads");
        (dir, tree)
    }

    fn report(dir: &tempfile::TempDir, tree: &Tree) -> Vec<String> {
        tree.cycles()
            .iter()
            .map(|c| tree.render(c, "k", dir.path()))
            .collect()
    }

    #[test]
    fn sibling_cycle_is_found_with_both_edges() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod policy;\n"),
            ("src/policy.rs", "mod file;\nmod path;\n"),
            (
                "src/policy/file.rs",
                "pub struct F;\n\nfn f() -> super::path::P { todo!() }\n",
            ),
            (
                "src/policy/path.rs",
                "use crate::policy::file::F;\npub struct P;\n",
            ),
        ]);
        assert_eq!(
            report(&dir, &tree),
            ["k: crate::policy::file -> crate::policy::path -> crate::policy::file \
              (src/policy/file.rs:3 uses super::path::P; src/policy/path.rs:1 uses crate::policy::file::F)"]
        );
    }

    #[test]
    fn top_level_subtrees_form_a_cycle() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod authz;\nmod relay;\n"),
            ("src/authz.rs", "mod audit;\n"),
            (
                "src/authz/audit.rs",
                "use crate::relay::Relay;\npub struct Log;\n",
            ),
            (
                "src/relay/mod.rs",
                "pub struct Relay;\nfn f(_: &crate::authz::audit::Log) {}\n",
            ),
        ]);
        let r = report(&dir, &tree);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("k: crate::authz -> crate::relay -> crate::authz"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("src/relay/mod.rs:2 uses crate::authz::audit::Log"),
            "{}",
            r[0]
        );
    }

    #[test]
    fn parent_and_child_using_each_other_is_no_cycle() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod a;\npub struct Root;\n"),
            (
                "src/a.rs",
                "mod c;\npub struct Thing;\nuse c::Inner;\nfn f() { crate::a::c::g() }\n",
            ),
            (
                "src/a/c.rs",
                "use super::Thing;\nuse crate::Root;\npub struct Inner;\npub fn g() {}\n",
            ),
        ]);
        assert!(report(&dir, &tree).is_empty());
        assert!(tree
            .references()
            .contains(&"crate::a -> crate::a::c (c::Inner)".to_string()));
    }

    #[test]
    fn grouped_use_trees_resolve_each_leaf() {
        let (_dir, tree) = crate_of(&[
            ("src/lib.rs", "mod a;\nmod d;\nmod x;\n"),
            ("src/a.rs", "pub mod b {}\npub mod c { pub struct C; }\n"),
            ("src/d.rs", ""),
            ("src/x.rs", "use crate::{a::{b, c::{self as cc, C}}, d};\n"),
        ]);
        let refs = tree.references();
        for expected in [
            "crate::x -> crate::a::b (crate::a::b)",
            "crate::x -> crate::a::c (crate::a::c)",
            "crate::x -> crate::a::c (crate::a::c::C)",
            "crate::x -> crate::d (crate::d)",
        ] {
            assert!(
                refs.contains(&expected.to_string()),
                "{expected} not in {refs:#?}"
            );
        }
    }

    #[test]
    fn relative_child_paths_and_aliases_resolve() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod ratelimit;\n"),
            (
                "src/ratelimit.rs",
                "mod bucket;\nmod window;\nuse bucket::Take;\n",
            ),
            ("src/ratelimit/bucket.rs", "pub struct Take;\n"),
            // `use super::*` brings the sibling `bucket` into scope; a lone
            // `bucket` is a local variable, not the module.
            (
                "src/ratelimit/window.rs",
                "use super::*;\nfn f(bucket: u8) -> u8 { let _ = bucket::Take; bucket }\n",
            ),
        ]);
        let refs = tree.references();
        assert!(
            refs.contains(&"crate::ratelimit -> crate::ratelimit::bucket (bucket::Take)".into()),
            "{refs:#?}"
        );
        assert!(
            refs.contains(
                &"crate::ratelimit::window -> crate::ratelimit::bucket (bucket::Take)".into()
            ),
            "{refs:#?}"
        );
        assert_eq!(
            refs.iter().filter(|r| r.ends_with("(bucket)")).count(),
            0,
            "{refs:#?}"
        );
        assert!(report(&dir, &tree).is_empty());
    }

    #[test]
    fn inline_test_modules_and_macros_count() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            (
                "src/a.rs",
                "pub fn f() {}\n\n#[cfg(test)]\nmod tests {\n    use crate::b::g;\n}\n",
            ),
            (
                "src/b.rs",
                "pub fn g() {\n    println!(\"{:?}\", crate::a::f());\n}\n",
            ),
        ]);
        assert_eq!(
            report(&dir, &tree),
            ["k: crate::a -> crate::b -> crate::a (src/a.rs:5 uses crate::b::g; src/b.rs:2 uses crate::a::f)"]
        );
    }

    #[test]
    fn path_attributes_and_mod_rs_layouts_are_followed() {
        let (_dir, tree) = crate_of(&[
            (
                "src/lib.rs",
                "#[path = \"elsewhere/thing.rs\"]\nmod a;\nmod b;\nmod i { mod j; }\n",
            ),
            ("src/elsewhere/thing.rs", "mod inner;\n"),
            ("src/elsewhere/inner.rs", "use crate::b::deep::X;\n"),
            ("src/b/mod.rs", "pub mod deep;\n"),
            ("src/b/deep.rs", "pub struct X;\n"),
            ("src/i/j.rs", "use super::super::b::deep;\n"),
        ]);
        let refs = tree.references();
        assert!(
            refs.contains(&"crate::a::inner -> crate::b::deep (crate::b::deep::X)".into()),
            "{refs:#?}"
        );
        assert!(
            refs.contains(&"crate::i::j -> crate::b::deep (super::super::b::deep)".into()),
            "{refs:#?}"
        );
    }

    #[test]
    fn conditional_modules_are_followed_where_their_files_exist() {
        let (_dir, tree) = crate_of(&[
            (
                "src/lib.rs",
                "#[cfg_attr(windows, path = \"sys/windows.rs\")]\n\
                 #[cfg_attr(unix, path = \"sys/unix.rs\")]\n\
                 mod sys;\n\
                 #[cfg(feature = \"gone\")]\nmod generated;\n\
                 #[cfg(a)]\npub mod twice;\n#[cfg(not(a))]\nmod twice;\n\
                 mod algs;\n",
            ),
            ("src/sys/unix.rs", "use crate::twice::T;\n"),
            ("src/twice.rs", "pub struct T;\n"),
            (
                "src/algs.rs",
                "#[path = \".\"]\nmod tests {\n    #[path = \"shared.rs\"]\n    mod shared;\n}\n",
            ),
            ("src/shared.rs", "use crate::sys;\n"),
        ]);
        let refs = tree.references();
        assert!(
            refs.contains(&"crate::sys -> crate::twice (crate::twice::T)".into()),
            "{refs:#?}"
        );
        assert!(
            refs.contains(&"crate::algs::tests::shared -> crate::sys (crate::sys)".into()),
            "{refs:#?}"
        );
    }

    #[test]
    fn larger_tangles_list_every_edge() {
        let (dir, tree) = crate_of(&[
            ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("src/a.rs", "use crate::b::X;\n"),
            ("src/b.rs", "use crate::c::X;\n"),
            ("src/c.rs", "use crate::a::X;\nuse crate::b::Y;\n"),
        ]);
        let r = report(&dir, &tree);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(
            r[0].starts_with("k: 3 modules under crate reach each other: a, b, c"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("crate::b -> crate::c -> crate::b"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("crate::a -> crate::b -> crate::c -> crate::a"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("crate::c -> crate::a: src/c.rs:1 uses crate::a::X"),
            "{}",
            r[0]
        );
    }

    #[test]
    fn missing_module_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("src")).expect("mkdir");
        std::fs::write(dir.path().join("src/lib.rs"), "\nmod gone;\n").expect("write");
        let err = Tree::load(&dir.path().join("src/lib.rs"))
            .err()
            .expect("fails");
        assert!(err.to_string().contains("lib.rs:2: `mod gone;`"), "{err}");
    }
}
