"""daemon.fitsfile.read_primary_header gives astropy's own answer for plain, strange, truncated and non-FITS files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from daemon.fitsfile import _Blocks, _data_bytes, _read_plain, read_primary_header
from ops.camera import write_exposure
from processors.headers import as_astropy

BLOCK = 2880


def astropy_walk(path: Path) -> tuple[fits.Header | None, str | None]:
    """The reader as it was before it read blocks itself: every header through ``Header.fromfile``."""
    primary: fits.Header | None = None
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < size:
            handle.seek(offset)
            try:
                header = fits.Header.fromfile(handle, padding=True)
            except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
                if primary is None:
                    handle.seek(0)
                    if handle.read(30).startswith(b"SIMPLE  =                    T"):
                        return None, f"truncated: primary header cut short at {size} bytes ({exc})"
                    return None, f"not_fits: {exc}"
                return None, f"truncated: extension header at byte {offset} unreadable ({exc})"
            if primary is None:
                if header.get("SIMPLE") is not True:
                    return None, "not_fits: the first card is not SIMPLE = T"
                primary = header
            data_end = handle.tell() + _data_bytes(header)
            if data_end > size:
                return None, f"truncated: {size} bytes on disk, headers describe at least {data_end}"
            offset = handle.tell() + -(-_data_bytes(header) // 2880) * 2880
    if primary is None:
        return None, "not_fits: empty file"
    return primary, None


def answer(read: Callable[[Path], tuple[fits.Header | None, str | None]], path: Path) -> tuple[object, ...]:
    """What a reader says of a file, comparable: the header's cards and text and the reason, or what it raised."""
    try:
        header, reason = read(path)
    except Exception as exc:  # a strange file may make astropy raise: both must raise alike
        return ("raised", type(exc), str(exc))
    if header is None:
        return (None, reason)
    header = as_astropy(header)
    return (header.tostring(), list(header.items()), reason)


def assert_same_answer(path: Path) -> tuple[fits.Header | None, str | None]:
    """read_primary_header and the astropy walk agree on the header (card for card) and the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the strange files; the answers are what count
        assert answer(read_primary_header, path) == answer(astropy_walk, path)
        try:
            return read_primary_header(path)
        except Exception:  # raised alike by both, as just checked
            return None, "raised"


def assert_astropy_reads_it(path: Path, header: fits.Header | None) -> None:
    """A file read as whole is one fits.open reads to the end, and its primary header is the one returned."""
    assert header is not None
    with fits.open(path, memmap=False) as hdul:
        assert hdul[0].header.tostring() == header.tostring()
        for hdu in hdul:
            _ = hdu.data  # every HDU's data is there


def write(path: Path, hdus: list[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU]) -> Path:
    fits.HDUList(hdus).writeto(path)
    return path


def long_primary() -> fits.PrimaryHDU:
    """A primary header of several blocks, with CONTINUE and HIERARCH cards and a small image."""
    primary = fits.PrimaryHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    header = primary.header
    header["OBSID"] = "MC_O_20261202_000001"
    header["LONGSTR"] = "a long string that needs CONTINUE cards " * 6
    header["HIERARCH STUTTER ROWS"] = 0
    header["HIERARCH NAXIS"] = 7  # a HIERARCH card named like a structural keyword
    for index in range(150):
        header[f"KEY{index:05d}"] = (index * 1.5, f"card {index}")
    header.add_history("written for the test")
    return primary


def bintable_with_heap() -> fits.BinTableHDU:
    """A binary table with a variable-length column: PCOUNT > 0 (a heap after the table)."""
    column = fits.Column(
        name="VLA",
        format="PJ()",
        array=np.array([np.arange(n, dtype=np.int32) for n in (3, 40, 700)], dtype=object),
    )
    table = fits.BinTableHDU.from_columns([column, fits.Column(name="X", format="E", array=[1.0, 2.0, 3.0])])
    return table


@pytest.fixture
def lsstcam_file(tmp_path: Path) -> Path:
    """One LSSTCam-like detector file: a 102-card primary header and image extensions of 14 cards."""
    (path,) = write_exposure(
        tmp_path / "inbox", "LSSTCam", dayobs="20261202", seqnum=1, size_bytes=100_000, detectors=["R22_S11"]
    )
    return path


@pytest.fixture
def varied_file(tmp_path: Path) -> Path:
    """Multi-block primary with data, a heap table, an empty (NAXIS=0) extension and an image extension."""
    image = fits.ImageHDU(np.ones((30, 50), dtype=np.float32), name="IMAGE")
    image.header["EXTRA"] = "x"
    return write(tmp_path / "varied.fits", [long_primary(), bintable_with_heap(), fits.ImageHDU(), image])


def test_camera_file_reads_as_astropy_reads_it(lsstcam_file: Path) -> None:
    """A camera file gives the primary header astropy gives, and no reason."""
    header, reason = assert_same_answer(lsstcam_file)
    assert reason is None
    assert_astropy_reads_it(lsstcam_file, header)
    assert header is not None and header["OBSID"] == "MC_O_20261202_000001"


def test_varied_file_reads_as_astropy_reads_it(varied_file: Path) -> None:
    """Heap tables, NAXIS=0 extensions, a primary of several blocks with CONTINUE and HIERARCH cards: same answer."""
    with fits.open(varied_file) as hdul:
        assert hdul[1].header["PCOUNT"] > 0
        assert hdul[2].header["NAXIS"] == 0
    assert os.path.getsize(varied_file) > 0
    header, reason = assert_same_answer(varied_file)
    assert reason is None
    assert_astropy_reads_it(varied_file, header)
    assert header is not None and header["LONGSTR"] == ("a long string that needs CONTINUE cards " * 6).rstrip()


@pytest.mark.parametrize("fixture", ["lsstcam_file", "varied_file"])
def test_plain_headers_are_read_without_astropys_block_reader(fixture: str, request: pytest.FixtureRequest) -> None:
    """Every header of a plain file is read from its blocks: where it ends and its data bytes are astropy's."""
    path: Path = request.getfixturevalue(fixture)
    with fits.open(path) as hdul, open(path, "rb") as handle:
        blocks = _Blocks(handle, os.fstat(handle.fileno()).st_size)
        for index, hdu in enumerate(hdul):
            info = hdu.fileinfo()
            read = _read_plain(blocks, info["hdrLoc"], primary=index == 0)
            assert read is not None
            header, header_end, data = read
            assert header_end == info["datLoc"]
            if index == 0:
                assert header is not None and header.tostring() == hdu.header.tostring()
            else:
                assert header is None and data == _data_bytes(hdu.header)


@pytest.mark.parametrize("fixture", ["lsstcam_file", "varied_file"])
def test_truncated_at_every_block_boundary(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Cut at every block boundary, or a few bytes past one, a file gives astropy's reason, which says truncated."""
    source: Path = request.getfixturevalue(fixture)
    whole = source.read_bytes()
    with fits.open(source) as hdul:
        # After an HDU's data and before the next header, a cut leaves a whole (shorter) file.
        whole_cuts = [
            (hdu.fileinfo()["datLoc"] + _data_bytes(hdu.header), hdu.fileinfo()["datLoc"] + hdu.fileinfo()["datSpan"])
            for hdu in hdul
        ]
    cut = tmp_path / "cut.fits"
    for blocks in range(len(whole) // BLOCK):
        for extra in (0, 37):
            length = blocks * BLOCK + extra
            cut.write_bytes(whole[:length])
            header, reason = assert_same_answer(cut)
            if blocks == 0 and extra == 0:
                assert reason == "not_fits: empty file"
            elif any(low <= length <= high for low, high in whole_cuts):
                assert header is not None and reason is None  # cut between HDUs: a whole, shorter file
            else:
                assert header is None and reason is not None and reason.startswith("truncated: "), (blocks, extra)


@pytest.mark.parametrize(
    "tail",
    [
        b"garbage after the last HDU",
        b"\0" * BLOCK,
        b" " * BLOCK,
        os.urandom(3 * BLOCK),
        (b"XTENSION= 'IMAGE   '" + b" " * 60 + b"END" + b" " * 77).ljust(BLOCK, b" "),
    ],
    ids=["text", "zero-block", "blank-block", "random", "stray-header"],
)
def test_bytes_after_the_last_hdu(tail: bytes, lsstcam_file: Path) -> None:
    """Whatever follows the last HDU, the answer is astropy's."""
    with open(lsstcam_file, "ab") as handle:
        handle.write(tail)
    assert_same_answer(lsstcam_file)


def test_garbage_after_the_end_card(lsstcam_file: Path) -> None:
    """Bytes after the END card in the header's last block are padding to astropy; the header is the same."""
    raw = bytearray(lsstcam_file.read_bytes())
    end = raw.index(b"END" + b" " * 77)
    raw[end + 80 : end + 160] = b"NOTACARD= 'after the END card'".ljust(80)
    lsstcam_file.write_bytes(bytes(raw))
    header, reason = assert_same_answer(lsstcam_file)
    assert reason is None and header is not None and "NOTACARD" not in header


def card(keyword: str, value: str, comment: str = "") -> bytes:
    text = f"{keyword:8s}= {value}"
    return (text + (f" / {comment}" if comment else "")).ljust(80).encode("latin-1")


def patch_extension(path: Path, find: bytes, new: bytes, *, hdu: int = 1) -> None:
    """Replace the card of ``hdu``'s header that starts with ``find`` by ``new`` (80 bytes)."""
    raw = bytearray(path.read_bytes())
    start = 0
    for _ in range(hdu):
        start = raw.index(b"XTENSION= ", start + 1)
    index = start
    while raw[index : index + len(find)] != find:
        index += 80
        assert index < len(raw), find
    raw[index : index + 80] = new
    path.write_bytes(bytes(raw))


STRANGE: dict[str, Callable[[Path], None]] = {
    "free-format NAXIS1": lambda p: patch_extension(p, b"NAXIS1  ", card("NAXIS1", "30")),
    "comment glued to the value": lambda p: patch_extension(p, b"NAXIS2  ", card("NAXIS2", "50/rows")),
    "float NAXIS2": lambda p: patch_extension(p, b"NAXIS2  ", card("NAXIS2", "50.0")),
    "string NAXIS1": lambda p: patch_extension(p, b"NAXIS1  ", card("NAXIS1", "'30'")),
    "lower-case naxis2": lambda p: patch_extension(p, b"NAXIS2  ", card("naxis2", "50")),
    "lower-case shadow": lambda p: patch_extension(p, b"EXTRA   ", card("naxis2", "5000")),
    "duplicate NAXIS2": lambda p: patch_extension(p, b"EXTRA   ", card("NAXIS2", "5000")),
    "HIERARCH shadow": lambda p: patch_extension(p, b"EXTRA   ", b"HIERARCH NAXIS2 = 5000".ljust(80)),
    "CONTINUE card": lambda p: patch_extension(p, b"EXTRA   ", b"CONTINUE  'more'".ljust(80)),
    "no value indicator": lambda p: patch_extension(p, b"NAXIS2  ", b"NAXIS2    50".ljust(80)),
    "no space after the equals sign": lambda p: patch_extension(p, b"NAXIS2  ", b"NAXIS2  =50".ljust(80)),
    "text after the value": lambda p: patch_extension(p, b"NAXIS2  ", card("NAXIS2", "50 rows")),
    "tab before the value": lambda p: patch_extension(p, b"NAXIS2  ", b"NAXIS2  = \t50".ljust(80)),
    "equals in the keyword": lambda p: patch_extension(p, b"NAXIS2  ", b"NAXIS2= 50".ljust(80)),
    "signed BITPIX": lambda p: patch_extension(p, b"BITPIX  ", card("BITPIX", "+32")),
    "negative NAXIS": lambda p: patch_extension(p, b"NAXIS   ", card("NAXIS", "-1")),
    "huge NAXIS1": lambda p: patch_extension(p, b"NAXIS1  ", card("NAXIS1", "99999999")),
    "non-ASCII comment": lambda p: patch_extension(p, b"EXTRA   ", card("EXTRA", "'x'", "caf\xe9")),
    "invalid END card": lambda p: patch_extension(p, b"END     ", b"END junk".ljust(80)),
    "null padding": lambda p: patch_extension(p, b"END     ", b"END".ljust(80, b"\0")),
    "END card missing": lambda p: patch_extension(p, b"END     ", b" " * 80),
    "not an XTENSION": lambda p: patch_extension(p, b"XTENSION", card("SIMPLE", "T")),
    "primary not SIMPLE": lambda p: patch_extension(p, b"SIMPLE  ", card("SIMPLE", "F"), hdu=0),
    "primary non-ASCII": lambda p: patch_extension(p, b"OBSID   ", card("OBSID", "'caf\xe9'"), hdu=0),
    "primary invalid END": lambda p: patch_extension(p, b"END     ", b"END junk".ljust(80), hdu=0),
    "primary lower-case naxis": lambda p: patch_extension(p, b"NAXIS   ", card("naxis", "2"), hdu=0),
}


@pytest.mark.parametrize("damage", sorted(STRANGE))
def test_strange_headers_give_astropys_answer(damage: str, tmp_path: Path) -> None:
    """A header astropy reads in its own way (or refuses) gives the same header or reason as astropy's walk."""
    image = fits.ImageHDU(np.ones((50, 30), dtype=np.int32))
    image.header["EXTRA"] = "x"
    primary = fits.PrimaryHDU()
    primary.header["OBSID"] = "MC_O_20261202_000001"
    path = write(tmp_path / "strange.fits", [primary, image, fits.ImageHDU(np.zeros(5, np.uint8))])
    STRANGE[damage](path)
    assert_same_answer(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"seeing 0.7 arcsec, dome open\n" * 300, os.urandom(3 * BLOCK), b"SIMPLE  =                    T"],
    ids=["empty", "text", "random", "bare-simple"],
)
def test_not_fits(content: bytes, tmp_path: Path) -> None:
    """Empty, text, random and a bare SIMPLE card: astropy's reason, not_fits or truncated."""
    path = tmp_path / "file.fits"
    path.write_bytes(content)
    header, reason = assert_same_answer(path)
    assert header is None and reason is not None
    assert reason.startswith("truncated: " if content.startswith(b"SIMPLE") else "not_fits: ")
