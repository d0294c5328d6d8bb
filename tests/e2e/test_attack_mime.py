"""Hostile MIME as the rules see it, end to end: a real client through postern
running the shipped 60_attachments.lua and a probe rule, to an aiosmtpd MTA.

Each message hides an executable from the attachments rule with a trick a
mail reader (Thunderbird) sees through, or bloats the structure past the
parser's limits; each must be refused 554 5.7.1 and never relayed. Decoding
bombs end with the configured verdict, and text handed to a rule is always
well-formed UTF-8 (U+FFFD for what does not decode)."""
import base64
import binascii
import gzip
import io
import struct
import subprocess
import zipfile
import zlib
import pathlib

import pytest

from harness import SmtpClient, check_reply

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATTACHMENTS = ROOT / "scripts" / "default" / "60_attachments.lua"

# Rejects messages with an X-Probe field, saying which decoded strings a rule
# got that are not UTF-8 (Lua's utf8.len is strict: no surrogates, nothing
# past U+10FFFF, no overlongs) and what the first file name was.
PROBE = """
postern.rule{ name = "MIME_PROBE", stage = "eom", on_error = "tempfail", fn = function(ctx)
  if not ctx.headers:first("X-Probe") then return end
  local bad = {}
  if not utf8.len(ctx.headers:first("Subject") or "") then bad[#bad + 1] = "subject" end
  for _, p in ipairs(ctx.body:text_parts()) do
    if not utf8.len(p.text) then bad[#bad + 1] = "text" end
  end
  local names = {}
  for _, a in ipairs(ctx.body:attachments()) do
    if not utf8.len(a.filename) then bad[#bad + 1] = "filename" end
    names[#names + 1] = a.filename:gsub("[^%w%.]", "_")
  end
  return postern.reject(550, "5.7.1", "probe " .. (#bad == 0 and "utf8" or table.concat(bad, ",")) ..
                        " names=" .. table.concat(names, "+"))
end }
"""

EXE = "TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
UU = binascii.b2a_uu(base64.b64decode(EXE)[:45]).decode()  # one uuencoded line (its first 45 octets), with its LF


def tnef_attr(level, ident, data):
    return bytes([level]) + struct.pack("<II", ident, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def tnef_unicode_prop(prop_id, text):
    value = (text + "\0").encode("utf-16-le")
    return struct.pack("<III", prop_id << 16 | 0x001F, 1, len(value)) + value + b"\0" * (-len(value) % 4)


def winmail(title, long_name, embedded=b""):
    """A winmail.dat as Outlook writes it: one attachment, its short title and
    its long file name (PidTagAttachLongFilename); `embedded` a TNEF stream
    attached as a message (PidTagAttachDataObject)."""
    props = [tnef_unicode_prop(0x3707, long_name)]
    if embedded:
        value = b"I" * 16 + embedded
        props.append(struct.pack("<III", 0x3701 << 16 | 0x000D, 1, len(value)) + value + b"\0" * (-len(value) % 4))
    blob = struct.pack("<I", len(props)) + b"".join(props)
    return (struct.pack("<IH", 0x223E9F78, 1) + tnef_attr(1, 0x00089006, b"\1\0\0\0") +
            tnef_attr(2, 0x00069002, bytes(14)) + tnef_attr(2, 0x00018010, title.encode() + b"\0") +
            tnef_attr(2, 0x0006800F, b"MZ" * 500) + tnef_attr(2, 0x00069005, blob))


def zip_bytes(names):
    """A ZIP archive (Python's zipfile, deflated) of small files with `names`."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.writestr(name, b"MZ" + name.encode())
    return out.getvalue()


def vint(n):
    """A RAR 5.0 variable-length integer: 7 bits an octet, low first."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def rar5_block(htype, body, data=b""):
    """A RAR 5.0 block: CRC32, header size, type, flags, [data size], body; then its data."""
    fields = vint(htype) + vint(0x2 if data else 0) + (vint(len(data)) if data else b"") + body
    head = vint(len(fields)) + fields
    return struct.pack("<I", zlib.crc32(head)) + head + data


def rar5_bytes(names, encrypted=False, prefix=b""):
    """A RAR 5.0 archive of small stored files with `names` (checked against
    libarchive's bsdtar -t); `encrypted`: its headers encrypted (rar -hp)."""
    out = prefix + b"Rar!\x1a\x07\x01\x00"
    if encrypted:
        out += rar5_block(4, vint(0) + vint(0) + bytes([15]) + b"S" * 16)
    out += rar5_block(1, vint(0))
    for name in names:
        data, raw = b"MZ" + name.encode(), name.encode()
        out += rar5_block(2, vint(0x4) + vint(len(data)) + vint(0x20) + struct.pack("<I", zlib.crc32(data)) +
                          vint(0) + vint(0) + vint(len(raw)) + raw, data)
    return out + rar5_block(5, vint(0))


def rar4_block(htype, flags, body, data=b""):
    head = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head + data


def rar4_bytes(names, encrypted=False, unicode=None):
    """A RAR 4.x archive of small stored files with `names` (code page 437),
    `unicode` mapping a name to the Unicode name stored beside it, which
    WinRAR shows (checked against bsdtar -t); `encrypted`: its headers
    encrypted (rar -hp)."""
    out = b"Rar!\x1a\x07\x00" + rar4_block(0x73, 0x80 if encrypted else 0, bytes(6))
    for name in names:
        data, flags, raw = b"MZ" + name.encode(), 0x8000, name.encode("cp437")
        if unicode and name in unicode:
            # The OEM name, NUL, the high octet 0, then per four UTF-16 units a
            # flag octet (2: a whole unit follows) and the units.
            units = [unicode[name].encode("utf-16-le")[i:i + 2] for i in range(0, 2 * len(unicode[name]), 2)]
            raw += b"\0\0" + b"".join(bytes([sum(2 << (6 - 2 * j) for j in range(len(units[i:i + 4])))]) +
                                      b"".join(units[i:i + 4]) for i in range(0, len(units), 4))
            flags |= 0x200
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 2, zlib.crc32(data), 0, 20, 0x30, len(raw), 0x20) + raw
        out += rar4_block(0x74, flags, body, data)
    return out + rar4_block(0x7B, 0x4000, b"")


@pytest.mark.parametrize("archive,names", [
    (lambda: rar5_bytes(["invoice/readme.txt", "invoice/invoice.pdf.exe", "résumé.pdf"]),
     ["invoice/readme.txt", "invoice/invoice.pdf.exe", "résumé.pdf"]),
    (lambda: rar4_bytes(["readme.txt", "INVOICE.EXE"]), ["readme.txt", "INVOICE.EXE"]),
    (lambda: rar4_bytes(["invoice.pdf"], unicode={"invoice.pdf": "счёт.exe"}), ["счёт.exe"]),
], ids=["rar5", "rar4", "rar4-unicode"])
def test_rar_builders_make_archives_a_real_reader_lists(tmp_path, archive, names):
    """The RAR archives these tests send are real ones: libarchive's bsdtar
    (what Windows 11's Explorer reads RAR with) lists the intended names."""
    path = tmp_path / "a.rar"
    path.write_bytes(archive())
    out = subprocess.run(["bsdtar", "-tf", str(path)], capture_output=True, text=True, timeout=30,
                         env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == names


def rar_part(archive, head='Content-Type: application/vnd.rar; name="invoice.rar"'):
    return f"{head}\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(archive).decode()


def zip_part(names, head='Content-Type: application/zip; name="invoice.zip"'):
    return f"{head}\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(zip_bytes(names)).decode()


def tnef_part(stream, head='Content-Type: application/ms-tnef; name="winmail.dat"'):
    return f"{head}\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(stream).decode()


@pytest.fixture
def proxy(postern, sink, tmp_path):
    probe = tmp_path / "probe.lua"
    probe.write_text(PROBE)
    return postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}", "{probe}"]'})


def multipart(parts, boundary="XYZ", head="", close=True):
    """A multipart/mixed message with `parts` (each its header and body, LF ends)."""
    text = ("From: a@example.org\nTo: bob@example.com\nSubject: invoice\nMessage-ID: <m@example.org>\n" + head +
            f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{boundary}"\n\n')
    for part in parts:
        text += f"--{boundary}\n{part}\n"
    if close:
        text += f"--{boundary}--\n"
    return text.replace("\n", "\r\n").encode("latin-1")


TEXT = "Content-Type: text/plain\n\nPlease find the invoice attached."


def folded(text, width=900):
    """`text` folded (RFC 5322 §2.2.3) into lines within the 1000-octet limit."""
    return "\n ".join(text[i:i + width] for i in range(0, len(text), width))


def exe_part(header):
    return f"{header}\nContent-Transfer-Encoding: base64\n\n{EXE}"


def nested(depth, inner):
    """`inner` (a part) inside `depth` nested multipart/mixed parts."""
    for level in range(depth):
        inner = f'Content-Type: multipart/mixed; boundary="n{level}"\n\n--n{level}\n{inner}\n--n{level}--'
    return inner


# Each hides an executable from a naive reader of the MIME structure; a mail
# reader shows the recipient an .exe file. (name, message, reply text part)
HIDDEN = {
    "rfc2231-percent": multipart([TEXT, exe_part("Content-Disposition: attachment; filename*=UTF-8''evil%2Eexe")]),
    "rfc2231-continuations": multipart([TEXT, exe_part(
        "Content-Disposition: attachment; filename*0=\"in\"; filename*1*=voice%2Epdf%2E; filename*2=EXE")]),
    "rfc2231-beats-plain": multipart([TEXT, exe_part(
        "Content-Disposition: attachment; filename=\"invoice.pdf\"; filename*=utf-8''invoice.pdf.exe")]),
    "name-after-bare-parameter": multipart([TEXT, exe_part(
        "Content-Type: application/octet-stream; x-mac-creator; name=\"setup.exe\"")]),
    "comment-in-type": multipart([TEXT, exe_part(
        "Content-Type: application/octet-stream (\"; x=\") ; name=\"setup.exe\"")]),
    "encoded-word-name": multipart([TEXT, exe_part(
        "Content-Type: application/octet-stream; name=\"=?utf-8?B?c2V0dXAuZXhl?=\"")]),
    "nul-in-name": multipart([TEXT, exe_part("Content-Disposition: attachment; filename*=utf-8''setup.exe%00.pdf")]),
    "name-differs-from-filename": multipart([TEXT, exe_part("Content-Type: application/octet-stream; name=\"invoice.exe\"\n"
                                                             "Content-Disposition: attachment; filename=\"invoice.pdf\"")]),
    "rfc2231-hides-plain": multipart([TEXT, exe_part(
        "Content-Disposition: attachment; filename*=utf-8''invoice.pdf; filename=\"invoice.exe\"")]),
    "filename-twice": multipart([TEXT, exe_part("Content-Disposition: attachment; filename=a.pdf; filename=a.exe")]),
    "trailing-dots-upper": multipart([TEXT, exe_part("Content-Disposition: attachment; filename=\"SETUP.ExE. . \"")]),
    "fake-close-delimiter": multipart(["Content-Type: text/plain\n\nsee below\n--XYZ--not the end",
                                       exe_part("Content-Disposition: attachment; filename=setup.exe")]),
    "indented-close-delimiter": multipart(["Content-Type: text/plain\n\n --XYZ--",
                                           exe_part("Content-Disposition: attachment; filename=setup.exe")]),
    "prefix-boundaries": multipart([nested(1, exe_part("Content-Disposition: attachment; filename=a.exe"))
                                    .replace('"n0"', '"XYZa"').replace("--n0", "--XYZa")], boundary="XYZ"),
    "no-close-delimiter": multipart([TEXT, exe_part("Content-Disposition: attachment; filename=setup.exe")],
                                    close=False),
    "obsolete-folding-bare-lf": multipart([TEXT, exe_part("Content-Disposition: attachment;\n\t\n filename=\n setup.exe")]),
    "5000-fields-first": multipart([TEXT, exe_part("".join(f"X-F{i}: x\n" for i in range(5000)) +
                                                   "Content-Disposition: attachment; filename=setup.exe")]),
    "forwarded-message": multipart([TEXT, "Content-Type: message/rfc822\n\nSubject: fwd\n"
                                    "Content-Type: multipart/mixed; boundary=in\n\n--in\n" +
                                    exe_part("Content-Disposition: attachment; filename=setup.exe") + "\n--in--"]),
    "forwarded-message-base64": multipart([TEXT, "Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n" +
                                           base64.encodebytes(b"Subject: fwd\r\nContent-Disposition: attachment; "
                                                              b"filename=setup.exe\r\n\r\nMZ\r\n").decode()]),
    # Files embedded in a text part's text, which Thunderbird (untyped text)
    # and Roundcube (any text/plain, anywhere in a line) list as attachments.
    "uuencode-untyped": ("From: a@example.org\nTo: bob@example.com\nSubject: invoice\n\nInvoice attached.\n\n"
                         "begin 644 invoice.exe\n" + UU + "`\nend\n").replace("\n", "\r\n").encode(),
    "uuencode-mid-line": multipart(["Content-Type: text/plain\n\nthe file: begin 0755 setup.exe\n" + UU + "`\nend"]),
    "uuencode-in-base64-text": multipart(["Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n" +
                                          base64.encodebytes(b"Hi\r\nbegin 644 setup.exe\r\n" + UU.encode() +
                                                             b"`\r\nend\r\n").decode()]),
    "uuencode-in-quoted-printable": multipart(["Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable"
                                              "\n\n=62egin 644 set=\nup.exe\n" + UU]),
    "yenc": multipart([TEXT, "Content-Type: text/plain; charset=us-ascii\n\n=ybegin line=128 size=2 name=setup.exe"
                             "\nMZ\n=yend size=2"]),
    # winmail.dat, whose files Outlook (Exchange's client) and Roundcube show:
    # a harmless title over the long name, a part typed only by its name, a
    # message embedded in the attachment.
    "tnef-long-name": multipart([TEXT, tnef_part(winmail("INVOICE.PDF", "invoice.pdf.exe"))]),
    "tnef-by-name": multipart([TEXT, tnef_part(winmail("setup.exe", "setup.exe"),
                                               "Content-Type: application/octet-stream\n"
                                               "Content-Disposition: attachment; filename=winmail.dat")]),
    # An executable in a ZIP archive, which Windows Explorer opens and runs
    # from; the archive typed only by its name.
    "zip": multipart([TEXT, zip_part(["invoice/readme.txt", "invoice/invoice.pdf.exe"])]),
    "zip-by-name": multipart([TEXT, zip_part(["setup.exe"], "Content-Type: application/octet-stream\n"
                                                             "Content-Disposition: attachment; filename=\"INVOICE.ZIP. \"")]),
    "tnef-embedded-message": multipart([TEXT, tnef_part(winmail("fwd.msg", "fwd.msg", winmail("a.txt", "setup.exe")))]),
    # RAR, which WinRAR (and Explorer since Windows 11 23H2) opens: both
    # formats, the Unicode name WinRAR shows over an innocent OEM one, an
    # archive behind a self-extractor's stub, typed or named only, and
    # archives whose name says the other format (archivers go by content).
    "rar5": multipart([TEXT, rar_part(rar5_bytes(["invoice/readme.txt", "invoice/invoice.pdf.exe"]))]),
    "rar4": multipart([TEXT, rar_part(rar4_bytes(["readme.txt", "INVOICE.EXE"]))]),
    "rar4-unicode-name": multipart([TEXT, rar_part(rar4_bytes(["invoice.pdf"], unicode={"invoice.pdf": "счёт.exe"}))]),
    "rar5-after-stub": multipart([TEXT, rar_part(rar5_bytes(["setup.exe"], prefix=b"MZ" + bytes(70000)))]),
    "rar-by-name": multipart([TEXT, rar_part(rar5_bytes(["setup.exe"]), "Content-Type: application/octet-stream\n"
                                             "Content-Disposition: attachment; filename=\"scan.RAR.\"")]),
    "rar-by-type": multipart([TEXT, rar_part(rar4_bytes(["setup.exe"]), "Content-Type: application/x-rar-compressed")]),
    "zip-named-rar": multipart([TEXT, rar_part(zip_bytes(["setup.exe"]))]),
    "rar-named-zip": multipart([TEXT, rar_part(rar5_bytes(["setup.exe"]), 'Content-Type: application/zip; name="a.zip"')]),
}

# Past the parser's limits, or read differently by different readers: the
# rule cannot list every attachment, so it refuses the message as unchecked.
TOO_COMPLEX = {
    "1001-parts": multipart([TEXT] * 1001 + [exe_part("Content-Disposition: attachment; filename=setup.exe")]),
    "10000-boundaries": multipart([""] * 10000),
    "nested-17": multipart([nested(17, exe_part("Content-Disposition: attachment; filename=setup.exe"))]),
    "two-dispositions": multipart([TEXT, exe_part("Content-Disposition: inline; filename=a.txt\n"
                                                  "Content-Disposition: attachment; filename=setup.exe")]),
    "two-types": multipart([TEXT, exe_part("Content-Type: text/plain\n"
                                           "Content-Type: application/x-msdownload; name=setup.exe")]),
    "1mb-boundary": multipart([TEXT, folded('Content-Type: multipart/mixed; boundary="' + "b" * (1 << 20) + '"') +
                               "\n\nx"]),
    "1mb-encoded-name": multipart([TEXT, exe_part(folded('Content-Disposition: attachment; filename="=?utf-8?b?' +
                                                         "QUFB" * (1 << 18) + '?="'))]),
    "zip-directory-past-1mb": multipart([TEXT, zip_part([f"{i:06}-" + "x" * 200 + ".txt" for i in range(5000)])]),
    "tnef-cut-short": multipart([TEXT, tnef_part(winmail("a.txt", "setup.exe")[:-30])]),
    # File names only the password shows (rar -hp), and an archive cut inside a header.
    "rar5-encrypted-names": multipart([TEXT, rar_part(rar5_bytes(["setup.exe"], encrypted=True))]),
    "rar4-encrypted-names": multipart([TEXT, rar_part(rar4_bytes(["setup.exe"], encrypted=True))]),
    "rar-cut-short": multipart([TEXT, rar_part(rar5_bytes(["a.txt", "b.txt"])[:60])]),
}


def send(p, content):
    with SmtpClient(p.port) as c:
        c.ehlo()
        return c.send_message("a@example.org", ["bob@example.com"], content)


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_hidden_executable_is_refused(proxy, sink, case):
    r = check_reply(send(proxy, HIDDEN[case]), 554, "5.7.1", what=case)
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert proxy.wait_for_log("message", result="rejected")
    assert not sink.messages


@pytest.mark.parametrize("case", sorted(TOO_COMPLEX))
def test_structure_past_limits_is_refused(proxy, sink, case):
    r = check_reply(send(proxy, TOO_COMPLEX[case]), 554, "5.7.1", what=case)
    assert "too complex to check" in r.text, r
    assert proxy.wait_for_log("message", result="rejected")
    assert not sink.messages


def test_honest_attachments_pass(proxy, sink):
    content = multipart([TEXT, exe_part("Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"),
                         exe_part('Content-Type: application/pdf; name="--XYZ.pdf"')])
    check_reply(send(proxy, content), 250)
    assert len(sink.wait_messages(1)) == 1
    # Text that only talks about uuencode, and a uuencoded file that is no executable.
    content = multipart(["Content-Type: text/plain\n\nTo begin 64 bit builds, run begin.exe.\nbegin 644 notes.txt\n" +
                         UU + "`\nend"])
    check_reply(send(proxy, content), 250)
    assert len(sink.wait_messages(2)) == 2
    # An archive of 1500 photos (no 1000 parts), and a winmail.dat with a document in it.
    check_reply(send(proxy, multipart([TEXT, zip_part([f"IMG_{i}.JPG" for i in range(1500)])])), 250)
    assert len(sink.wait_messages(3)) == 3
    check_reply(send(proxy, multipart([TEXT, tnef_part(winmail("REPORT.PDF", "report.pdf"))])), 250)
    assert len(sink.wait_messages(4)) == 4
    # RAR archives of documents in both formats, and a file that only looks like one.
    check_reply(send(proxy, multipart([TEXT, rar_part(rar5_bytes([f"IMG_{i}.JPG" for i in range(300)]))])), 250)
    check_reply(send(proxy, multipart([TEXT, rar_part(rar4_bytes(["report.pdf"], unicode={"report.pdf": "отчёт.pdf"}))])), 250)
    check_reply(send(proxy, multipart([TEXT, rar_part(b"Rar! is how the notes start; setup.exe is mentioned.")])), 250)
    assert len(sink.wait_messages(7)) == 7


def seven_zip(tmp_path, names, *options, tool="7zz"):
    """A 7z archive of files with these names (each holding a line of text),
    made by a real archiver: 7-Zip's 7zz (its header LZMA-packed, as 7-Zip
    writes it by default, unless `options` say otherwise) or libarchive's
    bsdtar (a plain header)."""
    src = tmp_path / "src"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("a line of text\n" * 20)
    out = tmp_path / "a.7z"
    out.unlink(missing_ok=True)
    cmd = ([tool, "a", "-bd", "-y", *options, str(out), *names] if tool == "7zz"
           else ["bsdtar", "-cf", str(out), "--format", "7zip", *options, *names])
    subprocess.run(cmd, cwd=src, check=True, capture_output=True, timeout=60)
    return out.read_bytes()


def seven_part(archive, head='Content-Type: application/x-7z-compressed; name="invoice.7z"'):
    return f"{head}\nContent-Transfer-Encoding: base64\n\n" + base64.encodebytes(archive).decode()


# 7z, which 7-Zip (and Explorer since Windows 11 23H2) opens: as 7-Zip packs
# its header (LZMA) and with the header plain (-mhc=off, and bsdtar's),
# content stored or compressed with PPMd, content encrypted with the names
# left readable (-p without -mhe), named or typed only, and named as another
# format (archivers go by content).
SEVEN_HIDDEN = {
    "7z": (["invoice/readme.txt", "invoice/invoice.pdf.exe"], (), None),
    "7z-header-plain": (["readme.txt", "SETUP.EXE"], ("-mhc=off",), None),
    "7z-stored": (["readme.txt", "setup.exe"], ("-mx=0",), None),
    "7z-ppmd": (["readme.txt", "setup.exe"], ("-m0=PPMd",), None),
    "7z-content-encrypted": (["readme.txt", "setup.exe"], ("-psecret",), None),
    "7z-bsdtar": (["readme.txt", "setup.exe"], (), "bsdtar"),
    "7z-by-name": (["setup.exe"], (), 'Content-Type: application/octet-stream\n'
                   'Content-Disposition: attachment; filename="scan.7Z. "'),
    "7z-named-zip": (["setup.exe"], (), 'Content-Type: application/zip; name="scan.zip"'),
}


@pytest.mark.parametrize("case", sorted(SEVEN_HIDDEN))
def test_executable_in_7z_is_refused(proxy, sink, tmp_path, case):
    names, options, how = SEVEN_HIDDEN[case]
    archive = seven_zip(tmp_path, names, *options, tool="bsdtar" if how == "bsdtar" else "7zz")
    part = seven_part(archive) if how in (None, "bsdtar") else seven_part(archive, how)
    r = check_reply(send(proxy, multipart([TEXT, part])), 554, "5.7.1", what=case)
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert not sink.messages


def test_7z_whose_names_cannot_be_read_is_refused(proxy, sink, tmp_path):
    """Names only the password shows (7-Zip's -mhe=on), and an archive cut
    short: either could hide an executable."""
    hidden = seven_zip(tmp_path, ["setup.exe"], "-psecret", "-mhe=on")
    (tmp_path / "h.7z").write_bytes(hidden)
    listing = [subprocess.run(["7zz", "l", password, str(tmp_path / "h.7z")], capture_output=True, text=True)
               for password in ("-pwrong", "-psecret")]
    assert listing[0].returncode != 0 and "setup.exe" not in listing[0].stdout  # the names need the password
    assert listing[1].returncode == 0 and "setup.exe" in listing[1].stdout
    for archive in (hidden, seven_zip(tmp_path, ["a.txt", "b.txt"])[:-10]):
        r = check_reply(send(proxy, multipart([TEXT, seven_part(archive)])), 554, "5.7.1")
        assert "too complex to check" in r.text, r
    assert not sink.messages


def test_honest_7z_archives_pass(proxy, sink, tmp_path):
    check_reply(send(proxy, multipart([TEXT, seven_part(seven_zip(tmp_path, [f"IMG_{i}.JPG" for i in range(300)]))])), 250)
    check_reply(send(proxy, multipart([TEXT, seven_part(seven_zip(tmp_path, ["report.pdf", "отчёт.pdf"], "-psecret"))])),
                250)
    check_reply(send(proxy, multipart([TEXT, seven_part(b"7z\xbc\xaf\x27\x1c is how the notes start; setup.exe.")])), 250)
    assert len(sink.wait_messages(3)) == 3


@pytest.mark.parametrize("tool,options", [("7zz", ()), ("7zz", ("-mhc=off",)), ("bsdtar", ())])
def test_7z_names_are_what_7zip_lists(postern, sink, tmp_path, tool, options):
    """The names rules see are the names 7-Zip lists (7zz l -slt), in order,
    non-ASCII names as UTF-8."""
    names = ["docs/résumé.pdf", "docs/счёт.txt", "b.txt"]
    archive = seven_zip(tmp_path, names, *options, tool=tool)
    (tmp_path / "l.7z").write_bytes(archive)
    out = subprocess.run(["7zz", "l", "-slt", str(tmp_path / "l.7z")], capture_output=True, text=True, check=True,
                         env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout
    listed = [line[len("Path = "):] for line in out.split("----------", 1)[1].splitlines() if line.startswith("Path = ")]
    probe = tmp_path / "probe.lua"
    probe.write_text(PROBE)
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{probe}"]'})
    r = check_reply(send(p, multipart([TEXT, seven_part(archive)], head="X-Probe: 1\n")), 550, "5.7.1")
    seen = r.text.split("names=", 1)[1].split("+")
    # The probe writes each octet that is no ASCII letter, digit or dot as "_".
    octets = ["".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 46) else "_" for b in n.encode())
              for n in listed]
    assert seen[1:] == octets, (seen, listed)
    assert sorted(listed) == sorted(names)


def tar_archive(tmp_path, names, *options, fmt="pax", sizes=None):
    """A tar archive made by libarchive's bsdtar (`options`: -z, -j, -J,
    --zstd compress it) of files with these names, each a line of text or
    `sizes[name]` zero octets."""
    src = tmp_path / "tsrc"
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(bytes((sizes or {}).get(name, 0)) or b"a line of text\n")
    out = tmp_path / "a.tar"
    subprocess.run(["bsdtar", "-cf", str(out), "--format", fmt, *options, *names], cwd=src, check=True,
                   capture_output=True, timeout=120)
    return out.read_bytes()


def gzip_file(data, name=None):
    """`data` gzip-compressed, with `name` in its header (gzip -N)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=out, mtime=0) as f:
        f.write(data)
    return out.getvalue()


LONG = "invoice-" + "x" * 120 + "/payment-details-for-the-quarter-ending-in-december/scan.pdf.exe"

# tar archives, plain and compressed, and files compressed whole, which
# 7-Zip and (since Windows 11 23H2) Explorer open: every header libarchive
# names a file by (ustar with its prefix, GNU long names, pax paths), each
# compression, a lone compressed executable by its own name or by the name
# in its gzip header, typed or named only, and named as another format.
TAR_HIDDEN = {
    "tar-pax-long-path": lambda t: (tar_archive(t, ["readme.txt", LONG]), "invoice.tar"),
    "tar-gnu-long-name": lambda t: (tar_archive(t, ["readme.txt", LONG], fmt="gnutar"), "invoice.tar"),
    "tar-ustar-prefix": lambda t: (tar_archive(t, ["readme.txt", "a" * 90 + "/setup.exe"], fmt="ustar"), "invoice.tar"),
    "tar-gz": lambda t: (tar_archive(t, ["readme.txt", "invoice/setup.exe"], "-z"), "invoice.tgz"),
    "tar-bz2": lambda t: (tar_archive(t, ["readme.txt", "setup.exe"], "-j"), "invoice.tar.bz2"),
    "tar-xz": lambda t: (tar_archive(t, ["readme.txt", "setup.exe"], "-J"), "invoice.tar.xz"),
    "tar-zst": lambda t: (tar_archive(t, ["readme.txt", "setup.exe"], "--zstd"), "invoice.tar.zst"),
    "gz-by-its-name": lambda t: (gzip_file(b"MZ" + bytes(5000)), "setup.exe.gz"),
    "gz-by-its-header": lambda t: (gzip_file(b"MZ" + bytes(5000), "setup.exe"), "invoice.gz"),
    "tgz-named-zip": lambda t: (tar_archive(t, ["setup.exe"], "-z"), "invoice.zip"),
}


@pytest.mark.parametrize("case", sorted(TAR_HIDDEN))
def test_executable_in_tar_or_compressed_file_is_refused(proxy, sink, tmp_path, case):
    archive, name = TAR_HIDDEN[case](tmp_path)
    head = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{name}"'
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, head)])), 554, "5.7.1", what=case)
    assert "Executable attachments are not accepted (exe)" in r.text, r
    assert not sink.messages


def test_executable_in_a_tgz_typed_only_is_refused(proxy, sink, tmp_path):
    archive = tar_archive(tmp_path, ["setup.exe"], "-z")
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, "Content-Type: application/gzip")])), 554, "5.7.1")
    assert "(exe)" in r.text, r


def test_tar_bomb_is_refused_as_unchecked(proxy, sink, tmp_path):
    """80 MiB of zeros before the executable, in 80 KiB of gzip: past what
    the message may decompress to (64 MiB for a small one), refused as a
    structure that cannot be read whole, before all of it is inflated."""
    archive = tar_archive(tmp_path, ["zeros.bin", "setup.exe"], "-z", sizes={"zeros.bin": 80 << 20})
    assert len(archive) < 256 * 1024
    r = check_reply(send(proxy, multipart([TEXT, seven_part(archive, 'Content-Type: application/gzip; name="a.tgz"')])),
                    554, "5.7.1")
    assert "too complex to check" in r.text, r
    assert not sink.messages


def test_honest_tar_and_compressed_files_pass(proxy, sink, tmp_path):
    photos = tar_archive(tmp_path, [f"IMG_{i}.JPG" for i in range(300)], "-z")
    check_reply(send(proxy, multipart([TEXT, seven_part(photos, 'Content-Type: application/gzip; name="photos.tgz"')])), 250)
    data = tar_archive(tmp_path, ["data.csv", "more.csv"], "-J", sizes={"data.csv": 5 << 20})
    check_reply(send(proxy, multipart([TEXT, seven_part(data, 'Content-Type: application/x-xz; name="data.tar.xz"')])), 250)
    report = gzip_file(b"%PDF-1.7\n" + bytes(5000), "report.pdf")
    check_reply(send(proxy, multipart([TEXT, seven_part(report, 'Content-Type: application/gzip; name="report.pdf.gz"')])),
                250)
    check_reply(send(proxy, multipart([TEXT, seven_part(b"plain text that says setup.exe", 'Content-Type: application/gzip; '
                                                                                            'name="notes.gz"')])), 250)
    assert len(sink.wait_messages(4)) == 4


@pytest.mark.parametrize("options,fmt", [((), "pax"), ((), "gnutar"), (("-z",), "ustar"), (("-j",), "pax"),
                                         (("-J",), "gnutar"), (("--zstd",), "pax")])
def test_tar_names_are_what_bsdtar_lists(postern, sink, tmp_path, options, fmt):
    """The names rules see are those libarchive (bsdtar -t) lists, in order,
    directories included, non-ASCII names as UTF-8."""
    # A name past ustar's 100 octets (a GNU long name, a pax path), short
    # enough for the probe's reply.
    names = ["docs/résumé.pdf", "docs/счёт.txt", "d" * 60 + "/" + "e" * 45 + ".exe" if fmt != "ustar" else "b.txt"]
    archive = tar_archive(tmp_path, names, *options, fmt=fmt)
    (tmp_path / "l.tar").write_bytes(archive)
    listed = subprocess.run(["bsdtar", "-tf", str(tmp_path / "l.tar")], capture_output=True, text=True, check=True,
                            env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"}).stdout.splitlines()
    probe = tmp_path / "probe.lua"
    probe.write_text(PROBE)
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{probe}"]'})
    head = 'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="a.tar"'
    if options:
        head = 'Content-Type: application/gzip; name="a.tgz"'
    r = check_reply(send(p, multipart([TEXT, seven_part(archive, head)], head="X-Probe: 1\n")), 550, "5.7.1")
    seen = r.text.split("names=", 1)[1].split("+")
    octets = ["".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or b == 46) else "_" for b in n.encode())
              for n in listed]
    assert seen[1:] == octets, (seen, listed)
    assert sorted(listed) == sorted(names)


def cabinet(names):
    """A Microsoft cabinet of stored files with these names (UTF-8 flagged
    where not ASCII), each holding a line of text: one folder, one data
    block."""
    body = b"a line of text\n"
    entries = b""
    for i, name in enumerate(names):
        raw = name.encode()
        attributes = 0x20 | (0x80 if not name.isascii() else 0)
        entries += struct.pack("<IIHHHH", len(body), i * len(body), 0, 0x5A21, 0, attributes) + raw + b"\0"
    coff_files = 36 + 8
    data_at = coff_files + len(entries)
    content = body * len(names)
    data = struct.pack("<IHH", 0, len(content), len(content)) + content
    header = struct.pack("<4sIIIIIBBHHHHH", b"MSCF", 0, data_at + len(data), 0, coff_files, 0, 3, 1, 1, len(names), 0, 0, 0)
    return header + struct.pack("<IHH", data_at, 1, 0) + entries + data


@pytest.mark.parametrize("tool", ["bsdtar", "7zz"])
def test_cabinet_builder_makes_cabinets_real_readers_list(tmp_path, tool):
    path = tmp_path / "a.cab"
    names = ["readme.txt", "invoice.pdf.exe", "résumé.js"]
    path.write_bytes(cabinet(names))
    cmd = ["bsdtar", "-tf", str(path)] if tool == "bsdtar" else ["7zz", "l", "-slt", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    listed = (out.stdout.splitlines() if tool == "bsdtar" else
              [line[len("Path = "):] for line in out.stdout.split("----------", 1)[1].splitlines() if line.startswith("Path = ")])
    assert listed == names


@pytest.mark.parametrize("head", [
    'Content-Type: application/vnd.ms-cab-compressed; name="update.cab"',
    'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="Update.CAB"',
])
def test_executable_in_a_cabinet_is_refused(proxy, sink, head):
    """Explorer opens a .cab and runs the files in it."""
    r = check_reply(send(proxy, multipart([TEXT, seven_part(cabinet(["readme.txt", "invoice.pdf.exe"]), head)])), 554, "5.7.1")
    assert "(exe)" in r.text, r
    assert not sink.messages


def test_honest_cabinet_passes(proxy, sink):
    check_reply(send(proxy, multipart([TEXT, seven_part(cabinet(["driver.inf", "driver.sys.txt"]),
                                                        'Content-Type: application/vnd.ms-cab-compressed; name="d.cab"')])), 250)
    assert len(sink.wait_messages(1)) == 1


def test_header_bomb_ends_with_a_verdict(proxy, sink):
    """A Subject of ~900 kB of would-be encoded-words and 10,000 RFC 2231
    sections: decoded in linear time, the message gets its verdict."""
    subject = folded("=?abc?de?" * 100000 + "?=")
    sections = "".join(f";\n filename*{i}=a" for i in range(3000)) + ";\n filename*3000=.exe"
    content = multipart([TEXT, exe_part("Content-Disposition: attachment" + sections)],
                        head="X-Probe: 1\n")
    content = content.replace(b"Subject: invoice", b"Subject: " + subject.replace("\n", "\r\n").encode())
    r = check_reply(send(proxy, content), 554, "5.7.1")
    assert "(exe)" in r.text, r


def test_decoded_text_is_utf8(proxy, sink):
    """Ill-formed UTF-8, a charset with an octet that does not convert and an
    unknown charset: every string the probe gets is UTF-8, U+FFFD in place."""
    bad = base64.b64encode(b"caf\xe9 \xed\xa0\x80 \xc0\xaf \xff").decode()
    content = multipart([f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{bad}",
                         "Content-Type: text/plain; charset=x-unknown\nContent-Transfer-Encoding: base64\n\n" + bad,
                         "Content-Type: text/plain; charset=shift_jis\nContent-Transfer-Encoding: base64\n\n" +
                         base64.b64encode(b"\x82\xa0\xff\x82\xa2").decode(),
                         exe_part("Content-Disposition: attachment; filename*=utf-8''%FFa%C0%AF.pdf")],
                        head="X-Probe: 1\n")
    content = content.replace(b"Subject: invoice", b"Subject: =?utf-8?q?=ED=A0=80=FF?= \xc3")
    r = check_reply(send(proxy, content), 550, "5.7.1")
    assert "probe utf8 names=" in r.text, r
    assert not sink.messages


def test_a_check_that_fails_defers_the_message(postern, sink, tmp_path):
    """The attachments rule fails closed: listing 4000 archived files past a
    1 MiB lua.memory_limit is a rule error, and the message with an
    executable among them is deferred (451 4.7.0), never relayed unchecked;
    unless the rule is set only to score."""
    p = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}"]', "lua.memory_limit": 1 << 20})
    names = [f"{i:05}-" + "x" * 190 + ".txt" for i in range(4000)] + ["setup.exe"]
    check_reply(send(p, multipart([TEXT, zip_part(names)])), 451, "4.7.0")
    p.wait_for_log("message", result="tempfailed")
    assert any("rule=EXECUTABLE_ATTACHMENT" in e.get("line", "") and "memory limit" in e.get("line", "")
               for e in p.events("lua")), p.log_tail()
    assert not sink.messages
    # The same rule with room to work refuses the executable.
    q = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}"]'})
    check_reply(send(q, multipart([TEXT, zip_part(names)])), 554, "5.7.1")
    assert not sink.messages
    # Set only to score (docs/audit-only.md: never act), its failure lets the message through.
    a = postern.start(upstream=sink.address, sets={"lua.scripts": f'["{ATTACHMENTS}"]', "lua.memory_limit": 1 << 20,
                                                   "lua.settings.attachments.action": '"score"'})
    check_reply(send(a, multipart([TEXT, zip_part(names)])), 250)
    assert len(sink.wait_messages(1)) == 1
