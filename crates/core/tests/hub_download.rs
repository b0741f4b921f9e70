//! The download path of Hub resolution, against a local HTTP server that answers as
//! the Hub's `resolve` endpoint does (ranged GETs with etag, x-repo-commit and
//! content-range headers; 404 for absent files). The downloaded files land in the
//! `huggingface_hub` cache layout and resolve offline afterwards.
//! One test per binary: it sets HF_ENDPOINT for the process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use rustformers_core::hub::{repo_folder_name, ModelFiles};

const COMMIT: &str = "1111111111111111111111111111111111111111";

fn serve(listener: TcpListener, files: Vec<(&'static str, Vec<u8>)>) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let files = files.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut range_start = 0usize;
            let mut range_end: Option<usize> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(r) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap();
                    range_start = a.parse().unwrap();
                    range_end = b.parse().ok();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let file = files
                .iter()
                .find(|(name, _)| path == format!("/org/model/resolve/main/{name}"));
            let response = match file {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
                Some((_, body)) => {
                    let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                    let part = &body[range_start..=end];
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nETag: \"etag-{}\"\r\nX-Repo-Commit: {COMMIT}\r\n\
                         Content-Range: bytes {range_start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        body.len(),
                        part.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(part);
                    r
                }
            };
            let _ = stream.write_all(&response);
            let _ = reader.read(&mut [0u8; 0]);
        });
    }
}

#[test]
fn downloads_into_the_hub_cache_then_resolves_offline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = br#"{"model_type": "bert", "hidden_size": 32}"#.to_vec();
    let weights: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let files = vec![
        ("config.json", config.clone()),
        ("model.safetensors", weights.clone()),
    ];
    std::thread::spawn(move || serve(listener, files));
    // This test binary holds only this test, so changing the environment is safe.
    std::env::set_var("HF_ENDPOINT", format!("http://{addr}"));
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::remove_var("TRANSFORMERS_OFFLINE");
    std::env::remove_var("HF_TOKEN");

    let cache = tempfile::tempdir().unwrap();
    let files = ModelFiles::resolve_with_cache("org/model", cache.path().to_path_buf()).unwrap();
    assert!(files.root().is_none(), "nothing cached yet");
    let p = files.require("config.json").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), config);
    let p = files.require("model.safetensors").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), weights);
    // An absent optional file is `None`, not an error.
    assert!(files.get("modules.json").unwrap().is_none());
    // A required absent file is an error naming it.
    let err = files.require("tokenizer.json").unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    // The layout Python's huggingface_hub writes: refs/main → snapshots/<commit>/file.
    let repo_dir = cache.path().join(repo_folder_name("org/model"));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snapshot = repo_dir.join("snapshots").join(COMMIT);
    assert!(snapshot.join("config.json").exists());

    // Offline now: resolves from the cache alone.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let files = ModelFiles::resolve_with_cache("org/model", cache.path().to_path_buf()).unwrap();
    assert_eq!(files.root(), Some(snapshot.as_path()));
    assert_eq!(
        std::fs::read(files.require("model.safetensors").unwrap()).unwrap(),
        weights
    );
    assert!(files.get("tokenizer.json").unwrap().is_none());
    // A model never downloaded is a clear offline error.
    let err = ModelFiles::resolve_with_cache("org/other", cache.path().to_path_buf())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains(&repo_folder_name("org/other")),
        "{err}"
    );
}
