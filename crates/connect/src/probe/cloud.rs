//! Buckets for the files probe: `gs://` (Google Cloud Storage) and `s3://` (Amazon S3 and
//! S3-compatible servers), through `object_store`.
//!
//! Credentials come the way Google's and Amazon's own tools find them:
//!
//! - **GCS**: `GOOGLE_SERVICE_ACCOUNT` (a service-account JSON file) or
//!   `GOOGLE_SERVICE_ACCOUNT_KEY` (its text); else Application Default Credentials:
//!   `GOOGLE_APPLICATION_CREDENTIALS`, then `~/.config/gcloud/application_default_credentials.json`
//!   (`gcloud auth application-default login`), then the metadata server on Google Cloud.
//!   `STORAGE_EMULATOR_HOST` (as Google's client libraries read it) or `GOOGLE_BASE_URL` points
//!   at another server.
//! - **S3**: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`; else the profile
//!   `AWS_PROFILE` (default `default`) of the shared files `~/.aws/credentials` and
//!   `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`); else web identity
//!   (`AWS_WEB_IDENTITY_TOKEN_FILE`), the ECS container endpoint, or the EC2 instance metadata.
//!   The region is `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's `region`;
//!   `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` points at an S3-compatible server.
//!
//! An endpoint given as `http://…` is allowed to be plain HTTP: whoever named it chose it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use super::{Listing, ProbeError};

/// One client per bucket for the process: each holds its connections and its credentials
/// (a signed token, fetched keys), which a scan of many phases would otherwise set up again for
/// every probe.
static STORES: Mutex<BTreeMap<String, Arc<dyn ObjectStore>>> = Mutex::new(BTreeMap::new());

/// The client for `scheme://bucket` (`scheme` is `gs` or `s3`), configured from the
/// environment as the module documentation says.
pub(super) fn store(scheme: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>, ProbeError> {
    let location = format!("{scheme}://{bucket}");
    let mut stores = STORES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(store) = stores.get(&location) {
        return Ok(Arc::clone(store));
    }
    let failed = |reason: String| ProbeError::Bucket {
        location: location.clone(),
        reason,
    };
    let url = url::Url::parse(&location).map_err(|error| failed(error.to_string()))?;
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let home = vars.get("HOME").map(PathBuf::from);
    let options = options(scheme, &vars, home.as_deref()).map_err(failed)?;
    let (store, _) =
        object_store::parse_url_opts(&url, options).map_err(|error| failed(error.to_string()))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    stores.insert(location, Arc::clone(&store));
    Ok(store)
}

/// The `object_store` configuration keys for `scheme` from environment variables `vars` and the
/// shared AWS files under `home`. An error names the variable, file or profile that is wrong.
fn options(
    scheme: &str,
    vars: &BTreeMap<String, String>,
    home: Option<&Path>,
) -> Result<Vec<(String, String)>, String> {
    let prefix = if scheme == "gs" { "GOOGLE_" } else { "AWS_" };
    // Unknown keys are ignored by the builders, so passing every variable of the family is safe.
    let mut options: BTreeMap<String, String> = vars
        .iter()
        .filter(|(key, value)| key.starts_with(prefix) && !value.is_empty())
        .map(|(key, value)| (key.to_ascii_lowercase(), value.clone()))
        .collect();
    let endpoint = if scheme == "gs" {
        if let Some(host) = vars.get("STORAGE_EMULATOR_HOST").filter(|v| !v.is_empty()) {
            let url = if host.contains("://") {
                host.clone()
            } else {
                format!("http://{host}")
            };
            options.insert("google_base_url".into(), url);
        }
        options.get("google_base_url").cloned()
    } else {
        aws_shared_files(vars, home, &mut options)?;
        options
            .get("aws_endpoint_url_s3")
            .or_else(|| options.get("aws_endpoint_url"))
            .or_else(|| options.get("aws_endpoint"))
            .cloned()
    };
    if endpoint.is_some_and(|url| url.starts_with("http://")) {
        options.insert("allow_http".into(), "true".into());
    }
    Ok(options.into_iter().collect())
}

/// Fills keys and region from the shared `credentials` and `config` files when the
/// environment does not set them, as the AWS CLI does.
fn aws_shared_files(
    vars: &BTreeMap<String, String>,
    home: Option<&Path>,
    options: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    let var = |name: &str| vars.get(name).filter(|value| !value.is_empty());
    let named = var("AWS_PROFILE");
    let profile = named.map_or("default", String::as_str);
    let file = |variable: &str, default: &str| {
        var(variable)
            .map(PathBuf::from)
            .or_else(|| home.map(|home| home.join(".aws").join(default)))
    };
    let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = file("AWS_CONFIG_FILE", "config");
    // `credentials` names sections by the profile; `config` by `profile NAME`, but `default`.
    let config_section = if profile == "default" {
        "default".to_owned()
    } else {
        format!("profile {profile}")
    };
    let credentials = read_section(credentials_file.as_deref(), profile)?;
    let config = read_section(config_file.as_deref(), &config_section)?;
    if named.is_some() && credentials.is_none() && config.is_none() {
        let shown = |path: Option<PathBuf>| {
            path.map_or_else(|| "(no HOME)".to_owned(), |p| p.display().to_string())
        };
        return Err(format!(
            "AWS_PROFILE is `{profile}`, but neither {} nor {} has that profile",
            shown(credentials_file),
            shown(config_file)
        ));
    }
    let from_files = |key: &str| {
        credentials
            .as_ref()
            .and_then(|section| section.get(key))
            .or_else(|| config.as_ref().and_then(|section| section.get(key)))
            .cloned()
    };
    if !options.contains_key("aws_access_key_id") {
        for key in [
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ] {
            if let Some(value) = from_files(key) {
                options.insert(key.to_owned(), value);
            }
        }
    }
    if !options.contains_key("aws_region")
        && !options.contains_key("aws_default_region")
        && let Some(region) = from_files("region")
    {
        options.insert("aws_region".to_owned(), region);
    }
    if !options.contains_key("aws_endpoint_url")
        && let Some(endpoint) = from_files("endpoint_url")
    {
        options.insert("aws_endpoint_url".to_owned(), endpoint);
    }
    Ok(())
}

/// The `key = value` pairs of section `[name]` of an INI file, or `None` when the file or the
/// section is absent.
fn read_section(
    path: Option<&Path>,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    Ok(ini_section(&text, name))
}

fn ini_section(text: &str, name: &str) -> Option<BTreeMap<String, String>> {
    let mut section: Option<BTreeMap<String, String>> = None;
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = header.split_whitespace().collect::<Vec<_>>().join(" ") == name;
            if inside {
                section.get_or_insert_default();
            }
            continue;
        }
        if inside
            && let Some((key, value)) = line.split_once('=')
            && let Some(section) = section.as_mut()
        {
            section.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    section
}

/// The object path of `parts` (checked when the pattern was parsed), and its text for messages.
fn store_path(location: &str, parts: &[String]) -> Result<(StorePath, String), ProbeError> {
    let text = parts.join("/");
    let shown = format!("{location}/{text}");
    let path = StorePath::parse(&text).map_err(|error| ProbeError::BadPattern {
        pattern: shown.clone(),
        reason: format!("invalid object path: {error}"),
    })?;
    Ok((path, shown))
}

/// The objects and "directories" (common prefixes) directly under `parts`, one level deep,
/// every page of the listing. A missing prefix is an empty listing.
pub(super) async fn list(
    store: &dyn ObjectStore,
    location: &str,
    parts: &[String],
) -> Result<Listing, ProbeError> {
    let (prefix, shown) = store_path(location, parts)?;
    let prefix = (!parts.is_empty()).then_some(&prefix);
    let result = match store.list_with_delimiter(prefix).await {
        Ok(result) => result,
        Err(object_store::Error::NotFound { .. }) => return Ok(Listing::default()),
        Err(source) => {
            return Err(ProbeError::Store {
                location: shown,
                source,
            });
        }
    };
    let name = |path: &StorePath| path.filename().map(str::to_owned);
    Ok(Listing {
        files: result
            .objects
            .iter()
            .filter_map(|meta| name(&meta.location))
            .collect(),
        directories: result.common_prefixes.iter().filter_map(name).collect(),
    })
}

/// Whether an object exists at `parts` (one `HEAD`).
pub(super) async fn is_file(
    store: &dyn ObjectStore,
    location: &str,
    parts: &[String],
) -> Result<bool, ProbeError> {
    let (path, shown) = store_path(location, parts)?;
    match store.head(&path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(source) => Err(ProbeError::Store {
            location: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn get<'a>(options: &'a [(String, String)], key: &str) -> Option<&'a str> {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn aws_home(credentials: &str, config: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), credentials).unwrap();
        std::fs::write(home.path().join(".aws/config"), config).unwrap();
        home
    }

    const CREDENTIALS: &str = "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = sdefault\n\n[etl]\n# the loader's keys\naws_access_key_id=AKETL\naws_secret_access_key=setl\naws_session_token = tetl\n";
    const CONFIG: &str = "[default]\nregion = us-west-2\n\n[profile  etl]\nregion = eu-central-1\nendpoint_url = http://127.0.0.1:9000\n";

    #[test]
    fn s3_keys_and_region_come_from_the_default_profile() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let options = options("s3", &vars(&[]), Some(home.path())).unwrap();
        assert_eq!(get(&options, "aws_access_key_id"), Some("AKDEFAULT"));
        assert_eq!(get(&options, "aws_secret_access_key"), Some("sdefault"));
        assert_eq!(get(&options, "aws_session_token"), None);
        assert_eq!(get(&options, "aws_region"), Some("us-west-2"));
        assert_eq!(get(&options, "allow_http"), None);
    }

    #[test]
    fn aws_profile_picks_its_sections_in_both_files() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let options = options("s3", &vars(&[("AWS_PROFILE", "etl")]), Some(home.path())).unwrap();
        assert_eq!(get(&options, "aws_access_key_id"), Some("AKETL"));
        assert_eq!(get(&options, "aws_session_token"), Some("tetl"));
        assert_eq!(get(&options, "aws_region"), Some("eu-central-1"));
        assert_eq!(
            get(&options, "aws_endpoint_url"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(get(&options, "allow_http"), Some("true"));
    }

    #[test]
    fn environment_keys_win_over_the_files() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let env = vars(&[
            ("AWS_ACCESS_KEY_ID", "AKENV"),
            ("AWS_SECRET_ACCESS_KEY", "senv"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
        ]);
        let options = options("s3", &env, Some(home.path())).unwrap();
        assert_eq!(get(&options, "aws_access_key_id"), Some("AKENV"));
        assert_eq!(get(&options, "aws_secret_access_key"), Some("senv"));
        assert_eq!(get(&options, "aws_default_region"), Some("ap-south-1"));
        assert_eq!(get(&options, "aws_region"), None);
    }

    #[test]
    fn a_named_profile_that_is_nowhere_is_an_error_naming_both_files() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let error =
            options("s3", &vars(&[("AWS_PROFILE", "prod")]), Some(home.path())).unwrap_err();
        assert!(
            error.starts_with("AWS_PROFILE is `prod`, but neither "),
            "{error}"
        );
        assert!(error.contains(".aws/credentials nor "), "{error}");
        assert!(error.ends_with(".aws/config has that profile"), "{error}");
        // Without the files, only a profile named on purpose is an error.
        let empty = tempfile::tempdir().unwrap();
        let options = options("s3", &vars(&[]), Some(empty.path())).unwrap();
        assert_eq!(get(&options, "aws_access_key_id"), None);
    }

    #[test]
    fn gcs_reads_google_variables_and_the_emulator_host() {
        let env = vars(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", "/etc/sa.json"),
            ("STORAGE_EMULATOR_HOST", "127.0.0.1:4443"),
            ("AWS_ACCESS_KEY_ID", "not for gcs"),
        ]);
        let options = options("gs", &env, None).unwrap();
        assert_eq!(
            get(&options, "google_application_credentials"),
            Some("/etc/sa.json")
        );
        assert_eq!(
            get(&options, "google_base_url"),
            Some("http://127.0.0.1:4443")
        );
        assert_eq!(get(&options, "allow_http"), Some("true"));
        assert_eq!(get(&options, "aws_access_key_id"), None);
    }
}
