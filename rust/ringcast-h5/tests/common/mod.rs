//! Helpers shared by the test files of ringcast-h5.

/// A fresh directory for the files of test `tag` (removed by the test when it passes).
pub fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rc-native-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
