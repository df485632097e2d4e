"""Writing files so that nothing the user had is lost: every output goes through a temporary file in the same
folder and an atomic rename, so a killed process leaves either the old file or the new one, never a broken one.

Example:
    >>> atomic_write(run_dir / "summary.json", text)
    >>> with atomic_path(out) as tmp:            # for writers that need a file name (torch.export, matplotlib)
    ...     torch.export.save(program, tmp)
    >>> check_not_input(out, {"the checkpoint": ckpt}, "-o")   # no command writes over a file it reads
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import RelaxError

__all__ = ["atomic_write", "atomic_path", "fsync_dir", "same_file", "check_not_input"]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Best-effort fsync of a folder, so a rename in it survives a crash (not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block ends without error it is fsynced and renamed to ``path``,
    otherwise removed. The file gets the permissions the user's umask gives new files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name one file: the same inode when both exist (through hard and symbolic links),
    else the same absolute path once symbolic links are resolved.

    Example:
        >>> same_file("run/../run/recipe.yaml", "run/recipe.yaml")
        True
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_not_input(output: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None], option: str) -> None:
    """Refuse (:class:`RelaxError`) to write ``output`` when it is one of the files the command reads.

    Args:
        output: the file about to be written.
        inputs: what each input is (e.g. ``"the checkpoint being exported"``) -> its path (``None`` is skipped).
        option: how the user named ``output`` (e.g. ``"-o"``), for the message.

    Example:
        >>> check_not_input("best.safetensors", {"the checkpoint being read": "best.safetensors"}, "-o")
        Traceback (most recent call last):
        relaxcli.errors.RelaxError: -o best.safetensors is the checkpoint being read: writing it would ...
    """
    for what, path in inputs.items():
        if path is not None and same_file(output, path):
            raise RelaxError(
                f"{option} {output} is {what}: writing it would replace the command's own input, so "
                "nothing was written; choose another output path"
            )
