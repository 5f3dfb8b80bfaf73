"""Weight files read and written inside one folder without following symlinks.

A path is named relative to a root folder (or absolutely, inside it). It is split
lexically (``a/./b`` is ``a/b``; ``..`` may not climb above the root) and every
folder on the way is opened relative to the one before it with ``O_NOFOLLOW |
O_DIRECTORY``. No step follows a symlink, and because each step holds a descriptor
of the folder it checked, a folder swapped for a symlink after the check cannot
redirect a read or a write.

Writes go to a temporary name that cannot be predicted, created with ``O_EXCL``
beside the target, and are renamed into place; a new name is installed with
``renameat2(RENAME_NOREPLACE)`` (or a hard link), so nothing that appeared
meanwhile is replaced. Only a caller that has checked what is there replaces it.

Without a root (a library caller naming its own file), the path's folder is opened
as given, symlinks included, and only the final name is handled as above; reads
then follow a symlinked file too (a Hugging Face cache links its files).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO, NamedTuple

__all__ = ["WeightFileError", "resolve_in_root"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO planted at the path must not hang the caller; it is
# refused once fstat shows what it is. It changes nothing for regular files.
_READ = os.O_RDONLY | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
# Bounds a copied checkpoint folder's depth (Orbax nests a few levels).
_MAX_DEPTH = 32


class WeightFileError(ValueError):
    """A weight file that cannot be read or written, naming the file and why.

    Every error of :func:`~ol_jax.models.load_weights` about the file itself
    (missing, outside the allowed folder, a symlink, truncated, corrupt, a
    manifest that disagrees with its data) is this type; so is a refusal of
    :func:`~ol_jax.models.save_weights` to touch an existing path.

    Attributes:
      path: the file as the caller named it.
      problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"weights file {path!r}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem)


class Located(NamedTuple):
    """A path split for descriptor-relative access.

    ``root`` is a real folder path; ``parts`` the names below it (the last is the
    target); ``shown`` the path as the caller gave it, for messages; ``follow``
    whether the target itself may be a symlink (library callers without a root).
    """

    root: str
    parts: tuple[str, ...]
    shown: str
    follow: bool

    @property
    def name(self) -> str:
        return self.parts[-1]


def _check_text(path: object) -> str:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ValueError(f"path must be a non-empty path string, got {path!r}")
    return path


def locate(
    path: str | os.PathLike[str], root: str | os.PathLike[str] | None
) -> Located:
    """Splits ``path`` under ``root`` (or under its own folder when ``root`` is None).

    Raises:
      WeightFileError: the path lies outside ``root`` or names ``root`` itself.
      ValueError: the path is empty or holds a NUL byte.
    """
    text = _check_text(path)
    if root is None:
        full = os.path.abspath(text)
        parent, name = os.path.split(full)
        if not name:  # "/" itself
            raise WeightFileError(text, "names a filesystem root, not a file")
        return Located(os.path.realpath(parent), (name,), text, True)
    base = os.path.realpath(os.fspath(root))
    full = os.path.normpath(os.path.join(base, text))
    rel = os.path.relpath(full, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        raise WeightFileError(text, f"is outside the allowed folder {base}")
    if rel == os.curdir:
        raise WeightFileError(
            text, f"names the allowed folder {base} itself; name a file inside it"
        )
    return Located(base, tuple(rel.split(os.sep)), text, False)


def resolve_in_root(root: str | os.PathLike[str], file_path: str) -> str:
    """``file_path`` (relative to ``root``, or absolute) as a path inside ``root``.

    The check is lexical (``..`` may not climb out) and no component may be a
    symlink. This answers where a path points now; :func:`save_weights` and
    :func:`load_weights` given ``root=`` repeat the check with open descriptors,
    so a later swap cannot redirect them.

    Args:
      root: the allowed folder.
      file_path: the path to check.

    Returns:
      The absolute path (under the real path of ``root``).

    Raises:
      WeightFileError: outside ``root``, ``root`` itself, through a symlink, or
        a folder on the way is missing.
      ValueError: empty, or holds a NUL byte.
    """
    where = locate(file_path, root)
    with open_parent(where):
        pass
    full = os.path.join(where.root, *where.parts)
    if os.path.islink(full):
        raise WeightFileError(where.shown, _symlink_problem(where))
    return full


def _symlink_problem(where: Located, upto: int | None = None) -> str:
    upto = len(where.parts) if upto is None else upto
    link = os.path.join(*where.parts[:upto])
    return (
        f"goes through the symlink {link!r}; symlinks are not followed, so every "
        f"path stays inside the allowed folder {where.root}"
    )


@contextlib.contextmanager
def open_parent(where: Located) -> Iterator[int]:
    """A descriptor of the folder holding ``where``'s target, reached without links.

    Raises:
      WeightFileError: a folder on the way is missing, a file, or a symlink.
    """
    try:
        fd = os.open(where.root, _DIR)
    except OSError as e:
        if where.follow:
            problem = f"the folder of {where.shown} does not exist or is not a folder"
        else:
            problem = f"the allowed folder {where.root} cannot be opened"
        raise WeightFileError(where.shown, f"{problem} ({e.strerror})") from None
    try:
        for i, part in enumerate(where.parts[:-1]):
            try:
                step = os.open(part, _DIR, dir_fd=fd)
            except OSError as e:
                problem = _step_problem(fd, part, where, i, e)
                raise WeightFileError(where.shown, problem) from None
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def _step_problem(fd: int, part: str, where: Located, i: int, e: OSError) -> str:
    try:
        st = os.stat(part, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return f"folder {os.path.join(*where.parts[: i + 1])!r} does not exist"
    if stat.S_ISLNK(st.st_mode):
        return _symlink_problem(where, i + 1)
    if not stat.S_ISDIR(st.st_mode):
        return f"{os.path.join(*where.parts[: i + 1])!r} is not a folder"
    return f"cannot open folder {os.path.join(*where.parts[: i + 1])!r}: {e.strerror}"


def lstat_in(fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in folder ``fd``, or None when nothing is there."""
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_in(fd: int, name: str, where: Located, *, follow: bool) -> tuple[int, bool]:
    """Opens ``name`` in folder ``fd`` for reading: ``(descriptor, is_folder)``.

    Only regular files and folders are opened; a symlink is refused unless
    ``follow``.

    Raises:
      WeightFileError: missing, a symlink, or neither a file nor a folder.
    """
    flags = _READ | (0 if follow else _NOFOLLOW)
    try:
        out = os.open(name, flags, dir_fd=fd)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise WeightFileError(where.shown, f"{name!r} does not exist") from None
        if e.errno == errno.ELOOP:
            st = lstat_in(fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                problem = (
                    f"{name!r} is a symlink; symlinks are not followed, so every "
                    f"path stays inside the allowed folder {where.root}"
                )
                raise WeightFileError(where.shown, problem) from None
        problem = f"cannot open {name!r}: {e.strerror}"
        raise WeightFileError(where.shown, problem) from None
    mode = os.fstat(out).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return out, stat.S_ISDIR(mode)
    os.close(out)
    raise WeightFileError(where.shown, f"{name!r} is neither a file nor a folder")


def read_in(fd: int, name: str, where: Located, *, limit: int) -> bytes:
    """The bytes of regular file ``name`` in folder ``fd`` (a sidecar), at most
    ``limit`` of them.

    Raises:
      WeightFileError: missing, a symlink (unless ``where.follow``), not a
        regular file, or larger than ``limit``.
    """
    out, is_dir = open_in(fd, name, where, follow=where.follow)
    with os.fdopen(out, "rb") as f:
        if is_dir:
            raise WeightFileError(where.shown, f"{name!r} is a folder, not a file")
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise WeightFileError(
                where.shown,
                f"{name!r} holds {size} bytes, more than the {limit} allowed",
            )
        return f.read(limit + 1)[:limit]


def fd_path(fd: int) -> str | None:
    """A path that reopens exactly the file behind ``fd`` (Linux ``/proc``), if any."""
    for base in ("/proc/self/fd", "/dev/fd"):
        candidate = f"{base}/{fd}"
        try:
            if os.path.samestat(os.stat(candidate), os.fstat(fd)):
                return candidate
        except OSError:
            continue
    return None


def copy_file_out(fd: int, dest: str) -> None:
    """Copies the open file ``fd`` to the new private path ``dest``."""
    with open(dest, "xb") as out:
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 20):
            out.write(chunk)


def copy_tree_out(fd: int, dest: str, where: Located, depth: int = 0) -> None:
    """Copies the folder open as ``fd`` to the new private folder ``dest``.

    Every entry is opened relative to its folder without following links; a
    symlink, FIFO or device inside is refused rather than copied.
    """
    if depth > _MAX_DEPTH:
        raise WeightFileError(
            where.shown, f"is nested deeper than {_MAX_DEPTH} folders"
        )
    os.mkdir(dest, 0o700)
    with os.scandir(fd) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        child, is_dir = open_in(fd, name, where, follow=False)
        try:
            target = os.path.join(dest, name)
            if is_dir:
                copy_tree_out(child, target, where, depth + 1)
            else:
                copy_file_out(child, target)
        finally:
            os.close(child)


# ---------------------------------------------------------------- writing


def _temp_name(name: str) -> str:
    # 64 random bits: another process cannot plant a link at the name in advance.
    return f".{name}.{secrets.token_hex(8)}.tmp"


def create_temp(fd: int, name: str) -> tuple[int, str]:
    """Creates a new, unpredictable temporary file beside ``name``, exclusively."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    while True:
        tmp = _temp_name(name)
        try:
            return os.open(tmp, flags, 0o666, dir_fd=fd), tmp
        except FileExistsError:
            continue


def _libc_renameat2():
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    func.argtypes += [ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _libc_renameat2()
_RENAME_NOREPLACE = 1
_AT_FDCWD = getattr(os, "AT_FDCWD", -100)


def rename_noreplace(src_fd: int | None, src: str, dst_fd: int, dst: str) -> None:
    """Renames ``src`` to ``dst`` unless ``dst`` exists (then ``FileExistsError``).

    ``src_fd`` None means ``src`` is a path of its own (a private staging folder).
    """
    if _RENAMEAT2 is not None:
        fd = _AT_FDCWD if src_fd is None else src_fd
        if (
            _RENAMEAT2(
                fd, os.fsencode(src), dst_fd, os.fsencode(dst), _RENAME_NOREPLACE
            )
            == 0
        ):
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), dst)
    # No renameat2 (not Linux, or a filesystem without it): a hard link fails on
    # an existing name just as atomically; a folder cannot be hard-linked, so it
    # is checked first and a tiny window remains in which an empty folder made
    # meanwhile could be replaced (rename refuses a non-empty one).
    st = os.stat(src, dir_fd=src_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.link(
                src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False
            )
        except FileExistsError:
            raise
        except OSError:
            pass
        else:
            os.unlink(src, dir_fd=src_fd)
            return
    if lstat_in(dst_fd, dst) is not None:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def write_files(
    fd: int,
    writers: Mapping[str, Callable[[BinaryIO], None]],
    *,
    replace: frozenset[str],
) -> None:
    """Writes each ``{name: write(file)}`` to a temporary file, then installs them.

    A name in ``replace`` (checked by the caller) replaces what is there; any
    other is installed only if the name is still free. On failure the temporary
    files and the names installed new are removed.
    """
    temps: dict[str, str] = {}
    installed: list[str] = []
    try:
        for name, write in writers.items():
            out, temps[name] = create_temp(fd, name)
            with os.fdopen(out, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in list(temps.items()):
            if name in replace:
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            else:
                rename_noreplace(fd, tmp, fd, name)
                installed.append(name)
            del temps[name]
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
        if temps:  # a later file failed: take back the new names written so far
            for name in installed:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
        raise


def install_staged(staged: str, fd: int, name: str) -> None:
    """Moves the private file or folder ``staged`` to the new name ``name`` in ``fd``.

    A rename when both sit on one filesystem; otherwise a copy into a temporary
    folder beside ``name``, made entry by entry without following links, then
    renamed.

    Raises:
      FileExistsError: ``name`` appeared meanwhile.
    """
    try:
        rename_noreplace(None, staged, fd, name)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    if not os.path.isdir(staged):
        with open(staged, "rb") as src:
            write_files(
                fd, {name: lambda f: shutil.copyfileobj(src, f)}, replace=frozenset()
            )
        return
    tmp = _temp_name(name)
    os.mkdir(tmp, 0o777, dir_fd=fd)
    try:
        _copy_tree_in(staged, fd, tmp)
        rename_noreplace(fd, tmp, fd, name)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp, dir_fd=fd)
        raise


def _copy_tree_in(src: str, parent_fd: int, name: str) -> None:
    # `name` was just made by this process; opening it without following links
    # makes sure the descriptor is that folder and not a link swapped in since.
    fd = os.open(name, _DIR, dir_fd=parent_fd)
    try:
        for entry in os.scandir(src):
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(entry.name, 0o777, dir_fd=fd)
                _copy_tree_in(entry.path, fd, entry.name)
            elif entry.is_file(follow_symlinks=False):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
                out = os.open(entry.name, flags, 0o666, dir_fd=fd)
                with os.fdopen(out, "wb") as f, open(entry.path, "rb") as s:
                    shutil.copyfileobj(s, f)
    finally:
        os.close(fd)
