//! The default model's fetch path, into a fresh cache directory (needs PyPI, as CI has).

use tandem_executor::store::{default_model, DEFAULT_MODEL_FILE};

#[test]
fn fetches_the_default_model_once_into_an_empty_cache() {
    // When run by the race test below, share one directory with the sibling processes.
    let shared = std::env::var_os("TANDEM_STORE_SHARED_DIR").map(std::path::PathBuf::from);
    let dir =
        shared.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("tandem-store-{}", std::process::id())));
    if shared.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::env::set_var("TANDEM_CACHE_DIR", &dir);
    let path = default_model().expect("fetch");
    assert_eq!(path, dir.join(DEFAULT_MODEL_FILE));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > 90_000_000, "{} bytes", meta.len());
    // Second call: cached, no download (the file is untouched).
    let again = default_model().unwrap();
    assert_eq!(std::fs::metadata(&again).unwrap().modified().unwrap(), meta.modified().unwrap());
    if shared.is_none() {
        assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "no leftovers besides the model");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn concurrent_fetches_into_one_empty_cache_all_succeed() {
    let dir = std::env::temp_dir().join(format!("tandem-store-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Separate processes, as parallel test binaries on a fresh CI machine are.
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "fetches_the_default_model_once_into_an_empty_cache", "--nocapture"])
                .env("TANDEM_STORE_SHARED_DIR", &dir)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert!(std::fs::metadata(dir.join(DEFAULT_MODEL_FILE)).unwrap().len() > 90_000_000);
    let _ = std::fs::remove_dir_all(&dir);
}
