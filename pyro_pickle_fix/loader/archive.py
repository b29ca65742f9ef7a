"""Stage 1: the archive.  torch's zip format, checked before anything is read
from it: one top folder, every record stored (not compressed, not encrypted) at a
place of its own inside the file, at most :data:`MAX_RECORDS` of them."""

from __future__ import annotations

import itertools
import re
import struct
import sys
import zipfile

from ..errors import UntrustedContentError
from .messages import escaped, refuse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from io import BufferedReader
    from typing import Any, NoReturn

    from .messages import Kind

#: Records in the archive: ``torch.save`` writes one a storage and a few more; the
#: largest files :data:`MAX_OBJECTS` allows hold some 110,000 storages (an amsgrad
#: Adam state of 27,000 parameters).  Checked before the zip directory is read.
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
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip file's local file header
_STORAGE_KEY = re.compile(r"[0-9A-Za-z_]{1,64}")
#: The MS-DOS directory attribute, in a central-directory entry's external
#: attributes: torch.save writes 0 there.
_DOS_DIRECTORY = 0x10


class Archive:
    """A zip file as ``torch.save`` writes it, checked: one top folder, every record
    stored (not compressed, not encrypted) at a place of its own inside the file."""

    def __init__(self, file: BufferedReader, filename: Any, kind: Kind) -> None:
        self.file, self.filename, self.kind = file, filename, kind
        file.seek(0, 2)
        self.length = length = file.tell()
        file.seek(0)
        end = getattr(zipfile, "_EndRecData", None)  # what ZipFile reads first
        try:
            found = end(file) if end is not None else None
        except (OSError, ValueError, struct.error):
            found = None
        if found is not None and found[4] > MAX_RECORDS:  # _ECD_ENTRIES_TOTAL
            self.refuse(
                "",
                f"is an archive of {found[4]} records, more than {MAX_RECORDS} (torch.save "
                "writes one a storage and a few more)",
            )
        try:
            with zipfile.ZipFile(file) as archive:
                infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as error:
            raise self._untrusted(
                "",
                "is not a zip archive as torch.save writes one (it may be torch's legacy "
                "format, torch.save(..., _use_new_zipfile_serialization=False))",
            ) from error
        first = min((info.header_offset for info in infos), default=0)
        if first != 0:
            # zipfile finds records where the end record says, shifted by what lies
            # before them; torch reads a file that does not start with a record as
            # its legacy format: the two would read two different files.
            self.refuse(
                "",
                f"has its first record at byte {first}, not at byte 0 where torch.save "
                "writes it (torch would not read it as this archive)",
            )
        pickles = [info.filename for info in infos if info.filename.endswith("/data.pkl")]
        if len(pickles) != 1 or pickles[0].count("/") != 1:
            self.refuse("", "is not an archive of one torch.save() state (one */data.pkl)")
        self.prefix = pickles[0][: -len("data.pkl")]
        #: record name (without the top folder) -> (where its data starts, its size)
        self.records: dict[str, tuple[int, int]] = {}
        spans = []
        for info in infos:
            name = info.filename
            rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
            storage = rest.startswith("data/") and _STORAGE_KEY.fullmatch(rest[5:])
            if rest not in _RECORDS and not storage:
                self.refuse(name, "is a record that torch.save does not write")
            if rest in self.records:
                self.refuse(name, "is in the archive twice")
            if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                self.refuse(
                    name,
                    "is stored compressed (torch.save stores every record as it is; a "
                    "compressed one can inflate far beyond the file)",
                )
            if info.flag_bits & 0x1:
                self.refuse(name, "is encrypted")
            if info.external_attr & _DOS_DIRECTORY:
                # torch's reader (miniz) reads no data for it: torch.load would hand out
                # the storage's uninitialized memory where this load reads the record.
                self.refuse(name, "is marked as a directory (torch reads no data for it)")
            start = self._data_start(info)
            if start + info.file_size > length:
                self.refuse(name, f"claims {info.file_size} bytes that the file does not hold")
            spans.append((info.header_offset, start + info.file_size, name))
            self.records[rest] = (start, info.file_size)
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

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        self.file.seek(info.header_offset)
        header = self.file.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            self.refuse(info.filename, "has no local header")
        fields = _LOCAL_HEADER.unpack(header)
        name_length, extra_length = fields[-2], fields[-1]
        name = self.file.read(name_length)
        if fields[0] != b"PK\x03\x04" or fields[4] != 0 or name != info.filename.encode():
            self.refuse(info.filename, "has a local header that does not match the directory")
        return int(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)

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
            self.refuse(name, "is cut short")

    def _untrusted(self, where: str, what: str) -> UntrustedContentError:
        try:
            refuse(self.filename, self.kind, where, what)
        except UntrustedContentError as error:
            return error

    def refuse(self, where: str, what: str) -> NoReturn:
        refuse(self.filename, self.kind, escaped(where), what)
