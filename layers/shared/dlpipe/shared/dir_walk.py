"""Walking a directory store's folders by descriptor (openat), never following a symlink.

A descriptor opened with O_DIRECTORY | O_NOFOLLOW is a folder that was one when opened, not a
symlink to somewhere else (ENOTDIR on Linux, ELOOP elsewhere); every name below it is then
resolved inside it, so a folder swapped for a symlink meanwhile leads nowhere.
"""

from __future__ import annotations

import errno
import os

from dlpipe.shared.keys import MAX_KEY_BYTES, is_key_segment

# O_PATH, where there is one, makes a descriptor to walk through cheaper; one to list must be readable.
FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LISTED = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # removed, or swapped for a file or a symlink


def scan(fd: int, base: str, fragment: str, keys: list[str]) -> None:
    """Add to `keys` the objects under the folder `fd` (closed here) whose names start with
    `fragment`, prefixed by `base`: regular files whose paths are keys. Symlinks are skipped."""
    folders = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if not entry.name.startswith(fragment) or not is_key_segment(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    key = base + entry.name
                    if len(key) <= MAX_KEY_BYTES // 4 or len(key.encode()) <= MAX_KEY_BYTES:
                        keys.append(key)
        for name in folders:  # one descriptor open per level, not two
            try:
                child = os.open(name, LISTED, dir_fd=fd)
            except OSError as err:
                if err.errno in _GONE:
                    continue
                raise
            scan(child, f"{base}{name}/", "", keys)
    finally:
        os.close(fd)


def remove_empty_folder(fd: int, name: str) -> bool:
    """Remove the folder `name` under `fd` if it holds nothing but empty folders; whether it is gone."""
    try:
        child = os.open(name, LISTED, dir_fd=fd)
    except OSError as err:
        if err.errno in _GONE:
            return err.errno == errno.ENOENT
        raise
    try:
        with os.scandir(child) as entries:
            found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        if not all(is_dir and remove_empty_folder(child, sub) for sub, is_dir in found):
            return False
    finally:
        os.close(child)
    try:
        os.rmdir(name, dir_fd=fd)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST):  # written into meanwhile
            return False
        if err.errno != errno.ENOENT:
            raise
    return True


def link_once(fd: int, tmp: str, name: str) -> bool:
    """Give the written file `tmp` (in the folder `fd`) the name `name` unless something has it: linkat
    fails then, where a rename would replace it (the directory store's conditional create). `tmp` goes."""
    try:
        os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp, dir_fd=fd)
