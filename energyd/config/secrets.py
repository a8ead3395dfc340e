"""Secrets: read from files, environment variables or systemd credentials, never from YAML.

A `*_file` key names a file. A bare name (no slash) is looked up first in
$CREDENTIALS_DIRECTORY, where systemd puts what `LoadCredential=` loads; a relative path is
taken relative to the config file. A `*_env` key names an environment variable. The value is
held as a SecretStr so that printing a config, a model or an error never shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

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
