//! Model references → local files.
//!
//! A reference is a local folder, a single weights file (`.safetensors`, `.gguf`),
//! or a Hub id (`org/name`, optionally `@revision`). Hub ids resolve through the cache
//! layout Python's `huggingface_hub` writes (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`; `models--org--name/refs/<rev>` → `snapshots/<commit>/`),
//! offline first. A file missing from the cache is downloaded with `hf-hub` unless
//! `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set; `HF_TOKEN` is honoured.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local folder holding config.json and friends.
    Dir(PathBuf),
    /// A single weights file; its folder is searched for the companion files.
    File(PathBuf),
    /// A Hub repository at a revision (branch, tag or commit).
    Hub { repo_id: String, revision: String },
}

/// A resolved model reference: asks for files by name and gets local paths.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    reference: String,
    source: ModelSource,
    /// The local folder holding the files (a snapshot folder for Hub ids), when known.
    root: Option<PathBuf>,
    cache_dir: PathBuf,
}

/// True when the environment asks for no network access.
pub fn is_offline() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                !(v.is_empty() || v == "0" || v == "false" || v == "no" || v == "off")
            })
            .unwrap_or(false)
    })
}

/// The Hub cache folder, resolved as Python's `huggingface_hub` does.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HUGGINGFACE_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// The cache folder name of a model repository: `models--org--name`.
pub fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when `s` has the shape of a Hub repository id (`name` or `org/name`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    if parts.is_empty() || parts.len() > 2 {
        return false;
    }
    parts.iter().all(|p| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.starts_with('-')
            && !p.contains("--")
            && !p.contains("..")
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    })
}

impl ModelFiles {
    /// Resolves a reference with the default cache folder.
    pub fn resolve(reference: &str) -> Result<Self> {
        Self::resolve_with_cache(reference, hub_cache_dir())
    }

    /// Resolves a reference against an explicit Hub cache folder.
    pub fn resolve_with_cache(reference: &str, cache_dir: PathBuf) -> Result<Self> {
        let trimmed = reference.trim();
        if trimmed.is_empty() {
            return Err(Error::ModelNotFound {
                reference: reference.to_string(),
                detail: "the model reference is empty; pass a folder, a file or a Hub id"
                    .to_string(),
            });
        }
        let path = Path::new(trimmed);
        if path.is_dir() {
            return Ok(Self {
                reference: trimmed.to_string(),
                source: ModelSource::Dir(path.to_path_buf()),
                root: Some(path.to_path_buf()),
                cache_dir,
            });
        }
        if path.is_file() {
            let root = path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from("."));
            return Ok(Self {
                reference: trimmed.to_string(),
                source: ModelSource::File(path.to_path_buf()),
                root: Some(root),
                cache_dir,
            });
        }
        let (repo_id, revision) = match trimmed.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => {
                return Err(Error::ModelNotFound {
                    reference: trimmed.to_string(),
                    detail: "empty revision after `@`".to_string(),
                })
            }
            None => (trimmed, "main"),
        };
        let path_like = trimmed.starts_with('.')
            || trimmed.starts_with('/')
            || trimmed.starts_with('~')
            || trimmed.contains('\\')
            || trimmed.ends_with(".safetensors")
            || trimmed.ends_with(".gguf");
        if path_like || !looks_like_repo_id(repo_id) {
            return Err(Error::ModelNotFound {
                reference: trimmed.to_string(),
                detail: format!(
                    "no such folder or file ({}), and it is not a Hub id of the form `org/name`",
                    absolute(path).display()
                ),
            });
        }
        let repo_dir = cache_dir.join(repo_folder_name(repo_id));
        let commit = if is_commit_hash(revision) {
            Some(revision.to_string())
        } else {
            let ref_file = repo_dir.join("refs").join(revision);
            std::fs::read_to_string(&ref_file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let root = commit
            .map(|c| repo_dir.join("snapshots").join(c))
            .filter(|p| p.is_dir());
        if root.is_none() && is_offline() {
            return Err(Error::ModelNotFound {
                reference: trimmed.to_string(),
                detail: format!(
                    "not in the Hub cache ({}) and HF_HUB_OFFLINE is set; run \
                     scripts/fetch-test-models.sh, download it while online, or pass a local folder",
                    repo_dir.display()
                ),
            });
        }
        Ok(Self {
            reference: trimmed.to_string(),
            source: ModelSource::Hub {
                repo_id: repo_id.to_string(),
                revision: revision.to_string(),
            },
            root,
            cache_dir,
        })
    }

    /// The reference as the user wrote it.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Where the files come from.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The local folder holding the files, when there is one yet.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The single weights file named by the reference, for a `File` source.
    pub fn single_file(&self) -> Option<&Path> {
        match &self.source {
            ModelSource::File(p) => Some(p),
            _ => None,
        }
    }

    /// A file the model must have.
    pub fn require(&self, filename: &str) -> Result<PathBuf> {
        match self.get(filename)? {
            Some(p) => Ok(p),
            None => Err(Error::MissingFile {
                reference: self.reference.clone(),
                file: filename.to_string(),
                hint: self.where_looked(),
            }),
        }
    }

    /// A file the model may have: `Ok(None)` when it has not.
    pub fn get(&self, filename: &str) -> Result<Option<PathBuf>> {
        if let Some(root) = &self.root {
            let p = root.join(filename);
            if p.is_file() {
                return Ok(Some(p));
            }
        }
        match &self.source {
            ModelSource::Dir(_) | ModelSource::File(_) => Ok(None),
            ModelSource::Hub { repo_id, revision } => {
                if is_offline() || self.known_missing(filename) {
                    return Ok(None);
                }
                self.download(repo_id, revision, filename)
            }
        }
    }

    /// Python's `huggingface_hub` records files known to be absent under `.no_exist/`.
    fn known_missing(&self, filename: &str) -> bool {
        let Some(root) = &self.root else { return false };
        let Some(commit) = root.file_name() else {
            return false;
        };
        let repo_dir = root.parent().and_then(Path::parent);
        repo_dir
            .map(|d| d.join(".no_exist").join(commit).join(filename).exists())
            .unwrap_or(false)
    }

    fn download(&self, repo_id: &str, revision: &str, filename: &str) -> Result<Option<PathBuf>> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Repo, RepoType};
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        // from_env honours HF_ENDPOINT (mirrors, and the tests' local server).
        let api = ApiBuilder::from_env()
            .with_cache_dir(self.cache_dir.clone())
            .with_token(token)
            .with_progress(true)
            .build()
            .map_err(|e| Error::Download {
                repo: repo_id.to_string(),
                file: filename.to_string(),
                message: e.to_string(),
            })?;
        let repo = api.repo(Repo::with_revision(
            repo_id.to_string(),
            RepoType::Model,
            revision.to_string(),
        ));
        match repo.get(filename) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("404") {
                    Ok(None)
                } else if self.root.is_some() {
                    // A cached snapshot exists: like Python, carry on offline with it.
                    tracing::debug!(
                        "could not check {repo_id} for `{filename}` ({msg}); using the cache"
                    );
                    Ok(None)
                } else {
                    Err(Error::Download {
                        repo: repo_id.to_string(),
                        file: filename.to_string(),
                        message: format!(
                            "{msg}; set HF_HUB_OFFLINE=1 to use only the local cache ({})",
                            self.cache_dir.display()
                        ),
                    })
                }
            }
        }
    }

    fn where_looked(&self) -> String {
        match (&self.source, &self.root) {
            (ModelSource::Hub { .. }, None) => format!(
                " (not in the Hub cache {}; set HF_HUB_OFFLINE=0 and connect to download it)",
                self.cache_dir.display()
            ),
            (_, Some(root)) => format!(" (looked in {})", root.display()),
            (_, None) => String::new(),
        }
    }

    /// Lists the files of the local folder (relative names), sorted.
    pub fn list_local(&self) -> Vec<String> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        let mut out = Vec::new();
        collect_files(root, root, &mut out, 0);
        out.sort();
        out
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>, depth: usize) {
    if depth > 3 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(base, &p, out, depth + 1);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir()
        .map(|d| d.join(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_cache(dir: &Path, repo: &str, commit: &str, files: &[&str]) -> PathBuf {
        let repo_dir = dir.join(repo_folder_name(repo));
        let snap = repo_dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
        for f in files {
            std::fs::write(snap.join(f), "{}").unwrap();
        }
        snap
    }

    #[test]
    fn repo_id_shapes() {
        assert!(looks_like_repo_id("bert-base-uncased"));
        assert!(looks_like_repo_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("org/na me"));
        assert!(!looks_like_repo_id(""));
    }

    #[test]
    fn resolves_hub_cache_layout_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = make_cache(tmp.path(), "org/model", commit, &["config.json"]);
        let files = ModelFiles::resolve_with_cache("org/model", tmp.path().to_path_buf()).unwrap();
        assert_eq!(files.root(), Some(snap.as_path()));
        assert_eq!(
            files.require("config.json").unwrap(),
            snap.join("config.json")
        );
        // explicit commit revision
        let files = ModelFiles::resolve_with_cache(
            &format!("org/model@{commit}"),
            tmp.path().to_path_buf(),
        )
        .unwrap();
        assert_eq!(files.root(), Some(snap.as_path()));
        // .no_exist marks a file as known to be absent: no download is tried
        let no_exist = tmp
            .path()
            .join(repo_folder_name("org/model"))
            .join(".no_exist")
            .join(commit);
        std::fs::create_dir_all(&no_exist).unwrap();
        std::fs::write(no_exist.join("modules.json"), "").unwrap();
        assert!(files.get("modules.json").unwrap().is_none());
    }

    #[test]
    fn local_folder_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        std::fs::write(tmp.path().join("model.safetensors"), "x").unwrap();
        let files = ModelFiles::resolve(tmp.path().to_str().unwrap()).unwrap();
        assert!(matches!(files.source(), ModelSource::Dir(_)));
        assert!(files.get("tokenizer.json").unwrap().is_none());
        let err = files.require("tokenizer.json").unwrap_err().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
        let f = tmp.path().join("model.safetensors");
        let files = ModelFiles::resolve(f.to_str().unwrap()).unwrap();
        assert_eq!(files.single_file(), Some(f.as_path()));
        assert!(files.get("config.json").unwrap().is_some());
    }

    #[test]
    fn bad_references_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        for r in [
            "",
            "./nope",
            "/no/such/dir",
            "a/b/c",
            "x.gguf",
            "org/model@",
        ] {
            let err = ModelFiles::resolve_with_cache(r, tmp.path().to_path_buf())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("cannot find model"), "{r}: {err}");
        }
    }
}
