"""Secrets: read from files, environment variables or systemd credentials, never from YAML.

A `*_file` key names a file. A bare name (no slash) is looked up first in
$CREDENTIALS_DIRECTORY, where systemd puts what `LoadCredential=` loads; a relative path is
taken relative to the config file. A `*_env` key names an environment variable. The value is
held as a SecretStr so that printing a config, a model or an error never shows it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from pydantic import SecretStr


def secret_path(name: str, base_dir: Path | None) -> Path:
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and "/" not in name and (Path(creds) / name).exists():
        return Path(creds) / name
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def check_secret_file(file: str | None, base_dir: Path | None) -> str | None:
    """Field-level check, so a missing file is reported at its own key and line."""
    if file is not None:
        read_secret(file, None, base_dir)
    return file


def read_secret(file: str | None, env: str | None, base_dir: Path | None) -> SecretStr | None:
    """Return the secret, or None when neither source is configured. Errors never hold it."""
    if file is not None:
        path = secret_path(file, base_dir)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"secret file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ValueError(f"secret file {str(path)!r} cannot be read: {exc.strerror}") from None
        value = text.strip()
        if not value:
            raise ValueError(f"secret file {str(path)!r} is empty")
        return SecretStr(value)
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ValueError(f"environment variable {env} is not set")
        return SecretStr(value)
    return None


# --- URLs in messages ------------------------------------------------------------------------
#
# A URL may carry a secret in its user:password@ part or in its query (chat services' hook
# tokens, InfluxDB 1.x's ?u=&p=). Every message, log line, table or JSON that shows a URL
# shows it through redact_url, so whatever the URL holds, none of it is echoed.

_USERINFO = re.compile(r"(?<=//)\S*@")
_QUERY = re.compile(r"[?#]\S*")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with user:password@ and the query and fragment masked; any text is accepted,
    a URL that does not parse is masked all the same."""
    url = _USERINFO.sub("***@", url, count=1)
    return _QUERY.sub("?***", url, count=1)


def redact_urls(text: str) -> str:
    """Every URL in a message (an exception's text, a reason) passed through redact_url."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group()), text)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without user:password@, user, password), user and password unquoted.
    HTTP clients send them as basic auth; left in the URL, urllib takes them for a host."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return urlunsplit(parts._replace(netloc=netloc)), user, password


def check_http_url(url: str) -> SplitResult:
    """The parts of an http(s) URL, or ValueError saying what is wrong without echoing any
    secret the URL may hold."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parses the port, raising ValueError when it is not one
    except ValueError as exc:
        raise ValueError(f"{shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown!r} is not an http:// or https:// URL")
    return parts
