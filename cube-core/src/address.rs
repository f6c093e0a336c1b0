//! Addresses of cube's HTTP APIs, as operators write them on command lines.

use url::Url;

/// Turns `host:port` or `http://host:port[/prefix]` into a base URL whose path ends in `/`,
/// so that relative API paths join onto it.
///
/// # Errors
///
/// Returns why the address is invalid: it does not parse, its scheme is not `http`, or it
/// has no host.
pub fn http_base_url(address: &str) -> Result<Url, String> {
    let with_scheme = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|error| error.to_string())?;
    if url.scheme() != "http" {
        return Err(format!(
            "scheme '{}' is not supported; use http",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err("no host".to_owned());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_adds_scheme_and_slash() {
        let cases = [
            ("127.0.0.1:5556", "http://127.0.0.1:5556/"),
            ("http://localhost:80", "http://localhost/"),
            (
                "http://127.0.0.1:5556/prefix",
                "http://127.0.0.1:5556/prefix/",
            ),
        ];
        for (address, expected) in cases {
            assert_eq!(
                http_base_url(address).unwrap().as_str(),
                expected,
                "{address}"
            );
        }
    }

    #[test]
    fn base_url_rejects_other_schemes() {
        let error = http_base_url("https://127.0.0.1:5556").unwrap_err();
        assert!(error.contains("scheme 'https'"), "{error}");
    }
}
