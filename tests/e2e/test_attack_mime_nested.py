"""Archives inside archives, end to end: a real client through postern
running the shipped 60_attachments.lua, to an aiosmtpd MTA.

7-Zip opens an archive it finds in another one, and Explorer a ZIP in a ZIP:
an executable one archive further in is one more double-click away. postern
opens an archive named as one (".zip", ".tgz", ".7z", ...) inside a ZIP
(stored or deflated, with or without a data descriptor, behind a
self-extractor stub), a tar archive (plain or compressed) or a file
compressed whole, up to 4 archives deep (the attached one is the first).
Each message hides an executable in there and must be refused 554 5.7.1,
never relayed; an archive 5 deep, or one whose data fails its CRC, is "too
complex to check"; an archive in an archive postern does not open (in a 7z,
RAR or cabinet, an encrypted ZIP member, one compressed with bzip2, LZMA or
Deflate64) is "Archive inside an archive could not be checked". Honest
archives of archives pass. Every archive sent is checked first against
7-Zip (7zz; libarchive's bsdtar for RAR), which finds the hidden file where
the test says it is."""
import bz2
import io
import itertools
import lzma
import pathlib
import random
import re
import struct
import subprocess
import tempfile
import zipfile
import zlib

import pytest

from harness import check_reply
from test_attack_mime import ATTACHMENTS, TEXT, gzip_file, multipart, rar5_block, send, seven_part, vint

MZ = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(48)
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 20 + b"%%EOF\n"
TXT = b"Please find the documents attached.\n" * 10
# What a self-extractor's code looks like to a ZIP reader: octets before the archive.
STUB = b"MZ" + random.Random(7).randbytes(8190)
# A photo after an archive stored in another, so that the outer archive does
# not end with the inner one's end record: a ZIP reader given the outer
# archive would list the inner one's files as the outer one's.
PHOTO = random.Random(8).randbytes(80 * 1024)

# Lists what ctx.body:attachments() returns, each file as name@archive, and
# "!" after one that is `unopened`: name and archive with each octet that is
# no ASCII letter, digit or dot written as "_".
PROBE = """
postern.rule{ name = "NESTED_PROBE", stage = "eom", on_error = "tempfail", fn = function(ctx)
  local seen = {}
  for _, a in ipairs(ctx.body:attachments()) do
    seen[#seen + 1] = a.filename:gsub("[^%w%.]", "_") .. "@" .. (a.archive or ""):gsub("[^%w%.]", "_") ..
                      (a.unopened and "!" or "")
  end
  return postern.reject(550, "5.7.1", "probe " .. table.concat(seen, "+"))
end }
"""


@pytest.fixture
def proxy(postern, sink):
    return postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}"]'})


class Pipe:
    """A file object that cannot seek or tell, as a pipe: Python's zipfile
    writing to it puts each file's CRC and sizes after its data (flag bit 3,
    a data descriptor)."""

    def __init__(self):
        self.out = io.BytesIO()

    def write(self, data):
        return self.out.write(data)

    def flush(self):
        pass


def zip_of(members, method=zipfile.ZIP_DEFLATED, stream=False, stub=b""):
    """A ZIP archive (Python's zipfile) of `members`, name: content or name:
    (content, method); `stream`: written to a pipe (data descriptors);
    `stub`: appended to these octets, as a self-extractor is (zipfile counts
    its offsets from the stub's start, as `zip -A` does)."""
    out = Pipe() if stream else io.BytesIO(stub)
    with zipfile.ZipFile(out, "a" if stub else "w", method) as z:
        for name, content in members.items():
            content, how = content if isinstance(content, tuple) else (content, method)
            z.writestr(zipfile.ZipInfo(name, (2024, 3, 1, 12, 0, 0)), content, compress_type=how)
    return out.out.getvalue() if stream else out.getvalue()


def source(tmp_path, members):
    """A new folder holding `members` (name: content), for an archiver to pack."""
    src = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    for name, content in members.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    return src


def tar_of(tmp_path, members, *options):
    """A pax tar archive by libarchive's bsdtar (`options`: -z, -j, -J, --zstd compress it)."""
    src = source(tmp_path, members)
    subprocess.run(["bsdtar", "-cf", "../out.tar", "--format", "pax", *options, *members], cwd=src, check=True,
                   capture_output=True, timeout=60)
    return (src.parent / "out.tar").read_bytes()


def seven_of(tmp_path, members, *options):
    """An archive by 7-Zip (7zz a): a 7z, or with `options` -tzip a ZIP."""
    src = source(tmp_path, members)
    out = src.parent / "out.7z"
    out.unlink(missing_ok=True)
    subprocess.run(["7zz", "a", "-bd", "-y", *options, str(out), *members], cwd=src, check=True, capture_output=True,
                   timeout=60)
    return out.read_bytes()


def rar_of(members):
    """A RAR 5.0 archive of stored files (test_attack_mime's rar5_bytes, with contents)."""
    out = b"Rar!\x1a\x07\x01\x00" + rar5_block(1, vint(0))
    for name, data in members.items():
        raw = name.encode()
        out += rar5_block(2, vint(0x4) + vint(len(data)) + vint(0x20) + struct.pack("<I", zlib.crc32(data)) +
                          vint(0) + vint(0) + vint(len(raw)) + raw, data)
    return out + rar5_block(5, vint(0))


def cabinet_of(members):
    """A Microsoft cabinet of stored files (test_attack_mime's cabinet, with
    contents): one folder, its data in blocks of 32 KiB."""
    entries, content = b"", b""
    for name, data in members.items():
        entries += struct.pack("<IIHHHH", len(data), len(content), 0, 0x5A21, 0, 0x20) + name.encode() + b"\0"
        content += data
    blocks = [content[i:i + 32768] for i in range(0, len(content), 32768)]
    data = b"".join(struct.pack("<IHH", 0, len(b), len(b)) + b for b in blocks)
    data_at = 36 + 8 + len(entries)
    header = struct.pack("<4sIIIIIBBHHHHH", b"MSCF", 0, data_at + len(data), 0, 36 + 8, 0, 3, 1, 1, len(members),
                         0, 0, 0)
    return header + struct.pack("<IHH", data_at, len(blocks), 0) + entries + data


def zstd_of(data):
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True, timeout=30).stdout


def docx():
    """A Word document: a ZIP archive, not named as one."""
    return zip_of({"[Content_Types].xml": b'<?xml version="1.0"?><Types/>', "_rels/.rels": b"<Relationships/>",
                   "word/document.xml": b"<w:document><w:body><w:p>Invoice</w:p></w:body></w:document>"})


def crc_patched(archive, name):
    """`archive` with the CRC of `name` wrong in the central directory only
    (its local header, or data descriptor, keeps the right one)."""
    data = bytearray(archive)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46:at + 46 + length]) == name.encode():
            data[at + 16:at + 20] = bytes(b ^ 0xFF for b in data[at + 16:at + 20])
            return bytes(data)
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"no central directory entry for {name}")


INNER = zip_of({"readme.txt": TXT, "setup.exe": MZ})  # what the outer archives hide


def inner_in(t, kind):
    """An archive of readme.txt and setup.exe, of `kind`."""
    files = {"readme.txt": TXT, "setup.exe": MZ}
    return {"tar": lambda: tar_of(t, files), "tgz": lambda: tar_of(t, files, "-z"),
            "tbz": lambda: tar_of(t, files, "-j"), "txz": lambda: tar_of(t, files, "-J"),
            "tzst": lambda: tar_of(t, files, "--zstd"), "7z": lambda: seven_of(t, files),
            "rar": lambda: rar_of(files), "cab": lambda: cabinet_of(files)}[kind]()


def outer_zip(name, inner, **kw):
    return zip_of({"readme.txt": TXT, "report.pdf": PDF, name: inner}, **kw), "bundle.zip"


def outer_tar(t, options, attached):
    return tar_of(t, {"readme.txt": TXT, "inner.zip": INNER, "photo.jpg": PHOTO}, *options), attached


# The executable is in inner.zip (or the archive the case names), which is in
# the attached archive. (case: tmp_path -> (attached archive, its file name))
NESTED_EXE = {
    # Each container postern opens, holding inner.zip.
    "zip-stored": lambda t: outer_zip("inner.zip", INNER, method=zipfile.ZIP_STORED),
    "zip-deflated": lambda t: outer_zip("inner.zip", INNER),
    "zip-descriptor-stored": lambda t: outer_zip("inner.zip", INNER, method=zipfile.ZIP_STORED, stream=True),
    "zip-descriptor-deflated": lambda t: outer_zip("inner.zip", INNER, stream=True),
    "zip-by-7zip": lambda t: (seven_of(t, {"readme.txt": TXT, "inner.zip": INNER}, "-tzip"), "bundle.zip"),
    "zip-behind-stub": lambda t: outer_zip("inner.zip", INNER, stub=STUB),
    "zip-behind-stub-offsets-unadjusted": lambda t: (STUB + outer_zip("inner.zip", INNER)[0], "bundle.zip"),
    "tar": lambda t: outer_tar(t, (), "bundle.tar"),
    "tgz": lambda t: outer_tar(t, ("-z",), "bundle.tgz"),
    "tar.bz2": lambda t: outer_tar(t, ("-j",), "bundle.tar.bz2"),
    "tar.xz": lambda t: outer_tar(t, ("-J",), "bundle.tar.xz"),
    "tar.zst": lambda t: outer_tar(t, ("--zstd",), "bundle.tar.zst"),
    "zip.gz-by-its-name": lambda t: (gzip_file(INNER), "inner.zip.gz"),
    "gz-by-its-header": lambda t: (gzip_file(INNER, "inner.zip"), "bundle.gz"),
    "zip.bz2": lambda t: (bz2.compress(INNER), "inner.zip.bz2"),
    "zip.xz": lambda t: (lzma.compress(INNER), "inner.zip.xz"),
    # Compressible: zstd keeps a short incompressible input as it is, end record and all.
    "zip.zst": lambda t: (zstd_of(zip_of({"readme.txt": TXT * 20, "setup.exe": MZ}, zipfile.ZIP_STORED)),
                          "inner.zip.zst"),
    # Each archive postern opens, and each way to name one, inside a ZIP.
    "inner-upper-case": lambda t: outer_zip("INNER.ZIP", INNER),
    "inner-trailing-dot": lambda t: outer_zip("inner.zip.", INNER),
    "inner-trailing-dot-and-space": lambda t: outer_zip("inner.Zip. ", INNER),
    "inner-in-a-folder": lambda t: outer_zip("docs/2024/inner.zip", INNER),
    "inner-behind-stub": lambda t: outer_zip("inner.zip", zip_of({"setup.exe": MZ}, stub=STUB)),
    "inner-descriptor": lambda t: outer_zip("inner.zip", zip_of({"readme.txt": TXT, "setup.exe": MZ}, stream=True)),
    "inner-entries-encrypted": lambda t: outer_zip("inner.zip", seven_of(t, {"setup.exe": MZ}, "-tzip", "-psecret")),
    "inner-tar": lambda t: outer_zip("inner.tar", inner_in(t, "tar")),
    "inner-tgz": lambda t: outer_zip("inner.tgz", inner_in(t, "tgz")),
    "inner-tar.gz": lambda t: outer_zip("inner.tar.gz", inner_in(t, "tgz")),
    "inner-tbz2": lambda t: outer_zip("inner.tbz2", inner_in(t, "tbz")),
    "inner-txz": lambda t: outer_zip("inner.txz", inner_in(t, "txz")),
    "inner-tar.zst": lambda t: outer_zip("inner.tar.zst", inner_in(t, "tzst")),
    "inner-gz-by-its-name": lambda t: outer_zip("setup.exe.gz", gzip_file(MZ)),
    "inner-gz-by-its-header": lambda t: outer_zip("payload.gz", gzip_file(MZ, "setup.exe")),
    "inner-7z": lambda t: outer_zip("inner.7z", inner_in(t, "7z")),
    "inner-rar": lambda t: outer_zip("inner.rar", inner_in(t, "rar")),
    "inner-cab": lambda t: outer_zip("inner.cab", inner_in(t, "cab")),
    "inner-tgz-named-zip": lambda t: outer_zip("inner.zip", inner_in(t, "tgz")),
    # Inside a tar archive and inside a file compressed whole.
    "tgz-inner-long-pax-path": lambda t: (tar_of(t, {"a" * 120 + "/" + "b" * 60 + "/inner.zip": INNER}, "-z"),
                                          "bundle.tgz"),
    "tgz-inner-7z": lambda t: (tar_of(t, {"readme.txt": TXT, "inner.7z": inner_in(t, "7z")}, "-z"), "bundle.tgz"),
    "tar.xz-inner-tgz": lambda t: (tar_of(t, {"inner.tgz": inner_in(t, "tgz")}, "-J"), "bundle.tar.xz"),
    "tgz.gz-by-its-name": lambda t: (gzip_file(inner_in(t, "tgz")), "inner.tgz.gz"),
}

# An archive in an archive postern does not open; 7-Zip opens it (with the
# password), and finds setup.exe.
UNOPENED = {
    "zip-in-7z": lambda t: (seven_of(t, {"readme.txt": TXT, "inner.zip": INNER}), "bundle.7z"),
    "zip-in-7z-stored": lambda t: (seven_of(t, {"inner.zip": INNER, "photo.jpg": PHOTO}, "-mx=0"), "bundle.7z"),
    "tgz-in-7z": lambda t: (seven_of(t, {"inner.tgz": inner_in(t, "tgz")}), "bundle.7z"),
    "zip-in-rar": lambda t: (rar_of({"readme.txt": TXT, "inner.zip": INNER, "photo.jpg": PHOTO}), "bundle.rar"),
    "zip-in-cab": lambda t: (cabinet_of({"readme.txt": TXT, "inner.zip": INNER, "photo.jpg": PHOTO}), "bundle.cab"),
    "zip-member-zipcrypto": lambda t: (seven_of(t, {"readme.txt": TXT, "inner.zip": INNER}, "-tzip", "-psecret"),
                                       "bundle.zip"),
    "zip-member-aes": lambda t: (seven_of(t, {"readme.txt": TXT, "inner.zip": INNER}, "-tzip", "-psecret",
                                          "-mem=AES256"), "bundle.zip"),
    "zip-member-bzip2": lambda t: outer_zip("inner.zip", (INNER, zipfile.ZIP_BZIP2)),
    "zip-member-lzma": lambda t: outer_zip("inner.zip", (INNER, zipfile.ZIP_LZMA)),
    "zip-member-deflate64": lambda t: (seven_of(t, {"readme.txt": TXT, "inner.zip": INNER}, "-tzip", "-mm=Deflate64"),
                                       "bundle.zip"),
    "zip-in-7z-in-zip": lambda t: outer_zip("docs.zip", zip_of({"deep.7z": seven_of(t, {"inner.zip": INNER})})),
    "zip-in-rar-in-tgz": lambda t: (tar_of(t, {"old.rar": rar_of({"inner.zip": INNER, "photo.jpg": PHOTO})}, "-z"),
                                    "bundle.tgz"),
}

# What the case names about the inner archive's ZIP entry in the attached one.
ZIP_ENTRY = {
    "zip-stored": lambda i: i.compress_type == zipfile.ZIP_STORED and not i.flag_bits & 0x8,
    "zip-deflated": lambda i: i.compress_type == zipfile.ZIP_DEFLATED and not i.flag_bits & 0x8,
    "zip-descriptor-stored": lambda i: i.compress_type == zipfile.ZIP_STORED and i.flag_bits & 0x8,
    "zip-descriptor-deflated": lambda i: i.compress_type == zipfile.ZIP_DEFLATED and i.flag_bits & 0x8,
    "zip-behind-stub": lambda i: i.header_offset >= len(STUB),
    "zip-member-zipcrypto": lambda i: i.flag_bits & 0x1 and i.compress_type == zipfile.ZIP_DEFLATED,
    "zip-member-aes": lambda i: i.flag_bits & 0x1 and i.compress_type == 99,  # WinZip AES (APPNOTE 7.2)
    "zip-member-bzip2": lambda i: i.compress_type == zipfile.ZIP_BZIP2,
    "zip-member-lzma": lambda i: i.compress_type == zipfile.ZIP_LZMA,
    "zip-member-deflate64": lambda i: i.compress_type == 9,
}

ARCHIVE_NAME = re.compile(r"\.(zip|rar|7z|cab|tar|tgz|taz|gz|gzip|tbz|tbz2|bz2|bz|txz|xz|tzst|zst|zstd)[. ]*$", re.I)
_walks = itertools.count()


def listed(path):
    """The files in the archive at `path`, each with how to extract it (to
    stdout) and whether it is the one file compressed whole: as 7-Zip lists
    them (7zz l -slt), or libarchive (bsdtar -t) for RAR, which Debian's
    7-Zip does not read (it finds a ZIP inside one and lists that)."""
    env = {"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["7zz", "l", "-slt", "-psecret", str(path)], capture_output=True, text=True, timeout=30,
                         env=env)
    if out.returncode == 0 and "----------" in out.stdout and not path.name.endswith(".rar"):
        head, items = out.stdout.split("----------", 1)
        whole = re.findall(r"^Type = (.*)$", head, re.M)[-1] in ("gzip", "bzip2", "xz", "zstd")
        files = []
        for block in items.split("\n\n"):
            fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
            if fields.get("Folder") == "+" or not fields:
                continue
            if "Path" in fields:
                files.append((fields["Path"], ["7zz", "e", "-so", "-psecret", str(path), fields["Path"]], whole))
            else:  # xz and zstd: named by the compressed file's name without its suffix
                stem = re.sub(r"\.t(gz|az|bz2?|xz|zst)$", ".tar", path.name)
                files.append((stem if stem != path.name else path.name.rsplit(".", 1)[0],
                              ["7zz", "e", "-so", str(path)], whole))
        return files
    out = subprocess.run(["bsdtar", "-tf", str(path)], capture_output=True, text=True, timeout=30, env=env)
    if out.returncode != 0:
        return []
    return [(name, ["bsdtar", "-xOf", str(path), name], False) for name in out.stdout.splitlines()
            if not name.endswith("/")]


def seven_zip_finds(tmp_path, data, name, at=()):
    """Every file 7-Zip lists in `data` (a file named `name`), opening each
    file in it named as an archive, or compressed whole, too: paths as
    tuples, outermost first."""
    folder = tmp_path / f"walk{next(_walks)}"
    folder.mkdir()
    path = folder / name.rsplit("/", 1)[-1]
    path.write_bytes(data)
    found = []
    for inner, extract, whole in listed(path):
        found.append(at + (inner,))
        if whole or ARCHIVE_NAME.search(inner):
            content = subprocess.run(extract, capture_output=True, timeout=30).stdout
            found += seven_zip_finds(tmp_path, content, inner, at + (inner,))
    return found


def hidden_depth(found, wanted="setup.exe"):
    """How many archives deep 7-Zip found `wanted` (0: not found)."""
    return max((len(p) for p in found if p[-1].rsplit("/", 1)[-1].lower() == wanted), default=0)


@pytest.mark.parametrize("case", sorted(NESTED_EXE) + sorted(UNOPENED))
def test_builders_hide_the_executable_where_7zip_finds_it(tmp_path, case):
    """Every archive these tests send is a real one: 7-Zip finds setup.exe
    in it, in an archive inside the attached one; a ZIP entry is stored as
    the case says (zipfile)."""
    archive, name = (NESTED_EXE.get(case) or UNOPENED[case])(tmp_path)
    assert hidden_depth(seven_zip_finds(tmp_path, archive, name)) >= 2
    if not name.endswith(".zip"):
        # No inner ZIP's end record where a ZIP reader of the attached archive looks for one.
        assert archive.find(b"PK\x05\x06", max(0, len(archive) - 22 - 65535)) < 0
    if case.startswith("zip-behind-stub"):
        # Where the central directory is, and where the end record says it is.
        directory, end = archive.find(b"PK\x01\x02"), archive.rfind(b"PK\x05\x06")
        said = struct.unpack_from("<I", archive, end + 16)[0]
        assert said == (directory - len(STUB) if case.endswith("unadjusted") else directory)
    if case in ZIP_ENTRY:
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            entry = [i for i in z.infolist() if ARCHIVE_NAME.search(i.filename)]
        assert len(entry) == 1 and ZIP_ENTRY[case](entry[0]), entry


@pytest.mark.parametrize("case", sorted(NESTED_EXE))
def test_executable_in_an_archive_in_an_archive_is_refused(proxy, sink, tmp_path, case):
    archive, name = NESTED_EXE[case](tmp_path)
    head = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{name}"'
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, head)])), 554, "5.7.1", what=case)
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert proxy.wait_for_log("message", result="rejected")
    assert not sink.messages


@pytest.mark.parametrize("case", sorted(UNOPENED))
def test_archive_in_an_archive_postern_does_not_open_is_refused(proxy, sink, tmp_path, case):
    archive, name = UNOPENED[case](tmp_path)
    head = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{name}"'
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, head)])), 554, "5.7.1", what=case)
    assert "Archive inside an archive could not be checked" in r.text, r
    assert not sink.messages


@pytest.mark.parametrize("filename,ext", [("invoice.pdf.exe", "exe"), ("run.js", "js"), ("Setup.SCR", "scr"),
                                          ("tools/update.msi. ", "msi")])
def test_executable_next_to_honest_files_in_an_inner_archive_is_refused(proxy, sink, filename, ext):
    inner = zip_of({"a.pdf": PDF, "b.txt": TXT, filename: MZ, "c.pdf": PDF})
    archive = zip_of({"readme.txt": TXT, "docs.zip": inner, "d.pdf": PDF})
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, 'Content-Type: application/zip; name="a.zip"')])),
                    554, "5.7.1")
    assert f"Executable attachments are not accepted ({ext})" in r.text, r
    assert not sink.messages


def zip_chain(depth, files):
    """`files` in the innermost of `depth` ZIP archives, each in the one
    before: the attached one is level 1, holding level2.zip, ..."""
    archive = zip_of(files)
    for level in range(depth, 1, -1):
        archive = zip_of({"readme.txt": TXT, f"level{level}.zip": archive})
    return archive


def mixed_chain(tmp_path, kinds, files):
    """`files` in the innermost of nested archives of `kinds`, outermost first."""
    pack = {"zip": zip_of, "tgz": lambda m: tar_of(tmp_path, m, "-z"), "tar.xz": lambda m: tar_of(tmp_path, m, "-J"),
            "tar": lambda m: tar_of(tmp_path, {**m, "photo.jpg": PHOTO})}
    archive = pack[kinds[-1]](files)
    for level in range(len(kinds) - 1, 0, -1):
        archive = pack[kinds[level - 1]]({f"level{level + 1}.{kinds[level]}": archive})
    return archive


def chain_part(archive, kind="zip"):
    return seven_part(archive, f'Content-Type: application/octet-stream\nContent-Disposition: attachment; '
                               f'filename="level1.{kind}"')


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_executable_up_to_4_archives_deep_is_refused(proxy, sink, tmp_path, depth):
    archive = zip_chain(depth, {"report.pdf": PDF, "setup.exe": MZ})
    assert hidden_depth(seven_zip_finds(tmp_path, archive, "level1.zip")) == depth
    r = check_reply(send(proxy, multipart([TEXT, chain_part(archive)])), 554, "5.7.1", what=f"depth {depth}")
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert not sink.messages


def test_executable_4_deep_in_tar_and_zip_archives_is_refused(proxy, sink, tmp_path):
    archive = mixed_chain(tmp_path, ["tgz", "zip", "tar.xz", "zip"], {"report.pdf": PDF, "setup.exe": MZ})
    # 7-Zip lists a tgz's tar and a tar.xz's tar as one more archive each.
    assert hidden_depth(seven_zip_finds(tmp_path, archive, "level1.tgz")) == 6
    r = check_reply(send(proxy, multipart([TEXT, chain_part(archive, "tgz")])), 554, "5.7.1")
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert not sink.messages


@pytest.mark.parametrize("kinds", [["zip"] * 5, ["zip"] * 6, ["tgz", "zip", "tar", "zip", "tar.xz"]],
                         ids=["zip-5", "zip-6", "tgz-zip-tar-zip-tar.xz"])
def test_archive_5_deep_is_too_complex(proxy, sink, tmp_path, kinds):
    """However honest its content: postern does not read it."""
    archive = mixed_chain(tmp_path, kinds, {"report.pdf": PDF, "notes.txt": TXT})
    assert hidden_depth(seven_zip_finds(tmp_path, archive, f"level1.{kinds[0]}"), "notes.txt") >= len(kinds)
    r = check_reply(send(proxy, multipart([TEXT, chain_part(archive, kinds[0])])), 554, "5.7.1", what=str(kinds))
    assert "too complex to check" in r.text, r
    assert not sink.messages


def test_honest_archives_4_deep_pass(proxy, sink, tmp_path):
    check_reply(send(proxy, multipart([TEXT, chain_part(zip_chain(4, {"report.pdf": PDF, "notes.txt": TXT}))])), 250)
    archive = mixed_chain(tmp_path, ["tgz", "zip", "tar.xz", "zip"], {"report.pdf": PDF, "notes.txt": TXT})
    check_reply(send(proxy, multipart([TEXT, chain_part(archive, "tgz")])), 250)
    assert len(sink.wait_messages(2)) == 2


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_inner_archive_failing_its_crc_is_too_complex(proxy, sink, method):
    """The central directory says one CRC, the data another: a reader that
    checks shows one thing, one that does not another."""
    archive = crc_patched(zip_of({"readme.txt": TXT, "inner.zip": zip_of({"report.pdf": PDF})}, method), "inner.zip")
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        assert z.testzip() == "inner.zip"
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, 'Content-Type: application/zip; name="a.zip"')])),
                    554, "5.7.1")
    assert "too complex to check" in r.text, r
    assert not sink.messages


def test_bomb_in_an_archive_is_too_complex(proxy, sink):
    """An inner.zip of 80 MiB (zeros, then setup.exe, its directory at the
    end) in 80 KiB of deflate: past what the message may decompress to (64
    MiB for a small one), as for a tar bomb."""
    inner = zip_of({"zeros.bin": bytes(80 << 20), "setup.exe": MZ}, zipfile.ZIP_STORED)
    archive = zip_of({"readme.txt": TXT, "inner.zip": inner})
    assert len(archive) < 256 * 1024
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, 'Content-Type: application/zip; name="a.zip"')])),
                    554, "5.7.1")
    assert "too complex to check" in r.text, r
    assert not sink.messages


# Archives of documents in archives, and archives that hold ZIP archives not
# named as archives. (case: tmp_path -> (attached archive, its file name))
HONEST = {
    "zip-of-zip-of-documents": lambda t: outer_zip("scans.zip", zip_of({"a.pdf": PDF, "b.pdf": PDF, "notes.txt": TXT})),
    "tgz-of-zip": lambda t: (tar_of(t, {"docs.zip": zip_of({"a.txt": TXT, "b.txt": TXT})}, "-z"), "bundle.tgz"),
    "zip-of-docx": lambda t: outer_zip("report.docx", docx()),
    "zip-of-stored-and-deflated-zips": lambda t: (zip_of({"a.zip": (zip_of({"a.pdf": PDF}), zipfile.ZIP_STORED),
                                                          "b.zip": zip_of({"b.pdf": PDF})}), "bundle.zip"),
    "zip.gz-of-documents": lambda t: (gzip_file(zip_of({"a.pdf": PDF, "b.pdf": PDF})), "report.zip.gz"),
    "gz-by-its-header-of-documents": lambda t: (gzip_file(zip_of({"a.pdf": PDF}), "report.zip"), "report.gz"),
    "zip-descriptor-of-zip": lambda t: outer_zip("scans.zip", zip_of({"a.pdf": PDF}), stream=True),
    "zip-behind-stub-of-zip": lambda t: outer_zip("scans.zip", zip_of({"a.pdf": PDF}), stub=STUB),
    "tar.zst-of-tar.xz": lambda t: (tar_of(t, {"data.tar.xz": tar_of(t, {"a.csv": TXT, "b.csv": TXT}, "-J")},
                                           "--zstd"), "data.tar.zst"),
    "zip-of-7z-rar-cab-of-documents": lambda t: (zip_of({"a.7z": seven_of(t, {"a.pdf": PDF}),
                                                         "b.rar": rar_of({"b.pdf": PDF}),
                                                         "c.cab": cabinet_of({"c.pdf": PDF})}), "bundle.zip"),
    "zip-of-zip-with-encrypted-documents": lambda t: outer_zip("scans.zip", seven_of(t, {"a.pdf": PDF}, "-tzip",
                                                                                    "-psecret")),
    "encrypted-zip-of-documents": lambda t: (seven_of(t, {"a.pdf": PDF, "b.pdf": PDF}, "-tzip", "-psecret"),
                                             "bundle.zip"),
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_archives_in_archives_pass(proxy, sink, tmp_path, case):
    archive, name = HONEST[case](tmp_path)
    head = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{name}"'
    check_reply(send(proxy, multipart([TEXT, seven_part(archive, head)])), 250, what=case)
    assert len(sink.wait_messages(1)) == 1


@pytest.mark.parametrize("kind", ["zip", "tgz", "zip.gz"])
def test_rules_see_inner_files_by_their_archive(postern, sink, tmp_path, kind):
    """Each file of an inner archive comes with `archive`, the inner
    archive's name as the outer one lists it; an archive in an archive that
    postern did not open comes with `unopened` (in any order)."""
    inner = zip_of({"a.pdf": PDF, "b.txt": TXT})
    if kind == "zip":
        archive, name = zip_of({"readme.txt": TXT, "docs/inner.zip": inner, "packed.zip": (inner, zipfile.ZIP_BZIP2),
                                "report.docx": docx()}), "bundle.zip"
        expected = ["bundle.zip@", "readme.txt@bundle.zip", "docs_inner.zip@bundle.zip", "a.pdf@docs_inner.zip",
                    "b.txt@docs_inner.zip", "packed.zip@bundle.zip!", "report.docx@bundle.zip"]
    elif kind == "tgz":
        archive, name = tar_of(tmp_path, {"readme.txt": TXT, "docs/inner.zip": inner,
                                          "old.7z": seven_of(tmp_path, {"x.zip": inner})}, "-z"), "bundle.tgz"
        expected = ["bundle.tgz@", "readme.txt@bundle.tgz", "docs_inner.zip@bundle.tgz", "a.pdf@docs_inner.zip",
                    "b.txt@docs_inner.zip", "old.7z@bundle.tgz", "x.zip@old.7z!"]
    else:
        archive, name = gzip_file(inner), "report.zip.gz"
        expected = ["report.zip.gz@", "report.zip@report.zip.gz", "a.pdf@report.zip", "b.txt@report.zip"]
    probe = tmp_path / "probe.lua"
    probe.write_text(PROBE)
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{probe}"]'})
    head = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{name}"'
    r = check_reply(send(p, multipart([TEXT, seven_part(archive, head)])), 550, "5.7.1")
    seen = r.text.split("probe ", 1)[1].split("+")
    assert sorted(seen) == sorted(expected), seen
    assert not sink.messages


def info_zip(tmp_path, *options, pipe=None, sfx=False, inner=True):
    """An archive Info-ZIP's zip writes of a folder of honest files holding
    an inner ZIP unless not `inner` (`pipe`: the octets it archives from
    standard input instead; `sfx`: behind a stub, offsets adjusted with zip
    -A)."""
    members = {"docs/report.pdf": PDF, "docs/notes.txt": TXT}
    if inner:
        members["inner.zip"] = zip_of({"a.txt": TXT, "b.pdf": PDF})
    src = source(tmp_path, members)
    out = tmp_path / "info.zip"
    out.unlink(missing_ok=True)
    if pipe is not None:
        subprocess.run(["zip", "-q", *options, str(out), "-"], input=pipe, check=True, timeout=60)
    else:
        subprocess.run(["zip", "-q", "-r", *options, str(out), "."], cwd=src, check=True, timeout=60,
                       input=b"an archive comment\n" if "-z" in options else None)
    if sfx:
        data = STUB + out.read_bytes()
        out.write_bytes(data)
        subprocess.run(["zip", "-q", "-A", str(out)], check=True, timeout=60)
    return out.read_bytes()


# Archives real writers make, each read by the local headers as well as the
# central directory now: none may be taken for one whose two disagree.
WRITERS = {
    "info-zip": lambda t: info_zip(t),
    "info-zip-stored": lambda t: info_zip(t, "-0"),
    "info-zip-comment": lambda t: info_zip(t, "-z"),
    # Encrypted files are listed by name (an encrypted archive in it is not opened: refused above).
    "info-zip-encrypted": lambda t: info_zip(t, "-P", "secret", inner=False),
    "info-zip-from-a-pipe": lambda t: info_zip(t, pipe=TXT * 100),
    "info-zip-from-a-pipe-zip64": lambda t: info_zip(t, "-fz", pipe=TXT * 100),
    "info-zip-self-extractor": lambda t: info_zip(t, sfx=True),
    "7zip-zip": lambda t: seven_of(t, {"docs/report.pdf": PDF, "inner.zip": zip_of({"a.txt": TXT})}, "-tzip"),
    "bsdtar-zip": lambda t: bsdtar_zip(t),
    "bsdtar-zip-stored": lambda t: bsdtar_zip(t, "--options", "zip:compression=store"),
    "python-zip64": lambda t: python_zip64(),
}


def bsdtar_zip(tmp_path, *options):
    src = source(tmp_path, {"docs/report.pdf": PDF, "inner.zip": zip_of({"a.txt": TXT})})
    return subprocess.run(["bsdtar", "--format", "zip", *options, "-cf", "-", "."], cwd=src, check=True,
                          capture_output=True, timeout=60).stdout


def python_zip64():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("notes.txt", "w", force_zip64=True) as w:
            w.write(TXT)
        with z.open("inner.zip", "w", force_zip64=True) as w:
            w.write(zip_of({"a.txt": TXT}))
    return out.getvalue()


@pytest.mark.parametrize("case", sorted(WRITERS))
def test_honest_zips_from_real_writers_pass(proxy, sink, tmp_path, case):
    archive = WRITERS[case](tmp_path)
    head = 'Content-Type: application/zip; name="documents.zip"'
    check_reply(send(proxy, multipart([TEXT, seven_part(archive, head)])), 250, what=case)
    assert len(sink.wait_messages(1)) == 1
