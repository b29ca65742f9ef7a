"""Stage 1: the archive.  torch's zip format, checked before anything is read
from it: one top folder, every record stored (not compressed, not encrypted) at a
place of its own inside the file, at most :data:`MAX_RECORDS` of them."""

from __future__ import annotations

import itertools
import re
import struct
import sys

from ..errors import UntrustedContentError
from .messages import damaged, escaped, refuse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from io import BufferedReader
    from typing import Any, NoReturn

    from .messages import Kind

#: Records in the archive: ``torch.save`` writes one a storage and a few more; the
#: largest files :data:`MAX_OBJECTS` allows hold some 110,000 storages (an amsgrad
#: Adam state of 27,000 parameters).  Counted as the zip directory is read.
MAX_RECORDS = 2**17

#: The records torch's zip format holds besides the storages (``data/<key>``).
_RECORDS = frozenset(
    {
        "data.pkl",
        "version",
        ".data/version",
        "byteorder",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
    }
)
# The zip format's records (APPNOTE.TXT 4.3): the end of the central directory, its
# zip64 locator and zip64 form, a central directory record, a local file header.
_END = struct.Struct("<4s4H2LH")
_END_SIGNATURE = b"PK\x05\x06"
_LOCATOR = struct.Struct("<4sLQL")
_LOCATOR_SIGNATURE = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_SIGNATURE = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_STORED = 0  # compression method: none
_UTF8 = 0x800  # flag: the name is UTF-8 (else code page 437)
_ZIP64 = 0xFFFFFFFF  # a 32-bit field whose value is in the zip64 extra field
_STORAGE_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")
#: The MS-DOS directory attribute, in a central-directory entry's external
#: attributes: torch.save writes 0 there.
_DOS_DIRECTORY = 0x10


class Archive:
    """A zip file as ``torch.save`` writes it, checked: one top folder, every record
    stored (not compressed, not encrypted) at a place of its own inside the file.

    The directory is read here with :mod:`struct`, not with :mod:`zipfile`: its
    records are counted as they are read, so the count is the directory's own and
    not the end record's claim (a 16-bit field), and an offset, a size or a version
    that a crafted file gives can only be refused, never raise from ``seek``."""

    def __init__(self, file: BufferedReader, filename: Any, kind: Kind) -> None:
        self.file, self.filename, self.kind = file, filename, kind
        file.seek(0, 2)
        self.length = length = file.tell()
        file.seek(0)
        try:
            directory = self._directory()
        except (OSError, ValueError, OverflowError, struct.error) as error:
            # Reading what the checks bounded failed after all (an I/O error): the
            # package's error, the original chained.
            raise self._untrusted(
                "", f"could not be read as a zip archive ({type(error).__name__}: {error})"
            ) from error
        first = min((offset for *_, offset in directory), default=0)
        if first != 0:
            # torch reads a file that does not start with a record as its legacy
            # format: the two would read two different files.
            self.refuse(
                "",
                f"has its first record at byte {first}, not at byte 0 where torch.save "
                "writes it (torch would not read it as this archive)",
            )
        pickles = [name for name, *_ in directory if name.endswith("/data.pkl")]
        if not pickles:
            self.damaged("", "is a zip archive that torch.save did not write: it holds no data.pkl")
        if len(pickles) != 1 or pickles[0].count("/") != 1:
            self.refuse("", "is not an archive of one torch.save() state (one */data.pkl)")
        self.prefix = pickles[0][: -len("data.pkl")]
        #: record name (without the top folder) -> (where its data starts, its size)
        self.records: dict[str, tuple[int, int]] = {}
        spans = []
        folded: set[str] = set()  # the names so far, lower-cased
        for name, raw_name, flags, method, stored, size, external, offset in directory:
            rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
            storage = rest.startswith("data/") and _STORAGE_KEY.fullmatch(rest[5:])
            if rest not in _RECORDS and not storage:
                self.refuse(name, "is a record that torch.save does not write")
            if rest in self.records:
                self.refuse(name, "is in the archive twice")
            if name.lower() in folded:
                # torch's reader (miniz) looks a record up without regard to case:
                # it would read one of the two for both.
                self.refuse(name, "has the name of another record but for case")
            folded.add(name.lower())
            if method != _STORED or stored != size:
                self.refuse(
                    name,
                    "is stored compressed (torch.save stores every record as it is; a "
                    "compressed one can inflate far beyond the file)",
                )
            if flags & 0x1:
                self.refuse(name, "is encrypted")
            if external & _DOS_DIRECTORY:
                # torch's reader (miniz) reads no data for it: torch.load would hand out
                # the storage's uninitialized memory where this load reads the record.
                self.refuse(name, "is marked as a directory (torch reads no data for it)")
            start = self._data_start(name, raw_name, offset)
            if start + size > length:
                self.refuse(name, f"claims {size} bytes that the file does not hold")
            spans.append((offset, start + size, name))
            self.records[rest] = (start, size)
        spans.sort()
        for (_, end, name), (following, _, _) in itertools.pairwise(spans):
            if end > following:
                self.refuse(name, "overlaps the record after it")
        order = self.small("byteorder", 16)
        if (order or b"little") != sys.byteorder.encode():
            self.refuse(
                "byteorder",
                f"says {order!r}, not this machine's {sys.byteorder!r} (pyro-pickle-fix "
                "loads files saved on a machine of the same byte order only)",
            )

    def _end(self) -> tuple[int, int, int]:
        """Where the central directory starts, its size, and where it must end (at
        the end record, or at the zip64 end record when there is one)."""
        file, length = self.file, self.length
        tail_size = min(length, _END.size + 0xFFFF)  # the end record and its comment
        file.seek(length - tail_size)
        tail = file.read(tail_size)
        # torch's reader (miniz) takes the last end-record signature in the file,
        # whatever comes after it: this load takes the same one, and refuses it
        # unless its comment ends the file exactly (else the end record read would
        # be one that hides another archive, or one cut short).
        # (miniz skips a signature with less than a whole end record after it.)
        at = tail.rfind(_END_SIGNATURE, 0, len(tail) - _END.size + len(_END_SIGNATURE))
        if at < 0:  # no end record: cut short, or not a zip at all
            self._not_a_zip()
        if at + _END.size + _END.unpack_from(tail, at)[-1] != len(tail):
            self.refuse(
                "",
                "has bytes after its last zip end record that its comment does not hold "
                "(torch.save writes no comment; this is the end record torch reads, and "
                "another archive may be hidden before it)",
            )
        _, disk, start_disk, _, _, size, start, _ = _END.unpack_from(tail, at)
        end_at = length - tail_size + at
        before = tail[at - _LOCATOR.size : at] if at >= _LOCATOR.size else b""
        if before.startswith(_LOCATOR_SIGNATURE):  # zip64: the true figures are there
            _, locator_disk, end64_at, disks = _LOCATOR.unpack(before)
            if locator_disk != 0 or disks != 1:  # torch's reader (miniz) reads one disk
                self.refuse("", "is one part of a multi-part zip archive")
            if end64_at + _END64.size > end_at - _LOCATOR.size:
                self.refuse("", "has a zip64 end record outside the file")
            file.seek(end64_at)
            fields = _END64.unpack(file.read(_END64.size))
            if fields[0] != _END64_SIGNATURE:
                self.refuse("", "has no zip64 end record where its locator says")
            disk, start_disk, size, start = fields[4], fields[5], fields[8], fields[9]
            end_at = end64_at
        if disk or start_disk:
            self.refuse("", "is one part of a multi-part zip archive")
        if start + size != end_at:
            self.refuse(
                "",
                f"has its central directory at {start} ({size} bytes), not just before its "
                f"end record at {end_at}",
            )
        return start, size, end_at

    def _not_a_zip(self) -> NoReturn:
        """Why a file without a zip end record is not one torch.save wrote whole."""
        self.file.seek(0)
        start = self.file.read(8)
        if not start:
            self.damaged("", "is empty (0 bytes)")
        if start.startswith(b"PK\x03\x04"):
            self.damaged(
                "archive",
                f"is cut short: it begins as torch.save's zip archive, but its end (the zip's "
                f"central directory, which lists its records) is missing from its "
                f"{self.length} bytes",
            )
        if start.startswith(b"\x80"):  # a pickle: torch's legacy format
            self.refuse(
                "",
                "is in torch's legacy format (torch.save(..., "
                "_use_new_zipfile_serialization=False)), which this load does not read",
            )
        self.damaged(
            "",
            f"is not a file torch.save writes (it starts {start!r}, neither a zip archive "
            "nor torch's legacy format)",
        )

    def _directory(self) -> list[tuple[str, bytes, int, int, int, int, int, int]]:
        """The central directory, each record's (name, raw name, flags, method,
        stored size, size, external attributes, local header offset); its records
        counted as they are read, and refused past :data:`MAX_RECORDS`."""
        start, size, _ = self._end()
        self.file.seek(start)
        data = self.file.read(size)
        found: list[tuple[str, bytes, int, int, int, int, int, int]] = []
        at = 0
        while at < size:
            if len(found) >= MAX_RECORDS:
                self.refuse(
                    "",
                    f"is an archive of more than {MAX_RECORDS} records (torch.save writes "
                    "one a storage and a few more)",
                )
            if at + _CENTRAL.size > size:
                self.refuse("", "has a central directory that ends inside a record")
            fields = _CENTRAL.unpack_from(data, at)
            if fields[0] != _CENTRAL_SIGNATURE:
                self.refuse("", f"has no directory record at byte {start + at}")
            flags, method, stored, full = fields[3], fields[4], fields[8], fields[9]
            name_length, extra_length, comment_length, offset = (
                fields[10],
                fields[11],
                fields[12],
                fields[16],
            )
            name_at = at + _CENTRAL.size
            extra_at = name_at + name_length
            at = extra_at + extra_length + comment_length
            if at > size:
                self.refuse("", "has a central directory that ends inside a record")
            raw_name = data[name_at:extra_at]
            name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437", "surrogateescape")
            if _ZIP64 in (full, stored, offset):
                full, stored, offset = self._zip64(
                    name, data[extra_at : extra_at + extra_length], full, stored, offset
                )
            found.append((name, raw_name, flags, method, stored, full, fields[15], offset))
        return found

    def _zip64(
        self, name: str, extra: bytes, full: int, stored: int, offset: int
    ) -> tuple[int, int, int]:
        """The sizes and offset that a record's zip64 extra field gives in place of
        the 32-bit fields that say ``0xFFFFFFFF``, in the order zip writes them."""
        at = 0
        while at + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, at)
            if tag == 1:
                values = extra[at + 4 : at + 4 + length]
                wanted = [value == _ZIP64 for value in (full, stored, offset)]
                if len(values) < 8 * sum(wanted):
                    break
                given = iter(struct.unpack_from(f"<{sum(wanted)}Q", values))
                full, stored, offset = (
                    next(given) if needed else value
                    for value, needed in zip((full, stored, offset), wanted, strict=True)
                )
                return full, stored, offset
            at += 4 + length
        self.refuse(name, "has sizes of 0xFFFFFFFF and no zip64 field that gives them")

    def _data_start(self, name: str, raw_name: bytes, offset: int) -> int:
        if offset + _LOCAL_HEADER.size > self.length:
            self.refuse(name, "has no local header")
        self.file.seek(offset)
        fields = _LOCAL_HEADER.unpack(self.file.read(_LOCAL_HEADER.size))
        name_length, extra_length = fields[-2], fields[-1]
        found = self.file.read(name_length)
        if fields[0] != _LOCAL_SIGNATURE or fields[4] != _STORED or found != raw_name:
            self.refuse(name, "has a local header that does not match the directory")
        return int(offset + _LOCAL_HEADER.size + name_length + extra_length)

    def small(self, name: str, limit: int) -> bytes | None:
        """A record read whole (the pickle, the byte order); None if there is none."""
        if name not in self.records:
            return None
        start, size = self.records[name]
        if size > limit:
            self.refuse(name, f"is {size} bytes (more than {limit})")
        self.file.seek(start)
        return self.file.read(size)

    def read_into(self, name: str, buffer: Any) -> None:
        """A record's bytes, into ``buffer`` (of exactly the record's size)."""
        start, size = self.records[name]
        self.file.seek(start)
        if size and self.file.readinto(buffer) != size:
            self.damaged(name, "is cut short (the file changed while it was read)")

    def _untrusted(self, where: str, what: str) -> UntrustedContentError:
        try:
            refuse(self.filename, self.kind, where, what)
        except UntrustedContentError as error:
            return error

    def refuse(self, where: str, what: str) -> NoReturn:
        refuse(self.filename, self.kind, escaped(where), what)

    def damaged(self, where: str, what: str) -> NoReturn:
        damaged(self.filename, self.kind, escaped(where), what)
