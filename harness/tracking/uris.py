"""URIs of the stores: how they are shown (without secrets) and where a file URI lies on disk.

The one owner of both for every layer above: tracking's own messages and tags, the Optuna
storage's errors, the report's notes on its store, and every reader of a run's artifact folder
(resuming a run, the report's histories and samples).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlparse
from urllib.request import url2pathname

SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "token", "access_token", "secret")
"""Query parameters that carry a credential (`?password=` is as valid as `user:pw@host`)."""


def redact(url: str) -> str:
    """A URL without its password, for logs, tags and messages.

    Parsed with SQLAlchemy's URL parser (the one that opens the storage), so every form it
    accepts is covered: `user:pw@host`, `:pw@host` (no user), and credentials in the query
    (`?password=...`). A string that does not parse as a URL has no password to hide, except
    after `://`, which is cut at the last '@' as a last resort.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        scheme, sep, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if sep and "@" in rest else url
    query = {k: ("***" if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    # render_as_string percent-quotes query values; the mask reads better unquoted.
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def scrub(text: str, url: str) -> str:
    """`text` (an error message from a driver, say) with every secret of `url` replaced by ***."""
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _secrets_of(url: str) -> list[str]:
    """The passwords and secret query values in `url` (empty when it has none or is no URL)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return []
    values = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            values += [value] if isinstance(value, str) else list(value)
    return [form for v in values if v for form in {str(v), quote(str(v), safe="")}]


def local_path(uri: str) -> Path | None:
    """The folder or file a URI names on this machine's disk, else None (a remote store).

    A file URI is percent-decoded: MLflow keeps an artifact folder as one (Path.as_uri writes a
    space as %20), and a project path with a space must name the folder MLflow wrote to. A URI
    without a scheme is a plain path.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None
