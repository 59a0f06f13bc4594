"""Where outputs may go, one writer at a time, and how they replace what was there: every command's outputs.

Rules (each refused in one line, before anything is written):

* an output never is, contains or sits inside one of the command's inputs (the recording, whatever
  its form, calibration, afterglow model, response, darks/flats files), and neither do the folders
  it writes beside itself (``OUT.partial``, ``OUT.progress``, ``OUT.ingest.zarr``);
* an existing output is replaced only with ``overwrite``, and only by the same kind of thing: a
  Zarr group by a Zarr group, a file by a file (``--overwrite`` never deletes a folder of
  something else, such as the folder holding the recording);
* a folder at ``OUT.partial``, ``OUT.progress`` or ``OUT.ingest.zarr`` is deleted only where
  xray-pipeline made it (its group attribute :data:`WRITER_ATTR`, or a marker file :data:`MARKER`, says so);
  anything else is the user's;
* one writer per output: an OS lock (``flock``) on ``OUT.lock`` held from before anything is
  touched until the output is committed or abandoned; a second writer is refused while it is held,
  and the OS releases it when its holder dies, so ``--resume`` works after a kill;
* the old output is moved aside under a fresh hidden name, the new one moved into place, then the
  old one deleted: a crash in between leaves the old output whole, never a mix.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import uuid
import weakref
from pathlib import Path

from ..errors import OutputExistsError, PipelineError

#: A file inside the folders the pipeline makes that are not Zarr groups (``OUT.progress``)
MARKER = ".xray-pipeline"
#: The group attribute that marks a Zarr group the pipeline wrote (outputs, partial outputs, staged ingests);
#: ``ROLE_ATTR`` says what for where it is not an output
WRITER_ATTR = "xray_pipeline_writer"
ROLE_ATTR = "xray_pipeline_role"
#: The folders a run writes beside its output ``OUT``
SIDECARS = (".partial", ".progress", ".ingest.zarr")


class OutputBusyError(PipelineError, BlockingIOError):
    """Another process is writing the same output."""


def sidecar(output: Path, suffix: str) -> Path:
    """``OUT.partial`` and the like for the output ``OUT``."""
    return output.with_name(output.name + suffix)


def mark(folder: Path, role: str, **extra) -> None:
    """Say in ``folder`` (not a Zarr group: those carry :data:`WRITER_ATTR`) that xray-pipeline made it, and why."""
    (Path(folder) / MARKER).write_text(json.dumps({"role": role, **extra}) + "\n")


def role_of(folder: Path) -> str | None:
    """What xray-pipeline made ``folder`` for ('output', 'progress', 'staged-ingest', ...), or None (not ours)."""
    p = Path(folder)
    try:
        if not p.is_dir() or p.is_symlink():
            return None
        if (p / MARKER).is_file():
            return str(json.loads((p / MARKER).read_text()).get("role", "output"))
        meta = p / "zarr.json"
        if meta.is_file() and stat.S_ISREG(os.stat(meta).st_mode):
            attrs = json.loads(meta.read_text()).get("attributes") or {}
            if WRITER_ATTR in attrs:
                return str(attrs.get(ROLE_ATTR, "output"))
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    return None


def marked(folder: Path, role: str | None = None) -> bool:
    """True where ``folder`` is a folder xray-pipeline made (for ``role``, if given)."""
    got = role_of(folder)
    return got is not None and (role is None or got == role)


def ours(folder: Path) -> bool:
    """A folder the pipeline may delete: marked as its own (:func:`marked`), or empty (a kill can land between
    making a folder and marking it; an empty folder holds nothing to lose)."""
    p = Path(folder)
    if marked(p):
        return True
    try:
        return p.is_dir() and not p.is_symlink() and next(p.iterdir(), None) is None
    except OSError:
        return False


def make_marked(folder: Path, role: str, **extra) -> None:
    """Create ``folder`` with its marker inside (the marker first: a kill leaves an empty or a marked folder)."""
    Path(folder).mkdir(parents=True)
    mark(folder, role, **extra)


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def input_paths(*items) -> list[Path]:
    """Resolved paths of the given inputs (None and empty ones left out; an afterglow model with its map)."""
    out = []
    for i in items:
        if i is None or i == "":
            continue
        p = Path(i).resolve()
        out.append(p)
        if p.suffix == ".json":  # an afterglow model's per-pixel amplitudes beside it
            out.append(p.with_suffix(".amplitudes.npy"))
    return out


def check_output_path(output, *, overwrite: bool, inputs=(), kind: str = "zarr", sidecars: bool = True) -> Path:
    """Refuse an output that would lose or overwrite what it must not; returns its resolved path.

    Parameters
    ----------
    output : path
    overwrite : bool
        Replace an existing output of the same kind.
    inputs : iterable of paths
        Everything the command reads (None entries are ignored).
    kind : {'zarr', 'file'}
        What the output is: a Zarr group (a folder with ``zarr.json``) or a single file.
    sidecars : bool
        Also check ``OUT.partial``/``OUT.progress``/``OUT.ingest.zarr`` (outputs written through them).
    """
    out = Path(output).resolve()
    near = [out] + ([sidecar(out, s) for s in SIDECARS] if sidecars else [])
    for ip in input_paths(*inputs):
        for p in near:
            if _overlaps(p, ip):
                what = "" if p == out else f" (through '{p.name}', written beside it)"
                raise OutputExistsError(f"output '{output}' overlaps the input '{ip}'{what}; choose another output path")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output '{output}' already exists; pass --overwrite to replace it or choose "
                                    "another path")
        _check_replaceable(out, output, kind)
    if sidecars:
        for s in SIDECARS:
            p = sidecar(out, s)
            if (p.exists() or p.is_symlink()) and not ours(p):
                raise OutputExistsError(f"'{p}' exists and was not made by xray-pipeline (it would be deleted); "
                                        "move it away or choose another output path")
    return out


def _check_replaceable(out: Path, given, kind: str) -> None:
    """``--overwrite`` replaces a Zarr group by a Zarr group and a file by a file, nothing else."""
    st = os.lstat(out)
    if kind == "zarr":
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or not (out / "zarr.json").is_file():
            what = "a link" if stat.S_ISLNK(st.st_mode) else ("a folder that is not a Zarr group"
                                                               if stat.S_ISDIR(st.st_mode) else "a file")
            raise OutputExistsError(f"output '{given}' is {what}; --overwrite replaces only a Zarr group: move it "
                                    "away or choose another path")
    elif not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else ("a link" if stat.S_ISLNK(st.st_mode) else "not a file")
        raise OutputExistsError(f"output '{given}' is {what}; --overwrite replaces only a file: move it away or "
                                "choose another path")


def remove(path: Path) -> None:
    """Delete a file, link or folder (what the pipeline made; callers check that first)."""
    p = Path(path)
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p)


def replace(new: Path, final: Path) -> Path:
    """Move ``new`` to ``final``; an old ``final`` is moved aside first and deleted only after."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        remove(old)
    return final


def temporary(path: Path) -> Path:
    """A fresh hidden name beside ``path`` with its suffix (what writers such as ``np.save`` and matplotlib
    go by), to write ``path`` under and rename it to when whole."""
    p = Path(path)
    return p.with_name(f".{p.stem}.{uuid.uuid4().hex[:12]}.partial{p.suffix}")


class atomic_file:
    """``with atomic_file(path, overwrite=..., inputs=...) as tmp:`` write ``tmp``; it becomes ``path`` only when the
    block ends without an error (checked first like any output: never an input, never over a folder)."""

    def __init__(self, path, *, overwrite: bool, inputs=()):
        self.final = check_output_path(path, overwrite=overwrite, inputs=inputs, kind="file", sidecars=False)
        self.tmp = temporary(self.final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.tmp.is_file():
            os.replace(self.tmp, self.final)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


class OutputLock:
    """One writer per output: ``flock`` on ``OUT.lock``, refused at once while another process holds it.

    The lock file is removed on :meth:`release`; a process that finds the file replaced after it got
    its lock tries again, so a removal never lets two writers in. A kill leaves the file (harmless):
    the OS has released the lock.
    """

    def __init__(self, output: Path):
        import fcntl

        self.output = Path(output)
        self.path = sidecar(self.output, ".lock")
        if self.path.exists() and not self.path.is_file():
            raise OutputExistsError(f"'{self.path}' exists and is not a lock file of xray-pipeline; move it away")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputBusyError(f"output '{output}' is being written by another xray-pipeline process "
                                          f"({_holder(self.path)}); wait for it to finish or choose another output "
                                          "path") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
        else:  # pragma: no cover - a hundred removals in a row
            raise OutputBusyError(f"output '{output}': could not lock '{self.path}'; try again")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self._final = weakref.finalize(self, os.close, fd)

    @property
    def held(self) -> bool:
        return self._final.alive

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if not self._final.alive:
            return
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except OSError:
            pass
        self._final()


def _holder(path: Path) -> str:
    try:
        pid = int(path.read_text().split()[0])
        return f"pid {pid}"
    except (OSError, ValueError, IndexError):
        return "see its lock file"


class FileSet:
    """Several files written as one: each to a temporary name, all renamed into place by :meth:`commit`.

    A failure before :meth:`commit` leaves none of them (and every file that was there before).
    Files are checked (:func:`check_output_path`, kind 'file') when named, before anything is written.
    """

    def __init__(self, folder, names, *, overwrite: bool, inputs=()):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputExistsError(f"'{folder}' is a file, not a folder; choose another output folder")
        here = self.folder.resolve()
        for ip in input_paths(*inputs):  # the folder may hold inputs (only the named files are written), not be one
            if here == ip or ip in here.parents:
                raise OutputExistsError(f"output folder '{folder}' is or lies inside the input '{ip}'; choose "
                                        "another folder")
        self.final = {n: self.folder / n for n in names}
        for p in self.final.values():
            check_output_path(p, overwrite=overwrite, inputs=inputs, kind="file", sidecars=False)
        self.lock = None
        self.tmp = {n: temporary(self.folder / n) for n in names}

    def begin(self) -> "FileSet":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.folder / ".xray-pipeline-files")
        return self

    def path(self, name: str) -> Path:
        """Where to write ``name`` now (a temporary file until :meth:`commit`)."""
        return self.tmp[name]

    def commit(self) -> dict:
        missing = [n for n, p in self.tmp.items() if not p.is_file()]
        if missing:  # pragma: no cover - a writer that forgot one: nothing is moved
            raise RuntimeError(f"output files not written: {missing}")
        for n, p in self.tmp.items():
            os.replace(p, self.final[n])
        self._end()
        return dict(self.final)

    def abort(self) -> None:
        for p in self.tmp.values():
            p.unlink(missing_ok=True)
        self._end()

    def _end(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self.begin()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False
