//! Reading policies: the directory, `---` documents, and every error with
//! its file and line, so one reload reports all that is wrong at once.

use std::{
    borrow::Cow,
    cell::Cell,
    collections::{hash_map::Entry, HashMap},
    ffi::OsStr,
    fs,
    io::Read,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use serde::de::DeserializeOwned;

use super::{
    file::{
        AuthorizationPolicyFile, Header, PeerAuthenticationFile, RateLimitPolicyFile,
        RequestAuthenticationFile, API_VERSIONS, NODEWARD_API_VERSION,
    },
    jwt::rule::RequestAuthnPolicy,
    model::{AuthzPolicy, FieldError, Loaded, Origin, PeerPolicy, RateLimitPolicy},
    PolicyKind, PolicyRef, PolicySet, Settings,
};
use nodeward_yaml::{self as yaml, DecodeErrors, FileError};

/// Larger policy files are refused: real ones are a few KiB, and a huge one
/// is a mistake or an attempt to stall the loader.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many errors are listed per document.
pub const MAX_ERRORS_PER_DOCUMENT: usize = 20;

/// Each error after a document's first costs decoding it again (see
/// `nodeward_yaml::decode_all`); a file may spend this many bytes on that.
/// Real policies get every error (20 passes over a 50 KiB document), while
/// a huge file of errors costs at most about twice one strict read.
const REREAD_BYTES_PER_FILE: usize = 1 << 20;

/// Fields of Istio's API that nodeward does not enforce. They get their own
/// message: the policy is refused because honouring it half would be a hole.
const UNSUPPORTED_FIELDS: [&str; 11] = [
    "fromCookies",
    "outputPayloadToHeader",
    "timeout",
    "source.remoteIpBlocks",
    "source.notRemoteIpBlocks",
    "source.serviceAccounts",
    "source.notServiceAccounts",
    "spec.provider",
    "spec.targetRef",
    "spec.targetRefs",
    "spec.portLevelMtls",
];

/// Every policy of a load, by kind, in load order.
#[derive(Debug, Default)]
pub(super) struct Policies {
    pub authz: Vec<Loaded<AuthzPolicy>>,
    pub peer: Vec<Loaded<PeerPolicy>>,
    pub rate: Vec<Loaded<RateLimitPolicy>>,
    pub authn: Vec<Loaded<RequestAuthnPolicy>>,
}

/// One problem in a policy file: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", location(.path, .line))]
pub struct PolicyError {
    pub path: PathBuf,
    /// `None` for problems with the whole file or directory.
    pub line: Option<usize>,
    /// Names the document (index, kind, namespace/name) and the field.
    pub message: String,
}

/// Every problem found in one load, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct LoadErrors(pub Vec<PolicyError>);

/// Accumulates policies and errors across files.
#[derive(Default)]
struct Loader {
    errors: Vec<PolicyError>,
    policies: Policies,
    seen: HashMap<(PolicyKind, PolicyRef), Origin>,
}

/// One `---` document of a file.
struct Document<'a> {
    file: &'a Arc<Path>,
    text: &'a str,
    /// File line of the document's first line (its `---`, if any).
    start_line: usize,
    /// File line of its first line with content; errors without a position
    /// of their own point here.
    first_line: usize,
    /// 1-based, counting documents with content.
    index: usize,
    /// ` (kind namespace/name)` once known.
    label: String,
    /// What is left of the file's [`REREAD_BYTES_PER_FILE`].
    reread: &'a Cell<usize>,
}

pub(super) fn load_dir(dir: &Path, settings: Settings) -> Result<PolicySet, LoadErrors> {
    let mut errors = Vec::new();
    let sources = read_dir(dir, &mut errors);
    build(&sources, settings, errors)
}

pub(super) fn read_sources(dir: &Path) -> Result<Vec<(PathBuf, String)>, LoadErrors> {
    let mut errors = Vec::new();
    let sources = read_dir(dir, &mut errors);
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(LoadErrors(errors))
    }
}

pub(super) fn from_sources(
    sources: &[(PathBuf, String)],
    settings: Settings,
) -> Result<PolicySet, LoadErrors> {
    build(sources, settings, Vec::new())
}

fn build(
    sources: &[(PathBuf, String)],
    settings: Settings,
    errors: Vec<PolicyError>,
) -> Result<PolicySet, LoadErrors> {
    let mut loader = Loader {
        errors,
        ..Loader::default()
    };
    for (path, text) in sources {
        loader.file(path, text);
    }
    if !loader.errors.is_empty() {
        return Err(LoadErrors(loader.errors));
    }
    Ok(PolicySet::new(settings, sources.len(), loader.policies))
}

impl Loader {
    fn file(&mut self, path: &Path, text: &str) {
        if text.len() as u64 > MAX_FILE_BYTES {
            self.errors.push(PolicyError::whole(path, too_large()));
            return;
        }
        let file: Arc<Path> = path.into();
        let reread = Cell::new(REREAD_BYTES_PER_FILE);
        let mut index = 0;
        for (text, start_line, first_line) in split_documents(text) {
            let mut doc = Document {
                file: &file,
                text,
                start_line,
                first_line,
                index: index + 1,
                label: String::new(),
                reread: &reread,
            };
            let result = match decode::<Option<Header>>(&doc) {
                Ok(None) => continue, // empty, e.g. after a trailing `---`
                Ok(Some(header)) => self.document(&mut doc, header),
                Err(err) => Err(vec![err]),
            };
            index += 1;
            if let Err(errors) = result {
                self.errors.extend(errors);
            }
        }
    }

    fn document(&mut self, doc: &mut Document<'_>, header: Header) -> Result<(), Vec<PolicyError>> {
        doc.label = label(&header);
        let Header {
            api_version,
            kind,
            metadata: _,
        } = header;
        match check_kind(api_version.as_deref(), kind.as_deref()) {
            Err(message) => Err(vec![doc.error(None, None, &message)]),
            Ok(kind @ PolicyKind::AuthorizationPolicy) => {
                let policy = convert::<AuthorizationPolicyFile, AuthzPolicy>(doc)?;
                let origin = self.register(kind, &policy.id, doc).map_err(|e| vec![e])?;
                self.policies.authz.push(Loaded { policy, origin });
                Ok(())
            }
            Ok(kind @ PolicyKind::PeerAuthentication) => {
                let policy = convert::<PeerAuthenticationFile, PeerPolicy>(doc)?;
                let origin = self.register(kind, &policy.id, doc).map_err(|e| vec![e])?;
                self.policies.peer.push(Loaded { policy, origin });
                Ok(())
            }
            Ok(kind @ PolicyKind::RateLimitPolicy) => {
                let policy = convert::<RateLimitPolicyFile, RateLimitPolicy>(doc)?;
                let origin = self
                    .register(kind, &policy.limit.id, doc)
                    .map_err(|e| vec![e])?;
                self.policies.rate.push(Loaded { policy, origin });
                Ok(())
            }
            Ok(kind @ PolicyKind::RequestAuthentication) => {
                let policy = convert::<RequestAuthenticationFile, RequestAuthnPolicy>(doc)?;
                let origin = self.register(kind, &policy.id, doc).map_err(|e| vec![e])?;
                self.policies.authn.push(Loaded { policy, origin });
                Ok(())
            }
        }
    }

    /// Refuses a second policy of the same kind and `namespace/name`: which
    /// one Kubernetes would keep depends on apply order, so we do not guess.
    fn register(
        &mut self,
        kind: PolicyKind,
        id: &PolicyRef,
        doc: &Document<'_>,
    ) -> Result<Origin, PolicyError> {
        let origin = Origin {
            file: doc.file.clone(),
            line: doc.first_line,
        };
        match self.seen.entry((kind, id.clone())) {
            Entry::Occupied(first) => {
                let first = first.get();
                let message = format!(
                    "duplicate {kind} {id}; first defined at {}:{}",
                    first.file.display(),
                    first.line
                );
                Err(doc.error(None, None, &message))
            }
            Entry::Vacant(slot) => Ok(slot.insert(origin).clone()),
        }
    }
}

impl Document<'_> {
    fn error(&self, line: Option<usize>, field: Option<&str>, message: &str) -> PolicyError {
        let field = match field {
            Some(f) if !f.is_empty() && f != "(document)" => format!("field `{f}`: "),
            _ => String::new(),
        };
        PolicyError {
            path: self.file.to_path_buf(),
            line: Some(line.unwrap_or(self.first_line)),
            message: format!("document {}{}: {field}{message}", self.index, self.label),
        }
    }

    /// How many errors to look for: as many passes as the file's budget
    /// allows, from 1 (the strict decode) to [`MAX_ERRORS_PER_DOCUMENT`].
    fn error_limit(&self) -> usize {
        let passes = self.reread.get() / self.text.len().max(1);
        passes.clamp(1, MAX_ERRORS_PER_DOCUMENT)
    }

    /// Charges the passes after the first to the file's budget.
    fn spend_rereads(&self, passes: usize) {
        let spent = passes.saturating_sub(1).saturating_mul(self.text.len());
        self.reread.set(self.reread.get().saturating_sub(spent));
    }

    /// Maps a line within the document to the file; line 1 is the `---` (or
    /// the file's start), so it is reported as the first line with content.
    fn file_line(&self, relative: usize) -> usize {
        if relative <= 1 {
            self.first_line
        } else {
            self.start_line + relative - 1
        }
    }
}

impl PolicyError {
    /// A problem with a whole file or directory.
    fn whole(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            line: None,
            message: message.into(),
        }
    }
}

/// Decodes the document strictly into `F`, then converts it.
///
/// Every error in the fields is reported (unknown fields, values that do
/// not parse); the rules that span fields, checked by the conversion, only
/// once the fields decode, and the first one broken.
fn convert<F: DeserializeOwned, T: TryFrom<F, Error = FieldError>>(
    doc: &Document<'_>,
) -> Result<T, Vec<PolicyError>> {
    let file = yaml::decode_all::<F>(doc.file, doc.text, doc.error_limit()).map_err(|e| {
        let DecodeErrors {
            errors,
            truncated,
            passes,
        } = e;
        doc.spend_rereads(passes);
        let mut errors: Vec<PolicyError> = errors.into_iter().map(|e| file_error(doc, e)).collect();
        if truncated {
            let plural = if errors.len() == 1 { "" } else { "s" };
            let message = format!(
                "stopped after {} error{plural}; there may be more",
                errors.len()
            );
            errors.push(doc.error(None, None, &message));
        }
        errors
    })?;
    T::try_from(file).map_err(|e| vec![doc.error(None, Some(&e.field), &e.message)])
}

/// Decodes the document's header: lenient, so one error is all it can have.
fn decode<T: DeserializeOwned>(doc: &Document<'_>) -> Result<T, PolicyError> {
    yaml::decode(doc.file, doc.text).map_err(|err| file_error(doc, err))
}

fn file_error(doc: &Document<'_>, err: FileError) -> PolicyError {
    match err {
        FileError::Decode {
            line,
            field,
            message,
            ..
        } => doc.error(
            Some(doc.file_line(line)),
            Some(&field),
            &explain_unknown(&field, message),
        ),
        other => doc.error(None, None, &other.to_string()),
    }
}

fn check_kind(api_version: Option<&str>, kind: Option<&str>) -> Result<PolicyKind, String> {
    let (version, kind) = match (api_version, kind) {
        (_, None) => return Err("missing `kind`".to_owned()),
        (None, Some(_)) => return Err("missing `apiVersion`".to_owned()),
        (Some(version), Some(kind)) => (version, kind),
    };
    let (known, versions): (_, &[&str]) = match kind {
        "AuthorizationPolicy" => (PolicyKind::AuthorizationPolicy, &API_VERSIONS),
        "PeerAuthentication" => (PolicyKind::PeerAuthentication, &API_VERSIONS),
        "RateLimitPolicy" => (PolicyKind::RateLimitPolicy, &[NODEWARD_API_VERSION]),
        "RequestAuthentication" => (PolicyKind::RequestAuthentication, &API_VERSIONS),
        _ => {
            return Err(format!(
                "unsupported kind {kind:?}; nodeward reads AuthorizationPolicy, \
                 PeerAuthentication, RequestAuthentication and RateLimitPolicy"
            ))
        }
    };
    if !versions.contains(&version) {
        let expected = versions.join(" or ");
        return Err(format!(
            "unsupported apiVersion {version:?} for {kind}; expected {expected}"
        ));
    }
    Ok(known)
}

/// Rewords serde's "unknown field" for Istio fields we know but do not
/// support, so the author learns it is deliberate, not a typo.
fn explain_unknown(field: &str, message: String) -> String {
    let unsupported = UNSUPPORTED_FIELDS
        .iter()
        .any(|u| field == *u || field.strip_suffix(u).is_some_and(|p| p.ends_with('.')));
    if !unsupported || !message.starts_with("unknown field") {
        return message;
    }
    let name = field.rsplit('.').next().unwrap_or(field);
    format!(
        "`{name}` is an Istio feature nodeward does not support; \
         refusing the policy rather than ignoring the field"
    )
}

/// ` (AuthorizationPolicy shop/name)`, as much as the header tells.
fn label(header: &Header) -> String {
    let meta = header.metadata.as_ref();
    let name = meta.and_then(|m| m.name.as_deref()).map(shown);
    let namespace = meta.and_then(|m| m.namespace.as_deref()).map(shown);
    let id = match (namespace, name) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        (None, Some(name)) => Some(name.into_owned()),
        _ => None,
    };
    let kind = header.kind.as_deref().map(|k| shown(k).into_owned());
    let parts: Vec<String> = kind.into_iter().chain(id).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(" "))
    }
}

/// Values from a file go into messages quoted unless they are plainly
/// harmless, so a crafted name cannot forge lines in logs.
fn shown(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("{s:?}"))
    }
}

/// Splits at `---` lines: `(text, start line, first content line)` per
/// document. A `---` at column 0 always starts a document in YAML (it
/// cannot occur inside a scalar), so no parsing is needed.
fn split_documents(text: &str) -> Vec<(&str, usize, usize)> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut first_line) = (0, 1, None);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        if let Some(rest) = marker_rest(line) {
            docs.push((
                &text[start..offset],
                start_line,
                first_line.unwrap_or(start_line),
            ));
            (start, start_line) = (offset, number);
            first_line = has_content(rest).then_some(number);
        } else if first_line.is_none() && has_content(line) {
            first_line = Some(number);
        }
        offset += line.len();
    }
    docs.push((&text[start..], start_line, first_line.unwrap_or(start_line)));
    docs
}

/// What follows `---` on a document marker line.
fn marker_rest(line: &str) -> Option<&str> {
    let rest = line.trim_end_matches(['\n', '\r']).strip_prefix("---")?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

fn has_content(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty() && !line.starts_with('#')
}

/// `*.yaml`/`*.yml` (any case) directly in `dir`, in name order. Symlinks
/// are followed; hidden entries (ConfigMap's `..data`, `..2026_…`) skipped.
///
/// A ConfigMap volume (`dir/..data` is a symlink) is read as one snapshot:
/// `..data` is resolved once, the policy files of the directory it names are
/// read and reported as `dir/<name>`, and the top-level links into `..data`
/// are passed over. Following each link would read whatever `..data` names
/// by then, so a swap during a load would mix old and new files; and the
/// links are no snapshot either, since the kubelet adds those of new keys
/// before the swap and removes those of dropped keys after it. If the
/// snapshot is deleted while it is read, the read fails (the last good set
/// stays) and the next poll reads the new one. Other entries of `dir` are
/// read as they are.
fn read_dir(dir: &Path, errors: &mut Vec<PolicyError>) -> Vec<(PathBuf, String)> {
    read_dir_pausing(dir, errors, &mut || {})
}

/// [`read_dir`], calling `pause` after each file it reads: the seam tests
/// use to change the directory in the middle of a load.
pub(super) fn read_dir_pausing(
    dir: &Path,
    errors: &mut Vec<PolicyError>,
    pause: &mut dyn FnMut(),
) -> Vec<(PathBuf, String)> {
    let snapshot = match configmap_snapshot(dir) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    // (name reported, path read)
    let mut files: Vec<(PathBuf, PathBuf)> = list_policy_files(dir, errors)
        .into_iter()
        .filter(|path| snapshot.is_none() || !links_into_data(path))
        .map(|path| (path.clone(), path))
        .collect();
    if let Some(snapshot) = &snapshot {
        for path in list_policy_files(snapshot, errors) {
            if let Some(name) = path.file_name() {
                files.push((dir.join(name), path));
            }
        }
    }
    files.sort();
    let mut sources: Vec<(PathBuf, String)> = Vec::new();
    for (shown, path) in files {
        if sources.last().is_some_and(|(last, _)| *last == shown) {
            let why = "is both a file of the directory and a key of the ConfigMap in `..data`";
            errors.push(PolicyError::whole(&shown, why));
            continue;
        }
        match read_file(&path, &shown) {
            Ok(Some(text)) => sources.push((shown, text)),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        pause();
    }
    sources
}

/// The directory `dir/..data` names, if `dir` is a ConfigMap volume.
fn configmap_snapshot(dir: &Path) -> Result<Option<PathBuf>, PolicyError> {
    let data = dir.join("..data");
    match fs::symlink_metadata(&data) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(&data)
            .map(Some)
            .map_err(|e| PolicyError::whole(&data, format!("cannot resolve: {e}"))),
        _ => Ok(None),
    }
}

/// Whether `path` is a ConfigMap key's link, `name -> ..data/name`.
fn links_into_data(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|target| {
        target.components().next() == Some(Component::Normal(OsStr::new("..data")))
    })
}

/// The entries of `dir` named like policy files, unsorted.
fn list_policy_files(dir: &Path, errors: &mut Vec<PolicyError>) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(PolicyError::whole(
                dir,
                format!("cannot read policy directory: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(e) => errors.push(PolicyError::whole(
                dir,
                format!("cannot list policy directory: {e}"),
            )),
        }
    }
    paths.retain(|p| is_policy_file(p));
    paths
}

fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    let name = name.as_encoded_bytes();
    let has_ext = |ext: &[u8]| {
        name.len() > ext.len() && name[name.len() - ext.len()..].eq_ignore_ascii_case(ext)
    };
    !name.starts_with(b".") && (has_ext(b".yaml") || has_ext(b".yml"))
}

/// `None` for a directory that happens to be named `*.yaml`. Anything else
/// that is not a regular file (a FIFO would block the loader) is an error.
/// Errors name `shown`, the path the user knows the file by.
fn read_file(path: &Path, shown: &Path) -> Result<Option<String>, PolicyError> {
    let fail = |e: std::io::Error| PolicyError::whole(shown, format!("cannot read: {e}"));
    let meta = fs::metadata(path).map_err(fail)?;
    if meta.is_dir() {
        return Ok(None);
    }
    if !meta.is_file() {
        return Err(PolicyError::whole(shown, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(PolicyError::whole(shown, too_large()));
    }
    let mut text = String::new();
    let file = fs::File::open(path).map_err(fail)?;
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(fail)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyError::whole(shown, too_large()));
    }
    Ok(Some(text))
}

fn too_large() -> String {
    "larger than 1 MiB, the limit for a policy file".to_owned()
}

fn location(path: &Path, line: &Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

fn lines(errors: &[PolicyError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}
