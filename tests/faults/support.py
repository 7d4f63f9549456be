"""Shared pieces of the fault-injection suite: subprocess runners, a fake rclone, a small file system.

Everything here drives the real code paths: the CLI and the library run in child processes that
are really killed (SIGKILL, SIGINT), downloads go through a stand-in ``rclone`` executable on PATH
that really transfers, truncates or dies, and disk-full cases use a real size-limited tmpfs when
this process may mount one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Re-exported: the faults tests import it from here.
from helpers import finished_cache_entries as finished_cache_entries

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent

HOSTILE_NAME = "a b'c$(touch pwned)\"d`touch pwned2`;touch pwned3"
"""A folder name that runs ``touch`` if any shell ever sees it unquoted (spaces, quotes, $(), ``, ;)."""

FAKE_ACCESS_TOKEN = "ya29.a0FAULTSUITEaccessTOKENxyz"
FAKE_REFRESH_TOKEN = "1//0gFAULTSUITErefreshTOKEN42"
FAKE_CLIENT_SECRET = "GOCSPX-faultsuiteCLIENTsecret"
SECRETS = (FAKE_ACCESS_TOKEN, FAKE_REFRESH_TOKEN, FAKE_CLIENT_SECRET, "FAULTSUITE")
"""Strings that must never appear in any log, console output or produced file."""
TOKEN_JSON = (
    f'{{"access_token":"{FAKE_ACCESS_TOKEN}","token_type":"Bearer",'
    f'"refresh_token":"{FAKE_REFRESH_TOKEN}","expiry":"2031-01-01T00:00:00Z"}}'
)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child Python, unbuffered, plus ``extra``."""
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in a child process; stdout and stderr captured as text."""
    return subprocess.run(
        [PYTHON, *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(
    source: str, cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Write ``source`` to ``cwd/child.py`` and run it (``__main__`` guarded by the caller for spawn)."""
    script = cwd / "child.py"
    script.write_text(textwrap.dedent(source))
    return run_python([str(script), *args], cwd, env, timeout)


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder`` (names in ``skip`` left out)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def find_named(roots: list[Path], names: tuple[str, ...] = ("pwned", "pwned2", "pwned3")) -> list[Path]:
    """Files called ``names`` under any of ``roots``: proof that a shell ran an injected command."""
    found = []
    for root in roots:
        if root.exists():
            found += [p for p in root.rglob("*") if p.name in names]
    return found


def scan_for_secrets(texts: dict[str, str], roots: list[Path], exclude: tuple[Path, ...] = ()) -> list[str]:
    """Where any of :data:`SECRETS` appears: in the captured ``texts`` or any file under ``roots``."""
    hits = [f"{label}: {s!r}" for label, text in texts.items() for s in SECRETS if s in text]
    excluded = {p.resolve() for p in exclude}
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink() or path.resolve() in excluded:
                continue
            data = path.read_bytes()
            hits += [f"{path}: {s!r}" for s in SECRETS if s.encode() in data]
    return hits


# --------------------------------------------------------------------------------------------
# A size-limited file system


@contextlib.contextmanager
def tmpfs(mount_point: Path, size_bytes: int) -> Iterator[Path]:
    """A real tmpfs of ``size_bytes`` at ``mount_point``; skips the test where mounting is not allowed."""
    mount_point.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or mount.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def resize_tmpfs(mount_point: Path, size_bytes: int) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={size_bytes}", str(mount_point)], check=True, capture_output=True
    )


# --------------------------------------------------------------------------------------------
# A stand-in rclone

FAKE_RCLONE = r'''#!{python}
"""Stand-in for rclone: serves files from $FAULT_REMOTE like the Drive remote would.

copyto/copy <remote>:<path> <local>: transfers the file (skipped when the local copy is already
identical, as rclone does). Faults, from the environment:
  FAULT_RCLONE_DIE_AFTER=<n>  write the first n bytes, then die of SIGKILL (a dropped connection,
                              the OOM killer) - the partial file stays;
  FAULT_RCLONE_CHATTER=1      print the config's token on stdout and stderr the ways a verbose or
                              old rclone can (config echo, OAuth JSON, bearer header).
Every call is appended to $FAULT_RCLONE_LOG as "<verb> <copied|skipped|died>".
"""
import os, shutil, signal, sys
from pathlib import Path

args = sys.argv[1:]
config = Path(args[args.index("--config") + 1]) if "--config" in args else None
rest = [a for i, a in enumerate(args) if a != "--config" and (i == 0 or args[i - 1] != "--config")]
log = open(os.environ["FAULT_RCLONE_LOG"], "a")
if os.environ.get("FAULT_RCLONE_CHATTER") and config is not None:
    for line in config.read_text().splitlines():
        if line.startswith("token"):
            token = line.split("=", 1)[1].strip()
            print("[mlc-cognata]\n" + line, flush=True)
            print("DEBUG : token " + token, file=sys.stderr, flush=True)
            access = token.split('"access_token":"')[1].split('"')[0]
            print("DEBUG : Authorization: Bearer " + access, file=sys.stderr, flush=True)
if rest[0] not in ("copyto", "copy"):
    sys.exit("fake rclone: unsupported " + " ".join(rest))
source = Path(os.environ["FAULT_REMOTE"]) / rest[1].split(":", 1)[1]
dest = Path(rest[2])
if not source.exists():
    print("ERROR : " + rest[1] + ": object not found", file=sys.stderr)
    sys.exit(3)
dest.parent.mkdir(parents=True, exist_ok=True)
die_after = int(os.environ.get("FAULT_RCLONE_DIE_AFTER", "-1"))
if die_after >= 0:
    with dest.open("wb") as f:
        f.write(source.read_bytes()[:die_after])
    log.write(rest[0] + " died\n")
    log.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if dest.is_file() and dest.read_bytes() == source.read_bytes():
    log.write(rest[0] + " skipped\n")
else:
    shutil.copyfile(source, dest)
    log.write(rest[0] + " copied\n")
print("NOTICE: Transferred: 1 / 1, 100%")
'''


class FakeRemote:
    """A fake ``mlc-cognata`` remote: a local folder tree, a stand-in rclone on PATH, a token'd config."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "remote"
        self.bin = root / "bin"
        self.log = root / "rclone-calls.log"
        self.config = root / "rclone" / "rclone.conf"
        self.files.mkdir(parents=True)
        self.bin.mkdir()
        self.config.parent.mkdir()
        rclone = self.bin / "rclone"
        rclone.write_text(FAKE_RCLONE.format(python=PYTHON))
        rclone.chmod(0o755)
        from abtf_ssd.data.download import DRIVE_ROOT_FOLDER_ID, RCLONE_REMOTE

        self.config.write_text(
            f"[{RCLONE_REMOTE}]\ntype = drive\nclient_id = 123.apps.googleusercontent.com\n"
            f"client_secret = {FAKE_CLIENT_SECRET}\nscope = drive.readonly\n"
            f"root_folder_id = {DRIVE_ROOT_FOLDER_ID}\ntoken = {TOKEN_JSON}\n"
        )

    def publish(self, artifact: str, data: bytes) -> Path:
        from abtf_ssd.data.download import ARTIFACTS

        target = self.files / ARTIFACTS[artifact].remote_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def env(self, **faults: str) -> dict[str, str]:
        """Environment variables that put the stand-in first on PATH and point rclone at the config."""
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "RCLONE_CONFIG": str(self.config),
            "FAULT_REMOTE": str(self.files),
            "FAULT_RCLONE_LOG": str(self.log),
            **faults,
        }

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


# --------------------------------------------------------------------------------------------
# Artifacts and MLC


def sample_bytes(img: np.ndarray, gt_boxes: np.ndarray) -> bytes:
    """One sample pickle exactly as :func:`abtf_ssd.data.preprocess.write_sample` writes it."""
    from abtf_ssd.data.preprocess import PICKLE_PROTOCOL

    return pickle.dumps({"img": img, "gt_boxes": gt_boxes}, protocol=PICKLE_PROTOCOL)


def sample_tarball(samples: int = 4, top: str = "val_2d", prefix: str = "val", seed: int = 0) -> bytes:
    """A ``val_2d.tar.gz`` in the official layout (``val_2d/val_<i>.pkl``) of small real samples."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        folder = tarfile.TarInfo(top)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder)
        for index in range(samples):
            img = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
            data = sample_bytes(img, np.array([[1, 2, 30, 40, 4, 0, 0]], dtype=np.float32))
            member = tarfile.TarInfo(f"{top}/{prefix}_{index}.pkl")
            member.size, member.mode = len(data), 0o644
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def tarball_members(data: bytes) -> dict[str, bytes]:
    """``member name -> bytes`` of the regular files in a tarball."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}


def mlcr(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``mlcr <args> --quiet`` with ``env``; output captured."""
    return subprocess.run(
        [str(BIN / "mlcr"), *args, "--quiet"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
