"""Object-store helpers over pyarrow.fs: local paths and s3:// URIs behind one interface.

`filesystem_from_uri` turns a root (a local path or `s3://bucket/prefix`) into a pyarrow FileSystem and a
path inside it. S3 settings come from arguments or the usual AWS variables (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL[_S3], AWS_REGION); a plain-http endpoint such as a loopback
SeaweedFS or MinIO server is reached with `endpoint_override` + `scheme="http"`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pyarrow import fs as pafs

CHUNK = 1 << 20


def is_s3(uri: str | os.PathLike) -> bool:
    """True for an `s3://` URI."""
    return str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Settings:
    """Resolved S3 connection settings (secret not shown in repr)."""

    endpoint: str | None  # host[:port] for endpoint_override, or None for AWS
    scheme: str  # "http" or "https"
    access_key: str | None
    secret_key: str | None
    region: str

    def __repr__(self) -> str:
        return f"S3Settings(endpoint={self.endpoint!r}, scheme={self.scheme!r}, region={self.region!r})"


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """(host[:port], scheme) of an S3 endpoint such as `http://127.0.0.1:9000` or `minio.example:9000`.

    Without a scheme, loopback hosts get http and others https. Raises ValueError for an empty endpoint, a
    scheme other than http/https, no host, a bad port, or a path / query / credentials in the URL.
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ValueError(f"S3 endpoint {endpoint!r}: empty")
    parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if parsed.scheme and parsed.scheme not in ("http", "https"):
        raise ValueError(f"S3 endpoint {endpoint!r}: scheme must be http or https")
    if not parsed.netloc or not parsed.hostname:
        raise ValueError(f"S3 endpoint {endpoint!r}: no host")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise ValueError(f"S3 endpoint {endpoint!r}: expected scheme://host[:port] only")
    try:
        parsed.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError as e:
        raise ValueError(f"S3 endpoint {endpoint!r}: {e}") from None
    scheme = parsed.scheme or ("http" if parsed.hostname in ("127.0.0.1", "localhost", "::1") else "https")
    return parsed.netloc, scheme


def check_uri(root: str | os.PathLike) -> str:
    """Validate a storage root (a local path, `file://` path or `s3://bucket/prefix`); return it as a str.

    Raises ValueError for an empty root, another scheme (http://, gs://, ...), an S3 URI without a bucket,
    or with an empty, '.' or '..' path component.
    """
    root = str(root)
    if not root.strip():
        raise ValueError("storage root is empty (use a local path or s3://bucket/prefix)")
    if "\x00" in root:
        raise ValueError(f"storage root {root!r}: contains a NUL character")
    if is_s3(root):
        path = root[len("s3://") :].strip("/")
        if not path or path.split("/")[0] in ("", ".", ".."):
            raise ValueError(f"S3 URI {root!r}: no bucket")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError(f"S3 URI {root!r}: empty, '.' or '..' path component")
    elif "://" in root and not root.startswith("file://"):
        raise ValueError(f"unsupported storage URI {root!r} (use a local path or s3://bucket/prefix)")
    return root


def s3_settings(
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
) -> S3Settings:
    """Resolve S3 settings from arguments, falling back to the AWS_* environment variables."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    scheme = "https"
    host = None
    if endpoint:
        host, scheme = parse_endpoint(endpoint)
    return S3Settings(
        endpoint=host,
        scheme=scheme,
        access_key=access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"),
        region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


def s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    """A pyarrow S3FileSystem for the given settings (standard retries, bounded timeouts)."""
    kwargs: dict = {
        "region": settings.region,
        "scheme": settings.scheme,
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=6),
    }
    if settings.endpoint:
        kwargs["endpoint_override"] = settings.endpoint
    if settings.access_key or settings.secret_key:
        if not (settings.access_key and settings.secret_key):
            raise ValueError("S3: give both access key and secret key (or neither)")
        kwargs["access_key"] = settings.access_key
        kwargs["secret_key"] = settings.secret_key
    return pafs.S3FileSystem(**kwargs)


def filesystem_from_uri(
    root: str | os.PathLike,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path or an `s3://bucket/prefix` URI.

    The path has no trailing slash; for S3 it is `bucket/prefix`, for a local root an absolute path.
    """
    root = check_uri(root)
    if is_s3(root):
        path = root[len("s3://") :].strip("/")
        return s3_filesystem(s3_settings(endpoint, access_key, secret_key, region)), path
    if root.startswith("file://"):
        root = urllib.parse.urlsplit(root).path
    return pafs.LocalFileSystem(), str(Path(root).expanduser().resolve())


def is_local(fs: pafs.FileSystem) -> bool:
    """True for pyarrow's LocalFileSystem."""
    return isinstance(fs, pafs.LocalFileSystem)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes, *, atomic: bool = True) -> None:
    """Write a whole object. Locally, parents are created and (atomic=True) a temp file is renamed into place;
    an S3 PUT is atomic by itself."""
    if is_local(fs):
        parent = path.rsplit("/", 1)[0]
        fs.create_dir(parent, recursive=True)
        if atomic:
            tmp = f"{parent}/.tmp-{os.urandom(8).hex()}-{path.rsplit('/', 1)[1]}"
            try:
                with fs.open_output_stream(tmp) as out:
                    out.write(data)
                fs.move(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """Read a whole object."""
    with fs.open_input_stream(path) as f:
        return f.read()


def upload_file(local: str | os.PathLike, fs: pafs.FileSystem, path: str) -> tuple[int, str]:
    """Copy a local file to fs:path, hashing the bytes as they are sent; return (size, sha256 hex)."""
    if is_local(fs):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    h = hashlib.sha256()
    size = 0
    with open(local, "rb") as src, fs.open_output_stream(path) as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, h.hexdigest()


def download_file(fs: pafs.FileSystem, path: str, local: str | os.PathLike) -> tuple[int, str]:
    """Copy fs:path to a local file, hashing as it goes; return (size, sha256 hex)."""
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, h.hexdigest()


def sha256_file(path: str | os.PathLike) -> tuple[int, str]:
    """(size, sha256 hex) of a local file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def local_files(local_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the regular files under local_dir, sorted (hidden files included)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"not a directory: {root}")
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def list_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """All files (not directories) under path, recursively; [] if path does not exist."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File]


def upload_dir(local_dir: str | os.PathLike, fs: pafs.FileSystem, path: str) -> list[tuple[str, int, str]]:
    """Copy every file of local_dir under fs:path; return [(relative path, size, sha256)] sorted by path."""
    return [(rel, *upload_file(Path(local_dir) / rel, fs, f"{path}/{rel}")) for rel in local_files(local_dir)]


def download_dir(fs: pafs.FileSystem, path: str, local_dir: str | os.PathLike) -> list[tuple[str, int, str]]:
    """Copy every file under fs:path into local_dir; return [(relative path, size, sha256)] sorted by path."""
    out = []
    base = path.rstrip("/") + "/"
    for info in sorted(list_files(fs, path), key=lambda i: i.path):
        rel = info.path[len(base) :]
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
            raise ValueError(f"refusing to download unsafe object name {info.path!r}")
        out.append((rel, *download_file(fs, info.path, Path(local_dir) / rel)))
    return out
